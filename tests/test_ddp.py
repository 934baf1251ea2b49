"""DDP: a training stage under ``torchrun`` (2 processes, gloo on CPU) matches the 1-process run.

Both runs use the same seed and global batch (16): under torchrun each process takes 8 examples a
step and DDP averages the two gradients, which is the mean over the 16 examples up to the order of
the float additions. So losses and weights agree to ~1e-7 relative (measured: finetune loss 1e-8,
weights 1e-7 abs; prune masks identical, weights 1e-7; mixed-rank retrain weights 2e-6 abs).
Asserted: losses within 1e-5 relative, weights within 1e-5 absolute (they are O(0.1)), dev metrics
within 1e-6 (argmax of logits that differ by ~1e-7), masks identical. The tiny model has dropout 0:
each rank draws its own dropout masks for its half of the batch, which no single process repeats.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from conftest import make_tiny_model, write_glue_task
from lpaf import distributed
from lpaf.cli import main
from lpaf.errors import LpafError

LOSS_RTOL = 1e-5
WEIGHT_ATOL = 1e-5
METRIC_ATOL = 1e-6
REPO = Path(__file__).resolve().parents[1]


def _run(argv: list) -> int:
    return main([str(a) for a in argv])


def _common(root: Path) -> list:
    return ["--task", "sst2", "--data", root / "glue", "--max-length", 32, "--batch-size", 16, "--seed", 1,
            "--device", "cpu", "--cache-dir", root / "cache"]


def _torchrun(root: Path, argv: list, log_dir: Path) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node 2 -m lpaf.cli ...`` (a free port per run), each rank's
    output in its own file under ``log_dir``."""
    prefix = distributed.launch_prefix(2, python=sys.executable)
    cmd = [*prefix[:-2], "--log-dir", str(log_dir), "--redirects", "3", *prefix[-2:], *map(str, argv)]
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_PORT")}
    env |= {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=root)
    if res.returncode != 0:
        logs = "\n".join(p.read_text()[-2000:] for p in sorted(log_dir.rglob("*.log")))
        pytest.fail(f"torchrun exited {res.returncode}: {res.stderr[-2000:]}\n{logs}")
    return res


def _rank_output(log_dir: Path, rank: int) -> str:
    return "".join(p.read_text() for p in log_dir.rglob(f"{rank}/std*.log"))


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> Path:
    """Tiny BERT without dropout, SST-2-style data (128 train, 32 dev) and a teacher fine-tuned in one process."""
    root = tmp_path_factory.mktemp("ddp")
    model = make_tiny_model(root / "bert")
    config = json.loads((model / "config.json").read_text())
    config |= {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "classifier_dropout": 0.0}
    (model / "config.json").write_text(json.dumps(config))
    write_glue_task(root / "glue", "sst2", n_train=128, n_dev=32)
    assert _run(["finetune", "--model", model, *_common(root), "--epochs", 3, "--lr", 5e-3,
                 "--out", root / "teacher"]) == 0
    return root


def _metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


def _assert_same_run(one: Path, two: Path, files: tuple[str, ...] = ("model.safetensors",)) -> dict:
    """The 2-process artifact equals the 1-process one within the stated tolerances; returns the
    measured differences."""
    m1, m2 = _metrics(one), _metrics(two)
    t1, t2 = m1["train"], m2["train"]
    assert (t1["world_size"], t1["per_device_batch_size"]) == (1, 16)
    assert (t2["world_size"], t2["per_device_batch_size"], t2["global_batch_size"]) == (2, 8, 16)
    assert t1["train_steps"] == t2["train_steps"] > 0
    assert m2["metrics"] == pytest.approx(m1["metrics"], abs=METRIC_ATOL)
    assert t2["train_loss"] == pytest.approx(t1["train_loss"], rel=LOSS_RTOL)
    assert [s for s, _ in t2["loss_history"]] == [s for s, _ in t1["loss_history"]]
    assert [v for _, v in t2["loss_history"]] == pytest.approx([v for _, v in t1["loss_history"]], rel=LOSS_RTOL)
    assert len(t2["eval_history"]) == len(t1["eval_history"])  # rank 0 evaluated during training
    diffs = {"train_loss_rel": abs(t2["train_loss"] - t1["train_loss"]) / abs(t1["train_loss"])}
    for name in files:
        a, b = load_file(one / name), load_file(two / name)
        assert set(a) == set(b)
        diffs[name] = max((a[k].double() - b[k].double()).abs().max().item() for k in a)
        assert diffs[name] <= WEIGHT_ATOL, (name, diffs[name])
    return diffs


