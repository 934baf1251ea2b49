"""lpaf/console.py: a run that talks (issue 31, points 1 and 2).

Progress on stderr (a bar on a terminal, plain lines in a log), one summary line at the end of every
stage (what it wrote, its dev score, its wall time), and a visible warning for degenerate results.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest

from conftest import make_tiny_model
from lpaf.cli import main

DEGENERATE = {"degenerate": True, "splits": {"validation": {"n": 408, "distinct": 1, "majority_prediction": "1",
                                                            "majority_fraction": 1.0, "degenerate": True}}}


def _run(argv: list) -> int:
    return main([str(a) for a in argv])


# --------------------------------------------------------------------------------------------
# formatting
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seconds, text", [(0.04, "0.0s"), (8.26, "8.3s"), (42.6, "43s"), (252, "4m12s"),
                                           (3599.4, "59m59s"), (3600, "1h00m"), (7322, "2h02m")])
def test_durations_read_at_a_glance(seconds, text):
    from lpaf.console import format_duration

    assert format_duration(seconds) == text


SUMMARIES = [
    ("finetune", "runs/ft", {"stage": "finetune", "headline_metric": "accuracy", "headline": 0.8123, "density": 1.0},
     "lpaf finetune: wrote runs/ft (accuracy 0.812, 4m12s)"),
    ("prune", "runs/x", {"stage": "prune", "headline_metric": "accuracy", "headline": 0.8119, "density": 0.1},
     "lpaf prune: wrote runs/x (accuracy 0.812 at density 0.10, 4m12s)"),
    ("factorize", "runs/f", {"stage": "factorize", "headline_metric": "pearson", "headline": 0.5, "density": 0.25},
     "lpaf factorize: wrote runs/f (pearson 0.500 at density 0.25, 4m12s)"),
    ("retrain", "runs/r", {"stage": "retrain", "headline_metric": "f1", "headline": 81.234, "density": 0.125},
     "lpaf retrain: wrote runs/r (f1 81.23 at density 0.125, 4m12s)"),
    ("retrain", "runs/r", {"stage": "retrain", "headline_metric": "accuracy", "headline": 0.5, "density": 0.5,
                           "predictions": DEGENERATE},
     "lpaf retrain: wrote runs/r (accuracy 0.500 at density 0.50, degenerate, 4m12s)"),
    ("evaluate", "e.json", {"stage": "evaluate", "headline_metric": "mcc", "headline": 0.0, "predictions": {}},
     "lpaf evaluate: wrote e.json (mcc 0.000, 4m12s)"),
    ("export", "m.onnx", {"bytes": 12_345_678, "parity_max_abs_diff": 1.2e-6, "factor_matrices": 24,
                          "factor_matrices_in_graph": 24, "headline_metric": "accuracy", "headline": 0.8},
     "lpaf export: wrote m.onnx (accuracy 0.800, 12.3 MB, max |ONNX - PyTorch| 1.20e-06, 24/24 factor matrices "
     "kept thin, 4m12s)"),
    ("time-models", "t.json", {"stage": "timing", "latency_ms": {"a": {}, "b": {}}, "device": "cpu: x"},
     "lpaf time-models: wrote t.json (2 models timed on cpu: x, 4m12s)"),
    ("fetch-model", "resources/models/m", None, "lpaf fetch-model: wrote resources/models/m (4m12s)"),
]


@pytest.mark.parametrize("stage, out, record, line", SUMMARIES, ids=[f"{s[0]}-{i}" for i, s in enumerate(SUMMARIES)])
def test_summary_line_says_what_was_written_the_score_and_the_wall_time(stage, out, record, line):
    from lpaf.console import summary_line

    assert summary_line(stage, out, record, 252.0) == line


def test_degenerate_warning_names_the_constant_prediction():
    from lpaf.console import degenerate_warning

    record = {"stage": "finetune", "task": "mrpc", "predictions": DEGENERATE}
    assert degenerate_warning("finetune", record) == (
        "lpaf finetune: warning: degenerate dev predictions (class 1 for 100% of 408 validation examples): "
        "a failed run, not a score")
    assert degenerate_warning("finetune", {"task": "mrpc", "predictions": {"degenerate": False}}) is None
    stsb = {"task": "stsb", "predictions": {"degenerate": True, "splits": {"validation": {
        "degenerate": True, "n": 32, "spread_ratio": 1.5e-5, "prediction_std": 2.8e-5, "label_std": 1.9}}}}
    assert "prediction spread 0.0015% of the labels' on 32 validation examples" in degenerate_warning("retrain", stsb)


# --------------------------------------------------------------------------------------------
# progress: lines off a terminal, a bar on one
# --------------------------------------------------------------------------------------------

class _Stream(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


def test_progress_prints_about_ten_lines_in_a_log():
    from lpaf.console import Progress

    stream = _Stream(tty=False)
    with Progress(40, "factorize", "matrix", stream=stream) as p:
        for _ in range(40):
            p.update()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 10 and lines[0].startswith("factorize: matrix 4/40 (10%) elapsed ")
    assert lines[-1].startswith("factorize: matrix 40/40 (100%) elapsed ") and "\r" not in stream.getvalue()


def test_progress_draws_a_bar_on_a_terminal():
    from lpaf.console import Progress

    stream = _Stream(tty=True)
    with Progress(5, "train", "step", leave=True, stream=stream) as p:
        for _ in range(5):
            p.update(loss=0.5)
    text = stream.getvalue()
    assert text.startswith("\rtrain:") and "5/5" in text and "loss 0.5" in text  # tqdm redraws one line in place
    assert "\n" not in text.rstrip("\n")


# --------------------------------------------------------------------------------------------
# through the real CLI
# --------------------------------------------------------------------------------------------

QUICK = ["--max-length", 32, "--device", "cpu", "--seed", 1]


def test_training_prints_progress_lines_when_stderr_is_not_a_terminal(tmp_path, glue_dir, capsys):
    model = make_tiny_model(tmp_path / "m")
    assert _run(["finetune", "--model", model, "--task", "sst2", "--data", glue_dir, "--out", tmp_path / "ft",
                 "--max-steps", 6, "--logging-steps", 2, "--batch-size", 8, *QUICK]) == 0
    err = capsys.readouterr().err
    steps = re.findall(r"^train: step (\d+)/6 \(\d+%\) loss [\d.]+ lr [\d.e+-]+ elapsed \S+( eta \S+)?$", err, re.M)
    steps = [s for s, _ in steps]
    assert steps == ["2", "4", "6"], err
    assert "{'loss'" not in err  # no Trainer dicts


def test_every_stage_ends_with_one_summary_line_and_warns_when_degenerate(tmp_path, glue_dir, capsys):
    """finetune -> prune -> factorize -> retrain -> evaluate -> export on a model whose head always
    says class 0 (accepted with --allow-degenerate): each stage's last stderr line is its summary,
    each warns that the result is degenerate, factorize and evaluate show their progress."""
    base = make_tiny_model(tmp_path / "m", constant_class=0)
    data = ["--task", "sst2", "--data", glue_dir, *QUICK]
    train = ["--max-steps", 2, "--batch-size", 8]
    ft, pr, fa, rt = (tmp_path / n for n in ("ft", "pr", "fa", "rt"))
    runs = [
        ("finetune", ft, ["--model", base, *train, "--allow-degenerate"], None),
        ("prune", pr, ["--model", ft, "--method", "magnitude", "--density", 0.5, *train], 0.5),
        ("factorize", fa, ["--model", pr, "--density", 0.5, "--eval-batch-size", 4], 0.5),
        ("retrain", rt, ["--model", fa, "--teacher", ft, *train, "--eval-batch-size", 4], 0.5),
        ("evaluate", tmp_path / "e.json", ["--model", rt, "--batch-size", 4], None),
    ]
    capsys.readouterr()
    for stage, out, argv, density in runs:
        assert _run([stage, *argv, *data, "--out", out]) == 0, stage
        err = capsys.readouterr().err
        lines = err.splitlines()
        at = f" at density {density:.2f}" if density else ""
        assert re.fullmatch(rf"lpaf {stage}: wrote {re.escape(str(out))} \(accuracy 0\.\d{{3}}{at}, degenerate, "
                            rf"[\dhms.]+\)", lines[-1]), err
        assert f"lpaf {stage}: warning: degenerate dev predictions (class 0 for 100% of 24 validation examples)" \
               in err, err
        if stage == "factorize":
            assert re.search(r"^factorize: matrix 12/12 \(100%\)", err, re.M), err
        if stage == "evaluate":
            assert re.search(r"^evaluate validation: batch 6/6 \(100%\)", err, re.M), err
    onnx = tmp_path / "m.onnx"
    assert _run(["export", "--model", rt, "--out", onnx]) == 0
    err = capsys.readouterr().err
    assert re.fullmatch(rf"lpaf export: wrote {re.escape(str(onnx))} \(accuracy 0\.\d{{3}}, degenerate, [\d.]+ MB, "
                        r"max \|ONNX - PyTorch\| \S+, 24/24 factor matrices kept thin, [\dhms.]+\)",
                        err.splitlines()[-1]), err
    assert "lpaf export: warning: degenerate dev predictions" in err
    assert json.loads(Path(f"{onnx}.json").read_text())["headline"] is not None
