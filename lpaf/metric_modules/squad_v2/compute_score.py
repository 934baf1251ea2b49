"""The SQuAD 2.0 scoring rules of the official ``evaluate-v2.0.py``, written for lpaf (Apache-2.0).

Per question: the gold answers that normalise to nothing are dropped, and a question left with
none accepts only the empty answer; exact match and token F1 take the best gold answer, and an
empty answer (or gold) has F1 1 against an empty one and 0 otherwise. A question *has an answer*
when its gold list is non-empty (the official ``bool(qa["answers"])``). With a no-answer
probability above the threshold, the prediction becomes "no answer": score 1 on a question
without an answer, 0 on one with. ``find_best_thresh`` is the official sweep: start from "no
answer" everywhere and switch questions to their predicted text in increasing order of no-answer
probability, keeping the best total (a non-empty predicted text on a question without an answer
costs 1, as in the official script, even if it normalises to nothing).
"""

from __future__ import annotations

import re
import string
from collections import Counter

# The same normalisation as squad/compute_score.py, repeated on purpose: `evaluate` loads each module
# directory on its own (copied to a private cache), so one module cannot import another's file.
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(s: str) -> str:
    """Lower-case, drop ASCII punctuation, drop the articles a/an/the, collapse whitespace."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCTUATION)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def get_tokens(s: str) -> list[str]:
    return normalize_answer(s).split() if s else []


def compute_exact(a_gold: str, a_pred: str) -> float:
    return float(normalize_answer(a_gold) == normalize_answer(a_pred))


def compute_f1(a_gold: str, a_pred: str) -> float:
    gold_tokens = get_tokens(a_gold)
    pred_tokens = get_tokens(a_pred)
    if not gold_tokens or not pred_tokens:
        return float(gold_tokens == pred_tokens)  # a no-answer scores 1 only against a no-answer
    num_same = sum((Counter(gold_tokens) & Counter(pred_tokens)).values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(pred_tokens)
    recall = num_same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def gold_answers(texts) -> list[str]:
    """The gold answers that count: those that normalise to something, else the empty answer."""
    return [t for t in texts if normalize_answer(t)] or [""]


def raw_scores(golds: dict[str, list[str]], preds: dict[str, str]) -> tuple[dict[str, float], dict[str, float]]:
    """Exact match and F1 (in [0, 1]) of each question's predicted text, best over its gold answers."""
    exact, f1 = {}, {}
    for qid, texts in golds.items():
        answers = gold_answers(texts)
        exact[qid] = max(compute_exact(a, preds[qid]) for a in answers)
        f1[qid] = max(compute_f1(a, preds[qid]) for a in answers)
    return exact, f1


def apply_no_ans_threshold(scores: dict[str, float], na_probs: dict[str, float], has_ans: dict[str, bool],
                           threshold: float) -> dict[str, float]:
    return {qid: float(not has_ans[qid]) if na_probs[qid] > threshold else s for qid, s in scores.items()}


def make_eval_dict(exact: dict[str, float], f1: dict[str, float], qids: list[str]) -> dict[str, float]:
    total = len(qids)
    return {"exact": 100.0 * sum(exact[q] for q in qids) / total,
            "f1": 100.0 * sum(f1[q] for q in qids) / total,
            "total": total}


def find_best_thresh(preds: dict[str, str], scores: dict[str, float], na_probs: dict[str, float],
                     has_ans: dict[str, bool]) -> tuple[float, float]:
    """(best score in percent, the no-answer probability threshold that reaches it).

    Questions are visited in increasing no-answer probability, ties in the order of ``na_probs``
    (the predictions' order), as in the official script: within a tie the order can matter."""
    current = best = float(sum(not has_ans[q] for q in scores))
    best_thresh = 0.0
    for qid in sorted(na_probs, key=lambda q: na_probs[q]):
        if qid not in scores:
            continue  # a prediction for a question that is not in the references
        if has_ans[qid]:
            current += scores[qid]
        elif preds[qid]:
            current -= 1.0
        if current > best:
            best, best_thresh = current, na_probs[qid]
    return 100.0 * best / len(scores), best_thresh


def compute_score(golds: dict[str, list[str]], preds: dict[str, str], na_probs: dict[str, float],
                  no_answer_threshold: float = 1.0) -> dict[str, float]:
    """The official SQuAD 2.0 evaluation dict for gold answer texts, predicted texts and no-answer
    probabilities, all keyed by question id (every question of ``golds`` needs a prediction).

    Keys: exact, f1, total; HasAns_exact, HasAns_f1, HasAns_total (when some question has an
    answer); NoAns_* (when some has none); best_exact, best_exact_thresh, best_f1, best_f1_thresh.
    """
    if not golds:
        raise ValueError("no reference questions to score")
    missing = [q for q in golds if q not in preds]
    if missing:
        raise ValueError(f"{len(missing)} of {len(golds)} questions have no prediction (first: {missing[0]!r}); "
                         f"SQuAD 2.0 scores need one per question (the empty text for 'no answer')")
    has_ans = {q: bool(texts) for q, texts in golds.items()}
    exact_raw, f1_raw = raw_scores(golds, preds)
    exact = apply_no_ans_threshold(exact_raw, na_probs, has_ans, no_answer_threshold)
    f1 = apply_no_ans_threshold(f1_raw, na_probs, has_ans, no_answer_threshold)
    out = make_eval_dict(exact, f1, list(golds))
    for prefix, qids in (("HasAns", [q for q in golds if has_ans[q]]), ("NoAns", [q for q in golds if not has_ans[q]])):
        if qids:
            out |= {f"{prefix}_{k}": v for k, v in make_eval_dict(exact, f1, qids).items()}
    out["best_exact"], out["best_exact_thresh"] = find_best_thresh(preds, exact_raw, na_probs, has_ans)
    out["best_f1"], out["best_f1_thresh"] = find_best_thresh(preds, f1_raw, na_probs, has_ans)
    return out
