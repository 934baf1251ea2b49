"""Sparsity-aware SVD on the 72 encoder matrices of a BERT-base-shaped model: fast solver vs exact EM.

Random N(0, 0.02²) weights (BERT's init scale) are magnitude-pruned per matrix to each density;
Ω = M + λ(1 − M); ranks from the budget rule r = floor(p·m·n/(m+n)). The fast solver
(``sparsity_aware_svd_batched``: batched warm-started subspace iteration; plain EM by default, and
with Nesterov momentum) runs on all matrices and is timed; the exact reference (full SVD per EM
step, float64) is slow on 2 cores, so by default it runs on the first ``--reference-layers`` layers
only and the objective gap is measured there (same tolerance and iteration cap for both).

    python benchmarks/factorize_solver.py            # 12 layers, densities 0.25 and 0.1
    python benchmarks/factorize_solver.py --quick    # 2 layers, reference on 1

Writes ``benchmarks/results/factorize_solver.json`` and prints the ratios.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lpaf.artifacts import library_versions, write_json  # noqa: E402
from lpaf.factorize import (allocate_rank, omega_from_mask, relative_error,  # noqa: E402
                            sparsity_aware_svd_batched, weighted_relative_error, weighted_svd_em_exact)

HIDDEN = 768
FFN = 3072
# (name, out x in) per layer, PyTorch layout: Q, K, V, attention output, FFN in, FFN out.
LAYER_SHAPES = (("query", (HIDDEN, HIDDEN)), ("key", (HIDDEN, HIDDEN)), ("value", (HIDDEN, HIDDEN)),
                ("attention.output", (HIDDEN, HIDDEN)), ("intermediate", (FFN, HIDDEN)),
                ("output", (HIDDEN, FFN)))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=12, help="encoder layers (6 matrices each)")
    parser.add_argument("--quick", action="store_true", help="2 layers, reference on 1")
    parser.add_argument("--densities", type=float, nargs="+", default=[0.25, 0.1])
    parser.add_argument("--pruned-weight", type=float, default=0.0, help="λ, weight of pruned entries")
    parser.add_argument("--reference-layers", type=int, default=1,
                        help="layers whose matrices also run through the exact reference (0: none)")
    parser.add_argument("--max-iters", type=int, default=50)
    parser.add_argument("--tol", type=float, default=1e-4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice); on a machine shared with other "
                             "jobs 1 thread can be much faster than oversubscribed OpenMP")
    parser.add_argument("--accelerations", nargs="+", default=["none", "nesterov"],
                        choices=["nesterov", "none"], help="fast-solver variants to run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).resolve().parent / "results" / "factorize_solver.json")
    args = parser.parse_args()
    if args.quick:
        args.layers, args.reference_layers = 2, min(args.reference_layers, 1)
    args.reference_layers = min(args.reference_layers, args.layers)
    return args


def build_matrices(layers: int, density: float, pruned_weight: float, seed: int):
    """name -> (pruned weight W_s, Ω), magnitude masks of random weights at ``density`` per matrix."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for layer in range(layers):
        for short, (m, n) in LAYER_SHAPES:
            weight = torch.randn(m, n, generator=gen) * 0.02
            keep = int(round(density * m * n))
            threshold = weight.abs().flatten().kthvalue(m * n - keep).values
            mask = weight.abs() > threshold
            out[f"layer.{layer}.{short}"] = (weight * mask, omega_from_mask(mask, pruned_weight))
    return out


def run_fast(matrices, density, args, acceleration: str):
    """All matrices through the batched fast solver, grouped by shape; returns (seconds, per-name info)."""
    groups = defaultdict(list)
    for name, (w, _) in matrices.items():
        groups[tuple(w.shape)].append(name)
    solved = {}
    start, cpu_start = time.perf_counter(), time.process_time()
    for (m, n), names in groups.items():
        rank = allocate_rank(m, n, density)
        Ws = torch.stack([matrices[k][0] for k in names]).to(args.device)
        Os = torch.stack([matrices[k][1] for k in names]).to(args.device)
        res = sparsity_aware_svd_batched(Ws, Os, rank, max_iters=args.max_iters, tol=args.tol,
                                         acceleration=acceleration, seed=args.seed)
        for i, k in enumerate(names):
            solved[k] = (res, i, rank)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    wall_s, cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
    info = {k: {"objective": res.objectives[i][-1], "initial_objective": res.objectives[i][0],
                "iterations": res.iterations[i], "converged": res.converged[i], "rank": rank,
                **errors(matrices[k], res.A[i].cpu(), res.B[i].cpu())}
            for k, (res, i, rank) in solved.items()}
    return wall_s, cpu_s, info


