"""C3 at matched compute (issue 29, point 5): the budget of config/mini_matched.yaml, and the CSV of runs.

The paper's protocol re-trains the svd / fwsvd baselines for one epoch while lpaf prunes for two and then
re-trains: the baselines get fewer optimizer steps and a smaller learning-rate integral. At matched compute
each baseline is re-trained for exactly lpaf's prune + re-train steps, on the same training subset, with
its peak lr set so that the sum of the lr over its steps equals lpaf's (warm-up 0.1, linear decay).

    python benchmarks/c3_matched_compute.py budget            # lpaf's steps and lr sums from config/mini.yaml
    python benchmarks/c3_matched_compute.py budget --check    # ... and refuse a mini_matched.yaml that disagrees
    python benchmarks/c3_matched_compute.py collect --task sst2   # after the workflow ran (c3_matched_compute.sh)

``collect`` copies the finished matched rows of results/mini_matched/runs.csv, with each baseline's measured
step count (its retrain metrics.json), to benchmarks/results/mini/matched/s<seed>/<task>/, and rebuilds
benchmarks/results/mini/c3_matched_compute.csv (benchmarks/mini_claims.py's ``MATCHED_COMPUTE_SCHEMA``) from
every committed matched run and the committed lpaf rows of benchmarks/results/mini/runs.csv (same seeds,
same teachers: the teacher's artifact hash is the same, and collect refuses a teacher whose dev score differs
from the committed dense row's).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from mini_claims import MATCHED_COMPUTE_SCHEMA, read_matched_compute  # noqa: E402

MINI = ROOT / "config" / "mini.yaml"
OVERLAY = ROOT / "config" / "mini_matched.yaml"
OUT_DIR = ROOT / "benchmarks" / "results" / "mini"
LPAF_METHOD = "lpaf"
BASELINES = {"svd-matched": "svd", "fwsvd-matched": "fwsvd"}
LR_TOLERANCE = 0.005  # the overlay rounds the peak lr to 3 significant digits


def _merged(base: dict, over: dict | None) -> dict:
    return {**base, **(over or {})}


def stage_settings(cfg: dict, stage: str, key: str, task: str) -> dict:
    """The flags a job of ``stage`` runs with: train block < stage setting < task_settings[task][stage]."""
    ts = (cfg.get("task_settings") or {}).get(task, {}) or {}
    return _merged(_merged(cfg.get("train") or {}, cfg[stage][key]), ts.get(stage))


def train_examples(cfg: dict, stage: str, task: str, data_dir: str) -> int:
    """Training examples a stage sees: its max_train_samples cap on the task's training split."""
    from lpaf.data import load_raw
    from lpaf.tasks import get_task

    ts = (cfg.get("task_settings") or {}).get(task, {}) or {}
    cap = ((ts.get(stage) or {}).get("max_train_samples")
           or (ts.get("data") or {}).get("max_train_samples") or (cfg.get("data") or {}).get("max_train_samples"))
    n = len(load_raw(get_task(task), data_dir, ["train"]).splits["train"])
    return min(n, cap) if cap else n


def lr_sum(steps: int, warmup_ratio: float, lr: float) -> float:
    from lpaf.mixed_rank import linear_lr_multipliers

    return float(lr * linear_lr_multipliers(steps, warmup_ratio).sum())


