"""Importance criteria of unstructured pruning, one small class each behind :class:`Criterion`.

- :class:`Magnitude` (zero-order): |W|.
- :class:`Movement` (first-order, Sanh et al. 2020): a learned score S per weight; the forward uses
  W ⊙ TopK(S) and S accumulates −W ⊙ ∂L/∂W straight through the TopK, under its own optimizer group.
- :class:`SoftMovement`: movement plus an L1 penalty on sigmoid(S), ramped with the schedule. The
  keep set is still the top v(t) of the scores, so table rows compare at equal parameters.
- :class:`PlatonPerStep` (this project's reading of PLATON, Zhang et al. 2022): the EMAs of the
  sensitivity |W ⊙ ∇W| and of its uncertainty are updated every optimizer step from that step's
  batch; masks follow the Pruner's ``mask_update_every`` and freeze at the final warm-up.
- :class:`PlatonReference`: PLATON as QingruZhang/PLATON's GLUE code runs it (see the class).

The :class:`~lpaf.pruning.pruner.Pruner` owns the schedule and the masks; a criterion only says how
important each weight is, what state it keeps, and (for the reference PLATON) when masks are due.
"""

from __future__ import annotations

from typing import Any, ClassVar, Mapping

import torch
from torch import Tensor, nn

from lpaf import distributed as dist
from lpaf.pruning.masked_weight import MaskedWeight
from lpaf.pruning.schedule import CubicSchedule

# PLATON's per-task (beta1, beta2) as its published scripts set them (QingruZhang/PLATON,
# GLUE/scripts/run_bert_glue.sh: every task uses --deltaT 10 and beta1 0.85). Tasks the scripts do
# not run (SQuAD) take the pair of the repository's README example (GLUE/README.md line 28).
PLATON_REFERENCE_BETAS: dict[str, tuple[float, float]] = {
    "mnli": (0.85, 0.85), "qqp": (0.85, 0.85), "sst2": (0.85, 0.85), "stsb": (0.85, 0.85),
    "qnli": (0.85, 0.90), "rte": (0.85, 0.95), "mrpc": (0.85, 0.95), "cola": (0.85, 0.95),
}
PLATON_DEFAULT_BETAS: tuple[float, float] = (0.85, 0.95)
PLATON_REFERENCE_WINDOW = 10  # ΔT of every published script


def platon_betas_for(task: str | None, mode: str) -> tuple[float, float]:
    """The betas a PLATON run uses when none are given: per task in reference mode, else the default."""
    if mode == "reference" and task in PLATON_REFERENCE_BETAS:
        return PLATON_REFERENCE_BETAS[task]
    return PLATON_DEFAULT_BETAS


class Criterion:
    """How important each weight is. Subclasses override what they need; the defaults do nothing."""

    name: ClassVar[str] = ""
    learns_scores: ClassVar[bool] = False
    tracks_sensitivity: ClassVar[bool] = False
    mask_in_forward: ClassVar[bool] = True
    # False: the masks are recomputed up to the last step (the reference PLATON), not frozen at the
    # final warm-up, and :meth:`mask_update_due` decides when.
    freezes_masks: ClassVar[bool] = True
    zeroes_pruned_weights: ClassVar[bool] = False

    def init_state(self, pm: MaskedWeight, weight: Tensor) -> None:
        """Create this criterion's scores / statistics on the parametrization of ``weight``."""

    def importance(self, pm: MaskedWeight, weight: Tensor) -> Tensor:
        raise NotImplementedError

    def after_optimizer_update(self, pms: Mapping[str, MaskedWeight], weights: Mapping[str, nn.Parameter],
                               step: int) -> None:
        """Called after optimizer step ``step`` while the gradients are still there (before zero_grad)."""

    def after_step(self, pms: Mapping[str, MaskedWeight], step: int) -> None:
        """Called at the end of optimizer step ``step``, before the masks are updated."""

    def mask_update_due(self, step: int, schedule: CubicSchedule) -> bool:
        return True

    def param_groups(self, pms: Mapping[str, MaskedWeight]) -> list[dict[str, Any]]:
        return []

    def regularization(self, pms: Mapping[str, MaskedWeight], schedule: CubicSchedule | None, step: int,
                       frozen: bool) -> Tensor:
        device = next(iter(pms.values())).keep_mask.device
        return torch.zeros((), device=device)


