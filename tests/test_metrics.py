"""Metrics against values computed by hand on tiny arrays, and SQuAD normalisation edge cases."""

from __future__ import annotations

import json
import logging
import math
import os
import warnings
from pathlib import Path

import numpy as np
import pytest

from lpaf import metrics
from lpaf.errors import LpafError
from lpaf.tasks import TASKS, get_task

SQUAD_DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "squad" / "v1.1" / "dev-v1.1.json"

# preds [1,1,0,0,1] vs labels [1,0,0,1,1]: TP 2, TN 1, FP 1, FN 1.
P5 = [1, 1, 0, 0, 1]
Y5 = [1, 0, 0, 1, 1]


@pytest.mark.parametrize("name, preds, labels, expected", [
    ("accuracy", [1, 0, 1, 1], [1, 1, 1, 0], 0.5),
    ("accuracy", [0, 1, 2, 2], [0, 1, 2, 1], 0.75),  # 3 classes (MNLI)
    ("f1", P5, Y5, 2 / 3),  # P = R = 2/3
    ("f1", [0, 0, 1], [1, 0, 1], 2 / 3),  # P = 1, R = 1/2
    ("f1", [0, 0, 0], [1, 0, 1], 0.0),  # nothing predicted positive
    ("matthews_correlation", P5, Y5, 1 / 6),  # (2*1 - 1*1) / sqrt(3*3*2*2)
    ("matthews_correlation", [1, 0, 1, 0], [0, 1, 0, 1], -1.0),
    ("matthews_correlation", [1, 1, 1, 1], [0, 1, 0, 1], 0.0),  # constant prediction
    ("pearson", [1.0, 2.0, 3.0], [1.0, 2.0, 4.0], 9 / math.sqrt(84)),  # cov 3, |dx| sqrt2, |dy| sqrt(42)/3
    ("pearson", [[1.0], [2.0], [3.0]], [2.0, 4.0, 6.0], 1.0),  # (N, 1) regression output
    ("pearson", [2.5, 2.5, 2.5], [1.0, 2.0, 4.0], 0.0),  # constant prediction: defined as 0
    ("spearmanr", [1.0, 2.0, 3.0, 4.0], [1.0, 3.0, 2.0, 4.0], 0.8),  # 1 - 6*2/(4*15)
    ("spearmanr", [1.0, 2.0, 3.0], [9.0, 4.0, 1.0], -1.0),
    ("spearmanr", [0.0, 0.0, 0.0], [1.0, 2.0, 3.0], 0.0),
])
def test_glue_metric_values(name, preds, labels, expected):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # undefined cases must not warn either
        value = metrics.get_metric(name)(preds, labels)
    assert type(value) is float
    assert value == pytest.approx(expected, abs=1e-12)


def test_numpy_inputs_give_python_floats():
    value = metrics.accuracy(np.array([1, 0]), np.array([1, 1]))
    assert type(value) is float and value == 0.5


@pytest.mark.parametrize("preds, labels, match", [
    (np.zeros((3, 2)), [0, 1, 0], "class ids"),
    ([0, 1], [0, 1, 1], "2 predictions but 3 labels"),
    ([], [], "zero examples"),
])
def test_bad_shapes_raise(preds, labels, match):
    with pytest.raises(ValueError, match=match):
        metrics.accuracy(preds, labels)


@pytest.mark.parametrize("task, expected", [
    ("mrpc", {"f1": 2 / 3, "accuracy": 0.6}),
    ("qqp", {"accuracy": 0.6, "f1": 2 / 3}),
    ("cola", {"matthews_correlation": 1 / 6}),
    ("sst2", {"accuracy": 0.6}),
    ("rte", {"accuracy": 0.6}),
])
def test_compute_metrics_classification(task, expected):
    result = metrics.compute_metrics(get_task(task), P5, Y5)
    assert list(result) == list(get_task(task).metrics)
    assert result == pytest.approx(expected)


def test_compute_metrics_regression():
    result = metrics.compute_metrics(get_task("stsb"), np.array([[1.0], [2.0], [3.0], [4.0]]),
                                     [1.0, 3.0, 2.0, 4.0])
    assert list(result) == ["pearson", "spearmanr"]
    assert result["pearson"] == pytest.approx(0.8)  # dx = dy up to a swap: 4/5
    assert result["spearmanr"] == pytest.approx(0.8)


def test_compute_metrics_covers_every_glue_task():
    for task in TASKS.values():
        if task.is_qa:
            with pytest.raises(ValueError, match="squad_metrics"):
                metrics.compute_metrics(task, [0], [0])
            continue
        labels = [0, 1, 1, 0, 1] if not task.is_regression else [0.5, 1.0, 3.0, 2.0, 4.5]
        result = metrics.compute_metrics(task, labels, labels)
        assert list(result) == list(task.metrics)
        assert all(v == pytest.approx(1.0) for v in result.values())


