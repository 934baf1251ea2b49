# What each job asks a cluster for, from the config's `cluster` section: CPUs = the threads of the job,
# GPUs only when the stage runs on CUDA, partition / account / QoS / GPU model separately for CPU and
# GPU jobs, a time limit from `lpaf plan`'s estimate of the same job, and memory that scales with the
# task's training-set size; a retried job (attempt 2, 3, ...) gets proportionally more time and memory.
#
#   runtime_min = clamp(ceil(estimate_min * runtime_safety * attempt), min_runtime_min, max_runtime_min)
#   mem_mb      = ceil((peak_mb * mem_headroom + mem_mb_per_100k_examples * examples / 1e5) * (1 + (attempt - 1) / 2))
#
# estimate: lpaf.plan prices the job exactly as `lpaf plan` does - the same description of the job
# (lpaf.plan.describe_job: steps = epochs x ceil(examples / batch) or max_steps, mixed-rank's matched
# extra steps, Fisher batches, dev examples, timed forward passes) and the same calibration choice
# (cluster.calibration: the one of the job's device at its max length, else the nearest length scaled
# by the length ratio). A dry run warns about every job whose attempt would need more than
# cluster.max_runtime_min (your partition's MaxTime): capped there, that attempt may time out.
# peak_mb: the rule's peak resident memory in a calibration run (cluster.memory, from its Snakemake
# benchmark files), its model-dependent part scaled by the parameter ratio to the config's model.

import functools
import json
import math
import sys

from snakemake.exceptions import WorkflowError

try:
    from lpaf import plan as lpaf_plan
except ImportError:  # Snakemake running outside lpaf's environment (conda deployment): this checkout's
    sys.path.insert(0, REPO_ROOT)
    from lpaf import plan as lpaf_plan
from lpaf.errors import LpafError
from lpaf.smoke import SPLIT_SIZES as SMOKE_SPLIT_SIZES

# Rules that hold a GPU when compute.device is cuda: the training stages (nearly all of the campaign's
# compute) and the timing job (the table's GPU latency). Factorization and evaluation run on CPU nodes:
# SVD and sparsity-aware SVD are CPU work, and FWSVD's / fisher-sa's Fisher batches and a 256-example
# evaluation cost minutes of CPU (benchmarks/results/factorize_placement.json), less than a GPU
# allocation's queue wait and the GPU-hours their time limits would reserve (workflow/README.md).
GPU_RULES = ("finetune", "prune", "retrain", "timing")
STAGE_OF_RULE = {
    "finetune": "finetune",
    "prune": "prune",
    "factorize": "factorize",
    "retrain": "retrain",
    "evaluate": "evaluate",
    "rank_study": "rank-study",
    "timing": "time-models",
}


def calibration_file(path):
    """A cluster.calibration entry: as given where it exists (absolute, or relative to the working
    directory), else relative to this repository (the committed calibrations under config/calibration)."""
    for candidate in (path, os.path.join(REPO_ROOT, path)):
        if os.path.isfile(candidate):
            return candidate
    return None


@functools.lru_cache(maxsize=None)
def calibrations():
    """The calibrations of cluster.calibration, loaded once (when the first job is sized: this file is
    read before the config's defaults are filled in)."""
    problems, loaded = [], []
    for path in config["cluster"]["calibration"]:
        found = calibration_file(path)
        if found is None:
            problems.append(
                f"cluster.calibration: {path} not found (relative paths: the working directory, "
                f"then {REPO_ROOT}); write one with `lpaf calibrate`"
            )
            continue
        try:
            loaded.append(lpaf_plan.load_calibration(found))
        except LpafError as e:
            problems.append(f"cluster.calibration: {e}")
    if problems:
        stop_with_config_errors(problems)
    return tuple(loaded)


