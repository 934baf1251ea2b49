"""ONNX Runtime latency of dense vs factorized encoders, side by side (issue 19).

Models: a BERT-base-shaped ``BertForSequenceClassification`` (random weights) and, when present,
the shared MiniLM with a classification head. Each is exported with ``lpaf export``'s exporter
(``lpaf.export.export_onnx``) dense and factorized at every density (random factors of the budget
rank: values do not change speed), and every graph runs in ONNX Runtime with the same session
options (all graph optimizations, ``--threads`` intra-op threads, one inter-op thread) in one
process, round-robin, so background load hits all of them alike; the factorized PyTorch model is in
the same round-robin (the ≥ 1.3× ONNX-Runtime-over-PyTorch target). Batch 32 x 128 and 1 x 128.
Latency = median of ``--runs`` timed runs after ``--warmup`` ones. The FLOP bound beside each ratio
is benchmarks/inference_speed.py's (matmul FLOPs of dense / factorized).

    python benchmarks/onnx_speed.py --threads 2 --runs 5          # writes benchmarks/results/onnx_speed.json
    python benchmarks/onnx_speed.py --quick                       # MiniLM only, batch 8, 2 runs: a check
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from inference_speed import factorized_copy, flops  # noqa: E402

from lpaf.artifacts import library_versions, write_json  # noqa: E402
from lpaf.export import export_onnx  # noqa: E402
from lpaf.speed import machine_info  # noqa: E402

DEFAULT_MINILM = HERE.parents[1] / "shared" / "models" / "all-MiniLM-L6-v2"


def session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def inputs(vocab: int, batch: int, length: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    ids = rng.integers(1000 if vocab > 2000 else 5, vocab, size=(batch, length), dtype=np.int64)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}


def time_round_robin(runners: dict, runs: int, warmup: int) -> dict[str, float]:
    for run in runners.values():
        for _ in range(warmup):
            run()
    times = {k: [] for k in runners}
    for _ in range(runs):
        for key, run in runners.items():
            t0 = time.perf_counter()
            run()
            times[key].append(time.perf_counter() - t0)
    return {k: statistics.median(v) * 1000 for k, v in times.items()}


def bench(label: str, dense: torch.nn.Module, args, work: Path) -> dict:
    models = {"dense": dense.eval()}
    fusions: dict[str, dict] = {}
    for d in args.densities:
        models[f"factorized-{d:g}"] = factorized_copy(dense, d)
    paths = {}
    for key, model in models.items():
        t0 = time.perf_counter()
        paths[key] = work / f"{label.split()[0]}-{key}.onnx"
        export_onnx(model, paths[key])
        if args.transformer_optimizer:  # ORT's BERT fusions (GELU, SkipLayerNorm, attention where it matches)
            from onnxruntime.transformers.optimizer import optimize_model

            cfg = dense.config
            fused = optimize_model(str(paths[key]), model_type="bert", num_heads=cfg.num_attention_heads,
                                   hidden_size=cfg.hidden_size, opt_level=1)
            fusions[key] = {k: v for k, v in fused.get_fused_operator_statistics().items() if v}
            fused.save_model_to_file(str(paths[key]))
        print(f"  exported {label} {key} in {time.perf_counter() - t0:.0f} s", flush=True)
    sessions = {k: session(p, args.threads) for k, p in paths.items()}
    out = {"model": label, "settings": [], "transformer_optimizer": args.transformer_optimizer,
           "eager_attention": args.eager_attention, "fusions": fusions}
    for batch in args.batches:
        feeds = inputs(int(dense.config.vocab_size), batch, args.length)
        torch_feeds = {k: torch.from_numpy(v) for k, v in feeds.items()}
        runners = {f"ort:{k}": (lambda s=s: s.run(None, feeds)) for k, s in sessions.items()}
        for key, model in models.items():
            if key != "dense":
                runners[f"torch:{key}"] = (lambda m=model: _torch_forward(m, torch_feeds))
        ms = time_round_robin(runners, args.runs, args.warmup)
        f_dense = flops(dense.base_model, batch, args.length)["total"]
        rows = []
        for d in args.densities:
            key = f"factorized-{d:g}"
            f_fact = flops(models[key].base_model, batch, args.length)["total"]
            rows.append({"density": d, "ort_dense_ms": ms["ort:dense"], "ort_factorized_ms": ms[f"ort:{key}"],
                         "torch_factorized_ms": ms[f"torch:{key}"],
                         "speedup_vs_dense_ort": ms["ort:dense"] / ms[f"ort:{key}"],
                         "flop_bound": f_dense / f_fact,
                         "ort_over_torch_factorized": ms[f"torch:{key}"] / ms[f"ort:{key}"]})
            r = rows[-1]
            print(f"  {label} batch {batch}x{args.length} d={d:g}: ORT {r['speedup_vs_dense_ort']:.2f}x dense ORT "
                  f"(FLOP bound {r['flop_bound']:.2f}x), {r['ort_over_torch_factorized']:.2f}x factorized PyTorch",
                  flush=True)
        out["settings"].append({"batch": batch, "length": args.length, "results": rows})
    return out


def _torch_forward(model, feeds):
    with torch.inference_mode():
        model(**feeds)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--length", type=int, default=128)
    p.add_argument("--batches", type=int, nargs="+", default=[32, 1])
    p.add_argument("--densities", type=float, nargs="+", default=[0.5, 0.25, 0.1])
    p.add_argument("--minilm", default=str(DEFAULT_MINILM))
    p.add_argument("--no-bert-base", action="store_true")
    p.add_argument("--transformer-optimizer", action="store_true",
                   help="apply onnxruntime.transformers' BERT fusions to every graph (dense and factorized alike)")
    p.add_argument("--eager-attention", action="store_true",
                   help="export with eager attention (matmul-softmax-matmul) instead of SDPA's decomposition")
    p.add_argument("--quick", action="store_true", help="MiniLM only, batch 8, 2 runs (a check, not a result)")
    p.add_argument("--out", type=Path, default=HERE / "results" / "onnx_speed.json")
    args = p.parse_args()
    if args.quick:
        args.no_bert_base, args.batches, args.runs = True, [8], 2
        args.out = Path(tempfile.gettempdir()) / "onnx_speed_quick.json"
    torch.set_num_threads(args.threads)
    import onnxruntime
    from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification

    record = {"benchmark": "onnx_speed", "targets_bert_base_batch32": {"0.25": 2.5, "0.1": 4.0,
                                                                       "ort_over_torch_factorized": 1.3},
              "machine": machine_info(args.threads),
              "versions": {**library_versions(), "onnxruntime": onnxruntime.__version__},
              "runs": args.runs, "warmup": args.warmup, "results": []}
    candidates = []
    if not args.no_bert_base:
        torch.manual_seed(0)
        attn = {"attn_implementation": "eager"} if args.eager_attention else {}
        candidates.append(("bert-base-shaped (random weights)", lambda: BertForSequenceClassification(BertConfig(**attn))))
    if args.minilm and Path(args.minilm).is_dir():
        attn = {"attn_implementation": "eager"} if args.eager_attention else {}
        candidates.append(("all-MiniLM-L6-v2", lambda: AutoModelForSequenceClassification.from_pretrained(
            args.minilm, num_labels=2, **attn)))
    with tempfile.TemporaryDirectory(prefix="lpaf-onnx-speed-") as work:
        for label, build in candidates:
            record["results"].append(bench(label, build().eval(), args, Path(work)))
    record["machine"]["load_average_1min_end"] = os.getloadavg()[0]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, record)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