class Magnitude(Criterion):
    name = "magnitude"

    def importance(self, pm: MaskedWeight, weight: Tensor) -> Tensor:
        return weight.abs()


class Movement(Criterion):
    """Learned scores. ``score_init``: "zeros" (Sanh et al.) or "magnitude" (S = scale·|W|/mean|W|, a
    zero-order prior that the first-order updates then reorder; see benchmarks/prune_study)."""

    name = "movement"
    learns_scores = True

    def __init__(self, scores_lr: float, score_init: str, score_init_scale: float):
        self.scores_lr = scores_lr
        self.score_init = score_init
        self.score_init_scale = score_init_scale

    @torch.no_grad()
    def init_state(self, pm: MaskedWeight, weight: Tensor) -> None:
        if self.score_init == "magnitude":
            magnitude = weight.detach().abs()
            pm.scores.copy_(self.score_init_scale * magnitude / magnitude.mean().clamp_min(1e-12))

    def importance(self, pm: MaskedWeight, weight: Tensor) -> Tensor:
        return pm.scores

    def param_groups(self, pms: Mapping[str, MaskedWeight]) -> list[dict[str, Any]]:
        """The scores' optimizer group: own learning rate, no weight decay."""
        return [{"params": [pm.scores for pm in pms.values()], "lr": self.scores_lr, "weight_decay": 0.0}]


class SoftMovement(Movement):
    """Movement with λ(t) · mean over matrices of mean sigmoid(S) added to the loss (λ ramps with v(t))."""

    name = "soft-movement"

    def __init__(self, scores_lr: float, score_init: str, score_init_scale: float, soft_l1: float):
        super().__init__(scores_lr, score_init, score_init_scale)
        self.soft_l1 = soft_l1

    def regularization(self, pms, schedule, step, frozen) -> Tensor:
        device = next(iter(pms.values())).keep_mask.device
        if frozen or schedule is None or self.soft_l1 == 0:
            return torch.zeros((), device=device)
        lam = self.soft_l1 * schedule.progress(step)
        if lam == 0:
            return torch.zeros((), device=device)
        return lam * torch.stack([torch.sigmoid(pm.scores).mean() for pm in pms.values()]).mean()


class _Platon(Criterion):
    """Shared by both PLATON readings: importance = EMA sensitivity × EMA uncertainty."""

    def __init__(self, betas: tuple[float, float]):
        self.betas = tuple(betas)

    def init_state(self, pm: MaskedWeight, weight: Tensor) -> None:
        pm.register_buffer("sensitivity_ema", torch.zeros_like(weight))
        pm.register_buffer("uncertainty_ema", torch.zeros_like(weight))

    def importance(self, pm: MaskedWeight, weight: Tensor) -> Tensor:
        return pm.sensitivity_ema * pm.uncertainty_ema

    def _update_emas(self, pm: MaskedWeight, sensitivity: Tensor) -> None:
        beta1, beta2 = self.betas
        pm.sensitivity_ema.mul_(beta1).add_(sensitivity, alpha=1 - beta1)
        pm.uncertainty_ema.mul_(beta2).add_((sensitivity - pm.sensitivity_ema).abs_(), alpha=1 - beta2)


class PlatonPerStep(_Platon):
    """This project's per-step reading: the EMAs take |W ⊙ ∇W| of every optimizer step.

    W is the weight the forward used and ∇ the gradient w.r.t. the masked weight (dense, so pruned
    entries keep an importance). Under DDP the hook saw this rank's gradient; DDP averages gradients
    over the ranks, so W ⊙ ∇ is averaged the same way before |·| (W is the same everywhere).
    """

    name = "platon"
    tracks_sensitivity = True

    @torch.no_grad()
    def after_step(self, pms: Mapping[str, MaskedWeight], step: int) -> None:
        dist.all_reduce_mean_(pm.pending_sensitivity for pm in pms.values() if pm.pending_sensitivity is not None)
        for pm in pms.values():
            current = pm.take_sensitivity()
            if current is not None:
                self._update_emas(pm, current.abs_())


