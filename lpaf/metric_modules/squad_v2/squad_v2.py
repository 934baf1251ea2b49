"""SQuAD 2.0 as an ``evaluate`` module, with the interface of the hub's ``squad_v2`` metric.

Written for lpaf (Apache-2.0); no hub code is copied (the rules are in ``compute_score.py``).
Load it by path, offline::

    evaluate.load("<this directory>").compute(
        predictions=[{"id": "q1", "prediction_text": "", "no_answer_probability": 0.9}],
        references=[{"id": "q1", "answers": {"text": [], "answer_start": []}}])

Returns the official ``evaluate-v2.0.py`` dict (exact, f1, total, the HasAns_* / NoAns_* splits and
the best-threshold sweep) in percent. ``no_answer_threshold`` (default 1.0, as on the hub): a
question whose ``no_answer_probability`` exceeds it is answered "no answer". The "probability" may
be any score where higher means more likely unanswerable (lpaf passes a logit difference).

Differences from the hub module: ``no_answer_probability`` is float64 (the hub casts to float32,
which rounds the reported thresholds), and a question without a prediction is an error here (the
hub drops it from ``total`` and then fails on the HasAns / NoAns splits).
"""

from __future__ import annotations

import datasets

import evaluate

from .compute_score import compute_score

_CITATION = """\
@inproceedings{Rajpurkar2018SQuAD2,
  title={Know What You Don't Know: Unanswerable Questions for SQuAD},
  author={Pranav Rajpurkar and Robin Jia and Percy Liang},
  booktitle={ACL},
  year={2018}
}
"""

_DESCRIPTION = """\
The official SQuAD 2.0 metric (evaluate-v2.0.py): exact match and token F1 with unanswerable
questions (only the empty answer is right), has-answer / no-answer splits, and the best no-answer
threshold sweep, in percent.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of {"id": question id, "prediction_text": answer text ("" for no answer),
        "no_answer_probability": score, higher = more likely unanswerable}.
    references: list of {"id": question id, "answers": {"text": [gold answers, empty if unanswerable],
        "answer_start": [...]}}; answer_start is not used.
    no_answer_threshold: a question whose no_answer_probability exceeds it is answered "no answer"
        (default 1.0).
Returns:
    "exact", "f1", "total"; "HasAns_exact", "HasAns_f1", "HasAns_total" (if some question has an
    answer); "NoAns_exact", "NoAns_f1", "NoAns_total" (if some has none); "best_exact",
    "best_exact_thresh", "best_f1", "best_f1_thresh". Scores in percent.
Examples:
    >>> squad_v2 = evaluate.load("path/to/lpaf/metric_modules/squad_v2")
    >>> squad_v2.compute(predictions=[{"id": "q1", "prediction_text": "1976", "no_answer_probability": 0.0}],
    ...                  references=[{"id": "q1", "answers": {"text": ["1976"], "answer_start": [97]}}])
    {'exact': 100.0, 'f1': 100.0, 'total': 1, 'HasAns_exact': 100.0, 'HasAns_f1': 100.0, 'HasAns_total': 1, \
'best_exact': 100.0, 'best_exact_thresh': 0.0, 'best_f1': 100.0, 'best_f1_thresh': 0.0}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class SquadV2(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({
                "predictions": {"id": datasets.Value("string"), "prediction_text": datasets.Value("string"),
                                "no_answer_probability": datasets.Value("float64")},
                "references": {
                    "id": datasets.Value("string"),
                    "answers": datasets.features.Sequence({"text": datasets.Value("string"),
                                                           "answer_start": datasets.Value("int32")}),
                },
            }),
            codebase_urls=["https://rajpurkar.github.io/SQuAD-explorer/"],
            reference_urls=["https://rajpurkar.github.io/SQuAD-explorer/"],
        )

    def _compute(self, predictions, references, no_answer_threshold=1.0):
        na_probs = {p["id"]: float(p["no_answer_probability"]) for p in predictions}
        preds = {p["id"]: p["prediction_text"] for p in predictions}
        golds = {ref["id"]: list(ref["answers"]["text"]) for ref in references}
        return compute_score(golds, preds, na_probs, float(no_answer_threshold))
