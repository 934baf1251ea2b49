"""A warning before the time limit: SIGUSR1 to this process ``margin`` seconds before its SLURM job
ends, so a training stage checkpoints and exits 75 (lpaf.training) instead of being killed.

Why not ``sbatch --signal=USR1@300``: Snakemake's SLURM plugin runs each rule inside a Snakemake
job-step process under ``srun``; SLURM signals every process of the step, and that Snakemake process
has no handler for SIGUSR1, so it dies at once and the step is torn down while the stage is still
writing its checkpoint (tried on the test cluster, SLURM 22.05: ``srun: error: task 0: User defined
signal 1``, job FAILED; a tiny model's checkpoint happened to finish first, a BERT-base one need not).
The plugin does not forward signals yet (snakemake-executor-plugin-slurm issue #242). So the stage
asks SLURM for its own time left (``squeue -h -j $SLURM_JOB_ID -o %L``) and raises the signal itself,
on a timer, with nothing else signalled.

Enabled by the environment variable ``LPAF_SIGNAL_BEFORE_END_S`` (the workflow sets it from the
config's ``cluster.signal_before_end_s``); outside a SLURM job it does nothing, and in a SLURM job
without it (0 or unset) it says so.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import threading

log = logging.getLogger(__name__)

ENV_MARGIN = "LPAF_SIGNAL_BEFORE_END_S"


def parse_time_left(text: str) -> int | None:
    """squeue's %L ("[days-]hours:minutes:seconds", "minutes:seconds", "UNLIMITED") -> seconds."""
    text = text.strip()
    m = re.fullmatch(r"(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+)", text)
    if not m:
        return None
    days, hours, minutes, seconds = (int(g) if g else 0 for g in m.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def slurm_seconds_left(job_id: str) -> int | None:
    try:
        res = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse_time_left(res.stdout) if res.returncode == 0 else None


def arm_signal_before_end(margin_s: float | None = None, sig: int = signal.SIGUSR1) -> threading.Timer | None:
    """Raise ``sig`` in this process ``margin_s`` seconds before the SLURM job's time limit (at once
    if less is left). Returns the timer, or None when not in a SLURM job, disabled, or unknown."""
    if margin_s is None:
        try:
            margin_s = float(os.environ.get(ENV_MARGIN, "0") or 0)
        except ValueError:
            log.warning("%s=%r is not a number of seconds: no signal before the time limit",
                        ENV_MARGIN, os.environ[ENV_MARGIN])
            return None
    job_id = os.environ.get("SLURM_JOB_ID")
    if job_id and margin_s <= 0:
        print(f"lpaf: warning: SLURM job {job_id} has no early warning before its time limit ({ENV_MARGIN} is "
              f"0 or unset; the workflow's cluster.signal_before_end_s): at the limit it is killed without a "
              f"checkpoint, and a rerun resumes from the last --save-steps checkpoint", file=sys.stderr, flush=True)
    if margin_s <= 0 or not job_id:
        return None
    left = slurm_seconds_left(job_id)
    if left is None:
        log.warning("could not read the time left of SLURM job %s (squeue): no signal before the time limit", job_id)
        return None
    delay = max(0.0, left - margin_s)
    pid = os.getpid()
    timer = threading.Timer(delay, lambda: os.kill(pid, sig))
    timer.daemon = True
    timer.start()
    print(f"lpaf: SLURM job {job_id} has {left} s left: {signal.Signals(sig).name} in {delay:.0f} s "
          f"({margin_s:.0f} s before the time limit)", flush=True)
    return timer