def train_examples(task):
    """Training examples one epoch reads before max_train_samples: the official split size (the
    synthetic smoke data's with smoke_assets). QA counts questions. Local data with fewer examples
    (a subset, a split) only makes the estimate, and the time limit, longer than `lpaf plan`'s."""
    if config["smoke_assets"]:
        return SMOKE_SPLIT_SIZES["train"]
    return lpaf_plan.TRAIN_EXAMPLES.get(task, max(lpaf_plan.TRAIN_EXAMPLES.values()))


def job_flags(rule_name, wildcards):
    """The resolved settings of a stage job (what its command's flags are made of)."""
    task = wildcards.get("task")
    if rule_name == "finetune":
        return PLAN.teacher[task][1]
    if rule_name == "evaluate":
        data = _merged(config["data"], config["task_settings"].get(task, {}).get("data"))
        ev = config["evaluate"]["max_eval_samples"]
        return {
            "max_length": data.get("max_length"),
            "max_eval_samples": ev if ev is not None else data.get("max_eval_samples"),
        }
    if rule_name == "timing":
        return {"rounds": config["evaluate"]["latency_batches"], "models": timing_inputs(wildcards)}
    token = {"prune": "prune", "factorize": "fact", "retrain": "retrain"}.get(rule_name)
    if token is None:
        return {}
    return PLAN.stages[rule_name][(task, wildcards[token])][2]


def uses_gpu(rule_name):
    return rule_name in GPU_RULES and config["compute"]["device"] == "cuda"


def placed_run_flags(rule_name):
    """run_flags for where the job runs: a job placed on CPU nodes runs with --device cpu when the
    config says cuda (its job has no GPU); otherwise the config's device, precision and TF32."""
    if config["compute"]["device"] == "cuda" and not uses_gpu(rule_name):
        return to_flags({"device": "cpu"})
    return run_flags(training=rule_name in TRAINING_FAMILIES)


def cluster_run():
    """Whether jobs are submitted to a cluster (--jobs, as profiles/slurm sets: Snakemake then schedules
    by job count, not by cores) or this is one of those jobs (remote mode)."""
    return workflow.resource_settings.nodes is not None or workflow.remote_exec


def lift_thread_cap():
    """Threads = the job's CPUs, whatever the submitting node has. Snakemake caps a rule's threads at
    --cores, which profiles/default sets to all the cores of the machine it runs on: on a 2-core login
    node the submitting Snakemake would plan (and print, and `lpaf plan` read) OMP_NUM_THREADS=2 for a
    job that SLURM gives cpus_per_task = the rule's threads (8). Inside the job, Snakemake runs with
    --cores all of its own allocation, which caps threads at the CPUs the job really has: left alone."""
    if workflow.resource_settings.nodes is not None and not workflow.remote_exec:
        workflow.global_resources["_cores"] = sys.maxsize


lift_thread_cap()


def job_gpus(rule_name):
    """GPUs a job holds: compute.gpus for a training job on CUDA (DDP), one for the other GPU jobs."""
    if not uses_gpu(rule_name):
        return 0
    return config["compute"]["gpus"] if rule_name in TRAINING_FAMILIES else 1


def planned_job(rule_name, wildcards):
    """The job as `lpaf plan` describes it (lpaf.plan.PlannedJob)."""
    task = wildcards.get("task")
    return lpaf_plan.describe_job(
        rule_name,
        STAGE_OF_RULE[rule_name],
        task,
        job_flags(rule_name, wildcards),
        train_examples(task) if rule_name in TRAINING_FAMILIES else None,
        device="cuda" if uses_gpu(rule_name) else "cpu",
        gpus=max(1, job_gpus(rule_name)),
    )


def estimated_seconds(rule_name, wildcards):
    """`lpaf plan`'s estimate of the job's wall seconds, from cluster.calibration."""
    job = planned_job(rule_name, wildcards)
    seconds, _ = lpaf_plan.estimate_seconds(job, list(calibrations()))
    if seconds is None:
        raise WorkflowError(
            f"no calibration in cluster.calibration prices a {job.kind} job ({rule_name}); "
            f"add one that does (`lpaf calibrate` times every stage)"
        )
    return seconds


