"""Aggregate every committed (seed, task) run of the mini reproduction into one table (issues 14, 17).

A seed of config/mini.yaml takes about two hours on 2 cores, so runs are made one seed (or one
task of a seed) at a time, possibly in different sessions on different machines.
`benchmarks/mini_summary.py` commits each finished run's small results under
`benchmarks/results/mini/seeds/s<seed>/<task>/` (runs.csv, rank_study.csv, run_info.json with the
config file, its digest and the commit), and this script rebuilds `table.csv`, `table.md`,
`runs.csv`, `rank_study.csv` and the figures of `benchmarks/results/mini/` from all of them, then
the claims (`mini_claims.py`). The GLUE tasks come from config/mini.yaml and SQuAD from
config/mini_qa.yaml (not the official split: see that file), so the check is per task: every seed of
one task must come from the same config values (the digest ignores comments), and every seed of one
row must have run the same stage settings (the hashed `chain`, which also sees `--config`
overrides); seeds from different commits are allowed and listed in `aggregate_info.json`.

Overlay runs (config/mini_learned.yaml on top of config/mini.yaml, committed under `learned/`) add rows
beside the table's on the same teachers: each must come from a base config with the digest of the task's
committed seeds, its teacher must score exactly what the committed dense row of that seed scored, and
its rows must be methods the base runs do not have; its dense rows are then dropped.

    python benchmarks/mini_aggregate.py            # after adding a run with mini_summary.py
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "benchmarks" / "results" / "mini"
CONFIG = REPO / "config" / "mini.yaml"
OVERLAYS = ("learned",)  # directories of overlay runs (mini_summary.py's OVERLAY_DIRS)


def config_digest(path: Path = CONFIG, text: str | None = None) -> str:
    """sha256 of the config's values (YAML parsed, comments and layout ignored), 12 hex digits:
    what must match across the seeds of a task."""
    import yaml

    values = yaml.safe_load(path.read_text() if text is None else text)
    canonical = json.dumps(values, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def run_dirs(out: Path, kind: str = "seeds") -> list[Path]:
    """Every committed `<kind>/s<seed>/<task>/` directory with a runs.csv, by seed then task
    (kind: `seeds`, the base runs, or one of OVERLAYS)."""
    def key(p: Path):
        seed = p.parent.name[1:]
        return (int(seed) if seed.isdigit() else 10**9, p.name)

    return sorted((p for p in (out / kind).glob("s*/*") if (p / "runs.csv").is_file()), key=key)


def load_overlay_runs(out: Path, runs, infos: dict) -> tuple[list, list, dict]:
    """The overlay runs' own rows and rank rows, checked against the committed base runs they extend."""
    import pandas as pd

    frames, rank_frames, overlay_infos = [], [], {}
    for kind in OVERLAYS:
        digests: dict[str, tuple[str, str]] = {}
        for d in run_dirs(out, kind):
            name = f"{d.parent.name}/{d.name}"
            seed, task = int(d.parent.name[1:]), d.name
            info = json.loads((d / "run_info.json").read_text())
            where = f"{kind}/{name}"
            base = infos.get(name)
            if base is None:
                raise SystemExit(f"mini_aggregate: {where} extends seed {seed} of {task}, which has no committed "
                                 f"run under seeds/; commit that run first or move {where} aside")
            if info.get("base_config_digest") != base.get("config_digest"):
                raise SystemExit(f"mini_aggregate: {where} ran on a base config with digest "
                                 f"{info.get('base_config_digest')}, the committed seeds/{name} on "
                                 f"{base.get('config_digest')}; rerun it on the committed config")
            first = digests.setdefault(task, (where, info.get("config_digest")))
            if first[1] != info.get("config_digest"):
                raise SystemExit(f"mini_aggregate: {first[0]} and {where} were run with different overlay files "
                                 f"(digest {first[1]} vs {info.get('config_digest')}); rerun one of them")
            rows = pd.read_csv(d / "runs.csv")
            dense_mask = rows["dense"].astype(str).str.lower() == "true"
            base_dense = runs[(runs["task"] == task) & (runs["seed"] == seed)
                              & (runs["dense"].astype(str).str.lower() == "true")]
            for _, r in rows[dense_mask].iterrows():
                if base_dense.empty or abs(float(base_dense["headline"].iloc[0]) - float(r["headline"])) > 1e-9:
                    committed = "none" if base_dense.empty else f"{float(base_dense['headline'].iloc[0]):.6g}"
                    raise SystemExit(f"mini_aggregate: {where}: its teacher scored {float(r['headline']):.6g}, the "
                                     f"committed dense row of seeds/{name} {committed}: not the same teacher")
            own = rows[~dense_mask]
            clash = sorted(set(own["method"]) & set(runs.loc[runs["task"] == task, "method"]))
            if clash:
                raise SystemExit(f"mini_aggregate: {where} has rows of methods the base runs already have: "
                                 f"{', '.join(clash)}; an overlay adds rows, it does not replace them")
            frames.append(own)
            if (d / "rank_study.csv").is_file():
                r = pd.read_csv(d / "rank_study.csv")
                rank_frames.append(r[r["dense"].astype(str).str.lower() != "true"])
            overlay_infos[where] = info
    return frames, [r for r in rank_frames if not r.empty], overlay_infos


