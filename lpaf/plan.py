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


def _dry_run(configfile: str, config: list[str], snakefile: str) -> str:
    with tempfile.TemporaryDirectory(prefix="lpaf-plan-") as work:
        # An empty workdir, so every artifact counts; but a config's relative paths (model_path,
        # data_dir: resources/...) resolve against the workdir, so link in everything of the
        # current directory that is not an output of the workflow.
        for entry in Path.cwd().iterdir():
            if entry.name not in ("results", "logs", ".snakemake"):
                os.symlink(entry.resolve(), Path(work) / entry.name)
        cmd = [sys.executable, "-m", "snakemake", "-s", str(Path(snakefile).resolve()), "-d", work,
               "--configfile", str(Path(configfile).resolve()), "-n", "-p"]
        if config:
            cmd += ["--config", *config]
        env = dict(os.environ, PATH=os.pathsep.join([os.environ.get("PATH", ""), str(Path(sys.executable).parent)]))
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=Path(snakefile).resolve().parent)
    if res.returncode != 0:
        tail = [line for line in (res.stderr or res.stdout).splitlines() if line.strip()]
        raise LpafError(f"snakemake could not plan {configfile}: {tail[-1] if tail else 'exit ' + str(res.returncode)}")
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


def training_steps(n_examples: int, ns) -> int:
    """Optimizer steps of one training job: --max-steps, else ceil(epochs x ceil(n / batch))."""
    if getattr(ns, "max_steps", -1) and ns.max_steps > 0:
        return int(ns.max_steps)
    n = min(n_examples, int(ns.max_train_samples)) if ns.max_train_samples else n_examples
    return math.ceil(float(ns.epochs) * math.ceil(n / int(ns.batch_size)))


def plan_jobs(configfile: str, config: list[str] | None = None, snakefile: str = "Snakefile") -> list[PlannedJob]:
    """Every job of the config's workflow, with its optimizer steps."""
    import yaml

    from lpaf.mixed_rank import AnnealSchedule, matched_total_steps

    settings = yaml.safe_load(Path(configfile).read_text(encoding="utf-8")) or {}
    smoke = bool(settings.get("smoke_assets")) or any(c.strip() == "smoke_assets=true" for c in config or [])
    sizes = TrainSizes(smoke)
    jobs = []
    for rule, wildcards, shell in _jobs_from_dry_run(_dry_run(configfile, config or [], snakefile)):
        task_match = re.search(r"\btask=([\w-]+)", wildcards)
        task = task_match.group(1) if task_match else None
        threads = re.search(r"OMP_NUM_THREADS=(\d+)", shell)
        parsed = _stage_args(shell) if shell else None
        if parsed is None:
            jobs.append(PlannedJob(rule, task, None, rule))
            continue
        stage, ns = parsed
        job = PlannedJob(rule, task or getattr(ns, "task", None), stage, stage,
                         max_length=getattr(ns, "max_length", None), threads=int(threads.group(1)) if threads else None)
        if stage in TRAINING_STAGES:
            n = sizes(job.task, getattr(ns, "data", None))
            job.steps = training_steps(n, ns)
            job.examples = min(n, ns.max_train_samples or n)
            dev = DEV_EXAMPLES.get(job.task or "", 0)
            job.flags["final_eval_examples"] = min(dev, getattr(ns, "max_eval_samples", None) or dev)
            if stage == "prune":
                job.kind = f"prune-{ns.method}"
            if stage == "retrain":
                job.kind = f"retrain-{ns.scheme}"
                if ns.scheme == "mixed-rank" and getattr(ns, "factor_budget", "matched") == "matched":
                    job.steps = matched_total_steps(job.steps, AnnealSchedule(ns.p0, ns.anneal_fraction, ns.anneal),
                                                    ns.warmup_ratio)
        elif stage == "factorize":
            job.kind = f"factorize-{ns.method}"
            job.steps = int(ns.fisher_batches) if ns.method in FISHER_METHODS else 0
        elif stage == "evaluate":
            job.examples = min(DEV_EXAMPLES.get(job.task, 0), ns.max_eval_samples or DEV_EXAMPLES.get(job.task, 0))
        elif stage == "time-models":  # timed forward passes: rounds x models, each of batch x seq_len
            job.steps = (int(ns.rounds) + int(ns.warmup)) * len(ns.models)
            job.examples = int(ns.batch_size) * int(ns.seq_len)  # tokens per timed forward pass
        jobs.append(job)
    return jobs


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


