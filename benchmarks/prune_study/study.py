"""Real-data pruning study (issue 3): which pruning settings work on MiniLM + an SST-2 subset, and
do claims C1 (dense matrices are full rank) and C2 (first-order pruning leaves lower rank than
magnitude pruning, at least as accurately) hold?

Every run is one ``lpaf prune`` in a child process (one CPU thread, to share the machine), followed
by a check of what it learned: dev metric, achieved density, mask overlap with the teacher's
top-|W| set at the same density (0 structure = overlap ≈ density), score range, and the rank
study of lpaf.analysis (mean numerical rank, mean 99%-energy rank, zero rows/columns).
Results are merged by run name into ``results_<task>.json`` (runs already there are skipped, so
the study resumes), and ``--figure`` draws the paper's two-panel figure.

Reproduce (2 epochs of 4k examples = 250 steps; 3-5 s a step on one thread of a busy 2-core machine):
    lpaf finetune --model ../shared/models/all-MiniLM-L6-v2 --task sst2 --data ../shared/data \
        --max-train-samples 4000 --max-length 64 --epochs 1 --out /tmp/lpaf_study/teacher_sst2
    python benchmarks/prune_study/study.py --set explore
    python benchmarks/prune_study/study.py --set grid --figure benchmarks/prune_study/rank_study_sst2.png
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

# name -> extra `lpaf prune` flags (common flags are in `base_flags`). A name is one setting, so a
# grid run that repeats an exploration run reuses it.
EXPLORE: dict[str, list[str]] = {
    "magnitude-d0.1": ["--method", "magnitude", "--density", "0.1"],
    "platon-d0.1": ["--method", "platon", "--density", "0.1"],
    # A magnitude prior (S0 = |W|/mean|W|) that the first-order updates reorder.
    "movement-magprior1-d0.1": ["--method", "movement", "--density", "0.1", "--score-init", "magnitude",
                                "--score-init-scale", "1.0"],
    # A weaker prior: the learned first-order part decides more of the mask.
    "movement-magprior0.1-d0.1": ["--method", "movement", "--density", "0.1", "--score-init", "magnitude",
                                  "--score-init-scale", "0.1"],
    # Scores from 0 with a 10x larger lr, and a warm-up where only the scores learn.
    "movement-zeros-lr0.1-sow-d0.1": ["--method", "movement", "--density", "0.1", "--score-init", "zeros",
                                      "--scores-lr", "0.1", "--scores-only-warmup", "--initial-warmup", "0.2"],
    # The quick trial's setting (scores from 0, lr 1e-2), for reference.
    "movement-zeros-d0.1": ["--method", "movement", "--density", "0.1", "--score-init", "zeros"],
}
MOVEMENT_VARIANTS = {name.split("-d0.1")[0]: flags[4:] for name, flags in EXPLORE.items() if "movement" in name}


# The mini reproduction's 3-epoch teachers (benchmarks/results/mini): movement with the default prior
# collapsed there at 0.25; which settings survive a teacher that has fitted its training set?
SHARP_TEACHER: dict[str, list[str]] = {
    "movement-magprior0.1-d0.25": ["--method", "movement", "--density", "0.25", "--score-init", "magnitude",
                                   "--score-init-scale", "0.1"],
    "movement-magprior1-d0.25": ["--method", "movement", "--density", "0.25", "--score-init", "magnitude",
                                 "--score-init-scale", "1.0"],
    "platon-d0.25": ["--method", "platon", "--density", "0.25"],
}


def grid(movement: str) -> dict[str, list[str]]:
    """magnitude, PLATON and one movement variant (an EXPLORE name without -d0.1) at 0.5/0.25/0.1."""
    runs = {}
    for density in ("0.5", "0.25", "0.1"):
        runs[f"magnitude-d{density}"] = ["--method", "magnitude", "--density", density]
        runs[f"platon-d{density}"] = ["--method", "platon", "--density", density]
        runs[f"{movement}-d{density}"] = ["--method", "movement", "--density", density, *MOVEMENT_VARIANTS[movement]]
    return runs


def base_flags(args) -> list[str]:
    return ["--model", args.teacher, "--task", args.task, "--data", args.data, "--max-length", str(args.max_length),
            "--max-train-samples", str(args.max_train_samples), "--epochs", str(args.epochs), "--batch-size", "32",
            "--device", "cpu", "--seed", str(args.seed), "--save-steps", "100"]


def run_prune(name: str, flags: list[str], args) -> Path:
    out = Path(args.work) / name
    if (out / "metrics.json").is_file():
        return out
    log = Path(args.work) / f"{name}.log"
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = ["nice", "-n", str(args.nice), sys.executable, "-m", "lpaf.cli", "prune", *base_flags(args), *flags,
           "--out", str(out)]
    print(f"[{time.strftime('%H:%M:%S')}] {name}: {' '.join(flags)}", flush=True)
    with open(log, "w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT).returncode
    if rc != 0:
        raise SystemExit(f"{name} failed with exit code {rc}; see {log}")
    return out


def analyse(name: str, out: Path, flags: list[str], teacher_weights: dict) -> dict:
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification

    from lpaf.analysis import model_rank_study
    from lpaf.pruning import topk_mask

    record = json.loads((out / "metrics.json").read_text())
    masks = load_file(str(out / "masks.safetensors"))
    scores = load_file(str(out / "scores.safetensors"))
    overlap_num = overlap_den = 0
    for key, mask in masks.items():
        top_abs = topk_mask(teacher_weights[key].abs(), int(mask.sum()))
        overlap_num += int((mask & top_abs).sum())
        overlap_den += int(mask.sum())
    all_scores = torch.cat([s.reshape(-1) for s in scores.values()])
    model = AutoModelForSequenceClassification.from_pretrained(str(out))
    ranks = model_rank_study(model)
    zero_rows = sum(m["zero_rows"] for m in ranks["matrices"].values()) / len(ranks["matrices"])
    zero_cols = sum(m["zero_cols"] for m in ranks["matrices"].values()) / len(ranks["matrices"])
    return {
        "name": name, "flags": flags, "method": record["method"], "density": record["density"],
        "metrics": record["metrics"], "headline": record["headline"],
        "achieved_density": record["achieved_density"]["overall"],
        "retained_percent": record["retained_percent_nonzero"],
        "overlap_with_teacher_top_abs": overlap_num / overlap_den,
        "score_range": [float(all_scores.min()), float(all_scores.max())],
        "score_std": float(all_scores.std()),
        "rank": ranks["summary"], "mean_zero_rows": zero_rows, "mean_zero_cols": zero_cols,
        "train_steps": record["train"]["train_steps"], "step_time_s_median": record["train"]["step_time_s_median"],
        "wall_time_s": record["wall_time_s"], "eval_history": record["train"].get("eval_history"),
        "loss_history": record["train"].get("loss_history"),
    }


def dense_record(teacher: str) -> dict:
    from transformers import AutoModelForSequenceClassification

    from lpaf.analysis import model_rank_study

    record = json.loads((Path(teacher) / "metrics.json").read_text())
    model = AutoModelForSequenceClassification.from_pretrained(teacher)
    return {"name": "dense", "method": "dense", "density": 1.0, "metrics": record["metrics"],
            "headline": record["headline"], "retained_percent": 100.0, "rank": model_rank_study(model)["summary"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--set", choices=["explore", "grid", "sharp-teacher", "none"], default="explore")
    p.add_argument("--results-tag", default="", help="write results_<task><tag>.json (another teacher's study)")
    p.add_argument("--only", nargs="*", help="run only these names of the set")
    p.add_argument("--task", default="sst2")
    p.add_argument("--teacher", default="/tmp/lpaf_study/teacher_sst2")
    p.add_argument("--data", default=str(SHARED / "data"))
    p.add_argument("--work", default="/tmp/lpaf_study/runs")
    p.add_argument("--max-train-samples", type=int, default=4000)
    p.add_argument("--epochs", type=float, default=2.0)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--nice", type=int, default=0, help="run the prune jobs at this niceness")
    p.add_argument("--reuse", action="append", default=[], metavar="NAME=DIR",
                   help="take run NAME from an existing `lpaf prune` output with the same settings "
                        "(e.g. the workflow's), instead of running it")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--movement", default="movement-magprior0.1", choices=sorted(MOVEMENT_VARIANTS),
                   help="the movement variant of the grid (the one the explore set picked)")
    p.add_argument("--figure", help="draw the rank-study figure from the grid runs + dense (.png/.pdf)")
    args = p.parse_args()

    import torch

    torch.set_num_threads(1)
    from safetensors.torch import load_file

    Path(args.work).mkdir(parents=True, exist_ok=True)
    for spec in args.reuse:
        name, directory = spec.split("=", 1)
        link = Path(args.work) / name
        if not link.exists():
            link.symlink_to(Path(directory).resolve(), target_is_directory=True)
    results_path = HERE / f"results_{args.task}{args.results_tag}.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    if "dense" not in results:
        results["dense"] = dense_record(args.teacher)
    runs = {"explore": EXPLORE, "grid": grid(args.movement), "sharp-teacher": SHARP_TEACHER, "none": {}}[args.set]
    if args.only:
        runs = {k: v for k, v in runs.items() if k in args.only}
    teacher_sd = load_file(str(Path(args.teacher) / "model.safetensors"))
    teacher_weights = {k[: -len(".weight")]: v for k, v in teacher_sd.items() if k.endswith(".weight")}
    for name, flags in runs.items():
        if name in results and results[name].get("flags") == flags:
            continue
        out = run_prune(name, flags, args)
        results[name] = analyse(name, out, flags, teacher_weights)
        r = results[name]
        print(f"  {args.task} {r['headline']:.4f} overlap {r['overlap_with_teacher_top_abs']:.3f} "
              f"rank {r['rank']['mean_rank']:.1f} eff99 {r['rank']['mean_effective_rank_99']:.1f} "
              f"scores {r['score_range'][0]:.3g}..{r['score_range'][1]:.3g}", flush=True)
        results_path.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    results_path.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    if args.figure:
        from lpaf.analysis import rank_study_figure

        metric_name = json.loads((Path(args.teacher) / "metrics.json").read_text())["headline_metric"]
        entries = [{"method": "dense", "retained_percent": 100.0, "metric": results["dense"]["headline"],
                    "avg_rank": results["dense"]["rank"]["mean_rank"], "dense": True, "metric_name": metric_name}]
        for name, r in results.items():
            if name in grid(args.movement):
                entries.append({"method": r["method"], "retained_percent": r["retained_percent"],
                                "metric": r["headline"], "avg_rank": r["rank"]["mean_rank"], "dense": False,
                                "metric_name": metric_name})
        rank_study_figure(entries, args.figure)


if __name__ == "__main__":
    main()
