"""The regime study (issue 29, point 4): does a learned first-order mask become low-rank when pruning
runs in its references' regime — fine-pruning from the *pre-trained* model while distilling from a
separately fine-tuned teacher (Sanh et al.; PLATON's scripts) — rather than continuing from the
fine-tuned model with a frozen copy of itself as the teacher (this project's regime until now)?

Every cell is one ``lpaf prune`` (``--task sst2``: full SST-2 training set, max length 64; ``--task mrpc
--max-length 128``: MRPC's 3,668 pairs, 8.7 epochs in 1,000 steps; batch 32, lr 3e-5,
distillation α 0.9 from the teacher, cubic schedule with 10% / 20% warm-ups, fixed steps), then
``study.py``'s ``analyse`` (dev score, mean numerical rank, 99%-energy rank, zero rows, overlap with
the teacher's top-|W|), and the dev score right after factorization of the pruned model (sparsity-
aware SVD and fisher-sparsity-aware SVD, each at λ ∈ {1, 0.5, 0.1, 0}: the λ sweep of point 6 before
re-training; rank budget of the density).

Criteria (the cells' names):
- ``movement-sanh``: learned movement scores exactly as Sanh et al.: scores from 0, scores lr 1e-2;
- ``platon-reference``: PLATON as its reference implementation runs it (``--platon-mode reference
  --scope global``: ΔT = 10 window, per-task betas, re-masking to the end);
- ``magnitude``: the zero-order control, in the same regime.
Starts: ``pretrained`` (``--model`` the pre-trained MiniLM, ``--teacher`` the fine-tuned teacher) and
``finetuned`` (``--model`` the teacher, distilling from a frozen copy of itself).

Every finished cell is written to ``regime/<task>/<name>.json`` at once (commit them as they come),
and a cell whose JSON exists is skipped, so rerunning the command continues where it stopped. The
schedule study's committed from-fine-tuned cells (``schedule/sst2/``, same teacher and recipe) are
read too (``--table``) and labelled with their own criterion names.

Reproduce (teacher: the schedule study's, 1 epoch on the first 20,000 SST-2 sentences):

    lpaf finetune --model ../shared/models/all-MiniLM-L6-v2 --task sst2 --data ../shared/data \\
        --max-length 64 --max-train-samples 20000 --epochs 1 --batch-size 32 --lr 3e-5 --seed 42 \\
        --device cpu --out /tmp/lpaf_regime/teacher_sst2
    python benchmarks/prune_study/regime_study.py --teacher /tmp/lpaf_regime/teacher_sst2 --jobs 2
    python benchmarks/prune_study/regime_study.py --table --figure benchmarks/prune_study/regime_sst2.png
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

CRITERION_FLAGS: dict[str, list[str]] = {
    "movement-sanh": ["--method", "movement", "--score-init", "zeros", "--scores-lr", "1e-2"],
    "platon-reference": ["--method", "platon", "--platon-mode", "reference", "--scope", "global"],
    "magnitude": ["--method", "magnitude"],
}
STARTS = ("pretrained", "finetuned")
TASK_NAMES = {"sst2": "SST-2", "mrpc": "MRPC", "cola": "CoLA", "qnli": "QNLI"}
GLOBAL_CRITERIA = frozenset({"platon-reference"})  # one top-k over all matrices
# (criterion, start, density, steps, seed): the new regime first, each against its control.
CELLS: list[tuple[str, str, float, int, int]] = [
    ("platon-reference", "pretrained", 0.1, 1000, 42), ("movement-sanh", "pretrained", 0.1, 1000, 42),
    ("platon-reference", "finetuned", 0.1, 1000, 42), ("magnitude", "pretrained", 0.1, 1000, 42),
    ("movement-sanh", "finetuned", 0.1, 1000, 42),
    *[(c, "pretrained", 0.1, 1000, seed) for seed in (43, 44) for c in ("platon-reference", "magnitude")],
    *[("platon-reference", "finetuned", 0.1, 1000, seed) for seed in (43, 44)],
    *[(c, "pretrained", 0.1, 3000, 42) for c in ("platon-reference", "movement-sanh", "magnitude")],
    *[(c, "pretrained", 0.25, 1000, 42) for c in ("platon-reference", "movement-sanh", "magnitude")],
]
# after pruning: (label, `lpaf factorize` flags); the rank budget of the pruned density
FACTORIZATIONS: list[tuple[str, list[str]]] = [
    *[(f"sa-svd-l{lam:g}", ["--method", "sparsity-aware", "--weights", "mask", "--pruned-weight", str(lam)])
      for lam in (1.0, 0.5, 0.1, 0.0)],
    *[(f"fisher-sa-l{lam:g}", ["--method", "fisher-sparsity-aware", "--pruned-weight", str(lam)])
      for lam in (1.0, 0.5, 0.1, 0.0)],
]
# the λ sweep (issue 29 point 6) right after factorization: every cell gets every label above; a cell
# whose JSON lacks some is completed from its pruned model (if the work folder still has it)
# the schedule study's from-fine-tuned cells that count here (same teacher, data and recipe)
SCHEDULE_CELLS = {"movement": "movement-prior0.1", "platon": "platon-per-step", "magnitude": "magnitude",
                  "platon-every10-zeroed": "platon-every10-zeroed"}


def cell_name(task: str, criterion: str, start: str, density: float, steps: int, seed: int) -> str:
    return f"{task}-{criterion}-{start}-d{density:g}-t{steps}-s{seed}"


def prune_flags(args, criterion: str, start: str, density: float, steps: int, seed: int) -> list[str]:
    model = ["--model", args.pretrained, "--teacher", args.teacher] if start == "pretrained" else ["--model", args.teacher]
    return [*model, "--task", args.task, "--data", args.data, "--max-length", str(args.max_length),
            "--max-steps", str(steps), "--batch-size", "32", "--lr", "3e-5", "--device", "cpu", "--seed", str(seed),
            "--density", str(density), "--save-steps", "250", "--logging-steps", "50", *CRITERION_FLAGS[criterion]]


def _run(cmd: list[str], log: Path, threads: int, nice: int) -> int:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    with open(log, "a") as f:  # append: a resumed run keeps the earlier part of its log
        return subprocess.run(["nice", "-n", str(nice), sys.executable, "-m", "lpaf.cli", *cmd], stdout=f,
                              stderr=subprocess.STDOUT, env=env, cwd=ROOT).returncode


def run_cell(args, cell: tuple[str, str, float, int, int]) -> dict | None:
    from study import analyse

    criterion, start, density, steps, seed = cell
    name = cell_name(args.task, *cell)
    result_path = Path(args.results) / f"{name}.json"
    out = Path(args.work) / name
    if result_path.is_file():
        record = json.loads(result_path.read_text())
        missing = [f for f in FACTORIZATIONS if f[0] not in record.get("after_factorization", {})
                   and (not args.factorizations or f[0] in args.factorizations)]
        changed = _add_predictions(record, out, Path(args.work) / name)
        if missing and (out / "metrics.json").is_file():
            _factorize_all(args, record, name, out, density, seed, missing)
            print(f"[{time.strftime('%H:%M:%S')}] {name}: added {', '.join(f[0] for f in missing)}", flush=True)
            changed = True
        if changed:
            result_path.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
        return record
    log = Path(args.work) / f"{name}.log"
    flags = prune_flags(args, criterion, start, density, steps, seed)
    if not (out / "metrics.json").is_file():
        print(f"[{time.strftime('%H:%M:%S')}] start {name}", flush=True)
        if _run(["prune", *flags, "--out", str(out)], log, args.threads, args.nice) != 0:
            print(f"[{time.strftime('%H:%M:%S')}] {name} failed; see {log}", flush=True)
            return None
    import torch
    from safetensors.torch import load_file

    torch.set_num_threads(args.threads)
    teacher_sd = load_file(str(Path(args.teacher) / "model.safetensors"))
    teacher_weights = {k[: -len(".weight")]: v for k, v in teacher_sd.items() if k.endswith(".weight")}
    record = analyse(name, out, flags, teacher_weights)
    metrics = json.loads((out / "metrics.json").read_text())
    record |= {"criterion": criterion, "start": start, "steps": steps, "seed": seed, "task": args.task,
               "teacher": str(args.teacher), "teacher_headline": json.loads(
                   (Path(args.teacher) / "metrics.json").read_text())["headline"],
               "headline_metric": metrics.get("headline_metric"), "predictions": _collapse(metrics),
               "platon": metrics.get("platon"), "prune_start": metrics.get("start"),
               "magnitude_overlap_with_start": {k: v for k, v in (metrics.get("magnitude_overlap") or {}).items()
                                                if k != "per_matrix"},
               "after_factorization": {}}
    chosen = [f for f in FACTORIZATIONS if not args.factorizations or f[0] in args.factorizations]
    _factorize_all(args, record, name, out, density, seed, chosen)
    result_path.parent.mkdir(parents=True, exist_ok=True)
    result_path.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    fact = ", ".join(f"{k} {v['headline']:.3f}" for k, v in record["after_factorization"].items())
    print(f"[{time.strftime('%H:%M:%S')}] done {name}: dev {record['headline']:.4f} "
          f"overlap {record['overlap_with_teacher_top_abs']:.3f} rank {record['rank']['mean_rank']:.1f} "
          f"eff99 {record['rank']['mean_effective_rank_99']:.1f}; factorized: {fact} "
          f"({record['wall_time_s'] / 60:.1f} min)", flush=True)
    return record


def _factorize_all(args, record: dict, name: str, out: Path, density: float, seed: int,
                   factorizations: list[tuple[str, list[str]]]) -> None:
    """Factorize the pruned model with each setting and record the dev score right after (no training)."""
    for label, fflags in factorizations:
        fout = Path(args.work) / f"{name}.{label}"
        if not (fout / "metrics.json").is_file():
            cmd = ["factorize", "--model", str(out), "--task", args.task, "--data", args.data, "--max-length",
                   str(args.max_length), "--density", str(density), "--device", "cpu", "--seed", str(seed), *fflags,
                   "--out", str(fout)]
            if _run(cmd, Path(args.work) / f"{name}.{label}.log", args.threads, args.nice) != 0:
                print(f"[{time.strftime('%H:%M:%S')}] {name} {label} failed", flush=True)
                continue
        frecord = json.loads((fout / "metrics.json").read_text())
        record.setdefault("after_factorization", {})[label] = {
            "headline": frecord["headline"], "metrics": frecord["metrics"], "predictions": _collapse(frecord),
            "retained_percent": frecord.get("retained_percent"),
            "relative_error": {k: v for k, v in ((frecord.get("factorization") or {}).get("summary") or {}).items()
                               if k.endswith("relative_error")}}


def _collapse(metrics: dict) -> dict | None:
    """How near a model's dev predictions are to one class: ``degenerate`` (lpaf's flag: a failed run,
    not a score) and ``majority_fraction`` (the largest share of dev examples given one prediction).
    MRPC's F1 of a model that answers "paraphrase" everywhere is 0.81, so its score alone hides it."""
    import math

    from lpaf.report import majority_fraction

    share = majority_fraction(metrics)
    if math.isnan(share):
        return None
    return {"degenerate": bool(metrics["predictions"].get("degenerate", False)), "majority_fraction": share}


