"""GLUE and SQuAD dev metrics, with their official definitions (scikit-learn / scipy, no hub code).

Scales follow each benchmark's own convention, so numbers compare with published ones:

- GLUE metrics are **fractions in [0, 1]** (the Hugging Face ``glue`` metric convention):
  accuracy, binary F1 of the positive class 1 (MRPC, QQP), Matthews correlation (CoLA), Pearson
  and Spearman correlation (STS-B).
- SQuAD exact match and F1 are **percentages in [0, 100]** (the official ``evaluate-v1.1.py``).

Undefined values never crash an evaluation: a constant prediction (a collapsed model) scores
Matthews correlation 0 (scikit-learn's convention) and Pearson / Spearman 0 (scipy returns nan,
which would poison averages over seeds and break JSON; "no measurable correlation" is 0), and F1
with no predicted and no true positives is 0.
"""

from __future__ import annotations

import logging
import math
import re
import string
import warnings
from collections import Counter
from typing import Callable, Mapping, Sequence

import numpy as np
from scipy import stats
from sklearn import metrics as skm

from lpaf.errors import LpafError
from lpaf.tasks import TaskSpec

logger = logging.getLogger(__name__)

ArrayLike = Sequence[float] | np.ndarray


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


def accuracy(preds: ArrayLike, labels: ArrayLike) -> float:
    p, y = _as_vectors(preds, labels)
    return float((p == y).mean())


def f1(preds: ArrayLike, labels: ArrayLike) -> float:
    """Binary F1 of the positive class 1 (MRPC "equivalent", QQP "duplicate")."""
    p, y = _as_vectors(preds, labels)
    return float(skm.f1_score(y, p, pos_label=1, average="binary", zero_division=0.0))


def matthews_correlation(preds: ArrayLike, labels: ArrayLike) -> float:
    p, y = _as_vectors(preds, labels)
    return float(skm.matthews_corrcoef(y, p))


def _correlation(fn: Callable, preds: ArrayLike, labels: ArrayLike) -> float:
    p, y = _as_vectors(preds, labels)
    p = p.astype(np.float64)
    y = y.astype(np.float64)
    if len(p) < 2 or np.all(p == p[0]) or np.all(y == y[0]):
        return 0.0  # undefined (constant input): see module docstring
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        value = float(fn(p, y)[0])
    return 0.0 if np.isnan(value) else value


def pearson(preds: ArrayLike, labels: ArrayLike) -> float:
    return _correlation(stats.pearsonr, preds, labels)


def spearmanr(preds: ArrayLike, labels: ArrayLike) -> float:
    return _correlation(stats.spearmanr, preds, labels)


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

    ``preds`` are class ids (the caller takes the argmax of the logits) or regression values.
    For MNLI call once per dev split; the caller prefixes the keys (``task.metric_keys()``).
    """
    if task.is_qa:
        raise ValueError(f"task {task.name!r} is extractive QA; use squad_metrics")
    return {name: get_metric(name)(preds, labels) for name in task.metrics}


# --- SQuAD (official evaluate-v1.1.py; evaluate-v2.0.py for version_2) -------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(s: str) -> str:
    """Lower-case, drop ASCII punctuation, drop the articles a/an/the, collapse whitespace."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCTUATION)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def _token_f1(prediction: str, ground_truth: str, version_2: bool) -> float:
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(ground_truth).split()
    if version_2 and (not pred_tokens or not gold_tokens):
        return float(pred_tokens == gold_tokens)  # v2.0: a no-answer scores 1 only against a no-answer
    num_same = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(pred_tokens)
    recall = num_same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def _check_golds(ground_truths: Sequence[str]) -> None:
    if isinstance(ground_truths, str) or len(ground_truths) == 0:
        raise ValueError("ground_truths must be a non-empty list of answer strings")


def squad_exact_match(prediction: str, ground_truths: Sequence[str]) -> float:
    """1.0 if the normalised prediction equals any normalised gold answer, else 0.0."""
    _check_golds(ground_truths)
    norm = normalize_answer(prediction)
    return float(any(norm == normalize_answer(g) for g in ground_truths))


def squad_f1(prediction: str, ground_truths: Sequence[str], version_2: bool = False) -> float:
    """Best token-level F1 over the gold answers (bag of normalised tokens), in [0, 1].

    As in the official v1.1 script, an answer that normalises to nothing has F1 0 even against an
    empty gold answer (while its exact match is 1); ``version_2`` applies the v2.0 rule instead.
    """
    _check_golds(ground_truths)
    return max(_token_f1(prediction, g, version_2) for g in ground_truths)


