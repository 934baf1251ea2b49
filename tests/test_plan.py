"""`lpaf plan` and `lpaf calibrate`: jobs and optimizer steps of a workflow config, and hours from a
calibration measured by running the real stages."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from lpaf.cli import main
from lpaf.mixed_rank import AnnealSchedule, matched_total_steps
from lpaf.plan import DEV_EXAMPLES, TRAIN_EXAMPLES, format_summary, job_seconds, plan_jobs, summarize

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
                                          "gpu_hours": 0.0, "estimated": True, "length_scaled": False}
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
    for kind in ("finetune", "prune-movement", "prune-magnitude", "prune-platon", "retrain-plain",
                 "retrain-mixed-rank"):
        assert blob["stages"][kind]["step_s"] > 0 and blob["stages"][kind]["steps"] == 4, kind
    assert blob["stages"]["evaluate"]["example_s"] > 0 and blob["device"] == "cpu"
    for method in ("svd", "sparsity-aware", "fwsvd"):
        assert blob["stages"][f"factorize-{method}"]["fixed_s"] > 0, method
    assert blob["stages"]["factorize-fwsvd"]["steps"] == 8 and blob["stages"]["time-models"]["forward_s"] > 0
    out = tmp_path / "plan.json"
    assert main(["plan", "--configfile", str(REPO / "config" / "smoke.yaml"), "--snakefile", SNAKEFILE,
                 "--calibration", str(calib), "--json", str(out)]) == 0
    plan = json.loads(out.read_text())
    rows = {(r["rule"], r["task"]): r for r in plan["rows"]}
    finetune = rows[("finetune", "mrpc")]
    stage = blob["stages"]["finetune"]
    scale = next(j for j in plan["jobs"] if j["rule"] == "finetune" and j["task"] == "mrpc")["max_length"] / 32
    final_eval_s = DEV_EXAMPLES["mrpc"] * blob["stages"]["evaluate"]["example_s"]
    assert blob["process_start_s"] > 0
    assert finetune["hours"] == pytest.approx(
        (blob["process_start_s"] + stage["fixed_s"] + (6 * stage["step_s"] + final_eval_s) * scale) / 3600)
    assert finetune["length_scaled"] == (scale != 1)
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


def _calibration(length: int, step_s: float) -> dict:
    stages = {kind: {"step_s": step_s, "fixed_s": 1.0} for kind in
              ("finetune", "prune-movement", "prune-magnitude", "prune-platon", "retrain-plain", "retrain-mixed-rank")}
    stages |= {"factorize-svd": {"fixed_s": 2.0, "step_s": 0.0}, "factorize-sparsity-aware": {"fixed_s": 5.0, "step_s": 0.0},
               "factorize-fwsvd": {"fixed_s": 2.0, "step_s": 0.5}, "evaluate": {"example_s": 0.0, "fixed_s": 0.0},
               "time-models": {"forward_s": 0.1, "fixed_s": 0.0, "batch_size": 32, "seq_len": 128}}
    return {"model": "m", "device": "cpu", "max_length": length, "stages": stages}


def test_each_job_is_priced_by_the_calibration_at_its_length():
    """mini: SST-2 at length 64, MRPC at 128. Two calibrations price each task by its own; one
    calibration at 128 prices SST-2 scaled by 64/128; per-method prune and factorize keys are used."""
    jobs = plan_jobs(str(REPO / "config" / "mini.yaml"), snakefile=SNAKEFILE)
    at_64, at_128 = _calibration(64, 1.0), _calibration(128, 3.0)
    both = _rows(summarize(jobs, [at_128, at_64]))
    sst2_ft = next(j for j in jobs if j.rule == "finetune" and j.task == "sst2")
    mrpc_ft = next(j for j in jobs if j.rule == "finetune" and j.task == "mrpc")
    assert both[("finetune", "sst2")]["hours"] == pytest.approx((1.0 + sst2_ft.steps * 1.0) / 3600)
    assert both[("finetune", "mrpc")]["hours"] == pytest.approx((1.0 + mrpc_ft.steps * 3.0) / 3600)
    assert not both[("finetune", "sst2")]["length_scaled"]
    one = _rows(summarize(jobs, at_128))
    assert one[("finetune", "sst2")]["hours"] == pytest.approx((1.0 + sst2_ft.steps * 3.0 * 64 / 128) / 3600)
    assert one[("finetune", "sst2")]["length_scaled"] and not one[("finetune", "mrpc")]["length_scaled"]
    assert "(length-scaled)" in format_summary(summarize(jobs, at_128))
    factorize = {j.kind for j in jobs if j.rule == "factorize"}
    assert {"factorize-svd", "factorize-fwsvd", "factorize-sparsity-aware", "factorize-fisher-sparsity-aware"} <= factorize
    fwsvd = next(j for j in jobs if j.kind == "factorize-fwsvd")
    fisher_sa = next(j for j in jobs if j.kind == "factorize-fisher-sparsity-aware")
    assert job_seconds(fwsvd, at_64) == pytest.approx(2.0 + 0.5 * fwsvd.steps) and fwsvd.steps > 0
    assert job_seconds(fisher_sa, at_64) == pytest.approx(5.0 + 0.5 * fisher_sa.steps)
    assert {j.kind for j in jobs if j.rule == "prune"} == {"prune-movement", "prune-magnitude", "prune-platon"}
    timing = next(j for j in jobs if j.stage == "time-models")
    assert timing.steps > 0 and job_seconds(timing, at_64) == pytest.approx(timing.steps * 0.1)
    rank = next(j for j in jobs if j.stage == "rank-study")
    assert job_seconds(rank, at_64) is None  # no entry: the summary says so instead of pricing it 0
    started = dict(at_64, process_start_s=7.0)  # every job is a fresh process
    assert job_seconds(fwsvd, started) == pytest.approx(7.0 + job_seconds(fwsvd, at_64))
    # an older calibration with one "prune" / "factorize" entry still prices every job
    old = _calibration(128, 2.0)
    old["stages"]["prune"] = old["stages"].pop("prune-movement")
    old["stages"]["factorize"] = old["stages"].pop("factorize-sparsity-aware")
    platon = next(j for j in jobs if j.kind == "prune-platon")
    assert job_seconds(platon, old) == pytest.approx(1.0 + platon.steps * 2.0)


def test_bad_calibrate_input_is_one_line(tmp_path, capsys):
    assert main(["calibrate", "--model", "m", "--task", "sst2", "--out", str(tmp_path / "c.json"),
                 "--prune-methods", "movement", "l0"]) == 2
    err = capsys.readouterr().err
    assert "--prune-methods" in err and "platon" in err and "'l0'" in err and not (tmp_path / "c.json").exists()


def test_final_dev_evaluation_is_priced_at_the_evaluated_subset(tmp_path):
    """config/mini_qa.yaml scores its training jobs on the first 500 evaluation questions, not all."""
    from conftest import write_squad_json

    split = tmp_path / "split"
    assert main(["split-squad", "--source", str(write_squad_json(tmp_path / "dev.json", n_articles=5)),
                 "--out", str(split), "--eval-articles", "2"]) == 0
    jobs = plan_jobs(str(REPO / "config" / "mini_qa.yaml"), [f"task_settings={{squad: {{data_dir: {split}}}}}"],
                     snakefile=SNAKEFILE)
    training = [j for j in jobs if j.stage in ("finetune", "prune", "retrain")]
    assert training and all(j.flags["final_eval_examples"] == 500 for j in training)
    calib = _calibration(192, 1.0)
    calib["stages"]["evaluate"] = {"example_s": 0.01, "fixed_s": 0.0}
    teacher = next(j for j in training if j.stage == "finetune")
    assert job_seconds(teacher, calib) == pytest.approx(1.0 + teacher.steps * 1.0 + 500 * 0.01)


def test_relative_data_paths_resolve_like_the_users_run(tmp_path, monkeypatch):
    """config/mini_qa.yaml names its split as resources/data/...: relative to where snakemake runs.
    The plan's dry run (in an empty workdir) must see it the same way."""
    from conftest import write_squad_json

    monkeypatch.chdir(tmp_path)
    split = Path("resources/data/squad-devsplit-38-10")
    assert main(["split-squad", "--source", str(write_squad_json(tmp_path / "dev.json", n_articles=5)),
                 "--out", str(split), "--eval-articles", "2"]) == 0
    (tmp_path / "results").mkdir()  # outputs of an earlier run must not hide jobs from the plan
    jobs = plan_jobs(str(REPO / "config" / "mini_qa.yaml"), snakefile=SNAKEFILE)
    assert sum(j.rule == "finetune" for j in jobs) == 1 and any(j.rule == "retrain" for j in jobs)


