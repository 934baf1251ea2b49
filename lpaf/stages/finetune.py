"""Stage 0: fine-tune a pre-trained model on a task — the dense reference and the teacher.

Under torchrun every process trains; rank 0 alone evaluates and writes the artifact.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lpaf import distributed as dist
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
    metrics, predictions = evaluate_with_predictions(model, data, train_args.eval_batch_size, device)
    record = stage_metrics("finetune", task, metrics, model, asdict_all(args, data_args, run_args, train_args),
                           now() - t0, data, method="dense", density=1.0, train=stats,
                           predictions=predictions)
    with atomic_output_dir(out) as tmp:
        save_model_dir(tmp, model.cpu(), tokenizer)
        write_completion(tmp, record)  # README.md, then metrics.json last
    _cleanup_checkpoints(out)
    dist.finish()
    return record


def _cleanup_checkpoints(out) -> None:
    import shutil

    shutil.rmtree(checkpoint_dir_for(out), ignore_errors=True)
