"""Real-data re-training study (issue 5, claim C5): plain vs mixed-rank re-training of one factorization.

Chain: teacher (fine-tuned MiniLM, SST-2 4k subset, max length 64) → pruned model (an ``lpaf prune``
artifact) → rank-r SVD at the same density (``lpaf factorize``) → ``lpaf retrain`` per
(variant, seed), one child process at a time on one CPU thread. Every run's
summary is merged by (variant, seed) into ``results_<tag>.json`` beside this script, so the study
resumes; ``--summary`` prints mean ± std per variant and the paired difference to plain re-training
with the same seed and length (seeds are paired: same data order, same dropout stream).

    lpaf prune --model TEACHER --method magnitude --density 0.25 --task sst2 --data ../shared/data \
        --max-length 64 --max-train-samples 4000 --epochs 2 --seed 1 --out /tmp/lpaf_retrain_study/prune-mag-d0.25
    python benchmarks/retrain_study/study.py --teacher TEACHER --pruned /tmp/lpaf_retrain_study/prune-mag-d0.25 \
        --tag mag-d0.25-svd --variants plain-e1 mixed-e1 --seeds 1 2 3 4 5
    python benchmarks/retrain_study/study.py --tag mag-d0.25-svd --summary

MRPC, from the mini reproduction's sparsity-aware factorization of its PLATON-pruned model:
    python benchmarks/retrain_study/study.py --tag mrpc-platon-d0.25-sa --task mrpc --max-length 128 \
        --max-train-samples 0 --teacher results/all-MiniLM-L6-v2/mrpc/s42/dense-659b1f \
        --factorized results/all-MiniLM-L6-v2/mrpc/s42/dense-659b1f/prune-platon-abffa7-d0.25/fact-sa-svd-2d7cd8-d0.25 \
        --density 0.25 --factorizer sparsity-aware --pruned-weight 0.5 --variants plain-e1 mixed-e1 --seeds 1 2 3 4 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SHARED = ROOT.parent / "shared"

# variant -> `lpaf retrain` flags (besides the common ones in `base_flags`). The "mixed-*" variants
# of sessions 2-4 ran the same number of steps as plain (--factor-budget steps, then the only
# behaviour); "mixed-matched-*" gives the factors plain's learning-rate integral (the default since
# issue 14, docs/METHOD.md "Fair budgets").
STEPS = ["--factor-budget", "steps"]
VARIANTS: dict[str, list[str]] = {
    "mixed-matched-e1": ["--scheme", "mixed-rank", "--epochs", "1", "--factor-budget", "matched"],
    "mixed-matched-e3": ["--scheme", "mixed-rank", "--epochs", "3", "--factor-budget", "matched"],
    "plain-e1": ["--scheme", "plain", "--epochs", "1"],
    "mixed-e1": ["--scheme", "mixed-rank", "--epochs", "1", *STEPS],
    "mixed-p0.5-e1": ["--scheme", "mixed-rank", "--epochs", "1", "--p0", "0.5", *STEPS],
    "mixed-a0.2-e1": ["--scheme", "mixed-rank", "--epochs", "1", "--anneal-fraction", "0.2", *STEPS],
    "mixed-p0.5-a0.2-e1": ["--scheme", "mixed-rank", "--epochs", "1", "--p0", "0.5", "--anneal-fraction", "0.2", *STEPS],
    "mixed-trainable-e1": ["--scheme", "mixed-rank", "--epochs", "1", "--trainable-source", *STEPS],
    "ranksamp-e1": ["--scheme", "rank-sampling", "--epochs", "1"],
    "ranksamp-p0.5-e1": ["--scheme", "rank-sampling", "--epochs", "1", "--p0", "0.5"],
    "plain-e3": ["--scheme", "plain", "--epochs", "3"],
    "mixed-e3": ["--scheme", "mixed-rank", "--epochs", "3", *STEPS],
    "mixed-a0.2-e3": ["--scheme", "mixed-rank", "--epochs", "3", "--anneal-fraction", "0.2", *STEPS],
    "mixed-p0.5-a0.2-e3": ["--scheme", "mixed-rank", "--epochs", "3", "--p0", "0.5", "--anneal-fraction", "0.2", *STEPS],
}


def base_flags(args, factorized: Path) -> list[str]:
    flags = ["--model", str(factorized), "--teacher", args.teacher, "--task", args.task, "--data", args.data,
             "--max-length", str(args.max_length), "--batch-size", "32",
             "--device", args.device, "--save-steps", "1000", "--eval-every-steps", str(args.eval_every_steps)]
    if args.max_train_samples:
        flags += ["--max-train-samples", str(args.max_train_samples)]
    return flags


def factorize(pruned: Path, density: float, out: Path, data: str, method: str, pruned_weight: float,
              task: str = "sst2", max_length: int = 64, device: str = "cpu") -> Path:
    """Rank-r factors of every encoder linear at the density's budget (``lpaf factorize``, which
    also writes the source matrices mixed-rank re-training runs)."""
    if not (out / "metrics.json").is_file():
        cmd = ["nice", "-n", "19", sys.executable, "-m", "lpaf.cli", "factorize", "--model", str(pruned), "--task", task,
               "--data", data, "--max-length", str(max_length), "--method", method, "--density", str(density),
               "--pruned-weight", str(pruned_weight),
               "--out", str(out), "--device", device]
        subprocess.run(cmd, check=True, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"))
    return out


def run_one(variant: str, seed: int, factorized: Path, args) -> dict:
    out = Path(args.work) / args.tag / f"{variant}-s{seed}"
    log = Path(args.work) / args.tag / f"{variant}-s{seed}.log"
    if not (out / "metrics.json").is_file():
        cmd = ["nice", "-n", str(args.nice), sys.executable, "-m", "lpaf.cli", "retrain",
               *base_flags(args, factorized), *VARIANTS[variant],
               "--seed", str(seed), "--out", str(out)]
        print(f"[{time.strftime('%H:%M:%S')}] {args.tag} {variant} seed {seed}", flush=True)
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        with open(log, "w") as f:
            rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT).returncode
        if rc != 0:
            raise SystemExit(f"{variant} seed {seed} failed with exit code {rc}; see {log}")
    from lpaf.report import majority_fraction

    m = json.loads((out / "metrics.json").read_text())
    train = m["train"]
    key = m.get("headline_metric") or ("f1" if "f1" in m["metrics"] else "accuracy")  # MRPC F1, CoLA MCC, SST-2 acc
    return {
        "variant": variant, "seed": seed, "metric": key, "accuracy": m["metrics"][key],
        "best_accuracy": (m["best_eval"] or {}).get(key), "best_step": (m["best_eval"] or {}).get("step"),
        "eval_history": [[h["step"], h[key]] for h in train.get("eval_history", [])],
        "train_steps": train["train_steps"], "train_loss": train["train_loss"],
        "train_wall_time_s": train["train_wall_time_s"], "step_time_s_median": train["step_time_s_median"],
        "step_time_by_phase": train.get("step_time_by_phase"),
        "expanded_fraction_overall": (m.get("schedule") or {}).get("expanded_fraction_overall"),
        "encoder_linear_params": m["params"]["encoder_linear"],
        "degenerate": (m.get("predictions") or {}).get("degenerate"),
        # how near one class (MRPC: F1 0.81 is the all-"paraphrase" score), and every dev metric
        "majority_fraction": _share_or_none(majority_fraction(m)),
        "metrics": m["metrics"],
        "factor_budget": m.get("factor_budget"),
    }


def _share_or_none(share: float) -> float | None:  # JSON has no nan
    return None if share != share else share


def results_path(tag: str) -> Path:
    return HERE / f"results_{tag}.json"


def load_results(tag: str) -> dict:
    path = results_path(tag)
    return json.loads(path.read_text()) if path.is_file() else {"runs": {}}


def summarize(tag: str, write: bool = True) -> dict:
    results = load_results(tag)
    runs = list(results["runs"].values())
    by_variant: dict[str, dict[int, dict]] = {}
    for r in runs:
        by_variant.setdefault(r["variant"], {})[r["seed"]] = r
    rows = {}
    for variant, seeds in sorted(by_variant.items()):
        acc = [r["accuracy"] for r in seeds.values()]
        best = [r["best_accuracy"] for r in seeds.values() if r["best_accuracy"] is not None]
        row = {"n": len(acc), "accuracy_mean": statistics.mean(acc),
               "accuracy_std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
               "best_mean": statistics.mean(best) if best else None,
               "step_time_s_median": statistics.median(r["step_time_s_median"] for r in seeds.values())}
        baseline = by_variant.get("plain-" + variant.rsplit("-", 1)[-1])
        if baseline is not None and not variant.startswith("plain"):
            pairs = [(seeds[s]["accuracy"], baseline[s]["accuracy"]) for s in seeds if s in baseline]
            diffs = [a - b for a, b in pairs]
            best_diffs = [seeds[s]["best_accuracy"] - baseline[s]["best_accuracy"] for s in seeds if s in baseline]
            if diffs:
                row |= {"paired_n": len(diffs), "diff_vs_plain_mean": statistics.mean(diffs),
                        "diff_vs_plain_std": statistics.stdev(diffs) if len(diffs) > 1 else 0.0,
                        "wins_vs_plain": sum(d > 0 for d in diffs), "ties": sum(d == 0 for d in diffs),
                        "best_diff_vs_plain_mean": statistics.mean(best_diffs)}
        rows[variant] = row
    results["summary"] = rows
    if write:
        results_path(tag).write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    for variant, row in rows.items():
        line = (f"{variant:22s} n={row['n']}  acc {row['accuracy_mean']:.4f} ± {row['accuracy_std']:.4f}  "
                f"best {row['best_mean']:.4f}  step {row['step_time_s_median']:.2f}s")
        if "paired_n" in row:
            line += (f"  vs plain {row['diff_vs_plain_mean']:+.4f} ± {row['diff_vs_plain_std']:.4f} "
                     f"(wins {row['wins_vs_plain']}/{row['paired_n']}, best {row['best_diff_vs_plain_mean']:+.4f})")
        print(line)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tag", help="names this factorization's result file (required unless --table)")
    p.add_argument("--teacher", default="/tmp/lpaf_study/teacher_sst2")
    p.add_argument("--task", default="sst2", help="sst2 or mrpc (the run's headline metric is recorded as "
                                                  "'accuracy': SST-2 accuracy, MRPC F1)")
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--factorized", help="an existing lpaf factorize artifact (e.g. the workflow's) instead of "
                                        "factorizing --pruned here")
    p.add_argument("--pruned", help="an lpaf prune artifact (the model to factorize); needed unless --summary")
    p.add_argument("--density", type=float, default=0.25)
    p.add_argument("--factorizer", default="svd", choices=["svd", "fwsvd", "sparsity-aware", "fisher-sparsity-aware"],
                   help="lpaf factorize --method (sparsity-aware with --pruned-weight as λ; "
                        "fisher-sparsity-aware: the `lpaf + fisher` row's, Fisher per output row; "
                        "svd / fwsvd of a dense --pruned model: the C3 baselines)")
    p.add_argument("--pruned-weight", type=float, default=0.1, help="λ of sparsity-aware SVD")
    p.add_argument("--data", default=str(SHARED / "data"))
    p.add_argument("--max-train-samples", type=int, default=4000, help="0: the whole training set")
    p.add_argument("--eval-every-steps", type=int, default=25)
    p.add_argument("--work", default="/tmp/lpaf_retrain_study", help="where models go (large; not the repo)")
    p.add_argument("--variants", nargs="+", default=["plain-e1", "mixed-e1"], choices=list(VARIANTS))
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3, 4, 5])
    p.add_argument("--nice", type=int, default=0, help="run the retrain jobs at this niceness")
    p.add_argument("--device", default="cpu", help="lpaf retrain --device (cpu, cuda, cuda:N)")
    p.add_argument("--jobs", type=int, default=1,
                   help="re-training runs at once (on a GPU several small runs share the device)")
    p.add_argument("--summary", action="store_true", help="only summarize the results file")
    p.add_argument("--merge", metavar="OTHER_TAG",
                   help="copy the runs of results_<OTHER_TAG>.json (same factorized model, other seeds, run "
                        "in parallel) into results_<tag>.json, then summarize")
    p.add_argument("--paired", nargs=2, action="append", metavar=("A", "B"),
                   help="print the paired difference A - B of two TAG:VARIANT runs over their common seeds "
                        "(repeatable), e.g. fisher-sst2-mov3000-d0.1:mixed-matched-e1 "
                        "fair-sst2-mov3000-d0.1:mixed-matched-e1")
    p.add_argument("--table", action="store_true",
                   help="print a markdown table of every results_*.json here (paired comparisons to plain)")
    args = p.parse_args()
    if args.table or args.paired:
        if args.table:
            print_table()
        if args.paired:
            print("| a | b | seeds | a | b | a − b (points) | 95% half-width | a wins | verdict |")
            print("|---|---|---|---|---|---|---|---|---|")
            for a, b in args.paired:
                print_paired(a, b)
        return
    if args.tag is None:
        p.error("--tag is required (unless --table)")
    if args.merge:
        merge_runs(args.tag, args.merge)
        summarize(args.tag)
        return
    if args.summary:
        summarize(args.tag)
        return
    if args.pruned is None and args.factorized is None:
        p.error("--pruned or --factorized is required to run the study")
    work = Path(args.work) / args.tag
    work.mkdir(parents=True, exist_ok=True)
    if args.factorized:
        factorized = Path(args.factorized)
        fact = json.loads((factorized / "metrics.json").read_text())
        pruned = Path(fact.get("source_model", ""))
    else:
        pruned = Path(args.pruned)
        factorized = factorize(pruned, args.density, work / "factorized", args.data, args.factorizer,
                               args.pruned_weight, args.task, args.max_length, args.device)
    results = load_results(args.tag)
    results["setup"] = {"teacher": args.teacher, "pruned": str(pruned), "pruned_record": _record(pruned),
                        "factorized_record": _record(factorized), "density": args.density,
                        "factorizer": args.factorizer, "pruned_weight": args.pruned_weight,
                        "task": args.task, "factorized": str(factorized),
                        "max_train_samples": args.max_train_samples, "max_length": args.max_length, "batch_size": 32,
                        "eval_every_steps": args.eval_every_steps, "threads": 1, "device": args.device,
                        "teacher_record": _record(Path(args.teacher))}
    # seed-major: every variant of a seed lands before the next seed; each finished run is written at once
    todo = [(variant, seed) for seed in args.seeds for variant in args.variants]
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = {pool.submit(run_one, variant, seed, factorized, args): f"{variant}/s{seed}"
                   for variant, seed in todo}
        for future in as_completed(futures):
            results["runs"][futures[future]] = future.result()
            results_path(args.tag).write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    summarize(args.tag)


def merge_runs(tag: str, other: str) -> None:
    """Add the runs of another results file of the same factorized model (e.g. seeds run in a second
    process, which must not write the same file) to this one."""
    target, source = load_results(tag), load_results(other)
    mine, theirs = target.get("setup", {}).get("factorized"), source.get("setup", {}).get("factorized")
    if mine != theirs:
        raise SystemExit(f"results_{other}.json re-trained {theirs}, results_{tag}.json {mine}: not the same model")
    clash = [key for key in source["runs"] if key in target["runs"] and source["runs"][key] != target["runs"][key]]
    if clash:
        raise SystemExit(f"runs {clash} differ between results_{tag}.json and results_{other}.json")
    target["runs"].update(source["runs"])
    target.setdefault("merged_from", []).append(other)
    results_path(tag).write_text(json.dumps(target, indent=2, sort_keys=True) + "\n")


def print_table() -> None:
    """One markdown row per (results file, variant) that has paired runs against plain re-training."""
    print("| tag | task | density | variant | seeds | plain | variant | paired diff (points) | wins |")
    print("|---|---|---|---|---|---|---|---|---|")
    merged = {other for path in HERE.glob("results_*.json")
              for other in json.loads(path.read_text()).get("merged_from", [])}
    for path in sorted(HERE.glob("results_*.json")):
        tag = path.stem.removeprefix("results_")
        if tag in merged:
            continue
        rows = summarize_quietly(tag)
        setup = json.loads(path.read_text()).get("setup", {})
        for variant, row in rows.items():
            if "paired_n" not in row:
                continue
            plain = rows["plain-" + variant.rsplit("-", 1)[-1]]
            print(f"| {tag} | {setup.get('task', 'sst2')} | {setup.get('density')} | {variant} | {row['paired_n']} "
                  f"| {100 * plain['accuracy_mean']:.1f} ± {100 * plain['accuracy_std']:.1f} "
                  f"| {100 * row['accuracy_mean']:.1f} ± {100 * row['accuracy_std']:.1f} "
                  f"| {100 * row['diff_vs_plain_mean']:+.1f} ± {100 * row['diff_vs_plain_std']:.1f} "
                  f"| {row['wins_vs_plain']}/{row['paired_n']} |")


def print_paired(a: str, b: str) -> None:
    """Paired comparison across results files: `TAG:VARIANT` a minus b over the seeds both ran (e.g.
    lpaf + fisher vs lpaf, both mixed-matched-e1), in points, with the 95% t half-width of
    benchmarks/mini_claims.py: 'within noise' when |mean| is not larger."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from mini_claims import paired

    def runs(spec: str) -> dict[int, float]:
        tag, _, variant = spec.partition(":")
        if not variant:
            raise SystemExit(f"--paired expects TAG:VARIANT, got {spec!r}")
        found = {r["seed"]: r["accuracy"] for r in load_results(tag)["runs"].values() if r["variant"] == variant}
        if not found:
            raise SystemExit(f"--paired: no {variant} runs in {results_path(tag)}")
        return found

    ra, rb = runs(a), runs(b)
    seeds = sorted(set(ra) & set(rb))
    if not seeds:
        raise SystemExit(f"--paired: {a} and {b} share no seed")
    diffs = [100 * (ra[s] - rb[s]) for s in seeds]
    mean, std, half = paired(diffs)
    verdict = "1 seed: no verdict" if half is None else ("within noise" if abs(mean) <= half
                                                         else ("a ahead" if mean > 0 else "b ahead"))
    print(f"| {a} | {b} | {len(seeds)} | {100 * statistics.mean(ra[s] for s in seeds):.1f} "
          f"| {100 * statistics.mean(rb[s] for s in seeds):.1f} | {mean:+.1f} ± {0.0 if std is None else std:.1f} "
          f"| {'–' if half is None else f'{half:.1f}'} | {sum(d > 0 for d in diffs)}/{len(diffs)} | {verdict} |")


def summarize_quietly(tag: str) -> dict:
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        return summarize(tag, write=False)


def _record(directory: Path) -> dict:
    path = Path(directory) / "metrics.json"
    if not path.is_file():
        return {}
    m = json.loads(path.read_text())
    out = {k: m.get(k) for k in ("stage", "method", "density", "metrics", "mean_relative_error") if k in m}
    if isinstance(m.get("magnitude_overlap"), dict):  # a pruned model: learned mask or magnitude in disguise
        out["magnitude_overlap_mean"] = m["magnitude_overlap"].get("mean")
    if isinstance(m.get("train"), dict):
        out["train_steps"] = m["train"].get("train_steps")
    summary = (m.get("factorization") or {}).get("summary")
    if summary:
        out["factorization_summary"] = summary
    return out


if __name__ == "__main__":
    main()
