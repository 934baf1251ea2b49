"""How long `snakemake -n` takes to plan the paper DAG (target: <= 20 s), and an up-to-date rerun.

    python benchmarks/dag_speed.py [--repeats 3] [--out benchmarks/results/dag_speed.json]

1. `snakemake -n` with config/paper.yaml in an empty working directory: plans every job
   (~2,250: 9 tasks x 3 seeds x every row and density).
2. The up-to-date rerun: every output file of the paper DAG is created (empty, with mtimes in
   DAG order: deeper along the chain = later), then `snakemake -n` is timed on that directory;
   it must say "Nothing to be done".
Writes JSON with wall times (median over repeats), job counts, the machine's CPU count and load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))


def _snakemake(workdir: Path, configfile: Path, *args: str, env: dict | None = None) -> tuple[float, str]:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir),
           "--configfile", str(configfile), *args]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env or os.environ.copy())
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"snakemake failed ({' '.join(cmd)}):\n{res.stderr[-3000:]}")
    return wall, res.stdout + res.stderr


def _materialize(workdir: Path, dry_run_output: str) -> int:
    """Create every planned output file, mtimes ordered like the DAG (inputs older than outputs)."""
    from test_workflow import planned_jobs

    order = {"fetch_model": 0, "fetch_data": 0, "table": 10_000, "figure_metric": 20_000, "figure_rank": 20_000,
             "figure_speedup": 20_000}
    base = time.time() - 100_000
    n = 0
    for job in planned_jobs(dry_run_output):
        if job["rule"] == "all":
            continue
        for path in job["output"].split(", "):
            p = workdir / path
            p.parent.mkdir(parents=True, exist_ok=True)
            p.touch()
            rank = order.get(job["rule"], 10 * path.count("/") + (5 if path.endswith(("eval.json", "rank.json")) else 0))
            os.utime(p, (base + rank, base + rank))
            n += 1
    return n


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "dag_speed.json"))
    args = parser.parse_args()
    from test_workflow import job_counts, planned_jobs  # the dry-run parsers of the workflow tests

    paper = REPO / "config" / "paper.yaml"
    result: dict = {"target_s": 20.0, "cpus": os.cpu_count(), "load_avg_1m": os.getloadavg()[0],
                    "python": platform.python_version()}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        walls, quiet_walls, out = [], [], ""
        for _ in range(args.repeats):
            wall, out = _snakemake(tmp / "paper", paper, "-n")
            walls.append(wall)
            quiet_walls.append(_snakemake(tmp / "paper", paper, "-n", "--quiet", "all")[0])
        counts = job_counts(out)
        result["paper_dry_run"] = {"median_s": statistics.median(walls), "runs_s": walls,
                                   "quiet_median_s": statistics.median(quiet_walls), "quiet_runs_s": quiet_walls,
                                   "jobs": sum(counts.values()), "jobs_per_rule": counts}
        _materialize(tmp / "paper", out)
        rerun = []
        for _ in range(args.repeats):
            wall, out = _snakemake(tmp / "paper", paper, "-n")
            if "Nothing to be done" not in out:
                raise SystemExit("the materialized paper DAG is not up to date:\n" + out[-3000:])
            rerun.append(wall)
        result["paper_up_to_date_dry_run"] = {"median_s": statistics.median(rerun), "runs_s": rerun}
    result["load_avg_1m_after"] = os.getloadavg()[0]
    result["meets_target"] = result["paper_dry_run"]["median_s"] <= result["target_s"]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"paper dry-run: {result['paper_dry_run']['median_s']:.1f} s for {result['paper_dry_run']['jobs']} jobs "
          f"(quiet: {result['paper_dry_run']['quiet_median_s']:.1f} s; target <= 20 s); up-to-date "
          f"dry-run: {result['paper_up_to_date_dry_run']['median_s']:.1f} s -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
