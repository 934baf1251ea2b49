"""The task registry: GLUE (8 tasks) + SQuAD v1.1/v2.0.

Column names follow the Hugging Face ``glue`` / ``squad`` datasets; every local loader in
``lpaf.data`` normalises to them, so the rest of the code sees one schema per task.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lpaf.errors import LpafError


@dataclass(frozen=True)
class TaskSpec:
    name: str
    kind: str  # "classification" | "regression" | "qa"
    text_fields: tuple[str, ...]
    num_labels: int  # 1 for regression; 0 for QA (start/end logits)
    metrics: tuple[str, ...]  # official dev metrics, in reporting order
    headline_metric: str  # the one metric used on figures
    dev_splits: tuple[str, ...] = ("validation",)
    hub_path: str = "nyu-mll/glue"  # the current hub id (the bare "glue" alias is legacy)
    hub_config: str | None = None
    label_names: tuple[str, ...] = field(default_factory=tuple)  # GLUE's names, in label-id order

    @property
    def is_regression(self) -> bool:
        return self.kind == "regression"

    @property
    def is_qa(self) -> bool:
        return self.kind == "qa"

    def metric_keys(self) -> list[str]:
        """Keys of the metrics as they appear in metrics.json (split-prefixed for MNLI)."""
        if len(self.dev_splits) == 1:
            return list(self.metrics)
        return [f"{split}_{m}" for split in self.dev_splits for m in self.metrics]

    def id2label(self) -> dict[int, str]:
        """Output index -> name, as transformers configs carry it (``pipeline`` prints these names):
        GLUE's label names; the regression output's name; nothing for QA (start/end logits)."""
        return {} if self.is_qa else dict(enumerate(self.label_names))

    def label2id(self) -> dict[str, int]:
        return {name: i for i, name in self.id2label().items()}

    @property
    def headline_key(self) -> str:
        return self.metric_keys()[0] if len(self.dev_splits) > 1 else self.headline_metric


TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in [
        TaskSpec("cola", "classification", ("sentence",), 2, ("matthews_correlation",),
                 "matthews_correlation", hub_config="cola", label_names=("unacceptable", "acceptable")),
        TaskSpec("sst2", "classification", ("sentence",), 2, ("accuracy",), "accuracy",
                 hub_config="sst2", label_names=("negative", "positive")),
        TaskSpec("mrpc", "classification", ("sentence1", "sentence2"), 2, ("f1", "accuracy"), "f1",
                 hub_config="mrpc", label_names=("not_equivalent", "equivalent")),
        TaskSpec("stsb", "regression", ("sentence1", "sentence2"), 1, ("pearson", "spearmanr"),
                 "pearson", hub_config="stsb", label_names=("similarity",)),  # the one output's name
        TaskSpec("qqp", "classification", ("question1", "question2"), 2, ("accuracy", "f1"),
                 "accuracy", hub_config="qqp", label_names=("not_duplicate", "duplicate")),
        TaskSpec("mnli", "classification", ("premise", "hypothesis"), 3, ("accuracy",), "accuracy",
                 dev_splits=("validation_matched", "validation_mismatched"), hub_config="mnli",
                 label_names=("entailment", "neutral", "contradiction")),
        TaskSpec("qnli", "classification", ("question", "sentence"), 2, ("accuracy",), "accuracy",
                 hub_config="qnli", label_names=("entailment", "not_entailment")),
        TaskSpec("rte", "classification", ("sentence1", "sentence2"), 2, ("accuracy",), "accuracy",
                 hub_config="rte", label_names=("entailment", "not_entailment")),
        TaskSpec("squad", "qa", ("question", "context"), 0, ("exact_match", "f1"), "f1",
                 hub_path="rajpurkar/squad"),
        TaskSpec("squad_v2", "qa", ("question", "context"), 0, ("exact_match", "f1"), "f1",
                 hub_path="rajpurkar/squad_v2"),
    ]
}


def get_task(name: str) -> TaskSpec:
    key = name.lower().replace("-", "").replace("_", "")
    aliases = {t.replace("_", ""): t for t in TASKS} | {"sst": "sst2", "sts": "stsb", "squadv1": "squad",
                                                        "squadv11": "squad", "squad2": "squad_v2"}
    if key not in aliases:
        raise LpafError(f"unknown task {name!r}; valid tasks: {', '.join(TASKS)}")
    return TASKS[aliases[key]]


def display_scale(task: str) -> float:
    """GLUE metrics are fractions (shown x100); SQuAD EM/F1 are already percentages (unknown: 1)."""
    try:
        return 1.0 if get_task(task).is_qa else 100.0
    except LpafError:
        return 1.0
