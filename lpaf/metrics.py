"""GLUE and SQuAD dev metrics, computed by the ``evaluate`` modules shipped in ``lpaf/metric_modules``.

Every score a stage reports comes from one of three ``evaluate`` metric modules loaded by path
(offline, never from the hub): ``glue`` (configuration = the GLUE task), ``squad`` (v1.1) and
``squad_v2``. They have the interface of the hub modules of the same names and their official
definitions (scikit-learn / scipy; the SQuAD ``evaluate-v1.1.py`` / ``evaluate-v2.0.py`` rules).
This module loads them once per process (``load_metric``) and keeps lpaf's function interface and
result keys on top of them.

Scales follow each benchmark's own convention, so numbers compare with published ones:

- GLUE metrics are **fractions in [0, 1]** (the Hugging Face ``glue`` metric convention):
  accuracy, binary F1 of the positive class 1 (MRPC, QQP), Matthews correlation (CoLA), Pearson
  and Spearman correlation (STS-B).
- SQuAD exact match and F1 are **percentages in [0, 100]** (the official scripts).

Undefined values never crash an evaluation: a constant prediction (a collapsed model) scores
Matthews correlation 0 (scikit-learn's convention) and Pearson / Spearman 0 (scipy returns nan,
which would poison averages over seeds and break JSON; "no measurable correlation" is 0), and F1
with no predicted and no true positives is 0.
"""

from __future__ import annotations

import atexit
import functools
import logging
import math
import os
import shutil
import tempfile
import threading
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from lpaf.errors import LpafError
from lpaf.metric_modules import MODULE_NAMES, module_path
from lpaf.metric_modules.squad.compute_score import exact_match_score as _v1_exact
from lpaf.metric_modules.squad.compute_score import f1_score as _v1_f1
from lpaf.metric_modules.squad.compute_score import normalize_answer
from lpaf.metric_modules.squad_v2.compute_score import compute_f1 as _v2_f1
from lpaf.tasks import TaskSpec

logger = logging.getLogger(__name__)

ArrayLike = Sequence[float] | np.ndarray

__all__ = ["load_metric", "accuracy", "f1", "matthews_correlation", "pearson", "spearmanr", "METRICS",
           "get_metric", "compute_metrics", "normalize_answer", "squad_exact_match", "squad_f1",
           "squad_metrics", "squad_v2_metrics", "prediction_spread"]


# --------------------------------------------------------------------------------------------
# Loading the evaluate modules
# --------------------------------------------------------------------------------------------

# ``evaluate.load(path)`` copies a module script into HF_MODULES_CACHE (default
# ~/.cache/huggingface/modules/evaluate_modules/metrics/<name>/<hash>/) under a FileLock, and
# creates HF_METRICS_CACHE/<name>/<config>/ even with keep_in_memory=True. On a cluster with a
# shared home that is every workflow job taking the same NFS lock (some cluster filesystems refuse
# flock altogether, and a read-only home fails outright). lpaf runs evaluate's own by-path loader
# with a private directory per process under $TMPDIR instead: nothing is shared between processes
# and nothing is written to the home directory; the directory is removed when the process exits.
_DYNAMIC_MODULES_NAME = "lpaf_evaluate_modules"  # the import namespace of the copied scripts
_private_root: Path | None = None
_load_lock = threading.Lock()
_compute_lock = threading.Lock()


def _remove_private_root(root: Path, owner_pid: int) -> None:
    if os.getpid() == owner_pid:  # a forked child must not delete its parent's directory
        shutil.rmtree(root, ignore_errors=True)


def _private_dir() -> Path:
    global _private_root
    if _private_root is None:
        _private_root = Path(tempfile.mkdtemp(prefix="lpaf-evaluate-"))
        atexit.register(_remove_private_root, _private_root, os.getpid())
    return _private_root


