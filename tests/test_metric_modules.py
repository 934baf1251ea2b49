"""The evaluate modules in lpaf/metric_modules against the official definitions, on hand-made cases.

GLUE against scikit-learn / scipy and values computed by hand; SQuAD v1.1 against the official
normalisation rules (re-stated here from evaluate-v1.1.py) with EM / F1 by hand; SQuAD 2.0 with
unanswerable questions, the has-answer / no-answer splits and best thresholds by hand. Then
loading: offline (HF_HUB_OFFLINE=1 and unset, sockets disabled), two processes at once, nothing
written to the home directory, and ``evaluate.load(<path>)`` giving the same numbers.
(The hub modules themselves are compared in benchmarks/metrics_vs_hub.py.)
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import string
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as skm

from lpaf import metrics
from lpaf.errors import LpafError
from lpaf.metric_modules import MODULE_NAMES, module_path

ROOT = Path(__file__).resolve().parents[1]

GLUE_CONFIGS = {
    "cola": ["matthews_correlation"], "stsb": ["pearson", "spearmanr"], "mrpc": ["accuracy", "f1"],
    "qqp": ["accuracy", "f1"], "sst2": ["accuracy"], "mnli": ["accuracy"], "mnli_matched": ["accuracy"],
    "mnli_mismatched": ["accuracy"], "qnli": ["accuracy"], "rte": ["accuracy"], "wnli": ["accuracy"],
    "hans": ["accuracy"],
}


def _glue(config, predictions, references):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning, not even for undefined values
        return metrics.load_metric("glue", config).compute(predictions=predictions, references=references)


def test_modules_are_evaluate_metrics_loaded_by_path():
    import evaluate

    for name in MODULE_NAMES:
        metric = metrics.load_metric(name, "mrpc" if name == "glue" else None)
        assert isinstance(metric, evaluate.Metric)
        assert metric is metrics.load_metric(name, "mrpc" if name == "glue" else None)  # cached per process
        # evaluate's loader copied the script from its path and imported the copy (not lpaf's package)
        assert type(metric).__module__.startswith(f"lpaf_evaluate_modules.metrics.{name}.")
        assert metric.keep_in_memory
        assert metric.citation and metric.description
    assert Path(module_path("squad"), "squad.py").is_file()


# --- GLUE ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("config, keys", GLUE_CONFIGS.items())
def test_glue_configs_match_sklearn_and_scipy(config, keys):
    rng = np.random.default_rng(len(config))
    n = 200
    if config == "stsb":
        y = rng.uniform(0, 5, n)
        p = y + rng.normal(0, 1.0, n)
    else:
        classes = 3 if config.startswith("mnli") else 2
        y = rng.integers(0, classes, n)
        p = np.where(rng.random(n) < 0.7, y, rng.integers(0, classes, n))
    result = _glue(config, p, y)
    assert list(result) == keys  # the hub module's keys, in its order
    expected = {"accuracy": lambda: skm.accuracy_score(y, p), "f1": lambda: skm.f1_score(y, p),
                "matthews_correlation": lambda: skm.matthews_corrcoef(y, p),
                "pearson": lambda: stats.pearsonr(p, y)[0], "spearmanr": lambda: stats.spearmanr(p, y)[0]}
    for key in keys:
        assert type(result[key]) is float
        assert result[key] == pytest.approx(float(expected[key]()), abs=1e-12)


@pytest.mark.parametrize("config, preds, labels, expected", [
    # preds [1,1,0,0,1] vs labels [1,0,0,1,1]: TP 2, TN 1, FP 1, FN 1
    ("mrpc", [1, 1, 0, 0, 1], [1, 0, 0, 1, 1], {"accuracy": 0.6, "f1": 2 / 3}),
    ("qqp", [0, 0, 1], [1, 0, 1], {"accuracy": 2 / 3, "f1": 2 / 3}),  # P 1, R 1/2
    ("qqp", [0, 0, 0], [1, 0, 1], {"accuracy": 1 / 3, "f1": 0.0}),  # nothing predicted positive
    ("cola", [1, 1, 0, 0, 1], [1, 0, 0, 1, 1], {"matthews_correlation": 1 / 6}),  # (2*1-1*1)/sqrt(3*3*2*2)
    ("cola", [1, 0, 1, 0], [0, 1, 0, 1], {"matthews_correlation": -1.0}),
    ("cola", [1, 1, 1, 1], [0, 1, 0, 1], {"matthews_correlation": 0.0}),  # constant prediction
    ("mnli", [0, 1, 2, 2], [0, 1, 2, 1], {"accuracy": 0.75}),
    ("stsb", [1.0, 2.0, 3.0], [1.0, 2.0, 4.0], {"pearson": 9 / math.sqrt(84), "spearmanr": 1.0}),
    ("stsb", [1.0, 2.0, 3.0, 4.0], [1.0, 3.0, 2.0, 4.0], {"pearson": 0.8, "spearmanr": 0.8}),  # 1 - 6*2/(4*15)
    ("stsb", [2.5, 2.5, 2.5], [1.0, 2.0, 4.0], {"pearson": 0.0, "spearmanr": 0.0}),  # undefined: 0, not NaN
    ("stsb", [1.0, 2.0, 3.0], [2.0, 2.0, 2.0], {"pearson": 0.0, "spearmanr": 0.0}),
    ("stsb", [1.0], [2.0], {"pearson": 0.0, "spearmanr": 0.0}),
    ("stsb", [1.0, float("nan"), 3.0], [1.0, 2.0, 4.0], {"pearson": 0.0, "spearmanr": 0.0}),  # diverged model
])
def test_glue_hand_computed(config, preds, labels, expected):
    assert _glue(config, preds, labels) == pytest.approx(expected, abs=1e-12)


def test_glue_stsb_keeps_float64():
    y = np.array([0.1, 0.2, 0.30000001, 0.4])
    p = np.array([0.1, 0.25, 0.3, 0.41])
    assert _glue("stsb", p, y)["pearson"] == stats.pearsonr(p, y)[0]  # bit-exact: no float32 cast


def test_glue_unknown_config_lists_valid_ones():
    with pytest.raises(LpafError, match="unknown GLUE configuration 'squad'; valid configurations: cola, stsb"):
        metrics.load_metric("glue", "squad")
    with pytest.raises(LpafError, match="unknown metric module 'bleu'; lpaf ships glue, squad, squad_v2"):
        metrics.load_metric("bleu")


def test_glue_bad_input_is_one_line_error():
    with pytest.raises(ValueError, match="predictions must be class ids"):
        metrics.accuracy([0.5, 1.0], [0, 1])
    with pytest.raises(LpafError, match="Mismatch in the number of predictions") as info:
        metrics.load_metric("glue", "sst2")  # warm
        metrics._compute("glue", "sst2", predictions=[0, 1], references=[0])
    assert "\n" not in str(info.value)


# --- SQuAD v1.1 ----------------------------------------------------------------------------------

def _official_normalize(s: str) -> str:
    """evaluate-v1.1.py's normalize_answer, restated: lower, remove punctuation, articles, extra spaces."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def _squad(preds: dict[str, str], refs: dict[str, list[str]]) -> dict[str, float]:
    return metrics.load_metric("squad").compute(
        predictions=[{"id": q, "prediction_text": p} for q, p in preds.items()],
        references=[{"id": q, "answers": {"text": golds, "answer_start": [0] * len(golds)}} for q, golds in refs.items()])


