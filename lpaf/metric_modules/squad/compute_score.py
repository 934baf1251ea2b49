"""The SQuAD v1.1 scoring rules of the official ``evaluate-v1.1.py``, written for lpaf (Apache-2.0).

Answers are normalised (lower case, ASCII punctuation removed, the articles a/an/the removed as
whole words, whitespace collapsed); exact match compares normalised strings, F1 is the F1 of the
bags of normalised tokens; each question takes the best score over its gold answers. As in the
official script, an answer that normalises to nothing has F1 0 even against an empty gold answer
(its exact match is 1). Scores are percentages over every question; a question without a
prediction scores 0.
"""

from __future__ import annotations

import logging
import re
import string
from collections import Counter

logger = logging.getLogger(__name__)

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(s: str) -> str:
    """Lower-case, drop ASCII punctuation, drop the articles a/an/the, collapse whitespace."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCTUATION)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def f1_score(prediction: str, ground_truth: str) -> float:
    """Token-level F1 (bag of normalised tokens) of one prediction against one gold answer, in [0, 1]."""
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(ground_truth).split()
    num_same = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(pred_tokens)
    recall = num_same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def exact_match_score(prediction: str, ground_truth: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(ground_truth))


def metric_max_over_ground_truths(metric_fn, prediction: str, ground_truths) -> float:
    return max(metric_fn(prediction, gold) for gold in ground_truths)


def compute_score(dataset, predictions) -> dict[str, float]:
    """``{"exact_match", "f1"}`` in percent for ``dataset`` (the SQuAD JSON ``data`` list:
    articles > paragraphs > qas with ``id`` and ``answers`` [{"text": ...}]) and ``predictions``
    (question id -> answer text)."""
    exact_match = f1 = 0.0
    total = 0
    missing = []
    for article in dataset:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                total += 1
                golds = [answer["text"] for answer in qa["answers"]]
                if not golds:
                    raise ValueError(f"question {qa['id']!r} has no gold answer; SQuAD v1.1 needs at least one "
                                     f"(score unanswerable questions with squad_v2)")
                if qa["id"] not in predictions:
                    missing.append(qa["id"])
                    continue
                prediction = predictions[qa["id"]]
                exact_match += metric_max_over_ground_truths(exact_match_score, prediction, golds)
                f1 += metric_max_over_ground_truths(f1_score, prediction, golds)
    if total == 0:
        raise ValueError("no reference questions to score")
    if missing:
        logger.warning("%d of %d questions have no prediction and score 0 (first: %s)",
                       len(missing), total, missing[0])
    return {"exact_match": 100.0 * exact_match / total, "f1": 100.0 * f1 / total}
