"""Inference latency of dense vs factorized encoders, and how close it gets to the FLOP bound.

Models: a BERT-base-shaped ``BertModel`` (``BertConfig()`` defaults, random weights) and, when present,
the shared MiniLM (``../shared/models/all-MiniLM-L6-v2``). Each is timed dense and with every encoder
linear swapped for a ``LowRankLinear`` of the budget rank r = floor(p·m·n/(m+n)) at each density p
(factor values do not affect speed, so random factors are used). Batch 32 x length 128 by default,
fp32, ``torch.inference_mode``; CPU, plus CUDA when available. Latency = median of ``--runs`` timed
forward passes after ``--warmup`` ones; configurations are timed round-robin so background load
hits all of them alike.

FLOP bound: a forward costs F = 2·T·Σ(weights of encoder linears) + 4·B·L²·h per layer (attention
scores and context) + 2·B·h² (pooler), T = B·L tokens; low rank replaces m·n by r(m+n). The bound on
the speed-up is F_dense / F_lowrank; element-wise work (softmax, GELU, LayerNorm, residual adds,
embeddings) has no FLOPs in this count, so the time it takes is what pushes the measured speed-up
below the bound. ``--profile`` records the share of CPU time per operator class to show it.

The speed-up is against the stock model (``nn.Linear``: on CPU, addmm copies the broadcast bias into
the output before the product). ``LowRankLinear`` adds its bias in place after the product instead;
a second baseline, the dense model with that same change (``dense_inplace_bias``), is timed in the same
round-robin so the share of the speed-up owed to that trick alone is visible.

    python benchmarks/inference_speed.py            # full: batch 32 x 128, 3 densities
    python benchmarks/inference_speed.py --quick    # batch 8 x 128, fewer runs
    python benchmarks/inference_speed.py --malloc-no-mmap --out benchmarks/results/inference_speed_malloc.json

Writes ``benchmarks/results/inference_speed.json`` and prints the ratios.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lpaf.artifacts import library_versions, write_json  # noqa: E402
from lpaf.factorize import allocate_rank  # noqa: E402
from lpaf.lowrank import load_model, swap_encoder_linears  # noqa: E402
from lpaf.modules import count_parameters, find_encoder_linears  # noqa: E402
from lpaf.speed import machine_info  # noqa: E402

# No mmap for large allocations, never give heap memory back: every forward then reuses the same pages.
MALLOC_TUNABLES = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=17179869184:glibc.malloc.top_pad=268435456"
DEFAULT_MINILM = Path(__file__).resolve().parents[2] / "shared" / "models" / "all-MiniLM-L6-v2"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--densities", type=float, nargs="+", default=[0.5, 0.25, 0.1])
    parser.add_argument("--runs", type=int, default=5, help="timed forward passes per configuration")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="batch 8, 3 runs")
    parser.add_argument("--minilm", default=str(DEFAULT_MINILM), help="MiniLM directory ('' to skip)")
    parser.add_argument("--devices", nargs="+", default=None, help="default: cpu, and cuda when available")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--profile", action="store_true",
                        help="also record the CPU time share per operator class (dense and lowest density)")
    parser.add_argument("--malloc-no-mmap", action="store_true",
                        help=f"re-run under GLIBC_TUNABLES={MALLOC_TUNABLES}: glibc then serves the "
                             "large activations from its heap and reuses them instead of mapping fresh, "
                             "zero-filled pages for each one (what jemalloc/tcmalloc do for PyTorch)")
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).resolve().parent / "results" / "inference_speed.json")
    args = parser.parse_args()
    if args.quick:
        args.batch, args.runs = 8, 3
    if args.devices is None:
        args.devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    return args


# ---------------------------------------------------------------- models

def bert_base() -> nn.Module:
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    return BertModel(BertConfig()).eval()


def factorized_copy(dense: nn.Module, density: float) -> nn.Module:
    """A copy with every encoder linear replaced by a random-factor LowRankLinear of the budget rank."""
    import copy

    model = copy.deepcopy(dense)
    gen = torch.Generator().manual_seed(0)
    factors = {}
    for name, linear in find_encoder_linears(model).items():
        m, n = linear.out_features, linear.in_features
        rank = allocate_rank(m, n, density)
        factors[name] = (torch.randn(m, rank, generator=gen) * 0.02, torch.randn(rank, n, generator=gen) * 0.02)
    return swap_encoder_linears(model, factors, strict=True).eval()


class InplaceBiasLinear(nn.Module):
    """A dense linear computed like ``LowRankLinear``: product first, bias added in place (no addmm
    bias copy). Timed as a second baseline so the speed-up owed to factorization is not confused with
    the speed-up owed to that trick, which would help the dense model too."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.weight, self.bias = linear.weight, linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.nn.functional.linear(x, self.weight)
        return out if self.bias is None else out.add_(self.bias)


