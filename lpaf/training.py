"""The one training path of every stage: HF ``Trainer`` with a pluggable loss.

Loss = task loss (cross-entropy; MSE for regression; mean of start/end cross-entropy for QA),
optionally mixed with logit distillation from a teacher:
``alpha * KL(student/T || teacher/T) * T^2 + (1 - alpha) * task loss`` (for regression the
distillation term is the MSE between student and teacher predictions, as KL is undefined).
Stages plug in extra optimizer parameter groups (pruning scores), extra loss terms (L1 on soft
movement scores) and callbacks (mask schedules, mixed-rank sampling).

Checkpoints go to a directory beside the stage's output; a run started again resumes from the
last one (model, optimizer, scheduler, RNG states, plus whatever stateful callbacks save).
SIGTERM/SIGINT (what SLURM sends at a time limit or preemption) saves a checkpoint and raises
:class:`Preempted`.

Under ``torchrun`` (DDP, :mod:`lpaf.distributed`) ``--batch-size`` stays the global batch, the
model is wrapped in DistributedDataParallel without buffer broadcasts (lpaf's buffers — masks,
source matrices — are updated identically on every rank) and with unused-parameter detection only
when a stage asks for it; only rank 0 prints, evaluates during training and writes lpaf's state
files into checkpoints.
"""

from __future__ import annotations

import math
import os
import re
import signal
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import PrinterCallback

from lpaf import distributed as dist
from lpaf.console import Progress
from lpaf.deadline import arm_signal_before_end
from lpaf.errors import LpafError
from lpaf.tasks import TaskSpec
from lpaf.teacher_cache import INDEX_KEY


class Preempted(Exception):
    """Training was interrupted by a signal after saving a checkpoint; rerun to resume."""

    exit_code = 75  # EX_TEMPFAIL: try again

    def __init__(self, message: str):
        super().__init__(" ".join(message.split()))


