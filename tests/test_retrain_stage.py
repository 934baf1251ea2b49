"""``lpaf retrain`` through the real CLI: both schemes, the saved format, determinism, resume, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import make_tiny_model, write_glue_task
from lpaf.cli import main
from lpaf.mixed_rank import SOURCE_WEIGHTS_FILE

RANK = 4
TRAIN = ["--task", "sst2", "--max-length", "32", "--batch-size", "16", "--epochs", "2", "--device", "cpu",
         "--save-steps", "3", "--eval-every-steps", "2", "--lr", "1e-3"]


def _run(argv: list) -> int:
    """Exit code of ``lpaf ...``; argparse errors exit through SystemExit, stage errors return."""
    try:
        return main([str(a) for a in argv])
    except SystemExit as e:
        return int(e.code)


def _complete(directory: Path, record: dict) -> None:
    (directory / "metrics.json").write_text(json.dumps(record))


def _factorize_dir(teacher: Path, out: Path) -> Path:
    """A factorized artifact as ``lpaf factorize`` writes it: compressed model, source matrices,
    metrics.json. Sources are the teacher's matrices magnitude-pruned to density 0.5."""
    from safetensors.torch import save_file
    from transformers import AutoTokenizer, BertForSequenceClassification

    from lpaf.factorize import svd
    from lpaf.lowrank import save_lowrank_model, swap_encoder_linears
    from lpaf.modules import find_encoder_linears

    model = BertForSequenceClassification.from_pretrained(teacher)
    sources = {}
    for name, linear in find_encoder_linears(model).items():
        w = linear.weight.detach()
        sources[name] = (w * (w.abs() >= w.abs().flatten().median())).contiguous()
    swap_encoder_linears(model, {name: svd(w, None, RANK) for name, w in sources.items()}, strict=True)
    save_lowrank_model(model, out, AutoTokenizer.from_pretrained(teacher))
    save_file(sources, str(out / SOURCE_WEIGHTS_FILE))
    _complete(out, {"stage": "factorize", "method": "svd", "density": 0.5})
    return out


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("retrain")
    teacher = make_tiny_model(root / "teacher")
    _complete(teacher, {"stage": "finetune"})
    factorized = _factorize_dir(teacher, root / "fact")
    no_source = root / "fact-no-source"
    shutil.copytree(factorized, no_source)
    (no_source / SOURCE_WEIGHTS_FILE).unlink()
    incomplete_teacher = root / "incomplete-teacher"
    shutil.copytree(teacher, incomplete_teacher)
    (incomplete_teacher / "metrics.json").unlink()
    data = write_glue_task(root / "glue", "sst2", n_train=64, n_dev=24)
    return {"root": root, "teacher": teacher, "factorized": factorized, "no_source": no_source, "data": data,
            "incomplete_teacher": incomplete_teacher}


def _retrain(assets, out: Path, *extra) -> int:
    return _run(["retrain", "--model", assets["factorized"], "--teacher", assets["teacher"], "--data", assets["data"],
                 "--out", out, *TRAIN, *extra])


@pytest.fixture(scope="module")
def mixed_run(assets, tmp_path_factory) -> Path:
    """One uninterrupted mixed-rank run (8 steps, p(t) from 1 to 0 over the first half; the same step
    count as plain, so the schedule is easy to check by hand)."""
    out = assets["root"] / "mixed"
    with pytest.MonkeyPatch.context() as mp:  # module scope: the per-test cache fixture is not active yet
        mp.setenv("LPAF_CACHE", str(tmp_path_factory.mktemp("cache")))
        assert _retrain(assets, out, "--scheme", "mixed-rank", "--seed", "3", "--factor-budget", "steps") == 0
    return out


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(directory / "model.safetensors"))


def test_mixed_rank_writes_the_plain_compressed_format(assets, mixed_run):
    saved = _weights(mixed_run)
    factorized = _weights(assets["factorized"])
    assert set(saved) == set(factorized), "no full-rank weight, no training-time extra"
    assert not any("source" in k or "extra_" in k for k in saved)
    assert not (mixed_run / SOURCE_WEIGHTS_FILE).exists()
    config = json.loads((mixed_run / "config.json").read_text())
    assert config["lpaf_lowrank"]["ranks"] == json.loads((assets["factorized"] / "config.json").read_text())[
        "lpaf_lowrank"]["ranks"]
    changed = [k for k in saved if not torch.equal(saved[k], factorized[k])]
    assert any(k.endswith(".A.weight") for k in changed) and any(k.endswith(".B.weight") for k in changed)


