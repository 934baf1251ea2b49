"""The rank study behind claims C1 and C2 (docs/METHOD.md): how low-rank are encoder matrices?

C1 says fine-tuned dense matrices are numerically full rank (so truncated SVD must throw much of
them away); C2 says first-order pruning leaves a much lower rank than magnitude pruning at equal
retained parameters. This module measures every encoder linear of a model (numerical rank,
effective rank, zero rows / columns, density, spectrum shape), averages them per model, and draws
the paper's two-panel figure (headline metric and average rank against % parameters retained).
"""

from __future__ import annotations

import logging
import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from lpaf.artifacts import METRICS_FILE, read_json, write_json
from lpaf.errors import LpafError
from lpaf.modules import count_parameters, find_encoder_linears, linear_weight, retained_percent

logger = logging.getLogger(__name__)

ENERGY = 0.99  # effective rank: smallest k keeping this fraction of the squared spectrum
SPECTRUM_QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)
DECAY_FRACTIONS = (0.10, 0.25, 0.50)  # s[k] / s[0] at k = this fraction of min(m, n)
METADATA_KEYS = ("stage", "method", "density", "headline", "headline_metric", "params")
DENSE_STAGES = frozenset({"dense", "finetune"})
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
FIGURE_SUFFIXES = (".png", ".pdf")


