"""Aggregate every committed seed of the mini reproduction into one table (issue 14).

A seed of config/mini.yaml takes about two hours on 2 cores, so seeds are run one at a time,
possibly in different sessions on different machines. `benchmarks/mini_summary.py` commits each
finished seed's small results under `benchmarks/results/mini/seeds/s<seed>/` (runs.csv,
rank_study.csv, run_info.json with the commit and a digest of the config), and this script rebuilds
`table.csv`, `table.md`, `runs.csv` and `rank_study.csv` of `benchmarks/results/mini/` from all of
them, then the claims (`mini_claims.py`). Seeds run with a different config file are refused (the
digest differs); seeds from different commits are allowed and listed in `aggregate_info.json`.

    python benchmarks/mini_aggregate.py            # after adding a seed with mini_summary.py
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "benchmarks" / "results" / "mini"
CONFIG = REPO / "config" / "mini.yaml"


def config_digest(path: Path = CONFIG) -> str:
    """sha256 of the config file's text, first 12 hex digits: what must match across seeds."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def seed_dirs(out: Path) -> list[Path]:
    return sorted((p for p in (out / "seeds").glob("s*") if (p / "runs.csv").is_file()),
                  key=lambda p: int(p.name[1:]) if p.name[1:].isdigit() else p.name)


def load_seed_runs(out: Path):
    """Every committed seed's runs and rank rows, checked to come from one config."""
    import pandas as pd

    dirs = seed_dirs(out)
    if not dirs:
        raise SystemExit(f"mini_aggregate: no committed seeds under {out / 'seeds'} (run mini_summary.py first)")
    infos = {d.name: json.loads((d / "run_info.json").read_text()) for d in dirs}
    digests = {name: info.get("config_digest") for name, info in infos.items()}
    if len(set(digests.values())) > 1:
        first = next(iter(digests))
        other = next(n for n, v in digests.items() if v != digests[first])
        raise SystemExit(f"mini_aggregate: seeds {first} and {other} were run with different config files "
                         f"(digest {digests[first]} vs {digests[other]}); rerun one of them or move it aside")
    runs = pd.concat([pd.read_csv(d / "runs.csv") for d in dirs], ignore_index=True)
    ranks = [pd.read_csv(d / "rank_study.csv") for d in dirs if (d / "rank_study.csv").is_file()]
    ranks = pd.concat(ranks, ignore_index=True) if ranks else None
    return runs, ranks, infos


def _restore_run_columns(runs):
    """runs.csv drops the per-run list of metric keys and, for runs of older code, the diagnostics."""
    import math

    if "degenerate" not in runs:
        runs["degenerate"] = False
    runs["degenerate"] = runs["degenerate"].fillna(False).astype(bool)
    if "magnitude_overlap" not in runs:
        runs["magnitude_overlap"] = math.nan
    metric_cols = [c for c in runs.columns if c.startswith("dev_")]
    runs["metric_keys"] = runs.apply(
        lambda r: [c[4:] for c in metric_cols if r[c] == r[c]], axis=1)  # non-NaN dev_ columns
    return runs


def aggregate(out: Path = OUT) -> dict:
    from lpaf.report import aggregate as aggregate_runs
    from lpaf.report import markdown_tables

    runs, ranks, infos = load_seed_runs(out)
    runs = _restore_run_columns(runs)
    table = aggregate_runs(runs)
    table.to_csv(out / "table.csv", index=False, float_format="%.6g")
    (out / "table.md").write_text(markdown_tables(table), encoding="utf-8")
    runs.drop(columns=["metric_keys"]).to_csv(out / "runs.csv", index=False, float_format="%.6g")
    if ranks is not None:
        ranks.to_csv(out / "rank_study.csv", index=False, float_format="%.6g")
    info = {"seeds": sorted(int(n[1:]) for n in infos), "config_digest": next(iter(infos.values())).get("config_digest"),
            "commits": {n: i.get("commit") for n, i in infos.items()},
            "rows": int(len(table)), "min_n_seeds": int(table["n_seeds"].min())}
    (out / "aggregate_info.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", default=str(OUT))
    p.add_argument("--no-claims", action="store_true")
    args = p.parse_args()
    out = Path(args.dir)
    info = aggregate(out)
    print(f"mini_aggregate: {info['rows']} rows from seeds {info['seeds']} (every row has >= {info['min_n_seeds']} "
          f"seeds) -> {out}")
    if args.no_claims:
        return 0
    return subprocess.run([sys.executable, str(REPO / "benchmarks" / "mini_claims.py"), "--dir", str(out)],
                          cwd=REPO).returncode


if __name__ == "__main__":
    sys.exit(main())
