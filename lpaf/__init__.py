"""lpaf: Low-Rank Prune-And-Factorize (Ren & Zhu, arXiv 2306.14152) — a reference implementation."""

__version__ = "0.1.0"


def load_model(path: str, **kwargs):
    """Load any lpaf model directory (dense, pruned or factorized) — safetensors only, no remote code."""
    from lpaf.lowrank import load_model as _load

    return _load(path, **kwargs)


def save_model(model, path: str, tokenizer=None):
    """Save a dense, pruned or factorized model so that :func:`load_model` returns it exactly:
    safetensors weights, and for a factorized model the rank section in config.json."""
    from pathlib import Path

    from lpaf.lowrank import lowrank_ranks, save_lowrank_model

    if lowrank_ranks(model):
        return save_lowrank_model(model, path, tokenizer)
    Path(path).mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    return Path(path)
