"""Score any model directory (dense, pruned or factorized) on a task's dev split(s)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lpaf.artifacts import run_record, write_json
from lpaf.stages.common import (DataArgs, RunArgs, asdict_all, eval_counts, evaluate_with_predictions, load_model,
                                load_task_data, load_tokenizer, now, seed_everything)
from lpaf.training import resolve_device


@dataclass
class EvaluateArgs:
    model: str = field(metadata={"help": "model directory (or hub id) to score"})
    out: str = field(metadata={"help": "output JSON file"})
    batch_size: int = field(default=64, metadata={"help": "evaluation batch size"})
    model_revision: str | None = field(default=None, metadata={"help": "hub revision of the model"})
    latency_batches: int = field(default=0, metadata={"help": "also time N forward passes of batch 32 x length 128"})


def run(args: EvaluateArgs, data_args: DataArgs, run_args: RunArgs) -> dict:
    from lpaf.modules import count_parameters, retained_percent

    task = data_args.spec
    seed_everything(run_args.seed)
    is_artifact = (Path(args.model) / "metrics.json").is_file()
    tokenizer = load_tokenizer(args.model, args.model_revision)
    model = load_model(args.model, task, args.model_revision, expect="lpaf" if is_artifact else "pretrained")
    data = load_task_data(data_args, tokenizer, with_train=False)
    device = resolve_device(run_args.device)
    t0 = now()
    metrics, predictions = evaluate_with_predictions(model, data, args.batch_size, device, progress=True)
    params = count_parameters(model)
    record = {
        "stage": "evaluate", "task": task.name, "model": args.model, "split": list(task.dev_splits),
        "metrics": metrics, "headline_metric": task.headline_key, "headline": metrics.get(task.headline_key),
        "params": params, "retained_percent": retained_percent(params),
        "retained_percent_nonzero": retained_percent(params, "encoder_linear_nonzero"),
        **eval_counts(data), "data_source": data.source,
        "wall_time_s": now() - t0, "seed": run_args.seed, "predictions": predictions,
        **run_record(asdict_all(args, data_args, run_args)),
    }
    if args.latency_batches > 0:
        from lpaf.speed import measure_latency_ms

        record["latency_ms"] = measure_latency_ms(model, batch_size=32, seq_len=128, iters=args.latency_batches,
                                                  device=device)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, record)
    return record
