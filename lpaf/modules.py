"""Finding the encoder's linear layers and counting parameters — the axis of every table.

"Encoder linear weights" are Q, K, V, attention-output, FFN-in and FFN-out of every layer
(biases excluded): BERT-base has 72 such matrices and 84,934,656 weights.
Modules are found by full-name pattern over ``named_modules()`` (PEFT style), so BERT, RoBERTa,
ELECTRA-style (``encoder.layer.N...``) and DistilBERT (``transformer.layer.N...``) all work.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from lpaf.errors import LpafError

ENCODER_LINEAR_PATTERNS: tuple[str, ...] = (
    # BERT / RoBERTa / ELECTRA / MiniLM
    r"(^|\.)encoder\.layer\.\d+\.attention\.self\.(query|key|value)$",
    r"(^|\.)encoder\.layer\.\d+\.attention\.output\.dense$",
    r"(^|\.)encoder\.layer\.\d+\.intermediate\.dense$",
    r"(^|\.)encoder\.layer\.\d+\.output\.dense$",
    # DistilBERT
    r"(^|\.)transformer\.layer\.\d+\.attention\.(q_lin|k_lin|v_lin|out_lin)$",
    r"(^|\.)transformer\.layer\.\d+\.ffn\.(lin1|lin2)$",
)
_PATTERN = re.compile("|".join(f"(?:{p})" for p in ENCODER_LINEAR_PATTERNS))


def is_encoder_linear_name(name: str) -> bool:
    return _PATTERN.search(name) is not None


def find_encoder_linears(model: nn.Module, require: bool = True) -> dict[str, nn.Module]:
    """Fully-qualified name -> module for every encoder linear (nn.Linear or a swapped-in module).

    Raises an LpafError quoting the patterns when nothing matches (a model we cannot compress).
    """
    found = {name: mod for name, mod in model.named_modules() if name and is_encoder_linear_name(name)}
    if require and not found:
        raise LpafError(
            f"no encoder linear layers found in {type(model).__name__}; expected module names matching "
            f"{' or '.join(ENCODER_LINEAR_PATTERNS)} (BERT-family or DistilBERT models)"
        )
    return found


def linear_weight(module: nn.Module) -> torch.Tensor:
    """The (out x in) weight of an encoder linear, dense view (works for parametrized weights)."""
    if isinstance(module, nn.Linear):
        return module.weight
    if hasattr(module, "to_dense_weight"):
        return module.to_dense_weight()
    raise TypeError(f"not a linear-like module: {type(module).__name__}")


def encoder_linear_weight_count(module: nn.Module, nonzero: bool = False) -> int:
    """Stored weights of one encoder linear: m*n for dense, r*(m+n) for low-rank, nnz if ``nonzero``."""
    if hasattr(module, "stored_weight_count"):  # LowRankLinear and friends
        return int(module.stored_weight_count())
    weight = module.weight
    return int(torch.count_nonzero(weight).item()) if nonzero else weight.numel()


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Parameter counts reported in every metrics.json.

    - ``encoder_linear``: stored encoder linear weights (dense m*n, low-rank r(m+n));
    - ``encoder_linear_nonzero``: the same counting zeros out (the sparse models' axis);
    - ``encoder_linear_dense``: m*n summed — the 100% reference of "% retained";
    - ``total``: every parameter of the model (embeddings, biases, head included);
    - ``total_nonzero``.
    """
    linears = find_encoder_linears(model)
    stored = sum(encoder_linear_weight_count(m) for m in linears.values())
    nonzero = sum(encoder_linear_weight_count(m, nonzero=True) for m in linears.values())
    dense = 0
    for m in linears.values():
        out_f = getattr(m, "out_features")
        in_f = getattr(m, "in_features")
        dense += out_f * in_f
    seen: set[int] = set()
    total = 0
    total_nonzero = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        total_nonzero += int(torch.count_nonzero(p).item())
    return {
        "encoder_linear": stored,
        "encoder_linear_nonzero": nonzero,
        "encoder_linear_dense": dense,
        "encoder_linear_matrices": len(linears),
        "total": total,
        "total_nonzero": total_nonzero,
    }


def retained_percent(counts: dict[str, int], key: str = "encoder_linear") -> float:
    return 100.0 * counts[key] / counts["encoder_linear_dense"]