def _add_predictions(record: dict, out: Path, prefix: Path) -> bool:
    """Fill in the collapse fields of a cell recorded before they existed, from its models in the work
    folder (if still there). True if anything was added."""
    changed = False
    if "predictions" not in record and (out / "metrics.json").is_file():
        metrics = json.loads((out / "metrics.json").read_text())
        record |= {"predictions": _collapse(metrics), "headline_metric": metrics.get("headline_metric")}
        changed = True
    for label, entry in (record.get("after_factorization") or {}).items():
        fmetrics = Path(f"{prefix}.{label}") / "metrics.json"
        if "predictions" not in entry and fmetrics.is_file():
            entry["predictions"] = _collapse(json.loads(fmetrics.read_text()))
            changed = True
    return changed


def one_shot_magnitude(args, source: str, start: str, scope: str, density: float) -> dict:
    """The rank of a one-shot magnitude mask of ``source``'s weights (no training): the control of a
    *global* top-k criterion, whose uneven per-matrix densities lower a mean rank by themselves. The
    trained magnitude cells keep 98-99% of this mask (overlap 0.979-0.991 in the schedule study), and
    the local one-shot row checks that approximation against them."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from lpaf.analysis import model_rank_study
    from lpaf.modules import find_encoder_linears
    from lpaf.pruning import keep_count, topk_mask

    name = f"{args.task}-magnitude-one-shot-{scope}-{start}-d{density:g}"
    path = Path(args.results) / f"{name}.json"
    if path.is_file():
        return json.loads(path.read_text())
    torch.set_num_threads(args.threads)
    model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=2)
    linears = find_encoder_linears(model)
    with torch.no_grad():
        if scope == "local":
            for m in linears.values():
                m.weight.mul_(topk_mask(m.weight.abs(), keep_count(density, m.weight.numel())))
        else:
            flat = torch.cat([m.weight.abs().reshape(-1) for m in linears.values()])
            keep = topk_mask(flat, keep_count(density, flat.numel()))
            offset = 0
            for m in linears.values():
                n = m.weight.numel()
                m.weight.mul_(keep[offset:offset + n].view_as(m.weight))
                offset += n
    ranks = model_rank_study(model)
    zero_rows = sum(m["zero_rows"] for m in ranks["matrices"].values()) / len(ranks["matrices"])
    record = {"name": name, "criterion": f"magnitude one-shot {scope} (no training)", "start": start,
              "density": density, "steps": 0, "seed": None, "source": source, "rank": ranks["summary"],
              "mean_zero_rows": zero_rows, "headline": None, "overlap_with_teacher_top_abs": None}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    return record


def load_records(results_dir: Path, schedule_dir: Path | None) -> list[dict]:
    """This study's cells, plus the schedule study's from-fine-tuned cells (its own criterion names)."""
    records = [json.loads(p.read_text()) for p in sorted(results_dir.glob("*.json"))]
    if schedule_dir is not None and schedule_dir.is_dir():
        for p in sorted(schedule_dir.glob("*.json")):
            r = json.loads(p.read_text())
            criterion = SCHEDULE_CELLS.get(r["study_method"])
            if criterion is None:
                continue
            records.append(r | {"criterion": f"{criterion} (schedule study)", "start": "finetuned",
                                "after_factorization": r.get("after_factorization", {})})
    return records


def summarise(records: list[dict]) -> list[dict]:
    """One row per (start, criterion, density, steps): mean / sample std over seeds."""
    import statistics

    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["start"], r["criterion"], r["density"], r["steps"]), []).append(r)
    rows = []
    for key, rs in sorted(groups.items(), key=lambda kv: (kv[0][2], kv[0][0], kv[0][3], kv[0][1])):
        def stat(get):
            vals = [v for v in (get(r) for r in rs) if v is not None]
            if not vals:
                return None
            return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else None)
        row = {"start": key[0], "criterion": key[1], "density": key[2], "steps": key[3], "n": len(rs),
               "seeds": sorted(r["seed"] for r in rs if r["seed"] is not None),
               "dev": stat(lambda r: r["headline"]),
               "mean_rank": stat(lambda r: r["rank"]["mean_rank"]),
               "eff99": stat(lambda r: r["rank"]["mean_effective_rank_99"]),
               "overlap": stat(lambda r: r["overlap_with_teacher_top_abs"]),
               "zero_rows": stat(lambda r: r["mean_zero_rows"]),
               "metric": next((r["headline_metric"] for r in rs if r.get("headline_metric")), None),
               "one_class": _count_one_class([r.get("predictions") for r in rs if r["headline"] is not None]),
               "majority_fraction": stat(lambda r: (r.get("predictions") or {}).get("majority_fraction"))}
        for label, _ in FACTORIZATIONS:
            row[label] = stat(lambda r, label=label: (r.get("after_factorization", {}).get(label) or {}).get("headline"))
            row[f"{label}_one_class"] = _count_one_class(
                [(r.get("after_factorization", {}).get(label) or {}).get("predictions") for r in rs
                 if label in r.get("after_factorization", {})])
        rows.append(row)
    # the ratio of 99%-energy ranks to magnitude's: a trained magnitude cell of the same start, density and
    # length for a local criterion; the one-shot global magnitude mask of the same start for a global one
    for row in rows:
        if "global" in row["criterion"] or row["criterion"].startswith("magnitude"):
            row["eff99_ratio_to_magnitude"] = None
            continue
        scope = "global" if row["criterion"] in GLOBAL_CRITERIA else "local"
        if scope == "global":
            control = [c for c in rows if c["criterion"] == "magnitude one-shot global (no training)"
                       and c["start"] == row["start"] and c["density"] == row["density"]]
        else:  # a trained magnitude cell if there is one, else the one-shot local mask it reproduces (SST-2:
            # 99%-energy rank 293.7 trained for 1,000 steps vs 293.6 one-shot)
            control = [c for c in rows if c["criterion"].startswith("magnitude") and c["steps"] == row["steps"]
                       and c["start"] == row["start"] and c["density"] == row["density"]]
            control = control or [c for c in rows if c["criterion"] == "magnitude one-shot local (no training)"
                                  and c["start"] == row["start"] and c["density"] == row["density"]]
        row["eff99_ratio_to_magnitude"] = (row["eff99"][0] / control[0]["eff99"][0]
                                           if control and row["eff99"] else None)
        row["magnitude_control"] = control[0]["criterion"] if control else None
    return rows


def _count_one_class(predictions: list[dict | None]) -> int | None:
    """How many of these models predict one class on dev (lpaf's degenerate flag); None when a model
    was recorded before the flag was (the schedule study's cells: a collapse there shows as 0.509
    accuracy)."""
    if not predictions or any(p is None for p in predictions):
        return None
    return sum(bool(p["degenerate"]) for p in predictions)


def markdown(rows: list[dict]) -> str:
    """Two tables: the masks (dev, rank, overlap) and the dev score right after each factorization."""
    def fmt(pair, digits):
        if pair is None:
            return "–"
        mean, std = pair
        return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")

    def flagged(pair, one_class, digits):  # a score, and how many seeds' models predict one class
        text = fmt(pair, digits)
        return text + (f" ({one_class} one class)" if pair is not None and one_class else "")

    metric = next((r["metric"] for r in rows if r.get("metric")), "accuracy")
    show_collapse = any(r["one_class"] is not None for r in rows)
    head = ["start", "criterion", "density", "steps", "seeds", f"dev {metric}", "mean rank", "99%-energy rank",
            "ratio to magnitude", "magnitude overlap", "zero rows", *(["one class", "majority share"] * show_collapse)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        ratio = "–" if r["eff99_ratio_to_magnitude"] is None else f"{r['eff99_ratio_to_magnitude']:.3f}"
        cells = [r["start"], r["criterion"], f"{r['density']:g}", str(r["steps"]), str(r["n"]), fmt(r["dev"], 3),
                 fmt(r["mean_rank"], 1), fmt(r["eff99"], 1), ratio, fmt(r["overlap"], 3), fmt(r["zero_rows"], 1)]
        if show_collapse:
            cells += ["–" if r["one_class"] is None else f"{r['one_class']} of {r['n']}", fmt(r["majority_fraction"], 3)]
        lines.append("| " + " | ".join(cells) + " |")
    labels = [label for label, _ in FACTORIZATIONS]
    fact_rows = [r for r in rows if any(r[label] for label in labels)]
    if fact_rows:
        head = ["start", "criterion", "density", "steps", "pruned", *labels]
        lines += ["", f"Dev {metric} right after factorization (no re-training), rank budget of the density"
                  + ("; \"(k one class)\": k seeds' models predict one class on dev" if show_collapse else "") + ":",
                  "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in fact_rows:
            cells = [r["start"], r["criterion"], f"{r['density']:g}", str(r["steps"]),
                     flagged(r["dev"], r["one_class"], 3),
                     *[flagged(r[label], r[f"{label}_one_class"], 3) for label in labels]]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def retrained_markdown(task: str, results_dir: Path) -> str:
    """The cells' factorizations re-trained by ``benchmarks/retrain_study/study.py --tag regime-<task>-…``
    (its setup names the factorized model, ``<work>/<cell>.<label>``): score right after factorization
    and after re-training per re-training seed, with each model's share of dev given one class."""
    labels = [label for label, _ in FACTORIZATIONS]
    lines = []
    for path in sorted((HERE.parent / "retrain_study").glob(f"results_regime-{task}-*.json")):
        results = json.loads(path.read_text())
        base = Path(results["setup"]["factorized"]).name
        label = next((lab for lab in labels if base.endswith("." + lab)), None)
        cell_path = results_dir / f"{base[: -len(label) - 1]}.json" if label else None
        if cell_path is None or not cell_path.is_file():
            continue
        cell = json.loads(cell_path.read_text())
        after = cell["after_factorization"][label]
        runs = sorted(results["runs"].values(), key=lambda r: r["seed"])
        metric = runs[0]["metric"]

        def share(r):
            return ("–" if r.get("majority_fraction") is None else f"{100 * r['majority_fraction']:.1f}%") + (
                " (failed)" if r.get("degenerate") else "")
        lines.append(f"| {label} | {cell['start']} | {cell['criterion']} | {cell['seed']} | {after['headline']:.3f}, "
                     f"{100 * (after.get('predictions') or {}).get('majority_fraction', float('nan')):.1f}% | "
                     + " / ".join(f"{r['metrics'][metric]:.3f}" for r in runs) + " | "
                     + " / ".join(share(r) for r in runs) + " |")
    if not lines:
        return ""
    head = ["factorization", "start", "criterion", "mask seed", "right after factorization, one class",
            "after re-training, per re-training seed", "one class per re-training seed"]
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head), *lines])


