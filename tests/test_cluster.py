"""What a SLURM campaign asks the cluster for (issue 30): time limits from `lpaf plan`'s estimate of the
same job, GPUs only where they work, threads = the job's CPUs, the early-warning margin as a config key.

The paper config is planned once per module with the SLURM profile (a dry run: nothing is
submitted) and `--cores 2`, as on a 2-core login node; the SLURM-marked tests run jobs on the local
one-node cluster of tests/test_workflow.py.
"""

from __future__ import annotations

import json
import math
import re

import pytest

from lpaf.plan import (TRAIN_EXAMPLES, TRAINING_STAGES, _stage_args, describe_job, estimate_seconds,
                       load_calibration, time_limit_min)
from test_workflow import CONFIGS, REPO, local_slurm, snakemake  # noqa: F401 (local_slurm: a fixture)

SLURM_PROFILE = str(REPO / "profiles" / "slurm")
CALIBRATIONS = [REPO / "config" / "calibration" / name for name in ("bert-base-a100-assumed.json",
                                                                   "bert-base-cpu-1thread.json")]
PLACEMENT = "cluster={gpu: {partition: gpuq, account: proj}, cpu: {partition: cpuq, account: proj}}"
COMPUTE_RULES = ("finetune", "prune", "factorize", "retrain", "evaluate", "rank_study", "timing")


def dry_run_jobs(output: str) -> list[dict]:
    """rule, wildcards, threads, resources (a dict) and shell command of every job of a dry run."""
    jobs, job = [], None
    for line in output.splitlines():
        m = re.match(r"^(?:local)?rule (\w+):$", line)
        if m:
            job = {"rule": m.group(1), "wildcards": {}, "threads": None, "resources": {}, "shell": ""}
            jobs.append(job)
        elif job is None:
            continue
        elif line.startswith("    wildcards: "):
            job["wildcards"] = dict(kv.split("=", 1) for kv in line[len("    wildcards: "):].split(", "))
        elif line.startswith("    threads: "):
            job["threads"] = int(line.split(": ", 1)[1])
        elif line.startswith("    resources: "):
            job["resources"] = dict(kv.split("=", 1) for kv in line[len("    resources: "):].split(", ") if "=" in kv)
        elif line.startswith("Shell command: "):
            job["shell"] = line[len("Shell command: "):]
    return jobs


