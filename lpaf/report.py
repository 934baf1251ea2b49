"""Aggregate the stages' metrics files into the results table and draw the figures.

Input: a list of *run rows*, one per (model, task, method, density, seed), each naming the
files of that run - the stage's ``metrics.json`` (dev metrics, parameter counts), and optionally
the ``timing.json`` of ``lpaf time-models`` that timed the model and its dense teacher side by side
(``timing``, with the two directories as ``timing_model`` / ``timing_dense``; older rows may name
``eval.json`` files with a ``latency_ms`` instead). The workflow writes these rows; any script can too.

Outputs:
- ``runs.csv``: one line per run (every dev metric, headline, % retained, parameters, latency,
  speed-up vs the dense teacher of the same task and seed, the device it was timed on, and
  ``majority_fraction``: the largest share of dev examples given one prediction, how near a collapse);
- ``table.csv``: one line per (model, task, method, density): mean and std over seeds of every
  dev metric and of the headline metric, % encoder parameters retained (non-zero weights, so
  sparse and low-rank models share one axis), whole-model parameters, speed-up, number of seeds;
- ``table.md``: the paper-style table (tasks as columns, mean ± std, GLUE scores x100);
- figures (PNG and PDF, one style): headline metric vs % retained per task, the rank study per
  task (its own density grid), the ablation (lpaf vs − sa-svd vs − mixed-rank), speed-up vs %
  retained. Every figure has a title and names metrics and tasks for a reader ("Pearson r",
  "STS-B"); a method has one colour, marker and name in all of them (lpaf.display); error bars (sample
  std over seeds) are drawn only where a point has at least two seeds.

Speed-up: per seed, latency(dense teacher) / latency(model), then mean and std over seeds. Tasks
without latency measurements (``evaluate.tasks`` in the config) take the mean speed-up of the same
(model, method, density) over the measured tasks, marked ``speedup_measured = False``: latency
depends on the architecture (ranks), not on the task.
"""

from __future__ import annotations

import re as _re
from pathlib import Path as _Path

# results/<experiment>/ holds an experiment's table, figures, timing and report (the artifacts under
# results/<model>/ are shared by every experiment that plans them).
DEFAULT_EXPERIMENT = "default"
EXPERIMENT_NAME = _re.compile(r"[A-Za-z0-9][A-Za-z0-9_+-]{0,47}")


def experiment_name(name: str | None, configfile: str | None) -> str:
    """The experiment a workflow config runs: its ``name:`` key, else its file's stem
    (config/smoke.yaml -> smoke), with the default config/config.yaml (or none) -> ``default``.
    May return a name that EXPERIMENT_NAME refuses (a dotted file name): the caller says so."""
    if name:
        return name
    if not configfile:
        return DEFAULT_EXPERIMENT
    stem = _Path(configfile).stem
    return DEFAULT_EXPERIMENT if stem == "config" else stem

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Iterable, Sequence

from lpaf.display import DENSE_NAME, DENSE_STYLE, headline_metric, method_name, method_style, metric_name, task_name
from lpaf.errors import LpafError
from lpaf.tasks import display_scale

GROUP_KEYS = ["model", "task", "method", "label", "density"]
RUN_ID_KEYS = ["model", "task", "method", "label", "density", "seed"]
MEAN_ONLY = ["retained_percent", "retained_percent_stored", "params_total", "params_total_nonzero",
             "params_encoder_linear_nonzero", "latency_ms", "dense_latency_ms", "magnitude_overlap"]
FIGURE_DPI = 150
# A run's recipe: every resolved argument of every stage along its chain (metrics.json `args`,
# defaults included), except what names files, the seed, and what does not change what is trained.
RECIPE_IGNORED_ARGS = frozenset({
    "model", "out", "data", "teacher", "seed", "device", "tf32", "cache_dir", "logging_dir", "logging_steps",
    "save_steps", "save_total_limit", "eval_batch_size", "preprocessing_num_workers", "dataloader_num_workers",
    "report_to"})


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------

