"""``lpaf plan`` and ``lpaf calibrate``: the cost of a workflow config before launch.

``lpaf plan --configfile CONFIG [CONFIG ...] [--calibration FILE ...] [--json OUT]`` prints, per rule and
task, the jobs, optimizer steps and estimated device- and GPU-hours (from the config's
cluster.calibration unless --calibration names others), then the total, and the workflow's warnings
about jobs or retries whose time limit would exceed the partition's maximum.
``lpaf calibrate --model M --task T`` times a few optimizer steps of every training stage (fine-tune,
prune with its teacher per pruning method, re-train plain and mixed-rank with the teacher), each
factorization (svd, sparsity-aware, fwsvd with its cost per Fisher batch), an evaluation and the
timing job's forward passes on this device, by running the real stages on the real data, and
writes the calibration JSON the plan reads.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

from lpaf.errors import LpafError


@dataclass
class PlanArgs:
    configfile: list[str] = field(metadata={
        "help": "workflow config file(s), layered as `snakemake --configfile A B` layers them (later wins)"})
    config: list[str] | None = field(default=None, metadata={"help": "snakemake --config overrides, KEY=VALUE ..."})
    calibration: list[str] | None = field(default=None, metadata={
        "help": "calibration JSON(s) from `lpaf calibrate`; several: each job uses the one of its device at its "
                "max length (else the nearest, scaled by the length ratio). Default: the config's "
                "cluster.calibration, which the workflow's time limits come from"})
    retries: int = field(default=2, metadata={
        "help": "retries per job (as the SLURM profile's `retries`): warn about any attempt whose time limit "
                "would exceed cluster.max_runtime_min"})
    json: str | None = field(default=None, metadata={"help": "also write the plan (every job and the summary) here"})
    snakefile: str = field(default="Snakefile", metadata={"help": "the workflow's Snakefile (run from the repository)"})

    def __post_init__(self):
        problems = []
        for path in self.configfile:
            if not Path(path).is_file():
                problems.append(f"--configfile {path} not found")
        if not Path(self.snakefile).is_file():
            problems.append(f"--snakefile {self.snakefile} not found (run lpaf plan from the repository root)")
        for path in self.calibration or []:
            if not Path(path).is_file():
                problems.append(f"--calibration {path} not found")
        if self.retries < 0:
            problems.append(f"--retries must be >= 0 (got {self.retries})")
        if problems:
            raise LpafError("; ".join(problems))


def run_plan(args: PlanArgs) -> dict:
    from lpaf.plan import format_summary, job_dicts, load_calibration, plan_workflow, summarize, workflow_calibrations

    configured = workflow_calibrations(args.configfile, args.snakefile)
    paths = args.calibration or configured
    calibration = [load_calibration(path) for path in paths]
    plan = plan_workflow(args.configfile, args.config, args.snakefile, args.retries)
    summary = summarize(plan.jobs, calibration)
    print(format_summary(summary))
    if args.calibration and [Path(p).resolve() for p in args.calibration] != [Path(p).resolve() for p in configured]:
        print(f"note: the workflow's time limits come from cluster.calibration ({', '.join(configured)}), "
              f"not from --calibration")
    for line in plan.warnings:
        print(line)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"configfile": args.configfile, "config": args.config, **summary,
                                               "time_limit_warnings": plan.warnings,
                                               "jobs": job_dicts(plan.jobs)}, indent=1) + "\n", encoding="utf-8")
    return summary


@dataclass
class CalibrateArgs:
    model: str = field(metadata={"help": "pre-trained model directory or hub id (the workflow's `model`)"})
    task: str = field(metadata={"help": "task whose data the timed steps use"})
    out: str = field(metadata={"help": "calibration JSON to write"})
    data: str | None = field(default=None, metadata={"help": "local data directory (default: the hub)"})
    max_length: int = field(default=128, metadata={"help": "max tokens per example (as in the config)"})
    max_train_samples: int | None = field(default=None, metadata={"help": "as in the config (tokenization only)"})
    device: Literal["cpu", "cuda"] = field(default="cpu", metadata={"help": "device to calibrate"})
    precision: Literal["fp32", "bf16", "fp16"] = field(default="fp32", metadata={"help": "training precision"})
    threads: int = field(default=1, metadata={"help": "CPU threads (the config's compute.train_threads)"})
    steps: int = field(default=12, metadata={"help": "optimizer steps timed per training stage"})
    batch_size: int = field(default=32, metadata={"help": "training batch size (as in the config)"})
    density: float = field(default=0.25, metadata={"help": "density of the timed prune / factorize / retrain"})
    prune_methods: list[str] = field(default_factory=lambda: ["movement", "magnitude", "platon"], metadata={
        "help": "pruning methods to time (PLATON's sensitivity hooks and learned scores cost differently)"})
    fisher_batches: int = field(default=8, metadata={"help": "Fisher batches of the timed fwsvd (its cost per batch)"})
    label: str = field(default="measured", metadata={"help": "how the numbers came about (kept in the JSON)"})

    def __post_init__(self):
        problems = []
        if self.steps < 3:
            problems.append(f"--steps must be >= 3 (the first step is not timed; got {self.steps})")
        if self.threads < 1:
            problems.append(f"--threads must be >= 1 (got {self.threads})")
        from lpaf.pruning import PruneMethod

        allowed = get_args(PruneMethod)
        bad = [m for m in self.prune_methods if m not in allowed]
        if bad or not self.prune_methods:
            problems.append(f"--prune-methods must name one or more of {', '.join(allowed)} (got {bad or 'none'})")
        if self.fisher_batches < 1:
            problems.append(f"--fisher-batches must be >= 1 (got {self.fisher_batches})")
        if problems:
            raise LpafError("; ".join(problems))


def run_calibrate(args: CalibrateArgs) -> dict:
    import torch

    from lpaf.cli import main as lpaf_main

    torch.set_num_threads(args.threads)
    common = ["--task", args.task, "--max-length", str(args.max_length), "--device", args.device, "--seed", "1"]
    if args.data:
        common += ["--data", args.data]
    if args.max_train_samples:
        common += ["--max-train-samples", str(args.max_train_samples)]
    # the training stages' own dev evaluations are kept small here; the evaluate stage below measures
    # the cost per dev example, which the plan adds for every training job's final evaluation
    train = ["--max-steps", str(args.steps), "--batch-size", str(args.batch_size), "--save-steps", "100000",
             "--precision", args.precision, "--max-eval-samples", "32"]
    work = Path(tempfile.mkdtemp(prefix="lpaf-calibrate-"))
    # distillation steps timed with the teacher run at every step: the plan takes the teacher's forward
    # pass out of them for jobs that read it from lpaf.teacher_cache, and adds the one pass that fills it
    live_teacher = ["--no-teacher-cache"]
    stages: dict[str, dict] = {}

    def stage(kind: str, argv: list[str], out: Path) -> dict:
        t0 = time.perf_counter()
        code = lpaf_main([*argv, "--out", str(out)])
        wall = time.perf_counter() - t0
        if code != 0:
            raise LpafError(f"calibration stage {kind} failed (exit {code}); see the messages above")
        record = json.loads((out / "metrics.json").read_text()) if out.is_dir() else json.loads(out.read_text())
        entry: dict = {"wall_s": wall}
        if "train" in record:
            # the mean, not the median: a job's wall time is the sum of its steps, slow ones included
            step_s = float(record["train"].get("step_time_s_mean") or record["train"]["step_time_s_median"])
            entry |= {"step_s": step_s, "steps": int(record["train"]["train_steps"]),
                      "fixed_s": max(0.0, wall - step_s * int(record["train"]["train_steps"]))}
        stages[kind] = entry
        return record

    try:
        teacher, fact = work / "teacher", work / "fact"
        # a few steps of a pre-trained model often predict one class: a timing run, not a teacher
        stage("finetune", ["finetune", "--model", args.model, *common, *train, "--allow-degenerate"], teacher)
        for method in args.prune_methods:
            stage(f"prune-{method}", ["prune", "--model", str(teacher), "--method", method, "--density",
                                      str(args.density), *common, *train, *live_teacher], work / f"pruned-{method}")
        pruned = work / f"pruned-{args.prune_methods[0]}"
        for method in ("svd", "sparsity-aware", "fwsvd"):
            extra = ["--fisher-batches", str(args.fisher_batches)] if method == "fwsvd" else []
            source = teacher if method == "fwsvd" else pruned
            stage(f"factorize-{method}", ["factorize", "--model", str(source), "--method", method, "--density",
                                          str(args.density), *extra, *common],
                  fact if method == "sparsity-aware" else work / f"fact-{method}")
        factorize_s = {m: stages[f"factorize-{m}"]["wall_s"] for m in ("svd", "sparsity-aware", "fwsvd")}
        for method in ("svd", "sparsity-aware"):
            stages[f"factorize-{method}"] |= {"fixed_s": factorize_s[method], "step_s": 0.0}
        # fwsvd = an SVD of the dense matrices + the Fisher batches: the difference is their cost
        fisher_step_s = max(0.0, factorize_s["fwsvd"] - factorize_s["svd"]) / args.fisher_batches
        stages["factorize-fwsvd"] |= {"fixed_s": factorize_s["svd"], "step_s": fisher_step_s,
                                      "steps": args.fisher_batches}
        for scheme in ("plain", "mixed-rank"):
            extra = ["--factor-budget", "steps"] if scheme == "mixed-rank" else []
            stage(f"retrain-{scheme}", ["retrain", "--model", str(fact), "--teacher", str(teacher), "--scheme",
                                        scheme, *extra, *common, *train, *live_teacher], work / f"retrain-{scheme}")
        stage("rank-study", ["rank-study", "--models", str(pruned)], work / "rank.json")
        stages["rank-study"] |= {"fixed_s": stages["rank-study"]["wall_s"]}
        rounds, warmup = 3, 1
        stage("time-models", ["time-models", "--models", str(teacher), str(fact), "--rounds", str(rounds),
                              "--warmup", str(warmup), "--device", args.device], work / "timing.json")
        # per timed forward pass (dense and compressed alike: an upper bound for compressed models)
        stages["time-models"] |= {"forward_s": stages["time-models"]["wall_s"] / ((rounds + warmup) * 2),
                                  "fixed_s": 0.0, "batch_size": 32, "seq_len": 128}
        # two sizes: the per-example cost from their difference, the rest (loading the model and
        # the features) is the job's fixed cost
        walls, counts = [], []
        for n_eval in (32, 256):
            record = stage("evaluate", ["evaluate", "--model", str(fact), *common, "--max-eval-samples", str(n_eval)],
                           work / f"eval-{n_eval}.json")
            walls.append(stages["evaluate"]["wall_s"])
            counts.append(sum((record.get("n_eval_examples") or {}).values()) or n_eval)
        if counts[1] > counts[0] and walls[1] > walls[0]:
            example_s = (walls[1] - walls[0]) / (counts[1] - counts[0])
        else:  # a dev set of <= 32 examples (or timer noise): charge it all per example
            example_s = walls[1] / counts[1]
        stages["evaluate"] |= {"example_s": example_s, "fixed_s": max(0.0, walls[1] - example_s * counts[1])}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    device_name = torch.cuda.get_device_name(0) if args.device == "cuda" else platform.processor() or platform.machine()
    # every job is a fresh process: the interpreter and the imports of torch / transformers / lpaf,
    # which the in-process stages above did once
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import lpaf.cli, lpaf.training, lpaf.stages.prune"], check=True,
                   env=dict(os.environ, OMP_NUM_THREADS=str(args.threads)))
    process_start_s = time.perf_counter() - t0
    blob = {"model": args.model, "task": args.task, "device": args.device, "device_name": device_name,
            "precision": args.precision, "threads": args.threads, "max_length": args.max_length,
            "batch_size": args.batch_size, "label": args.label, "torch": torch.__version__,
            "process_start_s": process_start_s, "stages": stages}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(blob, indent=1) + "\n", encoding="utf-8")
    return blob  # the CLI prints the summary: the file and the seconds per step of each training stage
