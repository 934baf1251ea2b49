"""What a run prints while it works and when it ends.

- **Progress** goes to stderr: a tqdm bar when stderr is a terminal, otherwise plain lines at a
  steady cadence (SLURM logs, ``> log 2>&1``), e.g.
  ``train: step 120/1000 (12%) loss 0.41 lr 2.1e-05 elapsed 3m10s eta 23m05s``.
- **One summary line** ends every command (printed by :func:`lpaf.cli.main`, built here):
  ``lpaf prune: wrote runs/x (accuracy 0.812 at density 0.10, 4m12s)``.
- **A degenerate result** (one prediction for >= 99% of the dev examples, see
  :func:`lpaf.metrics.prediction_spread`) gets a warning line of its own before the summary.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any, TextIO

LINES_PER_RUN = 10  # off a terminal, a count-driven progress prints about this many lines


def is_terminal(stream: TextIO | None = None) -> bool:
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or replaced streams
        return False


def format_duration(seconds: float) -> str:
    """``8.3s``, ``43s``, ``4m12s``, ``2h02m``."""
    if seconds < 10:
        return f"{seconds:.1f}s"
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _number(value: float) -> str:
    return f"{value:.3f}" if abs(value) < 10 else f"{value:.2f}"


def _density(value: float) -> str:
    return f"{value:.2f}" if round(value, 2) == value else f"{value:g}"


class Progress:
    """Counts units of work (``total`` of them, ``unit`` each, under ``label``).

    On a terminal: a tqdm bar, with ``fields`` as its postfix. Elsewhere: a line each time another
    ``every`` units are done (default: a tenth of ``total``; 0: only on :meth:`emit`), and one at the
    end. ``initial``: units already done before this run (a resumed training), left out of the ETA.
    """

    def __init__(self, total: int, label: str, unit: str, *, every: int | None = None, initial: int = 0,
                 leave: bool = False, stream: TextIO | None = None):
        self.total = max(int(total), 0)
        self.label = label
        self.unit = unit
        self.stream = sys.stderr if stream is None else stream
        self.every = max(1, math.ceil(self.total / LINES_PER_RUN)) if every is None else every
        self.done = self._start = initial
        self.fields: dict[str, str] = {}
        self._t0 = time.perf_counter()
        self._printed_at: int | None = None
        self.bar = None
        if is_terminal(self.stream):
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.total, initial=initial, desc=label, unit=f" {unit}", leave=leave,
                            file=self.stream, dynamic_ncols=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close(final_line=exc[0] is None)

    def update(self, n: int = 1, **fields: Any) -> None:
        before, self.done = self.done, self.done + n
        self.note(**fields)
        if self.bar is not None:
            self.bar.update(n)
        elif self.every and (self.done // self.every > before // self.every or self.done >= self.total > before):
            self.emit()

    def note(self, **fields: Any) -> None:
        """Values shown with the count (a loss, a learning rate); numbers are shortened."""
        self.fields.update({k: (f"{v:.4g}" if isinstance(v, float) else str(v)) for k, v in fields.items()})
        if self.bar is not None and fields:
            self.bar.set_postfix_str(" ".join(f"{k} {v}" for k, v in self.fields.items()), refresh=False)

    def emit(self) -> None:
        """One progress line now (off a terminal; a bar shows the same continuously)."""
        if self.bar is not None:
            return
        self.stream.write(self.line() + "\n")
        self.stream.flush()
        self._printed_at = self.done

    def line(self) -> str:
        elapsed = time.perf_counter() - self._t0
        pct = f" ({100 * self.done // self.total}%)" if self.total else ""
        fields = "".join(f" {k} {v}" for k, v in self.fields.items())
        text = f"{self.label}: {self.unit} {self.done}/{self.total}{pct}{fields} elapsed {format_duration(elapsed)}"
        rate_done = self.done - self._start
        if 0 < rate_done and self.done < self.total:
            text += f" eta {format_duration(elapsed / rate_done * (self.total - self.done))}"
        return text

    def close(self, final_line: bool = True) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
            return
        if final_line and self._printed_at != self.done and self.done > self._start:
            self.emit()


# --------------------------------------------------------------------------------------------
# The end of a run
# --------------------------------------------------------------------------------------------

def describe_degenerate(record: dict[str, Any]) -> str | None:
    """What a degenerate record predicts, e.g. ``class 1 for 100% of 408 validation examples``;
    None when its dev predictions are not degenerate (or were not recorded)."""
    predictions = record.get("predictions") or {}
    if not predictions.get("degenerate"):
        return None
    is_qa = False
    if record.get("task"):
        from lpaf.tasks import get_task

        try:
            is_qa = get_task(record["task"]).is_qa
        except Exception:  # an unknown task name in a foreign record: describe it as classification
            is_qa = False
    parts = []
    for split, s in (predictions.get("splits") or {}).items():
        if not s.get("degenerate"):
            continue
        if "spread_ratio" in s:
            parts.append(f"prediction spread {100 * s['spread_ratio']:.2g}% of the labels' on {s.get('n')} {split} "
                         f"examples")
        else:
            what = f"the answer {s.get('majority_prediction')!r}" if is_qa else f"class {s.get('majority_prediction')}"
            parts.append(f"{what} for {100 * s.get('majority_fraction', 1.0):.0f}% of {s.get('n')} {split} examples")
    return "; ".join(parts) or "one output for every dev example"


def degenerate_warning(stage: str, record: dict[str, Any] | None) -> str | None:
    what = describe_degenerate(record or {})
    if what is None:
        return None
    return f"lpaf {stage}: warning: degenerate dev predictions ({what}): a failed run, not a score"


def _details(stage: str, record: dict[str, Any]) -> list[str]:
    """What a command adds to its summary besides the score."""
    if stage == "export":
        return [f"{record['bytes'] / 1e6:.1f} MB", f"max |ONNX - PyTorch| {record['parity_max_abs_diff']:.2e}",
                f"{record['factor_matrices_in_graph']}/{record['factor_matrices']} factor matrices kept thin"]
    if stage == "time-models":
        return [f"{len(record.get('latency_ms') or {})} models timed on {record.get('device')}"]
    if stage == "rank-study":
        return [f"{len(record.get('models') or [])} models"]
    if stage == "calibrate":
        steps = ", ".join(f"{k} {v['step_s']:.3f} s/step" for k, v in (record.get("stages") or {}).items()
                          if v.get("step_s"))
        return [steps] if steps else []
    if stage == "split-squad":
        return [f"{record['train_questions']} training / {record['eval_questions']} evaluation questions, "
                f"{record['train_articles']} / {record['eval_articles']} articles; not the official split"]
    return []


def summary_line(stage: str, wrote: str | None, record: dict[str, Any] | None, wall_s: float) -> str:
    """``lpaf <stage>: wrote <path> (<metric> <value>[ at density <d>][, degenerate][, details], <wall>)``."""
    record = record or {}
    parts = []
    metric, value = record.get("headline_metric"), record.get("headline")
    if metric and isinstance(value, (int, float)):
        score = f"{metric} {_number(value)}"
        if stage in ("prune", "factorize", "retrain") and isinstance(record.get("density"), (int, float)):
            score += f" at density {_density(record['density'])}"
        parts.append(score)
    if (record.get("predictions") or {}).get("degenerate"):
        parts.append("degenerate")
    parts += _details(stage, record)
    parts.append(format_duration(wall_s))
    head = f"lpaf {stage}: wrote {wrote}" if wrote else f"lpaf {stage}: done"
    return f"{head} ({', '.join(parts)})"


def finish(stage: str, args: Any, record: Any, wall_s: float, stream: TextIO | None = None) -> None:
    """The end of a command: the degenerate warning (if any), then the one summary line, on stderr."""
    stream = sys.stderr if stream is None else stream
    record = record if isinstance(record, dict) else {}
    wrote = getattr(args, "out", None) or getattr(args, "json", None)
    if stage == "plan" and not wrote:
        return  # its output is the plan it printed
    warning = degenerate_warning(stage, record)
    if warning:
        stream.write(warning + "\n")
    stream.write(summary_line(stage, wrote, record, wall_s) + "\n")
    stream.flush()
