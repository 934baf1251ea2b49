"""Inference latency of a model on a fixed synthetic batch (the table's speed-up column)."""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn


@torch.inference_mode()
def measure_latency_ms(model: nn.Module, batch_size: int = 32, seq_len: int = 128, iters: int = 5,
                       warmup: int = 2, device: str = "cpu", seed: int = 0) -> dict[str, float]:
    """Median wall time of a forward pass over random token ids (content does not change cost)."""
    g = torch.Generator().manual_seed(seed)
    vocab = getattr(model.config, "vocab_size", 1000)
    ids = torch.randint(0, vocab, (batch_size, seq_len), generator=g).to(device)
    mask = torch.ones_like(ids)
    model.eval().to(device)
    times = []
    for i in range(warmup + iters):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        model(input_ids=ids, attention_mask=mask)
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(1000 * (time.perf_counter() - t0))
    return {"median_ms": statistics.median(times), "min_ms": min(times), "batch_size": batch_size,
            "seq_len": seq_len, "iters": iters, "device": device, "threads": torch.get_num_threads()}
