"""The shared footing of the factorizers: dtypes, input checks, truncated SVD, importance weights.

Both the closed-form factorizers (:mod:`lpaf.factorize`) and the sparsity-aware EM solver
(:mod:`lpaf.sparsity_aware`) validate their inputs, take truncated SVDs and split them into
balanced factors, and turn Fisher or first-order importance into weights, the same way; they get
those helpers from here so neither has to import the other. Nothing here factorizes a matrix.

Every factorizer computes in :data:`COMPUTE_DTYPE` (float32) whatever the input dtype; the exact
EM reference uses :data:`REFERENCE_DTYPE` (float64). The underscore helpers are internal to the
factorizer modules; they raise :class:`~lpaf.errors.LpafError` naming the offending input.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from lpaf.errors import LpafError

FisherAxis = Literal["out", "in"]
FISHER_AXES: tuple[str, ...] = ("out", "in")

COMPUTE_DTYPE = torch.float32
REFERENCE_DTYPE = torch.float64


# --------------------------------------------------------------------------------------------
# Input checks and small helpers
# --------------------------------------------------------------------------------------------

def _as_matrix(weight: Tensor, dtype: torch.dtype, what: str = "weight") -> Tensor:
    if not isinstance(weight, Tensor) or weight.dim() != 2:
        shape = tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__
        raise LpafError(f"{what} must be a 2-D matrix, got {shape}")
    out = weight.detach().to(dtype)
    if not torch.isfinite(out).all():
        raise LpafError(f"{what} of shape {tuple(weight.shape)} contains NaN or Inf")
    return out


def _check_rank(rank: int, m: int, n: int) -> None:
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= min(m, n):
        raise LpafError(f"rank must be an integer in [1, {min(m, n)}] for a {m}x{n} matrix, got {rank!r}")


def _check_entry_weights(omega: Tensor, shape: tuple[int, ...], dtype: torch.dtype,
                         what: str = "entry weights") -> Tensor:
    if not isinstance(omega, Tensor) or tuple(omega.shape) != tuple(shape):
        got = tuple(omega.shape) if isinstance(omega, Tensor) else type(omega).__name__
        raise LpafError(f"{what} must have the weight's shape {tuple(shape)}, got {got}")
    out = omega.detach().to(dtype)
    if not torch.isfinite(out).all() or out.min() < 0 or out.max() > 1:
        raise LpafError(f"{what} must lie in [0, 1]; got values in [{out.min().item():.4g}, {out.max().item():.4g}]")
    return out


def _check_finite_factors(A: Tensor, B: Tensor, what: str) -> tuple[Tensor, Tensor]:
    if not (torch.isfinite(A).all() and torch.isfinite(B).all()):
        raise LpafError(f"{what} produced non-finite factors (NaN or Inf); check the input weights")
    return A, B


def _balanced_factors(U: Tensor, S: Tensor, Vh: Tensor) -> tuple[Tensor, Tensor]:
    """A = U Σ^{1/2}, B = Σ^{1/2} Vᵀ: both factors on the same scale, which suits re-training."""
    root = S.clamp_min(0).sqrt()
    return U * root.unsqueeze(-2), root.unsqueeze(-1) * Vh


def _truncated_svd(Y: Tensor, rank: int) -> tuple[Tensor, Tensor, Tensor]:
    U, S, Vh = torch.linalg.svd(Y, full_matrices=False)
    return U[..., :rank], S[..., :rank], Vh[..., :rank, :]


# --------------------------------------------------------------------------------------------
# Importance -> weights (fwsvd and importance-row-svd; the Fisher and importance Ω)
# --------------------------------------------------------------------------------------------

def fisher_row_importance(fisher: Tensor, m: int) -> Tensor:
    """Per-row Fisher importance I_i = Σ_j F_ij from accumulated squared gradients (m x n or m)."""
    if not isinstance(fisher, Tensor) or fisher.dim() not in (1, 2) or fisher.shape[0] != m:
        got = tuple(fisher.shape) if isinstance(fisher, Tensor) else type(fisher).__name__
        raise LpafError(f"fwsvd weights must be per-row importance of length {m} or squared gradients of "
                        f"shape ({m}, n), got {got}")
    importance = fisher.detach().to(COMPUTE_DTYPE)
    return importance.sum(dim=1) if importance.dim() == 2 else importance


def normalize_importance(scores: Tensor, keep: Tensor | None = None, min_weight: float = 0.1) -> Tensor:
    """Map first-order importance scores to (0, 1]: min-max over the ``keep`` entries, floored at
    ``min_weight`` so no kept entry is ignored. Entries outside ``keep`` come back as 0."""
    if not 0.0 < min_weight <= 1.0:
        raise LpafError(f"min_weight must be in (0, 1], got {min_weight}")
    s = scores.detach().to(COMPUTE_DTYPE)
    if not torch.isfinite(s).all():
        raise LpafError(f"importance scores of shape {tuple(scores.shape)} contain NaN or Inf")
    sel = torch.ones_like(s, dtype=torch.bool) if keep is None else keep.to(torch.bool)
    if not sel.any():
        return torch.zeros_like(s)
    lo, hi = s[sel].min(), s[sel].max()
    span = (hi - lo).clamp_min(torch.finfo(s.dtype).tiny)
    unit = ((s - lo) / span).clamp(0.0, 1.0) if hi > lo else torch.ones_like(s)
    return torch.where(sel, min_weight + (1.0 - min_weight) * unit, torch.zeros_like(s))


# --------------------------------------------------------------------------------------------
# Reconstruction errors
# --------------------------------------------------------------------------------------------

def _ratio(numerator: Tensor, denominator: Tensor) -> float:
    num, den = numerator.item(), denominator.item()
    if den == 0.0:
        return 0.0 if num == 0.0 else math.inf
    return num / den


def relative_error(weight: Tensor, A: Tensor, B: Tensor) -> float:
    """||W − AB||_F / ||W||_F (float64, so tiny errors of exact factorizations are resolved)."""
    W = weight.detach().to(torch.float64)
    X = A.detach().to(torch.float64) @ B.detach().to(torch.float64)
    return _ratio(torch.linalg.matrix_norm(W - X), torch.linalg.matrix_norm(W))