def test_squad_normalisation_matches_the_official_rules():
    rng = random.Random(0)
    alphabet = "aAnNtThHeE .,;!?'\"()-\t\n«»éxyz019"
    cases = ["The Cat", "an apple, a pear and THE plum.", "theater anthem", "(the) cat", "U.S.A.", "a-n the-a",
             "«hi»", "", "  spaced \t out \n", "An"] + ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 20)))
                                                     for _ in range(500)]
    for case in cases:
        assert metrics.normalize_answer(case) == _official_normalize(case), case


@pytest.mark.parametrize("prediction, golds, em, f1", [
    ("the Cat", ["cat", "dog"], 100.0, 100.0),  # articles and case
    ("Paris.", ["paris"], 100.0, 100.0),  # punctuation
    ("  new \t york ", ["New York"], 100.0, 100.0),  # whitespace
    ("the cat sat", ["cat sat on mat"], 0.0, 100 * 2 / 3),  # P 1, R 1/2
    ("the cat sat", ["cat sat on mat", "a cat sat"], 100.0, 100.0),  # max over gold answers
    ("cat sat on", ["cat sat on mat", "sat"], 0.0, 100 * 6 / 7),  # F1 max: 6/7 (P 1, R 3/4) beats 1/2
    ("cat cat", ["cat"], 0.0, 100 * 2 / 3),  # bag of tokens: common = min count = 1; P 1/2, R 1
    ("dog", ["cat", "mouse"], 0.0, 0.0),
    ("", [""], 100.0, 0.0),  # official v1.1: empty answers match exactly but have F1 0
    ("the", ["a"], 100.0, 0.0),
])
def test_squad_v1_single_question(prediction, golds, em, f1):
    assert _squad({"q": prediction}, {"q": golds}) == pytest.approx({"exact_match": em, "f1": f1})


