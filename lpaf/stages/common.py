"""What every stage shares: data/run arguments, loading task data and models, evaluation, output.

A stage reads top to bottom: parse -> validate -> load -> build -> run -> write metrics.json.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from lpaf.artifacts import METRICS_FILE, atomic_output_dir, require_complete, run_record, write_json
from lpaf.errors import LpafError
from lpaf.tasks import TaskSpec, get_task


@dataclass
class DataArgs:
    task: str = field(metadata={"help": "task name (cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, squad, squad_v2)"})
    data: str | None = field(default=None, metadata={"help": "local data directory (default: the Hugging Face hub)"})
    max_length: int | None = field(default=None, metadata={
        "help": "max tokens per example (default: 128; question answering: 384, the window length, as in run_qa.py)"})
    doc_stride: int = field(default=128, metadata={"help": "SQuAD window stride"})
    max_train_samples: int | None = field(default=None, metadata={"help": "use the first N training examples"})
    max_eval_samples: int | None = field(default=None, metadata={"help": "use the first N dev examples"})
    cache_dir: str | None = field(default=None, metadata={"help": "tokenization cache (default $LPAF_CACHE or ~/.cache/lpaf)"})
    revision: str | None = field(default=None, metadata={"help": "hub revision (commit/tag) of the data set"})
    preprocessing_num_workers: int | None = field(default=None, metadata={
        "help": "processes that tokenize (datasets.map num_proc; default: this process only)"})

    def __post_init__(self):
        get_task(self.task)  # raises with the list of valid names
        if self.max_length is None:  # QA windows hold a question and a context: run_qa.py's 384 / stride 128
            self.max_length = 384 if self.spec.is_qa else 128
        problems = []
        if self.max_length < 8:
            problems.append(f"--max-length must be >= 8 (got {self.max_length})")
        for key in ("max_train_samples", "max_eval_samples"):
            v = getattr(self, key)
            if v is not None and v < 1:
                problems.append(f"--{key.replace('_', '-')} must be >= 1 (got {v})")
        if self.preprocessing_num_workers is not None and self.preprocessing_num_workers < 1:
            problems.append(f"--preprocessing-num-workers must be >= 1 (got {self.preprocessing_num_workers})")
        if self.doc_stride < 1:
            problems.append(f"--doc-stride must be >= 1 (got {self.doc_stride})")
        elif self.spec.is_qa and self.doc_stride >= self.max_length - 3:
            problems.append(f"--doc-stride {self.doc_stride} must be smaller than --max-length {self.max_length} minus "
                            f"the question and 3 special tokens (so < {self.max_length - 3}); e.g. --doc-stride "
                            f"{max(1, (self.max_length - 3) // 3)} for this window")
        if problems:
            raise LpafError("; ".join(problems))

    @property
    def spec(self) -> TaskSpec:
        return get_task(self.task)


@dataclass
class RunArgs:
    seed: int = field(default=42, metadata={"help": "random seed (data order, dropout, sampling)"})
    device: Literal["auto", "cpu", "cuda"] = field(default="auto", metadata={"help": "where to run"})
    precision: Literal["fp32", "bf16", "fp16"] = field(default="fp32", metadata={"help": "training precision (CUDA)"})
    tf32: bool = field(default=True, metadata={"help": "let fp32 matmuls use TF32 tensor cores on CUDA (Ampere "
                                                       "and newer; no effect on CPU); --no-tf32: strict fp32"})

    def __post_init__(self):
        # every stage parses RunArgs before it computes anything: the one place to set this
        import torch

        precision = "tf32" if self.tf32 else "ieee"  # CUDA backends only: CPU matmuls stay fp32
        torch.backends.cuda.matmul.fp32_precision = precision
        torch.backends.cudnn.conv.fp32_precision = precision


@dataclass
class TaskData:
    task: TaskSpec
    train: Any | None  # tokenized features (datasets.Dataset)
    eval: dict[str, Any]  # split -> tokenized features
    eval_examples: dict[str, Any]  # split -> raw examples (QA post-processing needs them)
    collator: Any
    source: str
    n_train_examples: int | None


def eval_counts(data: TaskData) -> dict[str, Any]:
    """Dev examples and the features scored per split; for QA also how many distinct examples those
    windows come from, so a record shows that ``--max-eval-samples N`` scored exactly N questions."""
    counts: dict[str, Any] = {"n_eval_examples": {s: len(e) for s, e in data.eval_examples.items()},
                              "n_eval_features": {s: len(f) for s, f in data.eval.items()}}
    if data.task.is_qa:
        counts["n_eval_feature_examples"] = {
            s: len(set(f["example_index"])) for s, f in data.eval.items() if "example_index" in f.column_names}
    return counts


def load_task_data(data_args: DataArgs, tokenizer, with_train: bool = True) -> TaskData:
    """Raw data -> cached features; ``max_*_samples`` select after the (shared) cached tokenization."""
    from transformers import DataCollatorWithPadding, default_data_collator

    from lpaf.data import load_raw, select_examples, tokenize_cached

    task = data_args.spec
    splits = (["train"] if with_train else []) + list(task.dev_splits)
    raw = load_raw(task, data_args.data, splits, data_args.revision)
    feats = tokenize_cached(task, raw, tokenizer, data_args.max_length, data_args.cache_dir, data_args.doc_stride,
                            num_proc=data_args.preprocessing_num_workers)
    train = None
    n_train = None
    if with_train:
        train = select_examples(feats["train"], data_args.max_train_samples, task)
        n_train = len(set(train["example_index"])) if task.is_qa else len(train)
    evals, examples = {}, {}
    for split in task.dev_splits:
        evals[split] = select_examples(feats[split], data_args.max_eval_samples, task)
        ex = raw.splits[split]
        if data_args.max_eval_samples is not None:
            ex = ex.select(range(min(data_args.max_eval_samples, len(ex))))
        examples[split] = ex
    collator = default_data_collator if task.is_qa else DataCollatorWithPadding(tokenizer)
    return TaskData(task, train, evals, examples, collator, raw.source, n_train)


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------

def auto_class_for(task: TaskSpec):
    from transformers import AutoModelForQuestionAnswering, AutoModelForSequenceClassification

    return AutoModelForQuestionAnswering if task.is_qa else AutoModelForSequenceClassification


def check_model_dir(path: str | Path) -> None:
    """A local model directory must hold a config and weights we can load safely."""
    p = Path(path)
    if not p.is_dir():
        return  # a hub id; transformers handles it
    if not (p / "config.json").is_file():
        raise LpafError(f"model directory {p} has no config.json")
    if not any(p.glob("*.safetensors")):
        raise LpafError(f"model directory {p} has no *.safetensors weights (lpaf loads safetensors only)")
    for f in p.glob("*.safetensors"):
        _check_safetensors_header(f)


def _check_safetensors_header(path: Path) -> None:
    """Cheap integrity check: the header parses and the data section has the size it promises."""
    import json
    import struct

    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            if n > size - 8:
                raise ValueError("header longer than file")
            header = json.loads(f.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        if 8 + n + end > size:
            raise ValueError("data section truncated")
    except (ValueError, struct.error, KeyError, TypeError) as e:
        raise LpafError(f"{path} is not a valid safetensors file ({e}); re-create or re-download it") from None


def is_lowrank_dir(path: str | Path) -> bool:
    """A compressed (factorized) model directory: config.json carries an ``lpaf_lowrank`` section."""
    import json

    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        return False
    try:
        return "lpaf_lowrank" in json.loads(cfg.read_text())
    except json.JSONDecodeError:
        raise LpafError(f"{cfg} is not valid JSON") from None


def check_recorded_task(path: str | Path, task: TaskSpec) -> None:
    """An lpaf artifact records its task (metrics.json "task"): refuse it for another task.

    Two tasks with the same label count (MRPC and SST-2) would otherwise load, score and train
    without complaint, and the numbers would mean nothing."""
    from lpaf.artifacts import read_json

    record = read_json(Path(path) / METRICS_FILE)
    recorded = record.get("task") if isinstance(record, dict) else None
    if not recorded:
        return  # e.g. a fetched pre-trained model: no task yet
    try:
        recorded_name = get_task(str(recorded)).name
    except LpafError:
        recorded_name = str(recorded)
    if recorded_name != task.name:
        raise LpafError(f"{path} was trained on task {recorded_name!r} (its {METRICS_FILE}), not {task.name!r}; "
                        f"pass --task {recorded_name}, or a model trained on {task.name}")


def load_tokenizer(path: str, revision: str | None = None):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, revision=revision)
    except OSError as e:
        raise LpafError(_load_failure_message(path, "tokenizer", e)) from None


def _load_failure_message(path: str, what: str, e: Exception) -> str:
    if Path(path).exists():
        return f"could not load the {what} from {path}: {str(e).splitlines()[0]}"
    return (f"could not load the {what} {path!r} (not a local directory, and the hub is unreachable or has no such "
            f"model); on a connected machine run 'lpaf fetch-model --model {path} --out DIR' and pass --model DIR")


def load_model(path: str, task: TaskSpec, revision: str | None = None, expect: str = "any",
               num_labels_check: bool = True) -> nn.Module:
    """Load a dense, pruned or factorized model for ``task``.

    ``expect``: "pretrained" (any hub/local model; a task head is created), "lpaf" (an lpaf artifact:
    requires metrics.json and a head that matches the task), "dense" (an lpaf artifact that is not
    factorized), "factorized" (an lpaf low-rank artifact).
    """
    from transformers import AutoConfig

    if expect != "pretrained":
        require_complete(path, "model")
        check_recorded_task(path, task)
    check_model_dir(path)
    factorized = Path(path).is_dir() and is_lowrank_dir(path)
    if expect == "factorized" and not factorized:
        raise LpafError(f"{path} is not a factorized model (no lpaf_lowrank section in config.json); "
                        f"run 'lpaf factorize' first")
    if expect == "dense" and factorized:
        raise LpafError(f"{path} is already factorized; pass a dense fine-tuned or pruned model")
    try:
        if factorized:  # model_type lpaf_lowrank, which AutoConfig refuses by design: its base config
            from lpaf.lowrank import load_config

            config = load_config(path)
        else:
            config = AutoConfig.from_pretrained(path, revision=revision)
    except OSError as e:
        raise LpafError(_load_failure_message(path, "model", e)) from None
    if expect != "pretrained" and num_labels_check and not task.is_qa:
        if config.num_labels != task.num_labels:
            raise LpafError(f"model {path} has {config.num_labels} labels but task {task.name} has "
                            f"{task.num_labels}; pass a model fine-tuned on {task.name}")
    if factorized:
        from lpaf.lowrank import load_model as load_lowrank

        return name_labels(load_lowrank(path), task)
    import torch

    # fp32 master weights whatever the checkpoint stores (transformers 5 loads dtype "auto": an fp16 or
    # bf16 checkpoint would otherwise be trained in half precision; --precision sets autocast instead)
    kwargs: dict[str, Any] = {"revision": revision, "dtype": torch.float32}
    if not task.is_qa:
        kwargs["num_labels"] = task.num_labels
        if task.is_regression:
            kwargs["problem_type"] = "regression"
    try:
        model = auto_class_for(task).from_pretrained(path, **kwargs)
    except OSError as e:
        raise LpafError(_load_failure_message(path, "model", e)) from None
    except (ValueError, RuntimeError) as e:
        raise LpafError(f"could not load model {path}: {str(e).splitlines()[0]}") from None
    from lpaf.modules import find_encoder_linears

    find_encoder_linears(model)  # fail early on models we cannot compress
    return name_labels(model, task)


def name_labels(model: nn.Module, task: TaskSpec) -> nn.Module:
    """The task's label names in the model's config (saved with every artifact), so `pipeline` and
    other readers print "equivalent" rather than LABEL_1."""
    names = task.id2label()
    if names and getattr(model, "config", None) is not None:
        model.config.id2label = dict(names)
        model.config.label2id = task.label2id()
    return model


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------

@torch.no_grad()
def predict(model: nn.Module, features, collator, batch_size: int, device: str,
            progress: str | None = None) -> dict[str, np.ndarray]:
    """Logits of every feature; ``progress``: the label of a per-batch progress bar / log lines."""
    from torch.utils.data import DataLoader

    from lpaf.console import Progress

    keep = [c for c in features.column_names if c in ("input_ids", "attention_mask", "token_type_ids")]
    loader = DataLoader(features.select_columns(keep), batch_size=batch_size, collate_fn=collator)
    model.eval()
    model.to(device)
    outs: dict[str, list[np.ndarray]] = {}
    shown = Progress(len(loader), progress, "batch") if progress else None
    for batch in loader:
        batch = {k: v.to(device) for k, v in batch.items()}
        out = model(**batch)
        for key in ("logits", "start_logits", "end_logits"):
            if getattr(out, key, None) is not None:
                outs.setdefault(key, []).append(getattr(out, key).float().cpu().numpy())
        if shown is not None:
            shown.update()
    if shown is not None:
        shown.close()
    return {k: np.concatenate(v) for k, v in outs.items()}


def evaluate_model(model: nn.Module, data: TaskData, batch_size: int = 64, device: str = "cpu") -> dict[str, float]:
    """Dev metrics with the official definitions; keys as in ``TaskSpec.metric_keys()``."""
    return evaluate_with_predictions(model, data, batch_size, device)[0]


def evaluate_with_predictions(model: nn.Module, data: TaskData, batch_size: int = 64, device: str = "cpu",
                              progress: bool = False) -> tuple[dict[str, float], dict[str, Any]]:
    """Dev metrics and the prediction spread per dev split (``degenerate``: one output for all).

    The final evaluation of every stage records the spread in metrics.json, so a collapsed model
    (a constant predictor scoring the majority-class metric) shows as a failed run in the table.
    ``progress``: show the batches of each split (the evaluations during training stay quiet).
    """
    from lpaf.data import postprocess_qa
    from lpaf.metrics import compute_metrics, normalize_answer, prediction_spread, squad_metrics, squad_v2_metrics

    task = data.task
    was_training = model.training
    result: dict[str, float] = {}
    spread: dict[str, Any] = {}
    for split, feats in data.eval.items():
        label = f"evaluate {split}" if progress else None
        out = predict(model, feats, data.collator, batch_size, device, progress=label)
        if task.is_qa:
            examples = data.eval_examples[split]
            refs = {i: a["text"] for i, a in zip(examples["id"], examples["answers"])}
            if task.name == "squad_v2":
                na_scores: dict[str, float] = {}
                preds = postprocess_qa(examples, feats, out["start_logits"], out["end_logits"], null_scores=na_scores)
                metrics = squad_v2_metrics(preds, refs, na_scores)
                preds = {q: ("" if na_scores[q] > 0 else p) for q, p in preds.items()}  # what was scored
            else:
                preds = postprocess_qa(examples, feats, out["start_logits"], out["end_logits"])
                metrics = squad_metrics(preds, refs)
            spread[split] = prediction_spread(task, [normalize_answer(a) for a in preds.values()])
        else:
            labels = np.asarray(feats["labels"])
            logits = out["logits"]
            preds = logits[:, 0] if task.is_regression else logits.argmax(-1)
            metrics = compute_metrics(task, preds, labels)
            spread[split] = prediction_spread(task, preds, labels)
        prefix = f"{split}_" if len(task.dev_splits) > 1 else ""
        result |= {f"{prefix}{k}": float(v) for k, v in metrics.items()}
    model.train(was_training)
    predictions = {"degenerate": any(s["degenerate"] for s in spread.values()), "splits": spread}
    return result, predictions


def pruning_diagnostics_of(source_dir: str | Path) -> dict[str, Any]:
    """The pruning diagnostics of a stage's source artifact, carried down the chain.

    A factorized or re-trained model of a prune chain inherits its pruned ancestor's
    ``magnitude_overlap`` summary (without the per-matrix values), so every table row of the chain
    shows whether its mask was learned or is magnitude in disguise.
    """
    path = Path(source_dir) / METRICS_FILE
    try:
        import json

        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    overlap = record.get("magnitude_overlap") if isinstance(record, dict) else None
    if not isinstance(overlap, dict):
        return {}
    return {"magnitude_overlap": {k: v for k, v in overlap.items() if k != "per_matrix"}}


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------

def stage_metrics(stage: str, task: TaskSpec, metrics: dict[str, float], model: nn.Module, args: dict[str, Any],
                  wall_time_s: float, data: TaskData | None = None, **extra: Any) -> dict[str, Any]:
    """The common metrics.json body of every stage."""
    from lpaf.modules import count_parameters, retained_percent

    params = count_parameters(model)
    return {
        "stage": stage,
        "task": task.name,
        "split": list(task.dev_splits),
        "metrics": metrics,
        "headline_metric": task.headline_key,
        "headline": metrics.get(task.headline_key),
        "params": params,
        "retained_percent": retained_percent(params),
        "retained_percent_nonzero": retained_percent(params, "encoder_linear_nonzero"),
        "seed": args.get("seed"),
        "wall_time_s": wall_time_s,
        "data_source": data.source if data else None,
        "n_train_examples": data.n_train_examples if data else None,
        **(eval_counts(data) if data else {"n_eval_examples": None}),
        **extra,
        **run_record(args),
    }


def write_completion(directory: Path, record: dict[str, Any]) -> None:
    """The model card (README.md), then metrics.json: the completion record, always written last."""
    from lpaf.model_card import base_model_of, model_card

    if "base_model" not in record:  # the hub model the chain started from, carried down every stage
        record["base_model"] = base_model_of((record.get("args") or {}).get("model"))
    (directory / "README.md").write_text(model_card(record), encoding="utf-8")
    write_json(directory / METRICS_FILE, record)


def save_model_dir(directory: Path, model: nn.Module, tokenizer) -> None:
    """A plain transformers checkpoint (safetensors) + tokenizer, loadable with from_pretrained."""
    model.save_pretrained(directory, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)


def checkpoint_dir_for(out_dir: str | Path) -> Path:
    """Training checkpoints live beside the output (not inside: the output appears atomically)."""
    out = Path(out_dir)
    return out.parent / f".{out.name}.checkpoints"


def prepare_output(out_dir: str | Path) -> Path:
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise LpafError(f"--out {out} exists and is not a directory")
    return out


def seed_everything(seed: int) -> None:
    from transformers import set_seed

    set_seed(seed)
    torch.use_deterministic_algorithms(False)


def now() -> float:
    return time.perf_counter()


def asdict_all(*objs) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for o in objs:
        out |= asdict(o)
    return out


__all__ = [
    "DataArgs", "RunArgs", "TaskData", "load_task_data", "load_model", "load_tokenizer", "evaluate_model",
    "stage_metrics", "save_model_dir", "checkpoint_dir_for", "atomic_output_dir", "write_json", "METRICS_FILE",
    "seed_everything", "now", "asdict_all", "prepare_output", "check_model_dir",
]
