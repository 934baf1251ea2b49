"""The Snakemake workflow: DAG shape, incremental reruns, bad configs, lint, and real runs.

Most tests run `snakemake` for real in a temporary working directory (``-d``), with the
repository's Snakefile. Fast tests plan with ``-n`` or execute the DAG with a *fake* ``lpaf``
command on PATH (it writes plausible metrics files in milliseconds), which exercises the rules,
the wiring, the table and the figures without training anything; the real smoke run
(``config/smoke.yaml``, real stages) and the SLURM run are marked ``slow`` / ``slurm``.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "Snakefile"
CONFIGS = {name: REPO / "config" / f"{name}.yaml" for name in ("config", "paper", "smoke", "mini")}
SHARED = REPO.parent / "shared"


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------

def _snakemake_cmd(workdir: Path, args: tuple[str, ...], configfile: Path | None, env: dict | None):
    cmd = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "-d", str(workdir)]
    if configfile is not None:
        cmd += ["--configfile", str(configfile)]
    cmd += list(args)
    env = dict(env or os.environ)
    # the rules call `lpaf`: make the console script of this interpreter's environment findable
    env["PATH"] = os.pathsep.join([env.get("PATH", ""), str(Path(sys.executable).parent)])
    return cmd, env


def snakemake(workdir: Path, *args: str, configfile: Path | None = CONFIGS["smoke"], env: dict | None = None,
              timeout: int = 300) -> subprocess.CompletedProcess:
    cmd, env = _snakemake_cmd(workdir, args, configfile, env)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def snakemake_until(done, workdir: Path, *args: str, configfile: Path | None = CONFIGS["smoke"],
                    env: dict | None = None, timeout: float = 120) -> tuple[bool, str]:
    """Start snakemake, stop it (its whole process group) as soon as `done()` is true: for runs that never
    finish on their own (a fake sbatch). Returns whether `done()` became true within `timeout` seconds,
    and the tail of snakemake's output (for the assertion message)."""
    cmd, env = _snakemake_cmd(workdir, args, configfile, env)
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir.parent / f"{workdir.name}.snakemake_until.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.monotonic() + timeout
        try:
            while not done() and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.5)
            ok = bool(done())
        finally:
            for sig in (signal.SIGTERM, signal.SIGKILL):  # the group: children outlive a leader that exits
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    pass
    return ok, log.read_text()[-3000:]


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table of a snakemake run or dry-run."""
    counts: dict[str, int] = {}
    lines = output.splitlines()
    try:
        start = lines.index("Job stats:")
    except ValueError:
        return counts
    for line in lines[start + 3:]:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            break
        counts[parts[0]] = int(parts[1])
    counts.pop("total", None)
    return counts


def planned_jobs(output: str) -> list[dict[str, str]]:
    """(rule, output, shell command, resources) of every job a dry-run printed."""
    jobs, job = [], None
    for line in output.splitlines():
        m = re.match(r"^(?:local)?rule (\w+):$", line)
        if m:
            job = {"rule": m.group(1), "output": "", "shell": "", "resources": ""}
            jobs.append(job)
        elif job is not None and line.startswith("    output: "):
            job["output"] = line[len("    output: "):]
        elif job is not None and line.startswith("    resources: "):
            job["resources"] = line[len("    resources: "):]
        elif job is not None and line.startswith("Shell command: "):
            job["shell"] = line[len("Shell command: "):]
    return jobs


def write_config(tmp_path: Path, base: str = "smoke", **changes) -> Path:
    cfg = yaml.safe_load(CONFIGS[base].read_text())
    for key, value in changes.items():
        cfg[key] = value
    path = tmp_path / f"{base}-changed.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


FAKE_LPAF = textwrap.dedent('''\
    #!{python}
    """A fake `lpaf`: writes the files a stage would write, with plausible numbers, instantly."""
    import json, os, sys
    from lpaf.tasks import get_task

    argv = sys.argv[1:]
    stage = argv[0]
    flags = {{}}
    i = 1
    while i < len(argv):
        if argv[i].startswith("--"):
            values = []
            while i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                values.append(argv[i + 1]); i += 1
            flags[argv[i - len(values)][2:]] = values
        i += 1
    one = lambda k, d=None: (flags.get(k) or [d])[0]
    with open(os.environ["FAKE_LPAF_LOG"], "a") as f:
        f.write(" ".join(argv) + "\\n")
    out = one("out")
    if os.environ.get("FAKE_LPAF_FAIL") and os.environ["FAKE_LPAF_FAIL"] in out:
        os.makedirs(out, exist_ok=True)  # a half-written artifact: weights, no completion record
        open(os.path.join(out, "model.safetensors"), "w").close()
        sys.exit("fake lpaf: killed")

    def read(path):
        with open(os.path.join(path, "metrics.json")) as f:
            return json.load(f)

    def stage_record(retained):
        task = get_task(one("task"))
        keys = task.metric_keys()
        metrics = {{k: round(0.5 + retained / 400, 4) for k in keys}}
        return {{"stage": stage, "task": task.name, "metrics": metrics, "headline_metric": task.headline_key,
                "headline": metrics[task.headline_key], "retained_percent": retained,
                "retained_percent_nonzero": retained, "seed": int(one("seed", 0)),
                "params": {{"encoder_linear": 1000, "encoder_linear_nonzero": int(10 * retained),
                           "encoder_linear_dense": 1000, "total": 5000, "total_nonzero": 5000}}}}

    if stage in ("finetune", "prune", "factorize", "retrain"):
        retained = 100.0
        if one("density"):
            retained = 100.0 * float(one("density"))
        elif stage == "retrain":
            retained = read(one("model"))["retained_percent_nonzero"]
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "metrics.json"), "w") as f:
            json.dump(stage_record(retained), f)
    elif stage == "evaluate":
        with open(out, "w") as f:
            json.dump(read(one("model")), f)
    elif stage == "time-models":
        timed = {{m: {{"median_ms": 1.0 + read(m)["retained_percent_nonzero"]}} for m in flags["models"]}}
        with open(out, "w") as f:
            json.dump({{"device": "cpu: fake", "latency_ms": timed}}, f)
    elif stage == "rank-study":
        m = read(one("models"))
        with open(out, "w") as f:
            json.dump({{"models": [{{"retained_percent": m["retained_percent_nonzero"], "metric": m["headline"],
                                   "metric_name": m["headline_metric"],
                                   "summary": {{"mean_rank": m["retained_percent_nonzero"] / 4}}}}]}}, f)
    else:
        sys.exit("fake lpaf: unknown stage " + stage)
    ''')


def _fake_env(bin_dir: Path, log: Path) -> dict:
    """PATH with a fake `lpaf` first; its invocations are logged to FAKE_LPAF_LOG."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = bin_dir / "lpaf"
    script.write_text(FAKE_LPAF.format(python=sys.executable))
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    env = os.environ.copy()
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    env["FAKE_LPAF_LOG"] = str(log)
    return env


@pytest.fixture(scope="module")
def fake_done(tmp_path_factory):
    """The smoke config run to completion once with the fake lpaf: (work dir, env)."""
    root = tmp_path_factory.mktemp("fake")
    env = _fake_env(root / "bin", root / "fake-lpaf.log")
    work = root / "work"
    res = snakemake(work, "--cores", "2", env=env, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return work, env


@pytest.fixture
def fake_work(fake_done, tmp_path):
    """A private copy of the finished fake run (mtimes and Snakemake metadata kept)."""
    work, env = fake_done
    copy = tmp_path / "work"
    shutil.copytree(work, copy, symlinks=True)
    return copy, env


# --------------------------------------------------------------------------------------------
# lint and DAG shape
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["config", "paper", "smoke", "mini"])
def test_lint_is_clean(tmp_path, name):
    res = snakemake(tmp_path, "--lint", configfile=CONFIGS[name])
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Congratulations, your workflow is in a good condition!" in res.stdout + res.stderr


