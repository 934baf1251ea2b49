"""Mixed-rank fine-tuning: the p(t) schedule, both branches, sampling, gradients, detach, resume state."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from lpaf.errors import LpafError
from lpaf.factorize import svd
from lpaf.lowrank import LowRankLinear, load_model, save_lowrank_model, swap_encoder_linears
from lpaf.mixed_rank import (SOURCE_WEIGHTS_FILE, AnnealSchedule, MixedRankLinear, MixedRankScheduler,
                             RankSamplingLinear, attach_mixed_rank, attach_rank_sampling, detach, extra_rank_for,
                             find_lowrank_modules, load_source_weights)
from lpaf.modules import find_encoder_linears

RANK = 4


def tiny_bert(seed: int = 0) -> nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                     vocab_size=100, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return BertForSequenceClassification(cfg)


def prune_half(model: nn.Module) -> nn.Module:
    """Magnitude-prune every encoder linear to density 0.5, so W_s is a genuinely sparse source."""
    with torch.no_grad():
        for module in find_encoder_linears(model).values():
            w = module.weight
            w.mul_(w.abs() >= w.abs().flatten().median())
    return model


def factorize(dense: nn.Module, rank: int = RANK) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """Rank-``rank`` SVD of every encoder linear; returns the factorized copy and the source matrices."""
    model = copy.deepcopy(dense)
    linears = find_encoder_linears(model)
    sources = {name: linear.weight.detach().clone() for name, linear in linears.items()}
    swap_encoder_linears(model, {name: svd(w, None, rank) for name, w in sources.items()}, strict=True)
    return model, sources


def batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 100, (4, 12), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.tensor([0, 1, 1, 0])}


def logits(model: nn.Module, b: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(**{k: v for k, v in b.items() if k != "labels"}).logits


def set_all(wrapped: dict, expand: bool, u: float = 0.0) -> None:
    for m in wrapped.values():
        m.set_choice(expand, u)


@pytest.fixture()
def dense() -> nn.Module:
    return prune_half(tiny_bert())


# --------------------------------------------------------------------------------------------
# Schedule
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("p0,fraction,anneal,step,total,expected", [
    (1.0, 0.5, "linear", 0, 100, 1.0),
    (1.0, 0.5, "linear", 25, 100, 0.5),
    (1.0, 0.5, "linear", 50, 100, 0.0),
    (1.0, 0.5, "linear", 99, 100, 0.0),
    (0.5, 0.5, "linear", 25, 100, 0.25),
    (1.0, 0.2, "linear", 10, 100, 0.5),
    (1.0, 1.0, "linear", 99, 100, 0.01),
    (1.0, 0.5, "cosine", 0, 100, 1.0),
    (1.0, 0.5, "cosine", 25, 100, 0.5),
    (1.0, 0.5, "cosine", 10, 100, 0.5 * (1 + math.cos(math.pi * 0.2))),
    (0.0, 0.5, "linear", 0, 100, 0.0),
])
def test_schedule_values(p0, fraction, anneal, step, total, expected):
    assert AnnealSchedule(p0, fraction, anneal).p(step, total) == pytest.approx(expected)


@pytest.mark.parametrize("kwargs,match", [
    ({"p0": -0.1}, r"--p0 must be in \[0, 1\] \(got -0.1\)"),
    ({"p0": 1.5}, r"--p0 must be in \[0, 1\]"),
    ({"anneal_fraction": 0.0}, r"--anneal-fraction must be in \(0, 1\] \(got 0.0\)"),
    ({"anneal_fraction": 1.2}, r"--anneal-fraction must be in \(0, 1\]"),
    ({"anneal": "step"}, r"--anneal must be linear or cosine"),
])
def test_schedule_rejects_bad_values(kwargs, match):
    with pytest.raises(LpafError, match=match):
        AnnealSchedule(**kwargs)


def test_schedule_sample_points_bracket_the_anneal():
    points = AnnealSchedule(1.0, 0.5, "linear").sample_points(100)
    assert points[0] == {"step": 0, "p": 1.0}
    assert points[-1] == {"step": 99, "p": 0.0}
    assert {"step": 50, "p": 0.0} in points and {"step": 49, "p": 0.02} in points


# --------------------------------------------------------------------------------------------
# The two branches
# --------------------------------------------------------------------------------------------

def test_p1_forward_equals_full_rank_model(dense):
    factorized, sources = factorize(dense)
    wrapped = attach_mixed_rank(factorized, sources)
    factorized.train()
    dense.train()
    set_all(wrapped, True)
    b = batch()
    torch.testing.assert_close(logits(factorized, b), logits(dense, b))


def test_p0_forward_equals_factors(dense):
    factorized, sources = factorize(dense)
    reference = copy.deepcopy(factorized).eval()
    wrapped = attach_mixed_rank(factorized, sources)
    factorized.train()
    set_all(wrapped, False)
    b = batch()
    torch.testing.assert_close(logits(factorized, b), logits(reference, b), rtol=0, atol=0)
    assert not torch.allclose(logits(reference, b), logits(dense.eval(), b))  # the test can tell them apart


def test_scheduler_at_p1_and_p0_sets_every_module(dense):
    factorized, sources = factorize(dense)
    wrapped = attach_mixed_rank(factorized, sources)
    scheduler = MixedRankScheduler(wrapped, AnnealSchedule(1.0, 0.5), seed=0)
    assert scheduler.resample(0, 10) == 1.0 and all(m.use_source for m in wrapped.values())
    assert scheduler.resample(5, 10) == 0.0 and not any(m.use_source for m in wrapped.values())


def test_evaluation_never_uses_source(dense):
    factorized, sources = factorize(dense)
    reference = copy.deepcopy(factorized).eval()
    poisoned = {k: torch.full_like(v, float("nan")) for k, v in sources.items()}
    wrapped = attach_mixed_rank(factorized, poisoned)
    set_all(wrapped, True)  # as if the last training step had drawn W_s everywhere
    factorized.eval()
    b = batch()
    out = logits(factorized, b)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, logits(reference, b), rtol=0, atol=0)
    factorized.train()
    assert torch.isnan(logits(factorized, b)).all()  # the poisoned W_s is really in the training branch


def test_empirical_full_rank_frequency_follows_p(dense):
    factorized, sources = factorize(dense)
    wrapped = attach_mixed_rank(factorized, sources)
    n = len(wrapped)
    total = 800
    schedule = AnnealSchedule(1.0, 0.5, "linear")
    scheduler = MixedRankScheduler(wrapped, schedule, seed=123)
    scheduler.total_steps = total
    for step in range(total):
        scheduler.resample(step, total)
    for lo, hi in [(0, 100), (100, 200), (200, 300), (300, 400), (400, 800)]:
        rows = [r for r in scheduler.log if lo <= r[0] < hi]
        p_mean = sum(r[1] for r in rows) / len(rows)
        freq = sum(r[2] for r in rows) / (n * len(rows))
        tolerance = 4 * math.sqrt(max(p_mean * (1 - p_mean), 1e-4) / (n * len(rows))) + 1e-9
        assert abs(freq - p_mean) <= tolerance, (lo, hi, freq, p_mean)
    summary = scheduler.summary()
    assert summary["first_step_with_p_zero"] == 400
    assert summary["by_quarter"][2]["expanded_fraction"] == 0.0
    # Modules choose independently: some steps mix both branches.
    assert any(0 < r[2] < n for r in scheduler.log)


# --------------------------------------------------------------------------------------------
# Gradients
# --------------------------------------------------------------------------------------------

def _loss(model: nn.Module, b: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(**b).loss


def test_gradients_reach_factors_over_a_mixed_step(dense):
    """Layer 0 runs A·B, layer 1 runs W_s: layer 0's factors are trained through layer 1's W_s;
    a module running W_s gives its own A and B no gradient, but its (shared) bias gets one."""
    factorized, sources = factorize(dense)
    wrapped = attach_mixed_rank(factorized, sources)
    factorized.train()
    for name, m in wrapped.items():
        m.set_choice(".layer.1." in name, 0.0)
    _loss(factorized, batch()).backward()
    for name, m in wrapped.items():
        if ".layer.0." in name:
            assert m.A.weight.grad is not None and m.A.weight.grad.abs().sum() > 0, name
            assert m.B.weight.grad is not None and m.B.weight.grad.abs().sum() > 0, name
        else:
            assert m.A.weight.grad is None and m.B.weight.grad is None, name
            assert m.A.bias.grad is not None and m.A.bias.grad.abs().sum() > 0, name
        assert m.source_weight.grad is None  # frozen buffer


def test_gradients_reach_factors_in_the_factor_branch(dense):
    factorized, sources = factorize(dense)
    wrapped = attach_mixed_rank(factorized, sources)
    factorized.train()
    set_all(wrapped, False)
    _loss(factorized, batch()).backward()
    for name, m in wrapped.items():
        assert m.A.weight.grad.abs().sum() > 0 and m.B.weight.grad.abs().sum() > 0, name


def test_trainable_source_keeps_pruned_entries_at_zero(dense):
    factorized, sources = factorize(dense)
    wrapped = attach_mixed_rank(factorized, sources, trainable_source=True)
    factorized.train()
    set_all(wrapped, True)
    _loss(factorized, batch()).backward()
    for name, m in wrapped.items():
        assert isinstance(m.source_weight, nn.Parameter)
        pruned = sources[name] == 0
        assert pruned.any()
        assert m.source_weight.grad[pruned].abs().max() == 0, name
        assert m.source_weight.grad[~pruned].abs().sum() > 0, name


def test_frozen_source_is_not_in_the_state_dict_but_trainable_is(dense):
    factorized, sources = factorize(dense)
    attach_mixed_rank(factorized, sources)
    assert not any("source_weight" in k for k in factorized.state_dict())
    assert not any("source_weight" in n for n, _ in factorized.named_parameters())
    factorized2, _ = factorize(dense)
    attach_mixed_rank(factorized2, sources, trainable_source=True)
    assert any("source_weight" in n for n, _ in factorized2.named_parameters())


# --------------------------------------------------------------------------------------------
# Detach and the saved format
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("scheme", ["mixed-rank", "rank-sampling"])
def test_detach_restores_plain_lowrank_modules(dense, scheme):
    factorized, sources = factorize(dense)
    keys_before = set(factorized.state_dict())
    count_before = sum(p.numel() for p in factorized.parameters())
    if scheme == "mixed-rank":
        wrapped = attach_mixed_rank(factorized, sources, trainable_source=True)
    else:
        wrapped = attach_rank_sampling(factorized, sources, 2.0)
    # Training changes the factors through the wrapper; detach must keep those changes.
    with torch.no_grad():
        for m in wrapped.values():
            m.A.weight.add_(1.0)
    assert detach(factorized) == len(wrapped)
    assert set(factorized.state_dict()) == keys_before
    assert sum(p.numel() for p in factorized.parameters()) == count_before
    modules = find_lowrank_modules(factorized)
    assert len(modules) == len(wrapped) and all(isinstance(m, LowRankLinear) for m in modules.values())
    assert all(m.A is wrapped[n].A for n, m in modules.items())


@pytest.mark.parametrize("scheme", ["mixed-rank", "rank-sampling"])
def test_trained_then_saved_model_has_no_full_rank_weight_and_reloads_identically(dense, tmp_path, scheme):
    from safetensors.torch import load_file

    factorized, sources = factorize(dense)
    if scheme == "mixed-rank":
        wrapped = attach_mixed_rank(factorized, sources, trainable_source=True)
    else:
        wrapped = attach_rank_sampling(factorized, sources, 2.0)
    scheduler = MixedRankScheduler(wrapped, AnnealSchedule(0.5, 1.0), seed=0, scheme=scheme)
    optimizer = torch.optim.SGD([p for p in factorized.parameters() if p.requires_grad], lr=0.1)
    factorized.train()
    for step in range(3):  # a few real updates through both branches
        scheduler.resample(step, 3)
        _loss(factorized, batch(step)).backward()
        optimizer.step()
        optimizer.zero_grad()
    detach(factorized)
    save_lowrank_model(factorized, tmp_path / "m")
    saved = load_file(str(tmp_path / "m" / "model.safetensors"))
    assert not any("source" in k or "extra_" in k for k in saved)
    for name, module in find_lowrank_modules(factorized).items():
        assert f"{name}.A.weight" in saved and f"{name}.weight" not in saved
    reloaded = load_model(tmp_path / "m")
    factorized.eval()
    b = batch(9)
    torch.testing.assert_close(logits(reloaded, b), logits(factorized, b), rtol=0, atol=0)


def test_attach_checks_the_source_matrices(dense):
    factorized, sources = factorize(dense)
    first = next(iter(sources))
    with pytest.raises(LpafError, match=r"no source matrix for 1 factorized module"):
        attach_mixed_rank(copy.deepcopy(factorized), {k: v for k, v in sources.items() if k != first})
    bad = dict(sources)
    bad[first] = bad[first].T.contiguous() if bad[first].shape[0] != bad[first].shape[1] else bad[first][:-1]
    with pytest.raises(LpafError, match="wrong shape"):
        attach_mixed_rank(copy.deepcopy(factorized), bad)
    with pytest.raises(LpafError, match="no factorized"):
        attach_mixed_rank(dense, sources)


def test_load_source_weights_names_the_missing_file(tmp_path):
    with pytest.raises(LpafError, match=f"{SOURCE_WEIGHTS_FILE} is missing"):
        load_source_weights(tmp_path)
    (tmp_path / SOURCE_WEIGHTS_FILE).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(LpafError, match="not a valid safetensors file"):
        load_source_weights(tmp_path)


# --------------------------------------------------------------------------------------------
# Rank sampling
# --------------------------------------------------------------------------------------------

def test_rank_sampling_at_full_extra_rank_equals_full_rank_model(dense):
    factorized, sources = factorize(dense)
    wrapped = attach_rank_sampling(factorized, sources, max_rank_multiple=1000.0)
    for m in wrapped.values():
        assert m.extra_rank == min(m.in_features, m.out_features)
    factorized.train()
    set_all(wrapped, True, u=0.999999)
    b = batch()
    torch.testing.assert_close(logits(factorized, b), logits(dense.train(), b), rtol=1e-4, atol=1e-4)


def test_rank_sampling_p0_and_eval_use_rank_r(dense):
    factorized, sources = factorize(dense)
    reference = copy.deepcopy(factorized).eval()
    wrapped = attach_rank_sampling(factorized, sources, 2.0)
    b = batch()
    set_all(wrapped, True, u=0.5)
    factorized.eval()
    torch.testing.assert_close(logits(factorized, b), logits(reference, b), rtol=0, atol=0)
    factorized.train()
    assert not torch.allclose(logits(factorized, b), logits(reference, b))
    set_all(wrapped, False)
    torch.testing.assert_close(logits(factorized, b), logits(reference, b), rtol=0, atol=0)


@pytest.mark.parametrize("u,expected", [(0.0, 1), (0.49, 2), (0.5, 3), (0.999, 4)])
def test_rank_sampling_choice_covers_one_to_extra(u, expected):
    m = RankSamplingLinear(LowRankLinear(8, 6, 2), torch.zeros(6, 4), torch.zeros(4, 8))
    m.set_choice(True, u)
    assert m.extra_in_use == expected
    m.set_choice(False, u)
    assert m.extra_in_use == 0


@pytest.mark.parametrize("rank,m,n,multiple,expected", [(4, 32, 64, 2.0, 4), (4, 32, 64, 1.5, 2),
                                                        (30, 32, 64, 3.0, 32), (4, 32, 64, 1.01, 1)])
def test_extra_rank_for(rank, m, n, multiple, expected):
    assert extra_rank_for(rank, m, n, multiple) == expected


def test_rank_sampling_gradients_reach_factors_and_extras(dense):
    factorized, sources = factorize(dense)
    wrapped = attach_rank_sampling(factorized, sources, 2.0)
    factorized.train()
    set_all(wrapped, True, u=0.0)  # rank r + 1
    _loss(factorized, batch()).backward()
    for name, m in wrapped.items():
        assert m.A.weight.grad.abs().sum() > 0 and m.B.weight.grad.abs().sum() > 0, name
        assert m.extra_A.grad[:, 0].abs().sum() > 0 and m.extra_A.grad[:, 1:].abs().sum() == 0, name


# --------------------------------------------------------------------------------------------
# Resume state
# --------------------------------------------------------------------------------------------

def _choices(wrapped: dict) -> list[bool]:
    return [m.use_source for m in wrapped.values()]


def test_scheduler_state_round_trip_continues_the_same_stream(dense, tmp_path):
    factorized, sources = factorize(dense)
    wrapped = attach_mixed_rank(factorized, sources)
    schedule = AnnealSchedule(1.0, 1.0, "cosine")
    straight = MixedRankScheduler(wrapped, schedule, seed=5)
    expected = []
    for step in range(20):
        straight.resample(step, 20)
        expected.append(_choices(wrapped))

    first = MixedRankScheduler(wrapped, schedule, seed=5)
    for step in range(8):
        first.resample(step, 20)
    state = first.state_dict()
    first.save_tensors(tmp_path)
    resumed = MixedRankScheduler(wrapped, schedule, seed=5)
    resumed.load_state_dict(state)
    resumed.load_tensors(tmp_path)
    got = expected[:8]
    for step in range(8, 20):
        resumed.resample(step, 20)
        got.append(_choices(wrapped))
    assert got == expected
    assert resumed.log == straight.log and resumed.expanded_counts == straight.expanded_counts


def test_scheduler_refuses_state_from_other_settings(dense, tmp_path):
    factorized, sources = factorize(dense)
    wrapped = attach_mixed_rank(factorized, sources)
    state = MixedRankScheduler(wrapped, AnnealSchedule(1.0, 0.5), seed=5).state_dict()
    other = MixedRankScheduler(wrapped, AnnealSchedule(0.5, 0.5), seed=5)
    with pytest.raises(LpafError, match="other mixed-rank settings"):
        other.load_state_dict(state)
    with pytest.raises(LpafError, match="no mixed_rank_generator.safetensors"):
        other.load_tensors(tmp_path)


# --- the factors' learning-rate budget ------------------------------------------------------------

def test_linear_lr_multipliers_match_transformers():
    from transformers.optimization import get_linear_schedule_with_warmup

    from lpaf.mixed_rank import linear_lr_multipliers

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = get_linear_schedule_with_warmup(opt, num_warmup_steps=math.ceil(0.1 * 37), num_training_steps=37)
    expected = []
    for _ in range(37):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert linear_lr_multipliers(37, 0.1).tolist() == pytest.approx(expected)


@pytest.mark.parametrize("p0, anneal_fraction", [(1.0, 0.5), (0.5, 0.5), (1.0, 0.2), (1.0, 1.0), (0.0, 0.5)])
def test_matched_total_steps_gives_the_factors_plain_budget(p0, anneal_fraction):
    from lpaf.mixed_rank import factor_lr_integral, linear_lr_multipliers, matched_total_steps

    schedule = AnnealSchedule(p0, anneal_fraction)
    plain = 125
    target = linear_lr_multipliers(plain, 0.1).sum()
    n = matched_total_steps(plain, schedule, 0.1)
    assert factor_lr_integral(n, schedule, 0.1) >= target
    if n > plain:  # the fewest such steps
        assert factor_lr_integral(n - 1, schedule, 0.1) < target
    else:
        assert p0 == 0.0
    if (p0, anneal_fraction) == (1.0, 0.5):  # the figure: 64% of plain's integral at equal steps
        assert factor_lr_integral(plain, schedule, 0.1) / target == pytest.approx(0.64, abs=0.01)
