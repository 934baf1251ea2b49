"""bf16 inference on CPUs that have it (AVX-512 BF16 / AMX): speed of dense and factorized models in
fp32 and bf16, side by side, and the dev-metric change of real models in bf16 (issue 19).

Latency: a BERT-base-shaped ``BertModel`` (random weights) and, when present, the shared MiniLM,
each dense and factorized at every density (random factors of the budget rank), in fp32 and in
bf16 (``model.to(torch.bfloat16)``), all timed round-robin in one process (median of ``--runs``
forward passes of batch 32 x 128 after a warm-up), with benchmarks/inference_speed.py's helpers.
Dev-metric change: every ``--eval-model DIR`` (an lpaf artifact) is scored on its task's dev set in
fp32 and in bf16 with ``lpaf.stages.common.evaluate_model``; the difference is the bf16 cost.

    python benchmarks/bf16_speed.py --threads 2 --runs 5 --eval-model DIR --task sst2 --data ../shared/data
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from inference_speed import bert_base, factorized_copy, flops, make_inputs, time_round_robin  # noqa: E402

from lpaf.artifacts import write_json  # noqa: E402
from lpaf.lowrank import load_model  # noqa: E402
from lpaf.speed import machine_info  # noqa: E402

DEFAULT_MINILM = HERE.parents[1] / "shared" / "models" / "all-MiniLM-L6-v2"


def bench_latency(label: str, dense, args) -> dict:
    import copy
    import statistics

    models = {"dense-fp32": dense.eval()}
    for d in args.densities:
        models[f"factorized-{d:g}-fp32"] = factorized_copy(dense, d)
    for key in list(models):
        models[key.replace("fp32", "bf16")] = copy.deepcopy(models[key]).to(torch.bfloat16).eval()
    inputs = make_inputs(int(dense.config.vocab_size), args.batch, args.length, "cpu")
    times = time_round_robin(models, inputs, "cpu", args.runs, args.warmup)
    ms = {k: 1000 * statistics.median(v) for k, v in times.items()}
    rows = []
    f_dense = flops(dense, args.batch, args.length)["total"]
    for d in args.densities:
        fp32, bf16 = f"factorized-{d:g}-fp32", f"factorized-{d:g}-bf16"
        rows.append({"density": d, "dense_fp32_ms": ms["dense-fp32"], "dense_bf16_ms": ms["dense-bf16"],
                     "factorized_fp32_ms": ms[fp32], "factorized_bf16_ms": ms[bf16],
                     "speedup_factorized_vs_dense_bf16": ms["dense-bf16"] / ms[bf16],
                     "speedup_factorized_vs_dense_fp32": ms["dense-fp32"] / ms[fp32],
                     "speedup_bf16_vs_fp32_factorized": ms[fp32] / ms[bf16],
                     "speedup_factorized_bf16_vs_dense_fp32": ms["dense-fp32"] / ms[bf16],
                     "flop_bound": f_dense / flops(models[fp32], args.batch, args.length)["total"]})
        r = rows[-1]
        print(f"  {label} d={d:g}: bf16 factorized {r['speedup_factorized_vs_dense_bf16']:.2f}x dense bf16 "
              f"(fp32: {r['speedup_factorized_vs_dense_fp32']:.2f}x; FLOP bound {r['flop_bound']:.2f}x); "
              f"bf16 {r['speedup_bf16_vs_fp32_factorized']:.2f}x fp32 on the factorized model", flush=True)
    print(f"  {label}: dense bf16 {ms['dense-fp32'] / ms['dense-bf16']:.2f}x dense fp32", flush=True)
    return {"model": label, "batch": args.batch, "length": args.length, "median_ms": ms, "results": rows,
            "dense_bf16_vs_fp32": ms["dense-fp32"] / ms["dense-bf16"]}


def bench_metric(model_dir: str, args) -> dict:
    from lpaf.stages.common import DataArgs, evaluate_model, load_task_data, load_tokenizer

    model = load_model(model_dir)
    data = load_task_data(DataArgs(task=args.task, data=args.data, max_length=args.max_length), load_tokenizer(model_dir),
                          with_train=False)
    fp32 = evaluate_model(model, data, 64, "cpu")
    bf16 = evaluate_model(model.to(torch.bfloat16), data, 64, "cpu")
    delta = {k: bf16[k] - fp32[k] for k in fp32}
    print(f"  {model_dir}: fp32 {fp32} bf16 {bf16}", flush=True)
    return {"model": model_dir, "task": args.task, "fp32": fp32, "bf16": bf16, "bf16_minus_fp32": delta}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--length", type=int, default=128)
    p.add_argument("--densities", type=float, nargs="+", default=[0.5, 0.25, 0.1])
    p.add_argument("--minilm", default=str(DEFAULT_MINILM))
    p.add_argument("--eval-model", action="append", default=[], help="an lpaf artifact to score in fp32 and bf16")
    p.add_argument("--task", default="sst2")
    p.add_argument("--data", default=str(HERE.parents[1] / "shared" / "data"))
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--out", type=Path, default=HERE / "results" / "bf16_speed.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    record = {"benchmark": "bf16_speed", "machine": machine_info(args.threads), "runs": args.runs,
              "latency": [], "dev_metric": []}
    if "avx512_bf16" not in record["machine"]["cpu_flags"] and "amx_bf16" not in record["machine"]["cpu_flags"]:
        print("this CPU has neither AVX-512 BF16 nor AMX: bf16 runs emulated, and slow", flush=True)
    candidates = [("bert-base-shaped (random weights)", bert_base)]
    if args.minilm and Path(args.minilm).is_dir():
        candidates.append(("all-MiniLM-L6-v2", lambda: load_model(args.minilm)))
    for label, build in candidates:
        record["latency"].append(bench_latency(label, build(), args))
    for model_dir in args.eval_model:
        record["dev_metric"].append(bench_metric(model_dir, args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, record)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