@pytest.fixture(scope="module")
def paper_dry_run(tmp_path_factory):
    """The paper config through the SLURM profile on a '2-core login node', with the README's placement."""
    res = snakemake(tmp_path_factory.mktemp("paper"), "-n", "-p", "--profile", SLURM_PROFILE, "--cores", "2",
                    "--config", PLACEMENT, configfile=CONFIGS["paper"], timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout + res.stderr, dry_run_jobs(res.stdout + res.stderr)


def plan_estimate(job: dict, calibrations: list[dict]) -> float:
    """`lpaf plan`'s estimate of a dry-run job: its command parsed by the stage's own parser."""
    stage, ns = _stage_args(job["shell"])
    task = job["wildcards"].get("task")
    nproc = re.search(r"--nproc_per_node (\d+)", job["shell"])
    planned = describe_job(job["rule"], stage, task, vars(ns), TRAIN_EXAMPLES.get(task) if stage in TRAINING_STAGES
                           else None, device=getattr(ns, "device", None), gpus=int(nproc.group(1)) if nproc else 1)
    seconds, _ = estimate_seconds(planned, calibrations)
    return seconds


# --------------------------------------------------------------------------------------------
# 1. one source of time
# --------------------------------------------------------------------------------------------

def test_every_time_limit_is_the_plans_estimate_times_the_safety_factor(paper_dry_run):
    """Issue 30 point 1: with the committed calibration, no job of the paper config times out on its first
    attempt by the plan's own estimate (before: 84 SQuAD training jobs asked for less); each limit is the
    estimate x runtime_safety 1.5, at least 10 min, capped at 1,440."""
    _, jobs = paper_dry_run
    calibrations = [load_calibration(str(path)) for path in CALIBRATIONS]
    compute = [j for j in jobs if j["rule"] in COMPUTE_RULES]
    assert len(compute) > 1600
    short = []
    for job in compute:
        seconds = plan_estimate(job, calibrations)
        runtime = int(job["resources"]["runtime"])
        assert runtime == time_limit_min(seconds, 1.5, 1, 10, 1440)[0], (job["rule"], job["wildcards"], seconds)
        if job["rule"] in TRAINING_STAGES and runtime * 60 < seconds:
            short.append(job)
    assert short == []
    # by hand, one SQuAD prune: 10 epochs x ceil(87,599 / 32) steps at 0.2 s less the teacher's forward
    # pass (32 x 1 ms: its outputs are cached) x 384/128, the one pass over the 87,599 training questions
    # and the dev set's 10,570 examples at 1 ms x 3, 20 s process start + 60 s fixed -> 14,174 s x 1.5
    squad_prune = next(j for j in compute if j["rule"] == "prune" and j["wildcards"]["task"] == "squad")
    assert 10 * math.ceil(87599 / 32) == 27380
    assert int(squad_prune["resources"]["runtime"]) == math.ceil(
        (20 + 60 + 27380 * (0.2 - 32 * 0.001) * 3 + 87599 * 0.001 * 3 + 10570 * 0.001 * 3) * 1.5 / 60) == 355


def test_a_dry_run_warns_about_retries_beyond_the_partition_maximum(paper_dry_run):
    """MNLI and QQP prunes fit 24 h on attempts 1 and 2 but not on the profile's last retry (attempt 3)."""
    output, _ = paper_dry_run
    warned = [line for line in output.splitlines() if line.startswith("lpaf: time limit above cluster.max_runtime_min")]
    assert {re.search(r": (\w+ \w+) \(", w).group(1) for w in warned} == {"prune mnli", "prune qqp"}
    assert all("attempt 3 would need" in w and "it gets 1,440" in w for w in warned)


# --------------------------------------------------------------------------------------------
# 2. GPUs only where they work
# --------------------------------------------------------------------------------------------

def test_only_training_and_timing_jobs_hold_a_gpu(paper_dry_run):
    """Issue 30 point 2: factorization (all methods, FWSVD and fisher-sa by measurement) and evaluation run on
    CPU nodes with --device cpu; the GPU-hours reserved by rules other than finetune / prune / retrain fall
    from 424 to the timing job's (at most 20)."""
    _, jobs = paper_dry_run
    holders = {j["rule"] for j in jobs if int(j["resources"].get("gpu", 0) or 0)}
    assert holders == {"finetune", "prune", "retrain", "timing"}
    for job in (j for j in jobs if j["rule"] in ("factorize", "evaluate", "rank_study")):
        assert "gpu" not in job["resources"] and job["resources"]["slurm_partition"] == "cpuq", job
        assert job["rule"] == "rank_study" or "--device cpu" in job["shell"] and "--tf32" not in job["shell"]
    assert {m for j in jobs if j["rule"] == "factorize"
            for m in re.findall(r"--method (\S+)", j["shell"])} >= {"svd", "fwsvd", "sparsity-aware", "fisher-sparsity-aware"}
    reserved = {}
    for job in jobs:
        gpus = int(job["resources"].get("gpu", 0) or 0)
        reserved[job["rule"]] = reserved.get(job["rule"], 0.0) + gpus * int(job["resources"].get("runtime", 0)) / 60
    assert sum(h for rule, h in reserved.items() if rule not in TRAINING_STAGES) <= 20, reserved


# --------------------------------------------------------------------------------------------
# 4. threads = the job's CPUs
# --------------------------------------------------------------------------------------------

def test_threads_are_the_jobs_cpus_on_a_small_login_node(paper_dry_run):
    """Issue 30 point 4: from a 2-core login node (`--cores 2`, as profiles/default's `cores: all` gives
    there), every job still runs with OMP_NUM_THREADS = its threads = its cpus_per_task (8)."""
    _, jobs = paper_dry_run
    compute = [j for j in jobs if j["rule"] in COMPUTE_RULES]
    assert compute and all(int(j["resources"]["cpus_per_task"]) == 8 for j in compute)
    for job in compute:
        assert job["threads"] == 8 and "OMP_NUM_THREADS=8 MKL_NUM_THREADS=8 " in job["shell"], (job["rule"], job["threads"])


# --------------------------------------------------------------------------------------------
# 5. the early-warning margin is a config key
# --------------------------------------------------------------------------------------------

def test_the_margin_survives_the_plugins_default_resources(paper_dry_run, tmp_path):
    """Issue 30 point 5: cluster.signal_before_end_s (300 s) reaches every training job, also when the
    plugin's usual `--default-resources slurm_account=... slurm_partition=...` replaces the profile's
    default resources (it then also says that CPU jobs would land in that partition); margin 0 warns."""
    _, jobs = paper_dry_run
    training = [j for j in jobs if j["rule"] in TRAINING_STAGES]
    assert training and all("LPAF_SIGNAL_BEFORE_END_S=300 " in j["shell"] for j in training)
    res = snakemake(tmp_path / "a", "-n", "-p", "--profile", SLURM_PROFILE, "--default-resources",
                    "slurm_account=proj", "slurm_partition=gpuq", configfile=CONFIGS["smoke"])
    assert res.returncode == 0, res.stderr[-3000:]
    smoke = [j for j in dry_run_jobs(res.stdout + res.stderr) if j["rule"] in TRAINING_STAGES]
    for job in smoke:  # smoke jobs ask for 3 min: the margin is capped at half of it
        margin = min(300, 30 * int(job["resources"]["runtime"]))
        assert margin > 0 and f"LPAF_SIGNAL_BEFORE_END_S={margin} " in job["shell"], job["shell"]
    assert "--default-resources slurm_partition=gpuq also sends the CPU jobs" in res.stderr
    res = snakemake(tmp_path / "b", "-n", "-p", "--profile", SLURM_PROFILE, "--config",
                    "cluster={signal_before_end_s: 0}", configfile=CONFIGS["smoke"])
    assert res.returncode == 0, res.stderr[-3000:]
    assert "lpaf: warning: cluster.signal_before_end_s is 0" in res.stderr
    assert all("LPAF_SIGNAL_BEFORE_END_S=0 " in j["shell"] for j in dry_run_jobs(res.stdout + res.stderr)
               if j["rule"] in TRAINING_STAGES)


# --------------------------------------------------------------------------------------------
# 4 + 5 on the local SLURM
# --------------------------------------------------------------------------------------------

THREADS_LPAF = """#!/bin/sh
{python} -c "import os, torch; print(os.environ.get('OMP_NUM_THREADS'), torch.get_num_threads())" >> {log}
exec {fake} "$@"
"""


@pytest.mark.slurm
@pytest.mark.timeout(900)
def test_a_slurm_job_runs_with_its_cpus_as_threads_and_margin_0_warns(local_slurm, tmp_path):
    """On the local SLURM, submitted from a '1-core login node' (--cores 1): the fine-tuning job asks for
    2 CPUs and its process sees OMP_NUM_THREADS=2 and torch's 2 threads; with the margin at 0 the run
    warns (lpaf's own warning inside such a job: tests/test_deadline.py); the finished job's SLURM log
    stays."""
    import sys

    from test_workflow import _fake_env, write_config

    env = _fake_env(tmp_path / "fake", tmp_path / "fake.log")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    threads_log = tmp_path / "threads.log"
    (bin_dir / "lpaf").write_text(THREADS_LPAF.format(python=sys.executable, log=threads_log,
                                                      fake=tmp_path / "fake" / "lpaf"))
    (bin_dir / "lpaf").chmod(0o755)
    env = dict(local_slurm, PATH=f"{bin_dir}:{env['PATH']}", FAKE_LPAF_LOG=env["FAKE_LPAF_LOG"])
    cfg = write_config(tmp_path, tasks=["mrpc"], methods={"dense": {}}, rank_study={"enabled": False},
                       compute={"device": "cpu", "train_threads": 2, "eval_threads": 1},
                       cluster={"cpu": {"partition": "lpafcpu"}, "signal_before_end_s": 0,
                                "mem_mb": {"finetune": 500}, "mem_mb_per_100k_examples": 0})
    res = snakemake(tmp_path / "work", "--profile", SLURM_PROFILE, "--cores", "1", "--until", "finetune",
                    "--slurm-status-command", "squeue", "--slurm-no-account",
                    "--slurm-init-seconds-before-status-checks", "2", configfile=cfg, env=env, timeout=800)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-5000:]
    assert re.search(r"has been submitted with SLURM jobid \d+", out), out[-3000:]
    assert threads_log.read_text().split() == ["2", "2"], threads_log.read_text()
    assert "lpaf: warning: cluster.signal_before_end_s is 0" in out
    # point 7: the SLURM log of the finished job is kept (profiles/slurm: slurm-keep-successful-logs)
    assert list((tmp_path / "work" / ".snakemake" / "slurm_logs").rglob("rule_finetune/**/*.log")), out[-2000:]


