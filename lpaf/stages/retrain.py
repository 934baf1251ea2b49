"""Stage 3: re-train a factorized model — plain, mixed-rank (LPAF) or rank-sampling.

Reads a factorized directory (``lpaf factorize``), trains it with the task loss and distillation
from the teacher, and writes the final compressed model (no full-rank weight) and metrics.json:
dev metrics at the end and at the best dev evaluation, the p(t) schedule used, parameter counts,
wall time and step-time figures (during the anneal and after it, so the cost of the full-rank
branch is visible).

Under torchrun every process trains with the same branch draws (one seed, one generator per
rank; checked and recorded as ``schedule.same_on_all_ranks``); rank 0 alone evaluates and writes.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from transformers import TrainerCallback

from lpaf import distributed as dist
from lpaf.artifacts import read_json, require_complete
from lpaf.errors import LpafError
from lpaf.mixed_rank import SOURCE_WEIGHTS_FILE, AnnealSchedule
from lpaf.stages.common import (DataArgs, RunArgs, asdict_all, atomic_output_dir, checkpoint_dir_for, evaluate_model,
                                evaluate_with_predictions, is_lowrank_dir, load_model, load_task_data, load_tokenizer,
                                now, prepare_output, pruning_diagnostics_of, seed_everything, stage_metrics,
                                write_completion, METRICS_FILE)
from lpaf.training import TrainArgs, resolve_device, train_model

RetrainScheme = Literal["plain", "mixed-rank", "rank-sampling"]


@dataclass
class RetrainArgs:
    model: str = field(metadata={"help": "factorized model directory (from 'lpaf factorize')"})
    out: str = field(metadata={"help": "output directory (compressed model + metrics.json)"})
    teacher: str | None = field(default=None, metadata={"help": "teacher model directory (the fine-tuned dense "
                                                                "model) for distillation; needed unless "
                                                                "--distill-alpha 0"})
    scheme: RetrainScheme = field(default="mixed-rank", metadata={
        "help": "plain: fine-tune the factors; mixed-rank: each module runs its full-rank source matrix with "
                "probability p(t) (LPAF); rank-sampling: each module runs rank r' > r with probability p(t)"})
    p0: float = field(default=1.0, metadata={"help": "p(t) at the first step (mixed-rank, rank-sampling)"})
    anneal_fraction: float = field(default=0.5, metadata={"help": "fraction of the steps over which p(t) falls "
                                                                  "to 0; later steps use A·B only"})
    anneal: Literal["linear", "cosine"] = field(default="linear", metadata={"help": "shape of the p(t) decay"})
    factor_budget: Literal["matched", "steps"] = field(default="matched", metadata={
        "help": "mixed-rank only. matched: run as many extra steps as it takes for every module's factors to "
                "receive the learning-rate integral that plain re-training with these epochs gives them (they get "
                "no gradient while the module runs W_s): the fair comparison; steps: the same number of steps as "
                "plain (the factors get less, ~64%% with p0 1 and anneal 0.5)"})
    trainable_source: bool = field(default=False, metadata={"help": "train the full-rank source matrices too "
                                                                    "(pruned entries stay zero); default frozen"})
    max_rank_multiple: float = field(default=2.0, metadata={"help": "rank-sampling: factors over-parameterized "
                                                                    "up to this multiple of each rank"})
    eval_every_steps: int = field(default=0, metadata={"help": "dev evaluation every N steps (0: each epoch end)"})

    def __post_init__(self):
        problems = []
        if self.scheme not in ("plain", "mixed-rank", "rank-sampling"):
            problems.append(f"--scheme must be plain, mixed-rank or rank-sampling (got {self.scheme!r})")
        try:
            self.schedule()
        except LpafError as e:
            problems.append(str(e))
        if self.trainable_source and self.scheme != "mixed-rank":
            problems.append(f"--trainable-source applies to --scheme mixed-rank only (got --scheme {self.scheme})")
        if not self.max_rank_multiple > 1.0:
            problems.append(f"--max-rank-multiple must be > 1 (got {self.max_rank_multiple})")
        if self.eval_every_steps < 0:
            problems.append(f"--eval-every-steps must be >= 0 (got {self.eval_every_steps})")
        if problems:
            raise LpafError("; ".join(problems))

    def schedule(self) -> AnnealSchedule:
        return AnnealSchedule(self.p0, self.anneal_fraction, self.anneal)


def _check_inputs(args: RetrainArgs, train_args: TrainArgs) -> None:
    """Every problem with the input directories, reported together before anything loads."""
    problems = []
    try:
        require_complete(args.model, "model")
        if not is_lowrank_dir(args.model):
            problems.append(f"{args.model} is not a factorized model (no lpaf_lowrank section in its config.json); "
                            f"run 'lpaf factorize' first")
        elif args.scheme != "plain" and not (Path(args.model) / SOURCE_WEIGHTS_FILE).is_file():
            problems.append(f"{Path(args.model) / SOURCE_WEIGHTS_FILE} is missing: --scheme {args.scheme} needs "
                            f"the full-rank source matrices that 'lpaf factorize' writes; re-run factorize or "
                            f"use --scheme plain")
    except LpafError as e:
        problems.append(str(e))
    if train_args.distill_alpha > 0:
        if args.teacher is None:
            problems.append(f"--teacher is required when --distill-alpha > 0 (got {train_args.distill_alpha}); "
                            f"pass the fine-tuned dense model or --distill-alpha 0")
        else:
            try:
                require_complete(args.teacher, "teacher")
            except LpafError as e:
                problems.append(str(e))
    if problems:
        raise LpafError("; ".join(problems))


class PhaseStepTimer(TrainerCallback):
    """Step wall times split at the end of the anneal: the full-rank branch costs only before it."""

    def __init__(self, schedule: AnnealSchedule):
        self.schedule = schedule
        self.times: dict[str, list[float]] = {"anneal": [], "after_anneal": []}
        self._t0: float | None = None

    def on_step_begin(self, args, state, control, **kwargs):
        self._t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self._t0 is None:
            return
        step = state.global_step - 1  # the step that just ran
        phase = "anneal" if step < self.schedule.anneal_steps(state.max_steps) else "after_anneal"
        if step > 0:  # the first step warms up allocators and caches
            self.times[phase].append(time.perf_counter() - self._t0)

    def summary(self) -> dict[str, Any]:
        import numpy as np

        out: dict[str, Any] = {}
        for phase, t in self.times.items():
            out[f"{phase}_steps_timed"] = len(t)
            out[f"{phase}_step_time_s_median"] = float(np.median(t)) if t else None
            out[f"{phase}_step_time_s_mean"] = float(np.mean(t)) if t else None
        return out


def _source_record(model_dir: str) -> dict[str, Any]:
    """What the factorized input says about itself (factorizer, density, its score before
    re-training, the model it came from), carried into our metrics.json for the report."""
    rec = read_json(Path(model_dir) / METRICS_FILE)
    keep = ("method", "density", "retained_percent", "source_model", "source_is_pruned")
    out = {k: rec[k] for k in keep if k in rec}
    if "metrics" in rec:
        out["metrics_before_retrain"] = rec["metrics"]
    return out


def run(args: RetrainArgs, data_args: DataArgs, run_args: RunArgs, train_args: TrainArgs) -> dict:
    from lpaf.lowrank import save_lowrank_model
    from lpaf.mixed_rank import (MixedRankScheduler, attach_mixed_rank, attach_rank_sampling, detach,
                                 load_source_weights)

    out = prepare_output(args.out)
    task = data_args.spec
    _check_inputs(args, train_args)
    device = resolve_device(run_args.device)
    seed_everything(run_args.seed)
    tokenizer = load_tokenizer(args.model)
    model = load_model(args.model, task, expect="factorized")
    teacher = load_model(args.teacher, task, expect="lpaf") if train_args.distill_alpha > 0 else None
    source_info = _source_record(args.model)
    data = load_task_data(data_args, tokenizer)

    schedule = args.schedule()
    budget = _factor_budget(args, train_args, len(data.train))
    if budget["total_steps"] != budget["plain_steps"]:
        train_args = dataclasses.replace(train_args, max_steps=budget["total_steps"])
    timer = PhaseStepTimer(schedule)
    callbacks: list[TrainerCallback] = [timer]
    scheduler = None
    if args.scheme != "plain":
        sources = load_source_weights(args.model)
        if args.scheme == "mixed-rank":
            wrapped = attach_mixed_rank(model, sources, args.trainable_source)
        else:
            wrapped = attach_rank_sampling(model, sources, args.max_rank_multiple)
        del sources
        # A stream of its own, derived from the run seed, so sampling never shifts dropout or data order.
        scheduler = MixedRankScheduler(wrapped, schedule, seed=run_args.seed + 7919, scheme=args.scheme)
        callbacks.append(scheduler)  # after the timer: the resampling cost counts in the step time

    t0 = now()
    stats = train_model(model, task, data.train, data.collator, train_args, checkpoint_dir_for(out),
                        seed=run_args.seed, device=run_args.device, precision=run_args.precision, teacher=teacher,
                        callbacks=callbacks,
                        evaluate_fn=lambda m: evaluate_model(m, data, train_args.eval_batch_size, device),
                        eval_every_steps=args.eval_every_steps,
                        # a module running W_s leaves A and B without gradient (and extras or a trainable
                        # W_s idle in the other branch): DDP must not wait for them
                        find_unused_parameters=scheduler is not None)
    same_draws = dist.same_on_all_ranks(scheduler.log) if scheduler else None  # a collective: all ranks
    if same_draws is False:
        raise RuntimeError("internal error: the mixed-rank branch draws differ between DDP ranks")
    if not dist.is_main_process():  # rank 0 evaluates and writes the artifact; the others wait for it
        dist.finish()
        return {}
    detached = detach(model)
    metrics, predictions = evaluate_with_predictions(model, data, train_args.eval_batch_size, device, progress=True)
    stats["step_time_by_phase"] = timer.summary()
    _add_final_eval(stats, metrics, task.headline_key)
    extra: dict[str, Any] = {
        "method": f"retrain-{args.scheme}",
        "scheme": args.scheme,
        "source": {"model": args.model, **source_info},
        "density": source_info.get("density"),
        "best_eval": stats.get("best_eval"),
        "schedule": {**scheduler.summary(), "same_on_all_ranks": same_draws} if scheduler else None,
        "factor_budget": budget,
        "modules_detached": detached,
        "teacher": args.teacher if teacher is not None else None,
        "train": stats,
        "predictions": predictions,
        **pruning_diagnostics_of(args.model),
    }
    record = stage_metrics("retrain", task, metrics, model, asdict_all(args, data_args, run_args, train_args),
                           now() - t0, data, **extra)
    with atomic_output_dir(out) as tmp:
        save_lowrank_model(model.cpu(), tmp, tokenizer)
        write_completion(tmp, record)  # README.md, then metrics.json last
    _cleanup_checkpoints(out)
    dist.finish()
    return record


def _factor_budget(args: RetrainArgs, train_args: TrainArgs, n_train: int) -> dict[str, Any]:
    """The steps this run takes and the learning-rate integral its factors receive, against plain
    re-training with the same epochs / max steps (docs/METHOD.md, Stage 3: fair budgets)."""
    from lpaf.mixed_rank import factor_lr_integral, linear_lr_multipliers, matched_total_steps

    per_epoch = max(1, math.ceil(n_train / train_args.batch_size))
    plain_steps = train_args.max_steps if train_args.max_steps > 0 else math.ceil(train_args.epochs * per_epoch)
    schedule = args.schedule()
    total = plain_steps
    if args.scheme == "mixed-rank" and args.factor_budget == "matched":
        total = matched_total_steps(plain_steps, schedule, train_args.warmup_ratio)
    plain_integral = float(linear_lr_multipliers(plain_steps, train_args.warmup_ratio).sum())
    factor_integral = (factor_lr_integral(total, schedule, train_args.warmup_ratio) if args.scheme == "mixed-rank"
                       else float(linear_lr_multipliers(total, train_args.warmup_ratio).sum()))
    return {"mode": args.factor_budget if args.scheme == "mixed-rank" else "plain", "plain_steps": plain_steps,
            "total_steps": total, "plain_lr_integral": plain_integral, "factor_lr_integral": factor_integral,
            "factor_lr_share": factor_integral / plain_integral if plain_integral > 0 else None}


def _add_final_eval(stats: dict[str, Any], metrics: dict[str, float], headline_key: str) -> None:
    """The end of training is a dev evaluation too: count it in the history and the best."""
    history = stats.setdefault("eval_history", [])
    if not history or history[-1]["step"] != stats["train_steps"]:
        history.append({"step": stats["train_steps"], "epoch": None, **metrics})
    stats["best_eval"] = max(history, key=lambda h: h[headline_key])


def _cleanup_checkpoints(out) -> None:
    import shutil

    shutil.rmtree(checkpoint_dir_for(out), ignore_errors=True)