def _assert_rank0_alone_wrote(out: Path, log_dir: Path) -> None:
    """One complete artifact, no leftovers beside it, and only rank 0 printed."""
    assert (out / "metrics.json").is_file() and (out / "README.md").is_file()
    leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]
    assert leftovers == [], leftovers  # no second partial directory, checkpoints cleaned
    rank0, rank1 = _rank_output(log_dir, 0), _rank_output(log_dir, 1)
    assert "train: step" in rank0 and "train: step" not in rank1 and "lpaf:" not in rank1
    assert ": wrote " in rank0 and ": wrote " not in rank1  # the summary line


def test_finetune_two_processes_match_one(assets, tmp_path):
    args = ["--model", assets / "bert", *_common(assets), "--epochs", 2, "--lr", 5e-3]
    assert _run(["finetune", *args, "--out", tmp_path / "one"]) == 0
    _torchrun(assets, ["finetune", *args, "--out", tmp_path / "two"], tmp_path / "logs")
    _assert_same_run(tmp_path / "one", tmp_path / "two")
    _assert_rank0_alone_wrote(tmp_path / "two", tmp_path / "logs")
    assert _metrics(tmp_path / "two")["train"]["ddp_find_unused_parameters"] is False  # nothing to find


@pytest.mark.parametrize("method", ["movement", "platon"])
def test_prune_two_processes_match_one(assets, tmp_path, method):
    """movement: scores are parameters (DDP syncs them); platon: the sensitivity of the local gradient
    is averaged over the ranks before its EMAs. Either way every rank ends with the same masks."""
    args = ["--model", assets / "teacher", *_common(assets), "--epochs", 2, "--method", method, "--density", 0.5]
    assert _run(["prune", *args, "--out", tmp_path / "one"]) == 0
    _torchrun(assets, ["prune", *args, "--out", tmp_path / "two"], tmp_path / "logs")
    _assert_same_run(tmp_path / "one", tmp_path / "two", ("model.safetensors", "scores.safetensors"))
    _assert_rank0_alone_wrote(tmp_path / "two", tmp_path / "logs")
    m1, m2 = _metrics(tmp_path / "one"), _metrics(tmp_path / "two")
    assert m1["masks_identical_across_ranks"] is None and m2["masks_identical_across_ranks"] is True
    a, b = load_file(tmp_path / "one" / "masks.safetensors"), load_file(tmp_path / "two" / "masks.safetensors")
    assert all(bool((a[k] == b[k]).all()) for k in a)
    # learned scores go without gradient once the masks freeze: only then does DDP look for unused parameters
    assert m2["train"]["ddp_find_unused_parameters"] is (method == "movement")


def test_retrain_mixed_rank_two_processes_match_one(assets, tmp_path):
    """The branch draws come from one seed on every rank; modules running W_s leave A and B without
    gradient, which DDP is told to expect."""
    fact = tmp_path / "fact"  # SVD of the teacher: its dense matrices are the W_s of mixed-rank
    assert _run(["factorize", "--model", assets / "teacher", "--task", "sst2", "--data", assets / "glue",
                 "--max-length", 32, "--device", "cpu", "--cache-dir", assets / "cache", "--method", "svd",
                 "--density", 0.5, "--out", fact]) == 0
    args = ["--model", fact, "--teacher", assets / "teacher", *_common(assets), "--scheme", "mixed-rank",
            "--epochs", 1, "--lr", 1e-3]
    assert _run(["retrain", *args, "--out", tmp_path / "one"]) == 0
    _torchrun(assets, ["retrain", *args, "--out", tmp_path / "two"], tmp_path / "logs")
    _assert_same_run(tmp_path / "one", tmp_path / "two")
    _assert_rank0_alone_wrote(tmp_path / "two", tmp_path / "logs")
    s1, s2 = _metrics(tmp_path / "one")["schedule"], _metrics(tmp_path / "two")["schedule"]
    assert s1["same_on_all_ranks"] is None and s2["same_on_all_ranks"] is True
    assert s2["by_quarter"] == s1["by_quarter"] and 0 < s2["expanded_fraction_overall"] < 1
    assert _metrics(tmp_path / "two")["train"]["ddp_find_unused_parameters"] is True


