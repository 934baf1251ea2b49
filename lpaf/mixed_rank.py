"""Mixed-rank fine-tuning (LPAF Stage 3): train low-rank factors with the full-rank matrix in reach.

Plain re-training of a factorized model starts from a network whose every layer lost part of its
matrix at once. Mixed-rank fine-tuning eases that start: during training each factorized module
keeps its factors ``A·B`` *and* the full-rank source matrix ``W_s`` (the pruned matrix of a
prune→factorize chain, the dense matrix for svd/fwsvd of the dense model). At each optimizer step
each module independently runs ``W_s`` with probability p(t), otherwise ``A·B``; p(t) anneals from
p₀ to 0 over the first ``anneal_fraction`` of the steps, after which training (and *every*
evaluation, i.e. ``module.eval()``) uses ``A·B`` only. At the end :func:`detach` swaps the original
:class:`~lpaf.lowrank.LowRankLinear` modules back, so the saved model is the plain compressed
format and holds no full-rank weight.

Gradients: in a step where a module runs ``W_s`` its ``A`` and ``B`` get no gradient *from that
module* (they are not in its forward); the module's bias (shared: ``A.bias``) does, and the
gradient flows through ``W_s`` to every other module, so over a step that mixes both branches
the factors of all modules running ``A·B`` are trained in the context of full-rank neighbours.
``W_s`` is a frozen buffer by default; with ``trainable_source`` it is a parameter whose pruned
(zero) entries stay zero (their gradient is masked).

A second reading of "mixed-rank" is kept in reach as scheme ``rank-sampling`` (nested-dropout
style): each module's factors are over-parameterized with extra rank components taken from the
top singular directions of the residual ``W_s − A·B``; with probability p(t) a module runs rank
r' = r + k (k uniform in 1..extra), else rank r. Extras are trained with the rest and dropped at
the end, so the same annealing, evaluation and saving rules apply.

Sampling is driven by :class:`MixedRankScheduler`, a ``TrainerCallback`` that owns a seeded
``torch.Generator``; its state (and the per-step log) is saved in every checkpoint, so a resumed
run draws exactly what an uninterrupted run would have drawn. Under DDP every rank seeds its
generator with the same seed and draws at every step, so all ranks run the same branches; DDP is
told that parameters may go without gradient (``find_unused_parameters``, retrain stage).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import TrainerCallback

from lpaf.errors import LpafError

Scheme = Literal["mixed-rank", "rank-sampling"]
Anneal = Literal["linear", "cosine"]

SOURCE_WEIGHTS_FILE = "source_weights.safetensors"
GENERATOR_STATE_FILE = "mixed_rank_generator.safetensors"


# --------------------------------------------------------------------------------------------
# The p(t) schedule
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AnnealSchedule:
    """p(t): probability that a module runs its expanded branch (W_s, or rank r' > r) at step t.

    p(0) = p0, falling to 0 at step ``anneal_fraction * total_steps`` (linear or half-cosine) and
    0 afterwards. Steps are 0-based optimizer steps: step t is the (t+1)-th update.
    """

    p0: float = 1.0
    anneal_fraction: float = 0.5
    anneal: Anneal = "linear"

    def __post_init__(self):
        problems = []
        if not (isinstance(self.p0, (int, float)) and 0.0 <= self.p0 <= 1.0):
            problems.append(f"--p0 must be in [0, 1] (got {self.p0})")
        if not (isinstance(self.anneal_fraction, (int, float)) and 0.0 < self.anneal_fraction <= 1.0):
            problems.append(f"--anneal-fraction must be in (0, 1] (got {self.anneal_fraction})")
        if self.anneal not in ("linear", "cosine"):
            problems.append(f"--anneal must be linear or cosine (got {self.anneal!r})")
        if problems:
            raise LpafError("; ".join(problems))

    def anneal_steps(self, total_steps: int) -> float:
        return self.anneal_fraction * total_steps

    def p(self, step: int, total_steps: int) -> float:
        span = self.anneal_steps(total_steps)
        if total_steps <= 0 or step >= span:
            return 0.0
        progress = step / span
        if self.anneal == "linear":
            return self.p0 * (1.0 - progress)
        return self.p0 * 0.5 * (1.0 + math.cos(math.pi * progress))

    def sample_points(self, total_steps: int) -> list[dict[str, float]]:
        """A few (step, p) pairs that pin the schedule down in metrics.json."""
        span = self.anneal_steps(total_steps)
        steps = sorted({0, int(span * 0.25), int(span * 0.5), int(span * 0.75), max(0, math.ceil(span) - 1),
                        min(math.ceil(span), max(total_steps - 1, 0)), max(total_steps - 1, 0)})
        return [{"step": s, "p": round(self.p(s, total_steps), 6)} for s in steps]


# --------------------------------------------------------------------------------------------
# The factors' learning-rate budget
# --------------------------------------------------------------------------------------------

def linear_lr_multipliers(total_steps: int, warmup_ratio: float):
    """The Trainer's linear schedule with warm-up, as multipliers of the peak lr for steps 0..T-1
    (transformers' ``get_linear_schedule_with_warmup`` with ``ceil(ratio * T)`` warm-up steps)."""
    import numpy as np

    warmup = math.ceil(total_steps * warmup_ratio)
    t = np.arange(total_steps, dtype=np.float64)
    up = t / max(1, warmup)
    down = np.maximum(0.0, (total_steps - t) / max(1, total_steps - warmup))
    return np.where(t < warmup, up, down)


def factor_lr_integral(total_steps: int, schedule: AnnealSchedule, warmup_ratio: float) -> float:
    """Expected Σ_t lr(t)·(1 − p(t)) over a run of ``total_steps`` (in units of the peak lr): the
    learning-rate integral a module's factors receive, since they get no gradient in the steps where
    the module runs W_s. Plain re-training gives them Σ_t lr(t)."""
    import numpy as np

    if total_steps <= 0:
        return 0.0
    p = np.array([schedule.p(t, total_steps) for t in range(total_steps)])
    return float((linear_lr_multipliers(total_steps, warmup_ratio) * (1.0 - p)).sum())


def matched_total_steps(plain_steps: int, schedule: AnnealSchedule, warmup_ratio: float) -> int:
    """The fewest steps N >= plain_steps after which mixed-rank's factors have received at least the
    learning-rate integral of ``plain_steps`` of plain re-training (same peak lr, same schedule shape,
    p(t) annealed over the same fraction of N). The fair-budget comparison of C5: without it, the
    default p0 = 1 / anneal 0.5 gives the factors about 64% of plain's integral."""
    if plain_steps <= 0:
        raise LpafError(f"plain step count must be positive, got {plain_steps}")
    target = float(linear_lr_multipliers(plain_steps, warmup_ratio).sum())
    if factor_lr_integral(plain_steps, schedule, warmup_ratio) >= target:
        return plain_steps
    low, high = plain_steps, plain_steps * 2
    while factor_lr_integral(high, schedule, warmup_ratio) < target:
        low, high = high, high * 2
        if high > 64 * plain_steps:
            raise LpafError(f"no schedule length gives the factors plain re-training's lr budget with p0 "
                            f"{schedule.p0} and anneal fraction {schedule.anneal_fraction}")
    while high - low > 1:  # the integral grows with N: bisect for the first N that reaches it
        mid = (low + high) // 2
        if factor_lr_integral(mid, schedule, warmup_ratio) >= target:
            high = mid
        else:
            low = mid
    return high


# --------------------------------------------------------------------------------------------
# Training-time modules
# --------------------------------------------------------------------------------------------

def _check_lowrank(module: nn.Module, name: str) -> None:
    for attr in ("A", "B", "in_features", "out_features", "rank"):
        if not hasattr(module, attr):
            raise TypeError(f"{name}: {type(module).__name__} is not a low-rank linear (no {attr!r})")


class MixedRankLinear(nn.Module):
    """A factorized module that can run its full-rank source matrix instead of ``A·B``.

    Shapes: ``A.weight`` (out, r), ``B.weight`` (r, in), ``source_weight`` (out, in). ``A`` and ``B``
    are the wrapped LowRankLinear's own submodules (same objects, same state-dict names), so
    training them trains the module :func:`detach` puts back. The bias is ``A.bias`` in both branches.
    """

    def __init__(self, lowrank: nn.Module, source_weight: Tensor, trainable_source: bool = False):
        super().__init__()
        _check_lowrank(lowrank, type(lowrank).__name__)
        shape = (lowrank.out_features, lowrank.in_features)
        if tuple(source_weight.shape) != shape:
            raise ValueError(f"source weight has shape {tuple(source_weight.shape)}, expected {shape}")
        self.in_features, self.out_features, self.rank = lowrank.in_features, lowrank.out_features, lowrank.rank
        self.A, self.B = lowrank.A, lowrank.B
        object.__setattr__(self, "_lowrank", lowrank)  # not a submodule: A and B are registered here
        ref = lowrank.A.weight
        source = source_weight.detach().to(device=ref.device, dtype=ref.dtype).clone()
        self.trainable_source = trainable_source
        if trainable_source:
            self.source_weight = nn.Parameter(source)
            keep = source != 0
            if not bool(keep.all()):
                # The source is a pruned matrix: keep it pruned (zero gradient on pruned entries).
                self.register_buffer("source_keep_mask", keep, persistent=False)
                self.source_weight.register_hook(lambda g: g * self.source_keep_mask)
        else:
            # Frozen: a non-persistent buffer, so checkpoints stay the factorized model's size;
            # resume reloads it from the factorized directory's source file.
            self.register_buffer("source_weight", source, persistent=False)
        self.use_source = False

    @property
    def lowrank(self) -> nn.Module:
        return self._lowrank

    def set_choice(self, expand: bool, u: float) -> None:
        self.use_source = bool(expand)

    def forward(self, x: Tensor) -> Tensor:
        if self.training and self.use_source:
            return F.linear(x, self.source_weight, self.A.bias)
        return self._lowrank(x)

    def stored_weight_count(self) -> int:
        return self._lowrank.stored_weight_count()

    def to_dense_weight(self) -> Tensor:
        return self._lowrank.to_dense_weight()

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
                f"trainable_source={self.trainable_source}")


class RankSamplingLinear(nn.Module):
    """A factorized module over-parameterized by ``extra`` rank components (nested-dropout style).

    Shapes: ``extra_A`` (out, k), ``extra_B`` (k, in). Running rank r + j adds
    ``extra_A[:, :j] @ extra_B[:j]``; the first r components are the wrapped module's ``A``, ``B``.
    """

    def __init__(self, lowrank: nn.Module, extra_A: Tensor, extra_B: Tensor):
        super().__init__()
        _check_lowrank(lowrank, type(lowrank).__name__)
        k = extra_A.shape[1]
        if tuple(extra_A.shape) != (lowrank.out_features, k) or tuple(extra_B.shape) != (k, lowrank.in_features):
            raise ValueError(f"extra factors have shapes {tuple(extra_A.shape)} and {tuple(extra_B.shape)}, "
                             f"expected ({lowrank.out_features}, k) and (k, {lowrank.in_features})")
        self.in_features, self.out_features, self.rank = lowrank.in_features, lowrank.out_features, lowrank.rank
        self.A, self.B = lowrank.A, lowrank.B
        object.__setattr__(self, "_lowrank", lowrank)
        ref = lowrank.A.weight
        self.extra_A = nn.Parameter(extra_A.detach().to(device=ref.device, dtype=ref.dtype).clone())
        self.extra_B = nn.Parameter(extra_B.detach().to(device=ref.device, dtype=ref.dtype).clone())
        self.extra_rank = k
        self.extra_in_use = 0

    @property
    def lowrank(self) -> nn.Module:
        return self._lowrank

    def set_choice(self, expand: bool, u: float) -> None:
        self.extra_in_use = 1 + min(int(u * self.extra_rank), self.extra_rank - 1) if expand else 0

    def forward(self, x: Tensor) -> Tensor:
        y = self._lowrank(x)
        j = self.extra_in_use
        if self.training and j > 0:
            y = y + F.linear(F.linear(x, self.extra_B[:j]), self.extra_A[:, :j])
        return y

    def stored_weight_count(self) -> int:
        return self._lowrank.stored_weight_count()

    def to_dense_weight(self) -> Tensor:
        return self._lowrank.to_dense_weight()

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
                f"extra_rank={self.extra_rank}")


