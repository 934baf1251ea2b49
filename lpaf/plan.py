"""Know the cost before launch: the jobs of a workflow config, their optimizer steps, and, with a
calibration, their device-hours.

The jobs are the ones Snakemake would run: ``plan_jobs`` asks it for a dry run of the config in an
empty directory (so every artifact counts) and parses each job's ``lpaf <stage> ...`` command
with the stage's own argument parser, so the steps are those the stage will take: epochs x
ceil(examples / batch) or ``--max-steps``, the mixed-rank steps of a matched factor budget, the
Fisher batches of FWSVD, the dev examples of an evaluation. Training-set sizes are the official
split sizes (``TRAIN_EXAMPLES``; QA counts questions, not windows), clamped by
``--max-train-samples``.

A calibration (``lpaf calibrate``) holds measured seconds per optimizer step per stage for one
model, length, device and precision; ``summarize`` turns steps into hours with one or several (each
job is priced by the calibration at its max length, or the nearest one scaled by the length ratio).
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import shlex
import subprocess
import sys
import tempfile
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lpaf.errors import LpafError

# official train / dev sizes (GLUE; SQuAD questions). MNLI dev = matched + mismatched.
TRAIN_EXAMPLES = {"cola": 8551, "sst2": 67349, "mrpc": 3668, "stsb": 5749, "qqp": 363846, "mnli": 392702,
                  "qnli": 104743, "rte": 2490, "squad": 87599, "squad_v2": 130319}
DEV_EXAMPLES = {"cola": 1043, "sst2": 872, "mrpc": 408, "stsb": 1500, "qqp": 40430, "mnli": 9815 + 9832,
                "qnli": 5463, "rte": 277, "squad": 10570, "squad_v2": 11873}
TRAINING_STAGES = ("finetune", "prune", "retrain")
FISHER_METHODS = ("fwsvd", "fisher-sparsity-aware")  # factorize methods that take --fisher-batches gradient steps
# A calibration key missing from an older or narrower calibration falls back to the nearest measured one.
KIND_FALLBACKS = {"prune": ("prune", "prune-movement"), "retrain": ("retrain-plain",),
                  "factorize": ("factorize", "factorize-sparsity-aware")}
# The stages' own defaults (lpaf/cli.py STAGES overrides included) of the flags a job's price depends
# on, so a job described by a workflow config's partial settings is priced like its parsed command
# (tests/test_plan.py checks them against the stages' parsers).
PRICING_DEFAULTS: dict[str, dict[str, Any]] = {
    "finetune": {"epochs": 3.0, "batch_size": 32, "max_steps": -1, "max_train_samples": None,
                 "max_eval_samples": None, "max_length": None},
    "prune": {"method": "movement", "epochs": 10.0, "batch_size": 32, "max_steps": -1, "max_train_samples": None,
              "max_eval_samples": None, "max_length": None, "distill_alpha": 0.9, "teacher_cache": True},
    "retrain": {"scheme": "mixed-rank", "epochs": 3.0, "batch_size": 32, "max_steps": -1, "max_train_samples": None,
                "max_eval_samples": None, "max_length": None, "warmup_ratio": 0.1, "p0": 1.0,
                "anneal_fraction": 0.5, "anneal": "linear", "factor_budget": "matched", "distill_alpha": 0.9,
                "teacher_cache": True},
    "factorize": {"method": "svd", "fisher_batches": 32, "max_length": None},
    "evaluate": {"max_eval_samples": None, "max_length": None},
    "time-models": {"rounds": 10, "warmup": 2, "batch_size": 32, "seq_len": 128, "models": []},
    "rank-study": {},
}


@dataclass
class PlannedJob:
    rule: str
    task: str | None
    stage: str | None  # the lpaf stage the job runs (None: a table / figure rule)
    kind: str  # calibration key: finetune, prune-<method>, factorize-<method>, retrain-<scheme>, evaluate, time-models
    steps: int = 0  # optimizer steps (training stages), Fisher batches (fwsvd), 0 otherwise
    examples: int = 0  # dev examples scored (evaluate) or training examples per epoch
    max_length: int | None = None
    threads: int | None = None
    flags: dict[str, Any] = field(default_factory=dict)
    device: str | None = None  # the job's --device (cpu, cuda, auto); None: a stage without one (rank-study)
    gpus: int = 1  # processes of a DDP training job (torchrun --nproc_per_node), one GPU each


TIME_LIMIT_WARNING = "lpaf: time limit above cluster.max_runtime_min"  # the workflow's line (resources.smk)


def _dry_run(configfiles: list[str], config: list[str], snakefile: str, retries: int = 0) -> str:
    with tempfile.TemporaryDirectory(prefix="lpaf-plan-") as work:
        # An empty workdir, so every artifact counts; but a config's relative paths (model_path,
        # data_dir: resources/...) resolve against the workdir, so link in everything of the
        # current directory that is not an output of the workflow.
        for entry in Path.cwd().iterdir():
            if entry.name not in ("results", "logs", ".snakemake"):
                os.symlink(entry.resolve(), Path(work) / entry.name)
        cmd = [sys.executable, "-m", "snakemake", "-s", str(Path(snakefile).resolve()), "-d", work,
               "--configfile", *(str(Path(c).resolve()) for c in configfiles), "-n", "-p", "--retries", str(retries)]
        if config:
            cmd += ["--config", *config]
        env = dict(os.environ, PATH=os.pathsep.join([os.environ.get("PATH", ""), str(Path(sys.executable).parent)]))
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=Path(snakefile).resolve().parent)
    if res.returncode != 0:
        tail = [line for line in (res.stderr or res.stdout).splitlines() if line.strip()]
        raise LpafError(f"snakemake could not plan {' '.join(configfiles)}: "
                        f"{tail[-1] if tail else 'exit ' + str(res.returncode)}")
    return res.stdout + res.stderr


def _jobs_from_dry_run(output: str) -> list[tuple[str, str, str]]:
    """(rule, wildcards line, shell command) of every planned job."""
    jobs, job = [], None
    for line in output.splitlines():
        m = re.match(r"^(?:local)?rule (\w+):$", line)
        if m:
            job = [m.group(1), "", ""]
            jobs.append(job)
        elif job is not None and line.startswith("    wildcards: "):
            job[1] = line[len("    wildcards: "):]
        elif job is not None and line.startswith("Shell command: "):
            job[2] = line[len("Shell command: "):]
    return [tuple(j) for j in jobs]


def _stage_args(shell: str) -> tuple[str, Any] | None:
    """The ``lpaf <stage> ...`` part of a shell command, parsed by that stage's own parser."""
    from lpaf.cli import STAGES, build_parser

    words = shlex.split(shell.split(" > ")[0])
    for i, w in enumerate(words):
        if (w == "lpaf" or w.endswith("/lpaf") or w == "lpaf.cli") and i + 1 < len(words) and words[i + 1] in STAGES:
            stage = words[i + 1]
            return stage, build_parser(stage).parse_args(words[i + 1:])
    return None


