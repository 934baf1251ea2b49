"""How much first-order signal does a teacher give movement scores at the start of pruning?

Movement pruning starts from the teacher itself, so the distillation term and its gradient are
exactly zero at step 0 and only the label term (weight 1 − α) drives the scores. A teacher that has
fitted its training set (several epochs on a 4k subset) leaves a tiny, noisy label gradient; Adam
then normalises that noise into full-size score steps. This probe measures, on N training batches:
the teacher's training loss, and for every score entry the per-batch first-order update
G_b = −W ⊙ ∂L/∂W: its consistency across batches (|mean| / (std/√N), a t statistic whose median
is ≈ 0.7 for pure noise) and its size.

    python benchmarks/prune_study/signal_probe.py --teacher DIR --task sst2 --max-length 64 \
        --max-train-samples 4000 --out benchmarks/prune_study/signal_<name>.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from lpaf.modules import find_encoder_linears
from lpaf.stages.common import DataArgs, auto_class_for, load_task_data
from lpaf.training import combined_loss


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--teacher", required=True)
    p.add_argument("--task", default="sst2")
    p.add_argument("--data", default=str(Path(__file__).resolve().parents[3] / "shared" / "data"))
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--max-train-samples", type=int, default=None)
    p.add_argument("--batches", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--distill-alpha", type=float, default=0.9)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    args = p.parse_args()

    from transformers import AutoTokenizer

    torch.manual_seed(args.seed)
    data_args = DataArgs(task=args.task, data=args.data, max_length=args.max_length,
                         max_train_samples=args.max_train_samples)
    tokenizer = AutoTokenizer.from_pretrained(args.teacher)
    data = load_task_data(data_args, tokenizer)
    model = auto_class_for(data.task).from_pretrained(args.teacher).eval()  # dropout off: the signal, not dropout noise
    linears = find_encoder_linears(model)
    order = torch.randperm(len(data.train))[: args.batches * args.batch_size].tolist()
    sums = {n: torch.zeros_like(m.weight, dtype=torch.float64) for n, m in linears.items()}
    squares = {n: torch.zeros_like(m.weight, dtype=torch.float64) for n, m in linears.items()}
    label_losses = []
    for b in range(args.batches):
        rows = [data.train[i] for i in order[b * args.batch_size:(b + 1) * args.batch_size]]
        batch = data.collator([{k: v for k, v in r.items() if k in ("input_ids", "attention_mask", "token_type_ids",
                                                                      "labels")} for r in rows])
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        model.zero_grad()
        outputs = model(**inputs)
        with torch.no_grad():
            teacher_outputs = type(outputs)(logits=outputs.logits.detach().clone())
        loss = combined_loss(data.task, outputs, batch, teacher_outputs, args.distill_alpha, 2.0)
        loss.backward()
        label_losses.append(float(torch.nn.functional.cross_entropy(outputs.logits.detach(), batch["labels"])))
        for n, m in linears.items():
            g = (-m.weight.detach() * m.weight.grad).double()
            sums[n] += g
            squares[n] += g * g
    n_b = args.batches
    t_all, size_all = [], []
    for n in linears:
        mean = sums[n] / n_b
        std = (squares[n] / n_b - mean * mean).clamp_min(0).mul(n_b / (n_b - 1)).sqrt()
        t_all.append((mean.abs() / (std / n_b ** 0.5).clamp_min(1e-30)).reshape(-1).float())
        size_all.append(mean.abs().reshape(-1).float())
    t = torch.cat(t_all)
    size = torch.cat(size_all)
    sample = t[torch.randperm(t.numel())[:1_000_000]]
    record = {
        "teacher": args.teacher, "task": args.task, "batches": n_b, "batch_size": args.batch_size,
        "distill_alpha": args.distill_alpha,
        "teacher_train_label_loss": sum(label_losses) / len(label_losses),
        "score_update_t_median": float(sample.median()),
        "score_update_t_fraction_above_2": float((t > 2).float().mean()),
        "score_update_mean_abs": float(size.mean()),
        "note": "t = |mean_b G| / (std_b G / sqrt(N)) per score entry; pure noise gives a median of about 0.7",
    }
    Path(args.out).write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
