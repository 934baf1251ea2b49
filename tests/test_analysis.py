"""Rank study: matrices of known rank and spectrum, a tiny BERT, the figure and the CLI stage."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import BertConfig, BertForSequenceClassification, BertModel, GPT2Config, GPT2Model

from lpaf.analysis import matrix_rank_stats, model_rank_study, rank_study_figure, run_rank_study
from lpaf.errors import LpafError
from lpaf.lowrank import LowRankLinear
from lpaf.modules import find_encoder_linears


def tiny_bert_config() -> BertConfig:
    return BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                      vocab_size=100)


def with_spectrum(s: list[float], m: int, n: int, seed: int = 0) -> torch.Tensor:
    """U diag(s) V^T with random orthonormal U (m x k), V (n x k): singular values exactly s."""
    g = torch.Generator().manual_seed(seed)
    k = len(s)
    u, _ = torch.linalg.qr(torch.randn(m, k, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, k, generator=g, dtype=torch.float64))
    return u @ torch.diag(torch.tensor(s, dtype=torch.float64)) @ v.T


@pytest.mark.parametrize("m, n, k", [(12, 8, 3), (8, 12, 5), (16, 16, 1), (10, 6, 6)])
def test_rank_of_a_product(m, n, k):
    g = torch.Generator().manual_seed(k)
    W = torch.randn(m, k, generator=g) @ torch.randn(k, n, generator=g)
    stats = matrix_rank_stats(W)
    assert stats["rank"] == k == int(torch.linalg.matrix_rank(W))  # float32 data: float32 tolerance
    assert stats["full_rank"] == min(m, n)
    assert stats["rank_fraction"] == pytest.approx(k / min(m, n))
    assert stats["shape"] == [m, n]
    assert stats["density"] == 1.0 and stats["zero_rows"] == 0 and stats["zero_cols"] == 0


def test_zero_rows_and_columns():
    W = torch.tensor([[1.0, 0.0, 2.0, 0.0],
                      [0.0, 0.0, 0.0, 0.0],
                      [3.0, 0.0, 4.0, 0.0],
                      [0.0, 0.0, 0.0, 0.0]])
    stats = matrix_rank_stats(W)
    assert stats["zero_rows"] == 2 and stats["zero_cols"] == 2
    assert stats["nonzero"] == 4 and stats["density"] == 0.25
    assert stats["structural_rank_bound"] == 2
    assert stats["rank"] == 2  # det [[1, 2], [3, 4]] = -2


@pytest.mark.parametrize("s, rank, effective", [
    ([3.0, 2.0, 1.0, 0.1, 0.0], 4, 3),  # energy 9, 13, 14 of 14.01: 14 >= 13.87
    ([1.0] * 8, 8, 8),  # flat spectrum: 7 of 8 keeps only 87.5%
    ([1.0, 0.1, 0.1], 3, 2),  # 1.01 of 1.02 >= 0.99 * 1.02
    ([5.0, 1e-20], 1, 1),  # below matrix_rank's tolerance
])
def test_effective_rank_from_known_spectrum(s, rank, effective):
    W = with_spectrum(s, 10, 8)
    stats = matrix_rank_stats(W)
    assert stats["rank"] == rank == int(torch.linalg.matrix_rank(W))
    assert stats["effective_rank_99"] == effective
    assert stats["spectrum"]["top"] == pytest.approx(max(s))


def test_spectrum_summary():
    stats = matrix_rank_stats(with_spectrum([3.0, 2.0, 1.0, 0.1, 0.0], 5, 5))
    spectrum = stats["spectrum"]
    assert spectrum["median"] == pytest.approx(1.0)
    assert spectrum["quantiles"]["q50"] == pytest.approx(1.0)
    assert spectrum["quantiles"]["q25"] == pytest.approx(0.1)
    assert spectrum["decay_10"] == pytest.approx(1.0)  # s[0] / s[0]
    assert spectrum["decay_25"] == pytest.approx(2 / 3)  # s[1] / s[0]
    assert spectrum["decay_50"] == pytest.approx(1 / 3)  # s[2] / s[0]


def test_zero_matrix():
    stats = matrix_rank_stats(torch.zeros(4, 6))
    assert stats["rank"] == 0 and stats["effective_rank_99"] == 0
    assert stats["density"] == 0.0 and stats["zero_rows"] == 4 and stats["zero_cols"] == 6
    assert stats["spectrum"]["decay_50"] == 0.0


@pytest.mark.parametrize("W, match", [
    (torch.ones(3), "2-D"),
    (torch.ones(2, 2, dtype=torch.long), "floating-point"),
    (torch.tensor([[1.0, float("nan")], [0.0, 1.0]]), "non-finite"),
])
def test_bad_matrices(W, match):
    with pytest.raises(ValueError, match=match):
        matrix_rank_stats(W)


def test_tiny_bert_study():
    torch.manual_seed(0)
    model = BertModel(tiny_bert_config())
    with torch.no_grad():
        model.encoder.layer[0].attention.self.query.weight[:16] = 0
    study = model_rank_study(model)
    assert len(study["matrices"]) == 12
    assert set(study["matrices"]) == set(find_encoder_linears(model))
    query = study["matrices"]["encoder.layer.0.attention.self.query"]
    assert query["rank"] == 16 and query["zero_rows"] == 16
    ffn_in = study["matrices"]["encoder.layer.1.intermediate.dense"]
    assert ffn_in["shape"] == [64, 32] and ffn_in["rank"] == 32  # random init: full rank
    summary = study["summary"]
    assert summary["num_matrices"] == 12 and summary["full_rank_matrices"] == 11
    assert summary["mean_rank"] == pytest.approx((11 * 32 + 16) / 12)
    total = 2 * (4 * 32 * 32 + 2 * 32 * 64)
    assert summary["density"] == pytest.approx(1 - 16 * 32 / total)


def test_low_rank_module_is_studied_through_its_dense_weight():
    torch.manual_seed(0)
    model = BertModel(tiny_bert_config())
    model.encoder.layer[1].output.dense = LowRankLinear(64, 32, rank=4)
    stats = model_rank_study(model)["matrices"]["encoder.layer.1.output.dense"]
    assert stats["shape"] == [32, 64] and stats["rank"] == 4


def test_model_without_encoder_linears():
    with pytest.raises(LpafError, match="no encoder linear layers found in Sequential"):
        model_rank_study(nn.Sequential(nn.Linear(4, 4)))


# --- figure -----------------------------------------------------------------------------------

FIGURE_ENTRIES = [
    {"method": "dense", "retained_percent": 100.0, "metric": 0.86, "metric_name": "accuracy",
     "avg_rank": 768.0, "dense": True},
    *({"method": "movement", "retained_percent": p, "metric": 0.80 + p / 1000, "metric_name": "accuracy",
       "avg_rank": 300 + 4 * p, "dense": False} for p in (3.0, 10.0, 30.0)),
    *({"method": "magnitude", "retained_percent": p, "metric": 0.75 + p / 1000, "metric_name": "accuracy",
       "avg_rank": 700.0, "dense": False} for p in (3.0, 10.0, 30.0)),
    {"method": "magnitude", "retained_percent": 10.0, "metric": None, "metric_name": None,
     "avg_rank": 690.0, "dense": False},
]


def test_figure_png(tmp_path):
    written = rank_study_figure(FIGURE_ENTRIES, tmp_path / "figs" / "rank.png")
    assert written == [tmp_path / "figs" / "rank.png"]
    data = written[0].read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 1000
    assert not list((tmp_path / "figs").glob(".*partial*"))


def test_figure_pdf_also_writes_png(tmp_path):
    written = rank_study_figure(FIGURE_ENTRIES, tmp_path / "rank.pdf")
    assert written == [tmp_path / "rank.pdf", tmp_path / "rank.png"]
    assert (tmp_path / "rank.pdf").read_bytes().startswith(b"%PDF")
    assert (tmp_path / "rank.png").stat().st_size > 0


def test_figure_bad_input(tmp_path):
    with pytest.raises(LpafError, match="must end in .png or .pdf"):
        rank_study_figure(FIGURE_ENTRIES, tmp_path / "rank.jpg")
    with pytest.raises(LpafError, match="no entries"):
        rank_study_figure([], tmp_path / "rank.png")
    with pytest.raises(ValueError, match="figure entry 0 lacks avg_rank"):
        rank_study_figure([{"method": "x", "retained_percent": 1.0, "dense": False}], tmp_path / "r.png")


# --- the rank-study stage ---------------------------------------------------------------------

def save_model(model: nn.Module, directory: Path, metrics: dict | None = None) -> str:
    model.save_pretrained(directory)
    if metrics is not None:
        (directory / "metrics.json").write_text(json.dumps(metrics))
    return str(directory)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    dense = BertForSequenceClassification(tiny_bert_config())
    dirs = [save_model(dense, root / "dense", {"stage": "finetune", "method": "dense", "headline": 0.86,
                                               "headline_metric": "accuracy"})]
    with torch.no_grad():  # zero the bottom half of every matrix's rows
        for module in find_encoder_linears(dense).values():
            module.weight[module.weight.shape[0] // 2:] = 0
    dirs.append(save_model(dense, root / "pruned", {"stage": "prune", "method": "movement",
                                                    "density": 0.5, "headline": 0.81,
                                                    "headline_metric": "accuracy", "params": {"x": 1}}))
    dirs.append(save_model(BertModel(tiny_bert_config()), root / "no-metadata"))
    return dirs


def test_run_rank_study(model_dirs, tmp_path):
    out = tmp_path / "out" / "study.json"
    study = run_rank_study(model_dirs, str(out), figure=str(tmp_path / "fig.png"))
    assert json.loads(out.read_text()) == study
    dense, pruned, bare = study["models"]
    assert (dense["method"], dense["dense"], dense["metric"]) == ("dense", True, 0.86)
    assert dense["retained_percent"] == pytest.approx(100.0)
    assert dense["summary"]["mean_rank"] == 32
    assert (pruned["method"], pruned["dense"], pruned["metric_name"]) == ("movement", False, "accuracy")
    assert pruned["retained_percent"] == pytest.approx(50.0)
    assert pruned["summary"]["mean_rank"] == pytest.approx((10 * 16 + 2 * 32) / 12)  # FFN-in keeps 32 of 64 rows
    assert pruned["metadata"]["density"] == 0.5 and pruned["metadata"]["params"] == {"x": 1}
    assert len(pruned["matrices"]) == 12 and pruned["params"]["encoder_linear_matrices"] == 12
    assert (bare["method"], bare["dense"], bare["metric"], bare["metadata"]) == ("no-metadata", True, None, {})
    assert (tmp_path / "fig.png").stat().st_size > 0


def test_run_rank_study_labels(model_dirs, tmp_path):
    study = run_rank_study(model_dirs[1:], str(tmp_path / "s.json"), labels=["mvp", "teacher"])
    assert [m["method"] for m in study["models"]] == ["mvp", "teacher"]
    assert study["figure"] is None


def test_run_rank_study_reports_all_bad_dirs_at_once(tmp_path, model_dirs):
    no_weights = tmp_path / "config-only"
    tiny_bert_config().save_pretrained(no_weights)
    with pytest.raises(LpafError) as info:
        run_rank_study([str(tmp_path / "missing"), str(no_weights), model_dirs[0]], str(tmp_path / "s.json"))
    message = str(info.value)
    assert f"model directory not found: {tmp_path / 'missing'}" in message
    assert f"{no_weights} has no model weights" in message
    assert "\n" not in message
    assert not (tmp_path / "s.json").exists()


def test_run_rank_study_argument_errors(tmp_path, model_dirs):
    with pytest.raises(LpafError, match="1 labels for 2 model directories"):
        run_rank_study(model_dirs[:2], str(tmp_path / "s.json"), labels=["a"])
    with pytest.raises(LpafError, match="must end in .png or .pdf"):
        run_rank_study(model_dirs[:1], str(tmp_path / "s.json"), figure=str(tmp_path / "f.svg"))
    with pytest.raises(LpafError, match="no model directories"):
        run_rank_study([], str(tmp_path / "s.json"))


def test_run_rank_study_model_without_encoder_linears(tmp_path):
    gpt2 = save_model(GPT2Model(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=16)),
                      tmp_path / "gpt2")
    with pytest.raises(LpafError, match=f"^{gpt2}: no encoder linear layers found in GPT2Model"):
        run_rank_study([gpt2], str(tmp_path / "s.json"))


MINILM = Path(__file__).resolve().parents[2] / "shared" / "models" / "all-MiniLM-L6-v2"


@pytest.mark.skipif(not MINILM.is_dir() and not os.environ.get("CI"), reason="needs ../shared")
def test_trained_encoder_is_numerically_full_rank(tmp_path):
    """C1 on a real trained encoder: its matrices are (almost all) full rank, spectrum not flat."""
    study = run_rank_study([str(MINILM)], str(tmp_path / "s.json"))
    model = study["models"][0]
    assert model["dense"] and model["retained_percent"] == pytest.approx(100.0)
    summary = model["summary"]
    assert summary["num_matrices"] == 36 and summary["density"] == 1.0
    assert summary["mean_rank_fraction"] > 0.99
    assert summary["mean_effective_rank_99"] < summary["mean_rank"]


def test_magnitude_overlap_by_hand():
    from lpaf.analysis import magnitude_overlap

    W = torch.tensor([[4.0, -3.0], [0.5, 1.0]])  # top-2 |W|: the first row
    same = {"m": torch.tensor([[True, True], [False, False]])}
    half = {"m": torch.tensor([[True, False], [False, True]])}
    none = {"m": torch.tensor([[False, False], [True, True]])}
    assert magnitude_overlap(same, {"m": W})["mean"] == 1.0
    assert magnitude_overlap(half, {"m": W})["mean"] == 0.5
    r = magnitude_overlap(none, {"m": W})
    assert r["mean"] == 0.0 and r["random_baseline"] == 0.5 and r["per_matrix"] == {"m": 0.0}
    # overall is kept-weighted, mean is per matrix
    two = magnitude_overlap({"a": same["m"], "b": torch.tensor([[False, False], [False, True]])},
                            {"a": W, "b": W})
    assert two["mean"] == pytest.approx(0.5) and two["overall"] == pytest.approx(2 / 3)


def test_magnitude_overlap_rejects_other_models():
    from lpaf.analysis import magnitude_overlap

    with pytest.raises(LpafError, match="no reference weight"):
        magnitude_overlap({"x": torch.ones(2, 2, dtype=torch.bool)}, {"y": torch.ones(2, 2)})
    with pytest.raises(LpafError, match="mask"):
        magnitude_overlap({"x": torch.ones(2, 2, dtype=torch.bool)}, {"x": torch.ones(3, 2)})