def figure(rows: list[dict], path: str, density: float, steps: int, task: str) -> None:
    """Horizontal bars per (criterion, start): 99%-energy rank, overlap with top-|W|, dev accuracy;
    error bars (sample std over seeds) only where a row has two seeds or more."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r["density"] == density and r["steps"] in (0, steps)]  # 0: the one-shot controls
    metric = next((r["metric"] for r in rows if r.get("metric")), "accuracy")
    labels = [f"{r['criterion']} · {r['start']}" + (f" (n={r['n']})" if r["steps"] else "") for r in rows]
    colors = ["#1f77b4" if r["start"] == "pretrained" else "#ff7f0e" for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(14, 0.42 * len(rows) + 1.6), sharey=True)
    for ax, key, title in zip(axes, ("eff99", "overlap", "dev"),
                              ("99%-energy rank (of 384)", "overlap with the teacher's top-|W|",
                               f"{TASK_NAMES.get(task, task)} dev {metric}")):
        y = list(range(len(rows)))
        widths = [r[key][0] if r[key] else float("nan") for r in rows]  # no bar where not measured
        errors = [r[key][1] if r[key] and r[key][1] is not None else 0.0 for r in rows]
        ax.barh(y, widths, xerr=[e if e else float("nan") for e in errors] if any(errors) else None, capsize=3,
                color=colors)
        ax.set_yticks(y, labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_title(title, fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(f"MiniLM-L6, {TASK_NAMES.get(task, task)}, density {density:g}, {steps:,} pruning steps (one-shot magnitude: no training): "
                 f"pre-trained start (blue) vs fine-tuned start (orange)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    print(f"wrote {path}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="sst2")
    p.add_argument("--teacher", default="/tmp/lpaf_regime/teacher_sst2")
    p.add_argument("--pretrained", default=str(SHARED / "models" / "all-MiniLM-L6-v2"))
    p.add_argument("--data", default=str(SHARED / "data"))
    p.add_argument("--work", default="/tmp/lpaf_regime/runs")
    p.add_argument("--results", default=None, help="per-cell JSON folder (default: regime/<task>/ here)")
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--only", nargs="*", help="run only these cell names, in this order")
    p.add_argument("--jobs", type=int, default=1, help="cells run at once (each with --threads threads)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--nice", type=int, default=0)
    p.add_argument("--factorizations", nargs="*", help="factorize new cells with only these labels (default: all; "
                   "a rerun without this flag completes the rest)")
    p.add_argument("--table", action="store_true", help="print the table of every finished cell")
    p.add_argument("--json", help="write the summary rows to this JSON file")
    p.add_argument("--figure", help="draw the regime comparison (.png/.pdf)")
    p.add_argument("--figure-density", type=float, default=0.1)
    p.add_argument("--figure-steps", type=int, default=1000)
    args = p.parse_args()
    args.results = args.results or str(HERE / "regime" / args.task)
    unknown = [f for f in args.factorizations or [] if f not in dict(FACTORIZATIONS)]
    if unknown:
        print(f"error: --factorizations: unknown label {unknown[0]!r}; known: {', '.join(dict(FACTORIZATIONS))}",
              file=sys.stderr)
        sys.exit(2)

    if not (args.table or args.figure or args.json):
        cells = CELLS
        if args.only:
            by_name = {cell_name(args.task, *c): c for c in CELLS}
            unknown = [n for n in args.only if n not in by_name]
            if unknown:
                print(f"error: --only: unknown cell {unknown[0]!r}; known: {', '.join(by_name)}", file=sys.stderr)
                sys.exit(2)
            cells = [by_name[n] for n in args.only]
        Path(args.work).mkdir(parents=True, exist_ok=True)
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            list(pool.map(lambda c: run_cell(args, c), cells))
    for scope in ("local", "global"):
        for start, source in (("finetuned", args.teacher), ("pretrained", args.pretrained)):
            if Path(source).is_dir():
                one_shot_magnitude(args, source, start, scope, args.figure_density)
    rows = summarise(load_records(Path(args.results), HERE / "schedule" / args.task))
    if args.table:
        print(markdown(rows))
        retrained = retrained_markdown(args.task, Path(args.results))
        if retrained:
            print("\nRe-trained (benchmarks/retrain_study/results_regime-" + args.task + "-*.json):\n\n" + retrained)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
        print(f"wrote {args.json}")
    if args.figure:
        figure(rows, args.figure, args.figure_density, args.figure_steps, args.task)


if __name__ == "__main__":
    main()