class TrainSizes:
    """Training-set sizes: counted from local data where the job's --data exists (or from the
    synthetic smoke data a `smoke_assets` config generates), else the official split sizes."""

    def __init__(self, smoke: bool):
        self.smoke = smoke
        self._smoke_dir: tempfile.TemporaryDirectory | None = None
        self._counted: dict[tuple[str, str], int] = {}

    def __call__(self, task: str, data: str | None) -> int:
        directory = data if data and Path(data).is_dir() else None
        if directory is None and self.smoke:
            if self._smoke_dir is None:
                from lpaf.smoke import make_data

                self._smoke_dir = tempfile.TemporaryDirectory(prefix="lpaf-plan-smoke-")
                make_data(self._smoke_dir.name)
            directory = self._smoke_dir.name
        if directory is None:
            if task not in TRAIN_EXAMPLES:
                raise LpafError(f"no training-set size known for task {task!r}")
            return TRAIN_EXAMPLES[task]
        key = (task, directory)
        if key not in self._counted:
            from lpaf.data import load_raw
            from lpaf.tasks import get_task

            self._counted[key] = len(load_raw(get_task(task), directory, ["train"]).splits["train"])
        return self._counted[key]


def training_steps(n_examples: int, flags: dict[str, Any]) -> int:
    """Optimizer steps of one training job: --max-steps, else ceil(epochs x ceil(n / batch))."""
    if flags.get("max_steps") and int(flags["max_steps"]) > 0:
        return int(flags["max_steps"])
    n = min(n_examples, int(flags["max_train_samples"])) if flags.get("max_train_samples") else n_examples
    return math.ceil(float(flags["epochs"]) * math.ceil(n / int(flags["batch_size"])))