ExpandableLinear = MixedRankLinear | RankSamplingLinear


# --------------------------------------------------------------------------------------------
# Swapping in and out (PEFT style: walk named_modules, setattr on the parent)
# --------------------------------------------------------------------------------------------

def find_lowrank_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Every factorized module (LowRankLinear or anything with A, B and a rank), by full name."""
    found = {}
    for name, module in model.named_modules():
        if isinstance(module, (MixedRankLinear, RankSamplingLinear)):
            continue
        if name and all(hasattr(module, a) for a in ("A", "B", "rank")) and isinstance(module.A, nn.Linear):
            found[name] = module
    return found


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def load_source_weights(factorized_dir: str | Path) -> dict[str, Tensor]:
    """The full-rank source matrices the factorize stage saved beside the factors."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(factorized_dir) / SOURCE_WEIGHTS_FILE
    if not path.is_file():
        raise LpafError(f"{path} is missing: mixed-rank re-training needs the full-rank source matrices that "
                        f"'lpaf factorize' writes beside the factors; re-run factorize or use --scheme plain")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise LpafError(f"{path} is not a valid safetensors file ({e}); re-run 'lpaf factorize'") from None


def _match_sources(modules: Mapping[str, nn.Module], sources: Mapping[str, Tensor]) -> None:
    """Every factorized module needs a source matrix of its shape; report all problems at once."""
    missing = [n for n in modules if n not in sources]
    wrong = [f"{n} {tuple(sources[n].shape)} != {(m.out_features, m.in_features)}"
             for n, m in modules.items() if n in sources and tuple(sources[n].shape) != (m.out_features, m.in_features)]
    problems = []
    if missing:
        problems.append(f"no source matrix for {len(missing)} factorized module(s) ({', '.join(missing[:3])})")
    if wrong:
        problems.append(f"source matrices with the wrong shape: {', '.join(wrong[:3])}")
    if problems:
        raise LpafError(f"{SOURCE_WEIGHTS_FILE} does not match the factorized model: {'; '.join(problems)}")


