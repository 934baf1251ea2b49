"""lpaf.pruning: schedule, top-k, the four scores, straight-through gradients, freezing, squash."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from transformers import BertConfig, BertForSequenceClassification

from lpaf.errors import LpafError
from lpaf.modules import find_encoder_linears
from lpaf.pruning import METHODS, CubicSchedule, Pruner, keep_count, topk_mask
from lpaf.tasks import get_task
from lpaf.training import combined_loss


def tiny_bert(seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    cfg = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                     vocab_size=100, num_labels=2)
    return BertForSequenceClassification(cfg).eval()  # no dropout: steps are reproducible


def batch(seed: int = 0, n: int = 4, length: int = 8) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(0, 100, (n, length), generator=g),
            "labels": torch.randint(0, 2, (n,), generator=g)}


def train(model: nn.Module, pruner: Pruner, steps: int, total: int | None = None, start: int = 0,
          on_step=None) -> torch.optim.Optimizer:
    """A minimal training loop with the life cycle train_model drives: backward, optimizer, step()."""
    pruner.set_total_steps(total or steps)
    opt = torch.optim.AdamW([{"params": [p for n, p in model.named_parameters() if not n.endswith("scores")],
                              "lr": 1e-3}, *pruner.param_groups()])
    for t in range(start + 1, start + steps + 1):
        out = model(**batch(t))
        loss = out.loss + pruner.regularization()
        loss.backward()
        pruner.before_optimizer_step()
        opt.step()
        opt.zero_grad(set_to_none=True)
        pruner.step(t)
        if on_step:
            on_step(t)
    return opt


# --- schedule --------------------------------------------------------------------------------

def test_cubic_schedule_values():
    s = CubicSchedule(final_density=0.1, total_steps=100, initial_warmup_steps=10, final_warmup_steps=20)
    assert s.freeze_step == 80
    assert s.density(0) == 1.0 and s.density(10) == 1.0
    for t in (11, 30, 45, 79):
        assert s.density(t) == pytest.approx(0.1 + 0.9 * (1 - (t - 10) / 70) ** 3)
    assert s.density(45) == pytest.approx(0.1 + 0.9 * 0.125)  # halfway: (1 - 1/2)^3
    assert s.density(80) == s.density(100) == s.density(1000) == 0.1
    assert not s.frozen(79) and s.frozen(80)
    assert s.progress(10) == 0.0 and s.progress(80) == 1.0
    densities = [s.density(t) for t in range(101)]
    assert all(a >= b for a, b in zip(densities, densities[1:])), "monotone non-increasing"


@pytest.mark.parametrize("total, initial, final, expect", [
    (100, 0.1, 0.2, (10, 20)),
    (10, 0.0, 0.0, (0, 0)),
    (1, 0.5, 0.4, (0, 0)),  # one step: pruning still reaches the final density
    (5, 0.9, 0.05, (4, 0)),
])
def test_schedule_from_fractions_always_reaches_final_density(total, initial, final, expect):
    s = CubicSchedule.from_fractions(0.25, total, initial, final)
    assert (s.initial_warmup_steps, s.final_warmup_steps) == expect
    assert s.density(total) == 0.25 and s.frozen(total)


@pytest.mark.parametrize("density, numel, expect", [(0.25, 1024, 256), (0.1, 4096, 410), (1.0, 7, 7),
                                                    (0.5, 3, 2), (1e-6, 100, 0)])
def test_keep_count(density, numel, expect):
    assert keep_count(density, numel) == expect


# --- top-k -----------------------------------------------------------------------------------

def test_topk_mask_by_hand():
    scores = torch.tensor([[0.9, 0.1, 0.5, 0.3],
                           [0.2, 0.8, 0.0, 0.7],
                           [0.6, 0.4, 1.0, 0.05],
                           [0.15, 0.35, 0.45, 0.55]])
    expected = torch.tensor([[1, 0, 0, 0],
                             [0, 1, 0, 1],
                             [1, 0, 1, 0],
                             [0, 0, 0, 0]], dtype=torch.bool)
    assert torch.equal(topk_mask(scores, 5), expected)
    assert topk_mask(scores, 16).all() and not topk_mask(scores, 0).any()


def test_topk_mask_ties_go_to_lowest_index():
    scores = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 2.0, 0.0]])
    mask = topk_mask(scores, 4)  # 2 clear winners + 2 of the six tied zeros
    assert torch.equal(mask, torch.tensor([[1, 1, 1, 0], [0, 0, 1, 0]], dtype=torch.bool))
    assert torch.equal(topk_mask(torch.zeros(3, 3), 4).reshape(-1), torch.arange(9) < 4)


def test_topk_mask_rejects_nan():
    with pytest.raises(LpafError, match="NaN or Inf"):
        topk_mask(torch.tensor([1.0, float("nan"), 0.5]), 1)


# --- the pruner on a tiny BERT ---------------------------------------------------------------

@pytest.mark.parametrize("method", METHODS)
def test_exact_density_per_matrix_at_end_of_schedule(method):
    model = tiny_bert()
    pruner = Pruner(method, 0.3, initial_warmup=0.2, final_warmup=0.2, score_init="magnitude")
    pruner.prepare(model)
    train(model, pruner, steps=10)
    report = pruner.density_report()
    assert len(report["per_matrix"]) == 12
    for name, mask in pruner.masks().items():
        assert int(mask.sum()) == keep_count(0.3, mask.numel()) == round(0.3 * mask.numel()), name
    assert report["kept"] == sum(keep_count(0.3, m["shape"][0] * m["shape"][1]) for m in report["per_matrix"].values())


def test_global_scope_keeps_exact_total_with_uneven_matrices():
    model = tiny_bert()
    pruner = Pruner("magnitude", 0.2, scope="global", initial_warmup=0.0, final_warmup=0.0)
    pruner.prepare(model)
    with torch.no_grad():  # make one matrix clearly more important than the rest
        find_encoder_linears(model)["bert.encoder.layer.0.intermediate.dense"].parametrizations.weight.original *= 10
    train(model, pruner, steps=3)
    report = pruner.density_report()
    assert report["kept"] == keep_count(0.2, report["total"])
    boosted = report["per_matrix"].pop("bert.encoder.layer.0.intermediate.dense")["density"]
    assert boosted > 0.8 and all(m["density"] < 0.2 for m in report["per_matrix"].values())


def test_magnitude_mask_is_the_top_abs_weight_set():
    model = tiny_bert()
    pruner = Pruner("magnitude", 0.25, initial_warmup=0.0, final_warmup=0.0)
    pruner.prepare(model)
    train(model, pruner, steps=4)
    linears = find_encoder_linears(model)
    for name, mask in pruner.masks().items():
        w = linears[name].parametrizations.weight.original.detach()
        order = torch.argsort(w.abs().reshape(-1), descending=True, stable=True)
        expected = torch.zeros(w.numel(), dtype=torch.bool)
        expected[order[: round(0.25 * w.numel())]] = True
        assert torch.equal(mask.reshape(-1), expected), name


def test_straight_through_gradient_reaches_the_scores():
    torch.manual_seed(0)
    linear = nn.Linear(6, 4)
    model = nn.Module()
    model.encoder = nn.Module()
    model.encoder.layer = nn.ModuleList([nn.Module()])
    model.encoder.layer[0].intermediate = nn.Module()
    model.encoder.layer[0].intermediate.dense = linear
    pruner = Pruner("movement", 0.5, initial_warmup=0.0, final_warmup=0.0)
    pruner.prepare(model)
    pm = linear.parametrizations.weight[0]
    with torch.no_grad():
        pm.scores.copy_(torch.randn(4, 6))
        pm.keep_mask.copy_(topk_mask(pm.scores, 12))  # what step() does mid-schedule
    mask = pm.keep_mask.clone()
    assert int(mask.sum()) == 12
    x, r = torch.randn(3, 6), torch.randn(3, 4)
    (linear(x) * r).sum().backward()
    grad_masked_weight = r.T @ x  # dL/d(W ⊙ M)
    w = linear.parametrizations.weight.original
    torch.testing.assert_close(pm.scores.grad, grad_masked_weight * w.detach())
    torch.testing.assert_close(w.grad, grad_masked_weight * mask)
    assert (pm.scores.grad[mask == 0] != 0).all(), "pruned entries' scores learn too"


def test_movement_scores_accumulate_minus_weight_times_gradient():
    """One SGD step of lr 1 on the scores from 0 gives S = -W ⊙ dL/dW (Sanh et al.'s reading)."""
    model = tiny_bert()
    pruner = Pruner("movement", 0.5)
    pruner.prepare(model)
    model(**batch(1)).loss.backward()
    for linear in pruner.modules.values():
        pm = linear.parametrizations.weight[0]
        w = linear.parametrizations.weight.original
        torch.testing.assert_close(-pm.scores.grad, -(w.grad * w.detach()))  # mask is all ones


def test_masks_frozen_after_final_warmup():
    model = tiny_bert()
    pruner = Pruner("movement", 0.25, initial_warmup=0.1, final_warmup=0.4, scores_lr=0.5)
    pruner.prepare(model)
    snapshots = {}

    def snap(t):
        snapshots[t] = (pruner.masks(), {n: s.clone() for n, s in pruner.scores().items()})

    train(model, pruner, steps=10, on_step=snap)
    assert pruner.schedule.freeze_step == 6 and pruner.frozen
    masks6, scores6 = snapshots[6]
    for t in (7, 8, 10):
        for name in masks6:
            assert torch.equal(snapshots[t][0][name], masks6[name])
            assert torch.equal(snapshots[t][1][name], scores6[name]), "scores stop learning"
    assert any(not torch.equal(snapshots[3][0][n], masks6[n]) for n in masks6), "masks moved before"
    for pm in pruner._parametrizations().values():
        assert not pm.scores.requires_grad


def test_platon_score_is_ema_sensitivity_times_uncertainty():
    model = tiny_bert()
    pruner = Pruner("platon", 0.5, platon_betas=(0.8, 0.9))
    pruner.prepare(model)
    pruner.set_total_steps(100)
    model(**batch(1)).loss.backward()
    name, linear = next(iter(pruner.modules.items()))
    w = linear.parametrizations.weight.original
    sensitivity = (w.detach() * w.grad).abs()  # mask is all ones: dL/dW' = dL/dW
    pruner.step(1)
    ema = 0.2 * sensitivity
    uncertainty = 0.1 * (sensitivity - ema).abs()
    torch.testing.assert_close(pruner.scores()[name], ema * uncertainty)


def test_mask_update_every_delta_t_steps():
    """ΔT = 3: the masks change only at schedule steps 1, 4, 7, ... after the warm-up and at the
    freeze; with ΔT = 1 they change every step."""
    def changes(every):
        model = tiny_bert()
        pruner = Pruner("platon", 0.25, initial_warmup=0.1, final_warmup=0.2, mask_update_every=every)
        pruner.prepare(model)
        seen, previous = [], {}

        def snap(t):
            masks = pruner.masks()
            if previous and any(not torch.equal(masks[n], previous[n]) for n in masks):
                seen.append(t)
            previous.update(masks)

        train(model, pruner, steps=20, on_step=snap)
        return seen, pruner

    every_step, pruner = changes(1)
    assert pruner.schedule.initial_warmup_steps == 2 and pruner.schedule.freeze_step == 16
    assert every_step[0] == 3 and len(every_step) > 8
    delta3, pruner = changes(3)
    assert set(delta3) <= {3, 6, 9, 12, 15, 16} and {3, 16} <= set(delta3)  # 16: the freeze step
    for name, pm in pruner._parametrizations().items():  # the final density is exact either way
        assert int(pm.keep_mask.sum()) == keep_count(0.25, pm.keep_mask.numel()), name


@pytest.mark.parametrize("zero", [False, True])
def test_zero_pruned_weights_is_platon_reference(zero):
    """With zero_pruned_weights the pruned entries of the weights themselves are 0 after every mask
    update (so they cannot come back); without, they keep their values behind the mask."""
    model = tiny_bert()
    pruner = Pruner("platon", 0.25, initial_warmup=0.1, final_warmup=0.2, zero_pruned_weights=zero)
    pruner.prepare(model)
    checked = []

    def check(t):
        if pruner.frozen or pruner.current_density == 1.0:
            return
        checked.append(t)
        for name, linear in pruner.modules.items():
            original = linear.parametrizations.weight.original.detach()
            pruned = ~pruner.masks()[name]
            if zero:
                assert original[pruned].eq(0).all(), (t, name)
            else:
                assert original[pruned].ne(0).all(), (t, name)

    train(model, pruner, steps=20, on_step=check)
    assert len(checked) >= 10


def test_soft_movement_regularization_follows_the_schedule():
    model = tiny_bert()
    pruner = Pruner("soft-movement", 0.2, initial_warmup=0.0, final_warmup=0.0, soft_l1=3.0)
    pruner.prepare(model)
    pruner.set_total_steps(10)
    assert float(pruner.regularization()) == 0.0  # nothing pruned yet
    pruner.step(5)
    pms = pruner._parametrizations().values()
    expected = 3.0 * pruner.schedule.progress(5) * torch.stack([torch.sigmoid(p.scores).mean() for p in pms]).mean()
    reg = pruner.regularization()
    torch.testing.assert_close(reg, expected)
    reg.backward()
    assert all(p.scores.grad is not None and (p.scores.grad > 0).all() for p in pms), "L1 pushes scores down"


def test_scores_only_warmup_leaves_weights_untouched():
    model = tiny_bert()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    pruner = Pruner("movement", 0.5, initial_warmup=0.5, final_warmup=0.0, scores_only_warmup=True)
    pruner.prepare(model)
    train(model, pruner, steps=4, total=10)  # all inside the 5-step warm-up
    for n, p in model.named_parameters():
        if n.endswith("scores"):
            assert p.abs().sum() > 0
        else:
            key = n.replace(".parametrizations.weight.original", ".weight")
            assert torch.equal(p, before[key]), n


def test_squash_bakes_zeros_into_plain_weights():
    model = tiny_bert()
    pruner = Pruner("magnitude", 0.25, initial_warmup=0.0, final_warmup=0.0)
    pruner.prepare(model)
    train(model, pruner, steps=2)
    masks = pruner.masks()
    x = batch(9)
    with torch.no_grad():
        before = model(input_ids=x["input_ids"]).logits
    pruner.squash()
    for name, linear in find_encoder_linears(model).items():
        assert not parametrize.is_parametrized(linear)
        assert type(linear.weight) is nn.Parameter
        assert torch.equal(linear.weight != 0, masks[name])
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=x["input_ids"]).logits, before)
    assert not any("parametrizations" in k or "scores" in k for k in model.state_dict())