@functools.lru_cache(maxsize=None)
def _matched_steps(plain_steps: int, p0: float, anneal_fraction: float, anneal: str, warmup_ratio: float) -> int:
    """Mixed-rank's steps of a matched factor budget (a bisection over schedules: cached, as hundreds of
    jobs share a handful of step counts)."""
    from lpaf.mixed_rank import AnnealSchedule, matched_total_steps

    return matched_total_steps(plain_steps, AnnealSchedule(p0, anneal_fraction, anneal), warmup_ratio)


def describe_job(rule: str, stage: str, task: str | None, flags: dict[str, Any], n_train: int | None = None, *,
                 device: str | None = None, gpus: int = 1, threads: int | None = None) -> PlannedJob:
    """One job, priced by what its price depends on: the stage's flags (a parsed command's, or a workflow
    config's resolved settings; a missing or null flag takes the stage's default), the training examples
    per epoch before ``max_train_samples`` (training stages), its device and GPU count. ``lpaf plan``
    and the workflow's time limits (workflow/rules/resources.smk) both describe jobs here."""
    f = PRICING_DEFAULTS.get(stage, {}) | {k: v for k, v in flags.items() if v is not None}
    max_length = f.get("max_length")
    job = PlannedJob(rule, task, stage, stage, max_length=int(max_length) if max_length else None, threads=threads,
                     device=device, gpus=max(1, int(gpus)))
    if stage in TRAINING_STAGES:
        if n_train is None:
            raise ValueError(f"describe_job: a {stage} job needs its training-set size")
        job.steps = training_steps(n_train, f)
        job.examples = min(n_train, int(f["max_train_samples"] or n_train))
        dev = DEV_EXAMPLES.get(task or "", 0)
        job.flags["final_eval_examples"] = min(dev, int(f.get("max_eval_samples") or dev))
        # distillation reads the teacher's outputs from lpaf.teacher_cache (not under torchrun)
        job.flags["teacher_cache"] = bool(f.get("teacher_cache") and float(f.get("distill_alpha") or 0) > 0
                                          and job.gpus == 1)
        job.flags["batch_size"] = int(f["batch_size"])
        if stage == "prune":
            job.kind = f"prune-{f['method']}"
        if stage == "retrain":
            job.kind = f"retrain-{f['scheme']}"
            if f["scheme"] == "mixed-rank" and f["factor_budget"] == "matched":
                job.steps = _matched_steps(job.steps, float(f["p0"]), float(f["anneal_fraction"]), f["anneal"],
                                           float(f["warmup_ratio"]))
    elif stage == "factorize":
        job.kind = f"factorize-{f['method']}"
        job.steps = int(f["fisher_batches"]) if f["method"] in FISHER_METHODS else 0
    elif stage == "evaluate":
        dev = DEV_EXAMPLES.get(task or "", 0)
        job.examples = min(dev, int(f["max_eval_samples"] or dev))
    elif stage == "time-models":  # timed forward passes: rounds x models, each of batch x seq_len
        job.steps = (int(f["rounds"]) + int(f["warmup"])) * len(f["models"])
        job.examples = int(f["batch_size"]) * int(f["seq_len"])  # tokens per timed forward pass
    return job


