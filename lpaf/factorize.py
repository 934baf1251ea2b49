"""Stage 2 math: rank allocation, the closed-form factorizers, and the dispatch over named matrices.

Every factorizer has one shape, ``(W, weights | None, rank) -> (A, B)``: W is m x n in PyTorch
layout (out x in), A is m x r and B is r x n, so ``A @ B`` approximates W with r(m+n) weights.
All math runs in float32 (float64 for the exact reference) whatever the input dtype; factors come
back in the compute dtype and are checked to be finite.

This module holds what the factorize stage decides (how many ranks each matrix gets) and the
factorizers that are one SVD each (svd, fwsvd, importance-row-svd); :func:`factorize_matrices`
runs any method over every named matrix. The sparsity-aware EM solver and its entry weights Ω live
in :mod:`lpaf.sparsity_aware`, the helpers both share in :mod:`lpaf.matrix_ops`; their public
names are re-exported here, so ``from lpaf.factorize import ...`` reaches every factorizer.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Callable, Literal, Mapping, Sequence

import torch
from torch import Tensor

from lpaf.errors import LpafError
from lpaf.matrix_ops import (COMPUTE_DTYPE, FISHER_AXES, REFERENCE_DTYPE, FisherAxis, _as_matrix,
                             _balanced_factors, _check_finite_factors, _check_rank, _truncated_svd,
                             fisher_row_importance, normalize_importance, relative_error)
from lpaf.sparsity_aware import (DEFAULT_MAX_ITERS, DEFAULT_TOL, Acceleration, Solver, WeightedLowRankResult,
                                 omega_from_fisher, omega_from_importance, omega_from_mask, solve_sparsity_aware,
                                 sparsity_aware_svd, sparsity_aware_svd_batched, sparsity_aware_svd_result,
                                 weighted_relative_error, weighted_svd_em_exact)

__all__ = [
    # rank allocation and the closed-form factorizers (here)
    "Factorizer", "RankRule", "Method", "RankAllocation", "allocate_rank", "rank_from_nnz", "allocate_ranks",
    "svd", "row_weighted_svd", "fwsvd", "row_weights_from_importance", "importance_row_svd",
    "FACTORIZERS", "EM_METHODS", "METHOD_WEIGHTS", "MatrixFactorization", "factorize_matrices",
    # re-exported from lpaf.matrix_ops
    "FisherAxis", "FISHER_AXES", "COMPUTE_DTYPE", "REFERENCE_DTYPE", "fisher_row_importance",
    "normalize_importance", "relative_error",
    # re-exported from lpaf.sparsity_aware
    "Solver", "Acceleration", "DEFAULT_MAX_ITERS", "DEFAULT_TOL", "omega_from_mask", "omega_from_fisher",
    "omega_from_importance", "WeightedLowRankResult", "weighted_svd_em_exact", "sparsity_aware_svd_batched",
    "sparsity_aware_svd_result", "sparsity_aware_svd", "weighted_relative_error",
]

Factorizer = Callable[[Tensor, "Tensor | None", int], tuple[Tensor, Tensor]]
RankRule = Literal["budget", "nnz"]
Method = Literal["svd", "fwsvd", "sparsity-aware", "importance-row-svd", "fisher-sparsity-aware"]


# --------------------------------------------------------------------------------------------
# Rank allocation
# --------------------------------------------------------------------------------------------

def _density_fraction(density: float) -> Fraction:
    """The density as the exact decimal the user wrote (0.1 -> 1/10), so floors are not off by one
    from float noise (0.1 * 768 * 768 / 1536 must give 38, not 38.4 - eps)."""
    if isinstance(density, bool) or not isinstance(density, (int, float)) or not math.isfinite(density):
        raise LpafError(f"density must be a number in (0, 1], got {density!r}")
    if not 0.0 < density <= 1.0:
        raise LpafError(f"density must be in (0, 1], got {density}")
    return Fraction(str(float(density)))


def _check_shape(m: int, n: int) -> None:
    if m < 1 or n < 1:
        raise LpafError(f"matrix shape must be positive, got {m}x{n}")


def allocate_rank(m: int, n: int, density: float) -> int:
    """Rank that keeps a fraction ``density`` of an m x n matrix: floor(p·m·n/(m+n)).

    The floor makes r(m+n) <= p·m·n, so a model of such matrices never exceeds its budget.
    """
    p = _density_fraction(density)
    _check_shape(m, n)
    rank = math.floor(p * m * n / (m + n))
    if rank < 1:
        need = Fraction(m + n, m * n)
        raise LpafError(
            f"density {density} gives rank 0 for a {m}x{n} matrix; it needs density >= {float(need):.4g}"
        )
    return rank


def rank_from_nnz(nnz: int, m: int, n: int) -> int:
    """Rank that stores no more weights than a pruned matrix's non-zeros: floor(nnz/(m+n))."""
    _check_shape(m, n)
    if nnz < 0 or nnz > m * n:
        raise LpafError(f"non-zero count must be in [0, {m * n}] for a {m}x{n} matrix, got {nnz}")
    rank = nnz // (m + n)
    if rank < 1:
        raise LpafError(
            f"{nnz} non-zeros give rank 0 for a {m}x{n} matrix; rank 1 needs at least {m + n} non-zeros"
        )
    return rank


