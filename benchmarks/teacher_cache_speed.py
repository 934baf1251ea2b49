"""Step time of distillation with the teacher run at every step vs read from lpaf.teacher_cache (issue 30
point 6), on CPU, in one process, alternating blocks of steps.

A step is what LpafTrainer does: the student's forward and backward, the teacher's outputs (its
eval-mode forward under no_grad, or a lookup of the cached ones), the distillation loss (alpha 0.9,
T 2) and an AdamW update. The teacher is a copy of the student (as a fine-tuned model distilling into
its own pruned copy). Timed with the process's CPU clock (``time.process_time``) on one thread, so a
busy machine slows the wall clock but not the figure; the wall times are kept too. Also timed: the one
pass over the training set that fills the cache, per example.

    python benchmarks/teacher_cache_speed.py --model ../shared/models/all-MiniLM-L6-v2 --data ../shared/data
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--task", default="mrpc")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=6, help="steps per block")
    p.add_argument("--blocks", type=int, default=3, help="blocks per mode, alternating live / cached")
    p.add_argument("--cache-examples", type=int, default=256, help="examples timed for the cache-filling pass")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "teacher_cache_speed.json"))
    args = p.parse_args()

    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from lpaf.stages.common import DataArgs, load_task_data
    from lpaf.tasks import get_task
    from lpaf.teacher_cache import INDEX_KEY, IndexedDataset, compute_outputs, TeacherOutputs
    from lpaf.training import combined_loss

    torch.set_num_threads(1)
    torch.manual_seed(0)
    task = get_task(args.task)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    student = AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=task.num_labels)
    teacher = copy.deepcopy(student).eval()
    for q in teacher.parameters():
        q.requires_grad_(False)
    n = args.batch_size * args.steps * args.blocks * 2
    data = load_task_data(DataArgs(task=args.task, data=args.data, max_length=args.max_length, max_train_samples=n,
                                   cache_dir=None), tokenizer)
    train = IndexedDataset(data.train)

    c0, w0 = time.process_time(), time.perf_counter()
    sub = data.train.select(range(min(args.cache_examples, len(data.train))))
    compute_outputs(teacher, sub, data.collator, "cpu", "fp32", batch_size=64)
    fill = {"examples": len(sub), "cpu_s_per_example": (time.process_time() - c0) / len(sub),
            "wall_s_per_example": (time.perf_counter() - w0) / len(sub)}
    cache = TeacherOutputs(compute_outputs(teacher, data.train, data.collator, "cpu", "fp32", batch_size=64))

    optimizer = torch.optim.AdamW([q for q in student.parameters() if q.requires_grad], lr=2e-5)
    batches = [data.collator([train[i] for i in range(k * args.batch_size, (k + 1) * args.batch_size)])
               for k in range(len(train) // args.batch_size)]
    student.train()

    def step(batch, cached: bool) -> None:
        batch = dict(batch)
        index = batch.pop(INDEX_KEY)
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        outputs = student(**inputs)
        if cached:
            teacher_outputs = cache.lookup(index, "cpu", length=inputs["input_ids"].shape[-1])
        else:
            with torch.no_grad():
                teacher_outputs = teacher(**inputs)
        loss = combined_loss(task, outputs, batch, teacher_outputs, 0.9, 2.0)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step(batches[0], False)  # warm-up: first-call allocations
    step(batches[1], True)
    times: dict[str, list[dict[str, float]]] = {"live": [], "cached": []}
    k = 0
    for block in range(args.blocks):
        for mode in (("live", "cached") if block % 2 == 0 else ("cached", "live")):
            for _ in range(args.steps):
                batch = batches[k % len(batches)]
                k += 1
                c, w = time.process_time(), time.perf_counter()
                step(batch, mode == "cached")
                times[mode].append({"cpu_s": time.process_time() - c, "wall_s": time.perf_counter() - w})
    summary = {mode: {"steps": len(v), "cpu_s_mean": statistics.mean(t["cpu_s"] for t in v),
                      "cpu_s_median": statistics.median(t["cpu_s"] for t in v),
                      "wall_s_mean": statistics.mean(t["wall_s"] for t in v)} for mode, v in times.items()}
    ratio = summary["cached"]["cpu_s_mean"] / summary["live"]["cpu_s_mean"]
    result = {
        "benchmark": "teacher_cache_speed", "model": args.model, "task": args.task, "max_length": args.max_length,
        "batch_size": args.batch_size, "threads": 1, "device": "cpu",
        "machine": {"cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                    "load_average_1min": os.getloadavg()[0]},
        "step": summary, "cached_over_live_cpu": ratio, "step_saving": 1 - ratio,
        "teacher_forward_per_example": fill,
        "saving_predicted_by_the_plan_s": args.batch_size * fill["cpu_s_per_example"],
        "saving_measured_s": summary["live"]["cpu_s_mean"] - summary["cached"]["cpu_s_mean"],
        "note": "CPU seconds of one thread (time.process_time): the figure that does not depend on other load; "
                "the plan's model of the saving is batch x the teacher's forward per example (the evaluation's "
                "per-example cost in a calibration)",
    }
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(json.dumps({k: result[k] for k in ("step", "step_saving", "saving_predicted_by_the_plan_s",
                                              "saving_measured_s")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