def test_squad_v1_averages_over_questions_in_percent():
    refs = {"q1": ["Paris"], "q2": ["cat sat on mat"], "q3": ["blue"], "q4": ["a dog", "the hound"]}
    preds = {"q1": "paris.", "q2": "the cat sat", "q3": "red", "q4": "Hound!"}
    assert _squad(preds, refs) == pytest.approx({"exact_match": 50.0, "f1": 100 * (1 + 2 / 3 + 0 + 1) / 4})


def test_squad_v1_prediction_for_another_question_scores_zero(caplog):
    # evaluate wants as many predictions as references; one answers an id that is not asked: q2 scores 0
    result = _squad({"q1": "x", "zz": "y"}, {"q1": ["x"], "q2": ["y"]})
    assert result == {"exact_match": 50.0, "f1": 50.0}
    assert "1 of 2 questions have no prediction" in caplog.text


def test_squad_v1_needs_gold_answers():
    with pytest.raises(LpafError, match="question 'q' has no gold answer"):
        metrics._compute("squad", predictions=[{"id": "q", "prediction_text": "x"}],
                         references=[{"id": "q", "answers": {"text": [], "answer_start": []}}])


# --- SQuAD 2.0 -----------------------------------------------------------------------------------

def _squad_v2(preds: list[tuple[str, str, float]], refs: dict[str, list[str]], **kwargs) -> dict[str, float]:
    return metrics.load_metric("squad_v2").compute(
        predictions=[{"id": q, "prediction_text": p, "no_answer_probability": na} for q, p, na in preds],
        references=[{"id": q, "answers": {"text": golds, "answer_start": [0] * len(golds)}} for q, golds in refs.items()],
        **kwargs)


REFS_V2 = {"a": ["Paris"], "b": ["the red car", "red car"], "c": [], "d": [], "e": ["blue sky"]}
PREDS_V2 = [("a", "Paris", 0.05), ("b", "car", 0.6), ("c", "London", 0.9), ("d", "", 0.3), ("e", "grey sky", 0.5)]
# Raw scores (the predicted texts): exact a 1, b 0, c 0, d 1, e 0; F1 a 1, b 2/3 (P 1, R 1/2), c 0, d 1 (empty vs
# empty), e 1/2 (P 1/2, R 1/2).


def test_squad_v2_hub_default_threshold_scores_the_texts():
    m = _squad_v2(PREDS_V2, REFS_V2)  # threshold 1.0: no probability exceeds it, the texts are scored
    assert m == pytest.approx({
        "exact": 40.0, "f1": 100 * (1 + 2 / 3 + 0 + 1 + 0.5) / 5, "total": 5,
        "HasAns_exact": 100 / 3, "HasAns_f1": 100 * (1 + 2 / 3 + 0.5) / 3, "HasAns_total": 3,
        "NoAns_exact": 50.0, "NoAns_f1": 50.0, "NoAns_total": 2,
        # sweep, by hand: start 2 (c, d right as "no answer"); a +1 -> 3 (best, 0.05); d 0; e +0 / +0.5;
        # b +0 / +2/3; c -1 ("London" on an unanswerable question)
        "best_exact": 60.0, "best_exact_thresh": 0.05,
        "best_f1": 100 * (2 + 1 + 0.5 + 2 / 3) / 5, "best_f1_thresh": 0.6,
    })
    assert list(m) == ["exact", "f1", "total", "HasAns_exact", "HasAns_f1", "HasAns_total", "NoAns_exact", "NoAns_f1",
                       "NoAns_total", "best_exact", "best_exact_thresh", "best_f1", "best_f1_thresh"]
    assert type(m["total"]) is int