def errors(matrix, A, B) -> dict[str, float]:
    """Whole-matrix and Ω-weighted relative errors (the whole-matrix one shows how far the factors
    stray on pruned entries when their weight λ is small)."""
    weight, omega = matrix
    return {"relative_error": relative_error(weight, A, B),
            "weighted_relative_error": weighted_relative_error(weight, A, B, omega)}


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    n_threads = torch.get_num_threads()
    record = {
        "benchmark": "factorize_solver",
        "what": "sparsity-aware SVD of a BERT-base-shaped encoder (random N(0,0.02^2) weights, magnitude "
                "masks per matrix): fast batched solver vs exact full-SVD EM (float64)",
        "layers": args.layers, "matrices": 6 * args.layers, "pruned_weight": args.pruned_weight,
        "max_iters": args.max_iters, "tol": args.tol, "device": args.device, "seed": args.seed,
        "reference_layers": args.reference_layers,
        "reference_note": (f"the exact reference ran on the first {args.reference_layers} layer(s) "
                           f"({6 * args.reference_layers} matrices); objective gaps are measured there, "
                           f"wall time of the fast solver on all {6 * args.layers} matrices"),
        "gap_definition": "(fast objective - exact objective) / exact objective, objective = ||Ω⊙(W_s - AB)||²_F; "
                          "negative = the fast solver reaches a lower objective",
        "targets": {"fast_wall_s_all_72": 60.0, "objective_gap": 0.01},
        "timing_note": "wall_s depends on other jobs on the machine (see load_average); cpu_s is the "
                       "process CPU time, cpu_s / threads approximates the wall time on idle cores",
        "machine": {"cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                    "torch_threads": n_threads, "load_average_1min": os.getloadavg()[0]},
        "versions": library_versions(),
        "results": [],
    }
    print(f"{6 * args.layers} matrices, λ={args.pruned_weight}, torch threads {n_threads}, "
          f"load {os.getloadavg()[0]:.1f}")
    for density in args.densities:
        matrices = build_matrices(args.layers, density, args.pruned_weight, args.seed)
        entry = {"density": density}
        for acceleration in args.accelerations:
            seconds, cpu_seconds, info = run_fast(matrices, density, args, acceleration)
            entry[f"fast_{acceleration}"] = {"wall_s": seconds, "cpu_s": cpu_seconds, "per_matrix": info,
                                             "iterations_mean": statistics.mean(v["iterations"] for v in info.values())}
            print(f"density {density}: fast ({acceleration}) {seconds:.1f} s wall, {cpu_seconds:.1f} s CPU "
                  f"for {len(info)} matrices")
        reference_names = [k for k in matrices if int(k.split(".")[1]) < args.reference_layers]
        if reference_names:
            start, cpu_start = time.perf_counter(), time.process_time()
            exact = {}
            for k in reference_names:
                w, om = matrices[k]
                res = weighted_svd_em_exact(w, om, allocate_rank(*w.shape, density),
                                            max_iters=args.max_iters, tol=args.tol)
                exact[k] = {"objective": res.objectives[0][-1], "initial_objective": res.objectives[0][0],
                            "iterations": res.iterations[0], "converged": res.converged[0],
                            **errors(matrices[k], res.A, res.B)}
            entry["exact"] = {"wall_s": time.perf_counter() - start, "cpu_s": time.process_time() - cpu_start,
                              "matrices": len(reference_names), "per_matrix": exact}
            for acceleration in args.accelerations:
                fast = entry[f"fast_{acceleration}"]["per_matrix"]
                gaps = [(fast[k]["objective"] - exact[k]["objective"]) / exact[k]["objective"]
                        for k in reference_names]
                entry[f"gap_{acceleration}"] = {"max": max(gaps), "mean": statistics.mean(gaps), "min": min(gaps)}
                whole = statistics.mean(fast[k]["relative_error"] for k in reference_names)
                print(f"  objective gap fast ({acceleration}) vs exact on {len(gaps)} matrices: "
                      f"max {100 * max(gaps):+.2f}%, mean {100 * statistics.mean(gaps):+.2f}%; "
                      f"mean whole-matrix error {whole:.3f}")
            print(f"  exact: mean whole-matrix error "
                  f"{statistics.mean(exact[k]['relative_error'] for k in reference_names):.3f}")
            exact_s = entry["exact"]["wall_s"]
            per_matrix_fast = entry[f"fast_{args.accelerations[0]}"]["wall_s"] / len(matrices)
            print(f"  exact reference {exact_s:.1f} s for {len(reference_names)} matrices "
                  f"(≈ {exact_s / len(reference_names) / per_matrix_fast:.0f}x the fast solver per matrix)")
        record["results"].append(entry)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, record)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
