"""Stage 1: prune the encoder linears (movement / magnitude / soft movement / PLATON).

Two starts (docs/METHOD.md, Stage 1):
- **fine-tuned** (``--model`` is an ``lpaf finetune`` output): pruning continues training the teacher
  and distils from a frozen copy of it, or from ``--teacher``;
- **pre-trained** (``--model`` is a hub id or a model directory that is not an lpaf artifact):
  fine-pruning as Sanh et al. and PLATON's scripts run it: the task head is initialised as
  ``lpaf finetune`` does, and the student prunes while it learns the task, distilling from the
  fine-tuned ``--teacher``.

Out: a stock transformers checkpoint with the zeros in the weights, ``masks.safetensors`` (boolean
keep masks) and ``scores.safetensors`` (final importance, float32), both keyed by module name (what
``lpaf factorize`` reads), and ``metrics.json`` (with ``start`` and the ``teacher`` it distilled from).
Under torchrun every process trains and prunes; the masks are checked to be identical on every
rank (recorded as ``masks_identical_across_ranks``), and rank 0 alone evaluates and writes.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lpaf import distributed as dist
from lpaf.analysis import magnitude_overlap
from lpaf.artifacts import is_complete, read_json, require_complete
from lpaf.errors import LpafError
from lpaf.pruning import (LEARNED_SCORE_METHODS, PLATON_REFERENCE_WINDOW, PlatonMode, PruneMethod, Pruner, PruneScope,
                          PruningCallback, ScoreInit, check_settings, platon_betas_for)
from lpaf.stages.common import (DataArgs, RunArgs, asdict_all, atomic_output_dir, checkpoint_dir_for, evaluate_model,
                                evaluate_with_predictions, load_model, load_task_data, load_tokenizer, now,
                                prepare_output, save_model_dir, seed_everything, stage_metrics, write_completion, METRICS_FILE)
from lpaf.training import TrainArgs, resolve_device, train_model

MASKS_FILE = "masks.safetensors"
SCORES_FILE = "scores.safetensors"


@dataclass
class PruneArgs:
    model: str = field(metadata={
        "help": "the model to prune: an lpaf finetune output (fine-tuned start; distils from a frozen copy of "
                "itself unless --teacher is given), or a pre-trained model, hub id or directory (fine-pruning "
                "from the pre-trained weights; needs --teacher)"})
    out: str = field(metadata={"help": "output directory (pruned model, masks, scores, metrics.json)"})
    teacher: str | None = field(default=None, metadata={
        "help": "distil from this fine-tuned lpaf artifact (same task and architecture as --model)"})
    model_revision: str | None = field(default=None, metadata={"help": "hub revision of a pre-trained --model"})
    method: PruneMethod = field(default="movement", metadata={"help": "importance score"})
    density: float = field(default=0.25, metadata={"help": "final fraction of encoder linear weights kept, in (0, 1]"})
    scope: PruneScope = field(default="local", metadata={
        "help": "local: every matrix keeps round(density*m*n) weights; global: top-k over all encoder weights"})
    scores_lr: float = field(default=1e-2, metadata={"help": "learning rate of the movement scores"})
    score_init: ScoreInit = field(default="magnitude", metadata={
        "help": "movement scores start at score-init-scale*|W|/mean|W| (a magnitude prior the learned part "
                "reorders), or at 0 as in Sanh et al. (needs thousands of steps to beat a random mask)"})
    score_init_scale: float = field(default=1.0, metadata={"help": "scale of the magnitude score initialisation"})
    initial_warmup: float = field(default=0.1, metadata={
        "help": "fraction of the steps at density 1 before pruning starts"})
    final_warmup: float = field(default=0.2, metadata={
        "help": "fraction of the steps at the final density with frozen masks (the masks' fine-tuning)"})
    scores_only_warmup: bool = field(default=False, metadata={
        "help": "during the initial warm-up train only the scores (the weights stay the teacher's)"})
    soft_l1: float = field(default=10.0, metadata={"help": "soft movement: final weight of the L1 on sigmoid(scores)"})
    platon_mode: PlatonMode = field(default="per-step", metadata={
        "help": "PLATON: per-step (this project's reading: EMAs every step, masks frozen at the final warm-up) or "
                "reference (QingruZhang/PLATON to the letter: ΔT-window averages, EMAs once per window, global "
                "top-k, per-task betas, re-masking every step in the final warm-up; needs --scope global)"})
    platon_window: int = field(default=PLATON_REFERENCE_WINDOW, metadata={
        "help": "PLATON reference mode: ΔT, the window length and mask interval in steps"})
    platon_beta1: float | None = field(default=None, metadata={
        "help": "PLATON: EMA factor of the sensitivity (default 0.85)"})
    platon_beta2: float | None = field(default=None, metadata={
        "help": "PLATON: EMA factor of its uncertainty (default: the reference scripts' value for the task in "
                "reference mode, else 0.95)"})
    mask_update_every: int = field(default=1, metadata={
        "help": "recompute the masks every N schedule steps (the reference mode uses --platon-window instead)"})
    zero_pruned_weights: bool = field(default=False, metadata={
        "help": "set pruned weights to 0 at every mask update, so they cannot come back; default: they keep "
                "their values behind the mask (the reference mode zeroes them and lets the optimizer move them)"})
    distill: bool = field(default=True, metadata={
        "help": "distil from the teacher (weight --distill-alpha); --no-distill trains on the labels only"})
    eval_every_steps: int = field(default=0, metadata={"help": "dev evaluation every N steps (0: each epoch end)"})

    def __post_init__(self):
        problems = check_settings(self.method, self.density, self.scope, self.initial_warmup, self.final_warmup,
                                  self.scores_lr, self.score_init, self.score_init_scale, self.soft_l1,
                                  [b for b in (self.platon_beta1, self.platon_beta2) if b is not None],
                                  self.mask_update_every, self.platon_mode, self.platon_window,
                                  self.zero_pruned_weights)
        if self.eval_every_steps < 0:
            problems.append(f"--eval-every-steps must be >= 0 (got {self.eval_every_steps})")
        if problems:
            raise LpafError("; ".join(problems))

    def platon_betas(self, task: str) -> tuple[float, float]:
        """The betas this run uses: the given ones, else per task (reference mode) or the default."""
        default = platon_betas_for(task, self.platon_mode)
        return (default[0] if self.platon_beta1 is None else self.platon_beta1,
                default[1] if self.platon_beta2 is None else self.platon_beta2)

    def make_pruner(self, task: str) -> Pruner:
        return Pruner(self.method, self.density, scope=self.scope, initial_warmup=self.initial_warmup,
                      final_warmup=self.final_warmup, scores_lr=self.scores_lr, score_init=self.score_init,
                      score_init_scale=self.score_init_scale, scores_only_warmup=self.scores_only_warmup,
                      soft_l1=self.soft_l1, platon_betas=self.platon_betas(task),
                      mask_update_every=self.mask_update_every, zero_pruned_weights=self.zero_pruned_weights,
                      platon_mode=self.platon_mode, platon_window=self.platon_window)


def run(args: PruneArgs, data_args: DataArgs, run_args: RunArgs, train_args: TrainArgs) -> dict:
    out = prepare_output(args.out)
    task = data_args.spec
    train_args = _setup_train_args(args, train_args)
    start = check_start(args, task.name, train_args.distill_alpha)  # before any loading
    seed_everything(run_args.seed)
    device = resolve_device(run_args.device)
    tokenizer = load_tokenizer(args.model, args.model_revision)
    if start == "pretrained":  # the task head initialised as lpaf finetune does it (same seed, same call)
        model = load_model(args.model, task, args.model_revision, expect="pretrained")
    else:
        model = load_model(args.model, task, expect="dense")
    teacher = _setup_teacher(args, model, task, train_args)  # a self-copy is taken before the masks go on
    start_weights = _encoder_weights(model)  # for the learned-or-magnitude diagnostic
    pruner = args.make_pruner(task.name)
    pruner.prepare(model)
    data = load_task_data(data_args, tokenizer)

    t0 = now()
    stats = train_model(model, task, data.train, data.collator, train_args, checkpoint_dir_for(out),
                        seed=run_args.seed, device=run_args.device, precision=run_args.precision, teacher=teacher,
                        callbacks=[PruningCallback(pruner)], extra_param_groups=pruner.param_groups(),
                        extra_loss=pruner.regularization if args.method == "soft-movement" else None,
                        evaluate_fn=lambda m: evaluate_model(m, data, train_args.eval_batch_size, device),
                        eval_every_steps=args.eval_every_steps,
                        # learned scores stop receiving gradients once the masks freeze
                        find_unused_parameters=args.method in LEARNED_SCORE_METHODS)
    masks = pruner.masks()
    identical = dist.same_on_all_ranks(masks)  # a collective: every rank, before the workers leave
    if identical is False:
        raise RuntimeError("internal error: the pruning masks differ between DDP ranks")
    if not dist.is_main_process():  # rank 0 evaluates and writes the artifact; the others wait for it
        dist.finish()
        return {}
    scores, density = pruner.scores(), pruner.density_report()
    overlap = magnitude_overlap(masks, start_weights)
    del start_weights
    pruning_times = pruner.step_time_summary()
    pruner.squash()
    metrics, predictions = evaluate_with_predictions(model, data, train_args.eval_batch_size, device)
    record = stage_metrics("prune", task, metrics, model, asdict_all(args, data_args, run_args, train_args),
                           now() - t0, data, method=args.method, density=args.density, achieved_density=density,
                           start=start, teacher=_teacher_summary(args, teacher),
                           platon=_platon_summary(args, pruner), pruning_step_time=pruning_times, train=stats,
                           magnitude_overlap=overlap, masks_identical_across_ranks=identical,
                           predictions=predictions,
                           best_eval=best_at_final_density(stats, metrics, pruner, task.headline_key))
    with atomic_output_dir(out) as tmp:
        save_model_dir(tmp, model.cpu(), tokenizer)
        _save_tensors(tmp / MASKS_FILE, masks, args)
        _save_tensors(tmp / SCORES_FILE, scores, args)
        write_completion(tmp, record)  # README.md, then metrics.json last
    _cleanup_checkpoints(out)
    dist.finish()
    return record


def _encoder_weights(model) -> dict:
    """CPU copies of the encoder linear weights pruning starts from (the teacher's)."""
    from lpaf.modules import find_encoder_linears

    return {n: m.weight.detach().to("cpu", copy=True) for n, m in find_encoder_linears(model).items()}


def _setup_train_args(args: PruneArgs, train_args: TrainArgs) -> TrainArgs:
    """--no-distill means no distillation term at all (and no teacher copy in memory)."""
    return train_args if args.distill else dataclasses.replace(train_args, distill_alpha=0.0)


ARCHITECTURE_KEYS = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                     "vocab_size")