def lpaf_budget(cfg: dict, task: str, data_dir: str) -> dict:
    """lpaf's optimizer steps and sum of lr: its prune setting, then its mixed-rank re-training (lengthened
    by the factor-budget rule of ``lpaf retrain``, as in lpaf/stages/retrain.py)."""
    from lpaf.mixed_rank import AnnealSchedule, matched_total_steps

    method = cfg["methods"][LPAF_METHOD]
    prune = stage_settings(cfg, "prune", method["prune"], task)
    retrain = stage_settings(cfg, "retrain", method["retrain"], task)
    per_epoch_prune = math.ceil(train_examples(cfg, "prune", task, data_dir) / prune["batch_size"])
    per_epoch_retrain = math.ceil(train_examples(cfg, "retrain", task, data_dir) / retrain["batch_size"])
    prune_steps = prune.get("max_steps") or math.ceil(prune["epochs"] * per_epoch_prune)
    plain_steps = retrain.get("max_steps") or math.ceil(retrain["epochs"] * per_epoch_retrain)
    schedule = AnnealSchedule(retrain.get("p0", 1.0), retrain.get("anneal_fraction", 0.5), retrain.get("anneal", "linear"))
    retrain_steps = (matched_total_steps(plain_steps, schedule, retrain["warmup_ratio"])
                     if retrain.get("scheme") == "mixed-rank" and retrain.get("factor_budget", "matched") == "matched"
                     else plain_steps)
    total_lr = lr_sum(prune_steps, prune["warmup_ratio"], prune["lr"]) + lr_sum(retrain_steps, retrain["warmup_ratio"],
                                                                               retrain["lr"])
    steps = prune_steps + retrain_steps
    baseline_warmup = 0.1
    return {"task": task, "prune_steps": prune_steps, "retrain_steps": retrain_steps, "optimizer_steps": steps,
            "lr_sum": total_lr, "baseline_warmup_ratio": baseline_warmup,
            "baseline_peak_lr": total_lr / lr_sum(steps, baseline_warmup, 1.0)}


def load_config(paths: list[Path]) -> dict:
    cfg: dict = {}
    for p in paths:
        over = yaml.safe_load(p.read_text()) or {}
        for k, v in over.items():
            if isinstance(v, dict) and isinstance(cfg.get(k), dict):
                merged = dict(cfg[k])
                for kk, vv in v.items():
                    merged[kk] = _merged(merged[kk], vv) if isinstance(vv, dict) and isinstance(merged.get(kk), dict) else vv
                cfg[k] = merged
            else:
                cfg[k] = v
    return cfg


def check_overlay(budgets: list[dict]) -> list[str]:
    """Problems of config/mini_matched.yaml against the budgets (empty: it matches)."""
    cfg = load_config([MINI, OVERLAY])
    problems = []
    for b in budgets:
        for name in BASELINES:
            s = stage_settings(cfg, "retrain", cfg["methods"][name]["retrain"], b["task"])
            if s.get("max_steps") != b["optimizer_steps"]:
                problems.append(f"{b['task']} {name}: max_steps {s.get('max_steps')}, lpaf took {b['optimizer_steps']}")
            if abs(s["lr"] - b["baseline_peak_lr"]) > LR_TOLERANCE * b["baseline_peak_lr"]:
                problems.append(f"{b['task']} {name}: lr {s['lr']:g}, matched lr {b['baseline_peak_lr']:.4g}")
            if s.get("warmup_ratio") != b["baseline_warmup_ratio"]:
                problems.append(f"{b['task']} {name}: warmup_ratio {s.get('warmup_ratio')}, expected "
                                f"{b['baseline_warmup_ratio']}")
    return problems


