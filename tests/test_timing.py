"""lpaf time-models: the dense and compressed models timed side by side, round-robin, in one process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import make_tiny_model
from lpaf.cli import main
from lpaf.speed import time_models_round_robin


class _Recorder(nn.Module):
    def __init__(self, name: str, calls: list[str]):
        super().__init__()
        self.name, self.calls = name, calls
        self.config = type("C", (), {"vocab_size": 10})()

    def forward(self, input_ids, attention_mask):
        self.calls.append(self.name)
        return input_ids.float().sum()


def test_round_robin_times_every_model_each_round_starting_one_later():
    calls: list[str] = []
    models = {n: _Recorder(n, calls) for n in ("a", "b", "c")}
    out = time_models_round_robin(models, batch_size=2, seq_len=3, rounds=3, warmup=1)
    assert calls == ["a", "b", "c", "b", "c", "a", "c", "a", "b", "a", "b", "c"]
    assert set(out) == {"a", "b", "c"} and all(v["rounds"] == 3 and v["median_ms"] >= 0 for v in out.values())


def _artifact(root: Path, name: str, hidden: int) -> Path:
    d = make_tiny_model(root / name)
    if hidden != 32:  # a wider model: slower, so the timing must tell them apart
        from transformers import BertConfig, BertForSequenceClassification

        cfg = BertConfig.from_pretrained(d)
        cfg.hidden_size, cfg.intermediate_size = hidden, 4 * hidden
        BertForSequenceClassification(cfg).save_pretrained(d, safe_serialization=True)
    (d / "metrics.json").write_text(json.dumps({"task": "mrpc"}))
    return d


def test_time_models_writes_every_model_and_the_device(tmp_path):
    small, wide = _artifact(tmp_path, "small", 32), _artifact(tmp_path, "wide", 256)
    out = tmp_path / "timing.json"
    assert main(["time-models", "--models", str(small), str(wide), "--rounds", "5", "--batch-size", "8",
                 "--seq-len", "64", "--device", "cpu", "--out", str(out)]) == 0
    blob = json.loads(out.read_text())
    assert set(blob["latency_ms"]) == {str(small), str(wide)}
    assert blob["device"].startswith("cpu: ") and blob["device_kind"] == "cpu"
    assert blob["latency_ms"][str(wide)]["median_ms"] > blob["latency_ms"][str(small)]["median_ms"]
    assert blob["threads"] == torch.get_num_threads()


@pytest.mark.parametrize("argv, message", [
    (["--rounds", "0"], "--rounds must be >= 1"),
    (["--models", "{m}", "{m}"], "names a directory twice"),
    (["--models", "{missing}"], "is not a finished lpaf artifact"),
])
def test_time_models_bad_input_is_one_line(tmp_path, capsys, argv, message):
    m = _artifact(tmp_path, "m", 32)
    argv = [a.format(m=m, missing=tmp_path / "nope") for a in argv]
    base = ["time-models", "--out", str(tmp_path / "t.json")]
    if "--models" not in argv:
        base += ["--models", str(m)]
    assert main(base + argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "t.json").exists()
