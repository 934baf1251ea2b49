"""The README.md model card every lpaf artifact carries: what the model is, how it was made and
scored, and how to load it (written from the stage's metrics.json record).

The card is a huggingface_hub ``ModelCard``: YAML front matter (license, tags, datasets, metrics,
base model, pipeline tag, and the dev scores as ``model-index`` results) that the hub reads and
validates, then the text."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

LICENSE = "apache-2.0"  # pyproject.toml's license: the code; the weights inherit their base model's too
# A hub model id: org/name or name, the characters the hub allows; no path that exists locally.
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?")


def base_model_of(model: str | None) -> str | None:
    """The hub id a chain of stages started from: a hub id given as --model, the id a fetched model
    directory (`lpaf fetch-model`) records, or what the source artifact's metrics.json carries."""
    if not model:
        return None
    path = Path(model)
    if path.exists():
        try:
            record = json.loads((path / "metrics.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(record, dict):
            return None
        if record.get("stage") == "fetch-model":
            return record.get("model")
        return record.get("base_model")
    return model if _HUB_ID.fullmatch(model) and ".." not in model else None


def _chain(record: dict[str, Any]) -> list[str]:
    """The stages that made this model, oldest first, from the record's own provenance."""
    stage = record.get("stage")
    method = record.get("method")
    if stage == "finetune":
        return [f"fine-tune {record.get('args', {}).get('model', '?')}"]
    if stage == "prune":
        start = record.get("start", "finetuned")
        source = record.get("args", {}).get("model", "?")
        teacher = record.get("teacher") or {}
        distil = "no distillation" if not teacher else (
            "distilling from a frozen copy of it" if teacher.get("self_copy") else f"distilling from {teacher.get('path')}")
        return [f"{'pre-trained' if start == 'pretrained' else 'fine-tuned'} model {source}",
                f"prune: {method}, density {record.get('density')}, {distil}"]
    if stage == "factorize":
        src = "pruned model" if record.get("source_is_pruned") else "dense model"
        return [f"source: {src} {record.get('source_model', '?')}",
                f"factorize: {method}, density {record.get('density')}"]
    if stage == "retrain":
        source = record.get("source") or {}
        return [f"factorized model {source.get('model', '?')} ({source.get('method', '?')}, density "
                f"{source.get('density')})", f"re-train: {record.get('scheme')}"]
    return [str(stage)]


def card_data(record: dict[str, Any]):
    """The front matter: what the hub indexes (license, tags, data set, metrics, base model, scores)."""
    from huggingface_hub import EvalResult, ModelCardData

    from lpaf.errors import LpafError
    from lpaf.tasks import get_task

    try:
        task = get_task(str(record.get("task")))
    except LpafError:
        task = None
    stage = record.get("stage")
    pipeline_tag = None if task is None else ("question-answering" if task.is_qa else "text-classification")
    kind = {"prune": "pruned", "factorize": "low-rank", "retrain": "low-rank"}.get(stage, "dense")
    tags = ["lpaf", "compression", kind]
    if pipeline_tag:
        tags.append(pipeline_tag)
    if task is not None:
        tags.append(task.name)
    results = []
    metrics = record.get("metrics") or {}
    if task is not None:
        for split in task.dev_splits:
            prefix = f"{split}_" if len(task.dev_splits) > 1 else ""
            for name in task.metrics:
                value = metrics.get(prefix + name)
                if isinstance(value, (int, float)):
                    results.append(EvalResult(
                        task_type=pipeline_tag, dataset_type=task.hub_path, dataset_name=task.name,
                        dataset_config=task.hub_config, dataset_split=split, metric_type=name,
                        metric_value=float(value)))
    return ModelCardData(
        license=LICENSE, tags=tags, pipeline_tag=pipeline_tag, base_model=record.get("base_model"),
        datasets=[task.hub_path] if task is not None else None,
        metrics=list(task.metrics) if task is not None else None,
        model_name=f"lpaf-{stage}-{record.get('task')}" if results else None,
        eval_results=results or None,
    )


def model_card(record: dict[str, Any]) -> str:
    """The card as text (README.md): front matter, then the description."""
    from huggingface_hub import ModelCard

    card = ModelCard(f"---\n{card_data(record).to_yaml()}\n---\n\n{_text(record)}")
    return str(card)


def _text(record: dict[str, Any]) -> str:
    params = record.get("params") or {}
    metrics = record.get("metrics") or {}
    lowrank = record.get("stage") in ("factorize", "retrain")
    overlap = (record.get("magnitude_overlap") or {}).get("mean")
    degenerate = (record.get("predictions") or {}).get("degenerate")
    lines = [
        f"# lpaf {record.get('stage')} model: {record.get('task')}",
        "",
        "Made with [lpaf](https://arxiv.org/abs/2306.14152), the reference implementation of Low-Rank "
        "Prune-And-Factorize (Ren & Zhu).",
        "",
        f"- **Task:** {record.get('task')} (dev split: {', '.join(record.get('split') or [])})",
        "- **Chain:** " + " → ".join(_chain(record)),
        f"- **Density:** {record.get('density')}; encoder linear weights kept: "
        f"{record.get('retained_percent_nonzero', record.get('retained_percent'))}%"
        + (f" ({params.get('encoder_linear')} stored factor weights)" if lowrank else ""),
        f"- **Parameters:** {params.get('total')} in all, {params.get('total_nonzero', params.get('total'))} non-zero",
        f"- **Seed:** {record.get('seed')}; training examples: {record.get('n_train_examples')}",
        "- **Dev metrics (end of training):** " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()
                                                            if isinstance(v, (int, float))),
    ]
    if record.get("best_eval"):
        best = {k: v for k, v in record["best_eval"].items() if k not in ("step", "epoch")}
        lines.append(f"- **Best dev evaluation** (step {record['best_eval'].get('step')}): "
                     + ", ".join(f"{k} {v:.4f}" for k, v in best.items() if isinstance(v, (int, float))))
    if overlap is not None:
        lines.append(f"- **Mask overlap with the teacher's top-|W| mask:** {overlap:.3f} (1 = magnitude pruning)")
    if degenerate:
        lines.append("- **Warning:** the dev predictions are degenerate (one output for ≥ 99% of examples): "
                     "a failed run, not a score.")
    lines += [
        f"- **Config hash:** {record.get('config_hash')}; commit {record.get('git_commit')}",
        "",
        "## Load",
        "",
        "```python",
        "import lpaf",
        "model = lpaf.load_model(\"<this directory>\")   # safetensors only, no remote code",
        "```",
        "",
        *(["A factorized model's config.json says `model_type: lpaf_lowrank`, so transformers' Auto classes "
           "refuse it (they would otherwise re-initialise the factorized layers at random): load it with "
           "`lpaf.load_model`.", ""] if lowrank else []),
        "Classification with the Hugging Face pipeline: `transformers.pipeline(\"text-classification\", "
        "model=lpaf.load_model(d), tokenizer=d)` (transformers 5 has no question-answering pipeline; QA models "
        "are scored with `lpaf evaluate`). ONNX: `lpaf export --model <this directory> --out onnx/model.onnx` "
        "(the graph, its config.json and the tokenizer in onnx/).",
        "",
    ]
    return "\n".join(lines)
