"""How methods, metrics and tasks are shown in every figure: one place, so that a method has one
colour, one marker and one name in the trade-off, rank-study, ablation and speed-up figures alike.

Names: a method is shown under its table label (the config's ``label``, else the method key), the
name table.md and table.tex print; the dense teacher is "dense" in every figure. Colours are fixed
per method key, never taken from the order in which a figure meets its methods: a figure that holds
fewer methods draws the ones it has in the same colours. The rank study names its lines by pruner
(``platon``), which is also the key of the prune-only method, so both resolve to one style.

The palette is matplotlib's tab10 (ten well-separated hues, no light/dark pairs) plus navy for the
eleventh method of the default experiment; a marker per method is a second cue. The λ-sweep rows of
config/paper.yaml are lpaf at other λ: lpaf's red, told apart by marker. A method key not listed
here gets a tab10 colour and a marker picked by a hash of its name (stable across figures and runs,
but it may share a colour with a listed method: add it to METHOD_STYLES).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from lpaf.errors import LpafError


@dataclass(frozen=True)
class MethodStyle:
    color: str
    marker: str


TAB10 = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
         "#17becf")
BLUE, ORANGE, GREEN, RED, PURPLE, BROWN, PINK, GREY, OLIVE, CYAN = TAB10
NAVY = "#000080"

DENSE_NAME = "dense"
DENSE_STYLE = MethodStyle("black", "")  # drawn as a dashed reference line, never with markers

# method (or pruner) key -> style. The keys are those of config/*.yaml `methods:`.
METHOD_STYLES: dict[str, MethodStyle] = {
    "magnitude": MethodStyle(GREY, "v"),
    "movement": MethodStyle(ORANGE, "s"),
    "platon": MethodStyle(BLUE, "o"),
    "svd": MethodStyle(CYAN, "P"),
    "fwsvd": MethodStyle(PURPLE, "X"),
    "magnitude+svd": MethodStyle(BROWN, "h"),
    "lpaf": MethodStyle(RED, "D"),
    "lpaf-no-sa-svd": MethodStyle(GREEN, "^"),
    "lpaf-no-mixed-rank": MethodStyle(OLIVE, "<"),
    "lpaf-movement": MethodStyle(PINK, ">"),
    "lpaf-fisher": MethodStyle(NAVY, "*"),
    "lpaf-l0": MethodStyle(RED, "p"),
    "lpaf-l001": MethodStyle(RED, "d"),
    "lpaf-l01": MethodStyle(RED, "8"),
    "lpaf-imp": MethodStyle(RED, "H"),
}
_FALLBACK_MARKERS = ("o", "s", "^", "v", "D", "P", "X", "h", "<", ">")


def method_style(key: str, dense: bool = False) -> MethodStyle:
    """The colour and marker of a method (or rank-study pruner) key, the same in every figure."""
    if dense or key == "dense":
        return DENSE_STYLE
    key = str(key)
    if key in METHOD_STYLES:
        return METHOD_STYLES[key]
    h = zlib.crc32(key.encode("utf-8"))
    return MethodStyle(TAB10[h % len(TAB10)], _FALLBACK_MARKERS[(h // len(TAB10)) % len(_FALLBACK_MARKERS)])


def method_name(key: str, label: str | None = None, dense: bool = False) -> str:
    """The name a method is shown under: the table's label (config ``label``, else the key); the
    dense teacher is always "dense"."""
    if dense or key == "dense":
        return DENSE_NAME
    return str(label) if label is not None and str(label) not in ("", "nan") else str(key)


# metric key (metrics.json, as in lpaf.tasks) -> axis / tick name. GLUE scores are drawn x100 and
# SQuAD EM/F1 are percentages already, so the name carries no scale.
METRIC_NAMES: dict[str, str] = {
    "accuracy": "Accuracy",
    "f1": "F1",
    "exact_match": "EM",
    "matthews_correlation": "Matthews corr.",
    "pearson": "Pearson r",
    "spearmanr": "Spearman ρ",
    "validation_matched_accuracy": "Accuracy (matched)",
    "validation_mismatched_accuracy": "Accuracy (mismatched)",
}

TASK_NAMES: dict[str, str] = {
    "cola": "CoLA", "sst2": "SST-2", "mrpc": "MRPC", "stsb": "STS-B", "qqp": "QQP", "mnli": "MNLI",
    "qnli": "QNLI", "rte": "RTE", "squad": "SQuAD", "squad_v2": "SQuAD 2.0",
}


def metric_name(key: str) -> str:
    """'pearson' -> 'Pearson r', 'f1' -> 'F1'; an unknown key: underscores as spaces, capitalised."""
    key = str(key)
    return METRIC_NAMES.get(key, key.replace("_", " ").capitalize())


def task_name(task: str) -> str:
    """'sst2' -> 'SST-2' (the registry's task, aliases included); an unknown task: as given, upper case."""
    from lpaf.tasks import get_task

    try:
        return TASK_NAMES.get(get_task(task).name, str(task).upper())
    except LpafError:
        return str(task).upper()


def headline_metric(task: str) -> str:
    """The task's headline metric key (lpaf.tasks), or "" for a task the registry does not know."""
    from lpaf.tasks import get_task

    try:
        return get_task(task).headline_key
    except LpafError:
        return ""