def start_of(model: str) -> str:
    """"finetuned" for an lpaf artifact (a directory with metrics.json), else "pretrained"."""
    return "finetuned" if Path(model).is_dir() and is_complete(model) else "pretrained"


def check_start(args: PruneArgs, task: str, distill_alpha: float) -> str:
    """The start (pre-trained or fine-tuned) and the teacher, checked before anything loads; one-line errors."""
    start = start_of(args.model)
    distilling = distill_alpha > 0
    if start == "pretrained" and distilling and args.teacher is None:
        raise LpafError(f"--model {args.model} is a pre-trained model (not an lpaf artifact with {METRICS_FILE}); "
                        f"fine-pruning from it distils from a fine-tuned teacher: pass --teacher DIR (an 'lpaf "
                        f"finetune' output for {task}) or --no-distill")
    if args.teacher is None:
        return start
    if not distilling:
        raise LpafError(f"--teacher {args.teacher} is given but distillation is off (--no-distill or --distill-alpha "
                        f"0): nothing would use it; drop --teacher or distil")
    require_complete(args.teacher, "teacher")
    record = read_json(Path(args.teacher) / METRICS_FILE)
    if record.get("task") != task:
        raise LpafError(f"--teacher {args.teacher} was trained on task {record.get('task')!r}, not {task!r}; "
                        f"pass a teacher fine-tuned on {task}")
    student_cfg = _config_of(args.model, args.model_revision)
    teacher_cfg = _config_of(args.teacher, None)
    for key in ARCHITECTURE_KEYS:
        if student_cfg.get(key) != teacher_cfg.get(key):
            raise LpafError(f"--teacher {args.teacher} has {key}={teacher_cfg.get(key)!r} but --model {args.model} has "
                            f"{student_cfg.get(key)!r}; the teacher must share the student's architecture and "
                            f"tokenizer")
    return start


