"""The finetune / evaluate stages through the real CLI, resume, and CLI bad input."""

from __future__ import annotations

import json
import os
import pytest

from conftest import make_tiny_model
from lpaf.cli import main

QUICK = ["--max-length", "32", "--batch-size", "8", "--epochs", "1", "--seed", "1", "--device", "cpu"]


def _run(argv: list) -> int:
    return main([str(a) for a in argv])


@pytest.mark.parametrize("task", ["sst2", "mrpc", "stsb", "mnli", "cola"])
def test_finetune_then_evaluate_every_head(tmp_path, glue_dir, task):
    labels = {"stsb": 1, "mnli": 3}.get(task, 2)
    model = make_tiny_model(tmp_path / "m", num_labels=labels)
    out = tmp_path / "ft"
    assert _run(["finetune", "--model", model, "--task", task, "--data", glue_dir, "--out", out, *QUICK]) == 0
    m = json.loads((out / "metrics.json").read_text())
    from lpaf.tasks import get_task

    spec = get_task(task)
    assert set(m["metrics"]) == set(spec.metric_keys())
    assert m["headline_metric"] == spec.headline_key and m["headline"] == m["metrics"][spec.headline_key]
    assert m["params"]["encoder_linear"] == 2 * (4 * 32 * 32 + 2 * 32 * 64)
    for key in ("seed", "wall_time_s", "versions", "args", "config_hash", "train", "n_train_examples"):
        assert key in m
    assert m["versions"]["torch"] and m["args"]["task"] == task
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.bin"))
    assert not (tmp_path / ".ft.checkpoints").exists(), "checkpoints are removed once the artifact is complete"
    ev = tmp_path / "eval.json"
    assert _run(["evaluate", "--model", out, "--task", task, "--data", glue_dir, "--out", ev, "--max-length", 32,
                 "--device", "cpu"]) == 0
    e = json.loads(ev.read_text())
    assert e["metrics"] == pytest.approx(m["metrics"])