@functools.lru_cache(maxsize=None)
def load_metric(name: str, config_name: str | None = None):
    """The ``evaluate`` module ``name`` (``glue``, ``squad``, ``squad_v2``) shipped with lpaf, loaded by path.

    Equivalent to ``evaluate.load(lpaf.metric_modules.module_path(name), config_name,
    keep_in_memory=True)`` (same module, same numbers) but offline by construction (a local path
    never reaches the hub, with or without HF_HUB_OFFLINE), with the script copied into a private
    per-process directory rather than the shared HF_MODULES_CACHE, and inputs kept in memory (no
    arrow cache files, no file locks). Cached: one instance per (name, config) and process.
    """
    if name not in MODULE_NAMES:
        raise LpafError(f"unknown metric module {name!r}; lpaf ships {', '.join(MODULE_NAMES)}")
    from evaluate.loading import evaluation_module_factory, import_main_class, init_dynamic_modules

    with _load_lock:
        root = _private_dir()
        dynamic_modules_path = init_dynamic_modules(_DYNAMIC_MODULES_NAME, hf_modules_cache=root / "modules")
        module = evaluation_module_factory(module_path(name), dynamic_modules_path=dynamic_modules_path)
        metric_cls = import_main_class(module.module_path)
        try:
            metric = metric_cls(config_name=config_name, keep_in_memory=True, cache_dir=str(root / "metrics"),
                                hash=module.hash)
        except KeyError as e:  # the glue module rejects an unknown configuration
            raise LpafError(f"evaluate module {name!r}: {e.args[0] if e.args else e}") from None
        metric.download_and_prepare()
    return metric


def _compute(name: str, config_name: str | None = None, **inputs: Any) -> dict[str, Any]:
    """``load_metric(name, config_name).compute(**inputs)``; bad input becomes a one-line LpafError."""
    metric = load_metric(name, config_name)
    with _compute_lock:  # an evaluate module holds its inputs between add and compute
        try:
            return metric.compute(**inputs)
        except (ValueError, KeyError) as e:
            raise LpafError(f"evaluate module {name!r}: {e}") from None


# --------------------------------------------------------------------------------------------
# GLUE
# --------------------------------------------------------------------------------------------

