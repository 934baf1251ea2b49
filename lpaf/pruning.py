"""Unstructured pruning of the encoder linears: keep masks as parametrizations, four importance
scores, and the cubic keep-ratio schedule (docs/METHOD.md, Stage 1).

Every encoder linear weight W (Q, K, V, attention-output, FFN-in, FFN-out) is parametrized as
``W ⊙ M`` with ``torch.nn.utils.parametrize``; M is a 0/1 ``keep_mask`` buffer chosen from an
importance score:

- ``movement`` (first-order, Sanh et al. 2020): a learned score matrix S per weight; the forward
  uses W ⊙ TopK(S, v) and the backward passes ∂L/∂S = ∂L/∂(W⊙M) ⊙ W straight through the TopK,
  so S accumulates −W ⊙ ∂L/∂W under its own optimizer group (learning rate ``scores_lr``);
- ``magnitude`` (zero-order): |W|;
- ``soft-movement``: movement plus an L1 penalty on sigmoid(S) (``regularization``, fed to the
  training loss), ramped with the schedule. The keep set is still the top v(t) of the scores,
  which is the sigmoid threshold that yields density v(t), so table rows compare at equal
  parameters;
- ``platon`` (Zhang et al. 2022): EMA of the sensitivity |W ⊙ ∂L/∂W| times the EMA of its
  uncertainty |I − Ī|; needs no learned scores, only the gradient, caught by a tensor hook.

Life cycle (torch.ao.pruning style): :meth:`Pruner.prepare` (parametrize, create scores) →
:meth:`Pruner.step` after every optimizer step (scores and masks updated under ``no_grad``) →
:meth:`Pruner.squash` (zeros baked into plain weights; the model saves as a stock checkpoint).
Scores, masks and PLATON's EMAs are parameters / buffers of the parametrization modules, so the
Trainer's checkpoint carries them; :class:`PruningCallback` adds the schedule position through
train_model's stateful-callback protocol, so a resumed run continues exactly.

Under DDP (torchrun) every rank keeps the same state: the scores are parameters, so DDP averages
their gradients like the weights'; magnitude reads the (synchronized) weights; PLATON's
sensitivity comes from a hook on the *local* gradient, so :meth:`Pruner.step` averages it over the
ranks before the EMAs — the masks are then the same top-k of the same importances everywhere.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Iterable, Literal, get_args

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize
from transformers import TrainerCallback

from lpaf import distributed as dist
from lpaf.errors import LpafError
from lpaf.modules import find_encoder_linears

PruneMethod = Literal["movement", "magnitude", "soft-movement", "platon"]
PruneScope = Literal["local", "global"]
ScoreInit = Literal["zeros", "magnitude"]
METHODS: tuple[str, ...] = get_args(PruneMethod)
SCOPES: tuple[str, ...] = get_args(PruneScope)
SCORE_INITS: tuple[str, ...] = get_args(ScoreInit)
LEARNED_SCORE_METHODS = frozenset({"movement", "soft-movement"})


# --------------------------------------------------------------------------------------------
# Schedule
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CubicSchedule:
    """Keep ratio v(t) of Zhu & Gupta (2017) with an initial and a final warm-up (in steps).

    v(t) = 1 for t <= t_i; v_f + (1 − v_f)(1 − (t − t_i)/(T − t_i − t_f))³ until T − t_f;
    v_f from then on, where the masks are frozen. With no room between the warm-ups the
    density drops to v_f in one step after t_i (one-shot pruning).
    """

    final_density: float
    total_steps: int
    initial_warmup_steps: int = 0
    final_warmup_steps: int = 0

    def __post_init__(self):
        if not 0.0 < self.final_density <= 1.0:
            raise ValueError(f"final_density must be in (0, 1], got {self.final_density}")
        if self.total_steps < 1 or self.initial_warmup_steps < 0 or self.final_warmup_steps < 0:
            raise ValueError(f"bad schedule steps: total {self.total_steps}, initial warm-up "
                             f"{self.initial_warmup_steps}, final warm-up {self.final_warmup_steps}")

    @classmethod
    def from_fractions(cls, final_density: float, total_steps: int, initial_warmup: float,
                       final_warmup: float) -> CubicSchedule:
        """Warm-ups given as fractions of the training steps (what PruneArgs exposes)."""
        ti = min(round(initial_warmup * total_steps), total_steps - 1)  # pruning must start
        tf = min(round(final_warmup * total_steps), total_steps - ti - 1)
        return cls(final_density, total_steps, max(ti, 0), max(tf, 0))

    @property
    def freeze_step(self) -> int:
        """First step from which the density is final and the masks stay fixed."""
        return max(self.total_steps - self.final_warmup_steps, self.initial_warmup_steps + 1)

    def density(self, step: int) -> float:
        if step <= self.initial_warmup_steps:
            return 1.0
        if step >= self.freeze_step:
            return self.final_density
        span = self.freeze_step - self.initial_warmup_steps
        progress = (step - self.initial_warmup_steps) / span
        return self.final_density + (1.0 - self.final_density) * (1.0 - progress) ** 3

    def progress(self, step: int) -> float:
        """0 before pruning starts, 1 at the final density (ramps soft movement's L1 weight)."""
        if self.final_density >= 1.0:
            return 0.0
        return (1.0 - self.density(step)) / (1.0 - self.final_density)

    def frozen(self, step: int) -> bool:
        return step >= self.freeze_step


def keep_count(density: float, numel: int) -> int:
    """Weights a matrix (or the global pool) keeps at ``density``: round(v·m·n)."""
    return min(numel, max(0, int(round(density * numel))))


# --------------------------------------------------------------------------------------------
# Top-k with deterministic ties
# --------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------
# The parametrization
# --------------------------------------------------------------------------------------------

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
    """Parametrization ``weight -> weight ⊙ keep_mask`` that owns the pruning state of one matrix.

    ``scores`` (learned methods) is an ``nn.Parameter``; ``keep_mask`` and PLATON's
    ``sensitivity_ema`` / ``uncertainty_ema`` are persistent buffers — all of it lands in the
    model's state dict, so a Trainer checkpoint restores it. Shapes are the weight's (out x in).
    """

    def __init__(self, weight: Tensor, learn_scores: bool, track_sensitivity: bool):
        super().__init__()
        self.register_buffer("keep_mask", torch.ones_like(weight))
        self.scores = nn.Parameter(torch.zeros_like(weight)) if learn_scores else None
        self.track_sensitivity = track_sensitivity
        if track_sensitivity:
            self.register_buffer("sensitivity_ema", torch.zeros_like(weight))
            self.register_buffer("uncertainty_ema", torch.zeros_like(weight))
        self.straight_through = learn_scores
        # Σ W ⊙ ∂L/∂W' since the last step(), signed: the absolute value is taken in Pruner.step, after
        # averaging over DDP ranks, so it is the sensitivity of the global batch's gradient.
        self.pending_sensitivity: Tensor | None = None

    def forward(self, weight: Tensor) -> Tensor:
        if self.scores is not None and self.straight_through and torch.is_grad_enabled():
            out = _MaskedByScores.apply(weight, self.scores, self.keep_mask)
        else:
            out = weight * self.keep_mask
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


# --------------------------------------------------------------------------------------------
# The pruner
# --------------------------------------------------------------------------------------------

class Pruner:
    """Masks, scores and schedule for every encoder linear of one model.

    Args:
        method: importance score (see the module docstring).
        density: final fraction of weights kept, in (0, 1].
        scope: "local" keeps round(v·m·n) weights in every matrix; "global" keeps round(v·N) of
            all N encoder weights, wherever the scores are highest.
        initial_warmup / final_warmup: fractions of the training steps at density 1 before
            pruning starts, and at the final density with frozen masks at the end.
        scores_lr: learning rate of the score parameters (learned methods).
        score_init: "zeros" (Sanh et al.) or "magnitude": S = score_init_scale · |W| / mean|W|,
            a zero-order prior that the first-order updates then reorder. The default (magnitude,
            1.0) is what worked on MiniLM / 4k SST-2 / 250 steps: from zeros the Adam-driven
            scores stay a random walk (random masks, chance accuracy), and a weaker prior (0.1)
            collapsed from a teacher that had fitted its training set, whose first-order signal
            is pure noise at the start (benchmarks/prune_study/README.md).
        score_init_scale: see ``score_init``.
        scores_only_warmup: during the initial warm-up only the scores learn (the weights and
            the head stay fixed), so the mask starts from the teacher's first-order signal.
        soft_l1: final weight λ of soft movement's mean sigmoid(S) penalty.
        platon_betas: PLATON's EMA factors for the sensitivity and its uncertainty.
        mask_update_every: ΔT, the masks are recomputed every ΔT steps of the schedule (and at the
            step they freeze); 1 = every step (this project's default), 10 = PLATON's reference.
        zero_pruned_weights: at every mask update, set the pruned entries of the weights themselves
            to 0 (PLATON's reference ``masked_fill_``): a pruned weight loses its value, its
            sensitivity |W ⊙ ∇W| becomes 0 and it does not come back. Default off: pruned weights
            keep their values behind the mask and can return while the schedule runs.
    """

    def __init__(self, method: str, density: float, *, scope: str = "local", initial_warmup: float = 0.1,
                 final_warmup: float = 0.2, scores_lr: float = 1e-2, score_init: str = "magnitude",
                 score_init_scale: float = 1.0, scores_only_warmup: bool = False, soft_l1: float = 10.0,
                 platon_betas: tuple[float, float] = (0.85, 0.95), mask_update_every: int = 1,
                 zero_pruned_weights: bool = False):
        problems = check_settings(method, density, scope, initial_warmup, final_warmup, scores_lr, score_init,
                                  score_init_scale, soft_l1, platon_betas, mask_update_every)
        if problems:
            raise LpafError("; ".join(problems))
        self.method = method
        self.density = density
        self.scope = scope
        self.initial_warmup = initial_warmup
        self.final_warmup = final_warmup
        self.scores_lr = scores_lr
        self.score_init = score_init
        self.score_init_scale = score_init_scale
        self.scores_only_warmup = scores_only_warmup
        self.soft_l1 = soft_l1
        self.platon_betas = platon_betas
        self.mask_update_every = mask_update_every
        self.zero_pruned_weights = zero_pruned_weights
        self.modules: dict[str, nn.Module] = {}  # name -> parametrized linear
        self.schedule: CubicSchedule | None = None
        self.last_step = 0
        self.frozen = False
        self.current_density = 1.0
        self.step_times_s: list[float] = []
        self._model: nn.Module | None = None

    # --- life cycle ----------------------------------------------------------------------------

    def prepare(self, model: nn.Module) -> None:
        """Parametrize every encoder linear weight; create scores (initialised) and full masks."""
        if self.modules:
            raise RuntimeError("Pruner.prepare called twice")
        linears = find_encoder_linears(model)
        not_linear = [n for n, m in linears.items() if not isinstance(m, nn.Linear)]
        if not_linear:
            raise LpafError(f"pruning needs dense nn.Linear encoder layers; {not_linear[0]} is a "
                            f"{type(linears[not_linear[0]]).__name__} (pass a dense fine-tuned model)")
        learn = self.method in LEARNED_SCORE_METHODS
        for name, linear in linears.items():
            weight = linear.weight
            pm = MaskedWeight(weight.detach(), learn_scores=learn, track_sensitivity=self.method == "platon")
            if learn and self.score_init == "magnitude":
                with torch.no_grad():
                    magnitude = weight.detach().abs()
                    pm.scores.copy_(self.score_init_scale * magnitude / magnitude.mean().clamp_min(1e-12))
            parametrize.register_parametrization(linear, "weight", pm)
            self.modules[name] = linear
        self._model = model

    def set_total_steps(self, total_steps: int) -> None:
        """Fix the schedule once the number of optimizer steps is known (Trainer's max_steps)."""
        self.schedule = CubicSchedule.from_fractions(self.density, total_steps, self.initial_warmup,
                                                     self.final_warmup)

    def param_groups(self) -> list[dict[str, Any]]:
        """The scores' optimizer group (own lr, no weight decay); empty for score-free methods."""
        scores = [p.scores for p in self._parametrizations().values() if p.scores is not None]
        return [{"params": scores, "lr": self.scores_lr, "weight_decay": 0.0}] if scores else []

    def regularization(self, model: nn.Module | None = None) -> Tensor:
        """Soft movement's λ(t) · mean over matrices of mean sigmoid(S); zero for other methods."""
        pms = self._parametrizations()
        device = next(iter(pms.values())).keep_mask.device
        if self.method != "soft-movement" or self.frozen or self.schedule is None or self.soft_l1 == 0:
            return torch.zeros((), device=device)
        lam = self.soft_l1 * self.schedule.progress(self.last_step)
        if lam == 0:
            return torch.zeros((), device=device)
        penalty = torch.stack([torch.sigmoid(p.scores).mean() for p in pms.values()]).mean()
        return lam * penalty

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
    def step(self, step: int) -> None:
        """After optimizer step ``step`` (1-based): update importances, then the masks for v(step)."""
        if self.schedule is None:
            raise RuntimeError("Pruner.step before set_total_steps")
        t0 = time.perf_counter()
        self.last_step = step
        pms = self._parametrizations()
        if self.method == "platon":
            self._update_platon(pms)
        if self.frozen:
            return
        freezing = self.schedule.frozen(step)
        since_start = step - self.schedule.initial_warmup_steps
        if not freezing and since_start > 0 and (since_start - 1) % self.mask_update_every != 0:
            return  # between two mask updates (ΔT > 1): the masks and the density stay as they are
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
        for linear in self.modules.values():
            parametrize.remove_parametrizations(linear, "weight", leave_parametrized=True)
        self.modules = {}

    # --- results -------------------------------------------------------------------------------

    def masks(self) -> dict[str, Tensor]:
        """Module name -> boolean keep mask (CPU), the factorize stage's input."""
        return {n: pm.keep_mask.detach().to("cpu", copy=True).bool() for n, pm in self._parametrizations().items()}

    def scores(self) -> dict[str, Tensor]:
        """Module name -> final importance (float32, CPU; higher = more important)."""
        return {n: self._importance(pm, self.modules[n]).detach().float().cpu().clone()
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
                "frozen": self.frozen, "current_density": self.current_density,
                "total_steps": self.schedule.total_steps if self.schedule else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = (state.get("method"), state.get("density"), state.get("scope"))
        if saved != (self.method, self.density, self.scope):
            raise LpafError(f"the checkpoint to resume was written by a pruning run with method={saved[0]}, "
                            f"density={saved[1]}, scope={saved[2]}; delete its checkpoint directory or choose "
                            f"another --out")
        self.last_step = int(state["last_step"])
        self.current_density = float(state["current_density"])
        if state.get("frozen"):
            self.freeze()

    # --- internals -----------------------------------------------------------------------------

    def _parametrizations(self) -> dict[str, MaskedWeight]:
        if not self.modules:
            raise RuntimeError("the pruner has no parametrized modules (prepare it first; squash ends it)")
        return {n: m.parametrizations.weight[0] for n, m in self.modules.items()}

    def _importance(self, pm: MaskedWeight, linear: nn.Module) -> Tensor:
        if pm.scores is not None:
            return pm.scores
        if self.method == "platon":
            return pm.sensitivity_ema * pm.uncertainty_ema
        return linear.parametrizations.weight.original.abs()

    def _update_platon(self, pms: dict[str, MaskedWeight]) -> None:
        beta1, beta2 = self.platon_betas
        # The hook saw this rank's gradient; DDP averages gradients over the ranks, so average
        # W ⊙ ∇ the same way (W is the same everywhere) before |·|. Same modules on every rank.
        dist.all_reduce_mean_(pm.pending_sensitivity for pm in pms.values() if pm.pending_sensitivity is not None)
        for pm in pms.values():
            current = pm.pending_sensitivity
            pm.pending_sensitivity = None
            if current is None:
                continue
            current.abs_()
            pm.sensitivity_ema.mul_(beta1).add_(current, alpha=1 - beta1)
            pm.uncertainty_ema.mul_(beta2).add_((current - pm.sensitivity_ema).abs_(), alpha=1 - beta2)

    def _set_masks(self, pms: dict[str, MaskedWeight], density: float) -> None:
        importance = {n: self._importance(pm, self.modules[n]) for n, pm in pms.items()}
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


def check_settings(method: str, density: float, scope: str, initial_warmup: float, final_warmup: float,
                   scores_lr: float, score_init: str, score_init_scale: float, soft_l1: float,
                   platon_betas: Iterable[float], mask_update_every: int = 1) -> list[str]:
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
    return problems


class PruningCallback(TrainerCallback):
    """Drives a :class:`Pruner` from the Trainer: schedule length, warm-up gradients, mask steps.

    Implements the stateful-callback protocol of ``train_model`` (state_dict / load_state_dict),
    so the schedule position is restored on resume together with the model's score tensors.
    """

    def __init__(self, pruner: Pruner):
        self.pruner = pruner

    def on_train_begin(self, args, state, control, **kwargs):
        self.pruner.set_total_steps(state.max_steps)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.pruner.before_optimizer_step()

    def on_step_end(self, args, state, control, **kwargs):
        self.pruner.step(state.global_step)

    def state_dict(self) -> dict[str, Any]:
        return self.pruner.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pruner.load_state_dict(state)