def test_state_dict_round_trip_and_mismatch():
    model = tiny_bert()
    pruner = Pruner("movement", 0.25, initial_warmup=0.0, final_warmup=0.5)
    pruner.prepare(model)
    train(model, pruner, steps=6)
    state = pruner.state_dict()
    assert state["last_step"] == 6 and state["frozen"]
    other = Pruner("movement", 0.25)
    other.prepare(tiny_bert())
    other.load_state_dict(state)
    assert other.frozen and other.last_step == 6
    with pytest.raises(LpafError, match="method=movement, density=0.25"):
        wrong = Pruner("movement", 0.5)
        wrong.prepare(tiny_bert())
        wrong.load_state_dict(state)


@pytest.mark.parametrize("kwargs, message", [
    ({"method": "snip"}, "--method must be one of movement, magnitude, soft-movement, platon"),
    ({"density": 0.0}, r"--density must be in \(0, 1\] \(got 0.0\)"),
    ({"density": 1.5}, r"--density must be in \(0, 1\] \(got 1.5\)"),
    ({"scope": "row"}, "--scope must be one of local, global"),
    ({"initial_warmup": 0.6, "final_warmup": 0.5}, "--initial-warmup \\+ --final-warmup must be < 1"),
    ({"scores_lr": 0.0}, "--scores-lr must be > 0"),
    ({"mask_update_every": 0}, "--mask-update-every must be an integer >= 1"),
])
def test_bad_settings_one_line(kwargs, message):
    settings = {"method": "movement", "density": 0.25} | kwargs
    with pytest.raises(LpafError, match=message) as e:
        Pruner(settings.pop("method"), settings.pop("density"), **settings)
    assert "\n" not in str(e.value)