# --------------------------------------------------------------------------------------------
# 3. memory from measurement
# --------------------------------------------------------------------------------------------

def test_memory_is_the_calibration_runs_peak_scaled_to_the_model(paper_dry_run):
    """Issue 30 point 3: a job asks for its rule's peak in the committed memory calibration (MiniLM's
    benchmark files), the model-dependent part scaled by BERT-base's parameters, x 1.3 headroom, plus
    the training-set term: a BERT-base RTE prune ~13.8 GB instead of 24 GB."""
    from lpaf.plan import scaled_memory_mb

    _, jobs = paper_dry_run
    memory = json.loads((REPO / "config" / "calibration" / "minilm-memory.json").read_text())
    assert memory["model_parameters"] == 22_713_216
    for rule in ("finetune", "prune", "factorize", "retrain", "evaluate", "rank_study"):
        peak = scaled_memory_mb(rule, memory, 109_482_240)
        assert peak == pytest.approx(memory["process_mb"] + (memory["rules"][rule]["max_rss_mb"] - memory["process_mb"])
                                     * 109_482_240 / 22_713_216)
        for job in (j for j in jobs if j["rule"] == rule):
            task = job["wildcards"].get("task")
            data = 2000 * TRAIN_EXAMPLES[task] / 1e5 if rule in ("finetune", "prune", "factorize", "retrain") else 0
            assert int(job["resources"]["mem_mb"]) == math.ceil(peak * 1.3 + data), (rule, task, job["resources"])
    rte_prune = next(j for j in jobs if j["rule"] == "prune" and j["wildcards"]["task"] == "rte")
    assert 12_000 < int(rte_prune["resources"]["mem_mb"]) < 16_000


