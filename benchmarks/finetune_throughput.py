"""Fine-tuning throughput of lpaf's training path vs a plain HF ``Trainer`` on the same model and data.

Both runs train the same initial model on the same tokenized batches for the same number of steps, in
one process, alternating order over repeats; the figure is lpaf's steps/s divided by plain Trainer's
(target >= 0.95). Writes benchmarks/results/finetune_throughput.json.

    python benchmarks/finetune_throughput.py [--model DIR] [--steps 30] [--repeats 2]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainerCallback, TrainingArguments

from lpaf.tasks import get_task
from lpaf.training import TrainArgs, train_model

ROOT = Path(__file__).resolve().parent


class _Timer(TrainerCallback):
    def __init__(self):
        self.times = []
        self._t = None

    def on_step_begin(self, *a, **k):
        self._t = time.perf_counter()

    def on_step_end(self, *a, **k):
        self.times.append(time.perf_counter() - self._t)


def _dataset(n: int, seq_len: int, vocab: int, seed: int):
    import datasets

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, vocab, (n, seq_len), generator=g)
    return datasets.Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": [[1] * seq_len] * n,
                                       "labels": torch.randint(0, 2, (n,), generator=g).tolist()})


def plain_trainer_steps_per_s(model, ds, collator, steps: int, batch_size: int, tmp: str) -> float:
    timer = _Timer()
    args = TrainingArguments(output_dir=tmp, max_steps=steps, per_device_train_batch_size=batch_size,
                             learning_rate=2e-5, save_strategy="no", report_to=[], disable_tqdm=True,
                             use_cpu=not torch.cuda.is_available(), logging_steps=10_000, seed=0)
    Trainer(model=model, args=args, train_dataset=ds, data_collator=collator, callbacks=[timer]).train()
    return 1.0 / statistics.median(timer.times[2:])


def lpaf_steps_per_s(model, ds, collator, steps: int, batch_size: int, tmp: str) -> float:
    out = train_model(model, get_task("sst2"), ds, collator,
                      TrainArgs(max_steps=steps, batch_size=batch_size, lr=2e-5, save_steps=10_000, warmup_ratio=0.0),
                      Path(tmp) / "ckpt", seed=0, device="auto", log=lambda s: None)
    return 1.0 / out["step_time_s_median"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default=None, help="model dir (default: a MiniLM-shaped random BERT)")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "results" / "finetune_throughput.json"))
    a = ap.parse_args()
    if a.model:
        base = BertForSequenceClassification.from_pretrained(a.model, num_labels=2)
        name = a.model
    else:
        torch.manual_seed(0)
        base = BertForSequenceClassification(BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                                                        intermediate_size=1536, num_labels=2))
        name = "random BERT, MiniLM-L6-H384 shapes"
    ds = _dataset(a.batch_size * a.steps, a.seq_len, base.config.vocab_size, 0)

    class _Pad:
        def __call__(self, feats):
            return {k: torch.tensor([f[k] for f in feats]) for k in feats[0]}

    collator = _Pad()
    plain, ours = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.repeats):
            order = [("plain", plain_trainer_steps_per_s, plain), ("lpaf", lpaf_steps_per_s, ours)]
            for label, fn, sink in (order if r % 2 == 0 else order[::-1]):
                sink.append(fn(copy.deepcopy(base), ds, collator, a.steps, a.batch_size, f"{tmp}/{label}{r}"))
    result = {
        "benchmark": "finetune_throughput", "model": name, "steps": a.steps, "batch_size": a.batch_size,
        "seq_len": a.seq_len, "repeats": a.repeats, "threads": torch.get_num_threads(),
        "plain_trainer_steps_per_s": plain, "lpaf_steps_per_s": ours,
        "ratio": statistics.median(ours) / statistics.median(plain), "target": ">= 0.95",
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
