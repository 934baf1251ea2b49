"""Stage 1: prune a fine-tuned model's encoder linears (movement / magnitude / soft movement / PLATON).

teacher dir in -> pruned model dir out: a stock transformers checkpoint with the zeros in the
weights, ``masks.safetensors`` (boolean keep masks) and ``scores.safetensors`` (final importance,
float32), both keyed by module name (what ``lpaf factorize`` reads), and ``metrics.json``.
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
from lpaf.artifacts import read_json
from lpaf.errors import LpafError
from lpaf.pruning import (LEARNED_SCORE_METHODS, PruneMethod, Pruner, PruneScope, PruningCallback, ScoreInit,
                          check_settings)
from lpaf.stages.common import (DataArgs, RunArgs, asdict_all, atomic_output_dir, checkpoint_dir_for, evaluate_model,
                                evaluate_with_predictions, load_model, load_task_data, load_tokenizer, now,
                                prepare_output, save_model_dir, seed_everything, stage_metrics, write_completion, METRICS_FILE)
from lpaf.training import TrainArgs, resolve_device, train_model

MASKS_FILE = "masks.safetensors"
SCORES_FILE = "scores.safetensors"


@dataclass
class PruneArgs:
    model: str = field(metadata={"help": "the fine-tuned teacher: an lpaf finetune output directory"})
    out: str = field(metadata={"help": "output directory (pruned model, masks, scores, metrics.json)"})
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
    platon_beta1: float = field(default=0.85, metadata={"help": "PLATON: EMA factor of the sensitivity"})
    platon_beta2: float = field(default=0.95, metadata={"help": "PLATON: EMA factor of its uncertainty"})
    mask_update_every: int = field(default=1, metadata={
        "help": "recompute the masks every N schedule steps (ΔT; PLATON's reference uses 10)"})
    zero_pruned_weights: bool = field(default=False, metadata={
        "help": "set pruned weights to 0 at every mask update, so they cannot come back (PLATON's reference); "
                "default: they keep their values behind the mask"})
    distill: bool = field(default=True, metadata={
        "help": "distil from the teacher (weight --distill-alpha); --no-distill trains on the labels only"})
    eval_every_steps: int = field(default=0, metadata={"help": "dev evaluation every N steps (0: each epoch end)"})

    def __post_init__(self):
        problems = check_settings(self.method, self.density, self.scope, self.initial_warmup, self.final_warmup,
                                  self.scores_lr, self.score_init, self.score_init_scale, self.soft_l1,
                                  (self.platon_beta1, self.platon_beta2), self.mask_update_every)
        if self.eval_every_steps < 0:
            problems.append(f"--eval-every-steps must be >= 0 (got {self.eval_every_steps})")
        if problems:
            raise LpafError("; ".join(problems))

    def make_pruner(self) -> Pruner:
        return Pruner(self.method, self.density, scope=self.scope, initial_warmup=self.initial_warmup,
                      final_warmup=self.final_warmup, scores_lr=self.scores_lr, score_init=self.score_init,
                      score_init_scale=self.score_init_scale, scores_only_warmup=self.scores_only_warmup,
                      soft_l1=self.soft_l1, platon_betas=(self.platon_beta1, self.platon_beta2),
                      mask_update_every=self.mask_update_every, zero_pruned_weights=self.zero_pruned_weights)


def run(args: PruneArgs, data_args: DataArgs, run_args: RunArgs, train_args: TrainArgs) -> dict:
    out = prepare_output(args.out)
    task = data_args.spec
    train_args = _setup_train_args(args, train_args)
    seed_everything(run_args.seed)
    device = resolve_device(run_args.device)
    tokenizer = load_tokenizer(args.model)
    model = load_model(args.model, task, expect="dense")
    teacher = _setup_teacher(model, train_args)  # a copy taken before the masks go on
    start_weights = _encoder_weights(model)  # for the learned-or-magnitude diagnostic
    pruner = args.make_pruner()
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
                           teacher=_teacher_summary(args.model), pruning_step_time=pruning_times, train=stats,
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


def _setup_teacher(model, train_args: TrainArgs):
    if train_args.distill_alpha <= 0:
        return None
    teacher = copy.deepcopy(model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def _teacher_summary(teacher_dir: str) -> dict[str, Any]:
    record = read_json(Path(teacher_dir) / METRICS_FILE)
    return {"path": str(teacher_dir), "metrics": record.get("metrics"), "headline": record.get("headline")}


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