def load_seed_runs(out: Path):
    """Every committed run's rows and rank rows, checked: one config per task across its seeds."""
    import pandas as pd

    dirs = run_dirs(out)
    if not dirs:
        raise SystemExit(f"mini_aggregate: no committed runs under {out / 'seeds'} (run mini_summary.py first)")
    infos = {f"{d.parent.name}/{d.name}": json.loads((d / "run_info.json").read_text()) for d in dirs}
    by_task: dict[str, dict[str, str]] = {}
    for name, info in infos.items():
        by_task.setdefault(name.split("/")[1], {})[name] = info.get("config_digest")
    for task, digests in by_task.items():
        if len(set(digests.values())) > 1:
            first = next(iter(digests))
            other = next(n for n, v in digests.items() if v != digests[first])
            raise SystemExit(f"mini_aggregate: {first} and {other} were run with different config files "
                             f"(digest {digests[first]} vs {digests[other]}); rerun one of them or move it aside")
    runs = pd.concat([pd.read_csv(d / "runs.csv") for d in dirs], ignore_index=True)
    overlay_rows, overlay_ranks, overlay_infos = load_overlay_runs(out, runs, infos)
    runs = pd.concat([runs, *overlay_rows], ignore_index=True)
    check_row_recipes(runs)
    ranks = [pd.read_csv(d / "rank_study.csv") for d in dirs if (d / "rank_study.csv").is_file()]
    ranks = [r for r in ranks if not r.empty] + overlay_ranks
    ranks = pd.concat(ranks, ignore_index=True) if ranks else None
    return runs, ranks, {**infos, **overlay_infos}


def check_row_recipes(runs) -> None:
    """Every seed of one row (task, method, density) must have run the same chain of stage settings.

    The `chain` column names each stage by a hash of its resolved flags (workflow/rules/plan.smk), so
    this catches what the config digest cannot: a `--config` override that changed one stage for one
    seed only (a longer schedule, another lambda), which would silently average two recipes."""
    if "chain" not in runs:
        return
    for (task, method, density), group in runs.groupby(["task", "method", "density"], sort=False):
        (s1, c1), *others = zip(group["seed"], group["chain"])
        differing = [(s, c) for s, c in others if c != c1]
        if differing:
            s2, c2 = differing[0]
            raise SystemExit(f"mini_aggregate: row {task} {method} at density {density:g} ran different stage "
                             f"settings in seed {s1} ({c1}) and seed {s2} ({c2}); rerun one of them with the "
                             "other's settings or move it aside")


def _restore_run_columns(runs):
    """runs.csv drops the per-run list of metric keys and, for runs of older code, the diagnostics."""
    import math

    if "degenerate" not in runs:
        runs["degenerate"] = False
    runs["degenerate"] = runs["degenerate"].fillna(False).astype(bool)
    if "magnitude_overlap" not in runs:
        runs["magnitude_overlap"] = math.nan
    metric_cols = [c for c in runs.columns if c.startswith("dev_")]
    runs["metric_keys"] = runs.apply(
        lambda r: [c[4:] for c in metric_cols if r[c] == r[c]], axis=1)  # non-NaN dev_ columns
    return runs


def draw_figures(table, ranks, out: Path) -> list[str]:
    """The workflow's figures, redrawn from the aggregated table (every committed seed and task)."""
    from lpaf.report import ABLATION_METHODS, ablation_figure, metric_figure, rank_figure, speedup_figure

    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    drawn = []
    for task in dict.fromkeys(table["task"]):
        drawn.append(metric_figure(table, task, figures / f"{task}_metric.png").name)
        if ranks is not None and (ranks["task"] == task).any():
            drawn.append(rank_figure(ranks, task, figures / f"{task}_rank.png").name)
    if "speedup_mean" in table and table["speedup_mean"].notna().any():
        drawn.append(speedup_figure(table, figures / "speedup.png").name)
    if len(set(table["method"]) & set(ABLATION_METHODS)) >= 2:
        drawn.append(ablation_figure(table, figures / "ablation.png").name)
    return drawn