@dataclass(frozen=True)
class RankAllocation:
    """Ranks for a set of named matrices and the weight accounting that goes into metrics.json."""

    ranks: dict[str, int]
    shapes: dict[str, tuple[int, int]]
    rule: str
    density: float | None
    stored_weights: int  # Σ r(m+n)
    budget_weights: float  # p·Σmn (budget rule) or Σnnz (nnz rule)
    dense_weights: int  # Σ mn

    @property
    def retained_fraction(self) -> float:
        return self.stored_weights / self.dense_weights

    def to_dict(self) -> dict:
        ranks = list(self.ranks.values())
        return {
            "rule": self.rule,
            "density": self.density,
            "stored_weights": self.stored_weights,
            "budget_weights": self.budget_weights,
            "dense_weights": self.dense_weights,
            "retained_fraction": self.retained_fraction,
            "rank_min": min(ranks),
            "rank_max": max(ranks),
            "rank_mean": sum(ranks) / len(ranks),
            "ranks": dict(self.ranks),
        }


def allocate_ranks(
    shapes: Mapping[str, Sequence[int]],
    density: float | None = None,
    *,
    rule: RankRule = "budget",
    nnz: Mapping[str, int] | None = None,
) -> RankAllocation:
    """Rank per named matrix by the budget rule (density) or the nnz rule (pruned non-zeros).

    Every matrix that would get rank 0 is reported in one error. The stored weight count never
    exceeds the budget (p·Σmn, or Σnnz), because every per-matrix rank is floored.
    """
    if not shapes:
        raise LpafError("no matrices to allocate ranks for")
    if rule not in ("budget", "nnz"):
        raise LpafError(f"rank rule must be 'budget' or 'nnz', got {rule!r}")
    if rule == "budget":
        if density is None:
            raise LpafError("rank rule 'budget' needs a density in (0, 1]")
        p = _density_fraction(density)
    elif nnz is None:
        raise LpafError("rank rule 'nnz' needs the non-zero count of every matrix")
    else:
        missing = sorted(set(shapes) - set(nnz))
        if missing:
            raise LpafError(f"rank rule 'nnz': no non-zero count for {', '.join(missing[:5])}")

    ranks: dict[str, int] = {}
    clean_shapes: dict[str, tuple[int, int]] = {}
    problems: dict[str, str] = {}  # one message per distinct problem
    for name, shape in shapes.items():
        m, n = (int(d) for d in shape)
        clean_shapes[name] = (m, n)
        try:
            ranks[name] = allocate_rank(m, n, density) if rule == "budget" else rank_from_nnz(int(nnz[name]), m, n)
        except LpafError as e:
            problems.setdefault(str(e), name)
    if problems:
        raise LpafError("; ".join(f"{msg} ({name})" for msg, name in problems.items()))

    stored = sum(r * (m + n) for r, (m, n) in zip(ranks.values(), clean_shapes.values()))
    dense = sum(m * n for m, n in clean_shapes.values())
    if rule == "budget":
        budget_exact = p * dense
        budget = float(budget_exact)
    else:
        budget_exact = Fraction(sum(int(nnz[k]) for k in shapes))
        budget = float(budget_exact)
    assert stored <= budget_exact, f"internal error: {stored} stored weights exceed budget {budget}"
    return RankAllocation(ranks, clean_shapes, rule, None if rule == "nnz" else float(density),
                          stored, budget, dense)


