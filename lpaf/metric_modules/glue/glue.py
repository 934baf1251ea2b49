"""GLUE dev metrics as an ``evaluate`` module, with the interface of the hub's ``glue`` metric.

Written for lpaf (Apache-2.0); no hub code is copied. Load it by path, offline::

    evaluate.load("<this directory>", "mrpc").compute(predictions=[1, 0], references=[1, 1])

The configuration is the GLUE task and decides the metrics, as on the hub: ``cola`` Matthews
correlation; ``stsb`` Pearson and Spearman correlation; ``mrpc`` and ``qqp`` accuracy and binary F1
of class 1; ``sst2``, ``mnli``, ``mnli_matched``, ``mnli_mismatched``, ``qnli``, ``rte``, ``wnli`` and
``hans`` accuracy. Values are fractions in [0, 1] (the hub's convention).

Two deliberate differences from the hub module, both documented in lpaf's README:

- A correlation that is undefined (constant predictions or references, fewer than two examples,
  a NaN) is 0.0 here; the hub returns NaN, which poisons averages over seeds and breaks JSON.
  Matthews correlation of a constant prediction is 0 in both (scikit-learn's convention), and F1
  with no predicted and no true positive is 0 in both (without a warning here).
- ``stsb`` values stay float64 here; the hub rounds them to float32 first (its features, and the
  numpy format of ``datasets``), which moves the correlations by ~1e-8.
"""

from __future__ import annotations

import warnings

import datasets
import numpy as np
from scipy import stats
from sklearn import metrics as skm

import evaluate

_CITATION = """\
@inproceedings{wang2019glue,
  title={{GLUE}: A Multi-Task Benchmark and Analysis Platform for Natural Language Understanding},
  author={Wang, Alex and Singh, Amanpreet and Michael, Julian and Hill, Felix and Levy, Omer and Bowman, Samuel R.},
  note={In the Proceedings of ICLR.},
  year={2019}
}
"""

_DESCRIPTION = """\
GLUE dev metrics (https://gluebenchmark.com/) with their official definitions (scikit-learn /
scipy): accuracy, binary F1 of class 1, Matthews correlation, Pearson and Spearman correlation.
Undefined correlations (constant input) are 0.0.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: class ids (after argmax), or regression values for stsb.
    references: gold class ids, or gold similarity scores for stsb.
Returns: depending on the configuration (the GLUE task), one or two of
    "accuracy", "f1", "matthews_correlation", "pearson", "spearmanr", fractions in [0, 1].
Examples:
    >>> glue = evaluate.load("path/to/lpaf/metric_modules/glue", "mrpc")
    >>> glue.compute(predictions=[1, 1, 0, 0, 1], references=[1, 0, 0, 1, 1])
    {'accuracy': 0.6, 'f1': 0.6666666666666666}
"""

# The metrics of each configuration, in the hub's output order.
CONFIG_METRICS: dict[str, tuple[str, ...]] = {
    "cola": ("matthews_correlation",),
    "stsb": ("pearson", "spearmanr"),
    "mrpc": ("accuracy", "f1"),
    "qqp": ("accuracy", "f1"),
    **{name: ("accuracy",) for name in ("sst2", "mnli", "mnli_matched", "mnli_mismatched", "qnli", "rte",
                                        "wnli", "hans")},
}


def accuracy(preds: np.ndarray, labels: np.ndarray) -> float:
    return float((preds == labels).mean())


def f1(preds: np.ndarray, labels: np.ndarray) -> float:
    """Binary F1 of the positive class 1 (MRPC "equivalent", QQP "duplicate")."""
    return float(skm.f1_score(labels, preds, pos_label=1, average="binary", zero_division=0.0))


def matthews_correlation(preds: np.ndarray, labels: np.ndarray) -> float:
    return float(skm.matthews_corrcoef(labels, preds))


def _correlation(fn, preds: np.ndarray, labels: np.ndarray) -> float:
    p = np.asarray(preds, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if len(p) < 2 or np.all(p == p[0]) or np.all(y == y[0]):
        return 0.0  # undefined (constant input): see the module docstring
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        value = float(fn(p, y)[0])
    return 0.0 if np.isnan(value) else value


def pearson(preds: np.ndarray, labels: np.ndarray) -> float:
    return _correlation(stats.pearsonr, preds, labels)


def spearmanr(preds: np.ndarray, labels: np.ndarray) -> float:
    return _correlation(stats.spearmanr, preds, labels)


METRIC_FUNCTIONS = {"accuracy": accuracy, "f1": f1, "matthews_correlation": matthews_correlation,
                    "pearson": pearson, "spearmanr": spearmanr}


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Glue(evaluate.Metric):
    def _info(self):
        if self.config_name not in CONFIG_METRICS:
            raise KeyError(f"unknown GLUE configuration {self.config_name!r}; "
                           f"valid configurations: {', '.join(CONFIG_METRICS)}")
        value_type = "float64" if self.config_name == "stsb" else "int64"
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value(value_type),
                                        "references": datasets.Value(value_type)}),
            codebase_urls=[],
            reference_urls=["https://gluebenchmark.com/"],
            # format=None: python values. The "numpy" format (the hub's) hands over float32 arrays,
            # which would round stsb values before the correlation.
            format=None,
        )

    def _compute(self, predictions, references):
        preds = np.asarray(predictions)
        labels = np.asarray(references)
        if len(preds) == 0:
            raise ValueError("cannot compute a metric on zero examples")
        return {name: METRIC_FUNCTIONS[name](preds, labels) for name in CONFIG_METRICS[self.config_name]}
