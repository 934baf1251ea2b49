"""The paper's claims, read off the mini reproduction's runs with paired seeds (issues 7 and 14).

Reads ``runs.csv`` (one line per run and seed) and ``rank_study.csv`` (default:
benchmarks/results/mini/) and writes ``claims.md`` and ``claims.json`` beside them. Every
comparison of two rows is made seed by seed (both rows of a seed share the teacher, and the data
order), so each claim gets the paired differences, their mean ± sample std and a verdict from
their spread: a difference is "holds" / "does not hold" only when |mean| exceeds the two-sided 95%
Student-t half-width t·std/√n of the paired differences, else "within noise" (for the margin claim
"lpaf within 2 points of dense": "inconclusive", the interval contains the margin). With one seed there
is no spread and the verdict says so ("1 seed: no verdict"). A run whose dev predictions are
degenerate (one class for ≥ 99% of the dev set: ``degenerate`` in runs.csv, or, for runs written
before that flag, exactly the majority-class accuracy) is a failed run, not a score: its seed is
dropped from the comparison and counted.

    python benchmarks/mini_claims.py                      # after benchmarks/mini_summary.py
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
from pathlib import Path

from lpaf.tasks import display_scale as scale

HERE = Path(__file__).resolve().parent
# dev accuracy of always predicting the majority class (MRPC: 279 of 408 paraphrases, F1 81.2;
# SST-2: 444 of 872 positive; CoLA: 721 of 1,043 acceptable): for runs without the degenerate flag
MAJORITY_ACCURACY = {"mrpc": 279 / 408, "sst2": 444 / 872, "cola": 721 / 1043}
QA_TASKS = ("squad", "squad_v2")  # EM / F1 are already percentages; GLUE metrics are fractions
# two-sided 95% Student-t quantiles by degrees of freedom
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def is_degenerate(run: dict) -> bool:
    flag = run.get("degenerate")
    if flag not in (None, ""):
        return flag == "True"
    acc = run.get("dev_accuracy")
    return acc not in (None, "") and run["task"] in MAJORITY_ACCURACY \
        and abs(float(acc) - MAJORITY_ACCURACY[run["task"]]) < 5e-4


def paired(diffs: list[float]) -> tuple[float, float | None, float | None]:
    """Mean, sample std and 95% t half-width of paired differences (std and width None for n < 2)."""
    mean = statistics.fmean(diffs)
    if len(diffs) < 2:
        return mean, None, None
    std = statistics.stdev(diffs)
    return mean, std, T_975.get(len(diffs) - 1, 1.96) * std / math.sqrt(len(diffs))


def verdict(diffs: list[float], better: str, worse: str, tie: str = "within noise") -> str:
    """`better` / `worse` when the paired mean is beyond its 95% half-width, else `tie`. For a margin claim
    (diffs shifted by the margin) a tie means the interval contains the margin: inconclusive, not "holds"."""
    if not diffs:
        return "no paired runs"
    mean, _, half_width = paired(diffs)
    if half_width is None:
        return f"{len(diffs)} seed: no verdict"
    if abs(mean) <= half_width:
        return tie
    return better if mean > 0 else worse


def gap_verdict(gap_low: list[float], growth: list[float]) -> str:
    """C3's "the gap grows with compression": lpaf − (best of svd/fwsvd) must grow from the higher to the
    lower density, and lpaf must be ahead at the lower one. Both judged against the paired spread, like
    every claim: one seed gives no verdict; it fails if the gap shrinks or lpaf is behind beyond the
    noise, holds only if the growth is beyond the noise and lpaf is ahead on average, else within noise."""
    if len(growth) < 2:
        return f"{len(growth)} seed: no verdict"
    grows = verdict(growth, "holds", "does not hold")
    if grows == "does not hold":
        return "does not hold"
    if verdict(gap_low, "ahead", "behind") == "behind":
        return "does not hold (lpaf behind the best of svd/fwsvd at the lower density)"
    if grows == "holds" and statistics.fmean(gap_low) > 0:
        return "holds"
    return "within noise"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dir", default=str(HERE / "results" / "mini"))
    args = p.parse_args()
    d = Path(args.dir)
    runs = read_csv(d / "runs.csv")
    ranks = read_csv(d / "rank_study.csv")

    def per_seed(task, method, density=None) -> dict[int, dict]:
        return {int(r["seed"]): r for r in runs if r["task"] == task and r["method"] == method
                and (density is None or float(r["density"]) == density)}

    def compare(task, a, b, density, b_density=None, metric="headline"):
        """Paired differences a − b (in points), the failed seeds of each, and the per-row summaries."""
        ra, rb = per_seed(task, a, density), per_seed(task, b, density if b_density is None else b_density)
        failed = {"a": sorted(s for s, r in ra.items() if is_degenerate(r)),
                  "b": sorted(s for s, r in rb.items() if is_degenerate(r))}
        seeds = sorted(set(ra) & set(rb) - set(failed["a"]) - set(failed["b"]))
        k = scale(task)
        diffs = [k * (float(ra[s][metric]) - float(rb[s][metric])) for s in seeds]
        return diffs, failed, row_summary(ra, k, metric), row_summary(rb, k, metric)

    def row_summary(rows: dict[int, dict], k: float, metric: str):
        ok = [k * float(r[metric]) for r in rows.values() if not is_degenerate(r)]
        if not rows:
            return None
        return {"n": len(rows), "failed": len(rows) - len(ok), "mean": statistics.fmean(ok) if ok else None,
                "std": statistics.stdev(ok) if len(ok) > 1 else None}

    def fmt(s):
        if s is None:
            return "–"
        if s["mean"] is None:
            return f"failed ({s['failed']}/{s['n']} seeds degenerate)"
        text = f"{s['mean']:.1f}" + (f" ± {s['std']:.1f}" if s["std"] is not None else "")
        return text + (f" ({s['failed']} of {s['n']} seeds failed)" if s["failed"] else "")

    def rank(task, label, density):
        rows = [r for r in ranks if r["task"] == task and r["label"] == label and float(r["density"]) == density]
        if not rows:
            return None
        return (statistics.fmean(float(r["avg_rank"]) for r in rows),
                statistics.fmean(float(r["avg_effective_rank_99"]) for r in rows))

    tasks = list(dict.fromkeys(r["task"] for r in runs))
    densities = sorted({float(r["density"]) for r in runs if r["dense"] != "True"}, reverse=True)
    out: dict = {"test": "paired seeds, two-sided 95% Student-t half-width", "claims": []}
    lines = ["# Claims, read off `runs.csv` / `rank_study.csv` (`python benchmarks/mini_claims.py`)", "",
             "Headline metric in points: ×100 for GLUE (SST-2 accuracy, MRPC F1, CoLA MCC), SQuAD F1 (and, in "
             "the claims marked (EM), exact match) as percentages (SQuAD rows: config/mini_qa.yaml, trained and "
             "scored on a split of the official dev set by article, not the official split). Rows: mean ± sample std over seeds. "
             "Difference: mean ± std of the paired per-seed differences; a verdict needs |mean| above the 95% "
             "t half-width of those differences (else \"within noise\"; for \"within 2 points of dense\": "
             "\"inconclusive\", the interval contains −2); one seed gives no verdict. Seeds whose "
             "run predicted one class for ≥ 99% of the dev set are failed runs and left out of the pairs.", "",
             "| claim | task | density | numbers | paired difference | n | verdict |",
             "|---|---|---|---|---|---|---|"]

    def add(claim, task, density, text, diffs, v):
        mean, std, half = paired(diffs) if diffs else (None, None, None)
        out["claims"].append({"claim": claim, "task": task, "density": density, "text": text,
                              "paired_differences_points": [round(x, 2) for x in diffs],
                              "mean_points": None if mean is None else round(mean, 2),
                              "std_points": None if std is None else round(std, 2),
                              "half_width_95_points": None if half is None else round(half, 2), "verdict": v})
        diff_text = "–" if mean is None else f"{mean:+.1f}" + (f" ± {std:.1f}" if std is not None else "")
        lines.append(f"| {claim} | {task} | {density:g} | {text} | {diff_text} | {len(diffs)} | {v} |")

    for task in tasks:
        k = scale(task)
        # SQuAD: every claim on F1 (the headline) and again on exact match, marked (EM)
        metrics = [("headline", "")] + ([("dev_exact_match", " (EM)")] if task in QA_TASKS else [])
        for density in densities:
            for first in ("movement", "platon"):
                fr, mg = rank(task, first, density), rank(task, "magnitude", density)
                if fr and mg:
                    add(f"C2 rank ({first} < magnitude)", task, density,
                        f"mean rank {first} {fr[0]:.1f} vs magnitude {mg[0]:.1f} (99%-energy {fr[1]:.1f} vs "
                        f"{mg[1]:.1f})", [], "holds" if fr[0] < mg[0] - 1 else "does not hold")
                for metric, tag in metrics:
                    diffs, _, a, b = compare(task, first, "magnitude", density, metric=metric)
                    if a and b:
                        add(f"C2 accuracy ({first} ≥ magnitude){tag}", task, density, f"{fmt(a)} vs {fmt(b)}",
                            diffs, verdict(diffs, "holds", "does not hold"))
            for metric, tag in metrics:
                for base in ("svd", "fwsvd"):
                    diffs, _, a, b = compare(task, "lpaf", base, density, metric=metric)
                    if a and b:
                        add(f"C3 lpaf > {base}{tag}", task, density, f"{fmt(a)} vs {fmt(b)}", diffs,
                            verdict(diffs, "holds", "does not hold"))
                for other, claim, better, worse in (
                        ("lpaf-no-sa-svd", "C4 lpaf > lpaf − sa-svd", "holds", "does not hold"),
                        ("lpaf-no-mixed-rank", "C5 lpaf > lpaf − mixed-rank", "holds", "does not hold"),
                        ("lpaf-fisher", "lpaf + fisher vs lpaf", "lpaf better", "lpaf + fisher better"),
                        ("lpaf-movement", "lpaf (PLATON) vs lpaf (movement pruning)", "PLATON better",
                         "movement better")):
                    diffs, _, a, b = compare(task, "lpaf", other, density, metric=metric)
                    if a and b:
                        add(claim + tag, task, density, f"{fmt(a)} vs {fmt(b)}", diffs, verdict(diffs, better, worse))
        for metric, tag in metrics:
            if densities:
                diffs, _, a, b = compare(task, "lpaf", "dense", densities[0], b_density=1.0, metric=metric)
                if a and b:
                    within = [x + 2.0 for x in diffs]  # lpaf − (dense − 2 points) > 0 <=> within 2 points
                    add("lpaf within 2 points of dense" + tag, task, densities[0], f"{fmt(a)} vs dense {fmt(b)}",
                        diffs, verdict(within, "holds", "does not hold",
                                       tie="inconclusive (the 95% interval contains −2 points)"))
            if len(densities) >= 2:
                hi, lo = densities[0], densities[-1]
                gap = {}
                for density in (hi, lo):
                    lp = per_seed(task, "lpaf", density)
                    bases = [per_seed(task, m, density) for m in ("svd", "fwsvd")]
                    gap[density] = {s: k * (float(lp[s][metric]) - max(float(b[s][metric]) for b in bases))
                                    for s in lp if all(s in b and not is_degenerate(b[s]) for b in bases)
                                    and not is_degenerate(lp[s])}  # a failed run on either side is no score
                seeds = sorted(set(gap[hi]) & set(gap[lo]))
                diffs = [gap[lo][s] - gap[hi][s] for s in seeds]
                if diffs:
                    add("C3 gap grows with compression" + tag, task, lo,
                        f"lpaf − best of svd/fwsvd: {statistics.fmean(gap[hi][s] for s in seeds):+.1f} at {hi:g}, "
                        f"{statistics.fmean(gap[lo][s] for s in seeds):+.1f} at {lo:g}", diffs,
                        gap_verdict([gap[lo][s] for s in seeds], diffs))
    (d / "claims.json").write_text(json.dumps(out, indent=1) + "\n")
    (d / "claims.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
