"""Rank vs schedule length (issue 14, the key study): do learned first-order masks lower the rank
when the scores get more updates, and does the accuracy order hold?

Every cell is one ``lpaf prune`` of the same SST-2 teacher on the full SST-2 training set (67,349
sentences, max length 64, batch 32) for a fixed number of optimizer steps, followed by the checks
of ``study.py``'s ``analyse``: dev accuracy, mean numerical rank, 99%-energy rank, zero rows and
columns, and the mask's overlap with the teacher's top-|W| mask at the same density
(``magnitude_overlap``; 1.0 = the magnitude mask, a random mask scores the density).

Methods:
- ``movement``: learned scores in Sanh et al.'s setting with a weak magnitude prior
  (S0 = 0.1·|W|/mean|W|, scores lr 1e-2): after a few hundred Adam steps of ~1e-2 the learned part
  is far larger than the prior, which only keeps the first masks from being random;
- ``movement-zeros``: scores from 0 (Sanh et al. exactly);
- ``soft-movement``: the same prior, sigmoid-threshold L1;
- ``platon``: |W ⊙ ∇W| sensitivity EMA × uncertainty (no learned scores);
- ``platon-every10-zeroed``: the per-step PLATON with masks every 10 steps and pruned weights zeroed (an
  earlier, partial reading of the reference; the reference itself is regime_study.py's ``platon-reference``);
- ``magnitude``: |W| (the zero-order control).

Every finished cell is written to ``schedule/<task>/<name>.json`` at once (commit them as they
come: a later run may start on a fresh machine), and a cell whose JSON exists is skipped, so
rerunning the same command continues where it stopped. ``--table`` prints the markdown table and
``--figure`` draws rank (and accuracy) vs steps per method.

Reproduce (teacher: 1 epoch on the first 20,000 SST-2 sentences, so most of the pruning data is new
to it and its first-order signal is not the noise of a fitted teacher; see signal_probe.py):

    lpaf finetune --model ../shared/models/all-MiniLM-L6-v2 --task sst2 --data ../shared/data \\
        --max-length 64 --max-train-samples 20000 --epochs 1 --lr 3e-5 --out /tmp/lpaf_sched/teacher_sst2
    python benchmarks/prune_study/schedule_study.py --teacher /tmp/lpaf_sched/teacher_sst2 --jobs 2
    python benchmarks/prune_study/schedule_study.py --table --figure benchmarks/prune_study/schedule_sst2.png
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SHARED = ROOT.parent / "shared"
sys.path.insert(0, str(HERE))

METHOD_FLAGS: dict[str, list[str]] = {
    "movement": ["--method", "movement", "--score-init", "magnitude", "--score-init-scale", "0.1"],
    "movement-zeros": ["--method", "movement", "--score-init", "zeros"],
    "soft-movement": ["--method", "soft-movement", "--score-init", "magnitude", "--score-init-scale", "0.1"],
    "platon": ["--method", "platon"],
    # per-step PLATON with masks every 10 steps and pruned weights set to 0 (not the reference: see regime_study.py)
    "platon-every10-zeroed": ["--method", "platon", "--mask-update-every", "10", "--zero-pruned-weights"],
    "magnitude": ["--method", "magnitude"],
}

# The essential cells first (issue 14): density 0.1, three schedule lengths, then the extra seeds at
# the longest schedule; then what the budget allows.
# Ordered so that two job slots answer the main question (learned movement vs steps, against its
# magnitude control) first.
ESSENTIAL: list[tuple[str, float, int, int]] = [
    ("movement", 0.1, 3000, 42), ("movement", 0.1, 250, 42), ("magnitude", 0.1, 3000, 42),
    ("movement", 0.1, 1000, 42), ("platon", 0.1, 1000, 42), ("platon", 0.1, 250, 42),
    ("platon", 0.1, 3000, 42), ("magnitude", 0.1, 1000, 42), ("magnitude", 0.1, 250, 42),
    *[(m, 0.1, 3000, seed) for seed in (43, 44) for m in ("movement", "magnitude")],
]
EXTRA: list[tuple[str, float, int, int]] = [
    ("platon-every10-zeroed", 0.1, 1000, 42),  # measured once against platon at the same cell
    ("soft-movement", 0.1, 3000, 42), ("movement-zeros", 0.1, 3000, 42),
    *[(m, d, 3000, 42) for d in (0.25, 0.05) for m in ("movement", "magnitude", "platon")],
]


def cell_name(method: str, density: float, steps: int, seed: int) -> str:
    return f"{method}-d{density:g}-t{steps}-s{seed}"


def prune_flags(args, method: str, density: float, steps: int, seed: int) -> list[str]:
    return ["--model", args.teacher, "--task", args.task, "--data", args.data, "--max-length", str(args.max_length),
            "--max-steps", str(steps), "--batch-size", "32", "--lr", "3e-5", "--device", "cpu", "--seed", str(seed),
            "--density", str(density), "--save-steps", "250", "--logging-steps", "50",
            *METHOD_FLAGS[method]]


def run_cell(args, cell: tuple[str, float, int, int]) -> dict | None:
    from study import analyse

    method, density, steps, seed = cell
    name = cell_name(*cell)
    result_path = Path(args.results) / f"{name}.json"
    if result_path.is_file():
        return json.loads(result_path.read_text())
    out = Path(args.work) / name
    log = Path(args.work) / f"{name}.log"
    flags = prune_flags(args, method, density, steps, seed)
    if not (out / "metrics.json").is_file():
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
        print(f"[{time.strftime('%H:%M:%S')}] start {name}", flush=True)
        with open(log, "a") as f:  # append: a resumed run keeps the earlier part of its log
            rc = subprocess.run(["nice", "-n", str(args.nice), sys.executable, "-m", "lpaf.cli", "prune", *flags, "--out", str(out)],
                                stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT).returncode
        if rc != 0:
            print(f"[{time.strftime('%H:%M:%S')}] {name} failed with exit code {rc}; see {log}", flush=True)
            return None
    import torch
    from safetensors.torch import load_file

    torch.set_num_threads(args.threads)
    teacher_sd = load_file(str(Path(args.teacher) / "model.safetensors"))
    teacher_weights = {k[: -len(".weight")]: v for k, v in teacher_sd.items() if k.endswith(".weight")}
    record = analyse(name, out, flags, teacher_weights)
    metrics = json.loads((out / "metrics.json").read_text())
    record |= {"study_method": method, "steps": steps, "seed": seed, "teacher": str(args.teacher),
               "magnitude_overlap": {k: v for k, v in metrics.get("magnitude_overlap", {}).items()
                                     if k != "per_matrix"}}
    result_path.parent.mkdir(parents=True, exist_ok=True)
    result_path.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    print(f"[{time.strftime('%H:%M:%S')}] done {name}: acc {record['headline']:.4f} "
          f"overlap {record['overlap_with_teacher_top_abs']:.3f} rank {record['rank']['mean_rank']:.1f} "
          f"eff99 {record['rank']['mean_effective_rank_99']:.1f} ({record['wall_time_s'] / 60:.1f} min)", flush=True)
    return record


def load_results(results_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(results_dir.glob("*.json"))]


def summarise(records: list[dict]) -> dict[tuple, dict]:
    """(method, density, steps) -> mean / sample std over seeds of accuracy, ranks, overlap."""
    import statistics

    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["study_method"], r["density"], r["steps"]), []).append(r)
    out = {}
    for key, rs in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0], kv[0][2])):
        def stat(get):
            vals = [get(r) for r in rs]
            return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else None)
        out[key] = {"n": len(rs), "seeds": sorted(r["seed"] for r in rs),
                    "accuracy": stat(lambda r: r["headline"]),
                    "mean_rank": stat(lambda r: r["rank"]["mean_rank"]),
                    "eff99": stat(lambda r: r["rank"]["mean_effective_rank_99"]),
                    "overlap": stat(lambda r: r["overlap_with_teacher_top_abs"]),
                    "zero_rows": stat(lambda r: r["mean_zero_rows"]),
                    "wall_min": stat(lambda r: r["wall_time_s"] / 60)}
    return out


def markdown(summary: dict[tuple, dict]) -> str:
    def fmt(pair, digits):
        mean, std = pair
        return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")

    lines = ["| method | density | steps | seeds | dev acc | mean rank (of 384) | 99%-energy rank | magnitude overlap "
             "| zero rows / matrix | wall min |", "|---|---|---|---|---|---|---|---|---|---|"]
    for (method, density, steps), s in summary.items():
        lines.append(f"| {method} | {density:g} | {steps} | {s['n']} | {fmt(s['accuracy'], 3)} | "
                     f"{fmt(s['mean_rank'], 1)} | {fmt(s['eff99'], 1)} | {fmt(s['overlap'], 3)} | "
                     f"{fmt(s['zero_rows'], 1)} | {fmt(s['wall_min'], 0)} |")
    return "\n".join(lines)


def figure(summary: dict[tuple, dict], path: str, density: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for method in METHOD_FLAGS:
        pts = sorted((k[2], v) for k, v in summary.items() if k[0] == method and k[1] == density)
        if not pts:
            continue
        steps = [p[0] for p in pts]
        for ax, key in zip(axes, ("mean_rank", "eff99", "accuracy")):
            means = [p[1][key][0] for p in pts]
            errs = [p[1][key][1] or 0.0 for p in pts]
            ax.errorbar(steps, means, yerr=errs, marker="o", capsize=3, label=method)
    for ax, title in zip(axes, ("mean numerical rank (of 384)", "99%-energy rank", "SST-2 dev accuracy")):
        ax.set_xscale("log")
        all_steps = sorted({k[2] for k in summary if k[1] == density})
        ax.set_xticks(all_steps, [f"{x:,}" for x in all_steps])  # the schedule lengths, no overlapping minor labels
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("pruning steps (batch 32)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize=8, loc="lower right")
    fig.suptitle(f"MiniLM-L6, SST-2, density {density:g}: rank vs pruning schedule length", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    print(f"wrote {path}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="sst2")
    p.add_argument("--teacher", default="/tmp/lpaf_sched/teacher_sst2")
    p.add_argument("--data", default=str(SHARED / "data"))
    p.add_argument("--work", default="/tmp/lpaf_sched/runs")
    p.add_argument("--results", default=None, help="per-cell JSON folder (default: schedule/<task>/ here)")
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--set", choices=["essential", "extra", "all"], default="essential")
    p.add_argument("--only", nargs="*", help="run only these cell names")
    p.add_argument("--jobs", type=int, default=1, help="cells run at once (each with --threads threads)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--nice", type=int, default=0, help="run the prune jobs at this niceness")
    p.add_argument("--table", action="store_true", help="print the markdown table of every finished cell")
    p.add_argument("--figure", help="draw rank and accuracy vs steps (.png/.pdf)")
    p.add_argument("--figure-density", type=float, default=0.1)
    args = p.parse_args()
    args.results = args.results or str(HERE / "schedule" / args.task)

    if not (args.table or args.figure):
        cells = {"essential": ESSENTIAL, "extra": EXTRA, "all": ESSENTIAL + EXTRA}[args.set]
        if args.only:  # in the order given, so the longest cell can start first
            by_name = {cell_name(*c): c for c in cells}
            unknown = [n for n in args.only if n not in by_name]
            if unknown:
                sys.exit(f"error: --only: unknown cell {unknown[0]!r} in --set {args.set}")
            cells = [by_name[n] for n in args.only]
        Path(args.work).mkdir(parents=True, exist_ok=True)
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            list(pool.map(lambda c: run_cell(args, c), cells))
    summary = summarise(load_results(Path(args.results)))
    if args.table:
        print(markdown(summary))
    if args.figure:
        figure(summary, args.figure, args.figure_density)


if __name__ == "__main__":
    main()