def attach_mixed_rank(model: nn.Module, source_weights: Mapping[str, Tensor],
                      trainable_source: bool = False) -> dict[str, MixedRankLinear]:
    """Wrap every factorized module of ``model`` (in place) with its source matrix."""
    modules = find_lowrank_modules(model)
    if not modules:
        raise LpafError(f"no factorized (low-rank) modules found in {type(model).__name__}")
    _match_sources(modules, source_weights)
    wrapped = {}
    for name, module in modules.items():
        wrapped[name] = MixedRankLinear(module, source_weights[name], trainable_source)
        _set_submodule(model, name, wrapped[name])
    return wrapped


def extra_rank_for(rank: int, m: int, n: int, max_rank_multiple: float) -> int:
    """Extra components of the rank-sampling scheme: up to ``max_rank_multiple * r`` in all."""
    return max(1, min(math.ceil((max_rank_multiple - 1.0) * rank), min(m, n)))


def attach_rank_sampling(model: nn.Module, source_weights: Mapping[str, Tensor],
                         max_rank_multiple: float = 2.0) -> dict[str, RankSamplingLinear]:
    """Over-parameterize every factorized module with the top directions of ``W_s − A·B``.

    At ``extra = min(m, n)`` the extras reproduce the residual exactly, so rank r + extra *is* W_s:
    this scheme interpolates between plain (no extras) and the mixed-rank scheme.
    """
    from lpaf.factorize import svd

    if not max_rank_multiple > 1.0:
        raise LpafError(f"--max-rank-multiple must be > 1 (got {max_rank_multiple})")
    modules = find_lowrank_modules(model)
    if not modules:
        raise LpafError(f"no factorized (low-rank) modules found in {type(model).__name__}")
    _match_sources(modules, source_weights)
    wrapped = {}
    for name, module in modules.items():
        m, n = module.out_features, module.in_features
        with torch.no_grad():
            residual = source_weights[name].float() - module.to_dense_weight().detach().float().cpu()
        k = extra_rank_for(module.rank, m, n, max_rank_multiple)
        extra_A, extra_B = svd(residual, None, k)
        wrapped[name] = RankSamplingLinear(module, extra_A, extra_B)
        _set_submodule(model, name, wrapped[name])
    return wrapped