def after_factorization_section(out: Path) -> str:
    """Every committed run's dev scores right after factorization (`after_factorization.csv`, before any
    re-training), pooled into out/after_factorization.csv and summarised as a markdown section: the start
    each re-trained row begins from, where C3/C4 are first visible."""
    import pandas as pd

    from lpaf.tasks import display_scale

    frames = [pd.read_csv(d / "after_factorization.csv") for kind in ("seeds", *OVERLAYS)
              for d in run_dirs(out, kind) if (d / "after_factorization.csv").is_file()]
    if not frames:
        return ""
    rows = pd.concat(frames, ignore_index=True).sort_values(["task", "density", "source", "factorize", "seed"])
    rows.to_csv(out / "after_factorization.csv", index=False, float_format="%.6g")
    lines = ["", "## Right after factorization (before re-training)", "",
             "| task | density | source → factorizer | seeds | dev score | failed |", "|---|---|---|---|---|---|"]
    for (task, density, source, factorize), g in rows.groupby(["task", "density", "source", "factorize"], sort=True):
        values = g["headline"].astype(float) * display_scale(str(task))  # GLUE fractions x100, SQuAD already in %
        spread = f" ± {values.std():.1f}" if len(values) > 1 else ""
        failed = int((g["degenerate"].astype(str).str.lower() == "true").sum())
        lines.append(f"| {task} | {density:g} | {source} → {factorize} | {g['seed'].nunique()} | "
                     f"{values.mean():.1f}{spread} | {failed or ''} |")
    lines += ["", "Dev score of each factorized model before re-training (GLUE ×100, SQuAD F1 in %), mean ± sample "
              "std over the seeds committed with `after_factorization.csv`. source: the teacher (dense) or the "
              "pruning method whose model was factorized. failed: seeds whose predictions were one class for "
              "≥ 99% of the dev set.", ""]
    return "\n".join(lines)


def aggregate(out: Path = OUT, figures: bool = True) -> dict:
    from lpaf.report import aggregate as aggregate_runs
    from lpaf.report import markdown_tables

    runs, ranks, infos = load_seed_runs(out)
    runs = _restore_run_columns(runs)
    table = aggregate_runs(runs)
    table.to_csv(out / "table.csv", index=False, float_format="%.6g")
    (out / "table.md").write_text(markdown_tables(table) + after_factorization_section(out), encoding="utf-8")
    runs.drop(columns=["metric_keys"]).to_csv(out / "runs.csv", index=False, float_format="%.6g")
    if ranks is not None:
        ranks.to_csv(out / "rank_study.csv", index=False, float_format="%.6g")
    tasks: dict[str, dict] = {}
    overlays: dict[str, dict] = {}
    for name, i in infos.items():
        if name.count("/") == 2:  # an overlay run: <overlay>/s<seed>/<task>
            kind, seed, task = name.split("/")
            o = overlays.setdefault(f"{kind}/{task}", {"configs": i.get("configs"), "config_digest":
                                                       i.get("config_digest"), "seeds": [], "commits": {}})
            o["seeds"].append(int(seed[1:]))
            o["commits"][seed] = i.get("commit")
            continue
        seed, task = name.split("/")
        t = tasks.setdefault(task, {"config": i.get("config"), "config_digest": i.get("config_digest"),
                                    "seeds": [], "commits": {}})
        t["seeds"].append(int(seed[1:]))
        t["commits"][seed] = i.get("commit")
    info = {"tasks": tasks, "seeds": sorted({s for t in tasks.values() for s in t["seeds"]}),
            "rows": int(len(table)), "min_n_seeds": int(table["n_seeds"].min())}
    if overlays:
        info["overlays"] = overlays
    if figures:
        info["figures"] = draw_figures(table, ranks, out)
    (out / "aggregate_info.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", default=str(OUT))
    p.add_argument("--no-claims", action="store_true")
    p.add_argument("--no-figures", action="store_true")
    args = p.parse_args()
    out = Path(args.dir)
    info = aggregate(out, figures=not args.no_figures)
    per_task = ", ".join(f"{t} seeds {v['seeds']}" for t, v in info["tasks"].items())
    print(f"mini_aggregate: {info['rows']} rows ({per_task}; every row has >= {info['min_n_seeds']} seeds) -> {out}")
    if args.no_claims:
        return 0
    return subprocess.run([sys.executable, str(REPO / "benchmarks" / "mini_claims.py"), "--dir", str(out)],
                          cwd=REPO).returncode


if __name__ == "__main__":
    sys.exit(main())