@torch.no_grad()
def magnitude_overlap(masks: dict[str, torch.Tensor], reference_weights: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Is a pruning mask learned, or magnitude in disguise? Overlap with the top-|W| mask.

    For every matrix: the fraction of the mask's k kept entries that are also among the k largest
    |W| of ``reference_weights`` (the weights pruning started from). 1.0 means the mask *is* the
    magnitude mask; a random mask of density d scores about d. Returns the per-matrix values, their
    mean over matrices, the kept-weighted ``overall`` value and the random-mask baseline.
    """
    from lpaf.pruning import topk_mask

    missing = sorted(set(masks) - set(reference_weights))
    if missing:
        raise LpafError(f"magnitude overlap: no reference weight for {missing[0]} ({len(missing)} missing)")
    per_matrix: dict[str, float] = {}
    hits = kept_total = numel_total = 0
    for name, mask in masks.items():
        keep = mask.to(torch.bool)
        weight = reference_weights[name]
        if tuple(weight.shape) != tuple(keep.shape):
            raise LpafError(f"magnitude overlap: {name} mask {tuple(keep.shape)} vs weight {tuple(weight.shape)}")
        k = int(keep.sum())
        top_abs = topk_mask(weight.detach().float().abs(), k)
        both = int((keep & top_abs).sum())
        per_matrix[name] = both / k if k else math.nan
        hits, kept_total, numel_total = hits + both, kept_total + k, numel_total + keep.numel()
    values = [v for v in per_matrix.values() if not math.isnan(v)]
    return {"mean": sum(values) / len(values) if values else math.nan,
            "overall": hits / kept_total if kept_total else math.nan,
            "random_baseline": kept_total / numel_total if numel_total else math.nan,
            "per_matrix": per_matrix}


@torch.no_grad()
def matrix_rank_stats(W: torch.Tensor) -> dict[str, Any]:
    """Rank, effective rank, zero structure and spectrum of one m x n matrix (float64 SVD).

    ``rank`` uses ``torch.linalg.matrix_rank``'s default tolerance, s > s_max * max(m, n) * eps,
    with eps of the dtype ``W`` is stored in (as ``matrix_rank(W)`` would): float32 weights carry
    float32 rounding, so a float64 eps would call every float32 matrix full rank, even A @ B.
    The singular values themselves are computed in float64. ``effective_rank_99`` is the smallest k with
    sum_{i<=k} s_i^2 >= 0.99 sum_i s_i^2 (0 for the zero matrix). ``structural_rank_bound`` is
    min(m - zero_rows, n - zero_cols): the rank that zero rows and columns alone allow.
    """
    if W.ndim != 2:
        raise ValueError(f"expected a 2-D matrix, got shape {tuple(W.shape)}")
    if not W.is_floating_point():
        raise ValueError(f"expected a floating-point matrix, got {W.dtype}")
    eps = torch.finfo(W.dtype).eps
    W = W.detach().to(torch.float64)
    if not torch.isfinite(W).all():
        raise ValueError(f"matrix of shape {tuple(W.shape)} has non-finite entries")
    m, n = W.shape
    full_rank = min(m, n)
    s = torch.linalg.svdvals(W)
    s_max = float(s[0])
    tolerance = s_max * max(m, n) * eps
    rank = int((s > tolerance).sum())

    energy = torch.cumsum(s * s, dim=0)
    effective_rank = int(torch.searchsorted(energy, ENERGY * energy[-1]).item()) + 1 if s_max > 0 else 0

    zero = W == 0
    zero_rows = int(zero.all(dim=1).sum())
    zero_cols = int(zero.all(dim=0).sum())
    nonzero = W.numel() - int(zero.sum())

    quantiles = torch.quantile(s, torch.tensor(SPECTRUM_QUANTILES, dtype=s.dtype, device=s.device))
    decay = {f"decay_{round(100 * f)}": (float(s[min(int(f * full_rank), full_rank - 1)]) / s_max
                                         if s_max > 0 else 0.0)
             for f in DECAY_FRACTIONS}
    return {
        "shape": [m, n],
        "full_rank": full_rank,
        "rank": rank,
        "rank_fraction": rank / full_rank,
        "rank_tolerance": tolerance,
        "effective_rank_99": effective_rank,
        "effective_rank_99_fraction": effective_rank / full_rank,
        "zero_rows": zero_rows,
        "zero_cols": zero_cols,
        "structural_rank_bound": min(m - zero_rows, n - zero_cols),
        "nonzero": nonzero,
        "density": nonzero / W.numel(),
        "spectrum": {
            "top": s_max,
            "median": float(torch.median(s)),
            "quantiles": {f"q{round(100 * q)}": float(v) for q, v in zip(SPECTRUM_QUANTILES, quantiles)},
            **decay,
        },
    }


@torch.no_grad()
def model_rank_study(model: nn.Module) -> dict[str, Any]:
    """``{"matrices": {module name: matrix_rank_stats}, "summary": per-model averages}``.

    The summary's ``mean_rank`` is the "average matrix rank" of the paper's figure; ``density`` is
    over all encoder linear weights together (not a mean of per-matrix densities).
    """
    matrices: dict[str, dict[str, Any]] = {}
    for name, module in find_encoder_linears(model).items():
        try:
            matrices[name] = matrix_rank_stats(linear_weight(module))
        except ValueError as e:
            raise LpafError(f"rank study of {name}: {e}") from None
    stats = list(matrices.values())
    count = len(stats)
    size = sum(st["shape"][0] * st["shape"][1] for st in stats)
    summary = {
        "num_matrices": count,
        "full_rank_matrices": sum(st["rank"] == st["full_rank"] for st in stats),
        "mean_rank": sum(st["rank"] for st in stats) / count,
        "mean_rank_fraction": sum(st["rank_fraction"] for st in stats) / count,
        "mean_effective_rank_99": sum(st["effective_rank_99"] for st in stats) / count,
        "mean_effective_rank_99_fraction": sum(st["effective_rank_99_fraction"] for st in stats) / count,
        "mean_structural_rank_bound": sum(st["structural_rank_bound"] for st in stats) / count,
        "density": sum(st["nonzero"] for st in stats) / size,
    }
    return {"matrices": matrices, "summary": summary}


# --- figure -----------------------------------------------------------------------------------

_ENTRY_KEYS = ("method", "retained_percent", "avg_rank", "dense")


def rank_study_figure(entries: Sequence[dict[str, Any]], out_path: str | Path,
                      title: str | None = None) -> list[Path]:
    """The paper's figure: headline metric (top) and average rank (bottom) vs % retained.

    One line per pruning method, in its colour, marker and name of every figure (lpaf.display); the
    seeds of one density are one point, their mean, with a sample-std error bar where the point has
    two seeds or more (entries may carry ``density``; else equal % retained groups them); dense
    entries become a dashed horizontal line in both panels. Entries without a ``metric`` are left
    out of the top panel only. ``title``: the figure's title (default: "Rank study"). ``.png``
    writes a PNG; ``.pdf`` writes the PDF and a PNG next to it. Returns the paths written.
    """
    out_path = Path(out_path)
    _check_figure_path(out_path)
    if not entries:
        raise LpafError("rank study figure: no entries to plot")
    for i, entry in enumerate(entries):
        missing = [k for k in _ENTRY_KEYS if k not in entry]
        if missing:
            raise ValueError(f"figure entry {i} lacks {', '.join(missing)}; needs {', '.join(_ENTRY_KEYS)}")

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from lpaf.display import DENSE_NAME, DENSE_STYLE, method_name, method_style

    n_methods = len({str(e["method"]) for e in entries if not e["dense"]}) + 1
    # one paper column wide (3.4 in), the legend below the two panels
    fig = Figure(figsize=(3.4, 4.6 + 0.17 * math.ceil(n_methods / 2)), layout="constrained")
    FigureCanvasAgg(fig)
    ax_metric, ax_rank = fig.subplots(2, 1, sharex=True)
    panels = ((ax_metric, "metric"), (ax_rank, "avg_rank"))

    dense = [e for e in entries if e["dense"]]
    for ax, key in panels:
        values = [e[key] for e in dense if e.get(key) is not None]
        if values:
            ax.axhline(sum(values) / len(values), color=DENSE_STYLE.color, linestyle="--", linewidth=1,
                       label=DENSE_NAME)

    by_method: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in entries:
        if not e["dense"]:
            by_method[str(e["method"])].append(e)
    for method, rows in sorted(by_method.items()):
        style = method_style(method)
        for ax, key in panels:
            points = _mean_points(rows, key)
            if points:
                xs, ys, stds = zip(*points)
                yerr = None if all(math.isnan(s) for s in stds) else stds  # error bars need two seeds
                ax.errorbar(xs, ys, yerr=yerr, marker=style.marker, capsize=3, label=method_name(method),
                            color=style.color)

    metric_names = sorted({str(e["metric_name"]) for e in entries if e.get("metric_name")})
    ax_metric.set_ylabel(" / ".join(metric_names) or "metric")
    ax_rank.set_ylabel("average matrix rank")
    ax_rank.set_xlabel("% encoder parameters retained")
    for ax, _ in panels:
        ax.grid(True, alpha=0.3)
    fig.suptitle(title or "Rank study")
    handles, labels = ax_rank.get_legend_handles_labels()
    if handles:  # outside the data, below the panels
        fig.legend(handles, labels, fontsize="small", loc="outside lower center", ncols=2, frameon=False)

    targets = [out_path] + ([out_path.with_suffix(".png")] if out_path.suffix.lower() == ".pdf" else [])
    for target in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.partial-{os.getpid()}")
        fig.savefig(tmp, format=target.suffix.lower()[1:], dpi=150)
        os.replace(tmp, target)
    return targets


def _mean_points(rows: list[dict[str, Any]], key: str) -> list[tuple[float, float, float]]:
    """(mean % retained, mean, sample std) per point; seeds of one density are one point (grouped
    by ``density`` where entries have it, else by % retained). One value: std nan (no error bar)."""
    groups: dict[float, list[tuple[float, float]]] = defaultdict(list)
    for row in rows:
        if row.get(key) is not None:
            at = row.get("density")
            at = round(float(row["retained_percent"]), 2) if at is None else float(at)
            groups[at].append((float(row["retained_percent"]), float(row[key])))
    points = []
    for _, pairs in sorted(groups.items()):
        xs, ys = [p[0] for p in pairs], [p[1] for p in pairs]
        mean = sum(ys) / len(ys)
        std = math.sqrt(sum((y - mean) ** 2 for y in ys) / (len(ys) - 1)) if len(ys) > 1 else math.nan
        points.append((sum(xs) / len(xs), mean, std))
    return sorted(points)


def _check_figure_path(path: Path) -> None:
    if path.suffix.lower() not in FIGURE_SUFFIXES:
        raise LpafError(f"figure path {path} must end in {' or '.join(FIGURE_SUFFIXES)}")


# --- the `lpaf rank-study` stage --------------------------------------------------------------

def run_rank_study(model_dirs: Sequence[str], out_json: str, figure: str | None = None,
                   labels: Sequence[str] | None = None) -> dict[str, Any]:
    """Study each saved model directory, write ``out_json`` (and the figure); return the study.

    Method name per model: ``labels[i]``, else ``method`` or ``stage`` from the directory's
    metrics.json, else the directory name. A model is the dense reference when its method is
    "dense", its stage is a fine-tuning stage, or, with no metadata, its encoder weights have no
    zeros (>= 99.9% retained).
    """
    _check_inputs(model_dirs, figure, labels)
    records = []
    for i, model_dir in enumerate(model_dirs):
        records.append(_study_one(Path(model_dir), labels[i] if labels else None))
        logger.info("rank study %s: mean rank %.1f over %d matrices", model_dir,
                    records[-1]["summary"]["mean_rank"], records[-1]["summary"]["num_matrices"])
    study: dict[str, Any] = {"models": records, "figure": figure}
    if figure is not None:
        rank_study_figure([_figure_entry(r) for r in records], figure)
    Path(out_json).parent.mkdir(parents=True, exist_ok=True)
    write_json(out_json, study)
    return study


def _check_inputs(model_dirs: Sequence[str], figure: str | None, labels: Sequence[str] | None) -> None:
    """Every problem with the arguments, reported together before any model loads."""
    problems = []
    if not model_dirs:
        problems.append("no model directories given")
    if labels is not None and len(labels) != len(model_dirs):
        problems.append(f"{len(labels)} labels for {len(model_dirs)} model directories")
    if figure is not None and Path(figure).suffix.lower() not in FIGURE_SUFFIXES:
        problems.append(f"figure path {figure} must end in {' or '.join(FIGURE_SUFFIXES)}")
    for d in map(Path, model_dirs):
        if not d.is_dir():
            problems.append(f"model directory not found: {d}")
        elif not (d / "config.json").is_file():
            problems.append(f"{d} has no config.json (not a saved Hugging Face model)")
        elif not any((d / f).is_file() for f in WEIGHT_FILES):
            problems.append(f"{d} has no model weights (expected one of {', '.join(WEIGHT_FILES)})")
    if problems:
        raise LpafError("rank-study: " + "; ".join(problems))


def _study_one(model_dir: Path, label: str | None) -> dict[str, Any]:
    from transformers import AutoModel

    meta_path = model_dir / METRICS_FILE
    meta = read_json(meta_path) if meta_path.is_file() else {}
    if not isinstance(meta, dict):
        raise LpafError(f"{meta_path} is not a JSON object")
    metadata = {k: meta[k] for k in METADATA_KEYS if k in meta}
    try:
        # float32 whatever the saved dtype, so every model's rank tolerance is the same
        model = AutoModel.from_pretrained(str(model_dir), dtype=torch.float32)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise LpafError(f"cannot load model from {model_dir}: {e}") from None
    try:
        study = model_rank_study(model)
        params = count_parameters(model)
    except LpafError as e:
        raise LpafError(f"{model_dir}: {e}") from None
    finally:
        del model

    retained = retained_percent(params, "encoder_linear_nonzero")
    method = label or metadata.get("method") or metadata.get("stage") or model_dir.name
    dense = (str(method).lower() == "dense" or metadata.get("method") == "dense"
             or metadata.get("stage") in DENSE_STAGES
             or ("method" not in metadata and "stage" not in metadata and retained >= 99.9))
    headline = metadata.get("headline")
    metric = float(headline) if isinstance(headline, (int, float)) and math.isfinite(headline) else None
    return {
        "path": str(model_dir),
        "method": str(method),
        "dense": bool(dense),
        "retained_percent": retained,
        "metric": metric,
        "metric_name": metadata.get("headline_metric"),
        "metadata": metadata,
        "params": params,
        "summary": study["summary"],
        "matrices": study["matrices"],
    }


def _figure_entry(record: dict[str, Any]) -> dict[str, Any]:
    return {
        "method": record["method"],
        "retained_percent": record["retained_percent"],
        "metric": record["metric"],
        "metric_name": record["metric_name"],
        "avg_rank": record["summary"]["mean_rank"],
        "dense": record["dense"],
    }