def test_plan_layers_config_files_counts_gpus_and_relays_time_limit_warnings(tmp_path, capsys):
    """Issue 30 points 1 and 7: `lpaf plan` takes several config files as Snakemake does (later wins); a DDP
    job over compute.gpus GPUs takes 1/gpus of the step time and holds every GPU; by default the jobs
    are priced by the config's cluster.calibration, the one the time limits come from, and the
    workflow's warnings about attempts beyond cluster.max_runtime_min are printed."""
    import yaml

    layer = tmp_path / "cuda2.yaml"
    layer.write_text(yaml.safe_dump({"compute": {"device": "cuda", "gpus": 2}, "cluster": {"max_runtime_min": 3}}))
    out = tmp_path / "plan.json"
    assert main(["plan", "--configfile", str(REPO / "config" / "smoke.yaml"), str(layer), "--snakefile", SNAKEFILE,
                 "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    plan = json.loads(out.read_text())
    assert plan["configfile"] == [str(REPO / "config" / "smoke.yaml"), str(layer)]
    assert "bert-base-a100-assumed" not in printed or "ASSUMED" in printed  # the calibration line says what it is
    calib = json.loads((REPO / "config" / "calibration" / "bert-base-a100-assumed.json").read_text())
    teacher = next(j for j in plan["jobs"] if j["rule"] == "finetune" and j["task"] == "mrpc")
    assert teacher["gpus"] == 2 and teacher["device"] == "cuda"
    scale = teacher["max_length"] / calib["max_length"]
    seconds = (calib["process_start_s"] + calib["stages"]["finetune"]["fixed_s"]
               + teacher["steps"] * calib["stages"]["finetune"]["step_s"] * scale / 2
               + teacher["flags"]["final_eval_examples"] * calib["stages"]["evaluate"]["example_s"] * scale)
    row = next(r for r in plan["rows"] if (r["rule"], r["task"]) == ("finetune", "mrpc"))
    assert row["gpu_hours"] == pytest.approx(2 * seconds / 3600) == pytest.approx(row["hours"])
    rank = next(r for r in plan["rows"] if r["rule"] == "rank_study")
    assert rank["gpu_hours"] == 0 and rank["hours"] > 0  # the rank study runs on a CPU
    # 80 s x 1.5 -> 3 min on attempt 1; the retries of the SLURM profile (2) would need 5 and 7 min
    warned = plan["time_limit_warnings"]
    assert warned and all(line in printed for line in warned)
    assert any(line.startswith("lpaf: time limit above cluster.max_runtime_min: finetune mrpc") and
               "attempt 2 would need 5 min" in line for line in warned), warned


def test_pricing_defaults_are_the_stages_own():
    """A job described by a config's partial settings (the workflow's time limits) is priced like its parsed
    command (lpaf plan) only if lpaf.plan.PRICING_DEFAULTS are the stages' defaults."""
    from lpaf.cli import build_parser
    from lpaf.plan import PRICING_DEFAULTS

    for stage, defaults in PRICING_DEFAULTS.items():
        sub = build_parser(stage)._subparsers._group_actions[0].choices[stage]
        parsed = {a.dest: a.default for a in sub._actions}
        for key, value in defaults.items():
            if stage == "time-models" and key == "models":
                continue  # required: the timed models
            assert parsed[key] == value, (stage, key, parsed[key], value)


def test_a_cached_teacher_leaves_the_distillation_steps():
    """lpaf.teacher_cache: a prune / retrain job with distillation pays the teacher's forward pass once per
    training example instead of once per example of every step; a calibration that timed steps with
    the live teacher (lpaf calibrate does) is corrected by batch x the teacher's seconds per example."""
    from lpaf.plan import describe_job

    calib = _calibration(128, 0.5)
    calib["stages"]["evaluate"] = {"example_s": 0.002, "fixed_s": 0.0}
    flags = {"epochs": 1.0, "batch_size": 32, "max_eval_samples": 1, "method": "magnitude"}
    cached = describe_job("prune", "prune", "mrpc", flags, 3200)
    live = describe_job("prune", "prune", "mrpc", flags | {"teacher_cache": False}, 3200)
    alone = describe_job("prune", "prune", "mrpc", flags | {"distill_alpha": 0.0}, 3200)
    assert cached.flags["teacher_cache"] and not live.flags["teacher_cache"] and not alone.flags["teacher_cache"]
    assert cached.steps == live.steps == 100
    evaluation = 1 * 0.002
    assert job_seconds(live, calib) == pytest.approx(1.0 + 100 * 0.5 + evaluation)
    assert job_seconds(cached, calib) == pytest.approx(1.0 + 100 * (0.5 - 32 * 0.002) + 3200 * 0.002 + evaluation)
    assert job_seconds(cached, dict(calib, teacher_cache=True)) == pytest.approx(
        1.0 + 100 * 0.5 + 3200 * 0.002 + evaluation)  # steps already timed with the cache: only the pass is added
    ddp = describe_job("prune", "prune", "mrpc", flags, 3200, device="cuda", gpus=2)
    assert not ddp.flags["teacher_cache"]  # under torchrun the teacher runs at every step