def test_model_without_encoder_linears():
    with pytest.raises(LpafError, match="no encoder linear layers found"):
        Pruner("magnitude", 0.5).prepare(nn.Sequential(nn.Linear(4, 4)))


# --- distillation loss -----------------------------------------------------------------------

def test_distillation_loss_matches_the_formula():
    student = torch.tensor([[2.0, -1.0], [0.5, 0.3], [-1.0, 1.5]])
    teacher = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-0.5, 0.5]])
    labels = torch.tensor([0, 1, 1])
    alpha, t = 0.9, 2.0
    p_t = torch.softmax(teacher / t, -1)
    log_p_s = torch.log_softmax(student / t, -1)
    kl = (p_t * (torch.log(p_t) - log_p_s)).sum(-1).mean() * t * t
    ce = -torch.log_softmax(student, -1)[torch.arange(3), labels].mean()
    expected = alpha * kl + (1 - alpha) * ce
    loss = combined_loss(get_task("sst2"), SimpleNamespace(logits=student), {"labels": labels},
                         SimpleNamespace(logits=teacher), alpha, t)
    torch.testing.assert_close(loss, expected)
    no_teacher = combined_loss(get_task("sst2"), SimpleNamespace(logits=student), {"labels": labels}, None, alpha, t)
    torch.testing.assert_close(no_teacher, F.cross_entropy(student, labels))
