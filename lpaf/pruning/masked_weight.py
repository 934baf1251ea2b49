"""The parametrization that owns one matrix's pruning state: ``weight -> weight ⊙ keep_mask``.

Every encoder linear weight W is parametrized with ``torch.nn.utils.parametrize``; the module holds
the 0/1 ``keep_mask`` buffer, the learned ``scores`` of movement pruning (an ``nn.Parameter``) and
whatever statistics a criterion registers as buffers (PLATON's EMAs). All of it is in the model's
state dict, so a Trainer checkpoint restores it. Shapes are the weight's (out x in).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class _MaskedByScores(torch.autograd.Function):
    """W ⊙ M forward; backward: ∂L/∂W = g ⊙ M and ∂L/∂S = g ⊙ W (straight through the TopK)."""

    @staticmethod
    def forward(ctx, weight: Tensor, scores: Tensor, mask: Tensor) -> Tensor:
        ctx.save_for_backward(weight, mask)
        return weight * mask

    @staticmethod
    def backward(ctx, grad: Tensor):
        weight, mask = ctx.saved_tensors
        return grad * mask, grad * weight, None


class MaskedWeight(nn.Module):
    """Parametrization ``weight -> weight ⊙ keep_mask`` of one matrix.

    Args:
        weight: the matrix (its shape and device size the buffers).
        learn_scores: create a score parameter S (movement): the forward uses W ⊙ M with the
            straight-through backward of :class:`_MaskedByScores`.
        track_sensitivity: sum W ⊙ ∂L/∂(W⊙M) over the backward passes since the last
            :meth:`take_sensitivity` (PLATON, this project's per-step reading).
        mask_in_forward: multiply by the mask in the forward. PLATON's reference does not: it zeroes
            the pruned weights in place at each mask update and lets the optimizer move them in
            between (``False``), so the mask is applied to the weights by the criterion.
    """

    def __init__(self, weight: Tensor, learn_scores: bool = False, track_sensitivity: bool = False,
                 mask_in_forward: bool = True):
        super().__init__()
        self.register_buffer("keep_mask", torch.ones_like(weight))
        self.scores = nn.Parameter(torch.zeros_like(weight)) if learn_scores else None
        self.straight_through = learn_scores
        self.track_sensitivity = track_sensitivity
        self.mask_in_forward = mask_in_forward
        # Σ W ⊙ ∂L/∂W' since the last step, signed: the absolute value is taken by the criterion after
        # averaging over DDP ranks, so it is the sensitivity of the global batch's gradient.
        self.pending_sensitivity: Tensor | None = None

    def forward(self, weight: Tensor) -> Tensor:
        if self.scores is not None and self.straight_through and torch.is_grad_enabled():
            out = _MaskedByScores.apply(weight, self.scores, self.keep_mask)
        elif self.mask_in_forward:
            out = weight * self.keep_mask
        else:
            out = weight.view_as(weight)  # a non-leaf alias: a hook on it does not stay on the parameter
        if self.track_sensitivity and out.requires_grad:
            w = weight.detach()
            out.register_hook(lambda g: self._accumulate(w, g))
        return out

    @torch.no_grad()
    def _accumulate(self, weight: Tensor, grad: Tensor) -> None:
        # The gradient w.r.t. the masked weight W⊙M is dense, so pruned entries keep an importance
        # (the first-order estimate of putting them back) and can return while the schedule runs.
        sensitivity = weight * grad
        if self.pending_sensitivity is None:
            self.pending_sensitivity = sensitivity
        else:
            self.pending_sensitivity += sensitivity

    def take_sensitivity(self) -> Tensor | None:
        """The accumulated W ⊙ ∇ since the last call (None if no backward ran), and reset it."""
        current, self.pending_sensitivity = self.pending_sensitivity, None
        return current
