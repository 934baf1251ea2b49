"""Materialize a hub model / data set into a local directory, so every later stage runs with
``HF_HUB_OFFLINE=1`` (cluster compute nodes have no internet). Run on a connected machine.

A failed download says how to go on offline, by hand and in the workflow (whose fetch jobs run these
commands: the local profile prints a failed job's log, so this one line reaches the terminal).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lpaf.artifacts import atomic_output_dir, write_json
from lpaf.errors import LpafError
from lpaf.tasks import get_task


@dataclass
class FetchDataArgs:
    task: str = field(metadata={"help": "task name"})
    out: str = field(metadata={"help": "output directory (a save_to_disk data set)"})
    revision: str | None = field(default=None, metadata={"help": "hub revision of the data set"})


@dataclass
class FetchModelArgs:
    model: str = field(metadata={"help": "hub model id"})
    out: str = field(metadata={"help": "output directory (config, safetensors weights, tokenizer)"})
    revision: str | None = field(default=None, metadata={"help": "hub revision (commit/tag) to pin"})


WORKFLOW_OFFLINE = ("in the workflow: snakemake ... --config model_path=DIR data_dir=DATA, where DATA/<task> holds "
                    "each task's 'lpaf fetch-data' output")


def run(args) -> None:
    if isinstance(args, FetchDataArgs):
        from lpaf.data import fetch_data

        try:
            fetch_data(get_task(args.task), args.out, args.revision)
        except LpafError as e:
            if "from the Hugging Face hub" not in str(e):
                raise
            cause = str(e).split("; ")[0]
            raise LpafError(f"{cause}; on a machine with internet access run 'lpaf fetch-data --task {args.task} "
                            f"--out DATA/{args.task}' and pass --data DATA/{args.task} to the stages; "
                            f"{WORKFLOW_OFFLINE}") from None
        return
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from lpaf.console import is_terminal

    if is_terminal():  # download bars (the CLI turns the hub's bars off for weight loading in every stage)
        from huggingface_hub.utils import enable_progress_bars

        enable_progress_bars()
    try:
        tokenizer = AutoTokenizer.from_pretrained(args.model, revision=args.revision)
        config = AutoConfig.from_pretrained(args.model, revision=args.revision)
        model = AutoModel.from_pretrained(args.model, revision=args.revision)
    except OSError as e:
        raise LpafError(f"could not download {args.model!r} from the hub ({str(e).splitlines()[0]}); on a machine "
                        f"with internet access run 'lpaf fetch-model --model {args.model} --out DIR' and pass "
                        f"--model DIR to the stages; {WORKFLOW_OFFLINE}") from None
    with atomic_output_dir(args.out) as tmp:
        config.save_pretrained(tmp)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / "metrics.json", {"stage": "fetch-model", "model": args.model, "revision": args.revision})