# --------------------------------------------------------------------------------------------
# Without a process group
# --------------------------------------------------------------------------------------------

def test_a_rank_other_than_0_trains_but_writes_nothing(assets, tmp_path, monkeypatch):
    """Rank 1 of 2 (simulated in one process: every collective is a no-op without a process group)
    returns after training without evaluating or writing anything of lpaf's. (The HF Trainer here
    believes it is the main process, so it may create the checkpoint directory; under torchrun it
    does not, and rank 0 removes that directory anyway.)"""
    monkeypatch.setattr(distributed, "rank", lambda: 1)
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    out = tmp_path / "ft"
    assert _run(["finetune", "--model", assets / "bert", *_common(assets), "--max-train-samples", 32,
                 "--epochs", 1, "--out", out]) == 0
    assert not out.exists() and not list(tmp_path.glob(".ft.partial-*"))
    assert not list(tmp_path.rglob("lpaf_resume_key.json")) and not list(tmp_path.rglob("metrics.json"))


def test_batch_not_divisible_by_the_processes_is_one_line_exit_2(assets, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert _run(["finetune", "--model", assets / "bert", *_common(assets), "--out", tmp_path / "ft"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("lpaf: error: ")
    assert "--batch-size 16 is the global batch and must be divisible by the number of processes (3)" in err
    assert not (tmp_path / "ft").exists()


def test_per_device_batch():
    assert distributed.per_device_batch(32, 1) == 32 and distributed.per_device_batch(32, 4) == 8
    with pytest.raises(LpafError, match=r"--batch-size 30 .* processes \(4\)"):
        distributed.per_device_batch(30, 4)


def test_launch_prefix():
    assert distributed.launch_prefix(1) == []
    assert distributed.launch_prefix(2) == ["torchrun", "--standalone", "--nproc_per_node", "2", "-m", "lpaf.cli"]
    assert distributed.launch_prefix(4, python="/env/bin/python")[:3] == ["/env/bin/python", "-m",
                                                                          "torch.distributed.run"]
    message = distributed.single_process_warning(4)
    assert "\n" not in message and "torchrun --standalone --nproc_per_node 4 -m lpaf.cli" in message


def test_workflow_launches_training_rules_with_torchrun_for_several_gpus(tmp_path):
    """compute.gpus 2 with cuda: finetune / prune / retrain start through torchrun; the other rules and
    any cpu or 1-GPU config keep the plain lpaf command."""
    def shells(compute: str) -> dict[str, list[str]]:
        cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path), "-n", "-p",
               "--configfile", str(REPO / "config" / "smoke.yaml"), "--config", f"compute={compute}"]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]
        out: dict[str, list[str]] = {}
        rule = None
        for line in res.stdout.splitlines():
            if line.startswith(("rule ", "localrule ")):
                rule = line.split()[1].rstrip(":")
            elif line.startswith("Shell command: ") and rule:
                out.setdefault(rule, []).append(line)
        return out

    many = shells("{device: cuda, gpus: 2}")
    for rule in ("finetune", "prune", "retrain"):
        assert many[rule] and all(" torchrun --standalone --nproc_per_node 2 -m lpaf.cli " f"{rule} " in s
                                  for s in many[rule])
    for rule in ("factorize", "evaluate"):
        assert all("torchrun" not in s for s in many[rule])
    one = shells("{device: cuda, gpus: 1}")
    assert all("torchrun" not in s for lines in one.values() for s in lines)