_CAP_WARNED = set()


def warn_beyond_cap(rule_name, wildcards, seconds):
    """On a dry run or a cluster run: say once per rule, task and attempt when an attempt of this job
    (the first, or a retry up to --retries) would need more than cluster.max_runtime_min."""
    if workflow.local_exec and not workflow.dryrun:
        return  # a local run has no time limits
    c = config["cluster"]
    retries = getattr(workflow.execution_settings, "retries", 0) or 0
    for attempt in range(1, retries + 2):
        limit, wanted = lpaf_plan.time_limit_min(
            seconds, float(c["runtime_safety"]), attempt, int(c["min_runtime_min"]), int(c["max_runtime_min"])
        )
        if wanted <= limit:
            continue
        key = (rule_name, wildcards.get("task"), attempt)
        if key not in _CAP_WARNED:
            _CAP_WARNED.add(key)
            setting = next((wildcards[k] for k in ("retrain", "fact", "prune", "teacher") if k in wildcards.keys()), "")
            print(
                f"lpaf: time limit above cluster.max_runtime_min: {rule_name} {wildcards.get('task') or ''} "
                f"({setting}) attempt {attempt} would need {wanted:,} min (plan {seconds / 60:,.0f} min x "
                f"runtime_safety {c['runtime_safety']} x {attempt}); it gets {limit:,} and may time out "
                f"(and likewise for the other jobs of this stage and task); set max_runtime_min to your "
                f"partition's MaxTime, or shorten the job",
                file=sys.stderr,
            )
        return


def runtime_min(rule_name):
    """Resource callable: the job's time limit in minutes, longer on each retry."""
    c = config["cluster"]

    def get(wildcards, attempt):
        seconds = estimated_seconds(rule_name, wildcards)
        if attempt == 1:
            warn_beyond_cap(rule_name, wildcards, seconds)
        limit, _ = lpaf_plan.time_limit_min(
            seconds, float(c["runtime_safety"]), attempt, int(c["min_runtime_min"]), int(c["max_runtime_min"])
        )
        return limit

    return get


@functools.lru_cache(maxsize=None)
def memory_calibration():
    """cluster.memory: peak memory per rule measured by a calibration run (lpaf.plan.memory_calibration)."""
    path = config["cluster"]["memory"]
    if not path:
        return None
    found = calibration_file(path)
    if found is None:
        stop_with_config_errors(
            [
                f"cluster.memory: {path} not found (relative paths: the working directory, then "
                f"{REPO_ROOT}); write one with benchmarks/memory_calibration.py"
            ]
        )
    with open(found, encoding="utf-8") as f:
        return json.load(f)


@functools.lru_cache(maxsize=None)
def model_parameters():
    """Parameters of the config's model: from its config.json where it is on disk already, else from
    lpaf's table of hub models; None when unknown (memory is then not scaled, with a warning)."""
    for directory in (config["model_path"], f"resources/models/{PLAN.model}"):
        if directory and os.path.isfile(os.path.join(directory, "config.json")):
            with open(os.path.join(directory, "config.json"), encoding="utf-8") as f:
                try:
                    return lpaf_plan.bert_parameters(json.load(f))
                except (KeyError, ValueError):
                    break
    known = lpaf_plan.KNOWN_MODEL_PARAMETERS.get(config["model"])
    if known is None and memory_calibration() is not None and not config["smoke_assets"]:
        print(
            f"lpaf: warning: parameters of {config['model']} unknown before it is fetched: memory requests are "
            f"cluster.memory's peaks unscaled (set cluster.mem_mb per rule, or fetch the model first)",
            file=sys.stderr,
        )
    return known