def test_benchmark_files_give_each_rules_peak(tmp_path):
    """Snakemake's benchmark TSV (max_rss in MB): the largest repeat of a file, every file of a rule."""
    from lpaf.plan import benchmark_peaks

    header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    for path, rss in (("a/prune.benchmark.tsv", ["900.5", "1200.0"]), ("b/prune.benchmark.tsv", ["1500.25"]),
                      ("b/evaluate.benchmark.tsv", ["NA"]), ("c/evaluate.benchmark.tsv", ["640.0"])):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(header + "".join(f"10.0\t0:00:10\t{r}\t1\t1\t1\t0\t0\t50\t9\n" for r in rss))
    assert benchmark_peaks(sorted(tmp_path.rglob("*.benchmark.tsv"))) == {"prune": [1200.0, 1500.25], "evaluate": [640.0]}


# --------------------------------------------------------------------------------------------
# 6. the pilot
# --------------------------------------------------------------------------------------------

def test_the_pilot_is_the_paper_config_on_its_four_small_tasks():
    """config/pilot.yaml differs from config/paper.yaml only in the tasks (RTE, MRPC, STS-B, CoLA), the
    seed and the timed task, so what the pilot measures is what the campaign will run."""
    import yaml

    paper = yaml.safe_load(CONFIGS["paper"].read_text())
    pilot = yaml.safe_load((REPO / "config" / "pilot.yaml").read_text())
    assert sorted(pilot["tasks"]) == ["cola", "mrpc", "rte", "stsb"] and pilot["seeds"] == [42]
    assert pilot["evaluate"] == dict(paper["evaluate"], tasks=["mrpc"])
    assert {k: v for k, v in pilot.items() if k not in ("tasks", "seeds", "evaluate")} == \
           {k: v for k, v in paper.items() if k not in ("tasks", "seeds", "evaluate")}
