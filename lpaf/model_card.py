"""The README.md model card every lpaf artifact carries: what the model is, how it was made and
scored, and how to load it (written from the stage's metrics.json record)."""

from __future__ import annotations

from typing import Any


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


def model_card(record: dict[str, Any]) -> str:
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
        "Classification with the Hugging Face pipeline: `transformers.pipeline(\"text-classification\", "
        "model=lpaf.load_model(d), tokenizer=d)` (transformers 5 has no question-answering pipeline; QA models "
        "are scored with `lpaf evaluate`). ONNX: `lpaf export --model <this directory> --out model.onnx`.",
        "",
    ]
    return "\n".join(lines)