# --------------------------------------------------------------------------------------------
# Closed-form factorizers
# --------------------------------------------------------------------------------------------

def svd(weight: Tensor, weights: Tensor | None, rank: int) -> tuple[Tensor, Tensor]:
    """Truncated SVD: A = U_r Σ_r^{1/2} (m x r), B = Σ_r^{1/2} V_rᵀ (r x n). Takes no weights."""
    if weights is not None:
        raise LpafError("svd takes no weights; use fwsvd or sparsity-aware SVD for weighted factorization")
    W = _as_matrix(weight, COMPUTE_DTYPE)
    _check_rank(rank, *W.shape)
    A, B = _balanced_factors(*_truncated_svd(W, rank))
    return _check_finite_factors(A, B, "svd")


def row_weighted_svd(weight: Tensor, row_weights: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """Minimise Σ_i w_i ||W_i − (AB)_i||² in closed form: SVD(D W) = U S Vᵀ with D = diag(√w).

    A = D⁻¹ U_r S_r equals W V_r exactly (D W V_r = U_r S_r), and W V_r needs no division, so rows
    with tiny weights cannot blow up. B = V_rᵀ.
    """
    W = _as_matrix(weight, COMPUTE_DTYPE)
    m, n = W.shape
    _check_rank(rank, m, n)
    w = row_weights.detach().to(COMPUTE_DTYPE) if isinstance(row_weights, Tensor) else None
    if w is None or tuple(w.shape) != (m,):
        got = tuple(row_weights.shape) if isinstance(row_weights, Tensor) else type(row_weights).__name__
        raise LpafError(f"row weights must be a vector of length {m} (one per output row), got {got}")
    if not torch.isfinite(w).all() or w.min() < 0:
        raise LpafError("row weights must be finite and non-negative")
    if w.max() <= 0:
        raise LpafError("row weights are all zero; nothing to weight the factorization by")
    _, _, Vh = _truncated_svd(w.sqrt().unsqueeze(1) * W, rank)
    B = Vh
    A = W @ B.T
    return _check_finite_factors(A, B, "row-weighted svd")


def fwsvd(weight: Tensor, weights: Tensor | None, rank: int, eps: float = 1e-6,
          axis: FisherAxis = "out") -> tuple[Tensor, Tensor]:
    """Fisher-weighted SVD (Hsu et al. 2022): D = diag(√(I + ε)), SVD(D W), A = D⁻¹U_r S_r, B = V_rᵀ.

    ``weights`` is the Fisher importance I, one value per output row of the (out x in) weight
    (``axis="out"``, length m) or per input neuron (``axis="in"``, length n: the public
    re-implementation's reading, which transposes first), or the squared-gradient matrix it is summed
    from; None means uniform (then fwsvd equals svd). ε is relative to max(I), so the result does not
    depend on the loss scale.
    """
    if axis not in FISHER_AXES:
        raise LpafError(f"fisher axis must be one of {', '.join(FISHER_AXES)}, got {axis!r}")
    if axis == "in":  # weight the input neurons: FWSVD of Wᵀ, factors transposed back
        At, Bt = fwsvd(weight.T, None if weights is None else (weights.T if weights.dim() == 2 else weights),
                       rank, eps, "out")
        return Bt.T.contiguous(), At.T.contiguous()
    m = weight.shape[0]
    if weights is None:
        importance = torch.ones(m, dtype=COMPUTE_DTYPE)
    else:
        importance = fisher_row_importance(weights, m)
    if not torch.isfinite(importance).all() or importance.min() < 0:
        raise LpafError("fwsvd row importance must be finite and non-negative (sums of squared gradients)")
    top = importance.max()
    if top <= 0:
        raise LpafError("fwsvd row importance is all zero; accumulate squared gradients over task batches first")
    return row_weighted_svd(weight, importance + eps * top, rank)


def row_weights_from_importance(scores: Tensor, min_weight: float = 0.1) -> Tensor:
    """Row weights for the cheap variant: mean normalized importance of each row's entries (all
    entries, pruned ones included, so every row and entry keeps some weight)."""
    return normalize_importance(scores, None, min_weight).mean(dim=1)


def importance_row_svd(weight: Tensor, weights: Tensor | None, rank: int) -> tuple[Tensor, Tensor]:
    """The cheap sparsity-aware variant: row-weighted SVD of the pruned matrix with row weights
    from first-order importance scores (``weights``: the m x n score matrix)."""
    if weights is None:
        raise LpafError("importance-row-svd needs the first-order importance scores of the matrix")
    if tuple(weights.shape) != tuple(weight.shape):
        raise LpafError(f"importance scores must have the weight's shape {tuple(weight.shape)}, "
                        f"got {tuple(weights.shape)}")
    return row_weighted_svd(weight, row_weights_from_importance(weights), rank)


# --------------------------------------------------------------------------------------------
# Many named matrices at once (what the factorize stage calls)
# --------------------------------------------------------------------------------------------

FACTORIZERS: dict[str, Factorizer] = {
    "svd": svd,
    "fwsvd": fwsvd,
    "sparsity-aware": sparsity_aware_svd,
    "importance-row-svd": importance_row_svd,
    "fisher-sparsity-aware": sparsity_aware_svd,  # Ω = Fisher line weight x mask weight (omega_from_fisher)
}
EM_METHODS = frozenset({"sparsity-aware", "fisher-sparsity-aware"})
# What ``method_weights`` holds per method (None: the method takes none); used in error messages.
METHOD_WEIGHTS: dict[str, str | None] = {
    "svd": None,
    "fwsvd": "Fisher importance (length m, or n with fisher_axis 'in') or squared gradients (m x n)",
    "sparsity-aware": "entry weights Ω (m x n, in [0, 1])",
    "importance-row-svd": "first-order importance scores (m x n)",
    "fisher-sparsity-aware": "entry weights Ω (m x n, in [0, 1]; omega_from_fisher)",
}


@dataclass
class MatrixFactorization:
    """One matrix's factors (A: m x r, B: r x n) and its line in the factorize stage's log."""

    A: Tensor
    B: Tensor
    rank: int
    relative_error: float
    weighted_relative_error: float | None = None
    iterations: int = 0
    converged: bool | None = None
    objectives: list[float] = field(default_factory=list)

    def log_record(self) -> dict:
        m, n = self.A.shape[0], self.B.shape[1]
        return {
            "shape": [m, n],
            "rank": self.rank,
            "stored_weights": self.rank * (m + n),
            "relative_error": self.relative_error,
            "weighted_relative_error": self.weighted_relative_error,
            "iterations": self.iterations,
            "converged": self.converged,
            "objective_initial": self.objectives[0] if self.objectives else None,
            "objective_final": self.objectives[-1] if self.objectives else None,
        }


def _check_named_inputs(weights: Mapping[str, Tensor], ranks: Mapping[str, int],
                        method_weights: Mapping[str, Tensor] | None, method: str, fisher_axis: str = "out") -> None:
    """Collect every naming and shape problem and report them in one error."""
    if method not in FACTORIZERS:
        raise LpafError(f"method must be one of {', '.join(FACTORIZERS)}, got {method!r}")
    if fisher_axis not in FISHER_AXES:
        raise LpafError(f"fisher axis must be one of {', '.join(FISHER_AXES)}, got {fisher_axis!r}")
    problems = []
    missing_rank = sorted(set(weights) - set(ranks))
    if missing_rank:
        problems.append(f"no rank for {', '.join(missing_rank[:5])}")
    expected = METHOD_WEIGHTS[method]
    if expected is None and method_weights is not None:
        problems.append(f"{method} takes no weights")
    elif expected is not None and method_weights is None and method != "fwsvd":
        problems.append(f"{method} needs {expected} for every matrix")
    elif expected is not None and method_weights is not None:
        missing = sorted(set(weights) - set(method_weights))
        if missing:
            problems.append(f"no {method} weights for {', '.join(missing[:5])}")
        for name, w in weights.items():
            extra = method_weights.get(name)
            if extra is None:
                continue
            shape_ok = tuple(extra.shape) == tuple(w.shape) or (
                method == "fwsvd" and tuple(extra.shape) == (w.shape[0 if fisher_axis == "out" else 1],))
            if not shape_ok:
                problems.append(f"{method} weights for {name} have shape {tuple(extra.shape)}, expected "
                                f"{expected} for a weight of shape {tuple(w.shape)}")
    if problems:
        raise LpafError("; ".join(problems))


def factorize_matrices(
    weights: Mapping[str, Tensor],
    ranks: Mapping[str, int],
    method: Method = "svd",
    method_weights: Mapping[str, Tensor] | None = None,
    *,
    solver: Solver = "fast",
    max_iters: int = DEFAULT_MAX_ITERS,
    tol: float = DEFAULT_TOL,
    acceleration: Acceleration = "none",
    device: torch.device | str | None = None,
    max_batch_bytes: int = 256 << 20,
    seed: int = 0,
    fisher_axis: FisherAxis = "out",
    on_done: Callable[[str], None] | None = None,
) -> dict[str, MatrixFactorization]:
    """Factorize named matrices (e.g. every encoder linear) and compute their log records.

    ``method_weights`` per name: Fisher row importance (fwsvd; None = uniform), entry weights Ω
    (sparsity-aware: W is then the pruned matrix W_s), importance scores (importance-row-svd); None
    for svd. Sparsity-aware SVD uses ``solver`` ("fast": matrices of one shape and rank batched,
    at most ``max_batch_bytes`` per [b, m, n] tensor — peak memory about eight times that — on
    ``device``; "exact": full-SVD EM); so does fisher-sparsity-aware, whose Ω the caller builds with
    :func:`omega_from_fisher`. ``fisher_axis``: which side of W the fwsvd importance weights.
    ``on_done(name)`` is called as each matrix is solved (progress). Factors come back on the CPU in
    float32, in the order of ``weights``.
    """
    _check_named_inputs(weights, ranks, method_weights, method, fisher_axis)
    if method in EM_METHODS:
        solved = solve_sparsity_aware(weights, ranks, method_weights, solver, max_iters, tol, acceleration,
                                      device, max_batch_bytes, seed, on_done=on_done)
        out = {}
        for name, w in weights.items():
            res = solved[name]
            A, B = res.A.to(COMPUTE_DTYPE), res.B.to(COMPUTE_DTYPE)
            out[name] = MatrixFactorization(
                A, B, ranks[name], relative_error(w, A, B),
                weighted_relative_error(w, A, B, method_weights[name]),
                res.iterations[0], res.converged[0], res.objectives[0])
        return out
    factorizer = functools.partial(fwsvd, axis=fisher_axis) if method == "fwsvd" else FACTORIZERS[method]
    out = {}
    for name, w in weights.items():
        extra = None if method_weights is None else method_weights[name]
        A, B = factorizer(w, extra, ranks[name])
        out[name] = MatrixFactorization(A, B, ranks[name], relative_error(w, A, B))
        if on_done is not None:
            on_done(name)
    return out