def merged_settings(configfiles: list[str]) -> dict[str, Any]:
    """The config files merged as Snakemake merges them (later files win, nested sections key by key)."""
    import yaml

    def merge(base: dict, over: dict) -> dict:
        out = dict(base)
        for key, value in over.items():
            out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        return out

    settings: dict[str, Any] = {}
    for path in configfiles:
        settings = merge(settings, yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {})
    return settings


@dataclass
class WorkflowPlan:
    jobs: list[PlannedJob]
    warnings: list[str]  # the workflow's own warnings in the dry run: time limits beyond the partition's maximum


def plan_workflow(configfiles: str | list[str], config: list[str] | None = None, snakefile: str = "Snakefile",
                  retries: int = 0) -> WorkflowPlan:
    """Every job of the workflow of one config or several layered config files (as Snakemake layers
    them), with its optimizer steps, and the workflow's warnings about time limits of any attempt up to
    ``retries`` retries."""
    configfiles = [configfiles] if isinstance(configfiles, str) else list(configfiles)
    settings = merged_settings(configfiles)
    smoke = bool(settings.get("smoke_assets")) or any(c.strip() == "smoke_assets=true" for c in config or [])
    sizes = TrainSizes(smoke)
    jobs = []
    output = _dry_run(configfiles, config or [], snakefile, retries)
    for rule, wildcards, shell in _jobs_from_dry_run(output):
        task_match = re.search(r"\btask=([\w-]+)", wildcards)
        task = task_match.group(1) if task_match else None
        threads = re.search(r"OMP_NUM_THREADS=(\d+)", shell)
        nproc = re.search(r"--nproc_per_node (\d+)", shell)
        parsed = _stage_args(shell) if shell else None
        if parsed is None:
            jobs.append(PlannedJob(rule, task, None, rule))
            continue
        stage, ns = parsed
        task = task or getattr(ns, "task", None)
        n_train = sizes(task, getattr(ns, "data", None)) if stage in TRAINING_STAGES else None
        jobs.append(describe_job(rule, stage, task, vars(ns), n_train, device=getattr(ns, "device", None),
                                 gpus=int(nproc.group(1)) if nproc else 1,
                                 threads=int(threads.group(1)) if threads else None))
    warnings = [line for line in output.splitlines() if line.startswith(TIME_LIMIT_WARNING)]
    return WorkflowPlan(jobs, warnings)


def plan_jobs(configfiles: str | list[str], config: list[str] | None = None,
              snakefile: str = "Snakefile") -> list[PlannedJob]:
    """Every job of the config's workflow, with its optimizer steps."""
    return plan_workflow(configfiles, config, snakefile).jobs


def workflow_calibrations(configfiles: list[str], snakefile: str = "Snakefile") -> list[str]:
    """The calibration files the workflow's time limits come from: the config's cluster.calibration,
    else the schema's default; relative paths resolve as the workflow resolves them (the current
    directory, then the repository)."""
    import yaml

    paths = (merged_settings(configfiles).get("cluster") or {}).get("calibration")
    repo = Path(snakefile).resolve().parent
    if not paths:
        schema = yaml.safe_load((repo / "workflow" / "schemas" / "config.schema.yaml").read_text(encoding="utf-8"))
        paths = schema["properties"]["cluster"]["properties"]["calibration"]["default"]
    return [p if Path(p).is_file() else str(repo / p) for p in paths]


# --------------------------------------------------------------------------------------------
# Memory: peaks measured by a calibration run's Snakemake benchmark files, scaled to the model
# --------------------------------------------------------------------------------------------

# parameters of models a config names by hub id, for scaling memory before they are fetched
KNOWN_MODEL_PARAMETERS = {"bert-base-uncased": 109_482_240, "bert-base-cased": 108_310_272,
                          "bert-large-uncased": 335_141_888, "sentence-transformers/all-MiniLM-L6-v2": 22_713_216,
                          "nreimers/MiniLM-L6-H384-uncased": 22_713_216}


