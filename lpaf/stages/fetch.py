"""Materialize a hub model / data set into a local directory, so every later stage runs with
``HF_HUB_OFFLINE=1`` (cluster compute nodes have no internet). Run on a connected machine."""

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


def run(args) -> None:
    if isinstance(args, FetchDataArgs):
        from lpaf.data import fetch_data

        fetch_data(get_task(args.task), args.out, args.revision)
        return
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(args.model, revision=args.revision)
        config = AutoConfig.from_pretrained(args.model, revision=args.revision)
        model = AutoModel.from_pretrained(args.model, revision=args.revision)
    except OSError as e:
        raise LpafError(f"could not download {args.model!r} from the hub ({str(e).splitlines()[0]}); "
                        f"run fetch-model on a machine with internet access") from None
    with atomic_output_dir(args.out) as tmp:
        config.save_pretrained(tmp)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / "metrics.json", {"stage": "fetch-model", "model": args.model, "revision": args.revision})
