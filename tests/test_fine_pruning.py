"""Fine-pruning (prune from the pre-trained model with a separate teacher) and PLATON's reference mode."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import make_tiny_model
from lpaf.cli import main
from lpaf.errors import LpafError
from lpaf.modules import find_encoder_linears
from lpaf.pruning import MaskedWeight, PlatonReference, Pruner, keep_count
from lpaf.stages.prune import PruneArgs

QUICK = ["--max-length", "32", "--batch-size", "8", "--epochs", "2", "--seed", "1", "--device", "cpu"]


def _run(argv: list) -> int:
    return main([str(a) for a in argv])


def make_finetuned(root: Path, task: str = "sst2", seed: int = 7, **cfg) -> Path:
    """A tiny model that passes as a finished `lpaf finetune` artifact of ``task``."""
    model = make_tiny_model(root, seed=seed)
    if cfg:
        config = json.loads((model / "config.json").read_text())
        config.update(cfg)
        (model / "config.json").write_text(json.dumps(config))
    (model / "metrics.json").write_text(json.dumps({"stage": "finetune", "task": task, "method": "dense",
                                                    "metrics": {"accuracy": 0.75}, "headline": 0.75}))
    return model


def _one_line_exit_2(capsys, argv, tmp_path, out) -> str:
    try:
        rc = _run(argv)
    except SystemExit as e:
        rc = e.code
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(f".{out.name}")]
    return err


def test_prune_from_pretrained_distils_from_the_given_teacher(tmp_path, glue_dir, monkeypatch):
    pretrained = make_tiny_model(tmp_path / "pre", seed=0)  # no metrics.json: a pre-trained model
    teacher = make_finetuned(tmp_path / "teacher", seed=7)
    seen = {}
    import lpaf.stages.prune as stage

    real_train = stage.train_model

    def spy(model, *args, teacher=None, **kwargs):
        seen["student"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        seen["teacher"] = {k: v.detach().clone() for k, v in teacher.state_dict().items()}
        return real_train(model, *args, teacher=teacher, **kwargs)

    monkeypatch.setattr(stage, "train_model", spy)
    out = tmp_path / "pruned"
    assert _run(["prune", "--model", pretrained, "--teacher", teacher, "--task", "sst2", "--data", glue_dir,
                 "--out", out, "--method", "magnitude", "--density", 0.5, *QUICK]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["start"] == "pretrained"
    assert m["teacher"]["path"] == str(teacher) and m["teacher"]["self_copy"] is False
    assert m["teacher"]["headline"] == 0.75 and m["args"]["teacher"] == str(teacher)
    # the teacher that trained the student is the teacher artifact, not a copy of the student
    teacher_weights = load_file(str(teacher / "model.safetensors"))
    name = "bert.encoder.layer.0.attention.self.query.weight"
    assert torch.equal(seen["teacher"][name], teacher_weights[name])
    assert not torch.equal(seen["teacher"][name], seen["student"][name.replace(".weight", ".parametrizations.weight.original")])
    # the student started from the pre-trained encoder, with a newly initialised task head
    pre_weights = load_file(str(pretrained / "model.safetensors"))
    assert torch.equal(seen["student"][name.replace(".weight", ".parametrizations.weight.original")],
                       pre_weights[name])


def test_finetuned_start_keeps_its_self_teacher(tmp_path, glue_dir):
    start = make_finetuned(tmp_path / "dense")
    out = tmp_path / "pruned"
    assert _run(["prune", "--model", start, "--task", "sst2", "--data", glue_dir, "--out", out,
                 "--method", "magnitude", "--density", 0.5, *QUICK]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["start"] == "finetuned" and m["teacher"]["self_copy"] is True and m["teacher"]["path"] == str(start)


@pytest.mark.parametrize("case, pattern", [
    ("no-teacher", r"--model .* is a pre-trained model .* pass --teacher DIR .* or --no-distill"),
    ("other-task", r"--teacher .* was trained on task 'mrpc', not 'sst2'"),
    ("other-architecture", r"--teacher .* has intermediate_size=128 but --model .* has 64; the teacher must share"),
    ("teacher-without-distill", r"--teacher .* is given but distillation is off"),
    ("incomplete-teacher", r"teacher .* has no metrics.json"),
])
def test_bad_start_teacher_combinations_exit_2_before_work(tmp_path, glue_dir, capsys, case, pattern):
    pretrained = make_tiny_model(tmp_path / "pre")
    argv = ["prune", "--model", pretrained, "--task", "sst2", "--data", glue_dir, *QUICK]
    if case == "other-task":
        argv += ["--teacher", make_finetuned(tmp_path / "t", task="mrpc")]
    elif case == "other-architecture":
        argv += ["--teacher", make_finetuned(tmp_path / "t", intermediate_size=128)]
    elif case == "teacher-without-distill":
        argv += ["--teacher", make_finetuned(tmp_path / "t"), "--no-distill"]
    elif case == "incomplete-teacher":
        argv += ["--teacher", make_tiny_model(tmp_path / "t")]
    out = tmp_path / "pruned"
    err = _one_line_exit_2(capsys, argv + ["--out", out], tmp_path, out)
    assert re.search(pattern, err), err


def test_pretrained_start_without_distillation_needs_no_teacher(tmp_path, glue_dir):
    out = tmp_path / "pruned"
    assert _run(["prune", "--model", make_tiny_model(tmp_path / "pre"), "--task", "sst2", "--data", glue_dir,
                 "--out", out, "--method", "magnitude", "--no-distill", *QUICK]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["start"] == "pretrained" and m["teacher"] is None


# --------------------------------------------------------------------------------------------
# PLATON, reference mode
# --------------------------------------------------------------------------------------------

def test_reference_window_matches_a_hand_computation():
    """Six steps with ΔT = 3 (QingruZhang/PLATON, GLUE/mt_dnn/prune_model.py update_ipt_with_local_windiw)."""
    b1, b2 = 0.8, 0.9
    crit = PlatonReference((b1, b2), window_steps=3)
    pm = MaskedWeight(torch.zeros(1, 2))
    crit.init_state(pm, torch.zeros(1, 2))
    s = [torch.tensor([[1.0, 4.0]]), torch.tensor([[2.0, 0.0]]), torch.tensor([[3.0, 1.0]]),
         torch.tensor([[5.0, 2.0]]), torch.tensor([[4.0, 6.0]]), torch.tensor([[9.0, 9.0]])]
    for t, st in enumerate(s, start=1):
        crit.accumulate(pm, st, t % 3)
        if t == 2:  # ipt starts at 0: after steps 1, 2 it is (s1 + s2) / 3 (the reference's first window)
            assert torch.allclose(pm.window_sensitivity, (s[0] + s[1]) / 3)
            assert torch.equal(pm.sensitivity_ema, torch.zeros(1, 2))
        if t == 3:
            i1 = (1 - b1) * (s[0] + s[1]) / 3
            u1 = (1 - b2) * ((s[0] + s[1]) / 3 - i1).abs()
            assert torch.allclose(pm.sensitivity_ema, i1) and torch.allclose(pm.uncertainty_ema, u1)
            assert torch.equal(pm.window_sensitivity, s[2])  # the window restarts at s_3
    window = (s[2] + s[3] + s[4]) / 3  # steps 3, 4, 5 average; step 6 closes the window
    i2 = b1 * i1 + (1 - b1) * window
    u2 = b2 * u1 + (1 - b2) * (window - i2).abs()
    assert torch.allclose(pm.sensitivity_ema, i2) and torch.allclose(pm.uncertainty_ema, u2)
    assert torch.equal(pm.window_sensitivity, s[5])
    # with the numbers: entry 0: window 4.0, I = 0.8*0.2 + 0.2*4.0 = 0.96
    assert pm.sensitivity_ema[0, 0].item() == pytest.approx(0.96)


def _train_reference(model, pruner, steps: int, record=None):
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    torch.manual_seed(0)
    ids = torch.randint(5, 40, (4, 12))
    labels = torch.tensor([0, 1, 0, 1])
    for t in range(1, steps + 1):
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        opt.step()
        if record is not None:
            record(t)
        pruner.after_optimizer_update(t)
        opt.zero_grad()
        pruner.step(t)
        yield t


def test_reference_mode_in_a_training_loop(tmp_path):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(str(make_tiny_model(tmp_path / "m")))
    pruner = Pruner("platon", 0.25, scope="global", initial_warmup=0.1, final_warmup=0.3, platon_mode="reference",
                    platon_window=4, platon_betas=(0.85, 0.95))
    pruner.prepare(model)
    total = 40
    pruner.set_total_steps(total)  # initial warm-up 4 steps, final warm-up 12: masks each step from 29 on
    name = next(iter(pruner.modules))
    original = pruner.modules[name].parametrizations.weight.original
    first = {}

    def record(t):  # the sensitivity of step 1: |W after the step ⊙ its gradient|
        if t == 1:
            first["s"] = (original.detach() * original.grad).abs().clone()

    changes = []
    masks = {n: m.clone() for n, m in pruner.masks().items()}
    for t in _train_reference(model, pruner, total, record):
        if t == 1:  # ipt starts at 0 and step 1 is local step 1 of a 4-step window: s_1 / 2
            pm = pruner._parametrizations()[name]
            assert torch.allclose(pm.window_sensitivity, first["s"] / 2)
        now = pruner.masks()
        if any(not torch.equal(now[n], masks[n]) for n in now):
            changes.append(t)
        masks = {n: m.clone() for n, m in now.items()}
        if t > 4:  # the forward does not mask: pruned weights are zeroed in place right after each update
            assert pruner.frozen is False
    cubic = [t for t in changes if t <= total - 12]
    assert cubic and all(t % 4 == 0 for t in cubic), changes
    # global top-k: exactly round(0.25 N) kept over all matrices, not per matrix
    kept = sum(int(m.sum()) for m in masks.values())
    n_all = sum(m.numel() for m in masks.values())
    assert kept == keep_count(0.25, n_all)
    assert len({round(float(m.float().mean()), 3) for m in masks.values()}) > 1  # densities differ per matrix
    # after the last step the weights carry the zeros of the final mask
    for n, linear in pruner.modules.items():
        assert torch.all(linear.parametrizations.weight.original[~masks[n]] == 0), n


def test_reference_mode_masks_every_step_in_the_final_warmup():
    from lpaf.pruning import CubicSchedule

    crit = PlatonReference((0.85, 0.85), window_steps=10)
    sched = CubicSchedule(0.1, 100, initial_warmup_steps=10, final_warmup_steps=30)
    due = [t for t in range(1, 101) if crit.mask_update_due(t, sched)]
    assert due == [20, 30, 40, 50, 60, 70] + list(range(71, 101))  # train.py schedule_threshold_comb


def test_reference_mode_betas_per_task_and_flag_checks():
    args = PruneArgs(model="m", out="o", method="platon", platon_mode="reference", scope="global")
    assert args.platon_betas("sst2") == (0.85, 0.85) and args.platon_betas("mrpc") == (0.85, 0.95)
    assert args.platon_betas("qnli") == (0.85, 0.90) and args.platon_betas("squad") == (0.85, 0.95)
    assert PruneArgs(model="m", out="o", method="platon").platon_betas("sst2") == (0.85, 0.95)  # per-step default
    assert PruneArgs(model="m", out="o", method="platon", platon_mode="reference", scope="global",
                     platon_beta2=0.5).platon_betas("sst2") == (0.85, 0.5)
    with pytest.raises(LpafError, match=r"--platon-mode reference takes one global top-k.*--scope global"):
        PruneArgs(model="m", out="o", method="platon", platon_mode="reference")
    with pytest.raises(LpafError, match=r"--mask-update-every must stay 1"):
        PruneArgs(model="m", out="o", method="platon", platon_mode="reference", scope="global", mask_update_every=10)


def test_reference_mode_through_the_cli(tmp_path, glue_dir):
    pretrained = make_tiny_model(tmp_path / "pre")
    teacher = make_finetuned(tmp_path / "teacher")
    out = tmp_path / "pruned"
    assert _run(["prune", "--model", pretrained, "--teacher", teacher, "--task", "sst2", "--data", glue_dir,
                 "--out", out, "--method", "platon", "--platon-mode", "reference", "--scope", "global",
                 "--platon-window", 2, "--density", 0.25, *QUICK]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["platon"] == {"mode": "reference", "betas": [0.85, 0.85], "window_steps": 2}
    assert m["achieved_density"]["overall"] == pytest.approx(0.25, abs=1e-4)
    masks = load_file(str(out / "masks.safetensors"))
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(str(out))
    for name, linear in find_encoder_linears(model).items():
        assert torch.equal(linear.weight != 0, masks[name]), name
