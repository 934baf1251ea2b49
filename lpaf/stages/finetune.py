"""Stage 0: fine-tune a pre-trained model on a task — the dense reference and the teacher.

Under torchrun every process trains; rank 0 alone evaluates and writes the artifact.

A degenerate teacher (one prediction for >= 99% of the dev examples) is a failed run: it is written to
``<out>.degenerate`` for inspection, never to ``--out`` (so no later stage or workflow job builds on it),
and the command exits 3 — unless ``--allow-degenerate`` or ``LPAF_ALLOW_DEGENERATE=1`` accepts it.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from lpaf import distributed as dist
from lpaf.errors import DegenerateResult
from lpaf.stages.common import (DataArgs, RunArgs, asdict_all, atomic_output_dir, checkpoint_dir_for, evaluate_model,
                                evaluate_with_predictions, load_model, load_task_data, load_tokenizer, now,
                                prepare_output, save_model_dir, seed_everything, stage_metrics, write_completion)
from lpaf.training import TrainArgs, resolve_device, train_model


@dataclass
class FinetuneArgs:
    model: str = field(metadata={"help": "pre-trained model: hub id or local directory"})
    out: str = field(metadata={"help": "output directory (model + metrics.json)"})
    model_revision: str | None = field(default=None, metadata={"help": "hub revision of the model"})
    eval_every_steps: int = field(default=0, metadata={"help": "dev evaluation every N steps (0: each epoch end)"})
    allow_degenerate: bool = field(default=False, metadata={
        "help": "accept a degenerate teacher (one prediction for almost every dev example): write it to --out "
                "with a warning instead of exiting 3 (also LPAF_ALLOW_DEGENERATE=1)"})


def run(args: FinetuneArgs, data_args: DataArgs, run_args: RunArgs, train_args: TrainArgs) -> dict:
    out = prepare_output(args.out)
    task = data_args.spec
    seed_everything(run_args.seed)
    tokenizer = load_tokenizer(args.model, args.model_revision)
    model = load_model(args.model, task, args.model_revision, expect="pretrained")
    data = load_task_data(data_args, tokenizer)
    t0 = now()
    device = resolve_device(run_args.device)
    stats = train_model(model, task, data.train, data.collator, train_args, checkpoint_dir_for(out),
                        seed=run_args.seed, device=run_args.device, precision=run_args.precision,
                        evaluate_fn=lambda m: evaluate_model(m, data, train_args.eval_batch_size, device),
                        eval_every_steps=args.eval_every_steps)
    if not dist.is_main_process():  # rank 0 evaluates and writes the artifact; the others wait for it
        dist.finish()
        return {}
    metrics, predictions = evaluate_with_predictions(model, data, train_args.eval_batch_size, device, progress=True)
    record = stage_metrics("finetune", task, metrics, model, asdict_all(args, data_args, run_args, train_args),
                           now() - t0, data, method="dense", density=1.0, train=stats,
                           predictions=predictions)
    refused = predictions["degenerate"] and not _degenerate_accepted(args)
    target = _degenerate_dir(out) if refused else out
    with atomic_output_dir(target) as tmp:
        save_model_dir(tmp, model.cpu(), tokenizer)
        write_completion(tmp, record)  # README.md, then metrics.json last
    _cleanup_checkpoints(out)
    if not refused:  # an earlier refused teacher of this --out is superseded
        shutil.rmtree(_degenerate_dir(out), ignore_errors=True)
    dist.finish()
    if refused:
        from lpaf.console import describe_degenerate

        raise DegenerateResult(
            f"degenerate teacher: {describe_degenerate(record)}; not written to {out} (nothing may build on it), "
            f"kept for inspection in {target}; try another --lr, --epochs or --seed, or accept it with "
            f"--allow-degenerate (exit code 3)")
    return record


def _degenerate_accepted(args: FinetuneArgs) -> bool:
    return args.allow_degenerate or os.environ.get("LPAF_ALLOW_DEGENERATE", "") not in ("", "0")


def _degenerate_dir(out: Path) -> Path:
    """Where a refused teacher goes: beside --out, never inside the chain's inputs."""
    return Path(out).with_name(f"{Path(out).name}.degenerate")


def _cleanup_checkpoints(out) -> None:
    shutil.rmtree(checkpoint_dir_for(out), ignore_errors=True)