def _read_json(path: str | Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            blob = json.load(f)
    except FileNotFoundError:
        raise LpafError(f"report: file not found: {path}") from None
    except json.JSONDecodeError as e:
        raise LpafError(f"report: {path} is not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(blob, dict):
        raise LpafError(f"report: {path} is not a JSON object")
    return blob


def _latency_ms(path: str | Path | None) -> float:
    if not path:
        return math.nan
    blob = _read_json(path)
    latency = blob.get("latency_ms")
    if isinstance(latency, dict):
        latency = latency.get("median_ms")
    if not isinstance(latency, (int, float)):
        raise LpafError(f"report: {path} has no latency_ms (run 'lpaf evaluate' with --latency-batches N > 0)")
    return float(latency)


def _timed_ms(path: str, model_dir: str, cache: dict[str, dict[str, Any]]) -> tuple[float, str]:
    """Median latency of one model in a timing.json, and the device it ran on (each file read once
    per table: ``cache`` lives for one load_runs call, so a rewritten timing.json is read again)."""
    if path not in cache:
        cache[path] = _read_json(path)
    blob = cache[path]
    entry = (blob.get("latency_ms") or {}).get(model_dir)
    if not isinstance(entry, dict) or "median_ms" not in entry:
        raise LpafError(f"report: {path} did not time {model_dir} (timed: {', '.join(blob.get('latency_ms') or {})})")
    return float(entry["median_ms"]), str(blob.get("device", ""))


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def majority_fraction(metrics: dict[str, Any]) -> float:
    """How near a collapse a model's dev predictions are: the largest share of dev examples given one
    prediction, over the splits of a metrics.json's ``predictions`` (nan where none is recorded, e.g.
    regression)."""
    splits = ((metrics.get("predictions") or {}).get("splits") or {}).values()
    return max((_number(s.get("majority_fraction")) for s in splits
                if isinstance(s, dict) and "majority_fraction" in s), default=math.nan)


def run_record(row: dict[str, Any], timing_cache: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """One run row (with file paths) -> one flat record of numbers."""
    blob = _read_json(row["metrics"])
    missing = [k for k in ("metrics", "headline_metric", "params") if k not in blob]
    if missing:
        raise LpafError(f"report: {row['metrics']} lacks {', '.join(missing)} (not an lpaf stage metrics.json)")
    params = blob["params"]
    record: dict[str, Any] = {k: row[k] for k in RUN_ID_KEYS}
    record["dense"] = bool(row.get("dense", row["method"] == "dense"))
    record["chain"] = row.get("chain", "")
    record["stage"] = blob.get("stage")
    record["headline_metric"] = blob["headline_metric"]
    record["headline"] = _number(blob.get("headline"))
    record["retained_percent"] = _number(blob.get("retained_percent_nonzero", blob.get("retained_percent")))
    record["retained_percent_stored"] = _number(blob.get("retained_percent"))
    record["params_total"] = _number(params.get("total"))
    record["params_total_nonzero"] = _number(params.get("total_nonzero", params.get("total")))
    record["params_encoder_linear_nonzero"] = _number(params.get("encoder_linear_nonzero"))
    # learned or magnitude in disguise? (pruned rows and everything built on them; nan elsewhere)
    record["magnitude_overlap"] = _number((blob.get("magnitude_overlap") or {}).get("mean"))
    # a collapsed model (one class for every dev example) is a failed run, not a score
    record["degenerate"] = bool((blob.get("predictions") or {}).get("degenerate", False))
    # how near a collapse it is: the largest share of dev examples given one prediction (nan for regression)
    record["majority_fraction"] = majority_fraction(blob)
    record["metric_keys"] = list(blob["metrics"])
    record["recipe_args"] = recipe_args(row["metrics"])
    for key, value in blob["metrics"].items():
        record[f"dev_{key}"] = _number(value)
    best = best_dev_evaluation(blob)
    record["best_step"] = _number(best.get("step"))
    record["best_headline"] = _number(best.get(blob["headline_metric"]))
    for key in blob["metrics"]:
        record[f"best_{key}"] = _number(best.get(key))
    if row.get("timing"):  # one side-by-side timing job (lpaf time-models)
        cache = {} if timing_cache is None else timing_cache
        record["latency_ms"], record["device"] = _timed_ms(row["timing"], row["timing_model"], cache)
        record["dense_latency_ms"], _ = _timed_ms(row["timing"], row["timing_dense"], cache)
    else:
        record["latency_ms"] = _latency_ms(row.get("eval"))
        record["dense_latency_ms"] = _latency_ms(row.get("dense_eval"))
        record["device"] = ""
    record["speedup"] = record["dense_latency_ms"] / record["latency_ms"] if record["latency_ms"] > 0 else math.nan
    record["speedup_measured"] = not math.isnan(record["speedup"])
    return record


def recipe_args(metrics_path: str | Path) -> dict[str, Any]:
    """The resolved arguments of a run's stage and of every ancestor stage (the nested artifact
    layout: each directory above holding a stage metrics.json), keyed `stage.arg`. Stage defaults are
    in `args`, so a run made before a default changed differs from one made after, where the
    artifact's path (hashed from the configured flags only) does not."""
    out: dict[str, Any] = {}
    path = Path(metrics_path)
    while path.is_file():
        blob = _read_json(path)
        if not isinstance(blob.get("args"), dict) or not blob.get("stage"):
            break
        for key, value in blob["args"].items():
            if key not in RECIPE_IGNORED_ARGS:
                out.setdefault(f"{blob['stage']}.{key}", value)
        path = path.parent.parent / "metrics.json"
    return out


def check_recipes(runs) -> None:
    """Every seed of one table row must have been built with the same settings: a difference in any
    stage argument both seeds recorded is an error naming the row, the setting and both values.
    (Arguments only one seed recorded are new switches of a later version: not compared.)"""
    if "recipe_args" not in runs:
        return
    for key, g in runs.groupby(GROUP_KEYS, sort=False, dropna=False):
        recipes = [(seed, r) for seed, r in zip(g["seed"], g["recipe_args"]) if isinstance(r, dict) and r]
        if len(recipes) < 2:
            continue
        (seed0, first), rest = recipes[0], recipes[1:]
        for seed, other in rest:
            for arg in sorted(set(first) & set(other)):
                if first[arg] != other[arg]:
                    row = dict(zip(GROUP_KEYS, key))
                    raise LpafError(
                        f"report: the {row['task']} {row['method']} row at density {row['density']:g} mixes settings "
                        f"across seeds: {arg} is {first[arg]!r} in seed {seed0} and {other[arg]!r} in seed {seed}; "
                        "rebuild the older seed's artifacts (delete them and rerun) so every seed follows one recipe")


def best_dev_evaluation(blob: dict[str, Any]) -> dict[str, Any]:
    """The run's best dev evaluation: the stage's recorded best (dev evaluations during training,
    the end of training included), or the end-of-training scores when that is higher or nothing
    else was evaluated. A pruning run's evaluations before its final density are not models at
    that density: only the top-level ``best_eval`` (evaluations at the final density) counts there."""
    headline = blob["headline_metric"]
    end = {"step": (blob.get("train") or {}).get("train_steps"), **blob["metrics"]}
    best = blob.get("best_eval")
    if best is None and blob.get("stage") != "prune":
        best = (blob.get("train") or {}).get("best_eval")
    if not isinstance(best, dict) or _number(best.get(headline)) != _number(best.get(headline)):
        return end
    end_score = _number(end.get(headline))
    return end if end_score == end_score and end_score >= _number(best[headline]) else best


def load_runs(rows: Sequence[dict[str, Any]]):
    """The per-run DataFrame (column ``dev_<metric>`` per dev metric), speed-ups filled in."""
    import pandas as pd

    if not rows:
        raise LpafError("report: no runs to aggregate")
    timing_cache: dict[str, dict[str, Any]] = {}
    records = [run_record(r, timing_cache) for r in rows]
    runs = pd.DataFrame.from_records(records)
    check_recipes(runs)
    runs = _fill_unmeasured_speedup(runs)
    return runs


def _fill_unmeasured_speedup(runs):
    measured = runs[runs["speedup_measured"]]
    if measured.empty:
        return runs
    means = measured.groupby(["model", "method", "density"])["speedup"].mean()
    fill = runs.apply(lambda r: means.get((r["model"], r["method"], r["density"]), math.nan), axis=1)
    runs["speedup"] = runs["speedup"].where(runs["speedup_measured"], fill)
    if "device" not in runs:  # runs.csv written before the timing job existed
        runs["device"] = ""
        measured = runs[runs["speedup_measured"]]
    devices = measured.groupby("model")["device"].first()  # the model's one timing job
    runs["device"] = runs["device"].where(runs["speedup_measured"], runs["model"].map(devices).fillna(""))
    return runs


# --------------------------------------------------------------------------------------------
# Aggregating
# --------------------------------------------------------------------------------------------

def _order(values: Iterable[Any]) -> dict[Any, int]:
    out: dict[Any, int] = {}
    for v in values:
        out.setdefault(v, len(out))
    return out


def aggregate(runs):
    """Mean and (sample) std over seeds per (model, task, method, density); std is empty for one seed."""
    import pandas as pd

    metric_cols = [c for c in runs.columns if c.startswith("dev_")]
    out_rows = []
    task_order, method_order = _order(runs["task"]), _order(runs["method"])
    for key, g in runs.groupby(GROUP_KEYS, sort=False, dropna=False):
        row: dict[str, Any] = dict(zip(GROUP_KEYS, key))
        row["dense"] = bool(g["dense"].iloc[0])
        row["n_seeds"] = int(g["seed"].nunique())
        row["n_degenerate"] = int(g["degenerate"].sum())
        row["seeds"] = " ".join(str(s) for s in sorted(g["seed"].unique()))
        row["headline_metric"] = g["headline_metric"].iloc[0]
        # runs.csv files written before these columns existed (committed seeds) have no best_* or device
        best_cols = [c for c in ["best_headline"] + [f"best_{c[4:]}" for c in metric_cols] if c in g]
        for col in ["headline"] + [c for c in metric_cols + best_cols if g[c].notna().any()]:
            name = col[4:] if col.startswith("dev_") else col
            row[f"{name}_mean"] = g[col].mean()
            row[f"{name}_std"] = g[col].std(ddof=1) if len(g) > 1 else math.nan
        for col in MEAN_ONLY:
            row[col] = g[col].mean()
        row["speedup_mean"] = g["speedup"].mean()
        row["speedup_std"] = g["speedup"].std(ddof=1) if g["speedup"].notna().sum() > 1 else math.nan
        row["speedup_measured"] = bool(g["speedup_measured"].all())
        row["device"] = next((d for d in g.get("device", pd.Series(dtype=str)).fillna("") if d), "")
        row["chain"] = g["chain"].iloc[0]
        out_rows.append(row)
    table = pd.DataFrame(out_rows)
    table["_t"] = table["task"].map(task_order)
    table["_m"] = table["method"].map(method_order)
    table = table.sort_values(["model", "_t", "_m", "density"], ascending=[True, True, True, False])
    table = table.drop(columns=["_t", "_m"]).reset_index(drop=True)
    lead = GROUP_KEYS + ["dense", "n_seeds", "n_degenerate", "seeds", "headline_metric", "headline_mean",
                         "headline_std"]
    metric_out = [c for c in table.columns if c not in lead and (c.endswith("_mean") or c.endswith("_std"))
                  and not c.startswith("speedup")]
    tail = MEAN_ONLY + ["speedup_mean", "speedup_std", "speedup_measured", "device", "chain"]
    return table[lead + metric_out + tail]


# --------------------------------------------------------------------------------------------
# The paper-style markdown table
# --------------------------------------------------------------------------------------------

def _metric_order(task: str, recorded: Sequence[str]) -> list[str]:
    """The task's official reporting order (MRPC: F1 then accuracy), then anything else recorded."""
    from lpaf.tasks import get_task

    try:
        official = [k for k in get_task(task).metric_keys() if k in recorded]
    except LpafError:
        official = []
    return official + [k for k in recorded if k not in official]


def _fmt(mean: float, std: float, scale: float) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    text = f"{mean * scale:.1f}"
    if std is not None and not (isinstance(std, float) and math.isnan(std)):
        text += f" ± {std * scale:.1f}"
    return text


SCORE_TITLES = {"end": "End of training", "best": "Best dev evaluation"}


def markdown_table(table, runs=None, score: str = "end") -> str:
    """The paper-style table in Markdown, with the LaTeX table's content (lpaf.table_tex.paper_rows):
    rows = (method, density), columns = each task's headline metrics under short headers, GLUE
    average, % retained, magnitude overlap, speed-up. ``score``: "end" (end of training) or "best"
    (each run's best dev evaluation). ``runs`` is accepted for backward compatibility, unused."""
    from lpaf.table_tex import GLUE, _task_keys, paper_rows

    lines: list[str] = []
    for model, mt in table.groupby("model", sort=False):
        tasks, rows = paper_rows(mt, score)
        glue_tasks = [t for t in tasks if t in GLUE]
        overlap = mt.groupby(["label", "density"], sort=False)["magnitude_overlap"].mean()
        header = ["method", "density", "% retained", "mag. overlap"] + [_task_keys(t, mt)[0] for t in tasks]
        header += (["GLUE avg"] if glue_tasks else []) + ["speed-up"]
        lines += [f"### {model} · {SCORE_TITLES[score].lower()}", "",
                  "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for label, density, dense, cells, glue, retained, speed, failed in rows:
            mag = overlap.get((label, density), math.nan)
            line = [label, "–" if dense else f"{density:g}", f"{retained:.1f}",
                    "–" if math.isnan(mag) else f"{mag:.2f}"]
            for t in tasks:
                if cells[t] is None:
                    line.append("–")
                    continue
                text = " / ".join(_fmt(m, s, 1.0) for m, s in cells[t])
                line.append(f"{text} †{failed[t]}" if failed[t] else text)
            if glue_tasks:
                line.append("–" if glue is None else f"{glue:.1f}")
            line.append("–" if speed is None else f"{speed:.2f}×")
            lines.append("| " + " | ".join(line) + " |")
        seeds = sorted({int(n) for n in mt["n_seeds"]})
        when = {"end": "at the end of training",
                "best": "at each run's best dev evaluation (selected on the same dev set, so optimistic)"}[score]
        lines += ["", f"Dev scores {when}: mean ± sample std over {'/'.join(map(str, seeds))} seed(s); GLUE "
                      f"scores ×100, SQuAD EM/F1 in %. GLUE avg: each task's metrics averaged, then the tasks "
                      f"(rows with every GLUE task of the table). % retained: non-zero encoder linear weights "
                      f"(sparse) or stored factor weights (low-rank), relative to the dense encoder. Speed-up: "
                      f"dense latency / model latency (batch 32 × 128 tokens). mag. overlap: fraction of the "
                      f"pruning mask that is also the teacher's top-|W| mask (1 = magnitude; a random mask scores "
                      f"its density). †n: n seeds predicted one class (or a constant) for ≥ 99% of dev examples — "
                      f"failed runs, not scores.", ""]
    return "\n".join(lines)


def markdown_tables(table) -> str:
    """table.md: the end-of-training table (the paper-style one) first, then the best-dev one."""
    return "\n".join([f"## {SCORE_TITLES['end']} (the paper-style table)", "", markdown_table(table, score="end"),
                      f"## {SCORE_TITLES['best']}", "", markdown_table(table, score="best")])


# --------------------------------------------------------------------------------------------
# Rank study rows
# --------------------------------------------------------------------------------------------

def load_rank_rows(rows: Sequence[dict[str, Any]]):
    """One line per rank-studied model: % retained, headline, average rank (from rank.json)."""
    import pandas as pd

    records = []
    for row in rows:
        blob = _read_json(row["rank"])
        models = blob.get("models") or []
        if not models:
            raise LpafError(f"report: {row['rank']} has no models (not an 'lpaf rank-study' output)")
        study = models[0]
        summary = study.get("summary", {})
        records.append({
            "model": row["model"], "task": row["task"], "seed": row["seed"], "label": row["label"],
            "density": row["density"], "dense": bool(row["dense"]), "chain": row.get("chain", ""),
            "retained_percent": _number(study.get("retained_percent")),
            "metric": _number(study.get("metric")), "metric_name": study.get("metric_name"),
            "avg_rank": _number(summary.get("mean_rank")),
            "avg_rank_fraction": _number(summary.get("mean_rank_fraction")),
            "avg_effective_rank_99": _number(summary.get("mean_effective_rank_99")),
        })
    columns = ["model", "task", "seed", "label", "density", "dense", "retained_percent", "metric", "metric_name",
               "avg_rank", "avg_rank_fraction", "avg_effective_rank_99", "chain"]
    return pd.DataFrame.from_records(records, columns=columns)


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------

def _atomic_write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _write_csv(df, path: str | Path) -> None:
    _atomic_write_text(path, df.to_csv(index=False, float_format="%.6g"))


def write_table(rows: Sequence[dict[str, Any]], csv_path: str | Path, md_path: str | Path | None = None,
                runs_path: str | Path | None = None, rank_rows: Sequence[dict[str, Any]] = (),
                rank_path: str | Path | None = None, tex_path: str | Path | None = None):
    """Read every run, write table.csv (+ table.md, table.tex, runs.csv, rank_study.csv); return the table."""
    runs = load_runs(rows)
    table = aggregate(runs)
    _write_csv(table, csv_path)
    if md_path is not None:
        _atomic_write_text(md_path, markdown_tables(table))
    if tex_path is not None:
        from lpaf.table_tex import latex_table

        _atomic_write_text(tex_path, latex_table(table) + "\n" + latex_table(table, score="best"))
    if runs_path is not None:
        _write_csv(runs.drop(columns=["metric_keys", "recipe_args"], errors="ignore"), runs_path)
    if rank_path is not None:
        _write_csv(load_rank_rows(rank_rows), rank_path)
    return table


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------

# One style for every figure, readable at a paper's full text width (about 6.5 in; the PDF scales
# down to a column with 7-8 pt text).
FIGURE_STYLE = {"font.size": 9, "axes.titlesize": 9, "axes.labelsize": 9, "legend.fontsize": 8,
                "xtick.labelsize": 8, "ytick.labelsize": 8, "lines.markersize": 4, "lines.linewidth": 1.4,
                "errorbar.capsize": 3, "pdf.fonttype": 42}
# The paper's ablation (Table/Figure "lpaf vs - sa-svd vs - mixed-rank"): method keys in the configs.
ABLATION_METHODS = ("lpaf", "lpaf-no-sa-svd", "lpaf-no-mixed-rank")


def _styled(draw):
    """Run a figure function under FIGURE_STYLE (rcParams are read when artists are created)."""
    import functools

    @functools.wraps(draw)
    def wrapper(*args, **kwargs):
        import matplotlib

        with matplotlib.rc_context(FIGURE_STYLE):
            return draw(*args, **kwargs)

    return wrapper


def _figure(width: float = 6.5, height: float = 3.4):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _by_method(rows):
    """(method key, display name, rows) per compressed method, in table order. The style is keyed by
    the method (lpaf.display), so a method looks the same in every figure whatever else it holds."""
    compressed = rows[~rows["dense"].astype(bool)]
    if "method" not in compressed:  # a table without method keys: the label is the key
        compressed = compressed.assign(method=compressed["label"])
    for (method, label), g in compressed.groupby(["method", "label"], sort=False):
        yield str(method), method_name(str(method), label), g


def _yerr(g, std_col: str, scale):
    """Error bars (sample std x scale) only for points with at least two seeds; None when no point has."""
    import numpy as np

    std = g[std_col].to_numpy(dtype=float) * scale
    n = g["n_seeds"].to_numpy(dtype=float) if "n_seeds" in g else np.where(np.isnan(std), 1.0, 2.0)
    err = np.where(n >= 2, std, np.nan)
    return None if np.isnan(err).all() else err


def _save(fig, out_path: str | Path) -> Path:
    out = Path(out_path)
    if out.suffix.lower() not in (".png", ".pdf", ".svg"):
        raise LpafError(f"figure path {out} must end in .png, .pdf or .svg")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}{out.suffix}")
    fig.savefig(tmp, dpi=FIGURE_DPI)
    os.replace(tmp, out)
    return out


COLUMN_WIDTH_IN = 3.4  # one column of a two-column paper: the per-task figures are drawn at this size


def _column_figure(n_entries: int, axes_height_in: float = 2.4):
    """A figure one paper column wide, tall enough for its legend below the axes (two columns)."""
    return _figure(width=COLUMN_WIDTH_IN, height=axes_height_in + 0.6 + 0.17 * math.ceil(n_entries / 2))


def _legend_outside(ax) -> None:
    """The legend below the axes, outside the data (14 rows would cover the lines), two columns."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.figure.legend(handles, labels, loc="outside lower center", ncols=2, frameon=False)


def _read_table(table):
    import pandas as pd

    return pd.read_csv(table) if isinstance(table, (str, Path)) else table


@_styled
def metric_figure(table, task: str, out_path: str | Path) -> Path:
    """Headline metric (mean over seeds; ± sample std where a point has two seeds or more) vs %
    encoder parameters retained, one line per method; the dense teacher is a dashed horizontal line."""
    table = _read_table(table)
    rows = table[table["task"] == task]
    if rows.empty:
        raise LpafError(f"metric figure: no rows for task {task!r} (tasks in the table: "
                        f"{', '.join(map(str, table['task'].unique()))})")
    fig = _column_figure(rows["label"].nunique())
    ax = fig.subplots()
    scale = display_scale(task)
    for i, (_, d) in enumerate(rows[rows["dense"].astype(bool)].iterrows()):
        ax.axhline(d["headline_mean"] * scale, color=DENSE_STYLE.color, linestyle="--", linewidth=1,
                   label=DENSE_NAME if i == 0 else None)
    for method, name, g in _by_method(rows):
        g = g.sort_values("retained_percent")
        style = method_style(method)
        ax.errorbar(g["retained_percent"], g["headline_mean"] * scale, yerr=_yerr(g, "headline_std", scale),
                    marker=style.marker, color=style.color, label=name)
    ax.set_xlabel("% encoder parameters retained")
    ax.set_ylabel(metric_name(rows["headline_metric"].iloc[0]))
    ax.set_title(f"{task_name(task)} · {rows['model'].iloc[0]}")
    ax.grid(True, alpha=0.3)
    _legend_outside(ax)
    return _save(fig, out_path)


@_styled
def speedup_figure(table, out_path: str | Path) -> Path:
    """Measured inference speed-up vs % retained, one line per method (mean over tasks)."""
    table = _read_table(table)
    fig = _column_figure(table["label"].nunique())
    ax = fig.subplots()
    ax.axhline(1.0, color=DENSE_STYLE.color, linestyle="--", linewidth=1, label=DENSE_NAME)
    for method, name, g in _by_method(table):
        pts = g.groupby("density").agg(x=("retained_percent", "mean"), y=("speedup_mean", "mean")).dropna()
        if pts.empty:
            continue
        pts = pts.sort_values("x")
        style = method_style(method)
        ax.plot(pts["x"], pts["y"], marker=style.marker, label=name, color=style.color)
    ax.set_xlabel("% encoder parameters retained")
    ax.set_ylabel("inference speed-up vs dense (×)")
    models = ", ".join(map(str, table["model"].unique()))
    ax.set_title(f"Speed-up · {models} (batch 32 × 128 tokens)")
    ax.grid(True, alpha=0.3)
    _legend_outside(ax)
    return _save(fig, out_path)


@_styled
def ablation_figure(table, out_path: str | Path) -> Path:
    """The paper's ablation: lpaf vs lpaf − sa-svd vs lpaf − mixed-rank, headline metric per task
    (bars: mean over seeds; error bars: sample std, where a bar has two seeds or more), one panel
    per density; the dense teacher of each task is a black tick above its group."""
    import numpy as np

    table = _read_table(table)
    rows = table[table["method"].isin(ABLATION_METHODS)]
    present = [m for m in ABLATION_METHODS if m in set(rows["method"])]
    if len(present) < 2:
        raise LpafError(f"ablation figure: needs at least two of the methods {', '.join(ABLATION_METHODS)} "
                        f"(the table has {', '.join(map(str, table['method'].unique()))})")
    densities = sorted(rows["density"].unique(), reverse=True)
    tasks = list(dict.fromkeys(rows["task"]))
    fig = _figure(width=max(4.0, 1.6 + 1.3 * len(tasks) * len(densities)), height=3.2)
    axes = fig.subplots(1, len(densities), sharey=True, squeeze=False)[0]
    width = 0.8 / len(present)
    for ax, density in zip(axes, densities):
        at = rows[rows["density"] == density]
        for i, method in enumerate(present):
            m = at[at["method"] == method].set_index("task").reindex(tasks)
            scale = np.array([display_scale(t) for t in tasks])
            x = np.arange(len(tasks)) + (i - (len(present) - 1) / 2) * width
            name = method_name(method, m["label"].dropna().iloc[0] if m["label"].notna().any() else None)
            ax.bar(x, m["headline_mean"].to_numpy(dtype=float) * scale, width, yerr=_yerr(m, "headline_std", scale),
                   label=name if ax is axes[0] else None, color=method_style(method).color, capsize=2)
        for j, task in enumerate(tasks):
            dense = table[(table["task"] == task) & table["dense"].astype(bool)]
            if not dense.empty:
                y = float(dense["headline_mean"].iloc[0]) * display_scale(task)
                ax.hlines(y, j - 0.45, j + 0.45, colors=DENSE_STYLE.color, linestyles="--", linewidth=1,
                          label=DENSE_NAME if (ax is axes[0] and j == 0) else None)
        ax.set_xticks(np.arange(len(tasks)), [f"{task_name(t)}\n{metric_name(_headline(rows, t))}" for t in tasks])
        ax.set_title(f"density {density:g}")
        ax.grid(True, axis="y", alpha=0.3)
    axes[0].set_ylabel("dev score")
    fig.suptitle(f"Ablation · {', '.join(map(str, table['model'].unique()))}")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", frameon=False)
    return _save(fig, out_path)


def _headline(rows, task: str) -> str:
    """The task's headline metric key: the table's column, else the task registry's."""
    if "headline_metric" in rows:
        recorded = rows.loc[rows["task"] == task, "headline_metric"].dropna()
        if not recorded.empty:
            return str(recorded.iloc[0])
    return headline_metric(task)


@_styled
def rank_figure(rank_rows, task: str, out_path: str | Path) -> Path:
    """The paper's rank-study figure for one task (lpaf.analysis.rank_study_figure): metric and
    average rank vs % retained on the rank study's density grid, seeds as error bars (where a point
    has two seeds or more), styled and named as in every other figure (lpaf.display)."""
    from lpaf.analysis import rank_study_figure

    ranks = _read_table(rank_rows)
    rows = ranks[ranks["task"] == task]
    if rows.empty:
        raise LpafError(f"rank figure: no rank-study rows for task {task!r}")
    scale = display_scale(task)
    entries = [{"method": r["label"], "retained_percent": float(r["retained_percent"]),
                "metric": None if math.isnan(r["metric"]) else float(r["metric"]) * scale,
                "metric_name": metric_name(r["metric_name"]) if isinstance(r["metric_name"], str) else None,
                "avg_rank": float(r["avg_rank"]), "dense": bool(r["dense"]), "density": float(r["density"])}
               for _, r in rows.iterrows()]
    title = f"{task_name(task)} rank study · {', '.join(map(str, rows['model'].unique()))}"
    return rank_study_figure(entries, out_path, title=title)[0]


# --------------------------------------------------------------------------------------------
# CLI: python -m lpaf.report ...
# --------------------------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lpaf.report", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("table", help="run rows (JSON list) -> table.csv, table.md, runs.csv")
    t.add_argument("--rows", required=True, help="JSON file: list of run rows (model, task, method, label, density, "
                                                 "seed, metrics, eval, dense_eval)")
    t.add_argument("--out", default="results", help="output directory")
    f = sub.add_parser("figure", help="draw one figure from results/table.csv or results/rank_study.csv")
    f.add_argument("kind", choices=["metric", "speedup", "rank", "ablation"])
    f.add_argument("--table", default="results/table.csv", help="table.csv (metric, speedup) or rank_study.csv (rank)")
    f.add_argument("--task", help="task (metric, rank)")
    f.add_argument("--out", required=True, help="output image (.png, .pdf, .svg)")
    args = parser.parse_args(argv)
    try:
        if args.command == "table":
            rows = _read_json_list(args.rows)
            out = Path(args.out)
            write_table(rows, out / "table.csv", out / "table.md", out / "runs.csv", tex_path=out / "table.tex")
        elif args.kind in ("speedup", "ablation"):
            (speedup_figure if args.kind == "speedup" else ablation_figure)(args.table, args.out)
        else:
            if not args.task:
                parser.error(f"figure {args.kind} needs --task")
            (metric_figure if args.kind == "metric" else rank_figure)(args.table, args.task, args.out)
    except LpafError as e:
        sys.stderr.write(f"lpaf report: error: {e}\n")
        return 2
    return 0


def _read_json_list(path: str) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        rows = json.load(f)
    if not isinstance(rows, list):
        raise LpafError(f"{path}: expected a JSON list of run rows")
    return rows


if __name__ == "__main__":
    sys.exit(main())
