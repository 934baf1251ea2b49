"""Step time of mixed-rank vs plain re-training of the same factorized model, in one run.

Mixed-rank re-training runs the full-rank source matrix W_s in a module with probability p(t), so
its early steps (p ≈ 1) cost more than plain re-training and its steps after the anneal (p = 0)
should cost the same. This script measures both against plain, on one model, with the configs
interleaved step by step (so load from other processes hits every config alike), and writes
``benchmarks/results/retrain_overhead.json``. Targets (issue 5): ≤ 1.3 early, ≈ 1.0 after.

A step is what ``lpaf retrain`` does per batch: student forward, teacher forward (distillation on,
as by default; ``--no-teacher`` to leave it out), loss, backward, AdamW step, plus the scheduler's
resampling for the mixed schemes.

    python benchmarks/retrain_overhead.py                       # shared MiniLM, density 0.25
    python benchmarks/retrain_overhead.py --steps 20 --batch-size 32 --seq-len 128
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
SHARED_MODEL = ROOT.parent / "shared" / "models" / "all-MiniLM-L6-v2"


def build_models(model_path: str, density: float) -> tuple[nn.Module, nn.Module, dict[str, torch.Tensor]]:
    """Teacher (dense), factorized student and its source matrices: magnitude-prune each encoder
    linear to ``density`` (one shot, per matrix), then rank-r SVD at the same parameter budget."""
    from transformers import AutoModelForSequenceClassification

    from lpaf.factorize import allocate_rank, svd
    from lpaf.lowrank import swap_encoder_linears
    from lpaf.modules import find_encoder_linears

    torch.manual_seed(0)
    teacher = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=2)
    student = copy.deepcopy(teacher)
    sources = {}
    for name, linear in find_encoder_linears(student).items():
        w = linear.weight.detach()
        k = int(round(density * w.numel()))
        threshold = w.abs().flatten().kthvalue(w.numel() - k + 1).values
        sources[name] = w * (w.abs() >= threshold)
    factors = {name: svd(w, None, allocate_rank(*w.shape, density)) for name, w in sources.items()}
    swap_encoder_linears(student, factors, strict=True)
    return teacher, student, sources


class Config:
    """One training setup: its own model copy, optimizer and (for mixed schemes) scheduler."""

    def __init__(self, label: str, student: nn.Module, sources, scheme: str, p: float, trainable_source: bool,
                 lr: float = 5e-5):
        from lpaf.mixed_rank import AnnealSchedule, MixedRankScheduler, attach_mixed_rank, attach_rank_sampling

        self.label, self.p = label, p
        self.model = copy.deepcopy(student).train()
        self.scheduler = None
        if scheme == "mixed-rank":
            wrapped = attach_mixed_rank(self.model, sources, trainable_source)
        elif scheme == "rank-sampling":
            wrapped = attach_rank_sampling(self.model, sources, 2.0)
        if scheme != "plain":
            # p0 = p and an anneal longer than the run: p(t) stays ≈ p for every timed step.
            self.scheduler = MixedRankScheduler(wrapped, AnnealSchedule(p, 1.0), seed=0, scheme=scheme)
        params = [q for q in self.model.parameters() if q.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=lr)
        self.times: list[float] = []
        self.step_index = 0

    def step(self, batch: dict[str, torch.Tensor], teacher: nn.Module | None, task) -> float:
        from lpaf.training import combined_loss

        t0 = time.perf_counter()
        if self.scheduler is not None:
            # step 0 of a run 10^9 steps long: p(t) = p0 for the whole benchmark
            self.scheduler.resample(0, 10**9)
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        outputs = self.model(**inputs)
        teacher_outputs = None
        if teacher is not None:
            with torch.no_grad():
                teacher_outputs = teacher(**inputs)
        loss = combined_loss(task, outputs, batch, teacher_outputs, 0.9 if teacher is not None else 0.0, 2.0)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        elapsed = time.perf_counter() - t0
        self.step_index += 1
        return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(SHARED_MODEL), help="dense BERT-family model directory")
    parser.add_argument("--density", type=float, default=0.25)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--steps", type=int, default=12, help="timed steps per config (after 2 warm-up steps)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-teacher", action="store_true", help="leave the teacher forward out of a step")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "retrain_overhead.json"))
    args = parser.parse_args()

    from lpaf.tasks import get_task

    torch.set_num_threads(args.threads)
    task = get_task("sst2")
    teacher, student, sources = build_models(args.model, args.density)
    teacher.eval()
    use_teacher = None if args.no_teacher else teacher
    configs = [
        Config("plain", student, sources, "plain", 0.0, False),
        Config("mixed-rank p=1 (early)", student, sources, "mixed-rank", 1.0, False),
        Config("mixed-rank p=0 (after anneal)", student, sources, "mixed-rank", 0.0, False),
        Config("mixed-rank p=1 trainable W_s", student, sources, "mixed-rank", 1.0, True),
        Config("rank-sampling p=1 (early)", student, sources, "rank-sampling", 1.0, False),
    ]
    g = torch.Generator().manual_seed(0)
    vocab = student.config.vocab_size
    batches = [{"input_ids": (ids := torch.randint(1000, vocab, (args.batch_size, args.seq_len), generator=g)),
                "attention_mask": torch.ones_like(ids),
                "labels": torch.randint(0, 2, (args.batch_size,), generator=g)} for _ in range(4)]
    warmup = 2
    for i in range(warmup + args.steps):
        for cfg in configs:  # interleaved: background load hits every config alike
            t = cfg.step(batches[i % len(batches)], use_teacher, task)
            if i >= warmup:
                cfg.times.append(t)
    plain = statistics.median(configs[0].times)
    rows = []
    for cfg in configs:
        med = statistics.median(cfg.times)
        rows.append({"config": cfg.label, "p": cfg.p, "step_time_s_median": med, "step_time_s_min": min(cfg.times),
                     "ratio_to_plain_median": med / plain,
                     "ratio_to_plain_min": min(cfg.times) / min(configs[0].times), "steps": len(cfg.times)})
        print(f"{cfg.label:32s} median {med:.3f}s  min {min(cfg.times):.3f}s  x{med / plain:.2f} of plain")
    from lpaf.modules import count_parameters

    result = {
        "benchmark": "retrain_overhead",
        "model": args.model, "density": args.density, "batch_size": args.batch_size, "seq_len": args.seq_len,
        "distillation_teacher_forward": use_teacher is not None, "threads": torch.get_num_threads(),
        "device": "cpu", "platform": platform.platform(), "torch": torch.__version__,
        "student_params": count_parameters(student), "targets": {"early": "<= 1.3", "after_anneal": "~1.0"},
        "results": rows,
        "early_ratio": rows[1]["ratio_to_plain_median"], "after_anneal_ratio": rows[2]["ratio_to_plain_median"],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"early x{result['early_ratio']:.2f}, after anneal x{result['after_anneal_ratio']:.2f} -> {out}")


if __name__ == "__main__":
    main()