def pick_calibration(job: PlannedJob, calibrations: list[dict[str, Any]]) -> tuple[dict[str, Any], float]:
    """The calibration that prices a job, and the factor its per-step times are scaled by: the one
    measured at the job's max length (scale 1), else the one at the nearest length, its step times
    scaled linearly by the length ratio (an approximation: attention grows faster than linearly)."""
    if job.max_length is None:
        return calibrations[0], 1.0
    nearest = min(calibrations, key=lambda c: abs(int(c.get("max_length") or 0) - job.max_length))
    measured_length = int(nearest.get("max_length") or 0)
    if measured_length in (0, job.max_length):
        return nearest, 1.0
    return nearest, job.max_length / measured_length


def job_seconds(job: PlannedJob, calibration: dict[str, Any], scale: float = 1.0) -> float | None:
    """Estimated wall seconds of one job from a calibration (None when it has no entry); ``scale``
    multiplies the per-step and per-example times (length scaling, see ``pick_calibration``)."""
    stages = calibration["stages"]
    entry = stages.get(job.kind)
    for fallback in KIND_FALLBACKS.get(job.stage or "", ()):
        entry = entry or stages.get(fallback)
    if job.kind == "factorize-fisher-sparsity-aware" and "factorize-sparsity-aware" in stages:
        # the sparsity-aware solve plus the Fisher batches of fwsvd
        entry = dict(stages["factorize-sparsity-aware"], step_s=stages.get("factorize-fwsvd", {}).get("step_s", 0.0))
    if entry is None:
        return None
    seconds = float(calibration.get("process_start_s", 0.0)) + float(entry.get("fixed_s", 0.0))
    if job.stage in TRAINING_STAGES or job.stage == "factorize":
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


def _calibration_list(calibration: dict[str, Any] | list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    if calibration is None:
        return []
    return [calibration] if isinstance(calibration, dict) else list(calibration)


def summarize(jobs: list[PlannedJob],
              calibration: dict[str, Any] | list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Per (rule, task): jobs, optimizer steps and estimated device-hours; totals. ``calibration``
    is one calibration or several (e.g. one per max length of the config's tasks)."""
    calibrations = _calibration_list(calibration)
    rows: dict[tuple[str, str], dict[str, Any]] = defaultdict(lambda: {"jobs": 0, "steps": 0, "hours": 0.0,
                                                                      "estimated": True, "length_scaled": False})
    for job in jobs:
        row = rows[(job.rule, job.task or "-")]
        row["jobs"] += 1
        row["steps"] += job.steps
        if calibrations and job.stage is not None:  # table / figure / asset rules: no stage, seconds
            chosen, scale = pick_calibration(job, calibrations)
            seconds = job_seconds(job, chosen, scale)
            if seconds is None:
                row["estimated"] = False
            else:
                row["hours"] += seconds / 3600
                row["length_scaled"] = row["length_scaled"] or scale != 1.0
    table = [{"rule": r, "task": t, **v} for (r, t), v in sorted(rows.items())]
    total = {"jobs": sum(r["jobs"] for r in table), "steps": sum(r["steps"] for r in table)}
    if calibrations:
        total["hours"] = sum(r["hours"] for r in table)
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
    header = f"{'rule':<16} {'task':<9} {'jobs':>6} {'steps':>12}" + (f" {'device-h':>10}" if calibrated else "")
    lines += [header, "-" * len(header)]
    for r in summary["rows"]:
        line = f"{r['rule']:<16} {r['task']:<9} {r['jobs']:>6} {r['steps']:>12,}"
        if calibrated:
            line += f" {r['hours']:>10.2f}" + ("" if r["estimated"] else "  (no calibration entry)")
            line += "  (length-scaled)" if r["length_scaled"] else ""
        lines.append(line)
    t = summary["total"]
    lines += ["-" * len(header), f"{'total':<26} {t['jobs']:>6} {t['steps']:>12,}"
              + (f" {t['hours']:>10.2f}" if calibrated else "")]
    return "\n".join(lines)


def job_dicts(jobs: list[PlannedJob]) -> list[dict[str, Any]]:
    return [asdict(j) for j in jobs]