class PlatonReference(_Platon):
    """PLATON as its reference implementation runs it (QingruZhang/PLATON, commit c1776cf1, GLUE/).

    Read from ``GLUE/mt_dnn/prune_model.py`` (``MTDNNModel.update``: ``optimizer.step()`` line 417,
    then ``update_ipt_with_local_windiw()`` line 423, then ``zero_grad()`` line 424; the window
    itself lines 442-467) and ``GLUE/train.py`` (``schedule_threshold_comb`` lines 278-300,
    ``update_mask_threshold`` 303-316, ``mask`` 319-324, the training loop 535-545); per-task
    betas and ΔT from ``GLUE/scripts/run_bert_glue.sh``:

    - after each optimizer step t (1-based), *before* the gradients are cleared, the sensitivity is
      s_t = |p ⊙ p.grad| with p the weight *after* the step and p.grad its (clipped, all-reduced)
      gradient;
    - a window of ΔT steps averages s: with j = t mod ΔT, if j = 0 the EMAs take the window average
      Ī ← β1·Ī + (1−β1)·ipt, Ū ← β2·Ū + (1−β2)·|ipt − Ī| (with the *new* Ī) and the window restarts
      at ipt = s_t; otherwise ipt ← (ipt·j + s_t)/(j+1). ipt starts at 0, so the first window
      (steps 1..ΔT−1) is divided by ΔT, as in the reference. No bias correction;
    - masks: none while t ≤ the initial warm-up; during the cubic phase at every t with t mod ΔT = 0;
      once t > T − final warm-up, at *every* step at the final ratio: the masks are never frozen,
      the EMAs keep updating and a weight can still swap in or out until the last step;
    - one global threshold over all pruned matrices (``--scope global``), kept entries are the top
      importance Ī·Ū;
    - the mask is applied by zeroing the pruned weights in place (``masked_fill_``), not in the
      forward: between two mask updates the optimizer moves pruned weights off zero with their full
      gradient, the forward uses them, and the next update may keep them.

    Differences that remain (documented, not switchable): the reference also prunes the biases of
    the matched modules (lpaf prunes and counts weight matrices only); it keeps every entry at or
    above the ``kthvalue`` threshold (ties may keep a few more), where lpaf keeps exactly
    round(v·N) with deterministic ties; its optimizer is Adamax, lpaf's the Trainer's AdamW.
    """

    name = "platon"
    mask_in_forward = False
    freezes_masks = False
    zeroes_pruned_weights = True

    def __init__(self, betas: tuple[float, float], window_steps: int = PLATON_REFERENCE_WINDOW):
        super().__init__(betas)
        self.window_steps = window_steps

    def init_state(self, pm: MaskedWeight, weight: Tensor) -> None:
        super().init_state(pm, weight)
        pm.register_buffer("window_sensitivity", torch.zeros_like(weight))

    @torch.no_grad()
    def after_optimizer_update(self, pms, weights, step: int) -> None:
        local = step % self.window_steps
        for name, pm in pms.items():
            grad = weights[name].grad
            if grad is None:
                continue
            self.accumulate(pm, (weights[name].detach() * grad).abs_(), local)

    def accumulate(self, pm: MaskedWeight, sensitivity: Tensor, local: int) -> None:
        """One step of the window average / EMA update for one matrix (``local`` = t mod ΔT)."""
        if local == 0:
            self._update_emas(pm, pm.window_sensitivity)
            pm.window_sensitivity.copy_(sensitivity)
        else:
            pm.window_sensitivity.mul_(local).add_(sensitivity).div_(local + 1)

    def mask_update_due(self, step: int, schedule: CubicSchedule) -> bool:
        if step <= schedule.initial_warmup_steps:
            return False
        if step > schedule.total_steps - schedule.final_warmup_steps:
            return True
        return step % self.window_steps == 0
