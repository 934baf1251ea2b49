"""SQuAD v1.1 as an ``evaluate`` module, with the interface of the hub's ``squad`` metric.

Written for lpaf (Apache-2.0); no hub code is copied (the rules are in ``compute_score.py``).
Load it by path, offline::

    evaluate.load("<this directory>").compute(
        predictions=[{"id": "q1", "prediction_text": "Denver Broncos"}],
        references=[{"id": "q1", "answers": {"text": ["Denver Broncos"], "answer_start": [177]}}])

Returns ``{"exact_match", "f1"}`` in percent, as the official ``evaluate-v1.1.py``. One difference
from the hub module: a question without a prediction is logged (``logging``), not printed to
stderr; it scores 0 in both.
"""

from __future__ import annotations

import datasets

import evaluate

from .compute_score import compute_score

_CITATION = """\
@inproceedings{Rajpurkar2016SQuAD10,
  title={SQuAD: 100, 000+ Questions for Machine Comprehension of Text},
  author={Pranav Rajpurkar and Jian Zhang and Konstantin Lopyrev and Percy Liang},
  booktitle={EMNLP},
  year={2016}
}
"""

_DESCRIPTION = """\
The official SQuAD v1.1 metric (evaluate-v1.1.py): exact match and token F1 of normalised answers,
best over the gold answers, in percent over every question.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of {"id": question id, "prediction_text": answer text}.
    references: list of {"id": question id, "answers": {"text": [gold answers], "answer_start": [...]}};
        answer_start is not used.
Returns:
    "exact_match": percentage of questions whose normalised answer equals a normalised gold answer.
    "f1": mean over questions of the best token F1 against the gold answers, in percent.
Examples:
    >>> squad = evaluate.load("path/to/lpaf/metric_modules/squad")
    >>> squad.compute(predictions=[{"id": "q1", "prediction_text": "the Broncos"}],
    ...               references=[{"id": "q1", "answers": {"text": ["Broncos"], "answer_start": [4]}}])
    {'exact_match': 100.0, 'f1': 100.0}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Squad(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({
                "predictions": {"id": datasets.Value("string"), "prediction_text": datasets.Value("string")},
                "references": {
                    "id": datasets.Value("string"),
                    "answers": datasets.features.Sequence({"text": datasets.Value("string"),
                                                           "answer_start": datasets.Value("int32")}),
                },
            }),
            codebase_urls=["https://rajpurkar.github.io/SQuAD-explorer/"],
            reference_urls=["https://rajpurkar.github.io/SQuAD-explorer/"],
        )

    def _compute(self, predictions, references):
        pred_dict = {p["id"]: p["prediction_text"] for p in predictions}
        qas = [{"id": ref["id"], "answers": [{"text": text} for text in ref["answers"]["text"]]}
               for ref in references]
        return compute_score([{"paragraphs": [{"qas": qas}]}], pred_dict)
