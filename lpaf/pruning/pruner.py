"""The :class:`Pruner`: masks, schedule and life cycle for every encoder linear of one model, with the
importance delegated to a :class:`~lpaf.pruning.criteria.Criterion`.

Life cycle (torch.ao.pruning style): :meth:`Pruner.prepare` (parametrize, create scores) →
:meth:`Pruner.after_optimizer_update` after every optimizer step while the gradients exist →
:meth:`Pruner.step` at the end of every step (statistics and masks under ``no_grad``) →
:meth:`Pruner.squash` (zeros baked into plain weights; the model saves as a stock checkpoint).
Scores, masks and statistics are parameters / buffers of the parametrization modules, so the
Trainer's checkpoint carries them; :class:`PruningCallback` adds the schedule position through
train_model's stateful-callback protocol, so a resumed run continues exactly.

Under DDP (torchrun) every rank keeps the same state: the scores are parameters, so DDP averages
their gradients like the weights'; magnitude reads the (synchronized) weights; PLATON's sensitivity
is averaged over the ranks before its EMAs — the masks are the same top-k of the same importances
everywhere.
"""

from __future__ import annotations

import math
import time
from typing import Any, Iterable, Literal, get_args

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize
from transformers import TrainerCallback

from lpaf.errors import LpafError
from lpaf.modules import find_encoder_linears
from lpaf.pruning.criteria import (PLATON_DEFAULT_BETAS, PLATON_REFERENCE_WINDOW, Criterion, Magnitude, Movement,
                                   PlatonPerStep, PlatonReference, SoftMovement)
from lpaf.pruning.masked_weight import MaskedWeight
from lpaf.pruning.schedule import CubicSchedule, keep_count
from lpaf.pruning.topk import topk_mask

PruneMethod = Literal["movement", "magnitude", "soft-movement", "platon"]
PruneScope = Literal["local", "global"]
ScoreInit = Literal["zeros", "magnitude"]
PlatonMode = Literal["per-step", "reference"]
METHODS: tuple[str, ...] = get_args(PruneMethod)
SCOPES: tuple[str, ...] = get_args(PruneScope)
SCORE_INITS: tuple[str, ...] = get_args(ScoreInit)
PLATON_MODES: tuple[str, ...] = get_args(PlatonMode)
LEARNED_SCORE_METHODS = frozenset({"movement", "soft-movement"})