def cmd_budget(args) -> int:
    cfg = load_config([MINI])
    budgets = [lpaf_budget(cfg, t, args.data) for t in args.tasks]
    for b in budgets:
        print(f"{b['task']}: lpaf {b['prune_steps']} prune + {b['retrain_steps']} re-train = {b['optimizer_steps']} "
              f"steps, sum of lr {b['lr_sum']:.4e}; matched baseline peak lr {b['baseline_peak_lr']:.4e} "
              f"(warm-up {b['baseline_warmup_ratio']})")
    if args.check:
        problems = check_overlay(budgets)
        for p in problems:
            print(f"c3_matched_compute: {OVERLAY.name}: {p}", file=sys.stderr)
        return 2 if problems else 0
    return 0


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def cmd_collect(args) -> int:
    table = ROOT / "results" / "mini_matched" / "runs.csv"
    if not table.is_file():
        print(f"c3_matched_compute: {table} does not exist: run benchmarks/c3_matched_compute.sh first", file=sys.stderr)
        return 2
    committed = read_csv(OUT_DIR / "runs.csv")
    dense = {(r["task"], r["seed"]): r for r in committed if r["method"] == "dense"}
    rows = [r for r in read_csv(table) if r["task"] == args.task]
    by_seed: dict[str, list[dict]] = {}
    for r in rows:
        if r["method"] == "dense":
            ref = dense.get((r["task"], r["seed"]))
            if ref is None or abs(float(ref["headline"]) - float(r["headline"])) > 1e-6:
                print(f"c3_matched_compute: {r['task']} seed {r['seed']}: teacher dev {r['headline']} differs from the "
                      f"committed dense row's {ref and ref['headline']}: not the same teacher, refused", file=sys.stderr)
                return 2
            continue
        if r["method"] not in BASELINES:
            continue
        metrics = ROOT / "results" / r["model"] / r["task"] / f"s{r['seed']}" / r["chain"] / "metrics.json"
        r = dict(r, optimizer_steps=json.loads(metrics.read_text())["train"]["train_steps"])
        by_seed.setdefault(r["seed"], []).append(r)
    for seed, seed_rows in by_seed.items():
        d = OUT_DIR / "matched" / f"s{seed}" / args.task
        d.mkdir(parents=True, exist_ok=True)
        with open(d / "runs.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(seed_rows[0]))
            w.writeheader()
            w.writerows(seed_rows)
        info = {"command": "benchmarks/c3_matched_compute.sh", "configs": ["config/mini.yaml", "config/mini_matched.yaml"],
                "wall_s_task_invocation": args.wall_s}
        (d / "run_info.json").write_text(json.dumps(info, indent=1) + "\n")
        print(f"c3_matched_compute: wrote {d.relative_to(ROOT)}/runs.csv ({len(seed_rows)} rows)")
    return write_csv(args.data)


def write_csv(data_dir: str) -> int:
    """c3_matched_compute.csv from every committed matched run and the committed lpaf rows it pairs with."""
    cfg = load_config([MINI])
    matched = [r for p in sorted((OUT_DIR / "matched").glob("s*/*/runs.csv")) for r in read_csv(p)]
    keys = {(r["task"], r["density"], r["seed"]) for r in matched}
    budgets = {t: lpaf_budget(cfg, t, data_dir) for t in sorted({k[0] for k in keys})}
    out = []
    for r in read_csv(OUT_DIR / "runs.csv"):
        if r["method"] == LPAF_METHOD and (r["task"], r["density"], r["seed"]) in keys:
            out.append({"task": r["task"], "density": r["density"], "seed": r["seed"], "method": "lpaf",
                        "headline": r["headline"], "optimizer_steps": budgets[r["task"]]["optimizer_steps"],
                        "degenerate": r["degenerate"]})
    for r in matched:
        out.append({"task": r["task"], "density": r["density"], "seed": r["seed"], "method": BASELINES[r["method"]],
                    "headline": r["headline"], "optimizer_steps": r["optimizer_steps"], "degenerate": r["degenerate"]})
    out.sort(key=lambda r: (r["task"], -float(r["density"]), int(r["seed"]), r["method"]))
    path = OUT_DIR / "c3_matched_compute.csv"
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["task", "density", "seed", "method", "headline", "optimizer_steps", "degenerate"])
        w.writeheader()
        w.writerows(out)
    read_matched_compute(tmp)  # refuses unmatched step counts before the file is replaced
    tmp.replace(path)
    print(f"c3_matched_compute: wrote {path.relative_to(ROOT)} ({len(out)} rows)")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="CSV schema:\n" + MATCHED_COMPUTE_SCHEMA)
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data"), help="GLUE data directory")
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("budget")
    b.add_argument("--tasks", nargs="+", default=["sst2", "mrpc"])
    b.add_argument("--check", action="store_true", help="exit 2 when config/mini_matched.yaml disagrees")
    c = sub.add_parser("collect")
    c.add_argument("--task", required=True)
    c.add_argument("--wall-s", type=float, default=None, help="wall time of the task's invocation (recorded)")
    sub.add_parser("csv", help="rebuild c3_matched_compute.csv from the committed matched runs")
    args = p.parse_args(argv)
    if args.cmd == "budget":
        return cmd_budget(args)
    if args.cmd == "collect":
        return cmd_collect(args)
    return write_csv(args.data)


if __name__ == "__main__":
    sys.exit(main())
