"""The regime study's summary (benchmarks/prune_study/regime_study.py): a model that predicts one class
is counted and shown beside its score, and the dev metric is the task's (MRPC: F1, where answering
"paraphrase" everywhere scores 0.81)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _regime_module():
    spec = importlib.util.spec_from_file_location("regime_study", ROOT / "benchmarks" / "prune_study" / "regime_study.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _metrics(majority: float, degenerate: bool) -> dict:
    return {"headline_metric": "f1", "predictions": {"degenerate": degenerate, "splits": {
        "validation": {"degenerate": degenerate, "majority_fraction": majority, "n": 408}}}}


def _cell(regime, seed: int, pruned: dict, factorized: dict) -> dict:
    return {"start": "pretrained", "criterion": "platon-reference", "density": 0.1, "steps": 1000, "seed": seed,
            "headline": 0.84, "headline_metric": "f1", "predictions": regime._collapse(pruned),
            "rank": {"mean_rank": 240.0, "mean_effective_rank_99": 180.0}, "overlap_with_teacher_top_abs": 0.5,
            "mean_zero_rows": 10.0,
            "after_factorization": {"sa-svd-l0.5": {"headline": 0.81, "predictions": regime._collapse(factorized)}}}


def test_one_class_models_are_counted_and_flagged():
    regime = _regime_module()
    records = [_cell(regime, 42, _metrics(0.7, False), _metrics(1.0, True)),
               _cell(regime, 43, _metrics(0.75, False), _metrics(0.8, False))]
    (row,) = regime.summarise(records)
    assert row["metric"] == "f1"
    assert row["one_class"] == 0
    assert row["sa-svd-l0.5_one_class"] == 1
    assert abs(row["majority_fraction"][0] - 0.725) < 1e-9
    table = regime.markdown([row])
    assert "dev f1" in table and "Dev f1 right after factorization" in table
    assert "0.810 ± 0.000 (1 one class)" in table
    assert "| 0 of 2 | 0.725 ± 0.035 |" in table


def test_records_without_the_flag_are_not_counted_as_healthy():
    """A cell recorded before the flag existed shows "–", not "0 of n": unknown is not "none collapsed"."""
    regime = _regime_module()
    record = _cell(regime, 42, _metrics(0.7, False), _metrics(1.0, True))
    del record["predictions"]
    (row,) = regime.summarise([record])
    assert row["one_class"] is None
    assert "| – |" in regime.markdown([row])


def test_backfill_reads_the_work_folder(tmp_path):
    regime = _regime_module()
    out = tmp_path / "cell"
    out.mkdir()
    (out / "metrics.json").write_text(json.dumps(_metrics(1.0, True)))
    fact = tmp_path / "cell.sa-svd-l0.5"
    fact.mkdir()
    (fact / "metrics.json").write_text(json.dumps(_metrics(0.9, False)))
    record = {"headline": 0.81, "after_factorization": {"sa-svd-l0.5": {"headline": 0.7}}}
    assert regime._add_predictions(record, out, tmp_path / "cell")
    assert record["predictions"] == {"degenerate": True, "majority_fraction": 1.0}
    assert record["after_factorization"]["sa-svd-l0.5"]["predictions"]["majority_fraction"] == 0.9
    assert not regime._add_predictions(record, out, tmp_path / "cell")  # nothing left to add


def test_retrained_table_joins_each_retraining_to_its_cell():
    """Every committed re-training of an MRPC cell's factorization finds its cell (by the factorized
    model's name) and shows one score and one one-class share per re-training seed."""
    regime = _regime_module()
    retrained = sorted((ROOT / "benchmarks" / "retrain_study").glob("results_regime-mrpc-*.json"))
    table = regime.retrained_markdown("mrpc", ROOT / "benchmarks" / "prune_study" / "regime" / "mrpc")
    rows = [line for line in table.splitlines()[2:] if line.startswith("|")]
    assert retrained and len(rows) == len(retrained)
    for line in rows:
        cells = [c.strip() for c in line.strip("|").split("|")]
        n_seeds = len(cells[5].split(" / "))
        assert n_seeds == 3 and len(cells[6].split(" / ")) == n_seeds
        assert cells[1] in ("pretrained", "finetuned") and cells[4].endswith("%")
