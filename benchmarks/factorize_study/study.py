"""Real-data factorization study (issue 4, the initialization side of claims C3-C4).

Dev metric right after factorization (no training) and reconstruction errors for, at each density:
svd and fwsvd of the dense fine-tuned model; svd of the movement-pruned model; sparsity-aware SVD of
the movement-pruned model with mask weights (λ sweep) and with importance weights. Errors per run
(means over the encoder's matrices): ``relative_error`` ||W_src - AB|| / ||W_src|| (W_src: the dense
or pruned matrix factorized), ``masked_relative_error`` on the weights pruning kept, and
``dense_relative_error`` against the dense teacher's matrix (how far the factorized model moved from
the teacher).

Every run is one ``lpaf factorize`` child process (one thread; ``--nice`` to yield the CPU to other
work); results merge by run name into ``results_<task>.json`` (finished runs are skipped, so it
resumes). Example (pruned models from benchmarks/prune_study/study.py):

    python benchmarks/factorize_study/study.py --task sst2 --teacher /tmp/lpaf_study/teacher_sst2 \
        --pruned 0.25=/tmp/lpaf_study/runs/movement-magprior0.1-d0.25 \
        --pruned 0.1=/tmp/lpaf_study/runs/movement-magprior0.1-d0.1 --max-length 64 --max-train-samples 4000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SHARED = ROOT.parent / "shared"
LAMBDAS = ("0", "0.01", "0.1", "0.5")  # λ = 1 is the svd of the pruned model


def runs_for(density: str, teacher: str, pruned: str) -> dict[str, tuple[str, list[str]]]:
    """run name -> (source model directory, extra `lpaf factorize` flags)."""
    d = ["--density", density]
    runs = {
        f"svd-dense-d{density}": (teacher, ["--method", "svd", *d]),
        f"fwsvd-dense-d{density}": (teacher, ["--method", "fwsvd", *d]),
        f"svd-movement-d{density}": (pruned, ["--method", "svd", *d]),
        f"sa-importance-l0.1-movement-d{density}": (
            pruned, ["--method", "sparsity-aware", "--weights", "importance", "--pruned-weight", "0.1", *d]),
    }
    for lam in LAMBDAS:
        runs[f"sa-mask-l{lam}-movement-d{density}"] = (
            pruned, ["--method", "sparsity-aware", "--weights", "mask", "--pruned-weight", lam, *d])
    return runs


def fisher_runs(density: str, teacher: str, pruned: str | None, seed: int) -> dict[str, tuple[str, list[str]]]:
    """Issue 14: FWSVD's two Fisher axes on the dense model, and the Fisher-weighted sparsity-aware
    SVD (`lpaf + fisher`, both axes) beside plain sparsity-aware SVD of the pruned model, for one
    Fisher-sampling seed (the Fisher batches are drawn with ``--seed``)."""
    d = ["--density", density, "--seed", str(seed)]
    runs = {f"fwsvd-{axis}-dense-d{density}-s{seed}": (teacher, ["--method", "fwsvd", "--fisher-axis", axis, *d])
            for axis in ("out", "in")}
    if pruned:
        for axis in ("out", "in"):
            runs[f"fisher-sa-{axis}-l0.5-pruned-d{density}-s{seed}"] = (
                pruned, ["--method", "fisher-sparsity-aware", "--fisher-axis", axis, "--pruned-weight", "0.5", *d])
        # seed-independent references (one run each: the name carries no seed)
        runs[f"sa-mask-l0.5-pruned-d{density}"] = (
            pruned, ["--method", "sparsity-aware", "--weights", "mask", "--pruned-weight", "0.5", "--density", density])
        runs[f"svd-pruned-d{density}"] = (pruned, ["--method", "svd", "--density", density])
    runs[f"svd-dense-d{density}"] = (teacher, ["--method", "svd", "--density", density])
    return runs


def run_factorize(name: str, source: str, flags: list[str], args) -> Path:
    out = Path(args.work) / name
    if (out / "metrics.json").is_file():
        return out
    log = Path(args.work) / f"{name}.log"
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = ["nice", "-n", str(args.nice), sys.executable, "-m", "lpaf.cli", "factorize", "--model", source,
           "--task", args.task, "--data", args.data, "--max-length", str(args.max_length), "--device", "cpu",
           "--seed", str(args.seed), *flags, "--out", str(out)]
    if args.max_train_samples:
        cmd[-2:-2] = ["--max-train-samples", str(args.max_train_samples)]
    print(f"[{time.strftime('%H:%M:%S')}] {name}: {' '.join(flags)}", flush=True)
    with open(log, "w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT).returncode
    if rc != 0:
        raise SystemExit(f"{name} failed with exit code {rc}; see {log}")
    return out


def dense_error(out: Path, teacher_weights: dict) -> float:
    """Mean over matrices of ||W_teacher - AB|| / ||W_teacher||."""
    from safetensors.torch import load_file

    factors = load_file(str(out / "model.safetensors"))
    errors = []
    for name, w in teacher_weights.items():
        a, b = factors.get(f"{name}.A.weight"), factors.get(f"{name}.B.weight")
        if a is None or b is None:
            continue
        errors.append(float((w.double() - a.double() @ b.double()).norm() / w.double().norm()))
    if not errors:
        raise SystemExit(f"no factors matched the teacher's matrices in {out}/model.safetensors")
    return sum(errors) / len(errors)


def print_table(path: Path) -> None:
    """Dev metric right after factorization and the mean reconstruction errors, one row per run."""
    results = json.loads(path.read_text())
    runs = {name: r for name, r in results.items() if "flags" in r}
    metric_names = sorted({key for r in runs.values() for key in r["metrics"]})
    print(f"| run | density | {' | '.join(metric_names)} | error | masked error | error vs dense |")
    print("|---|---|" + "---|" * (len(metric_names) + 3))
    for name, r in sorted(runs.items(), key=lambda item: (-item[1]["density"], item[0])):
        masked = r["masked_relative_error"]
        metrics = " | ".join(f"{r['metrics'][key]:.3f}" for key in metric_names)
        print(f"| {name} | {r['density']} | {metrics} | {r['relative_error']:.3f} | "
              f"{'–' if masked is None else f'{masked:.3f}'} | {r['dense_relative_error']:.3f} |")
    references = {k: v for k, v in results.items() if "flags" not in v}
    print("\nbefore factorization: " + "; ".join(
        f"{k} " + ", ".join(f"{m} {v:.3f}" for m, v in r["metrics"].items()) for k, r in sorted(references.items())))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", required=True)
    p.add_argument("--teacher", help="the dense fine-tuned model directory (required unless --table)")
    p.add_argument("--pruned", action="append", metavar="DENSITY=DIR",
                   help="a movement-pruned model directory at DENSITY (repeatable)")
    p.add_argument("--set", choices=["paper", "fisher"], default="paper",
                   help="paper: the λ sweep of issue 4; fisher: FWSVD axes and lpaf + fisher (issue 14)")
    p.add_argument("--density", action="append", default=[], help="fisher set: densities without a pruned model")
    p.add_argument("--seeds", type=int, nargs="*", default=[42], help="fisher set: Fisher-sampling seeds")
    p.add_argument("--data", default=str(SHARED / "data"))
    p.add_argument("--work", default=None, help="where the factorized models go (default /tmp/lpaf_factorize_study/TASK)")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--max-train-samples", type=int, default=None, help="fwsvd's Fisher batches come from these")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--nice", type=int, default=0)
    p.add_argument("--only", nargs="*", help="run only these run names")
    p.add_argument("--results-tag", default="", help="write results_<task><tag>.json (other pruned models)")
    p.add_argument("--table", action="store_true", help="only print results_<task><tag>.json as a markdown table")
    args = p.parse_args()
    if args.table:
        print_table(HERE / f"results_{args.task}{args.results_tag}.json")
        return
    if not args.teacher or not (args.pruned or (args.set == "fisher" and args.density)):
        p.error("--teacher and --pruned (or, with --set fisher, --density) are required to run the study")
    args.work = args.work or f"/tmp/lpaf_factorize_study/{args.task}{args.results_tag}"
    Path(args.work).mkdir(parents=True, exist_ok=True)

    from safetensors.torch import load_file

    teacher_sd = load_file(str(Path(args.teacher) / "model.safetensors"))
    teacher_weights = {k[: -len(".weight")]: v for k, v in teacher_sd.items() if k.endswith(".weight")}
    results_path = HERE / f"results_{args.task}{args.results_tag}.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    teacher_record = json.loads((Path(args.teacher) / "metrics.json").read_text())
    results["dense"] = {"headline": teacher_record["headline"], "metrics": teacher_record["metrics"],
                        "teacher": args.teacher}
    plan: dict[str, tuple[str, str, list[str]]] = {}
    for spec in args.pruned or []:
        density, pruned = spec.split("=", 1)
        pruned_record = json.loads((Path(pruned) / "metrics.json").read_text())
        results[f"movement-d{density}"] = {"headline": pruned_record["headline"], "metrics": pruned_record["metrics"],
                                           "model": pruned, "method": pruned_record.get("method"),
                                           "magnitude_overlap": pruned_record.get("magnitude_overlap", {}).get("mean")}
        if args.set == "paper":
            plan |= {n: (density, *v) for n, v in runs_for(density, args.teacher, pruned).items()}
        else:
            for seed in args.seeds:
                plan |= {n: (density, *v) for n, v in fisher_runs(density, args.teacher, pruned, seed).items()}
    for density in args.density:
        for seed in args.seeds:
            plan |= {n: (density, *v) for n, v in fisher_runs(density, args.teacher, None, seed).items()}
    for name, (density, source, flags) in plan.items():
        if args.only and name not in args.only:
            continue
        if name in results and results[name].get("flags") == flags and results[name].get("source") == source:
            done = Path(args.work) / name / "metrics.json"
            if "predictions" not in results[name] and done.is_file():  # a record written before the field: backfill
                artifact = json.loads(done.read_text())
                if artifact.get("headline") == results[name]["headline"]:  # the recorded run, not a stale dir
                    results[name]["predictions"] = artifact.get("predictions")
                    results_path.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
            continue
        out = run_factorize(name, source, flags, args)
        record = json.loads((out / "metrics.json").read_text())
        summary = record["factorization"]["summary"]
        results[name] = {
            "source": source, "flags": flags, "density": float(density), "headline": record["headline"],
            "metrics": record["metrics"], "retained_percent": record["retained_percent"],
            "mean_rank": summary["mean_rank"], "relative_error": summary["mean_relative_error"],
            "masked_relative_error": summary.get("mean_masked_relative_error"),
            "weighted_relative_error": summary["mean_weighted_relative_error"],
            "dense_relative_error": dense_error(out, teacher_weights),
            "mean_iterations": summary["mean_iterations"], "solver_wall_time_s": record["solver_wall_time_s"],
            "wall_time_s": record["wall_time_s"],
            "predictions": record.get("predictions"),  # one class for >= 99% of dev: a degenerate start
        }
        r = results[name]
        masked = r["masked_relative_error"]
        print(f"  {name}: {record['headline_metric']} {r['headline']:.4f} err {r['relative_error']:.3f} "
              f"masked {'-' if masked is None else f'{masked:.3f}'} vs-dense {r['dense_relative_error']:.3f}",
              flush=True)
        results_path.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    results_path.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
