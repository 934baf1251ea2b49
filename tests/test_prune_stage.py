"""`lpaf prune` through the real CLI: the artifact, its reload, bad input, and SIGTERM resume."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification

from conftest import make_tiny_model
from lpaf.cli import main
from lpaf.errors import LpafError
from lpaf.modules import find_encoder_linears
from lpaf.pruning import keep_count

QUICK = ["--max-length", "32", "--batch-size", "8", "--epochs", "2", "--seed", "1", "--device", "cpu"]


def _run(argv: list) -> int:
    return main([str(a) for a in argv])


def make_teacher(root: Path, num_labels: int = 2) -> Path:
    """A tiny model directory that passes as a finished `lpaf finetune` artifact."""
    model = make_tiny_model(root, num_labels=num_labels)
    (model / "metrics.json").write_text(json.dumps({"stage": "finetune", "method": "dense",
                                                    "metrics": {"accuracy": 0.5}, "headline": 0.5}))
    return model


def _outputs_absent(tmp_path: Path, out: Path) -> bool:
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(f".{out.name}")]
    return not out.exists() and not leftovers


@pytest.mark.parametrize("method", ["movement", "magnitude", "soft-movement", "platon"])
def test_prune_artifact_reloads_with_exact_zeros(tmp_path, glue_dir, method):
    teacher = make_teacher(tmp_path / "teacher")
    out = tmp_path / "pruned"
    assert _run(["prune", "--model", teacher, "--task", "sst2", "--data", glue_dir, "--out", out,
                 "--method", method, "--density", 0.25, "--logging-steps", 4, *QUICK]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["stage"] == "prune" and m["method"] == method and m["density"] == 0.25
    assert m["achieved_density"]["overall"] == pytest.approx(0.25)
    assert m["params"]["encoder_linear_nonzero"] == m["achieved_density"]["kept"] == 16384 // 4
    assert m["params"]["total_nonzero"] < m["params"]["total"]
    assert m["teacher"]["headline"] == 0.5 and m["args"]["method"] == method
    for key in ("step_time_s_mean", "step_time_s_median", "train_steps"):
        assert key in m["train"]
    # the logged training loss, step by step: what shows a run that learns nothing
    history = m["train"]["loss_history"]
    assert history and [s for s, _ in history] == sorted({s for s, _ in history})
    assert history[-1][0] <= m["train"]["train_steps"] and all(math.isfinite(loss) for _, loss in history)
    assert m["pruning_step_time"]["mask_updates"] > 0
    assert not (tmp_path / ".pruned.checkpoints").exists()
    # the learned-or-magnitude diagnostic: overlap with the teacher's top-|W| mask, per matrix and mean
    overlap = m["magnitude_overlap"]
    assert set(overlap["per_matrix"]) == set(m["achieved_density"]["per_matrix"])
    assert overlap["random_baseline"] == pytest.approx(0.25)
    assert overlap["mean"] == pytest.approx(sum(overlap["per_matrix"].values()) / 12)

    masks = load_file(str(out / "masks.safetensors"))
    scores = load_file(str(out / "scores.safetensors"))
    model = AutoModelForSequenceClassification.from_pretrained(str(out))  # stock transformers, no custom code
    linears = find_encoder_linears(model)
    assert set(masks) == set(scores) == set(linears) and len(linears) == 12
    for name, linear in linears.items():
        mask = masks[name]
        assert mask.dtype == torch.bool and scores[name].dtype == torch.float32
        assert int(mask.sum()) == keep_count(0.25, mask.numel()), name
        assert torch.equal(linear.weight != 0, mask), name
        assert m["achieved_density"]["per_matrix"][name]["kept"] == int(mask.sum())
    assert not any("parametrizations" in k for k in load_file(str(out / "model.safetensors")))
    reloaded_acc = m["metrics"]["accuracy"]
    ev = tmp_path / "eval.json"
    assert _run(["evaluate", "--model", out, "--task", "sst2", "--data", glue_dir, "--out", ev,
                 "--max-length", 32, "--device", "cpu"]) == 0
    assert json.loads(ev.read_text())["metrics"]["accuracy"] == pytest.approx(reloaded_acc)


def test_global_scope_and_no_distill(tmp_path, glue_dir):
    teacher = make_teacher(tmp_path / "teacher")
    out = tmp_path / "pruned"
    assert _run(["prune", "--model", teacher, "--task", "sst2", "--data", glue_dir, "--out", out,
                 "--method", "magnitude", "--density", 0.1, "--scope", "global", "--no-distill", *QUICK]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["achieved_density"]["kept"] == keep_count(0.1, 16384) == 1638 == m["params"]["encoder_linear_nonzero"]
    assert m["args"]["distill"] is False and m["args"]["distill_alpha"] == 0.0


@pytest.mark.parametrize("method", ["movement", "platon"])
def test_resume_after_sigterm_matches_uninterrupted(tmp_path, glue_dir, monkeypatch, capsys, method):
    teacher = make_teacher(tmp_path / "teacher")
    args = ["prune", "--model", teacher, "--task", "sst2", "--data", glue_dir, "--method", method,
            "--density", 0.25, "--save-steps", 4, "--scores-lr", 0.1, *QUICK]
    assert _run([*args, "--out", tmp_path / "full"]) == 0
    monkeypatch.setenv("LPAF_FAULT_SIGTERM_AT_STEP", "6")  # mid-schedule: 16 steps, pruning on steps 3..13
    assert _run([*args, "--out", tmp_path / "cut"]) == 75
    assert "received SIGTERM; checkpoint saved at step 6" in capsys.readouterr().err
    assert not (tmp_path / "cut").exists()
    monkeypatch.delenv("LPAF_FAULT_SIGTERM_AT_STEP")
    assert _run([*args, "--out", tmp_path / "cut"]) == 0
    assert "resuming from checkpoint" in capsys.readouterr().out
    full = json.loads((tmp_path / "full" / "metrics.json").read_text())
    cut = json.loads((tmp_path / "cut" / "metrics.json").read_text())
    assert cut["train"]["resumed_from_step"] == 6
    assert cut["metrics"] == full["metrics"]
    assert cut["train"]["train_steps"] == full["train"]["train_steps"] == 16
    for file in ("masks.safetensors", "scores.safetensors", "model.safetensors"):
        a, b = load_file(str(tmp_path / "full" / file)), load_file(str(tmp_path / "cut" / file))
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=f"{file}:{k}")


@pytest.mark.parametrize("extra, pattern", [
    (["--density", "0"], r"--density must be in \(0, 1\] \(got 0.0\)"),
    (["--density", "1.5"], r"--density must be in \(0, 1\] \(got 1.5\)"),
    (["--density", "-0.1"], r"--density must be in \(0, 1\]"),
    (["--density", "a"], r"argument --density: invalid float value: 'a'"),
    (["--method", "snip"], r"argument --method: invalid choice: 'snip'"),
    (["--scope", "row"], r"argument --scope: invalid choice: 'row'"),
    (["--initial-warmup", "0.7", "--final-warmup", "0.5"], r"--initial-warmup \+ --final-warmup must be < 1"),
    (["--scores-lr", "0", "--density", "2"], r"--density must be in \(0, 1\] \(got 2.0\); .*--scores-lr must be > 0"),
])
def test_cli_bad_settings_exit_2_one_line_nothing_written(tmp_path, glue_dir, capsys, extra, pattern):
    teacher = make_teacher(tmp_path / "teacher")
    out = tmp_path / "pruned"
    argv = ["prune", "--model", teacher, "--task", "sst2", "--data", glue_dir, "--out", out, *QUICK, *extra]
    try:
        rc = _run(argv)
    except SystemExit as e:  # argparse's own errors (type, choices) exit from the parser
        rc = e.code
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert re.search(pattern, err), err
    assert _outputs_absent(tmp_path, out)


def test_teacher_with_wrong_label_count(tmp_path, glue_dir, capsys):
    teacher = make_teacher(tmp_path / "teacher", num_labels=3)
    out = tmp_path / "pruned"
    assert _run(["prune", "--model", teacher, "--task", "sst2", "--data", glue_dir, "--out", out, *QUICK]) == 2
    err = capsys.readouterr().err
    assert "has 3 labels but task sst2 has 2" in err and len(err.strip().splitlines()) == 1
    assert _outputs_absent(tmp_path, out)


def test_model_without_completion_record_is_a_pretrained_start_that_needs_a_teacher(tmp_path, glue_dir, capsys):
    model = make_tiny_model(tmp_path / "teacher")  # no metrics.json: not an lpaf artifact, so a pre-trained start
    out = tmp_path / "pruned"
    assert _run(["prune", "--model", model, "--task", "sst2", "--data", glue_dir, "--out", out, *QUICK]) == 2
    err = capsys.readouterr().err
    assert "is a pre-trained model" in err and "pass --teacher DIR" in err and len(err.strip().splitlines()) == 1
    assert _outputs_absent(tmp_path, out)


def test_model_without_encoder_linears(tmp_path, glue_dir, capsys):
    from transformers import BertTokenizerFast, GPT2Config, GPT2ForSequenceClassification

    gpt = tmp_path / "gpt2"
    cfg = GPT2Config(vocab_size=100, n_embd=16, n_layer=1, n_head=2, n_positions=64, num_labels=2, pad_token_id=0)
    GPT2ForSequenceClassification(cfg).save_pretrained(gpt)
    BertTokenizerFast.from_pretrained(str(make_tiny_model(tmp_path / "tok"))).save_pretrained(gpt)
    (gpt / "metrics.json").write_text(json.dumps({"stage": "finetune"}))
    out = tmp_path / "pruned"
    assert _run(["prune", "--model", gpt, "--task", "sst2", "--data", glue_dir, "--out", out, *QUICK]) == 2
    err = capsys.readouterr().err
    assert "no encoder linear layers found in GPT2ForSequenceClassification" in err
    assert len(err.strip().splitlines()) == 1
    assert _outputs_absent(tmp_path, out)


def test_load_pruning_tensors_checks_the_model(tmp_path, glue_dir):
    from lpaf.stages.prune import load_pruning_tensors

    teacher = make_teacher(tmp_path / "teacher")
    out = tmp_path / "pruned"
    assert _run(["prune", "--model", teacher, "--task", "sst2", "--data", glue_dir, "--out", out,
                 "--method", "magnitude", *QUICK]) == 0
    model = AutoModelForSequenceClassification.from_pretrained(str(out))
    masks = load_pruning_tensors(out, model)
    assert len(masks) == 12
    from transformers import BertConfig, BertForSequenceClassification

    wider = BertForSequenceClassification(BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                                     intermediate_size=64, vocab_size=100))
    with pytest.raises(LpafError, match="has shape .* written for another model"):
        load_pruning_tensors(out, wider, "scores.safetensors")
    deeper = BertForSequenceClassification(BertConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                                                      intermediate_size=64, vocab_size=100))
    with pytest.raises(LpafError, match="6 modules missing"):
        load_pruning_tensors(out, deeper)
    (out / "masks.safetensors").write_bytes(b"\x10\x00")
    with pytest.raises(LpafError, match="not a readable safetensors file"):
        load_pruning_tensors(out, model)


def test_best_dev_evaluation_of_a_pruning_run_counts_only_the_final_density():
    """A mid-schedule evaluation scores a denser model: it is never the pruned model's best."""
    from types import SimpleNamespace

    from lpaf.stages.prune import best_at_final_density

    pruner = SimpleNamespace(schedule=SimpleNamespace(freeze_step=80))
    stats = {"train_steps": 100, "eval_history": [{"step": 40, "accuracy": 0.95}, {"step": 90, "accuracy": 0.81}]}
    assert best_at_final_density(stats, {"accuracy": 0.80}, pruner, "accuracy") == {"step": 90, "accuracy": 0.81}
    assert best_at_final_density(stats, {"accuracy": 0.85}, pruner, "accuracy")["step"] == 100  # end of training
    assert best_at_final_density({"train_steps": 100}, {"accuracy": 0.7}, pruner, "accuracy")["accuracy"] == 0.7


def test_masks_file_bytes_do_not_depend_on_the_process(tmp_path):
    """Same masks, same bytes, from separate processes (safetensors orders a multi-key metadata header
    differently per process; one sorted key keeps artifacts byte-identical across reruns)."""
    import hashlib
    import subprocess
    import sys

    code = ("import sys, torch; from types import SimpleNamespace; from pathlib import Path; "
            "from lpaf.stages.prune import _save_tensors; "
            "_save_tensors(Path(sys.argv[1]), {'a': torch.ones(3), 'b': torch.zeros(2)}, "
            "SimpleNamespace(method='movement', density=0.5, scope='encoder'))")
    digests = set()
    for i in range(3):
        path = tmp_path / f"{i}.safetensors"
        subprocess.run([sys.executable, "-c", code, str(path)], check=True)
        digests.add(hashlib.sha256(path.read_bytes()).hexdigest())
    assert len(digests) == 1
