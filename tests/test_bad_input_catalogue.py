"""The bad-input catalogue (issue "Reliability and safety"): every stage command, one place.

Each case runs a real ``lpaf`` command on real artifacts built once by the CLI itself (a tiny
fine-tuned teacher, a pruned and a factorized model) with its output under a ``results/``
directory, and checks what a user and a workflow rely on: exit code 2, exactly one line on
stderr that names the key / file / value and what is accepted, no traceback, and nothing new
under ``results/`` (no output directory, no ``.partial-*``, no checkpoints). The workflow's own
catalogue (malformed YAML, unknown keys, wrong types, densities 0 / 1.5 / "a", a method chain
with a missing stage, paths escaping ``results/`` through a config value or a target) is
``test_workflow.py::test_bad_config_stops_before_any_job`` and the two tests after it; three
cases here also go through the installed console script in a subprocess.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import make_tiny_model, write_glue_task
from lpaf.cli import main

DATA = ["--task", "sst2", "--max-length", "32", "--device", "cpu"]
QUICK = [*DATA, "--batch-size", "16"]


def _run(argv: list) -> int:
    try:
        return main([str(a) for a in argv])
    except SystemExit as e:  # argparse's own errors exit from the parser
        return int(e.code)


def _sst2_dir(root: Path, train: str, dev: str = "sentence\tlabel\nfine film\t1\nbad plot\t0\n") -> Path:
    (root / "SST-2").mkdir(parents=True)
    (root / "SST-2" / "train.tsv").write_text(train)
    (root / "SST-2" / "dev.tsv").write_text(dev)
    return root


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    """Real artifacts from the CLI, plus broken variants of them and of the data."""
    root = tmp_path_factory.mktemp("catalogue")
    cache = ["--cache-dir", str(root / "cache")]
    a = {"root": root, "data": write_glue_task(root / "data", "sst2")}
    a["base"] = make_tiny_model(root / "base")
    a["teacher"] = root / "teacher"
    assert _run(["finetune", "--model", a["base"], "--data", a["data"], "--out", a["teacher"], "--epochs", "1",
                 *QUICK, *cache]) == 0
    a["pruned"] = root / "pruned"
    assert _run(["prune", "--model", a["teacher"], "--data", a["data"], "--out", a["pruned"], "--method",
                 "magnitude", "--density", "0.5", "--epochs", "1", *QUICK, *cache]) == 0
    a["factorized"] = root / "factorized"
    assert _run(["factorize", "--model", a["pruned"], "--data", a["data"], "--out", a["factorized"],
                 "--method", "svd", "--density", "0.5", *DATA, *cache]) == 0

    a["no_source"] = root / "no-source"  # a factorized model whose source matrices were deleted
    shutil.copytree(a["factorized"], a["no_source"])
    (a["no_source"] / "source_weights.safetensors").unlink()
    a["foreign_masks"] = root / "foreign-masks"  # masks of another (deeper) model
    shutil.copytree(a["pruned"], a["foreign_masks"])
    from safetensors.torch import load_file, save_file

    masks = load_file(str(a["foreign_masks"] / "masks.safetensors"))
    save_file({k.replace("layer.1.", "layer.5."): v for k, v in masks.items()},
              str(a["foreign_masks"] / "masks.safetensors"))
    a["no_weights"] = root / "no-weights"
    a["no_weights"].mkdir()
    shutil.copy2(a["teacher"] / "config.json", a["no_weights"])
    a["truncated"] = root / "truncated"
    shutil.copytree(a["teacher"], a["truncated"])
    blob = (a["truncated"] / "model.safetensors").read_bytes()
    (a["truncated"] / "model.safetensors").write_bytes(blob[: len(blob) // 3])
    a["pickled"] = root / "pickled"  # only a pickle checkpoint: must be refused, never unpickled
    shutil.copytree(a["teacher"], a["pickled"])
    (a["pickled"] / "model.safetensors").unlink()
    (a["pickled"] / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    a["three_labels"] = make_tiny_model(root / "three-labels", num_labels=3)
    (a["three_labels"] / "metrics.json").write_text(json.dumps({"stage": "finetune"}))
    a["unfinished"] = root / "unfinished"  # a teacher without its completion record
    shutil.copytree(a["teacher"], a["unfinished"])
    (a["unfinished"] / "metrics.json").unlink()

    a["empty_dir"] = root / "empty-data"
    a["empty_dir"].mkdir()
    a["empty_split"] = _sst2_dir(root / "empty-split", "sentence\tlabel\n")
    a["no_column"] = _sst2_dir(root / "no-column", "text\tlabel\nfine film\t1\n")
    a["bad_label"] = _sst2_dir(root / "bad-label", "sentence\tlabel\nfine film\t1\nbad plot\t7\n")
    a["short_row"] = _sst2_dir(root / "short-row", "sentence\tlabel\nfine film\t1\nbad plot\n")
    return a


FINETUNE = ["finetune", "--model", "{teacher}", "--data", "{data}", *QUICK]
PRUNE = ["prune", "--model", "{teacher}", "--data", "{data}", "--epochs", "1", *QUICK]
FACTORIZE = ["factorize", "--model", "{pruned}", "--data", "{data}", *DATA]
RETRAIN = ["retrain", "--model", "{factorized}", "--teacher", "{teacher}", "--data", "{data}", "--epochs", "1",
           "--scheme", "mixed-rank", *QUICK]
EVALUATE = ["evaluate", "--model", "{teacher}", "--data", "{data}", *DATA]


def _with(base: list[str], **flags: str) -> list[str]:
    """``base`` with ``--flag value`` set (replaced where present, appended where not)."""
    argv = list(base)
    for name, value in flags.items():
        flag = "--" + name.replace("_", "-")
        if flag in argv:
            argv[argv.index(flag) + 1] = value
        else:
            argv += [flag, value]
    return argv


# (case id, argv, pattern the one line must match)
CATALOGUE = [
    ("unknown task", _with(FINETUNE, task="sts2"), r"unknown task 'sts2'; valid tasks: cola, sst2, mrpc"),
    ("unknown method", _with(PRUNE, method="movment"),
     r"argument --method: invalid choice: 'movment' \(choose from 'movement', 'magnitude'"),
    ("density 0", _with(PRUNE, density="0"), r"--density must be in \(0, 1\] \(got 0.0\)"),
    ("density 1.5", _with(FACTORIZE, density="1.5"), r"--density must be in \(0, 1\], got 1.5"),
    ("density a", _with(PRUNE, density="a"), r"argument --density: invalid float value: 'a'"),
    ("density so small a rank is 0", _with(FACTORIZE, density="0.0001"), r"rank 0"),
    ("missing data directory", _with(FINETUNE, data="{root}/nowhere"), r"data directory not found: .*nowhere"),
    ("no data files", _with(FINETUNE, data="{empty_dir}"),
     r"no sst2 data with split\(s\) train, validation under .*empty-data.*accepted layouts"),
    ("empty split", _with(FINETUNE, data="{empty_split}"), r"split 'train' of sst2 in .* is empty"),
    ("TSV missing a column", _with(FINETUNE, data="{no_column}"),
     r"SST-2/train.tsv: missing column\(s\) sentence; header has text, label"),
    ("label outside the task's set", _with(FINETUNE, data="{bad_label}"),
     r"SST-2/train.tsv row 3: label '7' is outside the label set of sst2"),
    ("short TSV row", _with(FINETUNE, data="{short_row}"),
     r"SST-2/train.tsv row 3: expected at least 2 tab-separated columns, found 1"),
    ("model without weights", _with(EVALUATE, model="{no_weights}"), r"no-weights has no \*.safetensors"),
    ("truncated safetensors", _with(FINETUNE, model="{truncated}"),
     r"truncated/model.safetensors is not a valid safetensors file"),
    ("pickle-only checkpoint", _with(EVALUATE, model="{pickled}"),
     r"pickled has no \*.safetensors weights \(lpaf loads safetensors only\)"),
    ("teacher with another label count", PRUNE[:2] + ["{three_labels}"] + PRUNE[3:],
     r"has 3 labels but task sst2 has 2"),
    # a model directory without a completion record is a pre-trained start: fine-pruning needs a teacher
    ("pre-trained start without a teacher", _with(PRUNE, model="{unfinished}"),
     r"unfinished is a pre-trained model \(not an lpaf artifact with metrics.json\); .*pass --teacher DIR"),
    ("mask file of another model", _with(FACTORIZE, model="{foreign_masks}", method="sparsity-aware"),
     r"masks.safetensors does not match the model"),
    ("sparsity-aware without masks", _with(FACTORIZE, model="{teacher}", method="sparsity-aware"),
     r"needs a pruned model: .*masks.safetensors not found"),
    ("factorizing a factorized model", _with(FACTORIZE, model="{factorized}", method="svd"),
     r"is already factorized"),
    ("retraining a model that is not factorized", _with(RETRAIN, model="{pruned}"), r"is not a factorized model"),
    ("mixed-rank without its source matrices", _with(RETRAIN, model="{no_source}"),
     r"no-source/source_weights.safetensors is missing: --scheme mixed-rank"),
    ("p0 outside [0, 1]", _with(RETRAIN, p0="1.5"), r"--p0 must be in \[0, 1\] \(got 1.5\)"),
    ("anneal fraction 0", _with(RETRAIN, anneal_fraction="0"), r"--anneal-fraction must be in \(0, 1\] \(got 0.0\)"),
    ("distillation weight outside [0, 1]", _with(FINETUNE, distill_alpha="1.5"),
     r"--distill-alpha must be in \[0, 1\] \(got 1.5\)"),
    ("unknown device", _with(FINETUNE, device="tpu"), r"argument --device: invalid choice: 'tpu'"),
]
SUBPROCESS_CASES = {"unknown task", "truncated safetensors", "mask file of another model"}


def _tree(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")} if path.exists() else set()


@pytest.mark.parametrize("case, argv, pattern", CATALOGUE, ids=[c[0] for c in CATALOGUE])
def test_bad_input_is_one_line_exit_2_nothing_written(built, tmp_path, capsys, case, argv, pattern):
    results = tmp_path / "results"
    (results / "finished").mkdir(parents=True)  # a finished artifact that must stay untouched
    (results / "finished" / "metrics.json").write_text("{}")
    out = results / "model" / "sst2" / "out"
    argv = [a.format(**{k: str(v) for k, v in built.items()}) for a in argv] + ["--out", str(out)]
    before = _tree(results)
    if case in SUBPROCESS_CASES:  # the installed console script, as a user and Snakemake run it
        lpaf = Path(sys.executable).with_name("lpaf")
        cmd = [str(lpaf)] if lpaf.exists() else [sys.executable, "-m", "lpaf.cli"]
        res = subprocess.run(cmd + argv, capture_output=True, text=True, timeout=300)
        code, err = res.returncode, res.stderr
    else:
        capsys.readouterr()
        code = _run(argv)
        err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err[-2000:]
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    assert re.search(pattern, lines[0]), lines[0]
    assert _tree(results) == before, f"bad input wrote {sorted(_tree(results) - before)}"
