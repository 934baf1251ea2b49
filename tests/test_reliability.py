"""Safety and reliability guarantees: safe loading, atomic artifacts, determinism."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import make_tiny_model
from lpaf.artifacts import atomic_output_dir, require_complete, write_json
from lpaf.cli import main
from lpaf.errors import LpafError

LPAF_DIR = Path(__file__).resolve().parents[1] / "lpaf"


def _sources() -> list[tuple[Path, str]]:
    return [(p, p.read_text()) for p in sorted(LPAF_DIR.rglob("*.py"))]


def test_no_unsafe_loading_anywhere_in_lpaf():
    """Grep-level: no pickle, torch.load only with weights_only=True, never trust_remote_code=True."""
    problems = []
    for path, text in _sources():
        for i, line in enumerate(text.splitlines(), start=1):
            code = line.split("#", 1)[0]
            if re.search(r"\bimport\s+(c?pickle|dill|joblib)\b|\bfrom\s+(c?pickle|dill|joblib)\b", code):
                problems.append(f"{path.name}:{i}: pickle-family import")
            if "torch.load(" in code and "weights_only=True" not in code:
                problems.append(f"{path.name}:{i}: torch.load without weights_only=True")
            if re.search(r"trust_remote_code\s*=\s*True", code):
                problems.append(f"{path.name}:{i}: trust_remote_code=True")
            if re.search(r"safe_serialization\s*=\s*False", code):
                problems.append(f"{path.name}:{i}: non-safetensors save")
            if re.search(r"torch\.save\(", code):
                problems.append(f"{path.name}:{i}: torch.save (use safetensors)")
    assert not problems, "\n".join(problems)


def test_pickle_weights_are_refused(tmp_path, glue_dir, capsys):
    """A model directory holding only pytorch_model.bin is never unpickled."""
    model = make_tiny_model(tmp_path / "m")
    (model / "model.safetensors").rename(model / "pytorch_model.bin")
    capsys.readouterr()
    code = main(["finetune", "--model", str(model), "--task", "sst2", "--data", str(glue_dir),
                 "--out", str(tmp_path / "o")])
    assert code == 2
    assert "has no *.safetensors weights (lpaf loads safetensors only)" in capsys.readouterr().err


def test_atomic_output_dir_leaves_nothing_on_failure(tmp_path):
    out = tmp_path / "artifact"
    with pytest.raises(RuntimeError):
        with atomic_output_dir(out) as tmp:
            (tmp / "model.safetensors").write_text("half")
            raise RuntimeError("boom")
    assert not out.exists() and not list(tmp_path.iterdir())


def test_atomic_output_dir_requires_completion_record(tmp_path):
    with pytest.raises(RuntimeError, match="without writing metrics.json"):
        with atomic_output_dir(tmp_path / "a") as tmp:
            (tmp / "x").write_text("x")
    assert not (tmp_path / "a").exists()


def test_atomic_output_dir_replaces_previous_artifact(tmp_path):
    out = tmp_path / "a"
    for version in (1, 2):
        with atomic_output_dir(out) as tmp:
            write_json(tmp / "metrics.json", {"v": version})
    assert json.loads((out / "metrics.json").read_text()) == {"v": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_require_complete_refuses_incomplete(tmp_path):
    (tmp_path / "m").mkdir()
    with pytest.raises(LpafError, match="has no metrics.json"):
        require_complete(tmp_path / "m", "model")


def test_kill_9_during_final_write_leaves_no_artifact(tmp_path, glue_dir):
    """SIGKILL while the stage writes its output: nothing visible at --out; a rerun completes."""
    model = make_tiny_model(tmp_path / "m")
    out = tmp_path / "ft"
    argv = [sys.executable, "-m", "lpaf.cli", "finetune", "--model", str(model), "--task", "sst2", "--data",
            str(glue_dir), "--max-length", "32", "--batch-size", "16", "--epochs", "1", "--device", "cpu",
            "--out", str(out)]
    env = dict(os.environ, LPAF_FAULT_SLEEP_BEFORE_COMMIT_S="60")
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    partial = None
    while time.time() < deadline and proc.poll() is None:
        found = [p for p in tmp_path.glob(".ft.partial-*") if (p / "metrics.json").is_file()]
        if found:
            partial = found[0]
            break
        time.sleep(0.2)
    assert partial is not None, f"stage never reached its final write: {proc.stderr.read().decode()[-2000:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists(), "a killed stage must not leave a directory at --out"
    assert main(argv[3:]) == 0
    require_complete(out)
    assert (out / "model.safetensors").is_file()


def test_same_seed_same_metrics(tmp_path, glue_dir):
    model = make_tiny_model(tmp_path / "m")
    runs = []
    for name in ("a", "b"):
        out = tmp_path / name
        assert main(["finetune", "--model", str(model), "--task", "mrpc", "--data", str(glue_dir), "--max-length", "32",
                     "--batch-size", "8", "--epochs", "1", "--seed", "7", "--device", "cpu", "--out", str(out)]) == 0
        runs.append(json.loads((out / "metrics.json").read_text()))
    a, b = runs
    assert a["metrics"] == b["metrics"]
    assert a["train"]["train_loss"] == b["train"]["train_loss"]
    assert a["config_hash"] == b["config_hash"] and a["versions"] == b["versions"]
    # the only differences are timings and the output path
    assert {k for k in a if a[k] != b[k]} <= {"wall_time_s", "train", "args", "command"}
    timing = {"train_wall_time_s", "step_time_s_mean", "step_time_s_median"}
    assert {k for k in a["train"] if a["train"][k] != b["train"][k]} <= timing


@pytest.mark.parametrize("exchange", ["renameat2", "two-renames"])
def test_replacing_an_artifact_never_leaves_it_missing(tmp_path, monkeypatch, exchange):
    import sys

    import lpaf.artifacts as artifacts

    if exchange == "two-renames":
        monkeypatch.setenv("LPAF_NO_RENAME_EXCHANGE", "1")
    swaps = []
    real_exchange = artifacts._exchange
    monkeypatch.setattr(artifacts, "_exchange", lambda a, b: swaps.append(real_exchange(a, b)) or swaps[-1])
    out = tmp_path / "a"
    for version in (1, 2):
        with atomic_output_dir(out) as tmp:
            write_json(tmp / "metrics.json", {"v": version})
        assert json.loads((out / "metrics.json").read_text()) == {"v": version}
        assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]
    expected = [exchange == "renameat2" and sys.platform.startswith("linux")]
    assert swaps == expected  # the second write replaced the first; the first had nothing to swap


def test_a_replace_killed_between_its_two_renames_is_repaired(tmp_path, capsys):
    from lpaf.artifacts import recover_interrupted_replace

    out = tmp_path / "a"
    old = tmp_path / ".a.old-999999"  # a finished artifact moved aside by a run that was then killed
    old.mkdir()
    write_json(old / "metrics.json", {"v": 1})
    dead_partial = tmp_path / ".a.partial-999999"
    dead_partial.mkdir()
    with pytest.raises(RuntimeError):  # the rerun itself fails: the old artifact must still come back
        with atomic_output_dir(out):
            raise RuntimeError("boom")
    assert json.loads((out / "metrics.json").read_text()) == {"v": 1}
    assert "restored the finished artifact" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]
    stale = tmp_path / ".a.old-999998"  # a leftover next to a present artifact is removed
    stale.mkdir()
    recover_interrupted_replace(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]