def bert_parameters(cfg: dict[str, Any]) -> int:
    """Parameters of a BERT-family encoder (+ pooler) from its config.json: embeddings, per layer the
    Q/K/V/output projections, the FFN and two LayerNorms."""
    h, i, layers = int(cfg["hidden_size"]), int(cfg["intermediate_size"]), int(cfg["num_hidden_layers"])
    embeddings = (int(cfg["vocab_size"]) + int(cfg.get("max_position_embeddings", 512))
                  + int(cfg.get("type_vocab_size", 2))) * h + 2 * h
    layer = 4 * (h * h + h) + 2 * h + (h * i + i) + (i * h + h) + 2 * h
    return embeddings + layers * layer + h * h + h


def benchmark_peaks(paths) -> dict[str, list[float]]:
    """Peak resident memory (MB, the ``max_rss`` column) per rule from Snakemake benchmark files
    (``logs/**/<rule>.benchmark.tsv``; a file with several repeats counts its largest)."""
    import csv

    peaks: dict[str, list[float]] = defaultdict(list)
    for path in paths:
        path = Path(path)
        rule = path.name[: -len(".benchmark.tsv")] if path.name.endswith(".benchmark.tsv") else path.stem
        with path.open(encoding="utf-8") as f:
            values = [float(row["max_rss"]) for row in csv.DictReader(f, delimiter="\t")
                      if row.get("max_rss") not in (None, "", "NA", "-")]
        if values:
            peaks[rule].append(max(values))
    return dict(peaks)


def memory_calibration(peaks: dict[str, list[float]], model: str, model_parameters: int, process_mb: float,
                       label: str) -> dict[str, Any]:
    """A memory calibration: each rule's largest peak over its jobs, the model they ran, and the memory
    of a bare process (Python, torch, transformers, lpaf), which does not grow with the model."""
    return {"model": model, "model_parameters": int(model_parameters), "process_mb": float(process_mb),
            "label": label, "rules": {rule: {"max_rss_mb": round(max(v), 1), "jobs": len(v)}
                                      for rule, v in sorted(peaks.items())}}


def scaled_memory_mb(rule: str, memory: dict[str, Any], model_parameters: int | None) -> float | None:
    """A rule's peak memory for another model: the bare process, plus the measured rest scaled by the
    parameter ratio (weights, gradients, optimizer states, the teacher and the activations all grow
    about with it). None when the calibration did not measure the rule."""
    entry = memory.get("rules", {}).get(rule)
    if entry is None:
        return None
    process = float(memory.get("process_mb", 0.0))
    ratio = model_parameters / float(memory["model_parameters"]) if model_parameters else 1.0
    return process + max(0.0, float(entry["max_rss_mb"]) - process) * ratio


# --------------------------------------------------------------------------------------------
# Estimates
# --------------------------------------------------------------------------------------------

