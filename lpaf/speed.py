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


@torch.inference_mode()
def time_models_round_robin(models: dict[str, nn.Module], batch_size: int = 32, seq_len: int = 128, rounds: int = 10,
                            warmup: int = 2, device: str = "cpu", seed: int = 0) -> dict[str, dict[str, float]]:
    """Median forward time of each model, all timed in one process on one device, round-robin: each
    round times every model once, starting one model later than the round before, so drift in the
    machine's speed (clocks, other jobs, thermal state) falls on every model alike."""
    g = torch.Generator().manual_seed(seed)
    names = list(models)
    inputs = {}
    for name in names:
        vocab = getattr(models[name].config, "vocab_size", 1000)
        ids = torch.randint(0, vocab, (batch_size, seq_len), generator=g).to(device)
        inputs[name] = (ids, torch.ones_like(ids))
        models[name].eval().to(device)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(warmup + rounds):
        for k in range(len(names)):
            name = names[(r + k) % len(names)]
            ids, mask = inputs[name]
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            models[name](input_ids=ids, attention_mask=mask)
            if device == "cuda":
                torch.cuda.synchronize()
            if r >= warmup:
                times[name].append(1000 * (time.perf_counter() - t0))
    return {name: {"median_ms": statistics.median(t), "min_ms": min(t), "rounds": rounds} for name, t in times.items()}


def device_name(device: str) -> str:
    """What the table's device column says: the GPU model, or the CPU model and thread count."""
    if device == "cuda":
        return f"cuda: {torch.cuda.get_device_name(0)}"
    info = machine_info()
    return f"cpu: {info['cpu']} ({info['threads']} thread(s))"


def machine_info(threads: int | None = None) -> dict:
    """What a speed figure depends on: CPU model and its vector / matrix extensions (AVX-512, AMX,
    bf16), core count, threads used, load, and library versions."""
    import os
    import platform
    from pathlib import Path

    from lpaf.artifacts import library_versions

    model, flags = platform.processor() or platform.machine(), []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("", platform.machine(), platform.processor()):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = sorted(f for f in line.split(":", 1)[1].split() if f.startswith(("avx512", "amx", "avx2")))
    except OSError:
        pass
    return {"cpu": model, "cpu_flags": flags, "cpu_count": os.cpu_count(),
            "threads": threads if threads is not None else torch.get_num_threads(),
            "load_average_1min": os.getloadavg()[0], "platform": platform.platform(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "versions": library_versions()}