def test_unknown_metric_lists_valid_names():
    with pytest.raises(LpafError, match="unknown metric 'bleu'; valid metrics: accuracy, f1, "
                                        "matthews_correlation, pearson, spearmanr"):
        metrics.get_metric("bleu")


# --- SQuAD -------------------------------------------------------------------------------------

@pytest.mark.parametrize("raw, expected", [
    ("The Cat", "cat"),
    ("  Hello\tWorld \n", "hello world"),
    ("an apple, a pear and THE plum.", "apple pear and plum"),
    ("theater anthem", "theater anthem"),  # articles only as whole words
    ("(the) cat", "cat"),  # punctuation goes before articles
    ("U.S.A.", "usa"),
    ("don't", "dont"),
    ("«hi»", "«hi»"),  # only ASCII punctuation, as in the official script
    ("", ""),
    ("The", ""),
    ("1,000", "1000"),
])
def test_normalize_answer(raw, expected):
    assert metrics.normalize_answer(raw) == expected


@pytest.mark.parametrize("prediction, golds, em, f1", [
    ("the Cat", ["cat", "dog"], 1.0, 1.0),
    ("the cat sat", ["cat sat on mat"], 0.0, 2 / 3),  # P 1, R 1/2
    ("the cat sat", ["cat sat on mat", "a cat sat"], 1.0, 1.0),  # max over gold answers
    ("cat cat", ["cat"], 0.0, 2 / 3),  # bag of tokens: common = min count = 1; P 1/2, R 1
    ("dog", ["cat", "mouse"], 0.0, 0.0),
    ("", [""], 1.0, 0.0),  # official v1.1: empty answers match exactly but have F1 0
    ("the", ["a"], 1.0, 0.0),
])
def test_squad_single_question(prediction, golds, em, f1):
    assert metrics.squad_exact_match(prediction, golds) == em
    assert metrics.squad_f1(prediction, golds) == pytest.approx(f1)


def test_squad_v2_empty_answers():
    assert metrics.squad_f1("", [""], version_2=True) == 1.0
    assert metrics.squad_f1("cat", [""], version_2=True) == 0.0


@pytest.mark.parametrize("golds", [[], "cat"])
def test_squad_needs_a_list_of_golds(golds):
    with pytest.raises(ValueError, match="non-empty list"):
        metrics.squad_f1("cat", golds)


def test_squad_metrics_percent_and_missing(caplog):
    refs = {"q1": ["Paris"], "q2": ["cat sat on mat"], "q3": ["never answered"]}
    preds = {"q1": "paris.", "q2": "the cat sat"}
    with caplog.at_level(logging.WARNING, logger="lpaf.metrics"):
        result = metrics.squad_metrics(preds, refs)
    assert result == pytest.approx({"exact_match": 100 / 3, "f1": 100 * (1 + 2 / 3) / 3})
    assert "1 of 3 questions have no prediction" in caplog.text


def test_squad_metrics_unanswerable():
    refs = {"q1": [], "q2": ["cat"]}
    with pytest.raises(LpafError, match="question 'q1' has no gold answer"):
        metrics.squad_metrics({"q1": "", "q2": "cat"}, refs)
    result = metrics.squad_metrics({"q1": "", "q2": "cat"}, refs, version_2=True)
    assert result == {"exact_match": 100.0, "f1": 100.0}


@pytest.mark.skipif(not SQUAD_DEV.is_file() and not os.environ.get("CI"), reason="needs ../shared")
def test_squad_dev_gold_scores_100():
    """The official dev set scored against its own first answers gives 100 / 100."""
    data = json.loads(SQUAD_DEV.read_text())["data"]
    refs = {qa["id"]: [a["text"] for a in qa["answers"]]
            for article in data for para in article["paragraphs"] for qa in para["qas"]}
    assert len(refs) == 10570
    result = metrics.squad_metrics({qid: golds[0] for qid, golds in refs.items()}, refs)
    assert result == {"exact_match": 100.0, "f1": 100.0}
    wrong = metrics.squad_metrics({qid: "" for qid in refs}, refs)
    assert wrong["f1"] == 0.0  # an empty answer never overlaps (v1.1)


def test_prediction_spread_flags_collapsed_models():
    from lpaf.metrics import prediction_spread
    from lpaf.tasks import get_task

    mrpc, stsb, squad = get_task("mrpc"), get_task("stsb"), get_task("squad")
    constant = prediction_spread(mrpc, np.ones(408, dtype=int))
    assert constant["degenerate"] and constant["majority_fraction"] == 1.0 and constant["distinct"] == 1
    near = prediction_spread(mrpc, np.r_[np.ones(405, dtype=int), np.zeros(3, dtype=int)])  # 99.3% one class
    assert near["degenerate"]
    mixed = prediction_spread(mrpc, np.r_[np.ones(300, dtype=int), np.zeros(108, dtype=int)])
    assert not mixed["degenerate"] and mixed["majority_fraction"] == pytest.approx(300 / 408)
    labels = np.linspace(0, 5, 100)
    assert prediction_spread(stsb, np.full(100, 2.5) + 1e-4 * labels, labels)["degenerate"]
    assert not prediction_spread(stsb, labels * 0.5, labels)["degenerate"]
    assert prediction_spread(squad, ["the"] * 100)["degenerate"]
    assert not prediction_spread(squad, [f"answer {i % 7}" for i in range(100)])["degenerate"]


