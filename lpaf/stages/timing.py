"""Time the dense model and every compressed model of a grid side by side: one process, one device,
round-robin (lpaf.speed.time_models_round_robin). The table's speed-up column comes from here, so a
dense/compressed ratio is never split across two jobs that may land on different machines."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lpaf.artifacts import read_json, run_record, write_json
from lpaf.errors import LpafError
from lpaf.stages.common import RunArgs, asdict_all, load_model, now, seed_everything
from lpaf.training import resolve_device


@dataclass
class TimingArgs:
    models: list[str] = field(metadata={"help": "lpaf model directories to time (dense and compressed)"})
    out: str = field(metadata={"help": "output JSON file"})
    rounds: int = field(default=10, metadata={"help": "timed rounds; each round times every model once"})
    warmup: int = field(default=2, metadata={"help": "untimed rounds first"})
    batch_size: int = field(default=32, metadata={"help": "batch size of the timed forward pass"})
    seq_len: int = field(default=128, metadata={"help": "tokens per example of the timed forward pass"})

    def __post_init__(self):
        for name in ("rounds", "batch_size", "seq_len"):
            if getattr(self, name) < 1:
                raise LpafError(f"--{name.replace('_', '-')} must be >= 1 (got {getattr(self, name)})")
        if self.warmup < 0:
            raise LpafError(f"--warmup must be >= 0 (got {self.warmup})")
        if len(set(self.models)) != len(self.models):
            raise LpafError("--models names a directory twice; each model is timed once")
        for m in self.models:
            if not (Path(m) / "metrics.json").is_file():
                raise LpafError(f"--models: {m} is not a finished lpaf artifact (no metrics.json there)")


def run(args: TimingArgs, run_args: RunArgs) -> dict:
    import torch

    from lpaf.speed import device_name, machine_info, time_models_round_robin
    from lpaf.tasks import get_task

    seed_everything(run_args.seed)
    device = resolve_device(run_args.device)
    # each model with its own head: the task its stage recorded
    models = {m: load_model(m, get_task(read_json(Path(m) / "metrics.json")["task"]), expect="lpaf")
              for m in args.models}
    t0 = now()
    latency = time_models_round_robin(models, args.batch_size, args.seq_len, args.rounds, args.warmup, device,
                                      seed=run_args.seed)
    record = {
        "stage": "timing", "device": device_name(device), "device_kind": device,
        "batch_size": args.batch_size, "seq_len": args.seq_len, "threads": torch.get_num_threads(),
        "latency_ms": latency, "machine": machine_info(), "wall_time_s": now() - t0,
        **run_record(asdict_all(args, run_args)),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, record)
    return record
