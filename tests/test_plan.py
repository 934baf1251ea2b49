"""`lpaf plan` and `lpaf calibrate`: jobs and optimizer steps of a workflow config, and hours from a
calibration measured by running the real stages."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from lpaf.cli import main
from lpaf.mixed_rank import AnnealSchedule, matched_total_steps
from lpaf.plan import DEV_EXAMPLES, TRAIN_EXAMPLES, format_summary, plan_jobs, summarize

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = str(REPO / "Snakefile")


def _rows(summary):
    return {(r["rule"], r["task"]): r for r in summary["rows"]}


@pytest.fixture(scope="module")
def smoke_plan():
    return plan_jobs(str(REPO / "config" / "smoke.yaml"), snakefile=SNAKEFILE)


def test_smoke_plan_counts_the_synthetic_data_and_the_matched_budget(smoke_plan):
    """Smoke: 96 synthetic training examples, batch 16, 1 epoch -> 6 steps per training job; a
    mixed-rank re-training of the matched budget takes more."""
    rows = _rows(summarize(smoke_plan))
    assert rows[("finetune", "mrpc")] == {"rule": "finetune", "task": "mrpc", "jobs": 1, "steps": 6, "hours": 0.0,
                                          "estimated": True}
    assert rows[("prune", "sst2")]["jobs"] == 2 and rows[("prune", "sst2")]["steps"] == 12
    retrains = [j for j in smoke_plan if j.rule == "retrain" and j.task == "mrpc"]
    mixed = [j for j in retrains if j.kind == "retrain-mixed-rank"]
    plain = [j for j in retrains if j.kind == "retrain-plain"]
    assert mixed and plain and all(j.steps == 6 for j in plain)
    assert all(j.steps == matched_total_steps(6, AnnealSchedule(1.0, 0.5), 0.0) > 6 for j in mixed)
    assert sum(j.rule == "evaluate" for j in smoke_plan) == sum(1 for j in smoke_plan if j.stage == "evaluate")
    assert "optimizer steps only" in format_summary(summarize(smoke_plan))


def test_mini_plan_uses_official_sizes_and_the_subset():
    jobs = plan_jobs(str(REPO / "config" / "mini.yaml"), snakefile=SNAKEFILE)
    by = {(j.rule, j.task): j for j in jobs if j.rule == "finetune"}
    assert by[("finetune", "sst2")].steps == 3 * math.ceil(4000 / 32)  # max_train_samples 4000, 3 epochs
    assert by[("finetune", "mrpc")].steps == 3 * math.ceil(TRAIN_EXAMPLES["mrpc"] / 32)
    prunes = [j for j in jobs if j.rule == "prune" and j.task == "sst2"]
    assert len(prunes) == 3 * 2 and all(j.steps == 2 * 125 for j in prunes)


def test_calibrate_then_plan_in_hours(tiny_model, glue_dir, tmp_path, capsys):
    calib = tmp_path / "calibration.json"
    assert main(["calibrate", "--model", str(tiny_model), "--task", "sst2", "--data", str(glue_dir),
                 "--max-length", "32", "--steps", "4", "--batch-size", "8", "--out", str(calib)]) == 0
    blob = json.loads(calib.read_text())
    for kind in ("finetune", "prune", "retrain-plain", "retrain-mixed-rank"):
        assert blob["stages"][kind]["step_s"] > 0 and blob["stages"][kind]["steps"] == 4, kind
    assert blob["stages"]["evaluate"]["example_s"] > 0 and blob["device"] == "cpu"
    out = tmp_path / "plan.json"
    assert main(["plan", "--configfile", str(REPO / "config" / "smoke.yaml"), "--snakefile", SNAKEFILE,
                 "--calibration", str(calib), "--json", str(out)]) == 0
    plan = json.loads(out.read_text())
    rows = {(r["rule"], r["task"]): r for r in plan["rows"]}
    finetune = rows[("finetune", "mrpc")]
    stage = blob["stages"]["finetune"]
    final_eval_s = DEV_EXAMPLES["mrpc"] * blob["stages"]["evaluate"]["example_s"]
    assert finetune["hours"] == pytest.approx((stage["fixed_s"] + 6 * stage["step_s"] + final_eval_s) / 3600)
    assert plan["total"]["hours"] > 0 and plan["total"]["jobs"] == len(plan["jobs"])
    assert "device-h" in capsys.readouterr().out


def test_bad_plan_input_is_one_line(tmp_path, capsys):
    assert main(["plan", "--configfile", str(tmp_path / "nope.yaml")]) == 2
    assert "--configfile" in capsys.readouterr().err
    bad = tmp_path / "calib.json"
    bad.write_text("{}")
    assert main(["plan", "--configfile", str(REPO / "config" / "smoke.yaml"), "--snakefile", SNAKEFILE,
                 "--calibration", str(bad)]) == 2
    assert "not an lpaf calibration" in capsys.readouterr().err
