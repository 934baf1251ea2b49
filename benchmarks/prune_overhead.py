"""Cost of one pruning training step against one plain fine-tuning step (target: movement ≤ 1.3x).

Same model (MiniLM-shaped random BERT by default: hidden 384, 6 layers, FFN 1536), same batch,
same optimizer (AdamW), one process; steps of the methods are interleaved so a busy machine slows
them alike, and the median of ``--repeats`` steps is compared. A pruning step is mid-schedule
(density < 1, not frozen), so it pays for everything: the straight-through score gradients, the
scores' AdamW update and the per-matrix top-k mask update.

    python benchmarks/prune_overhead.py                # CPU, 1 thread, batch 32 x 64 tokens
    python benchmarks/prune_overhead.py --device cuda --seq-len 128
Writes benchmarks/results/prune_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from transformers import BertConfig, BertForSequenceClassification

from lpaf.pruning import METHODS, Pruner

RESULTS = Path(__file__).resolve().parent / "results" / "prune_overhead.json"


def build(method: str | None, cfg: BertConfig, device: str, seed: int = 0):
    """A model, its optimizer and (for a method) its pruner, mid-schedule."""
    torch.manual_seed(seed)
    model = BertForSequenceClassification(cfg).to(device).train()
    pruner = None
    extra = []
    if method is not None:
        pruner = Pruner(method, 0.1, initial_warmup=0.0, final_warmup=0.0, score_init="magnitude")
        pruner.prepare(model)
        pruner.set_total_steps(10_000)  # every benchmark step is mid-schedule
        extra = pruner.param_groups()
    claimed = {id(p) for g in extra for p in g["params"]}
    weights = [p for p in model.parameters() if id(p) not in claimed]
    optimizer = torch.optim.AdamW([{"params": weights}, *extra], lr=3e-5)
    return model, optimizer, pruner


def train_step(model, optimizer, pruner, batch, step: int, device: str) -> float:
    t0 = time.perf_counter()
    loss = model(**batch).loss
    if pruner is not None and pruner.method == "soft-movement":
        loss = loss + pruner.regularization()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if pruner is not None:
        pruner.step(step)
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=1, help="CPU threads (1 is kind to a shared machine)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5, help="timed steps per method (after one warm-up step)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    cfg = BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536,
                     vocab_size=30522, num_labels=2)
    g = torch.Generator().manual_seed(0)
    batch = {"input_ids": torch.randint(1000, 30000, (args.batch_size, args.seq_len), generator=g),
             "attention_mask": torch.ones(args.batch_size, args.seq_len, dtype=torch.long),
             "labels": torch.randint(0, 2, (args.batch_size,), generator=g)}
    batch = {k: v.to(args.device) for k, v in batch.items()}

    runs = {"plain": build(None, cfg, args.device)} | {m: build(m, cfg, args.device) for m in args.methods}
    times: dict[str, list[float]] = {name: [] for name in runs}
    for step in range(1, args.repeats + 2):  # step 1 warms up and is not timed
        for name, (model, optimizer, pruner) in runs.items():
            t = train_step(model, optimizer, pruner, batch, step, args.device)
            if step > 1:
                times[name].append(t)

    plain = statistics.median(times["plain"])
    methods = {}
    for name in args.methods:
        step_s = statistics.median(times[name])
        pruner = runs[name][2]
        methods[name] = {"step_s_median": step_s, "ratio": step_s / plain, "step_s_all": times[name],
                         **pruner.step_time_summary()}
    result = {
        "what": "median training-step time of pruning (mid-schedule, density 0.1) vs plain fine-tuning",
        "device": args.device if args.device == "cuda" else f"cpu ({args.threads} thread(s))",
        "model": "random BERT, hidden 384, 6 layers, 12 heads, FFN 1536 (MiniLM-L6 shape)",
        "batch_size": args.batch_size, "seq_len": args.seq_len, "repeats": args.repeats,
        "plain_step_s_median": plain, "plain_step_s_all": times["plain"], "methods": methods,
        "target_ratio": 1.3,
        "movement_ratio": methods.get("movement", {}).get("ratio"),
        "versions": {"torch": torch.__version__},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"plain step {plain:.3f} s")
    for name, r in methods.items():
        mask = r.get("mask_update_s_median", float("nan"))
        print(f"{name:>14}: {r['step_s_median']:.3f} s  ratio {r['ratio']:.2f}  (mask update {mask:.3f} s)")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
