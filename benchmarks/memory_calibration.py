"""A memory calibration for the workflow's SLURM memory requests (cluster.memory), from a calibration
run's Snakemake benchmark files: each rule's largest peak resident memory (``max_rss``) over its jobs,
with the model they ran and the memory of a bare lpaf process (what does not grow with the model).
The workflow scales the rest by the parameter ratio to the config's model (lpaf.plan.scaled_memory_mb).

    # after a calibration run, e.g. benchmarks/plan_validation.py or the pilot (config/pilot.yaml):
    python benchmarks/memory_calibration.py --logs logs/ --model ../shared/models/all-MiniLM-L6-v2 \\
        --label "measured: ..." --out config/calibration/minilm-memory.json
    # the same records, as plan_validation.json keeps them (jobs_measured: rule, max_rss_mb, path):
    python benchmarks/memory_calibration.py --plan-validation benchmarks/results/plan_validation.json ...
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lpaf.plan import KNOWN_MODEL_PARAMETERS, benchmark_peaks, bert_parameters, memory_calibration  # noqa: E402


def process_mb() -> float:
    """Peak RSS of a bare lpaf job process: the interpreter and the imports every stage makes."""
    code = ("import resource, lpaf.cli, lpaf.training, lpaf.stages.prune, torch, transformers; "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return int(out.split()[-1]) / 1024  # kB -> MB


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--logs", help="a run's log directory: its **/*.benchmark.tsv files are read")
    src.add_argument("--plan-validation", help="benchmarks/results/plan_validation.json (its jobs_measured)")
    p.add_argument("--model", required=True, help="the model the run used: a directory with config.json, or a hub id")
    p.add_argument("--label", required=True, help="how the numbers came about (kept in the JSON)")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    if args.logs:
        peaks = benchmark_peaks(sorted(Path(args.logs).rglob("*.benchmark.tsv")))
    else:
        peaks: dict[str, list[float]] = {}
        for job in json.loads(Path(args.plan_validation).read_text())["jobs_measured"]:
            peaks.setdefault(job["rule"], []).append(float(job["max_rss_mb"]))
    if not peaks:
        raise SystemExit("memory_calibration: no benchmark records found")
    config = Path(args.model) / "config.json"
    params = bert_parameters(json.loads(config.read_text())) if config.is_file() else KNOWN_MODEL_PARAMETERS[args.model]
    blob = memory_calibration(peaks, Path(args.model).name if config.is_file() else args.model, params,
                              round(process_mb(), 1), args.label)
    Path(args.out).write_text(json.dumps(blob, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(blob["rules"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