def _as_vectors(preds: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """1-D arrays of equal, non-zero length; an (N, 1) regression output is squeezed."""
    p = np.asarray(preds)
    y = np.asarray(labels)
    if p.ndim == 2 and p.shape[1] == 1:
        p = p[:, 0]
    if p.ndim != 1:
        raise ValueError(f"predictions must be 1-D (class ids after argmax, or regression values), "
                         f"got shape {p.shape}")
    if y.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {y.shape}")
    if len(p) != len(y):
        raise ValueError(f"{len(p)} predictions but {len(y)} labels")
    if len(p) == 0:
        raise ValueError("cannot compute a metric on zero examples")
    return p, y


def _class_ids(values: np.ndarray, what: str, config: str) -> np.ndarray:
    if values.dtype.kind in "biu":
        return values.astype(np.int64)
    if values.dtype.kind == "f" and np.all(np.isfinite(values)) and np.all(values == np.round(values)):
        return values.astype(np.int64)
    raise ValueError(f"{what} must be class ids (integers) for GLUE {config!r}, got {values.dtype} values "
                     f"such as {values[0]!r}")


def _glue_scores(config: str, preds: ArrayLike, labels: ArrayLike) -> dict[str, float]:
    """The ``glue`` module's scores for configuration ``config`` (a GLUE task name)."""
    p, y = _as_vectors(preds, labels)
    if config == "stsb":
        p, y = p.astype(np.float64), y.astype(np.float64)
    else:
        p, y = _class_ids(p, "predictions", config), _class_ids(y, "labels", config)
    return {k: float(v) for k, v in _compute("glue", config, predictions=p, references=y).items()}


def accuracy(preds: ArrayLike, labels: ArrayLike) -> float:
    return _glue_scores("sst2", preds, labels)["accuracy"]


def f1(preds: ArrayLike, labels: ArrayLike) -> float:
    """Binary F1 of the positive class 1 (MRPC "equivalent", QQP "duplicate")."""
    return _glue_scores("mrpc", preds, labels)["f1"]


def matthews_correlation(preds: ArrayLike, labels: ArrayLike) -> float:
    return _glue_scores("cola", preds, labels)["matthews_correlation"]


def pearson(preds: ArrayLike, labels: ArrayLike) -> float:
    return _glue_scores("stsb", preds, labels)["pearson"]


def spearmanr(preds: ArrayLike, labels: ArrayLike) -> float:
    return _glue_scores("stsb", preds, labels)["spearmanr"]


METRICS: dict[str, Callable[[ArrayLike, ArrayLike], float]] = {
    "accuracy": accuracy,
    "f1": f1,
    "matthews_correlation": matthews_correlation,
    "pearson": pearson,
    "spearmanr": spearmanr,
}


def get_metric(name: str) -> Callable[[ArrayLike, ArrayLike], float]:
    """The GLUE metric function ``(preds, labels) -> float`` called ``name``."""
    if name not in METRICS:
        raise LpafError(f"unknown metric {name!r}; valid metrics: {', '.join(METRICS)} "
                        f"(SQuAD exact_match/f1: use squad_metrics)")
    return METRICS[name]


def compute_metrics(task: TaskSpec, preds: ArrayLike, labels: ArrayLike) -> dict[str, float]:
    """``{metric: value}`` with exactly the keys of ``task.metrics``, in reporting order.

    The ``glue`` module with the task as configuration computes them. ``preds`` are class ids (the
    caller takes the argmax of the logits) or regression values. For MNLI call once per dev split;
    the caller prefixes the keys (``task.metric_keys()``).
    """
    if task.is_qa:
        raise ValueError(f"task {task.name!r} is extractive QA; use squad_metrics")
    scores = _glue_scores(task.name, preds, labels)
    return {name: scores[name] for name in task.metrics}


# --------------------------------------------------------------------------------------------
# SQuAD (the squad and squad_v2 modules: official evaluate-v1.1.py / evaluate-v2.0.py)
# --------------------------------------------------------------------------------------------

def _check_golds(ground_truths: Sequence[str]) -> None:
    if isinstance(ground_truths, str) or len(ground_truths) == 0:
        raise ValueError("ground_truths must be a non-empty list of answer strings")


def squad_exact_match(prediction: str, ground_truths: Sequence[str]) -> float:
    """1.0 if the normalised prediction equals any normalised gold answer, else 0.0."""
    _check_golds(ground_truths)
    return max(_v1_exact(prediction, g) for g in ground_truths)


def squad_f1(prediction: str, ground_truths: Sequence[str], version_2: bool = False) -> float:
    """Best token-level F1 over the gold answers (bag of normalised tokens), in [0, 1].

    As in the official v1.1 script, an answer that normalises to nothing has F1 0 even against an
    empty gold answer (while its exact match is 1); ``version_2`` applies the v2.0 rule instead.
    """
    _check_golds(ground_truths)
    if version_2:
        return max(float(_v2_f1(g, prediction)) for g in ground_truths)
    return max(_v1_f1(prediction, g) for g in ground_truths)


def _squad_references(references: Mapping[str, Sequence[str]]) -> list[dict[str, Any]]:
    """lpaf's ``{question id: [gold texts]}`` as the modules' references (answer_start unused: -1)."""
    refs = []
    for qid, golds in references.items():
        if isinstance(golds, str):
            raise LpafError(f"question {qid!r}: gold answers must be a list of strings, got the string {golds!r}")
        golds = [str(g) for g in golds]
        refs.append({"id": str(qid), "answers": {"text": golds, "answer_start": [-1] * len(golds)}})
    return refs


def squad_metrics(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]],
                  version_2: bool = False) -> dict[str, float]:
    """``{"exact_match", "f1"}`` in percent, averaged over every question of ``references``.

    The ``squad`` module scores them (``squad_v2`` with ``version_2``). A question without a
    prediction scores 0 (official behaviour, logged). With ``version_2`` (SQuAD 2.0), gold answers
    that normalise to nothing are dropped and a question left with none is unanswerable: only the
    empty prediction is right.
    """
    if not references:
        raise ValueError("no reference questions to score")
    if not version_2:
        for qid, golds in references.items():
            if not isinstance(golds, str) and len(golds) == 0:
                raise LpafError(f"question {qid!r} has no gold answer; SQuAD v1.1 needs at least one "
                                f"(score SQuAD 2.0 data with version_2=True)")
    # evaluate takes one prediction per reference: score the answered questions, the rest score 0.
    answered = {q: golds for q, golds in references.items() if q in predictions}
    missing = [q for q in references if q not in predictions]
    if missing:
        logger.warning("%d of %d questions have no prediction and score 0 (first: %s)",
                       len(missing), len(references), missing[0])
    if not answered:
        return {"exact_match": 0.0, "f1": 0.0}
    if version_2:
        out = _compute("squad_v2", references=_squad_references(answered),
                       predictions=[{"id": str(q), "prediction_text": str(predictions[q]),
                                     "no_answer_probability": -math.inf} for q in answered])
        exact, f1_score = float(out["exact"]), float(out["f1"])
    else:
        out = _compute("squad", references=_squad_references(answered),
                       predictions=[{"id": str(q), "prediction_text": str(predictions[q])} for q in answered])
        exact, f1_score = float(out["exact_match"]), float(out["f1"])
    if missing:
        exact, f1_score = exact * len(answered) / len(references), f1_score * len(answered) / len(references)
    return {"exact_match": exact, "f1": f1_score}