# --- SQuAD 2.0 ------------------------------------------------------------------------------------

def _brute_force_v2(preds: dict, refs: dict, na: dict, thresh: float) -> tuple[float, float]:
    """Exact / F1 (percent) when questions with no-answer score > thresh answer "" (official rules;
    no question here has gold texts that all normalise to nothing)."""
    ex = f1 = 0.0
    for q, golds in refs.items():
        golds = [g for g in golds if metrics.normalize_answer(g)] or [""]
        final = "" if na[q] > thresh else preds[q]
        ex += metrics.squad_exact_match(final, golds)
        f1 += metrics.squad_f1(final, golds, version_2=True)
    return 100 * ex / len(refs), 100 * f1 / len(refs)


def test_squad_v2_metrics_splits_and_best_threshold():
    refs = {"a": ["Paris"], "b": ["the red car", "red car"], "c": [], "d": [], "e": ["blue sky"]}
    spans = {"a": "Paris", "b": "car", "c": "London", "d": "", "e": "grey sky"}
    na = {"a": -3.0, "b": 1.0, "c": 2.0, "d": -1.0, "e": 0.5}
    m = metrics.squad_v2_metrics(spans, refs, na, threshold=0.0)
    assert list(m) == ["exact_match", "f1", "HasAns_exact", "HasAns_f1", "HasAns_total", "NoAns_exact", "NoAns_f1",
                       "NoAns_total", "best_exact", "best_exact_thresh", "best_f1", "best_f1_thresh"]
    # threshold 0: b, c, e answer "" -> a right, b wrong (gold has answer), c right, d right (span ""), e wrong
    assert m["exact_match"] == pytest.approx(60.0) and m["f1"] == pytest.approx(60.0)
    assert m["HasAns_total"] == 3 and m["NoAns_total"] == 2
    assert m["HasAns_exact"] == pytest.approx(100 / 3) and m["NoAns_exact"] == pytest.approx(100.0)
    assert (m["exact_match"], m["f1"]) == pytest.approx(_brute_force_v2(spans, refs, na, 0.0))
    # the best threshold is the best of every cut between the sorted scores
    cuts = [-10.0] + sorted(na.values())
    best_exact = max(_brute_force_v2(spans, refs, na, t)[0] for t in cuts)
    best_f1 = max(_brute_force_v2(spans, refs, na, t)[1] for t in cuts)
    assert m["best_exact"] == pytest.approx(best_exact) and m["best_f1"] == pytest.approx(best_f1)
    assert _brute_force_v2(spans, refs, na, m["best_f1_thresh"])[1] == pytest.approx(best_f1)
    # by hand: answering a, d, e, b (na <= 1.0) gives 1 + 1 + 1/2 + 2/3 + 1 (c abstains) of 5
    assert m["best_f1"] == pytest.approx(100 * (1 + 1 + 0.5 + 2 / 3 + 1) / 5) and m["best_f1_thresh"] == 1.0
    assert m["best_exact"] == pytest.approx(60.0) and m["best_exact_thresh"] == -3.0


def test_squad_v2_without_no_answer_scores_scores_the_spans():
    m = metrics.squad_v2_metrics({"a": "x", "b": ""}, {"a": ["x"], "b": []})
    assert m["exact_match"] == 100.0 and "best_f1" not in m


def test_squad_v2_empty_split_and_missing_span():
    m = metrics.squad_v2_metrics({}, {"a": [], "b": []}, {"a": 0.5, "b": -0.5})  # no spans: "" everywhere
    assert m["exact_match"] == 100.0 and m["NoAns_total"] == 2.0
    assert m["HasAns_total"] == 0.0 and m["HasAns_exact"] == 0.0 and m["HasAns_f1"] == 0.0


def test_squad_v2_na_scores_must_cover_every_question():
    with pytest.raises(LpafError, match=r"na_scores has no no-answer score for 1 of 2 questions \(first: 'b'\)"):
        metrics.squad_v2_metrics({"a": "x", "b": "y"}, {"a": ["x"], "b": []}, {"a": 0.1})


def test_squad_v2_gold_texts_that_normalise_to_nothing():
    """Official rule: a question "has an answer" when its gold list is non-empty, even if every gold
    text normalises to nothing; its spans are still scored against the empty answer."""
    m = metrics.squad_v2_metrics({"d": ""}, {"d": [""]}, {"d": -1.0})
    assert m["HasAns_total"] == 1.0 and m["exact_match"] == 100.0
    m = metrics.squad_v2_metrics({"d": ""}, {"d": [""]}, {"d": 1.0})  # abstains: wrong on a has-answer question
    assert m["exact_match"] == 0.0
