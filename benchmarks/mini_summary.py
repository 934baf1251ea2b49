"""Collect the mini reproduction (config/mini.yaml) into benchmarks/results/mini/, seed by seed.

For every seed of the workflow's results/runs.csv it writes `seeds/s<seed>/` (that seed's runs,
rank-study rows and `run_info.json`: command, commit, config digest, machine, and the wall time per
stage summed from the seed's artifacts' `metrics.json` / `eval.json` / `rank.json`, so a run
continued across several invocations is still accounted for), copies the figures, and then
benchmarks/mini_aggregate.py rebuilds the table from *every committed seed* and the claims. Run by
benchmarks/mini_reproduction.sh when the table is complete; rerun it by hand after a resumed run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "results"
OUT = REPO / "benchmarks" / "results" / "mini"
COPY = ["runs.csv", "rank_study.csv"]  # what a finished workflow run must have written
COMMAND = "benchmarks/mini_reproduction.sh  # = snakemake --cores 2 --configfile config/mini.yaml " \
          "--config model_path=../shared/models/all-MiniLM-L6-v2 data_dir=../shared/data"


def stage_of(path: Path, record: dict) -> str:
    if path.name == "eval.json":
        return "evaluate"
    if path.name == "rank.json":
        return "rank_study"
    return str(record.get("stage", path.parent.name.split("-")[0]))


def wall_times(seed: int | None = None) -> dict[str, dict[str, float]]:
    per_stage: dict[str, list[float]] = defaultdict(list)
    for path in sorted(RESULTS.glob(f"*/*/s{'*' if seed is None else seed}/**/*.json")):
        if path.name not in ("metrics.json", "eval.json", "rank.json") or ".partial-" in str(path):
            continue
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        wall = record.get("wall_time_s") if isinstance(record, dict) else None
        if isinstance(wall, (int, float)):
            per_stage[stage_of(path, record)].append(float(wall))
    return {
        stage: {"jobs": len(v), "wall_s_total": round(sum(v), 1), "wall_s_max": round(max(v), 1)}
        for stage, v in sorted(per_stage.items())
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--snakemake-wall-s", type=float, default=None,
                        help="wall time of the last snakemake invocation")
    parser.add_argument("--cores", type=int, default=2)
    args = parser.parse_args()
    missing = [name for name in COPY if not (RESULTS / name).is_file()]
    if missing:
        print(f"mini_summary: results/{missing[0]} is missing: the workflow has not finished "
              "(rerun benchmarks/mini_reproduction.sh)", file=sys.stderr)
        return 2
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "figures").mkdir(exist_ok=True)
    for png in sorted((RESULTS / "figures").glob("*.png")):
        shutil.copy2(png, OUT / "figures" / png.name)
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                                text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    import pandas as pd

    from mini_aggregate import config_digest

    runs = pd.read_csv(RESULTS / "runs.csv")
    ranks = pd.read_csv(RESULTS / "rank_study.csv")
    seeds = sorted(int(s) for s in runs["seed"].unique())
    for seed in seeds:
        d = OUT / "seeds" / f"s{seed}"
        d.mkdir(parents=True, exist_ok=True)
        runs[runs["seed"] == seed].to_csv(d / "runs.csv", index=False, float_format="%.6g")
        ranks[ranks["seed"] == seed].to_csv(d / "rank_study.csv", index=False, float_format="%.6g")
        info_path = d / "run_info.json"
        previous = json.loads(info_path.read_text()) if info_path.is_file() else {}
        invocations = previous.get("snakemake_invocations_wall_s", []) if previous.get("commit") == commit else []
        if args.snakemake_wall_s is not None:
            invocations.append(args.snakemake_wall_s)
        info = {
            "command": COMMAND,
            "config": "config/mini.yaml",
            "config_digest": config_digest(),
            "commit": commit,
            "seed": seed,
            "machine": {"cores": os.cpu_count(), "snakemake_cores": args.cores,
                        "platform": platform.platform(), "python": platform.python_version()},
            "snakemake_invocations_wall_s": invocations,
            "stage_wall_times": wall_times(seed),
        }
        info_path.write_text(json.dumps(info, indent=2) + "\n")
    print(f"mini_summary: committed seeds {seeds} under {(OUT / 'seeds').relative_to(REPO)}")
    # the table of every committed seed (this run's and earlier ones), then the claims
    return subprocess.run([sys.executable, str(REPO / "benchmarks" / "mini_aggregate.py")], cwd=REPO).returncode


if __name__ == "__main__":
    sys.exit(main())
