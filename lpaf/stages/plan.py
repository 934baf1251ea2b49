"""``lpaf plan`` and ``lpaf calibrate``: the cost of a workflow config before launch.

``lpaf plan --configfile CONFIG [--calibration FILE] [--json OUT]`` prints, per rule and task, the
jobs, optimizer steps and (with a calibration) estimated device-hours, then the total.
``lpaf calibrate --model M --task T`` times a few optimizer steps of every training stage (fine-tune,
prune with its teacher, re-train plain and mixed-rank with the teacher), a factorization and an
evaluation on this device, by running the real stages on the real data, and writes the calibration
JSON the plan reads.
"""

from __future__ import annotations

import json
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from lpaf.errors import LpafError


@dataclass
class PlanArgs:
    configfile: str = field(metadata={"help": "workflow config (e.g. config/paper.yaml)"})
    config: list[str] | None = field(default=None, metadata={"help": "snakemake --config overrides, KEY=VALUE ..."})
    calibration: str | None = field(default=None, metadata={"help": "calibration JSON from `lpaf calibrate`"})
    json: str | None = field(default=None, metadata={"help": "also write the plan (every job and the summary) here"})
    snakefile: str = field(default="Snakefile", metadata={"help": "the workflow's Snakefile (run from the repository)"})

    def __post_init__(self):
        problems = []
        if not Path(self.configfile).is_file():
            problems.append(f"--configfile {self.configfile} not found")
        if not Path(self.snakefile).is_file():
            problems.append(f"--snakefile {self.snakefile} not found (run lpaf plan from the repository root)")
        if self.calibration is not None and not Path(self.calibration).is_file():
            problems.append(f"--calibration {self.calibration} not found")
        if problems:
            raise LpafError("; ".join(problems))


def run_plan(args: PlanArgs) -> dict:
    from lpaf.plan import format_summary, job_dicts, load_calibration, plan_jobs, summarize

    calibration = load_calibration(args.calibration) if args.calibration else None
    jobs = plan_jobs(args.configfile, args.config, args.snakefile)
    summary = summarize(jobs, calibration)
    print(format_summary(summary))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"configfile": args.configfile, "config": args.config, **summary,
                                               "jobs": job_dicts(jobs)}, indent=1) + "\n", encoding="utf-8")
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
    label: str = field(default="measured", metadata={"help": "how the numbers came about (kept in the JSON)"})

    def __post_init__(self):
        problems = []
        if self.steps < 3:
            problems.append(f"--steps must be >= 3 (the first step is not timed; got {self.steps})")
        if self.threads < 1:
            problems.append(f"--threads must be >= 1 (got {self.threads})")
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
            step_s = float(record["train"]["step_time_s_median"])
            entry |= {"step_s": step_s, "steps": int(record["train"]["train_steps"]),
                      "fixed_s": max(0.0, wall - step_s * int(record["train"]["train_steps"]))}
        stages[kind] = entry
        return record

    try:
        teacher, pruned, fact = work / "teacher", work / "pruned", work / "fact"
        stage("finetune", ["finetune", "--model", args.model, *common, *train], teacher)
        stage("prune", ["prune", "--model", str(teacher), "--method", "movement", "--density", str(args.density),
                        *common, *train], pruned)
        t0 = time.perf_counter()
        stage("factorize", ["factorize", "--model", str(pruned), "--method", "sparsity-aware", "--density",
                            str(args.density), *common], fact)
        stages["factorize"] |= {"fixed_s": time.perf_counter() - t0, "step_s": 0.0}
        for scheme in ("plain", "mixed-rank"):
            extra = ["--factor-budget", "steps"] if scheme == "mixed-rank" else []
            stage(f"retrain-{scheme}", ["retrain", "--model", str(fact), "--teacher", str(teacher), "--scheme",
                                        scheme, *extra, *common, *train], work / f"retrain-{scheme}")
        n_eval = 256
        record = stage("evaluate", ["evaluate", "--model", str(fact), *common, "--max-eval-samples", str(n_eval)],
                       work / "eval.json")
        examples = sum((record.get("n_eval_examples") or {}).values()) or n_eval
        stages["evaluate"] |= {"example_s": stages["evaluate"]["wall_s"] / examples, "fixed_s": 0.0}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    device_name = torch.cuda.get_device_name(0) if args.device == "cuda" else platform.processor() or platform.machine()
    blob = {"model": args.model, "task": args.task, "device": args.device, "device_name": device_name,
            "precision": args.precision, "threads": args.threads, "max_length": args.max_length,
            "batch_size": args.batch_size, "label": args.label, "torch": torch.__version__, "stages": stages}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(blob, indent=1) + "\n", encoding="utf-8")
    print(f"lpaf calibrate: wrote {args.out}: " + ", ".join(
        f"{k} {v['step_s']:.3f} s/step" for k, v in stages.items() if v.get("step_s")))
    return blob
