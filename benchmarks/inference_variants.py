"""What was tried to bring the factorized model's CPU inference closer to its FLOP bound, measured.

One BERT-base-shaped model (random weights), batch 32 x 128, fp32, dense vs every encoder linear
factorized at densities 0.25 and 0.1, all configurations timed round-robin in one process (see
``inference_speed.py`` for the models and the timing). Variants:

- ``addmm_bias``: the factorized model with ``LowRankLinear``'s former forward, ``A(B(x))`` through two
  ``nn.Linear`` calls, where CPU ``addmm`` copies the broadcast bias into the output first — against
  the current forward, which adds the bias in place after the product;
- ``inplace_gelu``: dense and factorized with the FFN's GELU applied in place (``aten::gelu_``),
  which saves writing a second copy of the largest activation;
- ``compiled``: dense and factorized through ``torch.compile`` (``--compile``; ``--freezing`` sets
  inductor's ``freezing`` for weight pre-packing), ratio of compiled factorized to compiled dense;
- ``qkv_fused_b``: the three Q/K/V ``B`` products (they read the same input) as one product over the
  concatenated factors, timed alone (the micro-benchmark behind the decision not to build it).

    python benchmarks/inference_variants.py --threads 2
    python benchmarks/inference_variants.py --threads 2 --compile --freezing

Run it under ``--malloc-no-mmap`` of ``inference_speed.py`` by setting the same ``GLIBC_TUNABLES``
yourself; the JSON records it. Writes ``benchmarks/results/inference_variants.json``.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from inference_speed import bert_base, factorized_copy, make_inputs, time_round_robin  # noqa: E402
from lpaf.artifacts import library_versions, write_json  # noqa: E402
from lpaf.factorize import allocate_rank  # noqa: E402
from lpaf.lowrank import LowRankLinear  # noqa: E402


class AddmmBiasLowRank(nn.Module):
    """A LowRankLinear run as its two nn.Linear submodules (the bias goes through addmm)."""

    def __init__(self, lowrank: LowRankLinear):
        super().__init__()
        self.lowrank = lowrank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lowrank.A(self.lowrank.B(x))


class InplaceGelu(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten.gelu_(x)


def with_addmm_bias(model: nn.Module) -> nn.Module:
    model = copy.deepcopy(model)
    for name, module in list(model.named_modules()):
        if isinstance(module, LowRankLinear):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, AddmmBiasLowRank(module))
    return model


def with_inplace_gelu(model: nn.Module) -> nn.Module:
    model = copy.deepcopy(model)
    for layer in model.encoder.layer:
        layer.intermediate.intermediate_act_fn = InplaceGelu()
    return model


def qkv_fused_b(batch: int, length: int, hidden: int, density: float, repeats: int) -> dict:
    """Median ms of three separate B products vs one product over the concatenated B factors."""
    rank = allocate_rank(hidden, hidden, density)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch * length, hidden, generator=gen)
    factors = [torch.randn(rank, hidden, generator=gen) for _ in range(3)]
    fused = torch.cat(factors)

    def separate():
        return [torch.nn.functional.linear(x, b) for b in factors]

    def one():
        return torch.nn.functional.linear(x, fused).split(rank, dim=-1)

    timings = {"separate_ms": [], "fused_ms": []}
    for fn in (separate, one):
        fn()
    for _ in range(repeats):
        for key, fn in (("separate_ms", separate), ("fused_ms", one)):
            start = time.perf_counter()
            fn()
            timings[key].append(1000 * (time.perf_counter() - start))
    out = {key: statistics.median(values) for key, values in timings.items()}
    return {"density": density, "rank": rank, **out, "saved_ms_per_layer": out["separate_ms"] - out["fused_ms"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--densities", type=float, nargs="+", default=[0.25, 0.1])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd dense and factorized")
    parser.add_argument("--freezing", action="store_true", help="with --compile: inductor freezing on")
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).resolve().parent / "results" / "inference_variants.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch threads {torch.get_num_threads()}, load {os.getloadavg()[0]:.1f}, "
          f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES') or '(unset)'}")

    dense = bert_base()
    models = {"dense": dense, "dense/inplace_gelu": with_inplace_gelu(dense)}
    for density in args.densities:
        factorized = factorized_copy(dense, density)
        models[f"d{density}"] = factorized
        models[f"d{density}/addmm_bias"] = with_addmm_bias(factorized)
        models[f"d{density}/inplace_gelu"] = with_inplace_gelu(factorized)
    inputs = make_inputs(dense.config.vocab_size, args.batch, args.length, "cpu")
    compile_s = {}
    if args.compile:
        if args.freezing:
            import torch._inductor.config as inductor_config

            inductor_config.freezing = True
        for key in ["dense", *[f"d{d}" for d in args.densities]]:
            start = time.perf_counter()
            with torch.inference_mode():
                compiled = torch.compile(models[key])
                compiled(**inputs)
            compile_s[key] = time.perf_counter() - start
            models[f"{key}/compiled"] = compiled
    times = time_round_robin(models, inputs, "cpu", args.runs, warmup=1)
    median = {key: statistics.median(values) for key, values in times.items()}

    def ratio(baseline: str, subject: str) -> float:
        return median[baseline] / median[subject]

    speedups = {}
    for density in args.densities:
        d = f"d{density}"
        speedups[d] = {
            "current_forward": ratio("dense", d),
            "addmm_bias_forward": ratio("dense", f"{d}/addmm_bias"),
            "inplace_gelu_both": ratio("dense/inplace_gelu", f"{d}/inplace_gelu"),
        }
        if args.compile:
            speedups[d]["compiled_both"] = ratio("dense/compiled", f"{d}/compiled")
    qkv = [qkv_fused_b(args.batch, args.length, dense.config.hidden_size, d, repeats=20) for d in args.densities]

    for key in models:
        print(f"{key:24s} {1000 * median[key]:7.0f} ms")
    for d, row in speedups.items():
        print(f"{d}: " + ", ".join(f"{k} {v:.2f}x" for k, v in row.items()))
    for row in qkv:
        print(f"Q/K/V B products at rank {row['rank']}: separate {row['separate_ms']:.2f} ms, "
              f"one product {row['fused_ms']:.2f} ms per layer")
    record = {
        "benchmark": "inference_variants", "batch": args.batch, "length": args.length, "runs": args.runs,
        "threads": torch.get_num_threads(), "load_average_1min": os.getloadavg()[0],
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES"), "compile": args.compile, "freezing": args.freezing,
        "median_s": median, "runs_s": times, "compile_s": compile_s, "speedup_vs_dense": speedups,
        "qkv_fused_b": qkv, "versions": library_versions(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, record)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
