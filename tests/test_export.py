"""`lpaf export`: ONNX graphs of dense, pruned and factorized models, parity with PyTorch, the
factorized layers kept as two thin products, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertForQuestionAnswering, BertForSequenceClassification, BertModel

import lpaf
from lpaf.cli import main
from lpaf.factorize import svd
from lpaf.lowrank import swap_encoder_linears
from lpaf.modules import find_encoder_linears

pytest.importorskip("onnxruntime", reason="the onnx extra (pip install -e '.[onnx]'); part of '.[test]'")


def _tiny(cls, seed=0, **kw):
    torch.manual_seed(seed)
    cfg = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                     vocab_size=100, max_position_embeddings=56, **kw)  # 56: no shape like an FFN matrix
    return cls(cfg).eval()


def _factorize(model, rank=4):
    swap_encoder_linears(model, {n: svd(l.weight.detach(), None, rank) for n, l in find_encoder_linears(model).items()},
                         strict=True)
    return model


def _pruned(model):
    with torch.no_grad():
        for linear in find_encoder_linears(model).values():
            w = linear.weight
            w.mul_(w.abs() >= w.abs().flatten().median())
    return model


@pytest.mark.parametrize("kind", ["dense", "pruned", "factorized", "factorized-qa", "regression"])
def test_export_parity_and_thin_factors(tmp_path, kind):
    model = {"dense": lambda: _tiny(BertForSequenceClassification),
             "pruned": lambda: _pruned(_tiny(BertForSequenceClassification, 1)),
             "factorized": lambda: _factorize(_tiny(BertForSequenceClassification, 2)),
             "factorized-qa": lambda: _factorize(_tiny(BertForQuestionAnswering, 3)),
             "regression": lambda: _tiny(BertForSequenceClassification, 4, num_labels=1)}[kind]()
    lpaf.save_model(model, str(tmp_path / "m"))
    out = tmp_path / "model.onnx"
    assert main(["export", "--model", str(tmp_path / "m"), "--out", str(out)]) == 0
    record = json.loads(Path(f"{out}.json").read_text())
    assert record["parity_max_abs_diff"] <= 1e-4
    assert record["outputs"] == (["start_logits", "end_logits"] if kind.endswith("qa") else ["logits"])
    if kind.startswith("factorized"):
        # 12 encoder linears x 2 factors, every one a thin initializer of its own: never re-densified
        assert record["factor_matrices"] == 24 and record["factor_matrices_in_graph"] == 24
        import onnx

        dense_shapes = {(64, 32), (32, 64)}
        shapes = {tuple(i.dims) for i in onnx.load(str(out)).graph.initializer}
        assert not shapes & dense_shapes, "an FFN matrix was re-densified"
    # parity on a longer, padded batch than the export example (dynamic batch and length)
    from lpaf.export import example_inputs, onnx_parity

    assert onnx_parity(lpaf.load_model(str(tmp_path / "m")), out, example_inputs(model, batch=5, length=50)) <= 1e-4
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


def test_unsupported_model_is_one_line_and_writes_nothing(tmp_path, capsys):
    _tiny(BertModel).save_pretrained(tmp_path / "base")
    out = tmp_path / "x.onnx"
    assert main(["export", "--model", str(tmp_path / "base"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot export a BertModel" in err
    assert not out.exists() and not Path(f"{out}.json").exists()
    assert main(["export", "--model", str(tmp_path / "base"), "--out", str(tmp_path / "x.txt")]) == 2
    assert "--out must name a .onnx file" in capsys.readouterr().err