def test_finetune_squad_end_to_end(tmp_path, squad_dir):
    model = make_tiny_model(tmp_path / "m", qa=True)
    out = tmp_path / "ft"
    assert _run(["finetune", "--model", model, "--task", "squad", "--data", squad_dir, "--out", out,
                 "--doc-stride", "8", *QUICK]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert set(m["metrics"]) == {"exact_match", "f1"}
    assert 0.0 <= m["metrics"]["exact_match"] <= m["metrics"]["f1"] <= 100.0


def test_resume_after_sigterm_matches_uninterrupted(tmp_path, glue_dir, monkeypatch, capsys):
    model = make_tiny_model(tmp_path / "m")
    args = ["finetune", "--model", model, "--task", "sst2", "--data", glue_dir, "--max-length", 32,
            "--batch-size", 8, "--epochs", 2, "--seed", 3, "--device", "cpu", "--save-steps", 4]
    assert _run([*args, "--out", tmp_path / "full"]) == 0
    monkeypatch.setenv("LPAF_FAULT_SIGTERM_AT_STEP", "6")
    assert _run([*args, "--out", tmp_path / "cut"]) == 75
    err = capsys.readouterr().err
    assert "received SIGTERM; checkpoint saved at step 6" in err
    assert not (tmp_path / "cut").exists(), "an interrupted stage leaves no artifact"
    monkeypatch.delenv("LPAF_FAULT_SIGTERM_AT_STEP")
    assert _run([*args, "--out", tmp_path / "cut"]) == 0
    assert "resuming from checkpoint" in capsys.readouterr().out
    full = json.loads((tmp_path / "full" / "metrics.json").read_text())
    cut = json.loads((tmp_path / "cut" / "metrics.json").read_text())
    assert cut["train"]["resumed_from_step"] == 6
    assert cut["train"]["train_steps"] == full["train"]["train_steps"] == 16
    assert cut["metrics"] == pytest.approx(full["metrics"], abs=1e-6)
    from safetensors.torch import load_file

    a, b = load_file(tmp_path / "full" / "model.safetensors"), load_file(tmp_path / "cut" / "model.safetensors")
    for k in a:
        assert (a[k] - b[k]).abs().max().item() < 1e-5, k


def test_usr1_ahead_of_the_time_limit_checkpoints_and_resumes(tmp_path, glue_dir, monkeypatch, capsys):
    """SLURM's --signal=USR1@N reaches the stage as SIGUSR1: it checkpoints at the next step and exits
    75; the same command resumes and ends where an uninterrupted run ends."""
    model = make_tiny_model(tmp_path / "m")
    args = ["finetune", "--model", model, "--task", "sst2", "--data", glue_dir, "--max-length", 32,
            "--batch-size", 8, "--epochs", 1, "--seed", 3, "--device", "cpu", "--save-steps", 100]
    assert _run([*args, "--out", tmp_path / "full"]) == 0
    monkeypatch.setenv("LPAF_FAULT_SIGNAL_AT_STEP", "3:USR1")  # a real SIGUSR1 to this process at step 3
    assert _run([*args, "--out", tmp_path / "cut"]) == 75
    assert "received SIGUSR1; checkpoint saved at step 3" in capsys.readouterr().err
    monkeypatch.delenv("LPAF_FAULT_SIGNAL_AT_STEP")
    assert _run([*args, "--out", tmp_path / "cut"]) == 0
    full = json.loads((tmp_path / "full" / "metrics.json").read_text())
    cut = json.loads((tmp_path / "cut" / "metrics.json").read_text())
    assert cut["train"]["resumed_from_step"] == 3 and cut["metrics"] == pytest.approx(full["metrics"], abs=1e-6)


def test_warned_before_a_slurm_time_limit_it_checkpoints_and_the_retry_resumes(tmp_path, glue_dir, monkeypatch,
                                                                                capsys):
    """In a SLURM job with LPAF_SIGNAL_BEFORE_END_S (profiles/slurm), the stage raises SIGUSR1 itself
    that many seconds before the job's time limit (squeue's time left): checkpoint, exit 75, resume."""
    import stat

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "squeue").write_text("#!/bin/sh\necho '0:40'\n")  # 40 s left: inside the 300 s margin
    (bin_dir / "squeue").chmod(0o755 | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    model = make_tiny_model(tmp_path / "m")
    args = ["finetune", "--model", model, "--task", "sst2", "--data", glue_dir, "--max-length", 32,
            "--batch-size", 8, "--epochs", 1, "--seed", 3, "--device", "cpu", "--save-steps", 100]
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("LPAF_SIGNAL_BEFORE_END_S", "300")
    assert _run([*args, "--out", tmp_path / "cut"]) == 75
    captured = capsys.readouterr()
    assert "SLURM job 4242 has 40 s left: SIGUSR1 in 0 s" in captured.out
    assert "received SIGUSR1; checkpoint saved at step" in captured.err
    assert not (tmp_path / "cut").exists()
    monkeypatch.delenv("SLURM_JOB_ID")  # the retry (a new job with more time)
    assert _run([*args, "--out", tmp_path / "cut"]) == 0
    cut = json.loads((tmp_path / "cut" / "metrics.json").read_text())
    assert 1 <= cut["train"]["resumed_from_step"] < cut["train"]["train_steps"]


def test_resume_refuses_checkpoints_of_other_settings(tmp_path, glue_dir, monkeypatch, capsys):
    """Checkpoints left by an interrupted run are not resumed by a command with other training
    settings (here another --max-train-samples and --lr): one-line error, exit 2, nothing written;
    the same command still resumes."""
    model = make_tiny_model(tmp_path / "m")
    args = ["finetune", "--model", model, "--task", "sst2", "--data", glue_dir, "--max-length", 32,
            "--batch-size", 8, "--epochs", 2, "--seed", 3, "--device", "cpu", "--save-steps", 4,
            "--out", tmp_path / "cut"]
    monkeypatch.setenv("LPAF_FAULT_SIGTERM_AT_STEP", "6")
    assert _run(args) == 75
    monkeypatch.delenv("LPAF_FAULT_SIGTERM_AT_STEP")
    capsys.readouterr()
    assert _run([*args, "--lr", "1e-3"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "other settings (lr: 2e-05 then, 0.001 now)" in err, err
    assert not (tmp_path / "cut").exists()
    assert _run([*args, "--max-train-samples", "16"]) == 2
    assert "n_train_examples" in capsys.readouterr().err
    assert _run(args) == 0
    assert "resuming from checkpoint" in capsys.readouterr().out


def test_help_lists_stages(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for stage in ("finetune", "evaluate", "prune", "factorize", "retrain", "rank-study", "fetch-data", "fetch-model"):
        assert stage in out


def _exit_code(argv):
    try:
        return main(argv)
    except SystemExit as e:  # argparse errors
        return e.code


@pytest.mark.parametrize("argv,pattern", [
    (["finetune", "--task", "nope"], r"unknown task 'nope'; valid tasks: cola, sst2"),
    (["finetune", "--task", "sst2", "--epochs", "abc"], r"argument --epochs: invalid float value: 'abc'"),
    (["finetune", "--task", "sst2", "--device", "tpu"], r"argument --device: invalid choice: 'tpu'"),
    (["finetune", "--task", "sst2", "--distill-alpha", "1.5"], r"--distill-alpha must be in \[0, 1\] \(got 1.5\)"),
    (["finetune", "--task", "sst2", "--max-train-samples", "0"], r"--max-train-samples must be >= 1"),
    (["finetune", "--task", "sst2", "--data", "{missing}"], r"data directory not found: .*missing"),
    (["finetune", "--task", "rte", "--data", "{glue_dir_empty}"], r"no rte data with split\(s\) train, validation"),
    (["finetune", "--task", "sst2", "--model", "{noweights}"], r"model directory .*noweights has no \*.safetensors"),
    (["finetune", "--task", "sst2", "--model", "{truncated}"], r"model.safetensors is not a valid safetensors file"),
])
def test_cli_bad_input_one_line_exit_2(tmp_path, glue_dir, capsys, argv, pattern):
    model = make_tiny_model(tmp_path / "fixtures" / "m")
    noweights = tmp_path / "fixtures" / "noweights"
    noweights.mkdir()
    (noweights / "config.json").write_text((model / "config.json").read_text())
    truncated = tmp_path / "fixtures" / "truncated"
    truncated.mkdir()
    for f in model.iterdir():
        (truncated / f.name).write_bytes(f.read_bytes())
    data = (model / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    incomplete = tmp_path / "fixtures" / "incomplete"
    incomplete.mkdir()
    for f in model.iterdir():
        (incomplete / f.name).write_bytes(f.read_bytes())
    (tmp_path / "fixtures" / "empty_data").mkdir()
    subs = {"{missing}": str(tmp_path / "missing"), "{glue_dir_empty}": str(tmp_path / "fixtures" / "empty_data"),
            "{noweights}": str(noweights), "{truncated}": str(truncated), "{incomplete}": str(incomplete),
            "{out}": str(tmp_path / "out")}
    argv = [subs.get(a, a).replace("{out}", str(tmp_path / "out")) for a in argv]
    if "--model" not in argv:
        argv += ["--model", str(model)]
    if "--data" not in argv:
        argv += ["--data", str(glue_dir)]
    if argv[0] == "finetune" and "--out" not in argv:
        argv += ["--out", str(tmp_path / "out" / "ft")]
    before = {p for p in tmp_path.rglob("*")}
    capsys.readouterr()  # drop what building the fixtures printed
    code = _exit_code(argv)
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if l.strip()]
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    import re

    assert re.search(pattern, lines[0]), lines[0]
    written = {p for p in set(tmp_path.rglob("*")) - before if "lpaf_cache" not in str(p)}
    assert not written, f"bad input must write nothing, wrote {sorted(written)}"


def test_label_count_mismatch_teacher(tmp_path, glue_dir, capsys):
    model = make_tiny_model(tmp_path / "m", num_labels=3)
    (model / "metrics.json").write_text("{}")  # pose as a finished lpaf artifact
    capsys.readouterr()
    code = main(["evaluate", "--model", str(model), "--task", "sst2", "--data", str(glue_dir),
                 "--out", str(tmp_path / "e.json")])
    err = capsys.readouterr().err
    assert code == 2 and "has 3 labels but task sst2 has 2" in err
    assert not (tmp_path / "e.json").exists()


def test_workers_change_nothing_and_tensorboard_logs_beside_the_output(tmp_path, glue_dir):
    """DataLoader workers and tokenization processes come from flags and leave the trained model
    unchanged; --report-to tensorboard writes event files to <out>.tensorboard."""
    model = make_tiny_model(tmp_path / "m")
    args = ["finetune", "--model", model, "--task", "sst2", "--data", glue_dir, "--max-length", 32,
            "--batch-size", 8, "--epochs", 1, "--seed", 3, "--device", "cpu", "--logging-steps", 2]
    assert _run([*args, "--out", tmp_path / "plain", "--cache-dir", tmp_path / "c1"]) == 0
    assert _run([*args, "--out", tmp_path / "workers", "--dataloader-num-workers", 2,
                 "--preprocessing-num-workers", 2, "--cache-dir", tmp_path / "c2", "--report-to", "tensorboard"]) == 0
    a = json.loads((tmp_path / "plain" / "metrics.json").read_text())
    b = json.loads((tmp_path / "workers" / "metrics.json").read_text())
    assert a["metrics"] == pytest.approx(b["metrics"], abs=1e-6)
    assert [s for s, _ in a["train"]["loss_history"]] == [s for s, _ in b["train"]["loss_history"]]
    assert [v for _, v in a["train"]["loss_history"]] == pytest.approx([v for _, v in b["train"]["loss_history"]],
                                                                       abs=1e-5)
    events = list((tmp_path / "workers.tensorboard").rglob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    assert not (tmp_path / "plain.tensorboard").exists()


def test_a_degenerate_teacher_exits_3_and_is_kept_aside_unless_accepted(tmp_path, glue_dir, monkeypatch, capsys):
    """A teacher that predicts one class for every dev example is a failed run: exit 3 (documented),
    one error line, the artifact kept for inspection beside --out (never at --out, so nothing builds on
    it); --allow-degenerate (or LPAF_ALLOW_DEGENERATE=1) accepts it with a warning and exit 0."""
    monkeypatch.delenv("LPAF_ALLOW_DEGENERATE", raising=False)
    model = make_tiny_model(tmp_path / "m", constant_class=1)
    args = ["finetune", "--model", model, "--task", "sst2", "--data", glue_dir, "--max-steps", 2, *QUICK]
    out = tmp_path / "ft"
    capsys.readouterr()
    assert _run([*args, "--out", out]) == 3
    err = capsys.readouterr().err.strip()
    assert err.splitlines()[-1].startswith("lpaf: error: degenerate teacher: class 1 for 100% of 24 validation "
                                           "examples"), err
    assert f"kept for inspection in {out}.degenerate" in err and "--allow-degenerate" in err
    assert not out.exists() and json.loads((tmp_path / "ft.degenerate" / "metrics.json").read_text())["predictions"][
        "degenerate"]
    assert not (tmp_path / ".ft.checkpoints").exists()
    assert _run([*args, "--out", out, "--allow-degenerate"]) == 0
    err = capsys.readouterr().err
    assert "lpaf finetune: warning: degenerate dev predictions (class 1 for 100% of 24 validation examples)" in err
    assert json.loads((out / "metrics.json").read_text())["args"]["allow_degenerate"] is True
    monkeypatch.setenv("LPAF_ALLOW_DEGENERATE", "1")
    assert _run([*args, "--out", tmp_path / "ft2"]) == 0


def test_finetune_help_documents_exit_code_3(capsys):
    with pytest.raises(SystemExit):
        main(["finetune", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--allow-degenerate" in text and "exit code 3: a degenerate teacher" in text.lower()