def test_paper_config_plans_the_full_dag(tmp_path):
    cfg = yaml.safe_load(CONFIGS["paper"].read_text())
    tasks, seeds, densities = len(cfg["tasks"]), len(cfg["seeds"]), len(cfg["densities"])
    ts = tasks * seeds
    assert (tasks, seeds, densities) == (9, 3, 3)
    res = snakemake(tmp_path, "-n", "--quiet", "rules", configfile=CONFIGS["paper"])
    assert res.returncode == 0, res.stderr[-3000:]
    # per (task, seed): 13 table rows (lpaf + fisher, lpaf (fine-pruned) and lpaf (movement pruning) included) at
    # 3 densities; the 4-row sweep (λ 0, 0.01, 0.1, importance Ω) at one density on the 3 rank-study tasks only
    expected = {
        "fetch_model": 1, "fetch_data": tasks,
        "finetune": ts,                                # one teacher per task and seed, shared by all rows
        # platon (fine-pruned), platon-ft (lpaf's: from the fine-tuned teacher), movement (fine-pruned), magnitude:
        # shared by the pruned rows; + the rank study's own grid (8 densities, 5 not in the table's) on mrpc, rte, cola
        "prune": ts * 4 * densities + 3 * seeds * 4 * 5,
        # dense-svd, dense-fwsvd, mag-svd, platon-ft-sa, platon-ft-svd, platon-ft-fisher-sa, platon-sa, movement-sa
        "factorize": ts * 8 * densities + 3 * seeds * 4,
        "retrain": ts * 9 * densities + 3 * seeds * 4,    # 9 factorized rows + sweep
        "evaluate": seeds * (1 + 12 * densities),  # reload check of every final SST-2 model (evaluate.tasks)
        "rank_study": 3 * seeds * (1 + 4 * 8),  # mrpc, rte, cola: teacher + 4 pruners x rank_study.densities
        "timing": 1,  # one job times every SST-2 model (evaluate.tasks) side by side
        "table": 1, "figure_metric": tasks, "figure_rank": 3, "figure_speedup": 1, "figure_ablation": 1, "all": 1,
    }
    assert job_counts(res.stdout + res.stderr) == expected


def test_learned_movement_overlay_adds_its_rows_on_the_mini_teachers(tmp_path):
    """config/mini_learned.yaml on top of config/mini.yaml plans only its two rows on mini.yaml's teacher (same
    artifact hash as the table's dense row): 1,000 pruning steps from a magnitude prior 0.1, then lpaf's
    factorize and mixed-rank re-training; nothing of the other rows."""
    res = snakemake(tmp_path, "-n", "-p", "--configfile", str(CONFIGS["mini"]), str(REPO / "config" / "mini_learned.yaml"),
                    "--config", "seeds=[43]", configfile=None)
    assert res.returncode == 0, res.stderr[-3000:]
    counts = job_counts(res.stdout + res.stderr)
    assert counts["finetune"] == 1 and counts["prune"] == 2 and counts["factorize"] == 2 and counts["retrain"] == 2
    jobs = planned_jobs(res.stdout + res.stderr)
    prunes = [j for j in jobs if j["rule"] == "prune"]
    assert all("prune-movement-learned-" in j["output"] for j in prunes)
    assert all("--max-steps 1000" in j["shell"] and "--score-init-scale 0.1" in j["shell"] for j in prunes)
    base = snakemake(tmp_path / "base", "-n", "--config", "seeds=[43]", configfile=CONFIGS["mini"])
    assert base.returncode == 0, base.stderr[-3000:]
    teacher = {re.search(r"dense-[0-9a-f]+", j["output"]).group(0) for j in planned_jobs(base.stdout + base.stderr)
               if j["rule"] == "finetune" and "/sst2/" in j["output"]}
    assert len(teacher) == 1 and all(t in prunes[0]["output"] for t in teacher)
    assert all("retrain-mixed-rank-" in j["output"] for j in jobs if j["rule"] == "retrain")


def test_rank_study_has_its_own_density_grid_and_paper_tasks_by_default(tmp_path):
    """rank_study.densities adds pruned models (and rank jobs) only: no factorize/retrain/evaluate at
    the extra densities; rank_study.tasks null takes the paper's rank-study tasks the config runs."""
    cfg = write_config(tmp_path, rank_study={"tasks": None, "densities": [0.5, 0.3]})
    res = snakemake(tmp_path / "work", "-n", configfile=cfg)
    assert res.returncode == 0, res.stderr[-3000:]
    counts = job_counts(res.stdout)
    # smoke: tasks mrpc, sst2, stsb, squad; pruners movement + magnitude at 0.5 on each; the rank study
    # (mrpc only: the one paper rank-study task here) adds both pruners at 0.3
    assert counts["prune"] == 4 * 2 + 2 and counts["rank_study"] == 1 + 2 * 2
    jobs = planned_jobs(res.stdout)
    at_03 = [j for j in jobs if "-d0.3" in j["output"]]
    assert {j["rule"] for j in at_03} == {"prune", "rank_study"}
    assert all("/mrpc/" in j["output"] for j in at_03)
    assert all("/mrpc/" in j["output"] for j in jobs if j["rule"] == "rank_study")


def _resources(job: dict[str, str]) -> dict[str, str]:
    return dict(kv.split("=", 1) for kv in job["resources"].split(", ") if "=" in kv)