def inplace_bias_copy(dense: nn.Module) -> nn.Module:
    import copy

    model = copy.deepcopy(dense)
    for name, linear in find_encoder_linears(model).items():
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, InplaceBiasLinear(linear))
    return model.eval()


def flops(model: nn.Module, batch: int, length: int) -> dict[str, float]:
    """Matmul FLOPs of one forward (2 per multiply-add): encoder linears, attention, pooler."""
    config = model.config
    tokens = batch * length
    linear = 2.0 * tokens * count_parameters(model)["encoder_linear"]
    attention = 4.0 * batch * length * length * config.hidden_size * config.num_hidden_layers
    pooler = 2.0 * batch * config.hidden_size ** 2 if getattr(model, "pooler", None) is not None else 0.0
    return {"encoder_linear": linear, "attention": attention, "pooler": pooler,
            "total": linear + attention + pooler}


# ---------------------------------------------------------------- timing

def make_inputs(vocab_size: int, batch: int, length: int, device: str) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, vocab_size, (batch, length), generator=gen)
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device)}


def forward_seconds(model: nn.Module, inputs: dict, device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.inference_mode():
        model(**inputs)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def time_round_robin(models: dict[str, nn.Module], inputs: dict, device: str, runs: int,
                     warmup: int) -> dict[str, list[float]]:
    for model in models.values():
        for _ in range(warmup):
            forward_seconds(model, inputs, device)
    times = {key: [] for key in models}
    for _ in range(runs):
        for key, model in models.items():
            times[key].append(forward_seconds(model, inputs, device))
    return times


def operator_shares(model: nn.Module, inputs: dict) -> dict[str, float]:
    """Share of self CPU time per operator class in one forward (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    classes = {
        "matmul": {"addmm", "mm", "bmm", "matmul", "linear", "baddbmm"},
        "attention kernel": {"_scaled_dot_product_flash_attention_for_cpu", "scaled_dot_product_attention",
                             "_softmax", "softmax", "_scaled_dot_product_efficient_attention",
                             "_scaled_dot_product_flash_attention"},
        "gelu": {"gelu"},
        "layer_norm": {"native_layer_norm", "layer_norm"},
        "copy (head reshapes)": {"copy_", "contiguous", "clone", "to", "_to_copy"},
        "add/mul (residuals, masks)": {"add", "mul", "add_", "mul_", "div", "sub"},
        "embedding": {"embedding", "index_select"},
    }
    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
        model(**inputs)
    totals: dict[str, float] = {key: 0.0 for key in classes}
    totals["other"] = 0.0
    for event in prof.key_averages():
        name = event.key.removeprefix("aten::")
        key = next((k for k, names in classes.items() if name in names), "other")
        totals[key] += event.self_cpu_time_total
    whole = sum(totals.values()) or 1.0
    return {key: value / whole for key, value in totals.items()}


# ---------------------------------------------------------------- main

def bench_model(label: str, dense: nn.Module, args: argparse.Namespace, device: str) -> dict:
    models = {"dense": dense.to(device), "dense_inplace_bias": inplace_bias_copy(dense).to(device)}
    for density in args.densities:
        models[f"d{density}"] = factorized_copy(dense, density).to(device)
    inputs = make_inputs(dense.config.vocab_size, args.batch, args.length, device)
    times = time_round_robin(models, inputs, device, args.runs, args.warmup)
    dense_median = statistics.median(times["dense"])
    dense_flops = flops(models["dense"], args.batch, args.length)
    inplace_median = statistics.median(times["dense_inplace_bias"])
    entry = {"model": label, "device": device, "batch": args.batch, "length": args.length,
             "dense": {"median_s": dense_median, "runs_s": times["dense"], "flops": dense_flops,
                       "encoder_linear_weights": count_parameters(models["dense"])["encoder_linear"]},
             "dense_inplace_bias": {"median_s": inplace_median, "runs_s": times["dense_inplace_bias"]},
             "factorized": []}
    print(f"{label} on {device}: dense {dense_median * 1000:.0f} ms "
          f"(batch {args.batch} x {args.length}, {dense_flops['total'] / 1e9:.0f} GFLOP); "
          f"dense with in-place bias adds {inplace_median * 1000:.0f} ms")
    for density in args.densities:
        key = f"d{density}"
        median = statistics.median(times[key])
        lowrank_flops = flops(models[key], args.batch, args.length)
        bound = dense_flops["total"] / lowrank_flops["total"]
        speedup = dense_median / median
        entry["factorized"].append({
            "density": density, "median_s": median, "runs_s": times[key], "flops": lowrank_flops,
            "encoder_linear_weights": count_parameters(models[key])["encoder_linear"],
            "speedup": speedup, "flop_bound": bound, "fraction_of_bound": speedup / bound,
            "speedup_vs_dense_inplace_bias": inplace_median / median})
        print(f"  density {density}: {median * 1000:.0f} ms, speed-up {speedup:.2f}x, "
              f"FLOP bound {bound:.2f}x, {100 * speedup / bound:.0f}% of the bound; "
              f"{inplace_median / median:.2f}x vs the in-place-bias dense model")
    if args.profile and device == "cpu":
        lowest = f"d{min(args.densities)}"
        entry["operator_shares"] = {"dense": operator_shares(models["dense"], inputs),
                                    lowest: operator_shares(models[lowest], inputs)}
        for key, shares in entry["operator_shares"].items():
            summary = ", ".join(f"{k} {100 * v:.0f}%" for k, v in shares.items() if v >= 0.01)
            print(f"  time shares ({key}): {summary}")
    for model in models.values():
        model.to("cpu")
    return entry


def main() -> None:
    args = parse_args()
    if args.malloc_no_mmap and os.environ.get("GLIBC_TUNABLES") != MALLOC_TUNABLES:
        # glibc reads its tunables at process start only, so start again with them set.
        os.execve(sys.executable, [sys.executable, *sys.argv], dict(os.environ, GLIBC_TUNABLES=MALLOC_TUNABLES))
    if args.threads:
        torch.set_num_threads(args.threads)
    record = {
        "benchmark": "inference_speed",
        "what": "forward latency, dense vs every encoder linear factorized at the budget rank; fp32; "
                "median of timed runs after warm-up, configurations timed round-robin",
        "flop_bound": "F_dense / F_lowrank with F = 2·tokens·(encoder linear weights) + 4·B·L²·h·layers "
                      "(attention) + 2·B·h² (pooler); element-wise ops carry no FLOPs in this count",
        "targets_bert_base_cpu": {"0.25": 2.5, "0.1": 4.0},
        "runs": args.runs, "warmup": args.warmup,
        "machine": {**machine_info(), "torch_threads": torch.get_num_threads(),
                    "glibc_tunables": os.environ.get("GLIBC_TUNABLES")},
        "versions": library_versions(),
        "results": [],
    }
    print(f"torch threads {torch.get_num_threads()}, load {os.getloadavg()[0]:.1f}, "
          f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES') or '(unset)'}")
    candidates = [("bert-base-shaped (random weights)", bert_base)]
    if args.minilm and Path(args.minilm).is_dir():
        candidates.append(("all-MiniLM-L6-v2", lambda: load_model(args.minilm)))
    else:
        print(f"MiniLM not found at {args.minilm!r}; skipping it" if args.minilm else "MiniLM skipped (--minilm '')")
        record["minilm_skipped"] = str(args.minilm)
    for label, build in candidates:
        dense = build()
        for device in args.devices:
            record["results"].append(bench_model(label, dense, args, device))
    record["machine"]["load_average_1min_end"] = os.getloadavg()[0]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, record)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