def mem_mb(rule_name):
    """Resource callable: the job's memory. A rule's peak from cluster.memory, scaled to the config's model
    and times mem_headroom (or cluster.mem_mb's value for the rule), plus the task's training-set term;
    the timing job holds every timed model at once. x (1 + (attempt - 1) / 2) on a retry."""
    c = config["cluster"]

    def get(wildcards, attempt):
        memory = memory_calibration()
        override = c["mem_mb"].get(rule_name)
        if rule_name == "timing":  # every timed model is held at once
            process = float(memory["process_mb"]) if memory else 0.0
            base = float(override if override is not None else process)
            base += float(c["mem_mb_per_timed_model"]) * len(timing_inputs(wildcards))
        elif override is not None:
            base = float(override)
        else:
            measured = lpaf_plan.scaled_memory_mb(rule_name, memory, model_parameters()) if memory else None
            base = measured * float(c["mem_headroom"]) if measured is not None else 4000.0
        if rule_name in ("finetune", "prune", "retrain", "factorize") and "task" in wildcards.keys():
            flags = job_flags(rule_name, wildcards)
            examples = train_examples(wildcards.task)
            if flags.get("max_train_samples"):
                examples = min(examples, int(flags["max_train_samples"]))
            base += float(c["mem_mb_per_100k_examples"]) * examples / 1e5
        return int(math.ceil(base * (1 + (attempt - 1) / 2)))

    return get


def cluster_resources(rule_name, threads_key):
    """The `resources:` of a job (unpack with **): CPUs, GPUs, time, memory, where it runs."""
    c = config["cluster"]
    if not _PARTITION_CHECKED:  # the first rule's resources: the config is validated by now
        _PARTITION_CHECKED.append(True)
        warn_about_default_partition()
    where = c["gpu"] if uses_gpu(rule_name) else c["cpu"]
    out = {
        "cpus_per_task": config["compute"][threads_key],
        "runtime": runtime_min(rule_name),
        "mem_mb": mem_mb(rule_name),
    }
    if uses_gpu(rule_name):
        # training runs DDP over compute.gpus (torchrun); factorize, evaluate and timing are one process
        out["gpu"] = job_gpus(rule_name)
        if where.get("gpu_model"):
            out["gpu_model"] = where["gpu_model"]
    for key, resource in (("partition", "slurm_partition"), ("account", "slurm_account"), ("qos", "qos")):
        if where.get(key):
            out[resource] = where[key]
    return out


_MARGIN_WARNED = []
_PARTITION_CHECKED = []


def signal_before_end_s(wildcards, resources):
    """Params function: seconds before its SLURM time limit at which a training stage checkpoints and
    exits 75 (cluster.signal_before_end_s on a cluster run; 0 = off, as in local runs). At most half the
    job's time limit, so a short job is never warned the moment it starts."""
    margin = int(config["cluster"]["signal_before_end_s"]) if cluster_run() else 0
    if cluster_run() and margin == 0 and not _MARGIN_WARNED:
        _MARGIN_WARNED.append(True)
        print(
            "lpaf: warning: cluster.signal_before_end_s is 0: a training job that reaches its time limit is "
            "killed without a checkpoint, and its retry starts from its last save_steps checkpoint",
            file=sys.stderr,
        )
    runtime_min = resources.get("runtime", 0) or 0
    return min(margin, int(runtime_min) * 30) if runtime_min else margin


def warn_about_default_partition():
    """--default-resources slurm_partition=P (the SLURM plugin's usual route) reaches every job that the
    config's cluster section does not place: CPU jobs too, when cluster.cpu.partition is unset."""
    defaults = workflow.resource_settings.default_resources or {}
    partition = defaults.get("slurm_partition") if hasattr(defaults, "get") else None
    partition = getattr(partition, "raw", partition)
    if partition and not config["cluster"]["cpu"].get("partition"):
        print(
            f"lpaf: warning: --default-resources slurm_partition={partition} also sends the CPU jobs (rank_study, "
            f"factorize, evaluate) there; set cluster.cpu.partition and cluster.gpu.partition in the config "
            f"instead (workflow/README.md)",
            file=sys.stderr,
        )
