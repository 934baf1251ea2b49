"""The keep-ratio schedule of gradual pruning: v(t), cubic between two warm-ups (Zhu & Gupta, 2017),
and how many weights a density keeps."""

from __future__ import annotations

from dataclasses import dataclass


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