def load_calibration(path: str) -> dict[str, Any]:
    try:
        blob = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LpafError(f"calibration file not found: {path}") from None
    except json.JSONDecodeError as e:
        raise LpafError(f"{path} is not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(blob, dict) or not isinstance(blob.get("stages"), dict):
        raise LpafError(f"{path} is not an lpaf calibration (no 'stages' section; write one with lpaf calibrate)")
    return blob


def _entry(job: PlannedJob, calibration: dict[str, Any]) -> dict[str, Any] | None:
    """The calibration entry that prices a job's kind (None: none does)."""
    stages = calibration["stages"]
    if job.kind == "factorize-fisher-sparsity-aware" and job.kind not in stages and "factorize-sparsity-aware" in stages:
        # the sparsity-aware solve plus the Fisher batches of fwsvd
        return dict(stages["factorize-sparsity-aware"], step_s=stages.get("factorize-fwsvd", {}).get("step_s", 0.0))
    entry = stages.get(job.kind)
    for fallback in KIND_FALLBACKS.get(job.stage or "", ()):
        entry = entry or stages.get(fallback)
    return entry


def job_device(job: PlannedJob) -> str | None:
    """Where a job runs: its --device; a stage without one (rank-study) runs on the CPU; None for auto."""
    if job.device is None:
        return "cpu" if job.stage is not None else None
    return None if job.device == "auto" else job.device


def pick_calibration(job: PlannedJob, calibrations: list[dict[str, Any]]) -> tuple[dict[str, Any], float]:
    """The calibration that prices a job, and the factor its per-step times are scaled by. Among the
    calibrations of the job's device that price its kind (else any that does): the one measured at the
    job's max length (scale 1), else the one at the nearest length, its step times scaled linearly by
    the length ratio (an approximation: attention grows faster than linearly)."""
    device = job_device(job)
    pricing = [c for c in calibrations if _entry(job, c) is not None] or calibrations
    pool = [c for c in pricing if device is not None and c.get("device") == device] or pricing
    if job.max_length is None:
        return pool[0], 1.0
    nearest = min(pool, key=lambda c: abs(int(c.get("max_length") or 0) - job.max_length))
    measured_length = int(nearest.get("max_length") or 0)
    if measured_length in (0, job.max_length):
        return nearest, 1.0
    return nearest, job.max_length / measured_length


def job_seconds(job: PlannedJob, calibration: dict[str, Any], scale: float = 1.0) -> float | None:
    """Estimated wall seconds of one job from a calibration (None when it has no entry); ``scale``
    multiplies the per-step and per-example times (length scaling, see ``pick_calibration``). A DDP
    training job over ``gpus`` GPUs splits each step's batch over them: its steps take 1/gpus of the
    one-GPU time (linear scaling, an optimistic bound; the time limit's safety factor covers the rest)."""
    stages = calibration["stages"]
    entry = _entry(job, calibration)
    if entry is None:
        return None
    seconds = float(calibration.get("process_start_s", 0.0)) + float(entry.get("fixed_s", 0.0))
    if job.stage in TRAINING_STAGES:
        step_s = float(entry.get("step_s", 0.0))
        if job.flags.get("teacher_cache"):
            # the teacher's forward pass leaves every step (unless the calibration timed cached steps)
            # and runs once over the training set instead (paid by every job: only the first of a
            # teacher's jobs computes it, the others read it)
            forward_s = teacher_forward_s(calibration)
            if not calibration.get("teacher_cache"):
                step_s = max(0.0, step_s - job.flags.get("batch_size", 32) * forward_s)
            seconds += job.examples * forward_s * scale
        seconds += job.steps * step_s * scale / max(1, job.gpus)
    if job.stage == "factorize":
        seconds += job.steps * float(entry.get("step_s", 0.0)) * scale
    if job.stage == "time-models":  # per timed forward pass, scaled by its tokens (calibrated: batch x length)
        calibrated_tokens = float(entry.get("batch_size", 32)) * float(entry.get("seq_len", 128))
        seconds += job.steps * float(entry.get("forward_s", 0.0)) * job.examples / calibrated_tokens
        return seconds
    if job.stage == "evaluate":
        seconds += job.examples * float(entry.get("example_s", 0.0)) * scale
    if job.stage in TRAINING_STAGES and "evaluate" in stages:  # its final dev evaluation
        final_eval = job.flags.get("final_eval_examples", DEV_EXAMPLES.get(job.task or "", 0))
        seconds += final_eval * float(stages["evaluate"].get("example_s", 0.0)) * scale
    return seconds


def teacher_forward_s(calibration: dict[str, Any]) -> float:
    """Seconds of the teacher's forward pass per training example: the calibration's own measurement
    (``teacher-forward``), else its evaluation's seconds per dev example (the same eval-mode forward)."""
    stages = calibration["stages"]
    entry = stages.get("teacher-forward") or stages.get("evaluate") or {}
    return float(entry.get("example_s", 0.0))


def estimate_seconds(job: PlannedJob, calibrations: list[dict[str, Any]]) -> tuple[float | None, float]:
    """A job's estimated wall seconds from the calibration that prices it, and the length scale used."""
    chosen, scale = pick_calibration(job, calibrations)
    return job_seconds(job, chosen, scale), scale


def time_limit_min(seconds: float, safety: float, attempt: int, lowest: int, highest: int) -> tuple[int, int]:
    """A job's time limit in minutes, and the one it would need without the cap: its estimate x
    ``safety`` x ``attempt`` (a retry after a time-out gets proportionally longer), rounded up, at
    least ``lowest``, at most ``highest`` (the partition's maximum)."""
    wanted = max(math.ceil(seconds / 60 * safety * attempt), lowest)
    return min(wanted, highest), wanted


def _calibration_list(calibration: dict[str, Any] | list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    if calibration is None:
        return []
    return [calibration] if isinstance(calibration, dict) else list(calibration)


def summarize(jobs: list[PlannedJob],
              calibration: dict[str, Any] | list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Per (rule, task): jobs, optimizer steps, estimated device-hours (a job's wall time x the GPUs it
    holds; x 1 on a CPU) and the GPU part of them; totals. ``calibration`` is one calibration or
    several (e.g. one per max length of the config's tasks, one per device)."""
    calibrations = _calibration_list(calibration)
    rows: dict[tuple[str, str], dict[str, Any]] = defaultdict(lambda: {"jobs": 0, "steps": 0, "hours": 0.0,
                                                                      "gpu_hours": 0.0, "estimated": True,
                                                                      "length_scaled": False})
    for job in jobs:
        row = rows[(job.rule, job.task or "-")]
        row["jobs"] += 1
        row["steps"] += job.steps
        if calibrations and job.stage is not None:  # table / figure / asset rules: no stage, seconds
            seconds, scale = estimate_seconds(job, calibrations)
            if seconds is None:
                row["estimated"] = False
            else:
                on_gpu = job_device(job) == "cuda"
                hours = seconds / 3600 * (job.gpus if on_gpu else 1)
                row["hours"] += hours
                row["gpu_hours"] += hours if on_gpu else 0.0
                row["length_scaled"] = row["length_scaled"] or scale != 1.0
    table = [{"rule": r, "task": t, **v} for (r, t), v in sorted(rows.items())]
    total = {"jobs": sum(r["jobs"] for r in table), "steps": sum(r["steps"] for r in table)}
    if calibrations:
        total["hours"] = sum(r["hours"] for r in table)
        total["gpu_hours"] = sum(r["gpu_hours"] for r in table)
    return {"rows": table, "total": total,
            "calibration": [{k: v for k, v in c.items() if k != "stages"} for c in calibrations] or None}


def format_summary(summary: dict[str, Any]) -> str:
    calibrated = summary["calibration"] is not None
    lines = []
    if not calibrated:
        lines.append("no calibration given (--calibration FILE from `lpaf calibrate`): optimizer steps only")
    else:
        for c in summary["calibration"]:
            lines.append(f"calibration: {c.get('model')} on {c.get('device')} ({c.get('device_name', '')}), "
                         f"length {c.get('max_length')}, {c.get('precision')}, {c.get('threads')} thread(s); "
                         f"{c.get('label', 'measured')}")
    header = f"{'rule':<16} {'task':<9} {'jobs':>6} {'steps':>12}" + (f" {'device-h':>10} {'GPU-h':>9}"
                                                                      if calibrated else "")
    lines += [header, "-" * len(header)]
    for r in summary["rows"]:
        line = f"{r['rule']:<16} {r['task']:<9} {r['jobs']:>6} {r['steps']:>12,}"
        if calibrated:
            line += f" {r['hours']:>10.2f} {r['gpu_hours']:>9.2f}" + ("" if r["estimated"] else "  (no calibration entry)")
            line += "  (length-scaled)" if r["length_scaled"] else ""
        lines.append(line)
    t = summary["total"]
    lines += ["-" * len(header), f"{'total':<26} {t['jobs']:>6} {t['steps']:>12,}"
              + (f" {t['hours']:>10.2f} {t['gpu_hours']:>9.2f}" if calibrated else "")]
    return "\n".join(lines)


def job_dicts(jobs: list[PlannedJob]) -> list[dict[str, Any]]:
    return [asdict(j) for j in jobs]