def _config_of(model: str, revision: str | None) -> dict[str, Any]:
    from transformers import AutoConfig

    from lpaf.stages.common import check_model_dir

    check_model_dir(model)
    try:
        return AutoConfig.from_pretrained(model, revision=revision).to_dict()
    except (OSError, ValueError) as e:
        raise LpafError(f"could not read the config of {model}: {str(e).splitlines()[0]}") from None


def _setup_teacher(args: PruneArgs, model, task, train_args: TrainArgs):
    """The distillation teacher: ``--teacher`` loaded as an lpaf artifact, else a frozen copy of the
    fine-tuned start (its distillation gradient is exactly zero until the student moves away)."""
    if train_args.distill_alpha <= 0:
        return None
    if args.teacher is not None:
        teacher = load_model(args.teacher, task, expect="lpaf").eval()
    else:
        teacher = copy.deepcopy(model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def _teacher_summary(args: PruneArgs, teacher) -> dict[str, Any] | None:
    if teacher is None:
        return None
    source = args.teacher if args.teacher is not None else args.model
    record = read_json(Path(source) / METRICS_FILE)
    return {"path": str(source), "self_copy": args.teacher is None, "stage": record.get("stage"),
            "config_hash": record.get("config_hash"), "metrics": record.get("metrics"), "headline": record.get("headline")}


def _platon_summary(args: PruneArgs, pruner: Pruner) -> dict[str, Any] | None:
    if args.method != "platon":
        return None
    summary: dict[str, Any] = {"mode": args.platon_mode, "betas": list(pruner.criterion.betas)}
    if args.platon_mode == "reference":
        summary["window_steps"] = args.platon_window
    return summary


def _save_tensors(path: Path, tensors: dict, args: PruneArgs) -> None:
    from safetensors.torch import save_file

    # one metadata key: safetensors writes a multi-key header in a per-process random order, so two
    # identical runs would give files that differ byte for byte (benchmarks/fault_injection.py)
    about = json.dumps({"method": args.method, "density": args.density, "scope": args.scope}, sort_keys=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata={"lpaf_pruning": about})


def load_pruning_tensors(model_dir: str | Path, model, which: str = MASKS_FILE) -> dict:
    """Masks or scores of a pruned model, checked against ``model``'s encoder linears.

    Raises a one-line LpafError when the file is missing, unreadable, or was written for another
    model (different module names or shapes).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from lpaf.modules import find_encoder_linears

    path = Path(model_dir) / which
    if not path.is_file():
        raise LpafError(f"{path} not found (is {model_dir} the output of 'lpaf prune'?)")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise LpafError(f"{path} is not a readable safetensors file ({e})") from None
    linears = find_encoder_linears(model)
    missing = sorted(set(linears) - set(tensors))
    extra = sorted(set(tensors) - set(linears))
    if missing or extra:
        detail = f"missing {missing[0]}" if missing else f"unexpected {extra[0]}"
        raise LpafError(f"{path} does not match the model ({len(missing)} modules missing, {len(extra)} unexpected; "
                        f"{detail}); it was written for another model")
    for name, linear in linears.items():
        shape = (linear.out_features, linear.in_features)
        if tuple(tensors[name].shape) != shape:
            raise LpafError(f"{path}: {name} has shape {tuple(tensors[name].shape)} but the model's weight is {shape}; "
                            f"it was written for another model")
    return tensors


def _cleanup_checkpoints(out) -> None:
    import shutil

    shutil.rmtree(checkpoint_dir_for(out), ignore_errors=True)


def best_at_final_density(stats: dict, final_metrics: dict, pruner, headline_key: str) -> dict:
    """The best dev evaluation at the target density: those after the schedule froze the masks, and
    the end of training. Evaluations during the schedule score denser models, so they never count."""
    freeze = pruner.schedule.freeze_step if pruner.schedule is not None else 0
    entries = [h for h in stats.get("eval_history") or [] if h["step"] > freeze]
    entries.append({"step": stats.get("train_steps"), "epoch": None, **final_metrics})
    return max(entries, key=lambda h: h[headline_key])
