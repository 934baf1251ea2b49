"""Scores right after factorization (before any re-training) of every factorize artifact a workflow
run left under results/ — e.g. the mini reproduction's — as one JSON and a printed table.

The workflow already computes these (`lpaf factorize` evaluates the model it writes); this only
collects them, so the initialization side of claims C3-C4 on MRPC comes from the same run as the
table. Source = the dense teacher or the pruner of the matrix that was factorized.

    python benchmarks/factorize_study/from_workflow.py --out benchmarks/factorize_study/results_mini_workflow.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--results", default=str(ROOT / "results"))
    p.add_argument("--out", required=True)
    args = p.parse_args()
    rows = []
    for path in sorted(Path(args.results).glob("*/*/s*/**/fact-*/metrics.json")):
        m = json.loads(path.read_text())
        if m.get("stage") != "factorize":
            continue
        chain = path.parent.relative_to(Path(args.results)).parts
        source = next((part.split("-")[1] for part in chain if part.startswith("prune-")), "dense")
        summary = m["factorization"]["summary"]
        rows.append({"model": chain[0], "task": m["task"], "seed": m["seed"], "source": source,
                     "method": m["method"], "pruned_weight": m["args"].get("pruned_weight")
                     if m["method"] == "sparsity-aware" else None,
                     "density": m["density"], "headline_metric": m["headline_metric"], "headline": m["headline"],
                     "metrics": m["metrics"], "mean_rank": summary["mean_rank"],
                     "mean_relative_error": summary["mean_relative_error"],
                     "mean_masked_relative_error": summary.get("mean_masked_relative_error"),
                     "solver_wall_time_s": m.get("solver_wall_time_s"), "chain": "/".join(chain[3:])})
    rows.sort(key=lambda r: (r["task"], -r["density"], r["source"], r["method"]))
    Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")
    print("| task | density | source | factorization | dev metric | whole-matrix err | masked err |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        masked = r["mean_masked_relative_error"]
        name = r["method"] + (f" λ{r['pruned_weight']:g}" if r["pruned_weight"] is not None else "")
        print(f"| {r['task']} | {r['density']:g} | {r['source']} | {name} | {r['headline']:.3f} | "
              f"{r['mean_relative_error']:.2f} | {'–' if masked is None else f'{masked:.2f}'} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