def test_slurm_resources_per_rule_and_task_from_the_config(tmp_path):
    """With the SLURM profile, each job asks for the rule's threads as CPUs, a GPU only on CUDA, time and
    memory scaled by the task's training set and steps, and the CPU / GPU placement of `cluster` - set
    in one place without clobbering the rest."""
    cluster = "cluster={gpu: {partition: gpuq, account: proj, qos: high, gpu_model: a100}, cpu: {partition: cpuq}}"
    res = snakemake(tmp_path, "-n", "--profile", str(REPO / "profiles" / "slurm"), "--config", cluster,
                    configfile=CONFIGS["paper"], timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    jobs = planned_jobs(res.stdout)
    paper = yaml.safe_load(CONFIGS["paper"].read_text())
    prunes = [j for j in jobs if j["rule"] == "prune"]
    assert prunes
    runtime = {}
    for job in prunes:
        r = _resources(job)
        assert r["cpus_per_task"] == str(paper["compute"]["train_threads"]) and r["gpu"] == "1"
        assert (r["slurm_partition"], r["slurm_account"], r["qos"], r["gpu_model"]) == ("gpuq", "proj", "high", "a100")
        task = re.search(r"/bert-base-uncased/(\w+)/", job["output"]).group(1)
        runtime.setdefault(task, set()).add(int(r["runtime"]))
        assert "LPAF_SIGNAL_BEFORE_END_S=300" in job["shell"]  # cluster.signal_before_end_s: checkpoint before the limit
    assert max(runtime["rte"]) < min(runtime["mnli"])  # 2.5k vs 393k training examples
    ranks = [_resources(j) for j in jobs if j["rule"] == "rank_study"]
    assert ranks and all(r["slurm_partition"] == "cpuq" and "gpu" not in r and "slurm_account" not in r
                         for r in ranks)
    timing = [j for j in jobs if j["rule"] == "timing"]
    assert len(timing) == 1 and _resources(timing[0])["gpu"] == "1"  # one timing job per model and device
    assert all("--precision bf16" in j["shell"] and "--tf32" in j["shell"] for j in prunes)  # CUDA defaults


def test_cpu_runs_request_no_gpu_and_evaluate_does_not_time(tmp_path):
    res = snakemake(tmp_path, "-n", "--profile", str(REPO / "profiles" / "slurm"), configfile=CONFIGS["smoke"])
    assert res.returncode == 0, res.stderr[-3000:]
    jobs = planned_jobs(res.stdout)
    assert all("gpu" not in _resources(j) for j in jobs if j["resources"])
    assert all("--latency-batches" not in j["shell"] and "--precision" not in j["shell"]
               for j in jobs if j["rule"] == "evaluate")
    assert [j["rule"] for j in jobs].count("timing") == 1


def test_default_config_plans_all_rows_from_the_hub(tmp_path):
    res = snakemake(tmp_path, "-n", configfile=CONFIGS["config"])
    assert res.returncode == 0, res.stderr[-3000:]
    counts = job_counts(res.stdout)
    assert counts["fetch_model"] == 1 and counts["fetch_data"] == 2
    # dense + 11 rows (3 sparse references, 8 factorized) at 2 densities, on 2 tasks
    assert counts["finetune"] == 2 and counts["evaluate"] == 2 * (1 + 11 * 2)


def test_mini_config_plans_every_row_from_the_hub_or_the_shared_copies(tmp_path):
    """config/mini.yaml: both tasks, both densities, the nine rows of METHOD.md plus the PLATON
    sparse reference and the movement-pruned lpaf chain; the documented override of
    benchmarks/mini_reproduction.sh plans the same jobs without the fetch rules."""
    cfg = yaml.safe_load(CONFIGS["mini"].read_text())
    method_rows = {"dense", "movement", "magnitude", "svd", "fwsvd", "magnitude+svd", "lpaf", "lpaf-no-sa-svd",
                   "lpaf-no-mixed-rank"}
    assert cfg["model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert set(cfg["methods"]) == method_rows | {"platon", "lpaf-movement", "lpaf-fisher"}
    tasks, densities = len(cfg["tasks"]), len(cfg["densities"])
    res = snakemake(tmp_path, "-n", configfile=CONFIGS["mini"])
    assert res.returncode == 0, res.stderr[-3000:]
    hub = job_counts(res.stdout)
    assert hub["fetch_model"] == 1 and hub["fetch_data"] == tasks
    # prune: movement, magnitude, platon; factorize: svd and fwsvd of the dense model, svd of the
    # magnitude-pruned, sa-svd, fisher-sa and svd of the PLATON-pruned, sa-svd of the movement-pruned model
    assert hub["finetune"] == tasks and hub["prune"] == tasks * 3 * densities
    assert hub["factorize"] == tasks * 7 * densities and hub["retrain"] == tasks * 8 * densities
    script = (REPO / "benchmarks" / "mini_reproduction.sh").read_text()
    assert "CONFIG=${CONFIG:-config/mini.yaml}" in script and '--configfile "$CONFIG"' in script
    assert 'model_path="$MODEL" data_dir="$DATA"' in script
    shared_model = SHARED / "models" / "all-MiniLM-L6-v2"
    if not shared_model.is_dir() and not os.environ.get("CI"):
        return  # users without ../shared: the hub plan above is the whole check
    res = snakemake(tmp_path, "-n", "--config", f"model_path={shared_model}", f"data_dir={SHARED / 'data'}",
                    configfile=CONFIGS["mini"])
    assert res.returncode == 0, res.stderr[-3000:]
    local = job_counts(res.stdout)
    assert {k: v for k, v in hub.items() if not k.startswith("fetch")} == local


def test_the_background_mini_reproduction_stops_as_one_process_group(tmp_path):
    """The printed stop command must stop Snakemake and its jobs, not only the launching script: a
    --keep-going run that loses only its parent keeps starting jobs. A stand-in `snakemake` that
    starts a job and waits shows whether the whole group goes."""
    job_pid = tmp_path / "job.pid"
    shared, env = stand_in_mini_reproduction(tmp_path, f"sleep 300 &\necho $! > {job_pid}\nwait\n")
    (shared / "data" / "glue").mkdir(parents=True)
    log = tmp_path / "logs" / "mini.log"
    env["LPAF_MINI_LOG"] = str(log)
    res = subprocess.run([str(REPO / "benchmarks" / "mini_reproduction.sh")], env=env, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    group = int((tmp_path / "logs" / "mini.pid").read_text())
    assert f"kill -TERM -- -{group}" in res.stdout
    deadline = time.time() + 30
    while not job_pid.exists() or not job_pid.read_text().strip():
        assert time.time() < deadline, log.read_text()
        time.sleep(0.2)
    job = int(job_pid.read_text())
    assert os.getpgid(job) == group and os.getpgid(job) != os.getpgrp()
    os.killpg(group, signal.SIGTERM)
    deadline = time.time() + 30
    while live_members(group):  # zombies count as gone: an init that does not reap must not fail this
        assert time.time() < deadline, f"the run's process group outlived its stop command: {live_members(group)}"
        time.sleep(0.2)
    assert job not in live_members(group)


def test_the_mini_reproduction_writes_the_squad_split_its_config_names(tmp_path):
    """CONFIG=config/mini_qa.yaml makes SQuAD one command: the split its task_settings.squad.data_dir
    names is written from the shared dev set before Snakemake starts, and Snakemake gets that config.
    Without the source it is a one-line exit 2 that neither writes a split nor starts Snakemake."""
    from conftest import write_squad_json

    calls = tmp_path / "snakemake.args"
    shared, env = stand_in_mini_reproduction(tmp_path, f'echo "$@" >> {calls}\n')
    source = write_squad_json(shared / "data" / "squad" / "v1.1" / "dev-v1.1.json", n_articles=12)
    split = tmp_path / "split"
    config = tmp_path / "qa.yaml"
    config.write_text(yaml.safe_dump({"tasks": ["squad"], "task_settings": {"squad": {"data_dir": str(split)}}}))
    env.update(CONFIG=str(config), SEEDS="[43]")
    script = str(REPO / "benchmarks" / "mini_reproduction.sh")
    # the summary step after the stand-in Snakemake finds no results: only what came before is checked
    subprocess.run([script, "--foreground"], env=env, capture_output=True, text=True, timeout=120)
    assert json.loads((split / "SPLIT.json").read_text())["eval_articles"] == 10
    assert calls.read_text().split().count("--configfile") == 1 and f"--configfile {config} " in calls.read_text()
    assert "seeds=[43]" in calls.read_text()

    shutil.rmtree(split)
    calls.unlink()
    source.unlink()
    (shared / "data" / "glue").mkdir()
    res = subprocess.run([script, "--foreground"], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1
    assert str(split) in res.stderr and "dev-v1.1.json" in res.stderr
    assert not split.exists() and not calls.exists()


def stand_in_mini_reproduction(tmp_path: Path, snakemake_body: str) -> tuple[Path, dict]:
    """A ../shared stand-in with the model's config.json only, and the environment that runs
    benchmarks/mini_reproduction.sh against it with a stand-in `snakemake` running `snakemake_body`."""
    shared = tmp_path / "shared"
    (shared / "models" / "all-MiniLM-L6-v2").mkdir(parents=True)
    (shared / "models" / "all-MiniLM-L6-v2" / "config.json").write_text("{}")
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    fake = fake_bin / "snakemake"
    fake.write_text("#!/usr/bin/env bash\n" + snakemake_body)
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, "LPAF_SHARED": str(shared),
           "PATH": f"{fake_bin}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return shared, env


def live_members(pgid: int) -> list[int]:
    """Pids of the processes in process group `pgid` that are not zombies (from /proc)."""
    members = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(stat_file.parent.name))
    return members


@pytest.mark.skipif(not (SHARED / "models" / "all-MiniLM-L6-v2").is_dir() and not os.environ.get("CI"), reason="needs ../shared")
def test_local_model_and_data_overrides_skip_the_fetch_rules(tmp_path):
    res = snakemake(tmp_path, "-n", "--config", f"model_path={SHARED / 'models' / 'all-MiniLM-L6-v2'}",
                    f"data_dir={SHARED / 'data'}", configfile=CONFIGS["config"])
    assert res.returncode == 0, res.stderr[-3000:]
    counts = job_counts(res.stdout)
    assert "fetch_model" not in counts and "fetch_data" not in counts
    finetune = [j for j in planned_jobs(res.stdout) if j["rule"] == "finetune"]
    assert all(f"--model {SHARED / 'models' / 'all-MiniLM-L6-v2'}" in j["shell"] for j in finetune)
    assert all(f"--data {SHARED / 'data'}" in j["shell"] for j in finetune)


def test_rows_share_the_teacher_and_the_pruned_models(tmp_path):
    res = snakemake(tmp_path, "-n", "-p")
    assert res.returncode == 0, res.stderr[-3000:]
    jobs = planned_jobs(res.stdout)
    teachers = {j["output"] for j in jobs if j["rule"] == "finetune"}
    pruned = {j["output"] for j in jobs if j["rule"] == "prune"}
    assert len(teachers) == 4 and len(pruned) == 4 * 2  # 4 tasks; movement + magnitude at one density
    retrained = [j["output"] for j in jobs if j["rule"] == "retrain"]
    for p in pruned:  # the movement model feeds 3 rows, the magnitude model one factorized row
        prefix = p.removesuffix("metrics.json")
        users = [r for r in retrained if r.startswith(prefix)]
        assert len(users) == (3 if "prune-movement-" in p else 1)
    for t in teachers:  # every artifact of a task lives under its one teacher
        task_dir = t.split("/dense-")[0]
        assert all(j["output"].startswith(t.removesuffix("metrics.json"))
                   for j in jobs if j["rule"] in ("prune", "factorize", "retrain") and j["output"].startswith(task_dir))


def test_training_jobs_run_offline_and_ask_for_gpus_only_with_cuda(tmp_path):
    cpu = planned_jobs(snakemake(tmp_path, "-n", "-p").stdout)
    cuda_cfg = write_config(tmp_path, compute={"device": "cuda", "gpus": 2, "precision": "bf16"})
    cuda = planned_jobs(snakemake(tmp_path, "-n", "-p", configfile=cuda_cfg).stdout)
    training = ("finetune", "prune", "factorize", "retrain", "evaluate")
    for job in (j for j in cpu if j["rule"] in training):
        assert job["shell"].startswith("HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 ")
        assert "--device cpu" in job["shell"] and "gpu=" not in job["resources"]
    for job in (j for j in cuda if j["rule"] in ("finetune", "prune", "retrain", "timing")):
        ddp = job["rule"] in ("finetune", "prune", "retrain")  # DDP over both GPUs; the timing job runs one process
        assert "--device cuda" in job["shell"] and f"gpu={2 if ddp else 1}" in job["resources"]
        assert ("--precision bf16" in job["shell"]) == ddp
    for job in (j for j in cuda if j["rule"] in ("factorize", "evaluate")):  # CPU nodes (issue 30 point 2)
        assert "--device cpu" in job["shell"] and "--precision" not in job["shell"] and "gpu=" not in job["resources"]
    assert all("gpu=" not in j["resources"] for j in cuda if j["rule"] in ("rank_study", "table", "smoke_assets"))


def test_every_planned_lpaf_command_parses_with_the_real_cli(tmp_path):
    """The workflow's flags and the stage dataclasses cannot drift apart."""
    from lpaf.cli import build_parser

    commands = []
    for name in ("smoke", "paper", "config"):
        res = snakemake(tmp_path, "-n", "-p", configfile=CONFIGS[name])
        assert res.returncode == 0, res.stderr[-2000:]
        commands += [j["shell"] for j in planned_jobs(res.stdout) if " lpaf " in f" {j['shell']}"]
    seen = set()
    for command in commands:
        argv = shlex.split(command.split(" > ")[0])
        argv = argv[argv.index("lpaf") + 1:]
        key = (argv[0], tuple(a for a in argv if a.startswith("--")))
        if key in seen:
            continue
        seen.add(key)
        try:
            build_parser(argv[0]).parse_args(argv)
        except SystemExit:
            pytest.fail(f"lpaf rejects a command the workflow plans: lpaf {' '.join(argv)}")
    assert {k[0] for k in seen} >= {"fetch-model", "fetch-data", "finetune", "prune", "factorize", "retrain",
                                    "evaluate", "rank-study"}


# flags the workflow sets itself (paths, wildcards, compute) rather than from stage settings
WORKFLOW_OWNED_FLAGS = {"model", "out", "teacher", "task", "data", "seed", "device", "precision", "tf32", "density",
                        "model_revision", "revision", "models", "figure", "labels", "latency_batches", "batch_size",
                        "logging_dir", "allow_degenerate"}  # logging_dir: beside each artifact; tf32: compute.tf32;
# allow_degenerate: smoke_assets (LPAF_ALLOW_DEGENERATE=1 in the environment otherwise)
SCHEMA_GROUPS = {  # config block -> (stage command, flag groups of the schema it accepts)
    "finetune": ("finetune", ("finetune", "train", "data")),
    "prune": ("prune", ("prune", "train", "data")),
    "factorize": ("factorize", ("factorize", "data")),
    "retrain": ("retrain", ("retrain", "train", "data")),
}


@pytest.mark.parametrize("block", sorted(SCHEMA_GROUPS))
def test_schema_and_cli_flags_agree(block):
    """Every stage setting the schema accepts is a flag of the stage, and every flag is configurable."""
    from lpaf.cli import build_parser

    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    stage, groups = SCHEMA_GROUPS[block]
    keys = {k for g in groups for k in schema["x-flag-groups"][g]}
    parser = build_parser(stage)
    sub = next(a for a in parser._actions if a.dest == "stage").choices[stage]
    flags = {a.dest for a in sub._actions if a.option_strings and a.dest != "help"}
    # `start` is not a flag: it chooses the prune job's --model / --teacher (workflow/rules/common.smk)
    assert keys - flags - {"start"} == set(), f"schema keys that `lpaf {stage}` does not accept"
    assert flags - keys - WORKFLOW_OWNED_FLAGS == set(), f"`lpaf {stage}` flags the config cannot set"


# --------------------------------------------------------------------------------------------
# incremental reruns (with the fake lpaf)
# --------------------------------------------------------------------------------------------

def test_fake_run_builds_table_and_figures_then_nothing_to_do(fake_work):
    work, fake_env = fake_work
    smoke = work / "results" / "smoke"  # the experiment's own outputs: config/smoke.yaml -> results/smoke/
    table = pd.read_csv(smoke / "table.csv")
    assert len(table) == 4 * 9  # 4 tasks x 9 rows, one density
    assert set(table["method"]) == {"dense", "movement", "magnitude", "svd", "fwsvd", "magnitude+svd", "lpaf",
                                    "lpaf-no-sa-svd", "lpaf-no-mixed-rank"}
    for fig in ("mrpc_metric", "sst2_metric", "stsb_metric", "squad_metric", "mrpc_rank", "speedup", "ablation"):
        assert (smoke / "figures" / f"{fig}.png").stat().st_size > 1000
        assert (smoke / "figures" / f"{fig}.pdf").read_bytes()[:5] == b"%PDF-"  # the paper's copy
    assert "\\toprule" in (smoke / "table.tex").read_text()
    again = snakemake(work, "-n", env=fake_env)
    assert "Nothing to be done" in again.stdout + again.stderr, again.stdout[-2000:]


def test_adding_a_density_adds_only_the_new_jobs(fake_work):
    work, fake_env = fake_work
    res = snakemake(work, "-n", "--config", "densities=[0.5, 0.25]", env=fake_env)
    assert res.returncode == 0, res.stderr[-2000:]
    counts = job_counts(res.stdout)
    assert counts == {"prune": 4 * 2, "factorize": 4 * 5, "retrain": 4 * 6, "evaluate": 8, "rank_study": 2,
                      "timing": 1, "table": 1, "figure_metric": 4, "figure_rank": 1, "figure_speedup": 1,
                      "figure_ablation": 1, "all": 1}
    for job in planned_jobs(res.stdout):
        if job["rule"] in ("prune", "factorize", "retrain", "evaluate", "rank_study"):
            assert "-d0.25" in job["output"], job


def test_changing_one_retrain_setting_reruns_only_jobs_downstream_of_it(fake_work):
    work, fake_env = fake_work
    res = snakemake(work, "-n", "--config", "retrain={mixed-rank: {p0: 0.5}}", env=fake_env)
    assert res.returncode == 0, res.stderr[-2000:]
    # rows lpaf and lpaf - sa-svd use mixed-rank: 2 re-trainings per task, evaluated on mrpc only
    assert job_counts(res.stdout) == {"retrain": 2 * 4, "evaluate": 2, "timing": 1, "table": 1, "figure_metric": 4,
                                      "figure_rank": 1, "figure_speedup": 1, "figure_ablation": 1, "all": 1}
    retrains = [j["output"] for j in planned_jobs(res.stdout) if j["rule"] == "retrain"]
    assert all("/retrain-mixed-rank-" in o for o in retrains)
    # ... and the old artifacts stay (switching back costs nothing)
    back = snakemake(work, "-n", env=fake_env)
    assert "Nothing to be done" in back.stdout + back.stderr


def test_an_interrupted_job_is_redone_exactly(fake_work):
    work, fake_env = fake_work
    victim = next((work / "results").rglob("mrpc/**/prune-magnitude-*/fact-svd-*/metrics.json"))
    target = str(victim.relative_to(work))
    # the state before the job first ran: it and everything downstream of it missing
    shutil.rmtree(victim.parent)
    for stale in [work / "results" / "smoke" / "table.csv", *(work / "results" / "smoke" / "figures").glob("*.png")]:
        stale.unlink()
    killed = dict(fake_env, FAKE_LPAF_FAIL=str(victim.parent.relative_to(work)))
    res = snakemake(work, "--cores", "1", env=killed)  # the job dies, leaving a half-written directory
    assert res.returncode != 0 and not victim.exists() and (victim.parent / "model.safetensors").exists()
    res = snakemake(work, "-n", env=fake_env)
    # exactly the interrupted job and what depends on it
    assert job_counts(res.stdout) == {"factorize": 1, "retrain": 1, "evaluate": 1, "timing": 1, "table": 1,
                                      "figure_metric": 4, "figure_rank": 1, "figure_speedup": 1, "figure_ablation": 1,
                                      "all": 1}
    assert {j["output"] for j in planned_jobs(res.stdout) if j["rule"] == "factorize"} == {target}


# --------------------------------------------------------------------------------------------
# results per experiment (issue 31, point 3)
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("config, overrides, experiment", [
    ("smoke", [], "smoke"), ("smoke", ["name=trial"], "trial"), ("config", [], "default"), (None, [], "default")],
    ids=["config-file-stem", "name-key", "default-config", "no-configfile"])
def test_each_experiment_has_its_own_table_figures_and_timing(tmp_path, config, overrides, experiment):
    """The table, the figures and the timing of the experiment's models go under results/<experiment>/
    (`name:`, else the config file's stem; config/config.yaml is `default`); the artifacts stay under
    results/<model>/, shared by every experiment that plans them (same settings, same hash, same files)."""
    args = ["-n"] + (["--config", *overrides] if overrides else [])
    res = snakemake(tmp_path, *args, configfile=CONFIGS[config] if config else None)
    assert res.returncode == 0, res.stderr[-3000:]
    jobs = planned_jobs(res.stdout)
    table = next(j for j in jobs if j["rule"] == "table")
    assert f"results/{experiment}/table.csv" in table["output"].split(", "), table["output"]
    assert all(o.startswith(f"results/{experiment}/") for o in table["output"].split(", "))
    figures = [j for j in jobs if j["rule"].startswith("figure_")]
    assert figures and all(j["output"].startswith(f"results/{experiment}/figures/") for j in figures)
    assert [j["output"] for j in jobs if j["rule"] == "timing"] == [f"results/{experiment}/timing.json"]
    model = "smoke-bert" if config == "smoke" else "all-MiniLM-L6-v2"
    assert all(j["output"].startswith(f"results/{model}/") for j in jobs if j["rule"] in ("finetune", "evaluate"))


def test_the_report_refuses_an_experiment_without_a_table(tmp_path):
    report = tmp_path / "report.html"
    res = snakemake(tmp_path, "--report", str(report), "--config", "name=trial")
    err = res.stdout + res.stderr
    assert res.returncode == 2, err[-2000:]
    lines = [line for line in err.splitlines() if line.startswith("lpaf workflow:")]
    assert len(lines) == 1, err[-2000:]
    assert "experiment 'trial' has no table yet (results/trial/table.csv)" in lines[0]
    assert "Traceback" not in err and not report.exists()


def test_the_report_holds_only_this_experiments_table_and_figures(fake_work):
    """Another experiment's outputs in the same results/ stay out of this experiment's report."""
    work, fake_env = fake_work
    shutil.copytree(work / "results" / "smoke", work / "results" / "other")
    report = work / "results" / "smoke" / "report.html"
    res = snakemake(work, "--report", str(report), env=fake_env)
    assert res.returncode == 0, res.stderr[-3000:]
    html = report.read_text(encoding="utf-8", errors="replace")
    for name in ("table.csv", "table.md", "table.tex", "mrpc_metric.png", "speedup.png", "ablation.png"):
        assert name in html, name
    assert "results/smoke/" in html and "results/other/" not in html
    assert "Missing metadata" not in res.stdout + res.stderr


def test_an_experiment_name_from_a_file_name_it_cannot_use_says_to_set_name(tmp_path):
    dotted = tmp_path / "my.experiment.yaml"
    dotted.write_text(CONFIGS["smoke"].read_text())
    res = snakemake(tmp_path, "-n", configfile=dotted)
    assert res.returncode == 2 and "no job was started" in res.stderr, res.stderr[-2000:]
    assert "experiment name 'my.experiment' (the config file's name) is not allowed" in res.stderr
    assert "set `name:` in the config" in res.stderr
    assert snakemake(tmp_path, "-n", "--config", "name=mine", configfile=dotted).returncode == 0


# --------------------------------------------------------------------------------------------
# bad configs: stop before any job, one line per problem naming the key and what is accepted
# --------------------------------------------------------------------------------------------

BAD_OVERRIDES = [
    ("unknown task", ["tasks=[mrpc, mrcp]"], r"tasks\[1\] = 'mrcp' is not accepted; accepted values: cola, sst2"),
    ("unknown row", ["run_methods=[lpfa]"], r"run_methods names unknown method 'lpfa'; accepted values: dense,"),
    ("unknown pruner", ["prune={movement: {method: movment}}"],
     r"prune.movement.method = 'movment' is not accepted; accepted values: movement, magnitude"),
    ("density 0", ["densities=[0]"], r"densities\[0\] = 0 is out of range.*\(0, 1\]"),
    ("density 1.5", ["densities=[1.5]"], r"densities\[0\] = 1.5 is out of range.*\(0, 1\]"),
    ("density a", ["densities=[a]"], r"densities\[0\] = 'a' has the wrong type: expected number"),
    ("row density", ["methods={lpaf: {densities: [2]}}"], r"methods.lpaf.densities\[0\] = 2 is out of range"),
    ("missing stage", ["methods={lpaf: {factorize: sa-svdd}}"],
     r"methods.lpaf.factorize = 'sa-svdd' names no setting under 'factorize'; defined: svd, fwsvd, sa-svd"),
    ("retrain without factorize", ["methods={x: {prune: movement, retrain: plain}}"],
     r"methods.x: a retrain stage needs a factorize stage"),
    ("missing model path", ["smoke_assets=False", "model_path=/nonexistent/model"],
     r"model_path = '/nonexistent/model': no such model directory"),
    ("missing data dir", ["smoke_assets=False", "model_path=null", "data_dir=/nonexistent/data"],
     r"data_dir = '/nonexistent/data': no such directory"),
    ("unknown top-level key", ["sedes=[1]"], r"unknown key\(s\) 'sedes' at the top level; accepted keys: cluster, compute,"),
    ("unknown nested key", ["retrain={plain: {p_0: 1}}"],
     r"unknown key\(s\) 'p_0' under 'retrain.plain'; accepted keys: .*anneal_fraction"),
    ("wrong type", ["compute={train_threads: two}"], r"compute.train_threads = 'two' has the wrong type: expected integer"),
    ("seed type", ["seeds=[x]"], r"seeds\[0\] = 'x' has the wrong type: expected integer"),
    ("escaping model name", ["model_name=../../etc"], r"model_name = '../../etc' is not allowed"),
    ("escaping hub id", ["model=../../etc"], r"model = '../../etc' is not allowed"),
    ("escaping row name", ["methods={'../x': {}}"], r"'methods' has the name '../x', which is not allowed"),
    ("escaping setting name", ["prune={'a/b': {method: movement}}"], r"'prune' has the name 'a/b', which is not allowed"),
    ("escaping experiment name", ["name=../x"], r"name = '../x' is not allowed"),
    ("latency task", ["evaluate={tasks: [rte]}"], r"evaluate.tasks names 'rte', which is not in tasks"),
    ("precision on cpu", ["compute={precision: bf16}"], r"compute.precision = 'bf16' needs compute.device cuda"),
    ("row task", ["methods={svd: {factorize: svd, retrain: plain, tasks: [rte]}}"],
     r"methods.svd.tasks names 'rte', which is not in tasks"),
]


def test_a_row_can_run_on_a_task_subset(tmp_path):
    """methods.<row>.tasks plans that row on those tasks only (a sweep on the rank-study tasks)."""
    res = snakemake(tmp_path, "-n", "--config", "methods={dense: {}, svd: {factorize: svd, retrain: plain, "
                    "tasks: [mrpc]}}", "run_methods=[dense, svd]")
    assert res.returncode == 0, res.stderr[-3000:]
    retrains = [j for j in planned_jobs(res.stdout) if j["rule"] == "retrain"]
    assert retrains and all("/mrpc/" in j["output"] for j in retrains)


@pytest.mark.parametrize("name, overrides, message", BAD_OVERRIDES, ids=[c[0] for c in BAD_OVERRIDES])
def test_bad_config_stops_before_any_job(tmp_path, name, overrides, message):
    res = snakemake(tmp_path, "-n", "--config", *overrides)
    err = res.stdout + res.stderr
    assert res.returncode == 2, err[-2000:]
    assert "no job was started" in err
    assert re.search(message, err), err[-2000:]
    assert "Traceback" not in err
    assert not (tmp_path / "results").exists() and not (tmp_path / "resources").exists()


def test_bad_config_files(tmp_path):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("tasks: [mrpc\nseeds: 1\n")
    res = snakemake(tmp_path, "-n", configfile=bad_yaml)
    assert res.returncode != 0 and "not valid JSON or YAML" in res.stdout + res.stderr
    no_methods = write_config(tmp_path, methods={})
    res = snakemake(tmp_path, "-n", configfile=no_methods)
    assert res.returncode == 2 and "methods: {} should be non-empty" in res.stderr, res.stderr
    many = write_config(tmp_path, densities=[0, 2], tasks=["nope"], foo=1)
    res = snakemake(tmp_path, "-n", configfile=many)
    assert res.returncode == 2 and "(4 problem(s))" in res.stderr, res.stderr  # every problem at once
    assert not (tmp_path / "results").exists()


def test_a_target_escaping_the_results_directory_matches_no_rule(tmp_path):
    outside = tmp_path / "outside"
    for target in ("results/../../outside/metrics.json", "results/smoke-bert/mrpc/s0/../../../../outside/eval.json",
                   "results/smoke-bert/mrpc/s0/dense-x/../../../../../outside/rank.json"):
        res = snakemake(tmp_path / "work", "--cores", "1", target)
        assert res.returncode != 0
        assert "MissingRuleException" in res.stdout + res.stderr, res.stdout[-2000:]
    assert not outside.exists() and not (tmp_path / "work" / "results").exists()


# --------------------------------------------------------------------------------------------
# the real smoke run (real stages, tiny model) and the same through SLURM: slow
# --------------------------------------------------------------------------------------------

TIMING_COLUMNS = ["latency_ms", "dense_latency_ms", "speedup_mean", "speedup_std", "speedup_measured"]


@pytest.fixture(scope="module")
def smoke_local(tmp_path_factory):
    """config/smoke.yaml run for real, locally, on 2 cores: the working directory."""
    work = tmp_path_factory.mktemp("smoke") / "work"
    res = snakemake(work, "--cores", "2", timeout=5400)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    return work


@pytest.mark.slow
@pytest.mark.timeout(7200)
def test_smoke_config_runs_end_to_end(smoke_local):
    work = smoke_local
    smoke = work / "results" / "smoke"  # the experiment's table, figures, timing and report
    table = pd.read_csv(smoke / "table.csv")
    assert len(table) == 4 * 9
    assert table["headline_mean"].notna().all()
    assert (table.loc[table["method"] == "dense", "retained_percent"].round(1) == 100.0).all()
    assert (table.loc[table["method"] != "dense", "retained_percent"] <= 50.5).all()
    assert table["speedup_mean"].notna().all()
    # the speed-up and device columns come from the one timing job (every mrpc model side by side)
    timing = json.loads((smoke / "timing.json").read_text())
    assert set(table["device"]) == {timing["device"]} and timing["device"].startswith("cpu: ")
    runs = pd.read_csv(smoke / "runs.csv")
    timed = runs[runs["task"] == "mrpc"]
    assert len(timed) == 9 and len(timing["latency_ms"]) == 9  # dense + 8 compressed models of mrpc
    for _, run in timed.iterrows():
        model_dir = f"results/smoke-bert/mrpc/s{run['seed']}/{run['chain']}"
        assert run["latency_ms"] == pytest.approx(timing["latency_ms"][model_dir]["median_ms"], rel=1e-5)
    # every compute job leaves Snakemake's benchmark record (whole-job wall s, peak RSS) beside its log
    benchmarks = {}
    for path in (work / "logs").rglob("*.benchmark.tsv"):
        with open(path) as f:
            benchmarks[path] = next(csv.DictReader(f, delimiter="\t"))
    assert {p.name.split(".")[0] for p in benchmarks} == {"finetune", "prune", "factorize", "retrain", "evaluate",
                                                          "rank_study", "timing"}
    assert all(float(b["s"]) > 0 and float(b["max_rss"]) > 0 for b in benchmarks.values())
    assert sum(p.name == "evaluate.benchmark.tsv" for p in benchmarks) == len(timed)  # evaluate.tasks: mrpc
    evals = [json.loads(p.read_text()) for p in (work / "results").rglob("eval.json")]
    assert evals and not any("latency_ms" in e or e["args"].get("latency_batches") for e in evals)  # timing job only
    md_rows = [line for line in (smoke / "table.md").read_text().splitlines() if line.startswith("| ")]
    assert len(md_rows) == 2 * (1 + 9)  # end of training and best dev: header + one line per (method, density)
    tex = (smoke / "table.tex").read_text()
    assert tex.count("\\begin{tabular}") == 2 and "\\toprule" in tex
    names = ["mrpc_metric", "sst2_metric", "stsb_metric", "squad_metric", "mrpc_rank", "speedup", "ablation"]
    for ext in ("png", "pdf"):
        figures = sorted(p.name for p in (smoke / "figures").glob(f"*.{ext}"))
        assert figures == sorted(f"{n}.{ext}" for n in names)
    report = smoke / "report.html"
    res = snakemake(work, "--report", str(report), timeout=900)
    assert res.returncode == 0 and report.stat().st_size > 10_000, res.stderr[-3000:]
    html = report.read_text(encoding="utf-8", errors="replace")
    captions = {  # every file the report should hold -> a phrase of its caption (workflow/report/*.rst)
        "table.csv": "One row per (model, task, method, density)", "table.md": "The paper-style table in Markdown",
        "table.tex": "The same two tables as LaTeX", "mrpc_metric.png": "Headline dev metric of task mrpc",
        "sst2_metric.png": "Headline dev metric of task sst2", "squad_metric.png": "Headline dev metric of task squad",
        "stsb_metric.png": "Headline dev metric of task stsb", "mrpc_rank.png": "Rank study of task mrpc",
        "speedup.png": "Measured inference speed-up", "ablation.png": "The paper's ablation"}
    for name, phrase in captions.items():
        assert name in html, f"{name} is not in the report"
        assert phrase in html or phrase.replace("'", "&#x27;") in html or phrase.replace("'", "&#39;") in html, \
            f"the caption of {name} ({phrase!r}) is not in the report"
    again = snakemake(work, "-n")
    assert "Nothing to be done" in again.stdout + again.stderr


# --- a one-node SLURM cluster on localhost -----------------------------------------------------

SLURM_BINARIES = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scancel")
SLURM_CONF_MARKER = "# written by lpaf tests/test_workflow.py (local one-node test cluster)"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kill_pidfile(path: Path) -> None:
    import signal

    try:
        pid = int(path.read_text().strip())
        os.kill(pid, signal.SIGTERM)
    except (OSError, ValueError):
        pass


@pytest.fixture(scope="module")
def local_slurm(tmp_path_factory):
    """munged + slurmctld + slurmd for one node (this machine), without accounting; torn down after.

    The configuration goes to /etc/slurm/slurm.conf (and SLURM_CONF): the SLURM job-step executor
    strips SLURM_* variables before its inner `srun`, which then finds only the default path.
    """
    import socket

    missing = [b for b in SLURM_BINARIES if shutil.which(b) is None]
    if missing:
        pytest.skip(f"SLURM test needs slurm-wlm and munge installed (missing: {', '.join(missing)}); "
                    f"apt-get install -y slurmctld slurmd slurm-client munge")
    if os.geteuid() != 0:
        pytest.skip("SLURM test starts slurmd and munged, which need root")
    system_conf = Path("/etc/slurm/slurm.conf")
    if system_conf.exists() and SLURM_CONF_MARKER not in system_conf.read_text():
        pytest.skip(f"{system_conf} exists and is not this test's: not touching a real SLURM installation")
    d = tmp_path_factory.mktemp("slurm")
    for sub in ("state", "spool", "munge"):
        (d / sub).mkdir()
    key = d / "munge" / "munge.key"
    subprocess.run(["mungekey", "-c", "-k", str(key), "-f"], check=True, capture_output=True)
    key.chmod(0o400)
    socket_path = d / "munge" / "munge.socket"
    subprocess.run(["munged", "--force", f"--key-file={key}", f"--socket={socket_path}",
                    f"--pid-file={d / 'munge' / 'munged.pid'}", f"--log-file={d / 'munge' / 'munged.log'}",
                    f"--seed-file={d / 'munge' / 'munged.seed'}"], check=True, capture_output=True)
    node = socket.gethostname().split(".")[0]
    conf = textwrap.dedent(f"""\
        {SLURM_CONF_MARKER}
        ClusterName=lpaftest
        SlurmctldHost={node}(127.0.0.1)
        SlurmctldPort={_free_port()}
        SlurmdPort={_free_port()}
        AuthType=auth/munge
        AuthInfo=socket={socket_path}
        CredType=cred/munge
        SlurmUser=root
        SlurmdUser=root
        StateSaveLocation={d / 'state'}
        SlurmdSpoolDir={d / 'spool'}
        SlurmctldPidFile={d / 'slurmctld.pid'}
        SlurmdPidFile={d / 'slurmd.pid'}
        SlurmctldLogFile={d / 'slurmctld.log'}
        SlurmdLogFile={d / 'slurmd.log'}
        ProctrackType=proctrack/linuxproc
        TaskPlugin=task/none
        JobAcctGatherType=jobacct_gather/none
        AccountingStorageType=accounting_storage/none
        SelectType=select/cons_tres
        SelectTypeParameters=CR_CPU
        SchedulerType=sched/backfill
        SchedulerParameters=sched_interval=1
        MpiDefault=none
        ReturnToService=2
        SlurmdParameters=config_overrides
        NodeName={node} NodeAddr=127.0.0.1 CPUs={os.cpu_count() or 2} RealMemory=64000 State=UNKNOWN
        PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
        PartitionName=lpafcpu Nodes=ALL MaxTime=INFINITE State=UP
        """)
    conf_path = d / "slurm.conf"
    conf_path.write_text(conf)
    system_conf.parent.mkdir(parents=True, exist_ok=True)
    system_conf.write_text(conf)
    env = dict(os.environ, SLURM_CONF=str(conf_path))
    try:
        subprocess.run(["slurmctld", "-f", str(conf_path)], check=True, capture_output=True, env=env)
        subprocess.run(["slurmd", "-f", str(conf_path)], check=True, capture_output=True, env=env)
        deadline = time.time() + 60
        while time.time() < deadline:
            state = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, env=env).stdout
            if state.strip() in ("idle", "mix", "alloc"):
                break
            time.sleep(1)
        else:
            pytest.fail(f"local SLURM did not come up (sinfo: {state!r}); see {d}/slurmctld.log, {d}/slurmd.log")
        yield env
    finally:
        subprocess.run(["scancel", "--user", "root"], capture_output=True, env=env)
        for pidfile in (d / "slurmd.pid", d / "slurmctld.pid", d / "munge" / "munged.pid"):
            _kill_pidfile(pidfile)
        if system_conf.exists() and SLURM_CONF_MARKER in system_conf.read_text():
            system_conf.unlink()


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.timeout(10800)
def test_slurm_profile_produces_the_same_table(local_slurm, smoke_local, tmp_path):
    """The smoke workflow through SLURM gives the local run's rows. MRPC's dense and lpaf rows only: that
    chain has every rule kind (finetune, prune, factorize, retrain, evaluate, rank_study, timing), and the
    other tasks and rows would only repeat them at ~10 s of submission and polling per job (CI time)."""
    work = tmp_path / "slurm"
    rows = ["dense", "lpaf"]
    only_mrpc = ("--config", "tasks=[mrpc]", f"run_methods=[{', '.join(rows)}]")
    res = snakemake(work, "--profile", str(REPO / "profiles" / "slurm"), *only_mrpc,
                    # a cluster without accounting: poll squeue, submit without -A
                    "--slurm-status-command", "squeue", "--slurm-no-account",
                    "--slurm-init-seconds-before-status-checks", "2",
                    env=local_slurm, timeout=10000)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-5000:]
    counts = job_counts(out)
    local_rules = {"smoke_assets", "table", "figure_metric", "figure_rank", "figure_speedup", "figure_ablation", "all"}
    assert {"finetune", "prune", "factorize", "retrain", "evaluate", "rank_study", "timing"} <= set(counts)
    submitted = re.findall(r"has been submitted with SLURM jobid (\d+)", out)
    assert len(submitted) == sum(n for rule, n in counts.items() if rule not in local_rules | {"total"}) >= 7
    assert not re.search(r"^localrule (finetune|prune|factorize|retrain|evaluate|rank_study|timing):", out, re.M)
    local = pd.read_csv(smoke_local / "results" / "smoke" / "table.csv").drop(columns=TIMING_COLUMNS)
    local = local[(local["task"] == "mrpc") & local["method"].isin(rows)].reset_index(drop=True)
    slurm = pd.read_csv(work / "results" / "smoke" / "table.csv").drop(columns=TIMING_COLUMNS)
    assert len(local) == len(slurm) == 2
    other_tasks_metrics = [c for c in local.columns if c not in slurm.columns]  # e.g. dev_exact_match: all NaN
    assert other_tasks_metrics and local[other_tasks_metrics].isna().all().all()
    pd.testing.assert_frame_equal(local[slurm.columns], slurm, check_exact=False, rtol=1e-6, atol=1e-9)
    again = snakemake(work, "-n", "--profile", str(REPO / "profiles" / "slurm"), *only_mrpc, env=local_slurm)
    assert "Nothing to be done" in again.stdout + again.stderr


def _slurm_jobs(env: dict) -> list[dict[str, str]]:
    """Every job slurmctld still remembers (finished ones for MinJobAge, 300 s), as key=value dicts."""
    out = subprocess.run(["scontrol", "show", "job", "-o"], capture_output=True, text=True, env=env).stdout
    return [dict(kv.split("=", 1) for kv in line.split() if "=" in kv) for line in out.splitlines() if line.strip()]


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_slurm_jobs_get_config_resources_and_checkpoint_before_the_time_limit(local_slurm, tmp_path):
    """On a real SLURM: jobs ask for the rule's threads, the config's memory, time limit and partition;
    a training job warned `signal_before_end_s` before its 1-minute limit checkpoints and exits 75, the
    retry gets a longer limit (and more memory) and resumes from the checkpoint."""
    # a calibration that prices every job at 30 s (+ 1e-6 s per step): limits of 1 min, 2 min on the retry
    calibration = tmp_path / "calibration.json"
    calibration.write_text(json.dumps({"device": "cpu", "max_length": 64, "process_start_s": 0, "stages": {
        "finetune": {"fixed_s": 30, "step_s": 1e-6}, "evaluate": {"fixed_s": 30, "example_s": 0},
        "time-models": {"fixed_s": 30, "forward_s": 0}}}))
    cfg = write_config(
        tmp_path, tasks=["mrpc"], methods={"dense": {}}, rank_study={"enabled": False},
        compute={"device": "cpu", "train_threads": 2, "eval_threads": 1},
        finetune={"max_steps": 80, "save_steps": 20, "logging_steps": 10},
        cluster={"cpu": {"partition": "lpafcpu"}, "calibration": [str(calibration)], "runtime_safety": 1,
                 "signal_before_end_s": 50,  # capped at half the limit: 30 s
                 "min_runtime_min": 1, "mem_mb": {"finetune": 1500, "evaluate": 1000, "timing": 1000},
                 "mem_mb_per_100k_examples": 0, "mem_mb_per_timed_model": 0})
    work = tmp_path / "work"
    res = snakemake(work, "--profile", str(REPO / "profiles" / "slurm"), "--slurm-status-command", "squeue",
                    "--slurm-no-account", "--slurm-init-seconds-before-status-checks", "2",
                    # every step >= 0.5 s: 80 steps outlast the first attempt's ~20 s on any machine
                    configfile=cfg, env=dict(local_slurm, LPAF_FAULT_STEP_SLEEP_S="0.5"), timeout=3000)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-5000:]
    metrics = json.loads(next((work / "results").rglob("mrpc/s0/dense-*/metrics.json")).read_text())
    assert metrics["train"]["train_steps"] == 80
    assert metrics["train"]["resumed_from_step"] is not None  # the warned attempt left a checkpoint
    jobs = {}
    for job in _slurm_jobs(local_slurm):
        if job.get("WorkDir") == str(work):  # this test's jobs only (the cluster is shared by the module)
            jobs.setdefault(job.get("Comment", "").split("_wildcards")[0], []).append(job)
    finetune = sorted(jobs["rule_finetune"], key=lambda j: int(j["JobId"]))
    assert len(finetune) >= 2, [j.get("JobState") for j in finetune]  # warned, then retried
    assert [j["TimeLimit"] for j in finetune[:2]] == ["00:01:00", "00:02:00"]  # runtime grows with attempt
    for job in finetune:
        assert job["NumCPUs"] == "2" and job["Partition"] == "lpafcpu"
    assert finetune[0]["MinMemoryNode"] == "1500M" and finetune[1]["MinMemoryNode"] == "2250M"
    for rule in ("rule_evaluate", "rule_timing"):
        assert jobs[rule] and all(j["NumCPUs"] == "1" and j["Partition"] == "lpafcpu" and j["MinMemoryNode"] == "1000M"
                                  for j in jobs[rule]), jobs.get(rule)