def test_squad_v2_threshold_turns_answers_into_no_answer():
    m = _squad_v2(PREDS_V2, REFS_V2, no_answer_threshold=0.55)  # b (0.6) and c (0.9) answer "no answer"
    # a 1, b 0 (has an answer), c 1, d 1, e 0 / F1 e 1/2
    assert m["exact"] == pytest.approx(60.0) and m["f1"] == pytest.approx(100 * 3.5 / 5)
    assert m["HasAns_exact"] == pytest.approx(100 / 3) and m["NoAns_exact"] == pytest.approx(100.0)
    assert m["best_f1"] == pytest.approx(100 * (2 + 1 + 0.5 + 2 / 3) / 5)  # the sweep ignores the threshold


def test_squad_v2_only_answerable_or_only_unanswerable():
    m = _squad_v2([("a", "Paris", 0.1)], {"a": ["Paris"]})
    assert "NoAns_total" not in m and m["HasAns_total"] == 1 and m["best_exact"] == 100.0
    m = _squad_v2([("c", "", 0.1), ("d", "x", 0.2)], {"c": [], "d": []})
    assert "HasAns_total" not in m and m["exact"] == 50.0
    assert m["best_exact"] == 100.0 and m["best_exact_thresh"] == 0.0  # answering nothing is best


def test_squad_v2_official_sweep_charges_texts_that_normalise_to_nothing():
    # x: unanswerable, text "the" (normalises to nothing: its raw scores are 1); y: answerable and right.
    # The official sweep charges -1 for switching x to its non-empty text, so the best stays at 50%.
    m = _squad_v2([("x", "the", 0.0), ("y", "cat", 0.5)], {"x": [], "y": ["cat"]})
    assert m["exact"] == 100.0 and m["best_exact"] == 50.0 and m["best_exact_thresh"] == 0.0


def test_squad_v2_sweep_ties_follow_the_prediction_order():
    refs = {"p": ["cat"], "q": []}
    first = _squad_v2([("p", "cat", 0.5), ("q", "x", 0.5)], refs)  # p +1 (best 2 at 0.5), then q -1
    second = _squad_v2([("q", "x", 0.5), ("p", "cat", 0.5)], refs)  # q -1, then p +1: never above the start
    assert (first["best_exact"], first["best_exact_thresh"]) == (100.0, 0.5)
    assert (second["best_exact"], second["best_exact_thresh"]) == (50.0, 0.0)


def test_squad_v2_needs_every_prediction():
    with pytest.raises(LpafError, match=r"1 of 2 questions have no prediction \(first: 'b'\)"):
        _compute_v2_with_foreign_id()


def _compute_v2_with_foreign_id():
    return metrics._compute("squad_v2", predictions=[{"id": "a", "prediction_text": "", "no_answer_probability": 0.0},
                                                     {"id": "zz", "prediction_text": "", "no_answer_probability": 0.0}],
                            references=[{"id": "a", "answers": {"text": [], "answer_start": []}},
                                        {"id": "b", "answers": {"text": [], "answer_start": []}}])


# --- lpaf's functions go through the modules ------------------------------------------------------

def test_lpaf_functions_use_the_modules(monkeypatch):
    calls = []
    real = metrics._compute

    def spy(name, config_name=None, **inputs):
        calls.append((name, config_name))
        return real(name, config_name, **inputs)

    monkeypatch.setattr(metrics, "_compute", spy)
    from lpaf.tasks import get_task

    metrics.compute_metrics(get_task("mrpc"), [1, 0], [1, 1])
    metrics.compute_metrics(get_task("stsb"), [1.0, 2.0], [1.0, 3.0])
    metrics.squad_metrics({"q": "x"}, {"q": ["x"]})
    metrics.squad_metrics({"q": "x"}, {"q": ["x"]}, version_2=True)
    metrics.squad_v2_metrics({"q": "x"}, {"q": ["x"]}, {"q": 0.0})
    metrics.pearson([1.0, 2.0], [1.0, 3.0])
    assert calls == [("glue", "mrpc"), ("glue", "stsb"), ("squad", None), ("squad_v2", None), ("squad_v2", None),
                     ("glue", "stsb")]


# --- loading: offline, concurrent, nothing in the home directory ----------------------------------

_CHILD = r"""
import json, socket

def _no_network(*args, **kwargs):
    raise RuntimeError("network access attempted")

socket.socket.connect = socket.socket.connect_ex = _no_network
socket.create_connection = socket.getaddrinfo = _no_network
from lpaf import metrics
from lpaf.tasks import get_task
out = {"mrpc": metrics.compute_metrics(get_task("mrpc"), [1, 1, 0, 0, 1], [1, 0, 0, 1, 1]),
       "squad": metrics.squad_metrics({"q": "the cat", "r": "dog"}, {"q": ["cat"], "r": ["a cat"]}),
       "squad_v2": metrics.squad_v2_metrics({"q": "cat", "r": "x"}, {"q": ["cat"], "r": []}, {"q": -1.0, "r": 2.0}),
       "private_dir": str(metrics._private_root)}
print(json.dumps(out))
"""


