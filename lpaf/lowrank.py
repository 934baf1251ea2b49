"""Low-rank linear layers and the compressed model format.

``LowRankLinear`` computes ``A(B(x))``: B is r x n (no bias), A is m x r with the original bias,
so an m x n matrix costs r(m+n) weights.
"""

from __future__ import annotations

import torch
from torch import nn


class LowRankLinear(nn.Module):
    """y = A(B(x)); shapes: B.weight (rank, in_features), A.weight (out_features, rank)."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True,
                 device=None, dtype=None):
        super().__init__()
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        self.in_features = in_features
        self.out_features = out_features
        self.rank = rank
        self.B = nn.Linear(in_features, rank, bias=False, device=device, dtype=dtype)
        self.A = nn.Linear(rank, out_features, bias=bias, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.A(self.B(x))

    def stored_weight_count(self) -> int:
        return self.rank * (self.in_features + self.out_features)

    def to_dense_weight(self) -> torch.Tensor:
        return self.A.weight @ self.B.weight

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"
