"""lpaf's evaluate metric modules against the hub's ``glue``, ``squad`` and ``squad_v2`` modules.

Loads the hub modules by path from a checkout of https://github.com/huggingface/evaluate (their
``metrics/<name>/<name>.py``; nothing is downloaded) and lpaf's modules through
``lpaf.metrics.load_metric``, runs both on the same hand-made and random cases (every GLUE
configuration, SQuAD v1.1, SQuAD 2.0 with two no-answer thresholds), and also runs lpaf's own
functions (``compute_metrics``, ``squad_metrics``, ``squad_v2_metrics``: what every stage calls)
on the same cases. Writes the largest absolute difference per metric.

    git clone https://github.com/huggingface/evaluate /tmp/evaluate-hub
    python benchmarks/metrics_vs_hub.py --evaluate-repo /tmp/evaluate-hub

Where the two differ by convention, the case is counted, not folded into the maximum: the hub
returns NaN for an undefined (constant-input) correlation where lpaf returns 0. The hub rounds
STS-B values and no-answer probabilities to float32; lpaf keeps float64, so those metrics can
differ by ~1e-8.

Writes ``benchmarks/results/metrics_vs_hub.json``.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lpaf.artifacts import library_versions, write_json  # noqa: E402

GLUE_CONFIGS = ("cola", "stsb", "mrpc", "qqp", "sst2", "mnli", "mnli_matched", "mnli_mismatched", "qnli", "rte",
                "wnli", "hans")
WORDS = ("the a an The A cat dog sat on mat red car blue sky Paris London 1976 U.S.A. new york don't "
         "1,000 river bank of France").split()
PUNCT = ("", "", "", ".", ",", "!", "?", "'", "(", ")", "-", "\"")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--evaluate-repo", type=Path, required=True,
                        help="a checkout of huggingface/evaluate (its metrics/ directory is used)")
    parser.add_argument("--random-cases", type=int, default=200, help="random cases per module / configuration")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).resolve().parent / "results" / "metrics_vs_hub.json")
    return parser.parse_args()


class Diffs:
    """Largest absolute difference per (group, key); NaN-vs-0 convention cases counted apart."""

    def __init__(self) -> None:
        self.max: dict[str, dict[str, float]] = defaultdict(dict)
        self.cases: dict[str, int] = defaultdict(int)
        self.nan_vs_zero: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))

    def add(self, group: str, ours: dict[str, Any], hub: dict[str, Any]) -> None:
        if set(ours) != set(hub):
            raise AssertionError(f"{group}: keys differ: lpaf {sorted(ours)} vs hub {sorted(hub)}")
        self.cases[group] += 1
        for key, hub_value in hub.items():
            a, b = float(ours[key]), float(hub_value)
            if math.isnan(b) and a == 0.0:
                self.nan_vs_zero[group][key] += 1
                continue
            self.max[group][key] = max(self.max[group].get(key, 0.0), abs(a - b))

    def as_json(self) -> dict[str, Any]:
        return {"max_abs_diff": {g: dict(sorted(v.items())) for g, v in sorted(self.max.items())},
                "cases": dict(sorted(self.cases.items())),
                "hub_nan_lpaf_zero": {g: dict(v) for g, v in sorted(self.nan_vs_zero.items())}}


# --- cases -----------------------------------------------------------------------------------------

def glue_cases(config: str, rng: np.random.Generator, n_random: int) -> list[tuple[np.ndarray, np.ndarray]]:
    if config == "stsb":
        hand = [([1.0, 2.0, 3.0], [1.0, 2.0, 4.0]), ([1.0, 2.0, 3.0, 4.0], [1.0, 3.0, 2.0, 4.0]),
                ([0.0, 5.0, 2.5, 2.5], [0.2, 4.8, 2.6, 2.4]),
                ([2.5, 2.5, 2.5], [1.0, 2.0, 4.0])]  # constant prediction: hub NaN, lpaf 0
        cases = [(np.array(p), np.array(y)) for p, y in hand]
        for _ in range(n_random):
            n = int(rng.integers(3, 400))
            y = np.round(rng.uniform(0, 5, n), 2)  # gold scores as in the GLUE files
            noise = rng.uniform(0.05, 3.0)
            cases.append((y + rng.normal(0, noise, n), y))
        return cases
    classes = 3 if config.startswith("mnli") else 2
    hand = [([1, 1, 0, 0, 1], [1, 0, 0, 1, 1]), ([0, 0, 1], [1, 0, 1]), ([0, 0, 0], [1, 0, 1]),
            ([1, 1, 1, 1], [0, 1, 0, 1]), ([1, 0, 1, 0], [0, 1, 0, 1]), ([0, 1], [0, 1])]
    if classes == 3:
        hand += [([0, 1, 2, 2], [0, 1, 2, 1])]
    cases = [(np.array(p), np.array(y)) for p, y in hand]
    for _ in range(n_random):
        n = int(rng.integers(2, 600))
        y = rng.integers(0, classes, n)
        p = np.where(rng.random(n) < rng.uniform(0, 1), y, rng.integers(0, classes, n))
        cases.append((p, y))
    return cases


def _phrase(rnd: random.Random, k: int | None = None) -> str:
    words = [rnd.choice(WORDS) + rnd.choice(PUNCT) for _ in range(k or rnd.randint(1, 4))]
    return rnd.choice(("", "", " ")) + rnd.choice((" ", " ", "  ", "\t")).join(words)


def _perturb(rnd: random.Random, text: str) -> str:
    """A prediction near a gold answer: case, punctuation, articles, extra or missing words."""
    choice = rnd.random()
    if choice < 0.2:
        return text
    if choice < 0.35:
        return text.upper() if rnd.random() < 0.5 else text.lower()
    if choice < 0.5:
        return rnd.choice(("the ", "a ", "An ")) + text + rnd.choice(("", ".", "!", " "))
    if choice < 0.65:
        words = text.split()
        return " ".join(words[: max(1, len(words) - 1)])
    if choice < 0.8:
        return text + " " + _phrase(rnd, 1)
    return _phrase(rnd)


def squad_cases(rnd: random.Random, n_random: int, version_2: bool):
    """(predictions {id: text}, references {id: [gold texts]}, no-answer probabilities {id: p})."""
    hand = [
        ({"q": "the Cat"}, {"q": ["cat", "dog"]}),
        ({"q": "the cat sat"}, {"q": ["cat sat on mat", "a cat sat"]}),
        ({"q": "cat cat"}, {"q": ["cat"]}),
        ({"q": ""}, {"q": [""]}),
        ({"q": "the"}, {"q": ["a"]}),
        ({"q1": "paris.", "q2": "the cat sat", "q3": "red"}, {"q1": ["Paris"], "q2": ["cat sat on mat"], "q3": ["blue"]}),
    ]
    cases = [(p, r, {q: 0.0 for q in r}) for p, r in hand]
    if version_2:
        cases += [
            ({"a": "Paris", "b": "car", "c": "London", "d": "", "e": "grey sky"},
             {"a": ["Paris"], "b": ["the red car", "red car"], "c": [], "d": [], "e": ["blue sky"]},
             {"a": 0.05, "b": 0.6, "c": 0.9, "d": 0.3, "e": 0.5}),
            ({"x": "the", "y": "cat"}, {"x": [], "y": ["cat"]}, {"x": 0.0, "y": 0.5}),  # text normalising to ""
            ({"p": "cat", "q": "x"}, {"p": ["cat"], "q": []}, {"p": 0.5, "q": 0.5}),  # tie, one order
            ({"q": "x", "p": "cat"}, {"p": ["cat"], "q": []}, {"q": 0.5, "p": 0.5}),  # the other order
            ({"c": "", "d": "x"}, {"c": [], "d": []}, {"c": 0.1, "d": 0.2}),  # no answerable question
            ({"d": ""}, {"d": [""]}, {"d": 0.0}),  # gold list of one empty text: "has an answer"
        ]
    for _ in range(n_random):
        n = rnd.randint(1, 40)
        preds, refs, na = {}, {}, {}
        for i in range(n):
            qid = f"q{i}"
            unanswerable = version_2 and rnd.random() < 0.5
            refs[qid] = [] if unanswerable else [_phrase(rnd) for _ in range(rnd.randint(1, 3))]
            if unanswerable:
                preds[qid] = "" if rnd.random() < 0.4 else _phrase(rnd)
            else:
                preds[qid] = "" if version_2 and rnd.random() < 0.15 else _perturb(rnd, rnd.choice(refs[qid]))
            na[qid] = round(rnd.random(), 2)  # 2 decimals: ties happen
        cases.append((preds, refs, na))
    return cases


def _refs(refs: dict[str, list[str]]) -> list[dict[str, Any]]:
    return [{"id": q, "answers": {"text": g, "answer_start": [0] * len(g)}} for q, g in refs.items()]


# --- main ------------------------------------------------------------------------------------------

def main() -> None:
    args = parse_args()
    metrics_dir = args.evaluate_repo / "metrics"
    for name in ("glue", "squad", "squad_v2"):
        if not (metrics_dir / name / f"{name}.py").is_file():
            raise SystemExit(f"{metrics_dir / name / (name + '.py')} not found: --evaluate-repo must be a checkout "
                             f"of huggingface/evaluate")
    # evaluate.load(path) copies each script into HF_MODULES_CACHE: use a throw-away one, never the user's.
    scratch = tempfile.mkdtemp(prefix="metrics-vs-hub-")
    os.environ["HF_MODULES_CACHE"] = str(Path(scratch) / "modules")
    import evaluate

    from lpaf import metrics
    from lpaf.tasks import TASKS

    def hub(name: str, config: str | None = None):
        return evaluate.load(str(metrics_dir / name), config, keep_in_memory=True, cache_dir=str(Path(scratch) / "m"))

    rng = np.random.default_rng(args.seed)
    rnd = random.Random(args.seed)
    modules, functions = Diffs(), Diffs()
    start = time.perf_counter()

    for config in GLUE_CONFIGS:
        ours, theirs = metrics.load_metric("glue", config), hub("glue", config)
        task = TASKS.get(config)
        for preds, labels in glue_cases(config, rng, args.random_cases):
            hub_out = theirs.compute(predictions=preds, references=labels)
            modules.add(f"glue/{config}", ours.compute(predictions=preds, references=labels), hub_out)
            if task is not None:
                functions.add(f"compute_metrics/{config}", metrics.compute_metrics(task, preds, labels), hub_out)

    ours, theirs = metrics.load_metric("squad"), hub("squad")
    for preds, refs, _ in squad_cases(rnd, args.random_cases, version_2=False):
        hub_out = theirs.compute(predictions=[{"id": q, "prediction_text": p} for q, p in preds.items()],
                                 references=_refs(refs))
        modules.add("squad", ours.compute(predictions=[{"id": q, "prediction_text": p} for q, p in preds.items()],
                                          references=_refs(refs)), hub_out)
        functions.add("squad_metrics", metrics.squad_metrics(preds, refs), hub_out)

    ours, theirs = metrics.load_metric("squad_v2"), hub("squad_v2")
    rename = {"exact": "exact_match"}
    for preds, refs, na in squad_cases(rnd, args.random_cases, version_2=True):
        inputs = {"predictions": [{"id": q, "prediction_text": p, "no_answer_probability": na[q]} for q, p in preds.items()],
                  "references": _refs(refs)}
        for threshold in (1.0, 0.5):  # the hub's default, and one that turns answers into "no answer"
            hub_out = theirs.compute(**inputs, no_answer_threshold=threshold)
            modules.add(f"squad_v2/threshold={threshold}", ours.compute(**inputs, no_answer_threshold=threshold), hub_out)
            # lpaf's function (questions in the predictions' order, as the stage passes them)
            ordered = {q: refs[q] for q in preds}
            lpaf_out = metrics.squad_v2_metrics(preds, ordered, na, threshold=threshold)
            expected = {rename.get(k, k): v for k, v in hub_out.items() if k != "total"}
            functions.add(f"squad_v2_metrics/threshold={threshold}", {k: lpaf_out[k] for k in expected}, expected)

    overall = max(v for group in modules.max.values() for v in group.values())
    overall_functions = max(v for group in functions.max.values() for v in group.values())
    commit = subprocess.run(["git", "-C", str(args.evaluate_repo), "rev-parse", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or None
    import importlib.metadata as md

    result = {
        "benchmark": "metrics_vs_hub",
        "what": "largest |lpaf - hub| per metric, lpaf's evaluate modules (lpaf/metric_modules) and lpaf's "
                "functions (lpaf.metrics) against the hub modules loaded by path from huggingface/evaluate",
        "command": f"python benchmarks/metrics_vs_hub.py --evaluate-repo <checkout> --random-cases "
                   f"{args.random_cases} --seed {args.seed}",
        "evaluate_repo_commit": commit,
        "random_cases": args.random_cases,
        "seed": args.seed,
        "modules": modules.as_json(),
        "lpaf_functions": functions.as_json(),
        "max_abs_diff_overall": {"modules": overall, "lpaf_functions": overall_functions},
        "notes": ["hub_nan_lpaf_zero: undefined correlations (constant input); the hub returns NaN, lpaf 0 "
                  "(excluded from max_abs_diff)",
                  "stsb values and squad_v2 no-answer probabilities are float32 in the hub modules, float64 in lpaf's"],
        "wall_time_s": round(time.perf_counter() - start, 1),
        "versions": library_versions() | {"evaluate": md.version("evaluate"), "scikit-learn": md.version("scikit-learn"),
                                          "scipy": md.version("scipy")},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, result)
    for label, diffs in (("modules", modules), ("lpaf functions", functions)):
        print(f"{label}: largest |lpaf - hub| per metric")
        for group, keys in sorted(diffs.max.items()):
            print(f"  {group:34s} " + "  ".join(f"{k}={v:.2g}" for k, v in sorted(keys.items())))
    print(f"NaN (hub) vs 0 (lpaf), cases: {modules.as_json()['hub_nan_lpaf_zero']}; wrote {args.out}")


if __name__ == "__main__":
    main()