def squad_metrics(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]],
                  version_2: bool = False) -> dict[str, float]:
    """``{"exact_match", "f1"}`` in percent, averaged over every question of ``references``.

    A question without a prediction scores 0 (official behaviour, logged). With ``version_2``
    (SQuAD 2.0), gold answers that normalise to nothing are dropped and a question left with none
    is unanswerable: only the empty prediction is right.
    """
    if not references:
        raise ValueError("no reference questions to score")
    exact_total = f1_total = 0.0
    missing = []
    for qid, golds in references.items():
        golds = list(golds)
        if version_2:
            golds = [g for g in golds if normalize_answer(g)] or [""]
        elif not golds:
            raise LpafError(f"question {qid!r} has no gold answer; SQuAD v1.1 needs at least one "
                            f"(score SQuAD 2.0 data with version_2=True)")
        if qid not in predictions:
            missing.append(qid)
            continue
        exact_total += squad_exact_match(predictions[qid], golds)
        f1_total += squad_f1(predictions[qid], golds, version_2=version_2)
    if missing:
        logger.warning("%d of %d questions have no prediction and score 0 (first: %s)",
                       len(missing), len(references), missing[0])
    n = len(references)
    return {"exact_match": 100.0 * exact_total / n, "f1": 100.0 * f1_total / n}


def _best_threshold(predictions: Mapping[str, str], scores: Mapping[str, float], has_answer: Mapping[str, bool],
                    na_scores: Mapping[str, float]) -> tuple[float, float]:
    """The official SQuAD 2.0 ``find_best_thresh``: start with every question answered "no answer",
    then switch questions to their span in increasing order of no-answer score, keeping the best
    total. Returns (best score in percent, the no-answer score threshold that reaches it)."""
    current = best = float(sum(not has_answer[q] for q in scores))
    threshold = 0.0
    for qid in sorted(scores, key=lambda q: na_scores[q]):
        if has_answer[qid]:
            current += scores[qid]
        elif normalize_answer(predictions[qid]):
            current -= 1.0
        if current > best:
            best, threshold = current, float(na_scores[qid])
    return 100.0 * best / len(scores), threshold


def squad_v2_metrics(span_predictions: Mapping[str, str], references: Mapping[str, Sequence[str]],
                     na_scores: Mapping[str, float] | None = None, threshold: float = 0.0) -> dict[str, float]:
    """The official SQuAD 2.0 evaluation, in percent.

    ``span_predictions``: the best non-null span per question; ``na_scores``: its no-answer score
    (higher = more likely unanswerable). A question is answered "" when its score exceeds
    ``threshold``. Returns exact_match / f1 over all questions, the HasAns_* and NoAns_* splits
    (with their totals), and, when ``na_scores`` is given, best_exact / best_f1 with the thresholds
    that reach them (the official script's best-threshold sweep). Unanswerable questions: gold
    answers that normalise to nothing (the hub's empty answer lists).
    """
    if not references:
        raise ValueError("no reference questions to score")
    golds = {q: [g for g in refs if normalize_answer(g)] for q, refs in references.items()}
    has_answer = {q: bool(g) for q, g in golds.items()}
    exact, f1s, spans = {}, {}, {}
    for qid, gold in golds.items():
        span = span_predictions.get(qid, "")
        spans[qid] = span
        unanswered = na_scores is not None and na_scores.get(qid, -math.inf) > threshold
        final = "" if unanswered else span
        gold = gold or [""]
        exact[qid] = float(any(normalize_answer(final) == normalize_answer(g) for g in gold))
        f1s[qid] = max(_token_f1(final, g, version_2=True) for g in gold)
    has = [q for q in golds if has_answer[q]]
    no = [q for q in golds if not has_answer[q]]

    def mean(values, qids):
        return 100.0 * sum(values[q] for q in qids) / len(qids) if qids else 0.0

    out = {"exact_match": mean(exact, list(golds)), "f1": mean(f1s, list(golds)),
           "HasAns_exact": mean(exact, has), "HasAns_f1": mean(f1s, has), "HasAns_total": float(len(has)),
           "NoAns_exact": mean(exact, no), "NoAns_f1": mean(f1s, no), "NoAns_total": float(len(no))}
    if na_scores is not None:
        span_exact = {q: float(any(normalize_answer(spans[q]) == normalize_answer(g) for g in golds[q] or [""]))
                      for q in golds}
        span_f1 = {q: max(_token_f1(spans[q], g, version_2=True) for g in golds[q] or [""]) for q in golds}
        na = {q: float(na_scores.get(q, math.inf)) for q in golds}
        out["best_exact"], out["best_exact_thresh"] = _best_threshold(spans, span_exact, has_answer, na)
        out["best_f1"], out["best_f1_thresh"] = _best_threshold(spans, span_f1, has_answer, na)
    return out


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
