"""Collect the mini reproduction (config/mini.yaml) into benchmarks/results/mini/.

Copies the small outputs of the workflow (table, runs, rank study, figures) and writes
`run_info.json`: the command, commit, machine, and the wall time per stage summed from every
artifact's `metrics.json` / `eval.json` / `rank.json` (so a run continued across several
invocations is still accounted for); then benchmarks/mini_claims.py writes `claims.md`. Run by benchmarks/mini_reproduction.sh when the table is
complete; rerun it by hand after a resumed run.
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
COPY = ["table.csv", "table.md", "runs.csv", "rank_study.csv"]
COMMAND = "benchmarks/mini_reproduction.sh  # = snakemake --cores 2 --configfile config/mini.yaml " \
          "--config model_path=../shared/models/all-MiniLM-L6-v2 data_dir=../shared/data"


def stage_of(path: Path, record: dict) -> str:
    if path.name == "eval.json":
        return "evaluate"
    if path.name == "rank.json":
        return "rank_study"
    return str(record.get("stage", path.parent.name.split("-")[0]))


def wall_times() -> dict[str, dict[str, float]]:
    per_stage: dict[str, list[float]] = defaultdict(list)
    for path in sorted(RESULTS.glob("*/*/s*/**/*.json")):
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
    for name in COPY:
        shutil.copy2(RESULTS / name, OUT / name)
    (OUT / "figures").mkdir(exist_ok=True)
    for png in sorted((RESULTS / "figures").glob("*.png")):
        shutil.copy2(png, OUT / "figures" / png.name)
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                                text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    info_path = OUT / "run_info.json"
    previous = json.loads(info_path.read_text()) if info_path.is_file() else {}
    invocations = previous.get("snakemake_invocations_wall_s", []) if previous.get("commit") == commit else []
    if args.snakemake_wall_s is not None:
        invocations.append(args.snakemake_wall_s)
    info = {
        "command": COMMAND,
        "config": "config/mini.yaml",
        "commit": commit,
        "machine": {"cores": os.cpu_count(), "snakemake_cores": args.cores,
                    "platform": platform.platform(), "python": platform.python_version()},
        "snakemake_invocations_wall_s": invocations,
        "stage_wall_times": wall_times(),
    }
    info_path.write_text(json.dumps(info, indent=2) + "\n")
    print(f"mini_summary: wrote {OUT.relative_to(REPO)} ({len(COPY)} tables, "
          f"{len(list((OUT / 'figures').glob('*.png')))} figures, run_info.json)")
    # the claims of the paper, read off the copied tables (claims.md / claims.json)
    return subprocess.run([sys.executable, str(REPO / "benchmarks" / "mini_claims.py"), "--dir", str(OUT)],
                          cwd=REPO).returncode


if __name__ == "__main__":
    sys.exit(main())