@dataclass
class TrainArgs:
    epochs: float = field(default=3.0, metadata={"help": "training epochs"})
    lr: float = field(default=2e-5, metadata={"help": "peak learning rate of the model weights"})
    batch_size: int = field(default=32, metadata={
        "help": "training batch size: the global batch, split evenly over the processes under torchrun"})
    eval_batch_size: int = field(default=64, metadata={"help": "evaluation batch size"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay (not on biases/LayerNorm)"})
    warmup_ratio: float = field(default=0.1, metadata={"help": "fraction of steps of linear LR warm-up"})
    max_steps: int = field(default=-1, metadata={"help": "stop after this many steps (overrides --epochs when > 0)"})
    save_steps: int = field(default=200, metadata={"help": "checkpoint every N steps (resume point)"})
    save_total_limit: int = field(default=2, metadata={"help": "keep at most N checkpoints"})
    logging_steps: int = field(default=50, metadata={"help": "log the loss every N steps"})
    distill_alpha: float = field(default=0.0, metadata={"help": "weight of the distillation term (0 = off)"})
    temperature: float = field(default=2.0, metadata={"help": "distillation temperature"})
    teacher_cache: bool = field(default=True, metadata={
        "help": "distillation reads the teacher's outputs on the training set from a cache computed once per "
                "teacher and training set (lpaf.teacher_cache; exact, as the teacher runs in eval mode); "
                "--no-teacher-cache runs the teacher at every step (always so under torchrun)"})
    dataloader_num_workers: int = field(default=0, metadata={
        "help": "DataLoader worker processes (0: load batches in the training process)"})
    report_to: Literal["none", "tensorboard"] = field(default="none", metadata={
        "help": "where the Trainer logs loss and learning rate while it runs (tensorboard: pip install -e "
                "\".[tensorboard]\")"})
    logging_dir: str | None = field(default=None, metadata={
        "help": "TensorBoard log directory (default: <out>.tensorboard beside the output)"})

    def __post_init__(self):
        problems = []
        if self.dataloader_num_workers < 0:
            problems.append(f"--dataloader-num-workers must be >= 0 (got {self.dataloader_num_workers})")
        if not self.epochs > 0 and self.max_steps <= 0:
            problems.append(f"--epochs must be > 0 (got {self.epochs})")
        if not self.lr > 0:
            problems.append(f"--lr must be > 0 (got {self.lr})")
        if self.batch_size < 1 or self.eval_batch_size < 1:
            problems.append("--batch-size and --eval-batch-size must be >= 1")
        else:
            try:
                dist.per_device_batch(self.batch_size)
            except LpafError as e:
                problems.append(str(e))
        if not 0.0 <= self.distill_alpha <= 1.0:
            problems.append(f"--distill-alpha must be in [0, 1] (got {self.distill_alpha})")
        if not self.temperature > 0:
            problems.append(f"--temperature must be > 0 (got {self.temperature})")
        if not 0.0 <= self.warmup_ratio < 1.0:
            problems.append(f"--warmup-ratio must be in [0, 1) (got {self.warmup_ratio})")
        if self.save_total_limit < 1:
            problems.append(f"--save-total-limit must be >= 1 (got {self.save_total_limit})")
        if problems:
            raise LpafError("; ".join(problems))


def task_loss(task: TaskSpec, outputs, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    if task.is_qa:
        return 0.5 * (F.cross_entropy(outputs.start_logits.float(), inputs["start_positions"])
                      + F.cross_entropy(outputs.end_logits.float(), inputs["end_positions"]))
    if task.is_regression:
        return F.mse_loss(outputs.logits.squeeze(-1).float(), inputs["labels"].float())
    return F.cross_entropy(outputs.logits.float(), inputs["labels"])


def kd_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher/T || student/T) * T^2, batch mean — the Hinton distillation term."""
    t = temperature
    return F.kl_div(F.log_softmax(student_logits.float() / t, dim=-1), F.softmax(teacher_logits.float() / t, dim=-1),
                    reduction="batchmean") * t * t


def distillation_term(task: TaskSpec, outputs, teacher_outputs, temperature: float) -> torch.Tensor:
    if task.is_qa:
        return 0.5 * (kd_kl(outputs.start_logits, teacher_outputs.start_logits, temperature)
                      + kd_kl(outputs.end_logits, teacher_outputs.end_logits, temperature))
    if task.is_regression:
        return F.mse_loss(outputs.logits.float(), teacher_outputs.logits.float())
    return kd_kl(outputs.logits, teacher_outputs.logits, temperature)


def combined_loss(task: TaskSpec, outputs, inputs, teacher_outputs, alpha: float, temperature: float) -> torch.Tensor:
    loss = task_loss(task, outputs, inputs)
    if teacher_outputs is not None and alpha > 0:
        loss = alpha * distillation_term(task, outputs, teacher_outputs, temperature) + (1 - alpha) * loss
    return loss


LABEL_KEYS = ("labels", "start_positions", "end_positions")


class LpafTrainer(Trainer):
    """Trainer with the task/distillation loss, extra loss terms and extra param groups."""

    def __init__(self, *args, task: TaskSpec, teacher: nn.Module | None, distill_alpha: float, temperature: float,
                 extra_loss: Callable[[nn.Module], torch.Tensor] | None = None,
                 extra_param_groups: Sequence[dict] = (), teacher_outputs=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.task = task
        self.teacher = teacher
        self.teacher_outputs = teacher_outputs  # lpaf.teacher_cache.TeacherOutputs: the teacher, read from a cache
        self.distill_alpha = distill_alpha
        self.temperature = temperature
        self.extra_loss = extra_loss
        self.extra_param_groups = list(extra_param_groups)
        if self.teacher is not None:
            self.teacher.to(self.args.device).eval()
            for p in self.teacher.parameters():
                p.requires_grad_(False)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        index = inputs.pop(INDEX_KEY, None)  # examples' positions in the training set (teacher cache)
        model_inputs = {k: v for k, v in inputs.items() if k not in LABEL_KEYS}
        outputs = model(**model_inputs)
        teacher_outputs = None
        if self.teacher_outputs is not None and index is not None and self.distill_alpha > 0:
            teacher_outputs = self.teacher_outputs.lookup(index, model_inputs["input_ids"].device,
                                                          length=model_inputs["input_ids"].shape[-1])
        elif self.teacher is not None and self.distill_alpha > 0:
            with torch.no_grad():
                teacher_outputs = self.teacher(**model_inputs)
        loss = combined_loss(self.task, outputs, inputs, teacher_outputs, self.distill_alpha, self.temperature)
        if self.extra_loss is not None:
            loss = loss + self.extra_loss(model)
        return (loss, outputs) if return_outputs else loss

    def create_optimizer(self, model=None):
        if self.optimizer is not None:
            return self.optimizer
        model = model if model is not None else self.model
        claimed = {id(p) for g in self.extra_param_groups for p in g["params"]}
        decay, no_decay = [], []
        for name, p in model.named_parameters():
            if not p.requires_grad or id(p) in claimed:
                continue
            (no_decay if p.ndim < 2 or "LayerNorm" in name or name.endswith("bias") else decay).append(p)
        groups = [{"params": decay, "weight_decay": self.args.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        groups += [dict(g) for g in self.extra_param_groups]
        groups = [g for g in groups if g["params"]]
        self.optimizer = torch.optim.AdamW(groups, lr=self.args.learning_rate,
                                           betas=(self.args.adam_beta1, self.args.adam_beta2),
                                           eps=self.args.adam_epsilon)
        return self.optimizer


class StepTimer(TrainerCallback):
    """Wall time of every optimizer step (for the step-time figures in metrics.json)."""

    def __init__(self):
        self.step_times_s: list[float] = []
        self._t0 = None

    def on_step_begin(self, args, state, control, **kwargs):
        self._t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self._t0 is not None:
            self.step_times_s.append(time.perf_counter() - self._t0)

    def summary(self) -> dict[str, float]:
        t = np.asarray(self.step_times_s[1:] or self.step_times_s or [math.nan])  # first step warms up
        return {"steps_timed": int(t.size), "step_time_s_mean": float(t.mean()), "step_time_s_median": float(np.median(t))}


class TrainProgress(TrainerCallback):
    """The optimizer steps on stderr (rank 0 only): a tqdm bar with the loss and learning rate on a
    terminal; elsewhere a line at every ``--logging-steps`` and one at the end, e.g.
    ``train: step 120/1000 (12%) loss 0.41 lr 2.1e-05 elapsed 3m10s eta 23m05s``. A resumed run counts
    from its checkpoint's step and estimates the time left from the steps of this run only."""

    def __init__(self):
        self.progress: Progress | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.progress = Progress(state.max_steps, "train", "step", every=0, initial=state.global_step, leave=True)

    def on_step_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.update(state.global_step - self.progress.done)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.progress is None or not logs:
            return
        if "loss" in logs:  # every --logging-steps
            self.progress.note(loss=float(logs["loss"]), lr=f"{float(logs.get('learning_rate', math.nan)):.1e}")
            self.progress.emit()
        elif "train_loss" in logs:  # the end of training: the run's mean loss, not the last logged one
            self.progress.fields = {}
            self.progress.note(**{"mean loss": float(logs["train_loss"])})

    def on_train_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.close()
            self.progress = None


class SignalCheckpoint(TrainerCallback):
    """On SIGTERM/SIGINT, or SIGUSR1 (raised ahead of a SLURM time limit by lpaf.deadline, or sent by
    ``scancel --signal=USR1`` / ``sbatch --signal`` in a plain batch script): finish the current step,
    save a checkpoint, stop training; the stage then exits 75 and the same command resumes."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)

    def __init__(self):
        self.signal_received: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self):
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame):
        self.signal_received = signum

    def on_step_end(self, args, state, control, **kwargs):
        # Fault injection for the resume tests: behave as if SLURM sent SIGTERM after step N.
        fault_step = os.environ.get("LPAF_FAULT_SIGTERM_AT_STEP")
        if fault_step and state.global_step == int(fault_step) and self.signal_received is None:
            self.signal_received = signal.SIGTERM
        # ... or deliver a real signal to this process at step N: LPAF_FAULT_SIGNAL_AT_STEP="N:USR1"
        fault = os.environ.get("LPAF_FAULT_SIGNAL_AT_STEP")
        if fault and self.signal_received is None:
            step, _, name = fault.partition(":")
            if state.global_step == int(step):
                os.kill(os.getpid(), getattr(signal, f"SIG{name or 'TERM'}"))
        # ... or make every step take at least this long (the time-limit tests, on machines of any speed)
        step_sleep_s = os.environ.get("LPAF_FAULT_STEP_SLEEP_S")
        if step_sleep_s:
            time.sleep(float(step_sleep_s))
        # Under DDP every rank must stop after the same step, or the others wait for it in the next
        # all-reduce: a signal seen by any rank stops them all (one scalar all-reduce per step).
        if dist.any_rank(self.signal_received is not None, args.device) and self.signal_received is None:
            self.signal_received = signal.SIGTERM
        if self.signal_received is not None:
            control.should_save = True
            control.should_training_stop = True
        return control


class EvalCallback(TrainerCallback):
    """Dev evaluation every ``every_steps`` (or at epoch ends): history and best score.

    Under DDP only rank 0 evaluates (every rank holds the same weights); the others skip it."""

    def __init__(self, evaluate_fn: Callable[[nn.Module], dict[str, float]], headline_key: str, every_steps: int = 0):
        self.evaluate_fn = evaluate_fn
        self.headline_key = headline_key
        self.every_steps = every_steps
        self.history: list[dict[str, Any]] = []

    def _run(self, state, model):
        if not dist.is_main_process():
            return
        metrics = self.evaluate_fn(model)
        model.train()
        self.history.append({"step": state.global_step, "epoch": state.epoch, **metrics})

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.every_steps and state.global_step % self.every_steps == 0:
            self._run(state, model)

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        if not self.every_steps:
            self._run(state, model)

    def best(self) -> dict[str, Any] | None:
        if not self.history:
            return None
        return max(self.history, key=lambda h: h[self.headline_key])


def last_checkpoint(checkpoint_dir: Path) -> Path | None:
    if not checkpoint_dir.is_dir():
        return None
    ckpts = [p for p in checkpoint_dir.iterdir() if p.is_dir() and re.fullmatch(r"checkpoint-\d+", p.name)
             and (p / "trainer_state.json").is_file()]
    return max(ckpts, key=lambda p: int(p.name.split("-")[1]), default=None)


RESUME_KEY_FILE = "lpaf_resume_key.json"
# Settings that do not change the trained weights: a resumed run may change them.
_NOT_IN_RESUME_KEY = ("save_steps", "save_total_limit", "logging_steps", "eval_batch_size", "dataloader_num_workers",
                      "report_to", "logging_dir", "teacher_cache")


def resume_key(train_args: TrainArgs, seed: int, precision: str, n_train: int, model: nn.Module,
               with_teacher: bool) -> dict[str, Any]:
    """What a checkpoint must have been written with to be resumed: the training settings, seed,
    precision, number of training examples and the model's parameter shapes (hashed)."""
    import hashlib

    shapes = ";".join(f"{n}:{tuple(p.shape)}" for n, p in model.named_parameters())
    settings = {k: v for k, v in asdict(train_args).items() if k not in _NOT_IN_RESUME_KEY}
    return {"train_args": settings, "seed": seed, "precision": precision, "n_train_examples": n_train,
            "teacher": with_teacher, "parameters": hashlib.sha256(shapes.encode()).hexdigest()[:16]}


def _check_resume_key(checkpoint_dir: Path, key: dict[str, Any], resuming: bool) -> None:
    """Refuse to resume from checkpoints another command wrote (say which setting differs);
    record the key when a run starts from scratch."""
    import json

    path = checkpoint_dir / RESUME_KEY_FILE
    if resuming and path.is_file():
        saved = json.loads(path.read_text(encoding="utf-8"))
        flat_saved = {**saved.get("train_args", {}), **{k: v for k, v in saved.items() if k != "train_args"}}
        flat_now = {**key["train_args"], **{k: v for k, v in key.items() if k != "train_args"}}
        differs = sorted(k for k in set(flat_saved) | set(flat_now) if flat_saved.get(k) != flat_now.get(k))
        if differs:
            k = differs[0]
            raise LpafError(f"{checkpoint_dir} holds checkpoints of a run with other settings ({k}: "
                            f"{flat_saved.get(k)!r} then, {flat_now.get(k)!r} now); rerun the same command to resume, "
                            f"or delete that directory to start over")
        return
    if dist.is_main_process():  # every rank checks the key on resume; rank 0 alone writes it
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(key, sort_keys=True, default=str), encoding="utf-8")


def _report_to(train_args: TrainArgs, checkpoint_dir: Path) -> list[str]:
    if train_args.report_to == "none":
        return []
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise LpafError("--report-to tensorboard needs the tensorboard extra: pip install -e \".[tensorboard]\"") from None
    return [train_args.report_to]


def _logging_dir(train_args: TrainArgs, checkpoint_dir: Path) -> str | None:
    """TensorBoard logs beside the output, not in the checkpoint directory (deleted at the end)."""
    if train_args.report_to == "none":
        return None
    if train_args.logging_dir:
        return train_args.logging_dir
    name = checkpoint_dir.name.removeprefix(".").removesuffix(".checkpoints")
    return str(checkpoint_dir.parent / f"{name}.tensorboard")


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise LpafError("--device cuda was asked for but no CUDA device is available (use --device cpu or auto)")
    return device


def train_model(model: nn.Module, task: TaskSpec, train_dataset, collator, train_args: TrainArgs,
                checkpoint_dir: str | Path, *, seed: int, device: str = "auto", precision: str = "fp32",
                teacher: nn.Module | None = None, callbacks: Sequence[TrainerCallback] = (),
                extra_param_groups: Sequence[dict] = (), extra_loss=None,
                evaluate_fn: Callable[[nn.Module], dict[str, float]] | None = None,
                eval_every_steps: int = 0, find_unused_parameters: bool = False,
                log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train ``model`` in place; return training statistics for metrics.json.

    Stateful callbacks may implement ``state_dict()`` / ``load_state_dict(d)``; their state is saved
    in every checkpoint (``lpaf_callbacks.json``) and restored on resume.

    Under torchrun, ``train_args.batch_size`` is the global batch (each of the N processes takes
    1/N of it) and ``find_unused_parameters`` tells DDP that some parameters get no gradient in
    some steps (mixed-rank branches, frozen pruning scores); it costs a graph traversal per step,
    so stages ask for it only when they need it. Every rank returns the same statistics; rank 0
    alone evaluates (``evaluate_fn``) and prints.
    """
    checkpoint_dir = Path(checkpoint_dir)
    device = resolve_device(device)
    if precision != "fp32" and device != "cuda":
        raise LpafError(f"--precision {precision} needs --device cuda; on CPU use fp32")
    if not dist.is_main_process():
        log = _silent
    processes = dist.world_size()
    per_device = dist.per_device_batch(train_args.batch_size, processes)
    targs = TrainingArguments(
        output_dir=str(checkpoint_dir),
        num_train_epochs=train_args.epochs,
        max_steps=train_args.max_steps,
        learning_rate=train_args.lr,
        per_device_train_batch_size=per_device,
        per_device_eval_batch_size=train_args.eval_batch_size,
        weight_decay=train_args.weight_decay,
        warmup_steps=train_args.warmup_ratio,  # a float < 1 is a ratio in transformers 5
        lr_scheduler_type="linear",
        logging_steps=train_args.logging_steps,
        save_strategy="steps",
        save_steps=train_args.save_steps,
        save_total_limit=train_args.save_total_limit,
        eval_strategy="no",
        seed=seed,
        data_seed=seed,
        use_cpu=device == "cpu",
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        report_to=_report_to(train_args, checkpoint_dir),
        disable_tqdm=True,  # no Trainer bar or printed log dicts: TrainProgress shows the steps
        dataloader_num_workers=train_args.dataloader_num_workers,
        remove_unused_columns=False,
        ddp_find_unused_parameters=find_unused_parameters,  # HF's default (True for every model) costs every step
        ddp_broadcast_buffers=False,  # masks, EMAs and source matrices are equal on every rank by construction
    )
    teacher_outputs = None
    if teacher is not None and train_args.distill_alpha > 0 and train_args.teacher_cache and processes == 1:
        from lpaf.teacher_cache import IndexedDataset, load_or_compute

        teacher_outputs = load_or_compute(teacher.to(targs.device), train_dataset, collator, targs.device, precision,
                                          train_args.eval_batch_size, log=log)
        train_dataset, teacher = IndexedDataset(train_dataset), teacher.to("cpu")  # read, not run: off the GPU
    if processes == 1 and targs.n_gpu > 1:
        # HF would wrap the model in DataParallel and multiply the batch by the GPU count.
        log(dist.single_process_warning(targs.n_gpu))
        targs._n_gpu = 1
    timer = StepTimer()
    stopper = SignalCheckpoint()
    eval_cb = EvalCallback(evaluate_fn, task.headline_key, eval_every_steps) if evaluate_fn else None
    stateful = [cb for cb in callbacks if hasattr(cb, "state_dict")]
    all_callbacks = [timer, stopper, *callbacks, _CallbackStateSaver(stateful, eval_cb)]
    if eval_cb is not None:
        all_callbacks.append(eval_cb)
    if dist.is_main_process():
        all_callbacks.append(TrainProgress())
    tb_dir = _logging_dir(train_args, checkpoint_dir)
    if tb_dir is not None:  # transformers 5's TensorBoard callback reads its directory from the environment
        os.environ["TENSORBOARD_LOGGING_DIR"] = tb_dir
    # torch 2.13 renames DDP's broadcast_buffers (forward_sync_buffers); HF only passes the old name.
    warnings.filterwarnings("ignore", message="`broadcast_buffers` is deprecated", category=FutureWarning)
    trainer = LpafTrainer(model=model, args=targs, train_dataset=train_dataset, data_collator=collator,
                          callbacks=all_callbacks, task=task, teacher=None if teacher_outputs is not None else teacher,
                          distill_alpha=train_args.distill_alpha, temperature=train_args.temperature,
                          extra_loss=extra_loss, extra_param_groups=extra_param_groups,
                          teacher_outputs=teacher_outputs)
    trainer.remove_callback(PrinterCallback)  # disable_tqdm's stand-in prints raw log dicts
    resume = last_checkpoint(checkpoint_dir)
    _check_resume_key(checkpoint_dir, resume_key(train_args, seed, precision, len(train_dataset), model,
                                                 teacher is not None), resuming=resume is not None)
    if resume is not None:
        step = int(resume.name.split("-")[1])
        log(f"lpaf: resuming from checkpoint {resume} (step {step})")
        _CallbackStateSaver.restore(resume, stateful, eval_cb)
    t0 = time.perf_counter()
    stopper.install()
    # SIGUSR1 before a SLURM time limit (LPAF_SIGNAL_BEFORE_END_S): the stopper checkpoints and stops
    deadline = arm_signal_before_end()
    try:
        result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    finally:
        if deadline is not None:
            deadline.cancel()
        stopper.uninstall()
    if stopper.signal_received is not None:
        name = signal.Signals(stopper.signal_received).name
        raise Preempted(f"received {name}; checkpoint saved at step {trainer.state.global_step} in "
                        f"{checkpoint_dir}; rerun the same command to resume")
    stats = {
        "train_steps": trainer.state.global_step,
        "train_examples": len(train_dataset),
        "train_loss": _global_mean(float(result.training_loss), targs.device),
        "world_size": processes,
        "per_device_batch_size": per_device,
        "global_batch_size": per_device * processes,
        "ddp_find_unused_parameters": find_unused_parameters if processes > 1 else None,
        "train_wall_time_s": time.perf_counter() - t0,
        "resumed_from_step": int(resume.name.split("-")[1]) if resume else None,
        # (step, logged training loss): a run that learns nothing (a flat or exploding loss) shows here
        "loss_history": [[int(e["step"]), float(e["loss"])] for e in trainer.state.log_history
                         if "loss" in e and "step" in e],
        **timer.summary(),
    }
    if eval_cb is not None:
        stats["eval_history"] = eval_cb.history
        stats["best_eval"] = eval_cb.best()
    return stats


def _silent(message: str) -> None:
    """The log of ranks other than 0."""


def _global_mean(value: float, device) -> float:
    """The mean of a per-rank value over the ranks (itself in a single process).

    The Trainer's ``training_loss`` is the all-gathered mean of the logged losses plus this rank's
    loss since the last log: the mean over ranks is the global batch's loss, as in one process.
    """
    if not dist.is_distributed():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce_mean_([t])
    return float(t.item())


class _CallbackStateSaver(TrainerCallback):
    """Writes stateful callbacks' JSON state into each checkpoint so resume restores it.

    Under DDP rank 0 writes (every rank holds the same state) and all ranks then meet at a barrier,
    so no rank leaves (or is stopped by a signal) before the checkpoint is complete; on resume every
    rank reads it."""

    FILE = "lpaf_callbacks.json"

    def __init__(self, stateful: Sequence[Any], eval_cb: EvalCallback | None):
        self.stateful = list(stateful)
        self.eval_cb = eval_cb

    def on_save(self, args, state, control, **kwargs):
        ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if dist.is_main_process() and ckpt.is_dir():
            from lpaf.artifacts import write_json

            blob = {"callbacks": [cb.state_dict() for cb in self.stateful],
                    "eval_history": self.eval_cb.history if self.eval_cb else []}
            write_json(ckpt / self.FILE, blob)
            for cb in self.stateful:
                if hasattr(cb, "save_tensors"):
                    cb.save_tensors(ckpt)
        dist.barrier()

    @classmethod
    def restore(cls, ckpt: Path, stateful: Sequence[Any], eval_cb: EvalCallback | None) -> None:
        from lpaf.artifacts import read_json

        path = ckpt / cls.FILE
        if not path.is_file():
            return
        blob = read_json(path)
        for cb, st in zip(stateful, blob["callbacks"]):
            cb.load_state_dict(st)
            if hasattr(cb, "load_tensors"):
                cb.load_tensors(ckpt)
        if eval_cb is not None:
            eval_cb.history = list(blob.get("eval_history", []))


def train_args_dict(train_args: TrainArgs) -> dict[str, Any]:
    return asdict(train_args)
