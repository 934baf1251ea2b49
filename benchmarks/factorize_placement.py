"""Where should factorization and evaluation run on a cluster: CPU node or GPU? (issue 30 point 2)

Times, on this machine's CPU, the jobs the workflow would place on a CPU node, with BERT-base shapes
(random weights: benchmarks/gpu/random_bert_base.py; a step costs what it costs with real weights):
`lpaf factorize` svd / sparsity-aware of a pruned model, fwsvd of the teacher and fisher-sparsity-aware
of the pruned model (Fisher batches), and `lpaf evaluate` at two dev-subset sizes. Each job is a fresh
`lpaf` process, as in the workflow; the record keeps its wall time and its CPU time (user + system
of the child, from getrusage). CPU time is the figure to read when the machine is shared: a process
that waits for the CPU accumulates wall time but not CPU time, and the single-thread CPU time is the
wall time the job would take alone on one core (an upper bound for cpus_per_task > 1).

The teacher and the pruned model are made with one and two optimizer steps (their scores are
meaningless; their shapes and masks are what the timed jobs read).

    python benchmarks/factorize_placement.py --tokenizer ../shared/models/all-MiniLM-L6-v2 --data ../shared/data
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(cmd: list[str], threads: int) -> dict:
    """Wall and CPU seconds of one child process."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if res.returncode != 0:
        raise SystemExit(f"factorize_placement: {' '.join(cmd[:4])} ... failed:\n{res.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokenizer", required=True, help="model directory with an uncased BERT vocabulary")
    p.add_argument("--data", required=True, help="local data directory holding MRPC")
    p.add_argument("--task", default="mrpc")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--density", type=float, default=0.25)
    p.add_argument("--fisher-batches", type=int, default=4,
                   help="Fisher batches timed (the workflow default is 32; the per-batch cost is extrapolated)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "factorize_placement.json"))
    args = p.parse_args()
    lpaf = [sys.executable, "-m", "lpaf.cli"]
    common = ["--task", args.task, "--data", args.data, "--max-length", "128", "--device", "cpu", "--seed", "1"]
    work = Path(tempfile.mkdtemp(prefix="lpaf-placement-"))
    base, teacher, pruned = work / "bert-base", work / "teacher", work / "pruned"
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu" / "random_bert_base.py"), "--tokenizer",
                    args.tokenizer, "--out", str(base)], check=True, capture_output=True)
    tiny_train = ["--batch-size", "4", "--max-eval-samples", "8", "--save-steps", "1000", *common]
    setup = {"finetune": run([*lpaf, "finetune", "--model", str(base), "--max-steps", "1", *tiny_train,
                              "--out", str(teacher)], args.threads),
             "prune": run([*lpaf, "prune", "--model", str(teacher), "--method", "magnitude", "--density",
                           str(args.density), "--max-steps", "2", *tiny_train, "--out", str(pruned)], args.threads)}
    timed: dict[str, dict] = {}
    fisher = ["--fisher-batches", str(args.fisher_batches)]
    for name, source, method, extra in (("svd", pruned, "svd", []), ("sparsity-aware", pruned, "sparsity-aware", []),
                                        ("fwsvd", teacher, "fwsvd", fisher),
                                        ("fisher-sparsity-aware", pruned, "fisher-sparsity-aware", fisher)):
        timed[f"factorize-{name}"] = run([*lpaf, "factorize", "--model", str(source), "--method", method, "--density",
                                          str(args.density), *extra, *common, "--out", str(work / f"fact-{name}")],
                                         args.threads)
    for n in (32, 128):
        timed[f"evaluate-{n}"] = run([*lpaf, "evaluate", "--model", str(work / "fact-sparsity-aware"), *common,
                                      "--max-eval-samples", str(n), "--out", str(work / f"eval-{n}.json")],
                                     args.threads)
    # derived: one Fisher batch (fwsvd - svd of the same shapes), one dev example (the difference of two sizes)
    per_batch = {k: (timed["factorize-fwsvd"][k] - timed["factorize-svd"][k]) / args.fisher_batches
                 for k in ("wall_s", "cpu_s")}
    per_example = {k: (timed["evaluate-128"][k] - timed["evaluate-32"][k]) / 96 for k in ("wall_s", "cpu_s")}
    fwsvd_32 = {k: timed["factorize-svd"][k] + 32 * per_batch[k] for k in ("wall_s", "cpu_s")}
    eval_256 = {k: timed["evaluate-32"][k] + (256 - 32) * per_example[k] for k in ("wall_s", "cpu_s")}
    result = {
        "benchmark": "factorize_placement",
        "model": "BERT-base shapes, random weights", "task": args.task, "max_length": 128,
        "density": args.density, "threads": args.threads, "device": "cpu",
        "machine": {"cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                    "load_average_1min": os.getloadavg()[0]},
        "setup_not_timed": setup, "jobs": timed,
        "derived": {"fisher_batch": per_batch, "eval_example": per_example,
                    "factorize-fwsvd_at_32_batches": fwsvd_32, "evaluate_at_256_examples": eval_256},
        "note": "each job a fresh lpaf process; cpu_s = user + system time of the child (read this one on a "
                "shared machine: it is what the job costs one core); wall_s includes waiting for the CPU",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(result["derived"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
