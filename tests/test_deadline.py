"""lpaf.deadline: SIGUSR1 to the stage before its SLURM time limit (no sbatch --signal needed)."""

from __future__ import annotations

import os
import signal
import stat
import time

import pytest

from lpaf.deadline import ENV_MARGIN, arm_signal_before_end, parse_time_left


@pytest.mark.parametrize("text, seconds", [("0:45", 45), ("12:03", 723), ("1:00:00", 3600), ("2-03:04:05", 183845),
                                           ("UNLIMITED", None), ("INVALID", None), ("", None)])
def test_parse_squeue_time_left(text, seconds):
    assert parse_time_left(text) == seconds


def _fake_squeue(tmp_path, monkeypatch, output: str, rc: int = 0):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "squeue"
    script.write_text(f"#!/bin/sh\necho '{output}'\nexit {rc}\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def test_signal_arrives_margin_seconds_before_the_end(tmp_path, monkeypatch):
    _fake_squeue(tmp_path, monkeypatch, "0:45")
    monkeypatch.setenv("SLURM_JOB_ID", "123")
    monkeypatch.setenv(ENV_MARGIN, "44.5")
    received = []
    previous = signal.signal(signal.SIGUSR1, lambda s, f: received.append((s, time.monotonic())))
    try:
        t0 = time.monotonic()
        timer = arm_signal_before_end()
        assert timer is not None
        deadline = time.monotonic() + 10
        while not received and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert received and received[0][0] == signal.SIGUSR1
    assert 0.3 <= received[0][1] - t0 < 5  # 45 s left - 44.5 s margin


@pytest.mark.parametrize("env, squeue", [
    ({ENV_MARGIN: "300"}, "10:00"),                   # not in a SLURM job
    ({"SLURM_JOB_ID": "1", ENV_MARGIN: "0"}, "10:00"),  # disabled (local runs)
    ({"SLURM_JOB_ID": "1", ENV_MARGIN: "300"}, "UNLIMITED"),  # no time limit
    ({"SLURM_JOB_ID": "1", ENV_MARGIN: "abc"}, "10:00"),  # not a number: warn, do nothing
])
def test_no_timer_where_there_is_nothing_to_warn_about(tmp_path, monkeypatch, env, squeue):
    _fake_squeue(tmp_path, monkeypatch, squeue)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert arm_signal_before_end() is None


def test_a_slurm_job_without_a_margin_says_so(tmp_path, monkeypatch, capsys):
    """Issue 30 point 5: margin 0 in a SLURM job is a job that dies at its limit without a checkpoint."""
    _fake_squeue(tmp_path, monkeypatch, "10:00")
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv(ENV_MARGIN, "0")
    assert arm_signal_before_end() is None
    err = capsys.readouterr().err
    assert "lpaf: warning: SLURM job 7 has no early warning" in err and "signal_before_end_s" in err
    monkeypatch.delenv("SLURM_JOB_ID")
    assert arm_signal_before_end() is None and capsys.readouterr().err == ""  # local runs: nothing to say