class Pruner:
    """Masks, scores and schedule for every encoder linear of one model.

    Args:
        method: importance criterion (lpaf.pruning.criteria).
        density: final fraction of weights kept, in (0, 1].
        scope: "local" keeps round(v·m·n) weights in every matrix; "global" keeps round(v·N) of
            all N encoder weights, wherever the scores are highest.
        initial_warmup / final_warmup: fractions of the training steps at density 1 before
            pruning starts, and at the final density at the end (masks frozen, except in PLATON's
            reference mode, which re-masks every step there).
        scores_lr: learning rate of the score parameters (learned methods).
        score_init: "zeros" (Sanh et al.) or "magnitude": S = score_init_scale · |W| / mean|W|,
            a zero-order prior that the first-order updates then reorder. From a fine-tuned start
            the prior is what works at the mini scale (benchmarks/prune_study/README.md); Sanh et
            al.'s recipe is zeros, from the pre-trained model.
        score_init_scale: see ``score_init``.
        scores_only_warmup: during the initial warm-up only the scores learn (the weights and
            the head stay fixed), so the mask starts from the teacher's first-order signal.
        soft_l1: final weight λ of soft movement's mean sigmoid(S) penalty.
        platon_betas: PLATON's EMA factors for the sensitivity and its uncertainty.
        platon_mode: "per-step" (this project's reading: EMAs every step, masks every
            ``mask_update_every`` steps, frozen at the final warm-up) or "reference" (the reference
            implementation to the letter: :class:`~lpaf.pruning.criteria.PlatonReference`; needs
            scope "global").
        platon_window: ΔT of the reference mode (window length and mask interval).
        mask_update_every: the masks are recomputed every N steps of the schedule (and at the
            step they freeze); 1 = every step. Not used by the reference mode (its ΔT rules).
        zero_pruned_weights: at every mask update, set the pruned entries of the weights themselves
            to 0: a pruned weight loses its value, its sensitivity |W ⊙ ∇W| becomes 0 and it does
            not come back. Default off: pruned weights keep their values behind the mask. (The
            reference mode always zeroes, and lets the optimizer move them again.)
    """

    def __init__(self, method: str, density: float, *, scope: str = "local", initial_warmup: float = 0.1,
                 final_warmup: float = 0.2, scores_lr: float = 1e-2, score_init: str = "magnitude",
                 score_init_scale: float = 1.0, scores_only_warmup: bool = False, soft_l1: float = 10.0,
                 platon_betas: tuple[float, float] = PLATON_DEFAULT_BETAS, mask_update_every: int = 1,
                 zero_pruned_weights: bool = False, platon_mode: str = "per-step",
                 platon_window: int = PLATON_REFERENCE_WINDOW):
        problems = check_settings(method, density, scope, initial_warmup, final_warmup, scores_lr, score_init,
                                  score_init_scale, soft_l1, platon_betas, mask_update_every, platon_mode,
                                  platon_window, zero_pruned_weights)
        if problems:
            raise LpafError("; ".join(problems))
        self.method = method
        self.density = density
        self.scope = scope
        self.initial_warmup = initial_warmup
        self.final_warmup = final_warmup
        self.scores_only_warmup = scores_only_warmup
        self.mask_update_every = mask_update_every
        self.platon_mode = platon_mode if method == "platon" else None
        self.criterion: Criterion = make_criterion(method, scores_lr=scores_lr, score_init=score_init,
                                                   score_init_scale=score_init_scale, soft_l1=soft_l1,
                                                   platon_betas=tuple(platon_betas), platon_mode=platon_mode,
                                                   platon_window=platon_window)
        self.zero_pruned_weights = zero_pruned_weights or self.criterion.zeroes_pruned_weights
        self.modules: dict[str, nn.Module] = {}  # name -> parametrized linear
        self.schedule: CubicSchedule | None = None
        self.last_step = 0
        self.frozen = False
        self.current_density = 1.0
        self.step_times_s: list[float] = []
        self._model: nn.Module | None = None

    # --- life cycle ----------------------------------------------------------------------------

    def prepare(self, model: nn.Module) -> None:
        """Parametrize every encoder linear weight; create the criterion's state and full masks."""
        if self.modules:
            raise RuntimeError("Pruner.prepare called twice")
        linears = find_encoder_linears(model)
        not_linear = [n for n, m in linears.items() if not isinstance(m, nn.Linear)]
        if not_linear:
            raise LpafError(f"pruning needs dense nn.Linear encoder layers; {not_linear[0]} is a "
                            f"{type(linears[not_linear[0]]).__name__} (pass a dense fine-tuned model)")
        c = self.criterion
        for name, linear in linears.items():
            weight = linear.weight
            pm = MaskedWeight(weight.detach(), learn_scores=c.learns_scores, track_sensitivity=c.tracks_sensitivity,
                              mask_in_forward=c.mask_in_forward)
            c.init_state(pm, weight.detach())
            parametrize.register_parametrization(linear, "weight", pm)
            self.modules[name] = linear
        self._model = model

    def set_total_steps(self, total_steps: int) -> None:
        """Fix the schedule once the number of optimizer steps is known (Trainer's max_steps)."""
        self.schedule = CubicSchedule.from_fractions(self.density, total_steps, self.initial_warmup,
                                                     self.final_warmup)

    def param_groups(self) -> list[dict[str, Any]]:
        """The criterion's own optimizer groups (the scores'); empty for score-free methods."""
        return self.criterion.param_groups(self._parametrizations())

    def regularization(self, model: nn.Module | None = None) -> Tensor:
        """The criterion's loss term (soft movement's L1 on sigmoid(S)); zero for the others."""
        return self.criterion.regularization(self._parametrizations(), self.schedule, self.last_step, self.frozen)

    def before_optimizer_step(self) -> None:
        """Scores-only warm-up: drop every non-score gradient so AdamW leaves those weights alone."""
        if not (self.scores_only_warmup and self.schedule is not None
                and self.last_step < self.schedule.initial_warmup_steps and self._model is not None):
            return
        score_ids = {id(p.scores) for p in self._parametrizations().values() if p.scores is not None}
        for p in self._model.parameters():
            if id(p) not in score_ids:
                p.grad = None

    @torch.no_grad()
    def after_optimizer_update(self, step: int) -> None:
        """After optimizer step ``step`` (1-based), gradients still present: the criterion's statistics."""
        if self.frozen:
            return
        self.criterion.after_optimizer_update(self._parametrizations(), self._originals(), step)

    @torch.no_grad()
    def step(self, step: int) -> None:
        """After optimizer step ``step`` (1-based): update importances, then the masks for v(step)."""
        if self.schedule is None:
            raise RuntimeError("Pruner.step before set_total_steps")
        t0 = time.perf_counter()
        self.last_step = step
        pms = self._parametrizations()
        self.criterion.after_step(pms, step)
        if self.frozen:
            return
        if self.criterion.freezes_masks:
            freezing = self.schedule.frozen(step)
            since_start = step - self.schedule.initial_warmup_steps
            if not freezing and since_start > 0 and (since_start - 1) % self.mask_update_every != 0:
                return  # between two mask updates: the masks and the density stay as they are
        else:
            freezing = False
            if not self.criterion.mask_update_due(step, self.schedule):
                return
        density = self.schedule.density(step)
        if density < 1.0 or self.current_density < 1.0:
            self._set_masks(pms, density)
            if self.zero_pruned_weights:
                for name, pm in pms.items():
                    self.modules[name].parametrizations.weight.original.mul_(pm.keep_mask)
        self.current_density = density
        if freezing:
            self.freeze()
        self.step_times_s.append(time.perf_counter() - t0)

    def freeze(self) -> None:
        """Fix the masks: no more straight-through score gradients or sensitivity hooks."""
        self.frozen = True
        for pm in self._parametrizations().values():
            pm.straight_through = False
            pm.track_sensitivity = False
            pm.pending_sensitivity = None
            if pm.scores is not None:
                pm.scores.requires_grad_(False)
                pm.scores.grad = None

    @torch.no_grad()
    def squash(self) -> None:
        """Bake the zeros into plain weights and drop the parametrizations (irreversible)."""
        for name, pm in self._parametrizations().items():
            self.modules[name].parametrizations.weight.original.mul_(pm.keep_mask)
        for linear in self.modules.values():
            parametrize.remove_parametrizations(linear, "weight", leave_parametrized=True)
        self.modules = {}

    # --- results -------------------------------------------------------------------------------

    def masks(self) -> dict[str, Tensor]:
        """Module name -> boolean keep mask (CPU), the factorize stage's input."""
        return {n: pm.keep_mask.detach().to("cpu", copy=True).bool() for n, pm in self._parametrizations().items()}

    def scores(self) -> dict[str, Tensor]:
        """Module name -> final importance (float32, CPU; higher = more important)."""
        originals = self._originals()
        return {n: self.criterion.importance(pm, originals[n]).detach().float().cpu().clone()
                for n, pm in self._parametrizations().items()}

    def density_report(self) -> dict[str, Any]:
        """Achieved keep fraction per matrix and overall (from the masks)."""
        per_matrix = {}
        kept = total = 0
        for name, pm in self._parametrizations().items():
            k, n = int(pm.keep_mask.sum()), pm.keep_mask.numel()
            per_matrix[name] = {"shape": list(pm.keep_mask.shape), "kept": k, "density": k / n}
            kept, total = kept + k, total + n
        return {"overall": kept / total if total else math.nan, "kept": kept, "total": total,
                "per_matrix": per_matrix}

    def step_time_summary(self) -> dict[str, float]:
        t = sorted(self.step_times_s)
        if not t:
            return {"mask_updates": 0}
        return {"mask_updates": len(t), "mask_update_s_mean": sum(t) / len(t), "mask_update_s_median": t[len(t) // 2]}

    # --- resume --------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The schedule position and settings; tensors live in the model's checkpoint."""
        return {"method": self.method, "density": self.density, "scope": self.scope, "last_step": self.last_step,
                "mask_update_every": self.mask_update_every, "zero_pruned_weights": self.zero_pruned_weights,
                "platon_mode": self.platon_mode, "frozen": self.frozen, "current_density": self.current_density,
                "total_steps": self.schedule.total_steps if self.schedule else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # checkpoints from before the reference mode existed were all per-step PLATON runs
        mode = state.get("platon_mode", "per-step" if state.get("method") == "platon" else None)
        saved = (state.get("method"), state.get("density"), state.get("scope"), mode)
        if saved != (self.method, self.density, self.scope, self.platon_mode):
            raise LpafError(f"the checkpoint to resume was written by a pruning run with method={saved[0]}, "
                            f"density={saved[1]}, scope={saved[2]}, platon_mode={saved[3]}; delete its checkpoint "
                            f"directory or choose another --out")
        self.last_step = int(state["last_step"])
        self.current_density = float(state["current_density"])
        if state.get("frozen"):
            self.freeze()

    # --- internals -----------------------------------------------------------------------------

    def _parametrizations(self) -> dict[str, MaskedWeight]:
        if not self.modules:
            raise RuntimeError("the pruner has no parametrized modules (prepare it first; squash ends it)")
        return {n: m.parametrizations.weight[0] for n, m in self.modules.items()}

    def _originals(self) -> dict[str, nn.Parameter]:
        return {n: m.parametrizations.weight.original for n, m in self.modules.items()}

    def _set_masks(self, pms: dict[str, MaskedWeight], density: float) -> None:
        originals = self._originals()
        importance = {n: self.criterion.importance(pm, originals[n]) for n, pm in pms.items()}
        if self.scope == "local":
            for name, pm in pms.items():
                keep = topk_mask(importance[name], keep_count(density, pm.keep_mask.numel()))
                pm.keep_mask.copy_(keep)
            return
        names = list(pms)
        flat = torch.cat([importance[n].detach().reshape(-1).float() for n in names])
        keep_flat = topk_mask(flat, keep_count(density, flat.numel()))
        offset = 0
        for name in names:
            pm = pms[name]
            n = pm.keep_mask.numel()
            pm.keep_mask.copy_(keep_flat[offset:offset + n].view_as(pm.keep_mask))
            offset += n


def make_criterion(method: str, *, scores_lr: float, score_init: str, score_init_scale: float, soft_l1: float,
                   platon_betas: tuple[float, float], platon_mode: str, platon_window: int) -> Criterion:
    if method == "magnitude":
        return Magnitude()
    if method == "movement":
        return Movement(scores_lr, score_init, score_init_scale)
    if method == "soft-movement":
        return SoftMovement(scores_lr, score_init, score_init_scale, soft_l1)
    if platon_mode == "reference":
        return PlatonReference(platon_betas, platon_window)
    return PlatonPerStep(platon_betas)


def check_settings(method: str, density: float, scope: str, initial_warmup: float, final_warmup: float,
                   scores_lr: float, score_init: str, score_init_scale: float, soft_l1: float,
                   platon_betas: Iterable[float], mask_update_every: int = 1, platon_mode: str = "per-step",
                   platon_window: int = PLATON_REFERENCE_WINDOW, zero_pruned_weights: bool = False) -> list[str]:
    """Every problem with the pruning settings, named by flag (reported together, before loading)."""
    problems = []
    if method not in METHODS:
        problems.append(f"--method must be one of {', '.join(METHODS)} (got {method!r})")
    if not (isinstance(density, (int, float)) and 0.0 < density <= 1.0):
        problems.append(f"--density must be in (0, 1] (got {density})")
    if scope not in SCOPES:
        problems.append(f"--scope must be one of {', '.join(SCOPES)} (got {scope!r})")
    for flag, value in (("--initial-warmup", initial_warmup), ("--final-warmup", final_warmup)):
        if not 0.0 <= value < 1.0:
            problems.append(f"{flag} must be in [0, 1) (got {value})")
    if 0.0 <= initial_warmup < 1.0 and 0.0 <= final_warmup < 1.0 and initial_warmup + final_warmup >= 1.0:
        problems.append(f"--initial-warmup + --final-warmup must be < 1 (got {initial_warmup} + {final_warmup})")
    if not scores_lr > 0:
        problems.append(f"--scores-lr must be > 0 (got {scores_lr})")
    if score_init not in SCORE_INITS:
        problems.append(f"--score-init must be one of {', '.join(SCORE_INITS)} (got {score_init!r})")
    if not score_init_scale >= 0:
        problems.append(f"--score-init-scale must be >= 0 (got {score_init_scale})")
    if not soft_l1 >= 0:
        problems.append(f"--soft-l1 must be >= 0 (got {soft_l1})")
    if not all(0.0 <= b < 1.0 for b in platon_betas):
        problems.append(f"--platon-beta1/--platon-beta2 must be in [0, 1) (got {tuple(platon_betas)})")
    if isinstance(mask_update_every, bool) or not isinstance(mask_update_every, int) or mask_update_every < 1:
        problems.append(f"--mask-update-every must be an integer >= 1 (got {mask_update_every})")
    if platon_mode not in PLATON_MODES:
        problems.append(f"--platon-mode must be one of {', '.join(PLATON_MODES)} (got {platon_mode!r})")
    if isinstance(platon_window, bool) or not isinstance(platon_window, int) or platon_window < 1:
        problems.append(f"--platon-window must be an integer >= 1 (got {platon_window})")
    if method == "platon" and platon_mode == "reference":
        if scope != "global":
            problems.append(f"--platon-mode reference takes one global top-k, as the reference does: pass "
                            f"--scope global (got --scope {scope})")
        if mask_update_every != 1:
            problems.append(f"--platon-mode reference updates the masks every --platon-window steps; "
                            f"--mask-update-every must stay 1 (got {mask_update_every})")
        if zero_pruned_weights:
            problems.append("--platon-mode reference already zeroes pruned weights at each mask update; "
                            "drop --zero-pruned-weights")
    return problems


class PruningCallback(TrainerCallback):
    """Drives a :class:`Pruner` from the Trainer: schedule length, warm-up gradients, statistics, masks.

    Implements the stateful-callback protocol of ``train_model`` (state_dict / load_state_dict),
    so the schedule position is restored on resume together with the model's score tensors.
    """

    def __init__(self, pruner: Pruner):
        self.pruner = pruner

    def on_train_begin(self, args, state, control, **kwargs):
        self.pruner.set_total_steps(state.max_steps)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.pruner.before_optimizer_step()

    def on_optimizer_step(self, args, state, control, **kwargs):
        # the Trainer increments global_step after this callback: this is step global_step + 1
        self.pruner.after_optimizer_update(state.global_step + 1)

    def on_step_end(self, args, state, control, **kwargs):
        self.pruner.step(state.global_step)

    def state_dict(self) -> dict[str, Any]:
        return self.pruner.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pruner.load_state_dict(state)