@pytest.mark.slurm
@pytest.mark.timeout(900)
def test_slurm_gpu_jobs_pass_gpus_model_partition_and_qos_to_sbatch(local_slurm, tmp_path):
    """This test cluster has no GPUs, so a fake `sbatch` records what the plugin submits for a GPU job
    (DDP over 2 GPUs) from the config's cluster.gpu settings."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "sbatch_calls.txt"
    (bin_dir / "sbatch").write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\necho 424242\n")
    (bin_dir / "sbatch").chmod(0o755)
    cfg = write_config(tmp_path, tasks=["mrpc"], methods={"dense": {}}, rank_study={"enabled": False},
                       compute={"device": "cuda", "gpus": 2, "train_threads": 2, "eval_threads": 1},
                       cluster={"gpu": {"partition": "lpafgpu", "qos": "high", "gpu_model": "a100"},
                                "cpu": {"partition": "lpafcpu"}})
    env = dict(local_slurm, PATH=f"{bin_dir}{os.pathsep}{local_slurm['PATH']}")
    # the fake job never finishes: stop snakemake once it is submitted
    submitted_in_time, output = snakemake_until(
        lambda: calls.exists() and "rule_finetune" in calls.read_text() and calls.read_text().endswith("\n"),
        tmp_path / "work", "--profile", str(REPO / "profiles" / "slurm"), "--slurm-no-account",
        "--slurm-status-command", "squeue", configfile=cfg, env=env, timeout=120)
    assert submitted_in_time, output
    submitted = calls.read_text()
    assert "rule_finetune" in submitted, submitted
    assert "-p lpafgpu" in submitted and "--qos=high" in submitted and "--cpus-per-task=2" in submitted
    assert re.search(r"--gpus[= ]a100:2", submitted), submitted


def test_config_reference_is_current():
    """config/README.md is generated from the schema; a schema change without regenerating it fails."""
    res = subprocess.run([sys.executable, str(REPO / "workflow" / "scripts" / "config_reference.py"), "--check"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    text = (REPO / "config" / "README.md").read_text()
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    for key in schema["properties"]:
        assert f"| `{key}` |" in text, key
    for group in schema["x-flag-groups"].values():
        for key in group:
            assert f"| `{key}` |" in text, key


def test_mini_qa_config_plans_squad_through_the_chain(tmp_path):
    """config/mini_qa.yaml: SQuAD dense -> PLATON (and magnitude) prune -> factorize -> retrain for the claim rows, on a
    by-article split made by `lpaf split-squad` (here of a synthetic SQuAD file)."""
    from conftest import write_squad_json
    from lpaf.cli import main

    split = tmp_path / "split"
    assert main(["split-squad", "--source", str(write_squad_json(tmp_path / "dev.json", n_articles=5)),
                 "--out", str(split), "--eval-articles", "2"]) == 0
    res = snakemake(tmp_path / "work", "-n", "--config", f"task_settings={{squad: {{data_dir: {split}}}}}",
                    configfile=CONFIGS.get("mini_qa", REPO / "config" / "mini_qa.yaml"))
    assert res.returncode == 0, res.stderr[-3000:]
    counts = job_counts(res.stdout)
    # one teacher; PLATON and magnitude (the C2 rank comparison) at 2 densities;
    # svd, fwsvd, lpaf, lpaf - sa-svd, lpaf - mixed-rank re-trained at 2 densities
    assert counts["finetune"] == 1 and counts["prune"] == 4 and counts["retrain"] == 10
    jobs = planned_jobs(res.stdout)
    assert all("--max-length 192" in j["shell"] and "--doc-stride 64" in j["shell"]
               for j in jobs if j["rule"] in ("finetune", "prune", "retrain"))
    # CONFIG=config/mini_qa.yaml benchmarks/mini_reproduction.sh also passes the GLUE data_dir: the
    # same jobs (so its seeds pair with those run without it)
    glue = tmp_path / "glue"
    glue.mkdir()
    res = snakemake(tmp_path / "work", "-n", "--config", f"task_settings={{squad: {{data_dir: {split}}}}}",
                    f"data_dir={glue}", configfile=CONFIGS.get("mini_qa", REPO / "config" / "mini_qa.yaml"))
    assert res.returncode == 0, res.stderr[-3000:]
    assert sorted(j["shell"] for j in planned_jobs(res.stdout)) == sorted(j["shell"] for j in jobs)


def test_a_prune_setting_chooses_the_start_and_the_hash_tells_them_apart(tmp_path):
    """start: pretrained prunes the pre-trained model and distils from the teacher (fine-pruning);
    start: finetuned (said or not) prunes the teacher itself. Different artifacts, told apart by the hash."""
    base = yaml.safe_load(CONFIGS["smoke"].read_text())
    platon = {"method": "platon", "platon_mode": "reference", "scope": "global", "distill_alpha": 0.9}
    prune = base["prune"] | {"fine": platon | {"start": "pretrained"}, "ft": platon | {"start": "finetuned"},
                             "ft-implicit": dict(platon)}
    methods = {"dense": {}, "fine": {"prune": "fine"}, "ft": {"prune": "ft"}, "ft-implicit": {"prune": "ft-implicit"}}
    cfg = write_config(tmp_path, prune=prune, methods=methods, tasks=["mrpc"], rank_study={"enabled": False})
    res = snakemake(tmp_path / "work", "-n", "-p", configfile=cfg)
    assert res.returncode == 0, res.stderr[-3000:]
    prunes = {re.search(r"/(prune-[\w.+-]+)/metrics.json", j["output"]).group(1): j["shell"]
              for j in planned_jobs(res.stdout) if j["rule"] == "prune"}
    fine = [t for t in prunes if t.startswith("prune-fine-")]
    ft = [t for t in prunes if t.startswith("prune-ft-")]
    assert len(fine) == 1 and ft, prunes
    teacher_dir = re.search(r"--model (\S+/dense-\w+) ", prunes[ft[0]]).group(1)
    # fine-pruning: the pre-trained model is the student, the teacher distils
    assert "--model resources/smoke/model " in prunes[fine[0]]
    assert f"--teacher {teacher_dir} " in prunes[fine[0]]
    assert "--platon-mode reference" in prunes[fine[0]] and "--start" not in prunes[fine[0]]
    # fine-tuned start: the teacher is the student (self-copy teacher), no --teacher
    assert "--teacher" not in prunes[ft[0]]
    # the hashes: start: finetuned said explicitly is the default (one artifact), pretrained differs
    hashes = {t.rsplit("-d", 1)[0].rsplit("-", 1)[1] for t in prunes}
    ft_hash = ft[0].rsplit("-d", 1)[0].rsplit("-", 1)[1]
    implicit = [t for t in prunes if t.startswith("prune-ft-implicit-")]
    assert implicit and implicit[0].rsplit("-d", 1)[0].rsplit("-", 1)[1] == ft_hash
    assert fine[0].rsplit("-d", 1)[0].rsplit("-", 1)[1] != ft_hash and len(hashes) == 2


# --------------------------------------------------------------------------------------------
# a run that talks, and failures that stop the chain (issue 31, points 1 and 2)
# --------------------------------------------------------------------------------------------

def test_the_local_profile_shows_the_log_of_a_failed_job():
    profile = yaml.safe_load((REPO / "profiles" / "default" / "config.yaml").read_text())
    assert profile["show-failed-logs"] is True


def test_an_offline_fetch_failure_says_how_to_run_offline(tmp_path):
    """No network (HF_HUB_OFFLINE): the fetch jobs fail fast; the terminal shows lpaf's one-line cause
    (the job's log) and the offline route: --config model_path=... data_dir=..."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    res = snakemake(tmp_path, "--cores", "1", "--config", "tasks=[mrpc]", configfile=CONFIGS["config"], env=env)
    out = res.stdout + res.stderr
    assert res.returncode != 0
    for cause in ("could not download 'sentence-transformers/all-MiniLM-L6-v2' from the hub",
                  "could not load mrpc from the Hugging Face hub"):
        line = next((line for line in out.splitlines() if line.startswith(f"lpaf: error: {cause}")), "")
        assert "--config model_path=DIR data_dir=DATA" in line, out[-3000:]


def test_only_the_smoke_config_accepts_degenerate_teachers(tmp_path):
    """Smoke teachers (a random 2-layer model, a few steps on synthetic data) predict one class: the smoke
    run accepts them; a real config never does."""
    smoke = planned_jobs(snakemake(tmp_path / "a", "-n", "-p").stdout)
    real = planned_jobs(snakemake(tmp_path / "b", "-n", "-p", configfile=CONFIGS["config"]).stdout)
    assert smoke and all("--allow-degenerate" in j["shell"] for j in smoke if j["rule"] == "finetune")
    assert real and all("--allow-degenerate" not in j["shell"] for j in real if j["rule"] == "finetune")


def test_a_degenerate_teacher_stops_its_chain(tmp_path):
    """Real lpaf, real Snakemake: a teacher that predicts one class for every dev example fails its job
    (exit 3); nothing is built on it, its metrics.json never appears, the model waits beside it."""
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import make_tiny_model, write_glue_task

    model = make_tiny_model(tmp_path / "model", constant_class=1)
    data = write_glue_task(tmp_path / "data", "mrpc")
    env = {k: v for k, v in os.environ.items() if k != "LPAF_ALLOW_DEGENERATE"}
    work = tmp_path / "work"
    res = snakemake(work, "--cores", "1", "--config", "smoke_assets=False", f"model_path={model}",
                    f"data_dir={data}", "tasks=[mrpc]", "run_methods=[dense, movement]", env=env)
    out = res.stdout + res.stderr
    assert res.returncode != 0
    teachers = [p for p in (work / "results").rglob("dense-*") if p.is_dir()]  # results/[experiment/]smoke-bert/..
    assert [t.name.endswith(".degenerate") for t in teachers] == [True], teachers
    assert (teachers[0] / "metrics.json").is_file()  # kept aside for inspection
    assert "lpaf: error: degenerate teacher: class 1 for 100%" in out and "exit status 3" in out, out[-3000:]
    assert not list(work.glob("logs/**/prune*.log")) and not list(work.rglob("prune-*/metrics.json"))