def test_mixed_rank_metrics_record(assets, mixed_run):
    m = json.loads((mixed_run / "metrics.json").read_text())
    assert m["stage"] == "retrain" and m["scheme"] == "mixed-rank" and m["density"] == 0.5
    assert set(m["metrics"]) == {"accuracy"}
    assert m["train"]["train_steps"] == 8
    schedule = m["schedule"]
    assert schedule["p_points"][0] == {"step": 0, "p": 1.0}
    assert schedule["total_steps"] == 8 and schedule["anneal_steps"] == 4.0
    assert schedule["first_step_with_p_zero"] == 4
    assert schedule["by_quarter"][0]["expanded_fraction"] > 0.5
    assert schedule["by_quarter"][3]["expanded_fraction"] == 0.0
    history = m["train"]["eval_history"]
    assert [h["step"] for h in history] == [2, 4, 6, 8]
    assert m["best_eval"]["accuracy"] == max(h["accuracy"] for h in history)
    assert history[-1]["accuracy"] == pytest.approx(m["metrics"]["accuracy"])
    assert m["params"]["encoder_linear"] == 2 * (4 * RANK * 64 + RANK * 96 + RANK * 96)
    phases = m["train"]["step_time_by_phase"]
    assert phases["anneal_steps_timed"] == 3 and phases["after_anneal_steps_timed"] == 4
    assert m["wall_time_s"] > 0 and m["modules_detached"] == 12
    assert isinstance(m["predictions"]["degenerate"], bool)
    card = (mixed_run / "README.md").read_text()  # the model card beside the weights
    assert "re-train: mixed-rank" in card and "lpaf.load_model" in card and f"**Seed:** {m['seed']}" in card


def test_saved_model_reloads_to_the_evaluated_metrics(assets, mixed_run, tmp_path):
    out = tmp_path / "eval.json"
    assert _run(["evaluate", "--model", mixed_run, "--task", "sst2", "--data", assets["data"], "--out", out,
                 "--max-length", 32, "--device", "cpu"]) == 0
    m = json.loads((mixed_run / "metrics.json").read_text())
    assert json.loads(out.read_text())["metrics"] == m["metrics"]


def test_same_seed_gives_the_same_final_weights(assets, mixed_run):
    again = assets["root"] / "mixed-again"
    assert _retrain(assets, again, "--scheme", "mixed-rank", "--seed", "3", "--factor-budget", "steps") == 0
    a, b = _weights(mixed_run), _weights(again)
    assert all(torch.equal(a[k], b[k]) for k in a)
    other = assets["root"] / "mixed-seed4"
    assert _retrain(assets, other, "--scheme", "mixed-rank", "--seed", "4", "--factor-budget", "steps") == 0
    c = _weights(other)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_resume_after_sigterm_matches_uninterrupted(assets, mixed_run, monkeypatch, capsys):
    cut = assets["root"] / "mixed-cut"
    monkeypatch.setenv("LPAF_FAULT_SIGTERM_AT_STEP", "3")  # mid-anneal, right after the step-3 checkpoint
    assert _retrain(assets, cut, "--scheme", "mixed-rank", "--seed", "3", "--factor-budget", "steps") == 75
    assert "checkpoint saved at step 3" in capsys.readouterr().err
    assert not cut.exists()
    monkeypatch.delenv("LPAF_FAULT_SIGTERM_AT_STEP")
    assert _retrain(assets, cut, "--scheme", "mixed-rank", "--seed", "3", "--factor-budget", "steps") == 0
    assert "resuming from checkpoint" in capsys.readouterr().out
    full = json.loads((mixed_run / "metrics.json").read_text())
    resumed = json.loads((cut / "metrics.json").read_text())
    assert resumed["train"]["resumed_from_step"] == 3
    assert resumed["metrics"] == pytest.approx(full["metrics"], abs=1e-6)
    assert resumed["schedule"]["by_quarter"] == full["schedule"]["by_quarter"]
    assert [h["accuracy"] for h in resumed["train"]["eval_history"]] == pytest.approx(
        [h["accuracy"] for h in full["train"]["eval_history"]])
    a, b = _weights(mixed_run), _weights(cut)
    for k in a:
        assert (a[k] - b[k]).abs().max().item() < 1e-5, k


def test_resume_restores_a_trainable_source_matrix(assets, monkeypatch, capsys):
    """A trained W_s lives only in the checkpoint: resume must take it from there, not from the input."""
    flags = ["--scheme", "mixed-rank", "--seed", "5", "--trainable-source", "--anneal-fraction", "1.0"]
    full = assets["root"] / "trainable-full"
    assert _retrain(assets, full, *flags) == 0
    cut = assets["root"] / "trainable-cut"
    monkeypatch.setenv("LPAF_FAULT_SIGTERM_AT_STEP", "3")
    assert _retrain(assets, cut, *flags) == 75
    from safetensors.torch import load_file

    ckpt = load_file(str(assets["root"] / ".trainable-cut.checkpoints" / "checkpoint-3" / "model.safetensors"))
    assert any(k.endswith("source_weight") for k in ckpt)
    monkeypatch.delenv("LPAF_FAULT_SIGTERM_AT_STEP")
    assert _retrain(assets, cut, *flags) == 0
    a, b = _weights(full), _weights(cut)
    for k in a:
        assert (a[k] - b[k]).abs().max().item() < 1e-5, k
    capsys.readouterr()


@pytest.mark.parametrize("scheme,extra", [("plain", []), ("rank-sampling", ["--p0", "0.5"]),
                                          ("mixed-rank", ["--trainable-source", "--anneal", "cosine"])])
