"""lpaf: Low-Rank Prune-And-Factorize (Ren & Zhu, arXiv 2306.14152) — a reference implementation."""

__version__ = "0.1.0"


def load_model(path: str, **kwargs):
    """Load any lpaf model directory (dense, pruned or factorized) — safetensors only, no remote code."""
    from lpaf.lowrank import load_model as _load

    return _load(path, **kwargs)
