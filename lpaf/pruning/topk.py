"""Top-k keep masks with deterministic ties (the one selection every criterion shares)."""

from __future__ import annotations

import torch
from torch import Tensor

from lpaf.errors import LpafError


@torch.no_grad()
def topk_mask(scores: Tensor, keep: int) -> Tensor:
    """Boolean mask with exactly ``keep`` True entries at the largest ``scores``.

    Ties at the threshold go to the lowest flat indices, so equal scores (zero-initialised
    movement scores, duplicated weights) give the same mask on every run and device.
    kthvalue + a comparison is O(n), cheaper than a sort on every optimizer step.
    """
    flat = scores.detach().reshape(-1)
    n = flat.numel()
    if keep >= n:
        return torch.ones_like(scores, dtype=torch.bool)
    if keep <= 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    if not torch.isfinite(flat.sum()):  # one reduction: cheaper than isfinite().all() every step
        raise LpafError("pruning scores contain NaN or Inf (lower --scores-lr or --lr)")
    threshold = torch.kthvalue(flat, n - keep).values
    keep_flat = flat > threshold
    missing = keep - int(keep_flat.sum())
    if missing > 0:
        ties = torch.nonzero(flat == threshold).squeeze(1)[:missing]
        keep_flat[ties] = True
    return keep_flat.view_as(scores)