def test_other_schemes_end_to_end(assets, tmp_path, scheme, extra):
    out = tmp_path / scheme
    assert _retrain(assets, out, "--scheme", scheme, "--seed", "1", *extra) == 0
    assert set(_weights(out)) == set(_weights(assets["factorized"]))
    m = json.loads((out / "metrics.json").read_text())
    assert m["scheme"] == scheme
    assert (m["schedule"] is None) == (scheme == "plain")


def test_plain_needs_no_source_and_no_teacher_without_distillation(assets, tmp_path):
    out = tmp_path / "plain"
    assert _run(["retrain", "--model", assets["no_source"], "--data", assets["data"], "--out", out, "--scheme",
                 "plain", "--distill-alpha", "0", *TRAIN, "--eval-every-steps", "3"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["teacher"] is None
    # The end of training counts as a dev evaluation even when N does not divide the step count.
    assert [h["step"] for h in m["train"]["eval_history"]] == [3, 6, 8]
    assert m["train"]["eval_history"][-1]["accuracy"] == m["metrics"]["accuracy"]


BAD = [
    (["--p0", "1.5"], r"--p0 must be in \[0, 1\] \(got 1.5\)"),
    (["--p0", "-0.2"], r"--p0 must be in \[0, 1\]"),
    (["--anneal-fraction", "0"], r"--anneal-fraction must be in \(0, 1\] \(got 0.0\)"),
    (["--anneal-fraction", "1.5"], r"--anneal-fraction must be in \(0, 1\]"),
    (["--scheme", "bogus"], r"invalid choice: 'bogus'"),
    (["--max-rank-multiple", "1"], r"--max-rank-multiple must be > 1"),
    (["--model", "{teacher}"], r"is not a factorized model"),
    (["--model", "{no_source}"], r"fact-no-source/source_weights.safetensors is missing: --scheme mixed-rank"),
    (["--model", "{root}/nowhere"], r"model directory not found"),
    (["--teacher", "{root}/nowhere"], r"teacher directory not found"),
    (["--teacher", "{incomplete_teacher}"], r"teacher .*incomplete-teacher has no metrics.json"),
    (["--scheme", "plain", "--trainable-source"], r"--trainable-source applies to --scheme mixed-rank only"),
    (["--p0", "2", "--anneal-fraction", "0"], r"--p0 must be in .*; --anneal-fraction must be in"),
]


@pytest.mark.parametrize("extra,match", BAD)
def test_bad_input_is_one_line_exit_2_nothing_written(assets, tmp_path, capsys, extra, match):
    import re

    extra = [e.format(**{k: str(v) for k, v in assets.items()}) for e in extra]
    out = tmp_path / "out"
    argv = ["retrain", "--model", assets["factorized"], "--teacher", assets["teacher"], "--data", assets["data"],
            "--out", out, *TRAIN, "--scheme", "mixed-rank"]
    assert _run([*argv, *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("lpaf") and "Traceback" not in err
    assert re.search(match, err), err
    assert not out.exists() and not (tmp_path / ".out.checkpoints").exists()


def test_missing_teacher_with_distillation_is_reported(assets, tmp_path, capsys):
    out = tmp_path / "out"
    assert _run(["retrain", "--model", assets["factorized"], "--data", assets["data"], "--out", out, *TRAIN]) == 2
    err = capsys.readouterr().err
    assert "--teacher is required when --distill-alpha > 0 (got 0.9)" in err and err.count("\n") == 1
    assert not out.exists()


def test_incomplete_factorized_dir_is_refused(assets, tmp_path, capsys):
    partial = tmp_path / "partial"
    shutil.copytree(assets["factorized"], partial)
    (partial / "metrics.json").unlink()
    out = tmp_path / "out"
    assert _run(["retrain", "--model", partial, "--teacher", assets["teacher"], "--data", assets["data"],
                 "--out", out, *TRAIN]) == 2
    assert "has no metrics.json" in capsys.readouterr().err
    assert not out.exists()


def test_matched_factor_budget_is_the_default(assets, mixed_run, tmp_path):
    """By default mixed-rank runs the extra steps that give every module's factors the learning-rate
    integral of plain re-training (steps-matched mixed-rank gives them ~64% of it)."""
    from lpaf.mixed_rank import AnnealSchedule, matched_total_steps

    out = tmp_path / "matched"
    assert _retrain(assets, out, "--scheme", "mixed-rank", "--seed", "3") == 0
    m = json.loads((out / "metrics.json").read_text())
    budget = m["factor_budget"]
    assert budget["mode"] == "matched" and budget["plain_steps"] == 8
    assert budget["total_steps"] == matched_total_steps(8, AnnealSchedule(1.0, 0.5), 0.1) > 8
    assert m["train"]["train_steps"] == budget["total_steps"]
    assert budget["factor_lr_integral"] >= budget["plain_lr_integral"]
    steps = json.loads((mixed_run / "metrics.json").read_text())["factor_budget"]
    assert steps["mode"] == "steps" and steps["total_steps"] == 8 and steps["factor_lr_share"] < 0.8
