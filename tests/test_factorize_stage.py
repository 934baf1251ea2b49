"""`lpaf factorize` through the real CLI: every method, the compressed format, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import make_tiny_model, write_glue_task
from lpaf.cli import main
from lpaf.factorize import allocate_rank

DATA_FLAGS = ["--task", "sst2", "--max-length", "32", "--device", "cpu"]


@pytest.fixture(scope="module")
def shared_assets(tmp_path_factory):
    """A fine-tuned tiny teacher and a magnitude-pruned version of it (through the CLI), built once."""
    root = tmp_path_factory.mktemp("fact_assets")
    glue_dir = write_glue_task(root / "data", "sst2")
    base = make_tiny_model(root / "base")
    teacher = root / "dense"
    assert main(["finetune", "--model", str(base), "--data", str(glue_dir), "--out", str(teacher), "--epochs", "1",
                 "--batch-size", "16", "--cache-dir", str(root / "cache"), *DATA_FLAGS]) == 0
    pruned = root / "pruned"
    assert main(["prune", "--model", str(teacher), "--data", str(glue_dir), "--out", str(pruned), "--method",
                 "magnitude", "--density", "0.25", "--epochs", "2", "--batch-size", "16",
                 "--cache-dir", str(root / "cache"), *DATA_FLAGS]) == 0
    return {"teacher": teacher, "pruned": pruned, "data": glue_dir}


@pytest.fixture()
def assets(shared_assets, tmp_path):
    return dict(shared_assets, root=tmp_path)


def _factorize(assets, source: str, out: str, *extra) -> tuple[int, Path]:
    out_dir = assets["root"] / out
    code = main(["factorize", "--model", str(assets[source]), "--data", str(assets["data"]), "--out", str(out_dir),
                 *DATA_FLAGS, *map(str, extra)])
    return code, out_dir


@pytest.mark.parametrize("source,method,extra", [
    ("teacher", "svd", []),
    ("teacher", "fwsvd", ["--fisher-batches", "2"]),
    ("teacher", "fwsvd", ["--fisher-batches", "2", "--fisher-axis", "in"]),
    ("pruned", "fisher-sparsity-aware", ["--fisher-batches", "2"]),
    ("pruned", "fisher-sparsity-aware", ["--fisher-batches", "2", "--fisher-axis", "in", "--pruned-weight", "1"]),
    ("pruned", "svd", []),
    ("pruned", "sparsity-aware", ["--weights", "mask", "--pruned-weight", "0.1"]),
    ("pruned", "sparsity-aware", ["--acceleration", "nesterov"]),
    ("pruned", "sparsity-aware", ["--weights", "importance", "--pruned-weight", "0.0", "--solver", "exact"]),
    ("pruned", "importance-row-svd", []),
])
def test_factorize_every_method(assets, source, method, extra):
    code, out = _factorize(assets, source, "fact", "--method", method, "--density", "0.25", *extra)
    assert code == 0
    m = json.loads((out / "metrics.json").read_text())
    per_matrix = m["factorization"]["per_matrix"]
    assert len(per_matrix) == 12
    for name, rec in per_matrix.items():
        rows, cols = rec["shape"]
        assert rec["rank"] == allocate_rank(rows, cols, 0.25)
        assert rec["stored_weights"] == rec["rank"] * (rows + cols)
        if method in ("svd", "fwsvd"):
            assert 0.0 <= rec["relative_error"] <= 1.0  # a truncated (weighted) SVD never overshoots
    assert m["params"]["encoder_linear"] == sum(r["stored_weights"] for r in per_matrix.values())
    assert m["params"]["encoder_linear"] <= 0.25 * m["params"]["encoder_linear_dense"]
    assert m["retained_percent"] <= 25.0 and set(m["metrics"]) == {"accuracy"}
    # the chain's diagnostics: prediction spread of this model, magnitude overlap of its pruned source
    spread = m["predictions"]
    assert isinstance(spread["degenerate"], bool) and "majority_fraction" in spread["splits"]["validation"]
    pruned_overlap = json.loads((assets["pruned"] / "metrics.json").read_text())["magnitude_overlap"]
    if source == "pruned":
        assert m["magnitude_overlap"] == {k: v for k, v in pruned_overlap.items() if k != "per_matrix"}
    else:
        assert "magnitude_overlap" not in m
    if method in ("sparsity-aware", "fisher-sparsity-aware"):
        for r in per_matrix.values():
            assert r["weighted_relative_error"] is not None and r["iterations"] >= 1
            assert r["objective_final"] <= r["objective_initial"] + 1e-6  # EM starts at SVD and only descends
    # the compressed format: only factors stored, one call reloads the same function
    from safetensors.torch import load_file

    import lpaf

    stored = load_file(str(out / "model.safetensors"))
    assert not [k for k in stored if k.endswith(("query.weight", "intermediate.dense.weight"))]
    sources = load_file(str(out / "source_weights.safetensors"))
    assert len(sources) == 12
    model = lpaf.load_model(str(out)).eval()
    ids = torch.randint(5, 50, (2, 9))
    again = lpaf.load_model(str(out)).eval()
    torch.testing.assert_close(model(input_ids=ids).logits, again(input_ids=ids).logits)
    assert sum(r["stored_weights"] for r in per_matrix.values()) == sum(
        t.numel() for k, t in stored.items() if k.endswith((".A.weight", ".B.weight")))


def test_rank_rule_nnz_uses_the_pruned_nonzeros(assets):
    code, out = _factorize(assets, "pruned", "fact", "--method", "svd", "--rank-rule", "nnz")
    assert code == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["params"]["encoder_linear"] <= json.loads((assets["pruned"] / "metrics.json").read_text())[
        "params"]["encoder_linear_nonzero"]


@pytest.mark.parametrize("source,extra,pattern", [
    ("teacher", ["--density", "0"], r"--density must be in \(0, 1\], got 0.0"),
    ("teacher", ["--density", "1.5"], r"--density must be in \(0, 1\], got 1.5"),
    ("teacher", ["--density", "a"], r"argument --density: invalid float value: 'a'"),
    ("teacher", ["--density", "0.001"], r"rank 0"),
    ("teacher", ["--method", "qr"], r"argument --method: invalid choice: 'qr'"),
    ("teacher", ["--method", "sparsity-aware"], r"needs a pruned model: .*masks.safetensors not found"),
    ("teacher", ["--method", "fisher-sparsity-aware"], r"needs a pruned model: .*masks.safetensors not found"),
    ("teacher", ["--method", "fwsvd", "--fisher-axis", "rows"], r"argument --fisher-axis: invalid choice: 'rows'"),
    ("teacher", ["--pruned-weight", "2"], r"--pruned-weight must be in \[0, 1\], got 2.0"),
    ("teacher", ["--solver", "exact", "--acceleration", "nesterov"],
     r"--acceleration nesterov applies to --solver fast only \(got --solver exact\)"),
    ("factorized", [], r"is already factorized"),
    ("foreign_masks", ["--method", "sparsity-aware"], r"masks.safetensors does not match the model"),
])
def test_bad_input_one_line_exit_2_nothing_written(assets, capsys, source, extra, pattern):
    import re

    if source == "factorized":
        assert _factorize(assets, "teacher", "already", "--method", "svd")[0] == 0
        assets["factorized"] = assets["root"] / "already"
    if source == "foreign_masks":
        other = assets["root"] / "foreign"
        shutil.copytree(assets["pruned"], other)
        from safetensors.torch import load_file, save_file

        masks = load_file(str(other / "masks.safetensors"))
        save_file({k.replace("layer.1", "layer.7"): v for k, v in masks.items()}, str(other / "masks.safetensors"))
        assets["foreign_masks"] = other
    capsys.readouterr()
    try:
        code, out = _factorize(assets, source, "bad", *extra)
    except SystemExit as e:  # argparse
        code, out = e.code, assets["root"] / "bad"
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert re.search(pattern, lines[0]), lines[0]
    assert not out.exists() and not list(assets["root"].glob(".bad.partial-*"))


def test_masked_error_is_reported_and_sparsity_aware_fits_the_kept_weights_better(assets):
    """λ = 0 fits only the kept weights, starting from the SVD and never increasing its objective:
    its error on the kept entries is at most plain SVD's."""
    errors = {}
    for method, extra in (("svd", []), ("sparsity-aware", ["--pruned-weight", "0", "--solver", "exact"])):
        code, out = _factorize(assets, "pruned", f"masked-{method}", "--method", method, *extra)
        assert code == 0
        m = json.loads((out / "metrics.json").read_text())["factorization"]
        assert all(0 <= r["masked_relative_error"] for r in m["per_matrix"].values())
        errors[method] = m["summary"]["mean_masked_relative_error"]
    assert errors["sparsity-aware"] < errors["svd"]
    code, out = _factorize(assets, "teacher", "masked-dense", "--method", "svd")
    assert code == 0  # a dense source has no masks, so no masked error
    assert json.loads((out / "metrics.json").read_text())["factorization"]["summary"]["mean_masked_relative_error"] is None
