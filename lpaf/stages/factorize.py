"""Stage 2: factorize every encoder linear of a dense or pruned model into low-rank factors.

Writes the compressed model (config with per-module ranks + safetensors holding only A and B), the
full-rank source matrices W_s (``source_weights.safetensors``: what mixed-rank re-training runs with
probability p(t)), and metrics.json with the dev metrics right after factorization (no training),
per-matrix rank, relative reconstruction errors (plain and Ω-weighted), EM iterations, solver time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from lpaf.console import Progress
from lpaf.errors import LpafError
from lpaf.stages.common import (DataArgs, RunArgs, asdict_all, atomic_output_dir, evaluate_with_predictions,
                                load_model, load_task_data, load_tokenizer, now, prepare_output,
                                pruning_diagnostics_of, seed_everything, stage_metrics, write_completion)
from lpaf.training import resolve_device

MASKS_FILE = "masks.safetensors"
SCORES_FILE = "scores.safetensors"
SOURCE_FILE = "source_weights.safetensors"


@dataclass
class FactorizeArgs:
    model: str = field(metadata={"help": "dense fine-tuned or pruned model directory (an lpaf artifact)"})
    out: str = field(metadata={"help": "output directory (compressed model + metrics.json)"})
    method: Literal["svd", "fwsvd", "sparsity-aware", "importance-row-svd", "fisher-sparsity-aware"] = field(
        default="svd", metadata={"help": "factorizer (fisher-sparsity-aware: sparsity-aware SVD with entry weights "
                                         "sqrt(Fisher line weight) x mask weight; not in the paper)"})
    density: float = field(default=0.25, metadata={
        "help": "fraction of encoder linear weights retained, in (0, 1]. Above the density a pruned --model was "
                "pruned to, a warning (not a refusal): the factors then store more weights than the pruned model "
                "keeps, which is a valid experiment (how much a larger rank budget recovers) but usually a typo"})
    rank_rule: Literal["budget", "nnz"] = field(
        default="budget", metadata={"help": "rank = floor(p*m*n/(m+n)) (budget) or floor(nnz/(m+n)) of the pruned matrix"})
    weights: Literal["mask", "importance"] = field(
        default="mask", metadata={"help": "sparsity-aware entry weights: keep mask, or normalized importance scores"})
    pruned_weight: float = field(
        default=0.5, metadata={"help": "λ: weight of pruned entries in Ω = M + λ(1-M), in [0, 1] (1 = plain SVD; "
                                       "0.5 = the best λ < 1 after re-training in benchmarks/retrain_study)"})
    solver: Literal["fast", "exact"] = field(default="fast", metadata={"help": "sparsity-aware EM solver"})
    acceleration: Literal["none", "nesterov"] = field(
        default="none", metadata={"help": "fast solver: plain EM (objective never rises) or Nesterov momentum with restarts"})
    max_iters: int = field(default=50, metadata={"help": "EM iterations at most"})
    tol: float = field(default=1e-4, metadata={"help": "EM stops when the objective's relative change is below"})
    fisher_axis: Literal["out", "in"] = field(default="out", metadata={
        "help": "fwsvd / fisher-sparsity-aware: Fisher importance per output row of the (out x in) weight, or per "
                "input neuron (the public FWSVD re-implementation's reading)"})
    fisher_batches: int = field(default=32, metadata={"help": "fwsvd: training batches for the Fisher row weights"})
    fisher_batch_size: int = field(default=16, metadata={"help": "fwsvd: batch size for the Fisher estimate"})
    eval_batch_size: int = field(default=64, metadata={"help": "evaluation batch size"})

    def __post_init__(self):
        problems = []
        if not (isinstance(self.density, (int, float)) and 0.0 < self.density <= 1.0):
            problems.append(f"--density must be in (0, 1], got {self.density}")
        if not 0.0 <= self.pruned_weight <= 1.0:
            problems.append(f"--pruned-weight must be in [0, 1], got {self.pruned_weight}")
        if self.acceleration != "none" and self.solver != "fast":
            problems.append(f"--acceleration {self.acceleration} applies to --solver fast only (got --solver {self.solver})")
        if self.max_iters < 1:
            problems.append(f"--max-iters must be >= 1, got {self.max_iters}")
        if not self.tol > 0:
            problems.append(f"--tol must be > 0, got {self.tol}")
        if self.fisher_batches < 1:
            problems.append(f"--fisher-batches must be >= 1, got {self.fisher_batches}")
        if problems:
            raise LpafError("; ".join(problems))


def _load_named_tensors(path: Path, names: list[str], what: str, shapes: dict[str, tuple]) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise LpafError(f"{path} is not a readable safetensors file ({e})") from None
    missing = [n for n in names if n not in tensors]
    if missing:
        raise LpafError(f"{path} does not match the model: no {what} for {', '.join(missing[:3])}"
                        f"{' …' if len(missing) > 3 else ''} (was it written for another model?)")
    for n in names:
        if tuple(tensors[n].shape) != shapes[n]:
            raise LpafError(f"{path} does not match the model: {what} of {n} has shape {tuple(tensors[n].shape)}, "
                            f"expected {shapes[n]}")
    return {n: tensors[n] for n in names}


def fisher_row_weights(model: nn.Module, data, names: list[str], batches: int, batch_size: int,
                       device: str, seed: int, axis: str = "out") -> dict[str, torch.Tensor]:
    """FWSVD's Fisher information per output row (axis "out": sum over columns and batches of
    (dL/dW)^2) or per input neuron (axis "in": sum over rows)."""
    if axis not in ("out", "in"):
        raise LpafError(f"--fisher-axis must be out or in, got {axis!r}")
    sum_dim, line = (1, 0) if axis == "out" else (0, 1)
    from torch.utils.data import DataLoader

    from lpaf.modules import find_encoder_linears
    from lpaf.training import task_loss

    linears = find_encoder_linears(model)
    fisher = {n: torch.zeros(linears[n].weight.shape[line], dtype=torch.float64) for n in names}
    g = torch.Generator().manual_seed(seed)
    loader = DataLoader(data.train, batch_size=batch_size, shuffle=True, generator=g, collate_fn=data.collator)
    model.to(device).eval()  # no dropout: the Fisher of the deterministic model
    for i, batch in enumerate(loader):
        if i >= batches:
            break
        batch = {k: v.to(device) for k, v in batch.items()}
        model.zero_grad(set_to_none=True)
        inputs = {k: v for k, v in batch.items() if k not in ("labels", "start_positions", "end_positions")}
        task_loss(data.task, model(**inputs), batch).backward()
        for n in names:
            fisher[n] += linears[n].weight.grad.detach().double().pow(2).sum(dim=sum_dim).cpu()
    model.zero_grad(set_to_none=True)
    return {n: f.float() for n, f in fisher.items()}


def run(args: FactorizeArgs, data_args: DataArgs, run_args: RunArgs) -> dict:
    from lpaf.factorize import allocate_ranks, factorize_matrices
    from lpaf.sparsity_aware import omega_from_fisher, omega_from_importance, omega_from_mask
    from lpaf.lowrank import save_lowrank_model, swap_encoder_linears
    from lpaf.modules import find_encoder_linears

    out = prepare_output(args.out)
    task = data_args.spec
    src = Path(args.model)
    seed_everything(run_args.seed)
    # validate everything that can be checked before heavy work
    model = load_model(args.model, task, expect="dense")
    _warn_above_pruned_density(src, args.density)
    needs_fisher = args.method in ("fwsvd", "fisher-sparsity-aware")
    needs_masks = args.method in ("sparsity-aware", "importance-row-svd", "fisher-sparsity-aware") \
        or args.rank_rule == "nnz"
    if needs_masks and not (src / MASKS_FILE).is_file():
        raise LpafError(f"--method {args.method} / --rank-rule {args.rank_rule} needs a pruned model: "
                        f"{src / MASKS_FILE} not found (run 'lpaf prune' first)")
    needs_scores = args.method == "importance-row-svd" or (args.method == "sparsity-aware" and args.weights == "importance")
    if needs_scores and not (src / SCORES_FILE).is_file():
        raise LpafError(f"importance weights need {src / SCORES_FILE}, which is missing (run 'lpaf prune' first)")
    tokenizer = load_tokenizer(args.model)
    data = load_task_data(data_args, tokenizer, with_train=needs_fisher)
    device = resolve_device(run_args.device)

    linears = find_encoder_linears(model)
    names = list(linears)
    source = {n: linears[n].weight.detach().float().cpu().clone() for n in names}
    shapes = {n: tuple(w.shape) for n, w in source.items()}
    if not needs_masks and (src / MASKS_FILE).is_file():  # svd of a pruned model: masks for the error report
        needs_masks = True
    masks = _load_named_tensors(src / MASKS_FILE, names, "mask", shapes) if needs_masks else None
    scores = _load_named_tensors(src / SCORES_FILE, names, "scores", shapes) if needs_scores else None
    allocation = allocate_ranks(shapes, args.density, rule=args.rank_rule,
                                nnz={n: int(torch.count_nonzero(m)) for n, m in masks.items()} if masks else None)

    t0 = now()
    method_weights = None
    if needs_fisher:
        fisher = fisher_row_weights(model, data, names, args.fisher_batches, args.fisher_batch_size, device,
                                    run_args.seed, args.fisher_axis)
        if args.method == "fwsvd":
            method_weights = fisher
        else:  # the pruned model's own Fisher (masked weights), times the mask weight
            method_weights = {n: omega_from_fisher(masks[n].bool(), fisher[n], args.pruned_weight, args.fisher_axis)
                              for n in names}
    elif args.method == "sparsity-aware":
        if args.weights == "mask":
            method_weights = {n: omega_from_mask(masks[n].bool(), args.pruned_weight) for n in names}
        else:
            method_weights = {n: omega_from_importance(masks[n].bool(), scores[n], args.pruned_weight) for n in names}
    elif args.method == "importance-row-svd":
        method_weights = scores
    solve_t0 = time.perf_counter()
    with Progress(len(source), "factorize", "matrix") as progress:
        results = factorize_matrices(source, allocation.ranks, args.method, method_weights, solver=args.solver,
                                     max_iters=args.max_iters, tol=args.tol, acceleration=args.acceleration,
                                     device=device, seed=run_args.seed, fisher_axis=args.fisher_axis,
                                     on_done=lambda name: progress.update())
    solver_wall_time_s = time.perf_counter() - solve_t0
    model = swap_encoder_linears(model.cpu(), {n: (r.A, r.B) for n, r in results.items()})
    metrics, predictions = evaluate_with_predictions(model, data, args.eval_batch_size, device, progress=True)
    per_matrix = {n: r.log_record() for n, r in results.items()}
    if masks is not None:  # the error on the weights pruning kept (what sparsity-aware SVD fits)
        for n, r in results.items():
            per_matrix[n]["masked_relative_error"] = _masked_relative_error(source[n], r.A, r.B, masks[n].bool())
    record = stage_metrics(
        "factorize", task, metrics, model.cpu(), asdict_all(args, data_args, run_args), now() - t0, data,
        method=args.method, density=args.density, solver_wall_time_s=solver_wall_time_s,
        budget={k: v for k, v in allocation.to_dict().items() if k != "ranks"},
        factorization={"per_matrix": per_matrix, "summary": _summary(per_matrix)},
        source_model=str(src), source_is_pruned=masks is not None or (src / MASKS_FILE).is_file(),
        predictions=predictions, **pruning_diagnostics_of(src),
    )
    from safetensors.torch import save_file

    with atomic_output_dir(out) as tmp:
        save_lowrank_model(model, tmp, tokenizer)
        save_file({n: w.contiguous() for n, w in source.items()}, str(tmp / SOURCE_FILE))
        write_completion(tmp, record)  # README.md, then metrics.json last
    return record


def _warn_above_pruned_density(src: Path, density: float) -> None:
    """A factorization that keeps more weights than its pruned source: said before the work, with the reason."""
    import sys

    from lpaf.artifacts import read_json

    record = read_json(src / "metrics.json")
    pruned = record.get("density") if isinstance(record, dict) and record.get("stage") == "prune" else None
    if isinstance(pruned, (int, float)) and density > pruned + 1e-9:
        sys.stderr.write(f"lpaf factorize: warning: --density {density:g} is above the density of the pruned model "
                         f"{src} ({pruned:g}): its factors store more weights than the pruned model keeps, so it "
                         f"compresses less than its source; factorize at --density {pruned:g} or less for a smaller "
                         f"model\n")


def _masked_relative_error(weight: torch.Tensor, A: torch.Tensor, B: torch.Tensor, keep: torch.Tensor) -> float:
    """||M ⊙ (W - AB)|| / ||M ⊙ W||: the fit on the kept entries only."""
    w = weight.double()
    diff = (w - A.double() @ B.double())[keep]
    return float(diff.norm() / w[keep].norm().clamp_min(1e-30))


def _summary(per_matrix: dict[str, dict]) -> dict:
    import statistics

    def mean(key):
        vals = [r[key] for r in per_matrix.values() if r.get(key) is not None]
        return statistics.fmean(vals) if vals else None

    return {"mean_rank": mean("rank"), "mean_relative_error": mean("relative_error"),
            "mean_weighted_relative_error": mean("weighted_relative_error"),
            "mean_masked_relative_error": mean("masked_relative_error"), "mean_iterations": mean("iterations"),
            "stored_weights": sum(r["stored_weights"] for r in per_matrix.values())}