def test_loading_offline_concurrent_and_private(tmp_path):
    """Two processes load and compute at once, one with HF_HUB_OFFLINE=1 and one without any offline
    variable, both with sockets disabled: same numbers, nothing written under HOME / HF_HOME, and
    their private module directories in TMPDIR removed at exit."""
    home, tmpdir = tmp_path / "home", tmp_path / "tmp"
    tmpdir.mkdir()
    base = {k: v for k, v in os.environ.items() if not k.endswith("_OFFLINE") and not k.startswith("HF_")}
    base |= {"HOME": str(home), "HF_HOME": str(home / "hf"), "XDG_CACHE_HOME": str(home / "cache"),
             "TMPDIR": str(tmpdir), "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", _CHILD], env=env, cwd=tmp_path, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for env in (base | {"HF_HUB_OFFLINE": "1"}, base)]
    outs = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr[-3000:]
        outs.append(json.loads(stdout.strip().splitlines()[-1]))
    a, b = outs
    assert a.pop("private_dir").startswith(str(tmpdir)) and b.pop("private_dir").startswith(str(tmpdir))
    assert a == b
    assert a["mrpc"] == pytest.approx({"f1": 2 / 3, "accuracy": 0.6})
    assert a["squad"] == pytest.approx({"exact_match": 50.0, "f1": 50.0})
    assert a["squad_v2"]["exact_match"] == 100.0 and a["squad_v2"]["best_exact"] == 100.0
    assert not home.exists(), sorted(str(p) for p in home.rglob("*"))[:10]  # nothing in the home directory
    assert list(tmpdir.iterdir()) == []  # the private module directories are gone


def test_public_evaluate_load_by_path_gives_the_same_numbers(tmp_path, monkeypatch):
    """``evaluate.load(<module dir>, config)``, the documented public route, is the same module."""
    import evaluate

    monkeypatch.setattr(evaluate.config, "HF_MODULES_CACHE", tmp_path / "modules")  # not the user's cache
    rng = np.random.default_rng(0)
    for config in ("mrpc", "stsb", "cola"):
        public = evaluate.load(module_path("glue"), config, cache_dir=str(tmp_path / "metrics"))
        y = rng.uniform(0, 5, 50) if config == "stsb" else rng.integers(0, 2, 50)
        p = y + rng.normal(0, 1, 50) if config == "stsb" else rng.integers(0, 2, 50)
        assert public.compute(predictions=p, references=y) == _glue(config, p, y)
    refs = [{"id": q, "answers": {"text": golds, "answer_start": [0] * len(golds)}} for q, golds in REFS_V2.items()]
    preds = [{"id": q, "prediction_text": t, "no_answer_probability": na} for q, t, na in PREDS_V2]
    public_v2 = evaluate.load(module_path("squad_v2"), cache_dir=str(tmp_path / "metrics"))
    assert public_v2.compute(predictions=preds, references=refs) == _squad_v2(PREDS_V2, REFS_V2)
    refs_v1 = [r for r in refs if r["answers"]["text"]]
    preds_v1 = [{"id": p["id"], "prediction_text": p["prediction_text"]} for p in preds if p["id"] in REFS_V2
                and REFS_V2[p["id"]]]
    public_v1 = evaluate.load(module_path("squad"), cache_dir=str(tmp_path / "metrics"))
    assert public_v1.compute(predictions=preds_v1, references=refs_v1) == metrics.load_metric("squad").compute(
        predictions=preds_v1, references=refs_v1)
    assert any((tmp_path / "modules").rglob("squad_v2.py"))  # evaluate.load copies into HF_MODULES_CACHE


def test_modules_ship_in_the_package():
    """setuptools finds every module directory as a package (pyproject: packages.find include lpaf*)."""
    from setuptools import find_packages

    packages = find_packages(str(ROOT), include=["lpaf*"])
    for name in MODULE_NAMES:
        assert f"lpaf.metric_modules.{name}" in packages
        assert Path(module_path(name), f"{name}.py").is_file()