def detach(model: nn.Module) -> int:
    """Swap every training-time wrapper back to its LowRankLinear; W_s and extras are dropped."""
    names = [n for n, m in model.named_modules() if isinstance(m, (MixedRankLinear, RankSamplingLinear))]
    for name in names:
        _set_submodule(model, name, model.get_submodule(name).lowrank)
    return len(names)


# --------------------------------------------------------------------------------------------
# The scheduler
# --------------------------------------------------------------------------------------------

class MixedRankScheduler(TrainerCallback):
    """Sets p(t) from the global step and resamples every module's branch at each step begin.

    Stateful (``state_dict``/``load_state_dict`` for JSON state, ``save_tensors``/``load_tensors``
    for the generator state), so ``lpaf.training.train_model`` saves it into every checkpoint and a
    resumed run continues the exact random stream. The log keeps, per step, p(t) and how many
    modules ran their expanded branch (the empirical frequency reported in metrics.json).
    """

    def __init__(self, modules: Mapping[str, ExpandableLinear], schedule: AnnealSchedule, seed: int,
                 scheme: Scheme = "mixed-rank"):
        if not modules:
            raise ValueError("MixedRankScheduler needs at least one module")
        self.names = list(modules)
        self.modules = [modules[n] for n in self.names]
        self.schedule = schedule
        self.scheme = scheme
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        self.total_steps: int | None = None
        self.log: list[list[float]] = []  # [step, p, modules expanded]
        self.expanded_counts = [0] * len(self.modules)

    # ---- sampling ----
    def resample(self, step: int, total_steps: int) -> float:
        """Draw every module's branch for ``step``; two uniforms per module, every step, so the
        random stream depends only on the step count."""
        p = self.schedule.p(step, total_steps)
        u_expand = torch.rand(len(self.modules), generator=self.generator)
        u_choice = torch.rand(len(self.modules), generator=self.generator)
        expand = (u_expand < p).tolist()
        for i, (module, e, u) in enumerate(zip(self.modules, expand, u_choice.tolist())):
            module.set_choice(e, u)
            self.expanded_counts[i] += int(e)
        self.log.append([step, p, int(sum(expand))])
        return p

    def switch_off(self) -> None:
        for module in self.modules:
            module.set_choice(False, 0.0)

    # ---- TrainerCallback ----
    def on_train_begin(self, args, state, control, **kwargs):
        self.total_steps = int(state.max_steps)

    def on_step_begin(self, args, state, control, **kwargs):
        self.resample(int(state.global_step), int(state.max_steps))

    def on_train_end(self, args, state, control, **kwargs):
        self.switch_off()

    # ---- resume ----
    def _settings(self) -> dict[str, Any]:
        return {"scheme": self.scheme, "seed": self.seed, "modules": len(self.modules), **asdict(self.schedule)}

    def state_dict(self) -> dict[str, Any]:
        return {"settings": self._settings(), "log": self.log, "expanded_counts": self.expanded_counts}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("settings") != self._settings():
            raise LpafError(f"the checkpoint was written by a re-training run with other mixed-rank settings "
                            f"({state.get('settings')} vs {self._settings()}); delete the checkpoint directory "
                            f"or rerun with the same arguments")
        self.log = [list(x) for x in state["log"]]
        self.expanded_counts = list(state["expanded_counts"])

    def save_tensors(self, ckpt_dir: str | Path) -> None:
        from safetensors.torch import save_file

        save_file({"generator_state": self.generator.get_state()}, str(Path(ckpt_dir) / GENERATOR_STATE_FILE))

    def load_tensors(self, ckpt_dir: str | Path) -> None:
        from safetensors.torch import load_file

        path = Path(ckpt_dir) / GENERATOR_STATE_FILE
        if not path.is_file():
            raise LpafError(f"checkpoint {ckpt_dir} has no {GENERATOR_STATE_FILE}; it was not written by a "
                            f"mixed-rank run: delete the checkpoint directory or rerun with the same arguments")
        self.generator.set_state(load_file(str(path))["generator_state"])

    # ---- report ----
    def summary(self) -> dict[str, Any]:
        """Schedule sample points and the empirical expanded-branch frequency, per quarter of training."""
        total = self.total_steps or len(self.log)
        n = len(self.modules)
        quarters = []
        for q in range(4):
            lo, hi = q * total / 4, (q + 1) * total / 4
            rows = [r for r in self.log if lo <= r[0] < hi]
            if rows:
                quarters.append({"steps": [int(rows[0][0]), int(rows[-1][0])],
                                 "mean_p": sum(r[1] for r in rows) / len(rows),
                                 "expanded_fraction": sum(r[2] for r in rows) / (n * len(rows))})
        anneal_end = next((int(r[0]) for r in self.log if r[1] == 0.0), None)
        return {
            "scheme": self.scheme,
            **asdict(self.schedule),
            "total_steps": total,
            "anneal_steps": self.schedule.anneal_steps(total),
            "p_points": self.schedule.sample_points(total),
            "first_step_with_p_zero": anneal_end,
            "modules": n,
            "expanded_fraction_overall": (sum(r[2] for r in self.log) / (n * len(self.log))) if self.log else None,
            "by_quarter": quarters,
        }
