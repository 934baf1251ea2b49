"""LowRankLinear, swapping encoder linears, and the compressed model format."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors import safe_open
from torch import nn
from transformers import (BertConfig, BertForQuestionAnswering, BertForSequenceClassification, BertModel,
                          BertTokenizerFast)

from lpaf.errors import LpafError
from lpaf.factorize import allocate_ranks, factorize_matrices, fwsvd, svd
from lpaf.factorize import omega_from_mask
from lpaf.lowrank import (CONFIG_FILE, LOWRANK_CONFIG_KEY, WEIGHTS_FILE, LowRankLinear, factorize_encoder,
                          install_lowrank_modules, load_model, lowrank_ranks, save_lowrank_model,
                          swap_encoder_linears)
from lpaf.modules import count_parameters, find_encoder_linears


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny matrices: one thread avoids OpenMP start-up and oversubscription costs on shared CI machines."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_config(**overrides) -> BertConfig:
    settings = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                    vocab_size=100, max_position_embeddings=64)
    settings.update(overrides)
    return BertConfig(**settings)


def tiny_model(cls=BertForSequenceClassification, seed: int = 0, **overrides) -> nn.Module:
    torch.manual_seed(seed)
    model = cls(tiny_config(num_labels=3, **overrides)) if cls is BertForSequenceClassification \
        else cls(tiny_config(**overrides))
    return model.eval()


def inputs(batch: int = 3, length: int = 7) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 100, (batch, length), generator=gen)
    mask = torch.ones_like(ids)
    mask[0, -2:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def factorize_model(model: nn.Module, density: float | None = None, full_rank: bool = False) -> nn.Module:
    weights = {name: mod.weight.detach() for name, mod in find_encoder_linears(model).items()}
    if full_rank:
        ranks = {name: min(w.shape) for name, w in weights.items()}
    else:
        ranks = allocate_ranks({k: w.shape for k, w in weights.items()}, density).ranks
    factors = factorize_matrices(weights, ranks, "svd")
    return swap_encoder_linears(model, {k: (f.A, f.B) for k, f in factors.items()})


def output_tensor(model: nn.Module, batch: dict) -> torch.Tensor:
    with torch.inference_mode():
        out = model(**batch)
    if hasattr(out, "logits"):
        return out.logits
    if hasattr(out, "start_logits"):
        return torch.stack([out.start_logits, out.end_logits])
    return out.last_hidden_state


# ---------------------------------------------------------------- LowRankLinear

def test_from_linear_full_rank_reproduces_linear():
    torch.manual_seed(0)
    linear = nn.Linear(6, 4)
    low = LowRankLinear.from_linear(linear, rank=4)
    assert low.B.weight.shape == (4, 6) and low.A.weight.shape == (4, 4)
    x = torch.randn(5, 6)
    torch.testing.assert_close(low(x), linear(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(low.A.bias, linear.bias)


def test_from_linear_uses_given_factorizer_and_keeps_dtype():
    torch.manual_seed(0)
    linear = nn.Linear(8, 5, bias=False).to(torch.float64)
    fisher = torch.rand(5)
    low = LowRankLinear.from_linear(linear, rank=2, factorizer=fwsvd, weights=fisher)
    A, B = fwsvd(linear.weight, fisher, 2)
    assert low.A.weight.dtype == torch.float64 and low.A.bias is None
    torch.testing.assert_close(low.to_dense_weight(), (A @ B).double())


def test_to_linear_round_trip():
    torch.manual_seed(0)
    low = LowRankLinear(7, 3, rank=2)
    dense = low.to_linear()
    x = torch.randn(4, 7)
    torch.testing.assert_close(dense(x), low(x), atol=1e-6, rtol=1e-5)
    assert dense.weight.shape == (3, 7)


def test_set_factors_refuses_non_finite_and_leaves_module_unchanged():
    low = LowRankLinear(4, 3, rank=2)
    before = low.A.weight.detach().clone()
    bad = torch.full((3, 2), float("nan"))
    with pytest.raises(LpafError, match="NaN or Inf"):
        low.set_factors(bad, torch.zeros(2, 4))
    torch.testing.assert_close(low.A.weight, before)


def test_set_factors_checks_shapes():
    low = LowRankLinear(4, 3, rank=2)
    with pytest.raises(LpafError, match="do not match"):
        low.set_factors(torch.zeros(3, 3), torch.zeros(3, 4))


@pytest.mark.parametrize("bias", [True, False])
def test_forward_and_gradients_equal_the_two_linears(bias):
    """The in-place bias add of the forward computes A(B(x)) and trains the same parameters."""
    torch.manual_seed(0)
    module = LowRankLinear(12, 9, 4, bias=bias)
    x = torch.randn(3, 5, 12, requires_grad=True)
    out = module(x)
    reference = module.A(module.B(x))
    torch.testing.assert_close(out, reference)
    grads = torch.autograd.grad(out.square().sum(), [x, *module.parameters()])
    ref_grads = torch.autograd.grad(reference.square().sum(), [x, *module.parameters()])
    assert len(grads) == (4 if bias else 3)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want)
        assert got.abs().sum() > 0
    with torch.inference_mode():
        torch.testing.assert_close(module(x.detach()), reference.detach())


def test_stored_weight_count_is_r_m_plus_n():
    assert LowRankLinear(768, 3072, rank=153).stored_weight_count() == 153 * (768 + 3072)


# ---------------------------------------------------------------- swapping

def test_full_rank_factorized_bert_equals_dense():
    model = tiny_model()
    batch = inputs()
    expected = output_tensor(model, batch)
    factorize_model(model, full_rank=True)
    assert len(lowrank_ranks(model)) == 12
    assert all(isinstance(m, LowRankLinear) for m in find_encoder_linears(model).values())
    torch.testing.assert_close(output_tensor(model, batch), expected, atol=1e-4, rtol=1e-4)


def test_swap_counts_parameters_as_r_m_plus_n():
    model = tiny_model()
    factorize_model(model, density=0.25)
    counts = count_parameters(model)
    # hidden 32, FFN 64: 32x32 -> r = floor(.25*32*32/64) = 4; 64x32 -> floor(.25*64*32/96) = 5.
    expected = 2 * (4 * 4 * (32 + 32) + 2 * 5 * (64 + 32))
    assert counts["encoder_linear"] == expected
    assert counts["encoder_linear"] <= 0.25 * counts["encoder_linear_dense"]


def test_swap_reports_unknown_names_and_bad_shapes_together():
    model = tiny_model()
    good = "bert.encoder.layer.0.attention.self.query"
    factors = {
        "bert.encoder.layer.9.attention.self.query": (torch.zeros(32, 2), torch.zeros(2, 32)),
        good: (torch.zeros(32, 2), torch.zeros(2, 31)),
    }
    with pytest.raises(LpafError) as info:
        swap_encoder_linears(model, factors)
    message = str(info.value)
    assert "layer.9.attention.self.query" in message and "expected A (32, r), B (r, 32)" in message
    assert "\n" not in message
    assert isinstance(model.get_submodule(good), nn.Linear)  # nothing swapped


def test_swap_refuses_already_factorized_and_strict_reports_unmatched():
    model = tiny_model()
    name = "bert.encoder.layer.0.attention.self.query"
    swap_encoder_linears(model, {name: (torch.zeros(32, 2), torch.zeros(2, 32))})
    with pytest.raises(LpafError, match="already factorized"):
        swap_encoder_linears(model, {name: (torch.zeros(32, 2), torch.zeros(2, 32))})
    other = tiny_model()
    with pytest.raises(LpafError, match="have no factors"):
        swap_encoder_linears(other, {name: (torch.zeros(32, 2), torch.zeros(2, 32))}, strict=True)


def test_swap_keeps_bias():
    model = tiny_model()
    name = "bert.encoder.layer.1.output.dense"
    bias = model.get_submodule(name).bias.detach().clone()
    swap_encoder_linears(model, {name: (torch.zeros(32, 3), torch.zeros(3, 64))})
    torch.testing.assert_close(model.get_submodule(name).A.bias, bias)


# ---------------------------------------------------------------- factorize_encoder (the stage's one call)

def test_factorize_encoder_budget_rule():
    model, report = factorize_encoder(tiny_model(), "svd", density=0.25)
    assert report["allocation"]["stored_weights"] == count_parameters(model)["encoder_linear"]
    record = report["matrices"]["bert.encoder.layer.0.intermediate.dense"]
    assert record["rank"] == 5 and record["shape"] == [64, 32] and 0 < record["relative_error"] < 1
    with pytest.raises(LpafError, match="already factorized"):
        factorize_encoder(model, "svd", density=0.25)


def test_factorize_encoder_pruned_model_nnz_rule_and_sparsity_aware():
    model = tiny_model()
    masks = {}
    with torch.no_grad():
        for name, linear in find_encoder_linears(model).items():
            masks[name] = linear.weight.abs() >= linear.weight.abs().median()
            linear.weight.mul_(masks[name])
    omegas = {name: omega_from_mask(mask, 0.0) for name, mask in masks.items()}
    model, report = factorize_encoder(model, "sparsity-aware", rank_rule="nnz", method_weights=omegas,
                                      max_iters=20)
    query = report["matrices"]["bert.encoder.layer.0.attention.self.query"]
    assert query["rank"] == (32 * 32 // 2) // 64 and query["iterations"] >= 1
    assert query["weighted_relative_error"] < query["relative_error"] + 1e-9
    assert report["allocation"]["stored_weights"] <= report["allocation"]["budget_weights"]


# ---------------------------------------------------------------- save / load

@pytest.mark.parametrize("cls", [BertForSequenceClassification, BertForQuestionAnswering, BertModel])
def test_save_load_round_trip_gives_identical_outputs(tmp_path, cls):
    model = factorize_model(tiny_model(cls), density=0.25)
    batch = inputs()
    expected = output_tensor(model, batch)
    save_lowrank_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert type(loaded) is cls and not loaded.training
    assert lowrank_ranks(loaded) == lowrank_ranks(model)
    torch.testing.assert_close(output_tensor(loaded, batch), expected, atol=0, rtol=0)


def test_saved_file_holds_no_full_rank_encoder_weight(tmp_path):
    model = factorize_model(tiny_model(), density=0.25)
    save_lowrank_model(model, tmp_path)
    config = json.loads((tmp_path / CONFIG_FILE).read_text())
    ranks = config[LOWRANK_CONFIG_KEY]["ranks"]
    assert len(ranks) == 12 and config["architectures"] == ["BertForSequenceClassification"]
    with safe_open(str(tmp_path / WEIGHTS_FILE), "pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    for name, rank in ranks.items():
        assert f"{name}.weight" not in shapes
        assert shapes[f"{name}.B.weight"][0] == rank and shapes[f"{name}.A.weight"][1] == rank
    encoder = [k for k in shapes if ".encoder." in k and k.endswith("weight") and "LayerNorm" not in k]
    assert all(min(shapes[k]) == ranks[k.rsplit(".", 2)[0]] for k in encoder)


def test_file_size_matches_r_m_plus_n(tmp_path):
    model = factorize_model(tiny_model(), density=0.25)
    save_lowrank_model(model, tmp_path)
    path = tmp_path / WEIGHTS_FILE
    raw = path.read_bytes()
    header_bytes = 8 + struct.unpack("<Q", raw[:8])[0]
    counts = count_parameters(model)
    n_buffers = sum(b.numel() * b.element_size() for _, b in model.named_buffers()
                    if _ in model.state_dict())
    assert len(raw) - header_bytes == 4 * counts["total"] + n_buffers
    with safe_open(str(path), "pt") as f:
        encoder_stored = sum(f.get_slice(k).get_shape()[0] * f.get_slice(k).get_shape()[1]
                             for k in f.keys() if k.endswith((".A.weight", ".B.weight")))
    assert encoder_stored == counts["encoder_linear"]


def test_save_writes_tokenizer(tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world"]) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(vocab))
    model = factorize_model(tiny_model(), density=0.5)
    save_lowrank_model(model, tmp_path / "m", tokenizer=tokenizer)
    assert (tmp_path / "m" / "tokenizer_config.json").is_file()


def test_save_refuses_dense_model(tmp_path):
    with pytest.raises(LpafError, match="no LowRankLinear"):
        save_lowrank_model(tiny_model(), tmp_path)


def test_load_plain_directory(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path)
    loaded = load_model(tmp_path)
    batch = inputs()
    torch.testing.assert_close(output_tensor(loaded, batch), output_tensor(model, batch))


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(LpafError, match="model directory not found"):
        load_model(tmp_path / "absent")
    with pytest.raises(LpafError, match="config.json not found"):
        load_model(tmp_path)
    model = factorize_model(tiny_model(), density=0.25)
    save_lowrank_model(model, tmp_path / "m")
    weights = tmp_path / "m" / WEIGHTS_FILE
    raw = weights.read_bytes()
    weights.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(LpafError, match="model.safetensors is not a readable safetensors file"):
        load_model(tmp_path / "m")
    weights.unlink()
    with pytest.raises(LpafError, match="model.safetensors not found"):
        load_model(tmp_path / "m")
    with pytest.raises(LpafError, match="trust_remote_code"):
        load_model(tmp_path / "m", trust_remote_code=True)


def test_load_shape_mismatch_names_the_file(tmp_path):
    model = factorize_model(tiny_model(), density=0.25)
    save_lowrank_model(model, tmp_path)
    config_path = tmp_path / CONFIG_FILE
    config = json.loads(config_path.read_text())
    name = "bert.encoder.layer.0.attention.self.query"
    config[LOWRANK_CONFIG_KEY]["ranks"][name] += 1
    config_path.write_text(json.dumps(config))
    with pytest.raises(LpafError, match=r"model.safetensors does not match the model in config.json"):
        load_model(tmp_path)


def test_load_bad_rank_section_names_config(tmp_path):
    model = factorize_model(tiny_model(), density=0.25)
    save_lowrank_model(model, tmp_path)
    config_path = tmp_path / CONFIG_FILE
    config = json.loads(config_path.read_text())
    config[LOWRANK_CONFIG_KEY]["ranks"]["bert.pooler.dense"] = 4
    config_path.write_text(json.dumps(config))
    with pytest.raises(LpafError, match=r"config.json: .*bert.pooler.dense"):
        load_model(tmp_path)


def test_load_refuses_pickle_only_directory(tmp_path):
    tiny_config().save_pretrained(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(LpafError, match="safetensors only"):
        load_model(tmp_path)


def test_install_lowrank_modules_checks_ranks():
    model = tiny_model()
    with pytest.raises(LpafError, match=r"must be an integer in \[1, 32\]"):
        install_lowrank_modules(model, {"bert.encoder.layer.0.attention.self.query": 33})


# --- saving and loading that cannot silently go wrong (issue 19) ---------------------------------

@pytest.mark.parametrize("cls", [BertForSequenceClassification, BertForQuestionAnswering])
def test_save_pretrained_of_a_factorized_model_reloads_its_factors(tmp_path, cls):
    """Plain ``save_pretrained`` writes no rank section; load_model rebuilds the low-rank modules
    from the factor shapes instead of returning a dense model with random encoder weights."""
    import lpaf

    model = factorize_model(tiny_model(cls), density=0.25).eval()
    model.save_pretrained(tmp_path / "plain")
    assert LOWRANK_CONFIG_KEY not in json.loads((tmp_path / "plain" / CONFIG_FILE).read_text())
    reloaded = lpaf.load_model(str(tmp_path / "plain"))
    assert all(isinstance(m, LowRankLinear) for m in find_encoder_linears(reloaded).values())
    batch = inputs()
    torch.testing.assert_close(output_tensor(reloaded, batch), output_tensor(model, batch))


def test_save_model_round_trips_dense_and_factorized(tmp_path):
    import lpaf

    dense = tiny_model().eval()
    lpaf.save_model(dense, str(tmp_path / "dense"))
    factorized = factorize_model(tiny_model(seed=1), density=0.5).eval()
    lpaf.save_model(factorized, str(tmp_path / "fact"))
    assert LOWRANK_CONFIG_KEY in json.loads((tmp_path / "fact" / CONFIG_FILE).read_text())
    batch = inputs()
    for model, d in ((dense, "dense"), (factorized, "fact")):
        torch.testing.assert_close(output_tensor(lpaf.load_model(str(tmp_path / d)), batch), output_tensor(model, batch))


def test_missing_encoder_weights_are_an_error_not_random_weights(tmp_path):
    """A checkpoint whose encoder weights do not match its config fails with one line."""
    import safetensors.torch

    import lpaf

    tiny_model().save_pretrained(tmp_path / "m")
    weights = safetensors.torch.load_file(str(tmp_path / "m" / WEIGHTS_FILE))
    del weights["bert.encoder.layer.1.output.dense.weight"]
    safetensors.torch.save_file(weights, str(tmp_path / "m" / WEIGHTS_FILE), metadata={"format": "pt"})
    with pytest.raises(LpafError, match=r"1 weights missing, 0 unexpected.*bert.encoder.layer.1.output.dense.weight"):
        lpaf.load_model(str(tmp_path / "m"))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_checkpoints_load_as_fp32(tmp_path, dtype):
    """A checkpoint stored in fp16/bf16 (common on the hub) is trained from fp32 master weights:
    transformers 5 loads dtype "auto", which would keep it in half precision."""
    from transformers import BertForSequenceClassification

    from conftest import make_tiny_model
    from lpaf.stages.common import load_model as load_stage_model
    from lpaf.tasks import get_task

    src = make_tiny_model(tmp_path / "fp32")
    half = tmp_path / dtype
    BertForSequenceClassification.from_pretrained(src, dtype=getattr(torch, dtype)).save_pretrained(half)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json"):
        if (src / name).is_file():
            (half / name).write_bytes((src / name).read_bytes())
    assert BertForSequenceClassification.from_pretrained(half).dtype == getattr(torch, dtype)  # the trap
    for model in (load_stage_model(str(half), get_task("sst2"), expect="pretrained"), load_model(half)):
        assert {p.dtype for p in model.parameters()} == {torch.float32}
