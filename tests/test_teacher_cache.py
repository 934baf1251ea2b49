"""lpaf.teacher_cache: distillation from the cached teacher outputs equals distillation from the live
teacher (issue 30 point 6), and the cache is computed once per teacher and training set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import make_tiny_model
from lpaf.cli import main

QUICK = ["--max-length", "32", "--batch-size", "8", "--max-steps", "6", "--seed", "1", "--device", "cpu",
         "--max-train-samples", "48", "--max-eval-samples", "16"]


def _teacher(root: Path, num_labels: int = 2) -> Path:
    model = make_tiny_model(root, num_labels=num_labels)
    (model / "metrics.json").write_text(json.dumps({"stage": "finetune", "method": "dense",
                                                    "metrics": {"accuracy": 0.5}, "headline": 0.5}))
    return model


@pytest.mark.parametrize("task, method", [("sst2", "movement"), ("stsb", "magnitude")])
def test_distillation_from_the_cache_equals_the_live_teacher(tmp_path, glue_dir, monkeypatch, capsys, task, method):
    """The same pruning run (distillation alpha 0.9, T 2; classification KL and regression MSE) with the
    teacher's outputs read from the cache and with the teacher run at every step: the same weights,
    scores and losses, to float rounding."""
    monkeypatch.setenv("LPAF_CACHE", str(tmp_path / "cache"))
    teacher = _teacher(tmp_path / "teacher", num_labels=1 if task == "stsb" else 2)
    common = ["prune", "--model", str(teacher), "--task", task, "--data", str(glue_dir), "--method", method,
              "--density", "0.5", "--distill-alpha", "0.9", *QUICK]
    assert main([*common, "--no-teacher-cache", "--out", str(tmp_path / "live")]) == 0
    assert not list((tmp_path / "cache").rglob("teacher-outputs/*.safetensors"))
    assert main([*common, "--out", str(tmp_path / "cached")]) == 0
    assert "computed once, cached in" in capsys.readouterr().out
    assert len(list((tmp_path / "cache").rglob("teacher-outputs/*.safetensors"))) == 1
    live, cached = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("live", "cached"))
    assert live.keys() == cached.keys()
    for name in live:
        torch.testing.assert_close(cached[name], live[name], rtol=1e-5, atol=1e-6, msg=name)
    m_live, m_cached = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("live", "cached"))
    assert m_cached["train"]["train_loss"] == pytest.approx(m_live["train"]["train_loss"], rel=1e-5)
    # a second run of the same teacher on the same data reads it
    assert main([*common, "--density", "0.25", "--out", str(tmp_path / "again")]) == 0
    assert "teacher outputs read from" in capsys.readouterr().out


def test_cached_outputs_are_the_teachers_in_eval_mode(tmp_path, glue_dir):
    """The cache holds the eval-mode teacher's logits for every training example, in order, whatever
    the batch's padding; lookup returns a batch's rows."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from lpaf.stages.common import DataArgs, load_task_data
    from lpaf.teacher_cache import IndexedDataset, load_or_compute

    model_dir = make_tiny_model(tmp_path / "m")
    teacher = AutoModelForSequenceClassification.from_pretrained(model_dir)
    teacher.train()  # the cache must switch dropout off itself
    data = load_task_data(DataArgs(task="sst2", data=str(glue_dir), max_length=32, max_train_samples=20,
                                   cache_dir=str(tmp_path / "tok")), AutoTokenizer.from_pretrained(model_dir))
    cache = load_or_compute(teacher, data.train, data.collator, "cpu", "fp32", batch_size=7,
                            cache_root=tmp_path / "c", log=lambda s: None)
    assert teacher.training and len(cache) == 20
    teacher.eval()
    batch = data.collator([IndexedDataset(data.train)[i] for i in (3, 11, 0)])
    index = batch.pop("lpaf_index")
    with torch.no_grad():
        live = teacher(**{k: v for k, v in batch.items() if k != "labels"}).logits
    torch.testing.assert_close(cache.lookup(index, "cpu").logits, live, rtol=1e-5, atol=1e-6)