def squad_v2_metrics(span_predictions: Mapping[str, str], references: Mapping[str, Sequence[str]],
                     na_scores: Mapping[str, float] | None = None, threshold: float = 0.0) -> dict[str, float]:
    """The official SQuAD 2.0 evaluation (the ``squad_v2`` module), in percent.

    ``span_predictions``: the best non-null span per question (a missing one counts as ""), and
    ``na_scores``: its no-answer score (higher = more likely unanswerable), one per question. A
    question is answered "" when its score exceeds ``threshold``. Returns exact_match / f1 over all
    questions, the HasAns_* and NoAns_* splits (with their totals; 0 for an empty split), and, when
    ``na_scores`` is given, best_exact / best_f1 with the thresholds that reach them (the official
    script's best-threshold sweep). Unanswerable questions: those with an empty gold list (the
    hub's format); gold answers that normalise to nothing are dropped before scoring.
    """
    if not references:
        raise ValueError("no reference questions to score")
    if na_scores is not None:
        lacking = [q for q in references if q not in na_scores]
        if lacking:
            raise LpafError(f"na_scores has no no-answer score for {len(lacking)} of {len(references)} questions "
                            f"(first: {lacking[0]!r}); give one per question, or none")
    predictions = [{"id": str(q), "prediction_text": str(span_predictions.get(q, "")),
                    "no_answer_probability": float(na_scores[q]) if na_scores is not None else -math.inf}
                   for q in references]
    out = _compute("squad_v2", predictions=predictions, references=_squad_references(references),
                   no_answer_threshold=float(threshold))
    result = {"exact_match": float(out["exact"]), "f1": float(out["f1"])}
    for split in ("HasAns", "NoAns"):
        result |= {f"{split}_exact": float(out.get(f"{split}_exact", 0.0)),
                   f"{split}_f1": float(out.get(f"{split}_f1", 0.0)),
                   f"{split}_total": float(out.get(f"{split}_total", 0))}
    if na_scores is not None:
        result |= {k: float(out[k]) for k in ("best_exact", "best_exact_thresh", "best_f1", "best_f1_thresh")}
    return result


# --------------------------------------------------------------------------------------------
# Degenerate predictions: a score that is not a score
# --------------------------------------------------------------------------------------------

DEGENERATE_MAJORITY_FRACTION = 0.99  # classification / QA: one output for >= 99% of dev examples
DEGENERATE_SPREAD_RATIO = 0.01  # regression: prediction std below 1% of the label std


def prediction_spread(task: TaskSpec, preds: ArrayLike | Sequence[str], labels: ArrayLike | None = None
                      ) -> dict[str, float | int | bool]:
    """Does a model predict (nearly) one thing for every dev example?

    A collapsed model still gets a number: the majority-class accuracy, MRPC's F1 of 0.81 for
    "always paraphrase", MCC 0. Such a row is a failed run, not a score, and the table and the
    claims must be able to tell. ``degenerate`` is True when the most frequent predicted class (or
    QA answer text) covers at least 99% of the dev examples, or, for regression, when the
    predictions' standard deviation is below 1% of the labels'.
    """
    if task.is_regression:
        p = np.asarray(preds, dtype=float).reshape(-1)
        spread = float(p.std()) if len(p) else 0.0
        label_std = float(np.asarray(labels, dtype=float).std()) if labels is not None and len(labels) else 1.0
        ratio = spread / label_std if label_std > 0 else 0.0
        return {"n": int(len(p)), "prediction_std": spread, "label_std": label_std, "spread_ratio": ratio,
                "degenerate": bool(len(p) == 0 or ratio < DEGENERATE_SPREAD_RATIO)}
    values = [str(v) for v in (preds.tolist() if isinstance(preds, np.ndarray) else preds)]
    counts = Counter(values)
    top, top_count = counts.most_common(1)[0] if counts else ("", 0)
    fraction = top_count / len(values) if values else 1.0
    return {"n": len(values), "distinct": len(counts), "majority_prediction": top, "majority_fraction": fraction,
            "degenerate": bool(fraction >= DEGENERATE_MAJORITY_FRACTION)}
