"""Validate `lpaf plan`'s estimate against a measured run: run a slice of config/mini.yaml for real,
calibrate on the same machine, plan the same slice, and compare per rule.

    python benchmarks/plan_validation.py --model ../shared/models/all-MiniLM-L6-v2 --data ../shared/data

What is compared: the predicted seconds of every job (the plan's estimate, as `lpaf plan
--calibration` prints it) and the job's measured wall time, from the `benchmark:` file Snakemake
writes beside each job's log (`s`: the whole job, interpreter start to exit). Summed per rule.

The slice: config/mini.yaml on MRPC at density 0.25 (42 jobs, every rule kind; about an hour on 2
cores), run with `snakemake --cores 2`, i.e. two one-thread jobs side by side. The calibrations run
the same way: one per max length of the slice's tasks, `--cores` at a time, and a filler
calibration (its numbers discarded) keeps every core busy until the last real one ends, because a
job shares memory bandwidth and caches with its neighbour and one calibrated alone is too fast.

`--run-dir DIR` reuses a finished run of the slice (its logs/**/*.benchmark.tsv) instead of running
it. Writes benchmarks/results/plan_validation.json: per rule the jobs, predicted and measured
seconds and their ratio (target 0.7-1.3), the measured peak memory, and the calibrations used.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lpaf.plan import TRAINING_STAGES, job_seconds, pick_calibration, plan_jobs  # noqa: E402

CONFIG = REPO / "config" / "mini.yaml"
SLICE = ["tasks=[mrpc]", "densities=[0.25]", "evaluate={tasks: [mrpc]}", "rank_study={tasks: [mrpc]}"]
RULES = ("finetune", "prune", "factorize", "retrain", "evaluate", "rank_study", "timing")


def run_slice(run_dir: Path, overrides: list[str], cores: int) -> float:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(run_dir), "--cores",
           str(cores), "--configfile", str(CONFIG), "--config", *overrides]
    env = dict(os.environ, PATH=os.pathsep.join([os.environ.get("PATH", ""), str(Path(sys.executable).parent)]))
    t0 = time.perf_counter()
    with open(run_dir.parent / f"{run_dir.name}.log", "w") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    return time.perf_counter() - t0


def measured_jobs(run_dir: Path) -> list[dict]:
    """One record per job: rule (from the benchmark file name), wall seconds, peak RSS (MB)."""
    jobs = []
    for path in sorted((run_dir / "logs").rglob("*.benchmark.tsv")):
        with open(path) as f:
            row = next(csv.DictReader(f, delimiter="\t"))
        jobs.append({"rule": path.name[: -len(".benchmark.tsv")], "s": float(row["s"]),
                     "max_rss_mb": float(row["max_rss"]) if row.get("max_rss", "NA") != "NA" else None,
                     "path": str(path.relative_to(run_dir))})
    return jobs


def calibrate_side_by_side(jobs, model: str, data: str, cfg: dict, cores: int, work: Path) -> list[dict]:
    """One calibration per (task, max length) of the planned training jobs, `cores` processes at a
    time; fillers keep all cores busy until the last real calibration ends."""
    wanted = sorted({(j.task, j.max_length) for j in jobs if j.stage in TRAINING_STAGES and j.max_length})
    lpaf = str(Path(sys.executable).parent / "lpaf")
    threads = int(cfg["compute"]["train_threads"])
    batch = int(cfg["train"]["batch_size"])
    prune_methods = sorted({p["method"] for p in cfg["prune"].values()})

    def command(task: str, length: int, out: Path) -> list[str]:
        cmd = [lpaf, "calibrate", "--model", model, "--task", task, "--data", data, "--max-length", str(length),
               "--threads", str(threads), "--batch-size", str(batch), "--prune-methods", *prune_methods,
               "--out", str(out), "--label", f"measured by benchmarks/plan_validation.py: {cores} calibrations "
                                             f"side by side, {threads} thread(s) each"]
        samples = ((cfg.get("task_settings") or {}).get(task) or {}).get("data", {}).get("max_train_samples")
        return cmd + (["--max-train-samples", str(samples)] if samples else [])

    pending = [(t, n, work / f"calibration_{t}_{n}.json") for t, n in wanted]
    outputs = [p for _, _, p in pending]
    real: list[subprocess.Popen] = []
    fillers: list[subprocess.Popen] = []
    filler_tmp = work / "filler_tmp"  # a killed filler leaves its scratch here, removed with `work`
    filler_tmp.mkdir()
    with open(work / "calibrate.log", "w") as log:
        while True:
            for proc in real:
                if proc.poll() not in (None, 0):
                    raise SystemExit(f"calibration failed (exit {proc.returncode}): {' '.join(proc.args)}")
            active = [p for p in real if p.poll() is None]
            fillers = [p for p in fillers if p.poll() is None]
            if not pending and not active:
                break
            while len(active) + len(fillers) < cores:
                if pending:
                    task, length, out = pending.pop(0)
                    real.append(subprocess.Popen(command(task, length, out), stdout=log, stderr=log))
                    active.append(real[-1])
                else:  # keep the core loaded like the neighbouring job of the measured run
                    task, length = wanted[len(fillers) % len(wanted)]
                    fillers.append(subprocess.Popen(command(task, length, work / f"filler{len(fillers)}.json"),
                                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                                    env=dict(os.environ, TMPDIR=str(filler_tmp))))
            time.sleep(1)
    for proc in fillers:
        proc.kill()
        proc.wait()
    return [json.loads(p.read_text()) for p in outputs]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="local model directory (config's model_path)")
    parser.add_argument("--data", required=True, help="local data directory (config's data_dir)")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--run-dir", default=None, help="a finished run of the slice to reuse (its workdir)")
    parser.add_argument("--calibrations", nargs="*", default=None, help="reuse these calibration JSONs")
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/plan_validation.json"))
    args = parser.parse_args()

    model, data = str(Path(args.model).resolve()), str(Path(args.data).resolve())
    overrides = [f"model_path={model}", f"data_dir={data}", *SLICE]
    cfg = yaml.safe_load(CONFIG.read_text())
    jobs = plan_jobs(str(CONFIG), overrides, snakefile=str(REPO / "Snakefile"))
    with tempfile.TemporaryDirectory(prefix="lpaf-plan-validation-") as tmp:
        work = Path(tmp)
        run_dir, run_wall_s = Path(args.run_dir) if args.run_dir else work / "run", None
        if not args.run_dir:
            run_dir.mkdir()
            run_wall_s = run_slice(run_dir, overrides, args.cores)
        measured = measured_jobs(run_dir)
        if args.calibrations:
            calibrations = [json.loads(Path(p).read_text()) for p in args.calibrations]
        else:
            calibrations = calibrate_side_by_side(jobs, model, data, cfg, args.cores, work)

    predicted: dict[str, list[float]] = defaultdict(list)
    for job in jobs:
        if job.rule in RULES:
            chosen, scale = pick_calibration(job, calibrations)
            seconds = job_seconds(job, chosen, scale)
            predicted[job.rule].append(float("nan") if seconds is None else seconds)
    by_rule: dict[str, list[dict]] = defaultdict(list)
    for m in measured:
        by_rule[m["rule"]].append(m)
    rules = {}
    for rule in RULES:
        pred, meas = predicted.get(rule, []), by_rule.get(rule, [])
        row = {"jobs_planned": len(pred), "jobs_measured": len(meas), "predicted_s": round(sum(pred), 1),
               "measured_s": round(sum(m["s"] for m in meas), 1),
               "measured_max_rss_mb": max((m["max_rss_mb"] or 0 for m in meas), default=None)}
        row["ratio"] = round(row["predicted_s"] / row["measured_s"], 3) if row["measured_s"] else None
        row["within_0.7_1.3"] = row["ratio"] is not None and 0.7 <= row["ratio"] <= 1.3
        rules[rule] = row
    total_pred = sum(r["predicted_s"] for r in rules.values() if r["ratio"] is not None)
    total_meas = sum(r["measured_s"] for r in rules.values())
    blob = {
        "command": "python benchmarks/plan_validation.py --model ../shared/models/all-MiniLM-L6-v2 --data ../shared/data",
        "slice": {"config": "config/mini.yaml", "overrides": SLICE, "snakemake_cores": args.cores,
                  "run_wall_s": run_wall_s, "run_dir_reused": bool(args.run_dir)},
        "compared": "per rule: the plan's predicted seconds per job (calibration: process start + fixed + steps x "
                    "step_s + final dev evaluation) vs the job's benchmark `s` (whole job), summed",
        "machine": {"cores": os.cpu_count(), "platform": platform.platform()},
        "rules": rules,
        "total": {"predicted_s": round(total_pred, 1), "measured_s": round(total_meas, 1),
                  "ratio": round(total_pred / total_meas, 3) if total_meas else None},
        "calibrations": calibrations,
        "jobs_measured": measured,
    }
    Path(args.out).write_text(json.dumps(blob, indent=1) + "\n")
    for rule, r in rules.items():
        print(f"{rule:<11} jobs {r['jobs_planned']:>3}/{r['jobs_measured']:<3} predicted {r['predicted_s']:>8.1f} s  "
              f"measured {r['measured_s']:>8.1f} s  ratio {r['ratio']}  peak RSS {r['measured_max_rss_mb']} MB")
    print(f"total: predicted {total_pred:.0f} s, measured {total_meas:.0f} s; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
