"""The rank study (claims C1-C2): rank / effective rank / spectrum of every encoder linear."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RankStudyArgs:
    models: list[str] = field(metadata={"help": "model directories (dense fine-tuned and pruned)"})
    out: str = field(metadata={"help": "output JSON file"})
    figure: str | None = field(default=None, metadata={"help": "also draw the paper-style figure (.png or .pdf)"})
    labels: list[str] | None = field(default=None, metadata={"help": "method label per model (default: from metrics.json)"})


def run(args: RankStudyArgs) -> dict:
    from lpaf.analysis import run_rank_study

    return run_rank_study(args.models, args.out, args.figure, args.labels)
