"""Mistakes caught before the work (issue 31, point 6): an `--out` that cannot be written, a model
of another task, a factorization density above the pruned model's.

Each refusal is one line `lpaf: error: …`, exit code 2, and writes nothing. The `--out` checks run
before anything is loaded: the commands below name a model that does not exist, and the error is
still the one about `--out`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from conftest import make_tiny_model, write_glue_task
from lpaf.cli import main

MISSING = "/nonexistent/lpaf-model"
# stage -> (the other required flags, whether --out is a file)
STAGES = {
    "finetune": (["--model", MISSING, "--task", "mrpc"], False),
    "prune": (["--model", MISSING, "--task", "mrpc"], False),
    "factorize": (["--model", MISSING, "--task", "mrpc"], False),
    "retrain": (["--model", MISSING, "--teacher", MISSING, "--task", "mrpc"], False),
    "evaluate": (["--model", MISSING, "--task", "mrpc"], True),
    "export": (["--model", MISSING], True),
    "rank-study": (["--models", MISSING], True),
    "time-models": (["--models", MISSING], True),
    "fetch-model": (["--model", "org/no-such-model"], False),
    "fetch-data": (["--task", "mrpc"], False),
    "split-squad": (["--source", MISSING], False),
    "calibrate": (["--model", MISSING, "--task", "mrpc"], True),
}


def _name(stage: str, is_file: bool) -> str:
    return {"export": "m.onnx"}.get(stage, "out.json" if is_file else "out")


def _refused(argv, capsys, *expected: str) -> str:
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("lpaf: error: "), err
    for text in expected:
        assert text in err, err
    return err


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize("stage", list(STAGES))
def test_an_out_under_a_file_is_refused_before_any_work(tmp_path, capsys, stage):
    flags, is_file = STAGES[stage]
    (tmp_path / "afile").write_text("x")
    before = _tree(tmp_path)
    out = tmp_path / "afile" / _name(stage, is_file)
    _refused([stage, *flags, "--out", out], capsys, f"--out {out}", "afile is not a directory")
    assert _tree(tmp_path) == before


@pytest.mark.parametrize("stage", list(STAGES))
def test_an_out_of_the_wrong_kind_is_refused_before_any_work(tmp_path, capsys, stage):
    flags, is_file = STAGES[stage]
    out = tmp_path / _name(stage, is_file)
    if is_file:
        out.mkdir()  # a directory where the output file should go
        expected = "is a directory; expected a file"
    else:
        out.write_text("x")  # a file where the output directory should go
        expected = "exists and is not a directory"
    before = _tree(tmp_path)
    _refused([stage, *flags, "--out", out], capsys, f"--out {out}", expected)
    assert _tree(tmp_path) == before


@pytest.mark.parametrize("stage", ["finetune", "evaluate", "export"])
def test_an_invalid_or_unwritable_out_is_refused_before_any_work(tmp_path, capsys, stage):
    flags, is_file = STAGES[stage]
    long_name = "x" * 300 + (".onnx" if stage == "export" else "")
    _refused([stage, *flags, "--out", tmp_path / long_name], capsys, f"is too long ({len(long_name)} bytes")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        target = locked
        if os.geteuid() == 0:  # root writes into a 0o500 directory: take a place no one can write in
            target = Path("/sys")
            try:
                fd, probe = tempfile.mkstemp(dir=target)
                os.close(fd)
                os.unlink(probe)
                pytest.skip("no unwritable directory here (root, and /sys is writable)")
            except OSError:
                pass
        out = target / "sub" / _name(stage, is_file)
        _refused([stage, *flags, "--out", out], capsys, f"--out {out}", f"cannot write in {target}")
        assert not (target / "sub").exists()
    finally:
        locked.chmod(0o700)
    assert _tree(tmp_path) == {"locked"}


# --------------------------------------------------------------------------------------------
# a model of another task
# --------------------------------------------------------------------------------------------

def _artifact(d: Path, task: str, **record) -> Path:
    """A tiny model directory with the completion record lpaf stages write (metrics.json)."""
    make_tiny_model(d)
    (d / "metrics.json").write_text(json.dumps({"stage": "finetune", "task": task, **record}))
    return d


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    root = tmp_path_factory.mktemp("early")
    data = write_glue_task(root / "data", "sst2")
    write_glue_task(root / "data", "mrpc")
    mrpc = _artifact(root / "mrpc-dense", "mrpc")
    from lpaf.factorize import svd
    from lpaf.lowrank import swap_encoder_linears
    from lpaf.modules import find_encoder_linears

    import lpaf

    model = lpaf.load_model(str(mrpc))
    swap_encoder_linears(model, {n: svd(m.weight.detach(), None, 4) for n, m in find_encoder_linears(model).items()})
    fact = root / "mrpc-fact"
    lpaf.save_model(model, str(fact))
    for f in mrpc.iterdir():
        if f.name.startswith(("vocab", "tokenizer", "special_tokens")):
            shutil.copy2(f, fact / f.name)
    (fact / "metrics.json").write_text(json.dumps({"stage": "factorize", "task": "mrpc", "density": 0.25}))
    return {"root": root, "data": data, "mrpc": mrpc, "fact": fact}


RETRAIN = ["--scheme", "plain", "--max-steps", "1", "--batch-size", "8"]
TASK_MISMATCH = {  # (cheap settings: where the refusal is missing, the stage runs for a step or two)
    "evaluate": lambda a: ["evaluate", "--model", a["mrpc"], "--out", a["out"] / "e.json"],
    "factorize": lambda a: ["factorize", "--model", a["mrpc"], "--out", a["out"] / "f"],
    "prune": lambda a: ["prune", "--model", a["mrpc"], "--out", a["out"] / "p", "--max-steps", "2",
                        "--batch-size", "8"],
    "retrain": lambda a: ["retrain", "--model", a["fact"], "--out", a["out"] / "r", "--distill-alpha", "0", *RETRAIN],
    "retrain-teacher": lambda a: ["retrain", "--model", a["fact"], "--teacher", a["mrpc"], "--out", a["out"] / "r",
                                  *RETRAIN],
}


@pytest.mark.parametrize("case", list(TASK_MISMATCH))
def test_a_model_of_another_task_is_refused(artifacts, tmp_path, capsys, case):
    """An MRPC model scored, pruned, factorized or re-trained as SST-2 (same label count, so nothing else
    notices) is refused in one line naming both tasks."""
    a = dict(artifacts, out=tmp_path)
    argv = TASK_MISMATCH[case](a) + ["--task", "sst2", "--data", a["data"], "--device", "cpu"]
    if case == "retrain-teacher":  # the model is right (relabelled sst2 here), the teacher is mrpc's
        fact = tmp_path / "fact-sst2"
        shutil.copytree(a["fact"], fact)
        (fact / "metrics.json").write_text(json.dumps({"stage": "factorize", "task": "sst2", "density": 0.25}))
        argv[argv.index("--model") + 1] = fact
        _refused(argv, capsys, f"{a['mrpc']}", "task 'mrpc'", "not 'sst2'")
    else:
        model = argv[argv.index("--model") + 1]
        _refused(argv, capsys, f"{model}", "task 'mrpc'", "not 'sst2'")
    assert not [p for p in tmp_path.iterdir() if p.name != "fact-sst2"]


def test_the_recorded_task_is_accepted_and_a_pretrained_model_has_none(artifacts, tmp_path, capsys):
    assert main(["evaluate", "--model", str(artifacts["mrpc"]), "--task", "mrpc", "--data", str(artifacts["data"]),
                 "--device", "cpu", "--out", str(tmp_path / "e.json")]) == 0
    plain = make_tiny_model(tmp_path / "plain")  # no metrics.json: a pre-trained model, any task
    assert main(["evaluate", "--model", str(plain), "--task", "sst2", "--data", str(artifacts["data"]),
                 "--device", "cpu", "--out", str(tmp_path / "p.json")]) == 0


# --------------------------------------------------------------------------------------------
# a factorization density above the pruned model's
# --------------------------------------------------------------------------------------------

def test_factorizing_above_the_pruned_density_warns_with_the_reason(tmp_path, capsys):
    data = write_glue_task(tmp_path / "data", "sst2")
    pruned = _artifact(tmp_path / "pruned", "sst2", stage="prune", density=0.25)
    argv = ["factorize", "--model", str(pruned), "--task", "sst2", "--data", str(data), "--device", "cpu",
            "--method", "svd"]
    assert main([*argv, "--density", "0.5", "--out", str(tmp_path / "f50")]) == 0
    err = capsys.readouterr().err
    warning = [line for line in err.splitlines() if line.startswith("lpaf factorize: warning: --density 0.5")]
    assert warning, err
    assert "above the density of the pruned model" in warning[0] and "0.25" in warning[0]
    assert "more weights than the pruned model keeps" in warning[0]
    assert main([*argv, "--density", "0.25", "--out", str(tmp_path / "f25")]) == 0
    assert "warning: --density" not in capsys.readouterr().err
