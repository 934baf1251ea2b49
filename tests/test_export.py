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


def test_hugging_face_pipeline_runs_a_factorized_model(tmp_path):
    """transformers.pipeline takes lpaf.load_model(d) and the directory's tokenizer, and gives the
    same scores as the model it was saved from. (transformers 5 removed the question-answering
    pipeline; QA models are scored with `lpaf evaluate` and exported with `lpaf export`.)"""
    qa = False
    import shutil

    from transformers import AutoModelForQuestionAnswering, AutoModelForSequenceClassification, pipeline

    from conftest import make_tiny_model

    src = make_tiny_model(tmp_path / "src", qa=qa)
    cls = AutoModelForQuestionAnswering if qa else AutoModelForSequenceClassification
    model = _factorize(cls.from_pretrained(src).eval(), rank=8)
    d = tmp_path / "fact"
    lpaf.save_model(model, str(d))
    for f in src.iterdir():
        if f.name.startswith(("vocab", "tokenizer", "special_tokens")):
            shutil.copy2(f, d / f.name)
    loaded = lpaf.load_model(str(d))
    if qa:
        pipe = pipeline("question-answering", model=loaded, tokenizer=str(d))
        out = pipe(question="what is the capital city ?", context="the capital city is paris . it is big .")
        assert set(out) >= {"answer", "score", "start", "end"} and 0.0 <= out["score"] <= 1.0
    else:
        pipe = pipeline("text-classification", model=loaded, tokenizer=str(d), top_k=None)
        scores = {r["label"]: r["score"] for r in pipe("a good film")[0]}
        from transformers import AutoTokenizer

        enc = AutoTokenizer.from_pretrained(str(d))("a good film", return_tensors="pt")
        with torch.no_grad():
            probs = model(**enc).logits.softmax(-1)[0]
        assert sorted(scores.values()) == pytest.approx(sorted(probs.tolist()), abs=1e-5)


def test_every_stage_artifact_carries_a_model_card():
    from lpaf.model_card import model_card

    record = {"stage": "retrain", "task": "sst2", "split": ["validation"], "method": "retrain-mixed-rank",
              "scheme": "mixed-rank", "density": 0.25, "source": {"model": "runs/fact", "method": "sparsity-aware",
                                                                    "density": 0.25},
              "params": {"total": 100, "encoder_linear": 40}, "retained_percent_nonzero": 24.8,
              "metrics": {"accuracy": 0.8}, "seed": 3, "magnitude_overlap": {"mean": 0.42},
              "predictions": {"degenerate": True}, "best_eval": {"step": 10, "accuracy": 0.81}}
    card = model_card(record)
    for text in ("re-train: mixed-rank", "density 0.25", "accuracy 0.8000", "step 10", "0.420", "degenerate",
                 "lpaf.load_model", "**Seed:** 3"):
        assert text in card, text
