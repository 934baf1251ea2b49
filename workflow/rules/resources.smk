# What each job asks a cluster for, from the config's `cluster` section: CPUs = the threads of the job,
# GPUs only when the stage runs on CUDA, partition / account / QoS / GPU model separately for CPU and
# GPU jobs, and a time limit and memory that scale with the task's training-set size and the
# stage's optimizer steps; a retried job (attempt 2, 3, ...) gets proportionally more time and memory.
#
#   runtime_min = clamp(ceil((fixed_min + steps * step_seconds / 60) * runtime_safety * attempt))
#   mem_mb      = ceil((mem_mb + mem_mb_per_100k_examples * examples / 1e5) * (1 + (attempt - 1) / 2))
#
# steps: epochs x ceil(examples / batch) (or max_steps) of the job's own resolved settings; mixed-rank
# re-training with a matched factor budget runs its extra steps too (lpaf.mixed_rank).

import functools
import math

try:
    from lpaf.plan import TRAIN_EXAMPLES
except ImportError:  # Snakemake running outside lpaf's environment (conda deployment): this checkout's
    sys.path.insert(0, REPO_ROOT)
    from lpaf.plan import TRAIN_EXAMPLES
from lpaf.smoke import SPLIT_SIZES as SMOKE_SPLIT_SIZES

# lpaf's own defaults where a config leaves a key unset (lpaf/training.py TrainArgs)
STAGE_DEFAULTS = {"epochs": 3.0, "batch_size": 32, "max_steps": -1, "warmup_ratio": 0.1}
GPU_CAPABLE_RULES = ("finetune", "prune", "factorize", "retrain", "evaluate", "timing")


def train_examples(task, flags):
    """Training examples one epoch reads: the official split size (the synthetic smoke data's with
    smoke_assets), clamped by max_train_samples. QA counts questions."""
    n = SMOKE_SPLIT_SIZES["train"] if config["smoke_assets"] else TRAIN_EXAMPLES.get(task, max(TRAIN_EXAMPLES.values()))
    if flags.get("max_train_samples"):
        n = min(n, int(flags["max_train_samples"]))
    return n


def optimizer_steps(family, task, flags):
    flags = STAGE_DEFAULTS | flags
    if int(flags["max_steps"]) > 0:
        steps = int(flags["max_steps"])
    else:
        steps = math.ceil(float(flags["epochs"]) * math.ceil(train_examples(task, flags) / int(flags["batch_size"])))
    if family == "retrain" and flags.get("scheme") == "mixed-rank" and flags.get("factor_budget", "matched") == "matched":
        steps = _matched_steps(steps, float(flags.get("p0", 1.0)), float(flags.get("anneal_fraction", 0.5)),
                               flags.get("anneal", "linear"), float(flags["warmup_ratio"]))
    return steps


@functools.lru_cache(maxsize=None)
def _matched_steps(plain_steps, p0, anneal_fraction, anneal, warmup_ratio):
    from lpaf.mixed_rank import AnnealSchedule, matched_total_steps

    return matched_total_steps(plain_steps, AnnealSchedule(p0, anneal_fraction, anneal), warmup_ratio)


def job_flags(rule_name, wildcards):
    """The resolved flags of a stage job (or {} for rules without a training set)."""
    task = wildcards.get("task")
    if rule_name == "finetune":
        return PLAN.teacher[task][1]
    token = {"prune": "prune", "factorize": "fact", "retrain": "retrain"}.get(rule_name)
    if token is None:
        return {}
    return PLAN.stages[rule_name][(task, wildcards[token])][2]


def uses_gpu(rule_name):
    return rule_name in GPU_CAPABLE_RULES and config["compute"]["device"] == "cuda"


def runtime_min(rule_name):
    """Resource callable: the job's time limit in minutes, longer on each retry."""
    c = config["cluster"]

    def get(wildcards, attempt):
        flags = job_flags(rule_name, wildcards)
        minutes = float(c["fixed_min"].get(rule_name, 10))
        if rule_name in ("finetune", "prune", "retrain"):
            minutes += optimizer_steps(rule_name, wildcards.task, flags) * float(c["step_seconds"][rule_name]) / 60
        minutes = math.ceil(minutes * float(c["runtime_safety"]) * attempt)
        return int(min(max(minutes, c["min_runtime_min"]), c["max_runtime_min"]))

    return get


def mem_mb(rule_name):
    """Resource callable: the job's memory, from the stage's base and the task's training-set size."""
    c = config["cluster"]

    def get(wildcards, attempt):
        base = float(c["mem_mb"].get(rule_name, 4000))
        if rule_name in ("finetune", "prune", "retrain", "factorize") and "task" in wildcards.keys():
            base += float(c["mem_mb_per_100k_examples"]) * train_examples(wildcards.task, job_flags(rule_name, wildcards)) / 1e5
        if rule_name == "timing":  # every timed model is held at once
            base += float(c["mem_mb_per_timed_model"]) * len(timing_inputs(wildcards))
        return int(math.ceil(base * (1 + (attempt - 1) / 2)))

    return get


def cluster_resources(rule_name, threads_key):
    """The `resources:` of a job (unpack with **): CPUs, GPUs, time, memory, where it runs."""
    c = config["cluster"]
    where = c["gpu"] if uses_gpu(rule_name) else c["cpu"]
    out = {"cpus_per_task": config["compute"][threads_key], "runtime": runtime_min(rule_name), "mem_mb": mem_mb(rule_name)}
    if uses_gpu(rule_name):
        # training runs DDP over compute.gpus (torchrun); factorize, evaluate and timing are one process
        out["gpu"] = config["compute"]["gpus"] if rule_name in ("finetune", "prune", "retrain") else 1
        if where.get("gpu_model"):
            out["gpu_model"] = where["gpu_model"]
    for key, resource in (("partition", "slurm_partition"), ("account", "slurm_account"), ("qos", "qos")):
        if where.get(key):
            out[resource] = where[key]
    return out


def signal_before_end_s(wildcards, resources):
    """Params function: seconds before its SLURM time limit at which a training stage checkpoints and
    exits 75 (resource signal_before_end_s, set by profiles/slurm; 0 = off, as in local runs). At most
    half the job's time limit, so a short job is never warned the moment it starts."""
    margin = int(resources.get("signal_before_end_s", 0) or 0)
    runtime_min = resources.get("runtime", 0) or 0
    return min(margin, int(runtime_min) * 30) if runtime_min else margin
