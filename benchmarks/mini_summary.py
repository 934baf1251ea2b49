"""Collect a finished mini reproduction run into benchmarks/results/mini/, one (seed, task) at a time.

For every seed and task of the experiment's results/<experiment>/runs.csv (config/mini.yaml: results/mini/;
a run of the older layout: results/runs.csv) it writes `seeds/s<seed>/<task>/`
(that run's rows, rank-study rows, `after_factorization.csv`: the dev scores each factorized model
starts re-training from, and `run_info.json`: command, config file and digest, commit,
machine, and the wall time per stage summed from the run's artifacts' `metrics.json` / `eval.json` /
`rank.json`, so a run continued across several invocations is still accounted for). Then
benchmarks/mini_aggregate.py rebuilds the table and figures from *every committed run* and the
claims. Run by benchmarks/mini_reproduction.sh when the table is complete; rerun it by hand after
a resumed run. The QA reproduction (config/mini_qa.yaml) is collected the same way:

    python benchmarks/mini_summary.py --config config/mini_qa.yaml --snakemake-wall-s 5400
    python benchmarks/mini_summary.py --workdir /path/to/other/checkout   # a run made elsewhere
    python benchmarks/mini_summary.py --workdir DIR --factorized-only     # add after_factorization.csv

An overlay run (config/mini_learned.yaml on top of config/mini.yaml: rows added beside the table's, on the
same teachers) is collected under `learned/s<seed>/<task>/` instead of `seeds/`, and mini_aggregate.py merges
its own rows into the table (its dense rows only check that the teacher is the committed one):

    python benchmarks/mini_summary.py --config config/mini.yaml config/mini_learned.yaml

A (seed, task) collected again from an invocation of the same config(s) that made other rows (another density,
another method subset) keeps the committed rows it does not replace, and run_info.json lists the earlier
invocations under `earlier_invocations`; a run of a changed config replaces what was committed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "benchmarks" / "results" / "mini"
COPY = ["runs.csv", "rank_study.csv"]  # what a finished workflow run must have written
COMMANDS = {
    "config/mini.yaml": "benchmarks/mini_reproduction.sh  # = snakemake --cores 2 --configfile config/mini.yaml "
                        "--config model_path=../shared/models/all-MiniLM-L6-v2 data_dir=../shared/data",
    "config/mini_qa.yaml": "snakemake --cores 2 --configfile config/mini_qa.yaml "
                           "--config model_path=../shared/models/all-MiniLM-L6-v2",
    "config/mini_learned.yaml": "benchmarks/mini_learned.sh  # = snakemake --cores 2 --configfile config/mini.yaml "
                                "config/mini_learned.yaml --config model_path=../shared/models/all-MiniLM-L6-v2 "
                                "data_dir=../shared/data",
}
# overlay configs (added on top of config/mini.yaml) and the directory their runs are committed under
OVERLAY_DIRS = {"config/mini_learned.yaml": "learned"}


def stage_of(path: Path, record: dict) -> str:
    if path.name == "eval.json":
        return "evaluate"
    if path.name == "rank.json":
        return "rank_study"
    return str(record.get("stage", path.parent.name.split("-")[0]))


def wall_times(results: Path, seed: int | str = "*", task: str = "*",
               own: set[str] | None = None) -> dict[str, dict[str, float]]:
    """Summed wall time per stage of the seed's artifacts; with `own` (artifact paths below s<seed>/, e.g.
    an overlay run's chains without the teacher it reused) only those, not other configs' artifacts."""
    per_stage: dict[str, list[float]] = defaultdict(list)
    for path in sorted(results.glob(f"*/{task}/s{seed}/**/*.json")):
        if path.name not in ("metrics.json", "eval.json", "rank.json") or ".partial-" in str(path):
            continue
        if own is not None and "/".join(path.parts[path.parts.index(f"s{seed}") + 1:-1]) not in own:
            continue
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        wall = record.get("wall_time_s") if isinstance(record, dict) else None
        if isinstance(wall, (int, float)):
            per_stage[stage_of(path, record)].append(float(wall))
    return {
        stage: {"jobs": len(v), "wall_s_total": round(sum(v), 1), "wall_s_max": round(max(v), 1)}
        for stage, v in sorted(per_stage.items())
    }


def overlay_artifacts(rows) -> set[str]:
    """The artifacts an overlay run made: every prefix of its rows' chains but the teacher it reused."""
    own = set()
    for chain in rows.loc[rows["dense"].astype(str).str.lower() != "true", "chain"].astype(str):
        parts = chain.split("/")
        own.update("/".join(parts[:i]) for i in range(2, len(parts) + 1))
    return own


def after_factorization(results: Path, seed: int | str, task: str, chains: set[str]) -> list[dict]:
    """Dev scores right after factorization (before re-training), one row per factorize artifact on the
    run's `chains` (runs.csv's chain column: only this run's artifacts, not leftovers of another config in
    the same results/): the start each re-training row begins from (C3/C4 are also claims about this
    point). Read from the artifacts' metrics.json, which the table does not carry."""
    rows = []
    for root in sorted(results.glob(f"*/{task}/s{seed}")):
        for path in sorted(root.glob("**/fact-*/metrics.json")):
            rel = path.parent.relative_to(root)
            if any(part.startswith(".") for part in rel.parts):  # partial or replaced artifacts
                continue
            if not any(chain == str(rel) or chain.startswith(f"{rel}/") for chain in chains):
                continue
            try:
                record = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if not isinstance(record, dict) or record.get("stage") != "factorize":
                continue
            source = rel.parent.name  # dense-<hash> (the teacher) or prune-<method>-<hash>-d<density>
            overlap = record.get("magnitude_overlap") or {}
            row = {"task": task, "seed": int(seed),
                   "source": "dense" if source.startswith("dense-") else source[len("prune-"):].rsplit("-", 2)[0],
                   "factorize": rel.name[len("fact-"):].rsplit("-", 2)[0], "method": record.get("method"),
                   "density": record.get("density"), "headline_metric": record.get("headline_metric"),
                   "headline": record.get("headline"),
                   "degenerate": (record.get("predictions") or {}).get("degenerate"),
                   "retained_percent": record.get("retained_percent"),
                   "magnitude_overlap": overlap.get("mean") if isinstance(overlap, dict) else None,
                   "solver_wall_time_s": record.get("solver_wall_time_s"), "chain": str(rel)}
            row.update({f"dev_{k}": v for k, v in (record.get("metrics") or {}).items()})
            rows.append(row)
    return rows


def committed_rows_kept(d: Path, new_chains: set[str]) -> dict:
    """The committed rows of `d` (an earlier invocation of the same config) that this collection does not
    replace: those whose chains this run did not make, e.g. another density of an overlay run
    (`DENSITIES='[0.25]'`, later `'[0.5]'`). Empty when nothing is kept."""
    import pandas as pd

    if not (d / "runs.csv").is_file():
        return {}
    kept = {}
    for name in ("runs.csv", "rank_study.csv", "after_factorization.csv"):
        if (d / name).is_file():
            frame = pd.read_csv(d / name)
            kept[name] = frame[~frame["chain"].astype(str).isin(new_chains)] if "chain" in frame else frame.iloc[:0]
    return kept if len(kept["runs.csv"]) else {}


def experiment_dir(results: Path, config: Path) -> Path:
    """Where the workflow wrote the experiment's runs.csv and rank_study.csv: results/<experiment>/
    (`name:`, else the config file's stem), or results/ itself for a run made before experiments had
    their own directory."""
    import yaml

    sys.path.insert(0, str(REPO))
    from lpaf.report import experiment_name

    experiment = experiment_name((yaml.safe_load(config.read_text()) or {}).get("name"), str(config))
    own = results / experiment
    return own if (own / "runs.csv").is_file() or not (results / "runs.csv").is_file() else results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--snakemake-wall-s", type=float, default=None,
                        help="wall time of the last snakemake invocation")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--config", nargs="+", default=["config/mini.yaml"],
                        help="the config file(s) the run used, in Snakemake's --configfile order, relative to "
                             "--workdir (default: config/mini.yaml; an overlay: config/mini.yaml "
                             "config/mini_learned.yaml)")
    parser.add_argument("--workdir", default=str(REPO),
                        help="the checkout the workflow ran in (its results/ and config; default: this one)")
    parser.add_argument("--out", default=str(OUT), help="where the runs are committed (default: %(default)s)")
    parser.add_argument("--command", default=None,
                        help="the exact command that ran, overrides included (default: the config's usual one)")
    parser.add_argument("--factorized-only", action="store_true",
                        help="only (re)write after_factorization.csv of the committed runs the workdir's results hold "
                             "(runs committed before that file existed); nothing else is touched")
    args = parser.parse_args()
    workdir, out = Path(args.workdir).resolve(), Path(args.out)
    results, configs = workdir / "results", [workdir / c for c in args.config]
    overlay = next((OVERLAY_DIRS[c] for c in args.config[1:] if c in OVERLAY_DIRS), None)
    if len(args.config) > 1 and overlay is None:
        print(f"mini_summary: --config {' '.join(args.config)}: a second config file must be one of the overlays "
              f"{', '.join(OVERLAY_DIRS)}", file=sys.stderr)
        return 2
    config = configs[-1]  # the experiment's name comes from the last file that sets it, as in Snakemake
    if args.factorized_only:
        import pandas as pd

        written = []
        for committed in sorted((out / "seeds").glob("s*/*/run_info.json")):
            seed, task = committed.parent.parent.name[1:], committed.parent.name
            chains = set(pd.read_csv(committed.parent / "runs.csv")["chain"].astype(str))  # the committed run's
            rows = after_factorization(results, seed, task, chains)
            if rows:
                pd.DataFrame(rows).to_csv(committed.parent / "after_factorization.csv", index=False, float_format="%.6g")
                written.append(f"s{seed}/{task}")
        print(f"mini_summary: after_factorization.csv for {', '.join(written) or 'no committed run'}")
        return 0
    for path in configs:
        if not path.is_file():
            print(f"mini_summary: --config {path.relative_to(workdir)}: no such file under {workdir}", file=sys.stderr)
            return 2
    tables = experiment_dir(results, config)
    missing = [name for name in COPY if not (tables / name).is_file()]
    if missing:
        print(f"mini_summary: {tables / missing[0]} is missing: the workflow has not finished "
              "(rerun benchmarks/mini_reproduction.sh)", file=sys.stderr)
        return 2
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=workdir, capture_output=True,
                                text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    import pandas as pd

    from mini_aggregate import config_digest

    runs = pd.read_csv(tables / "runs.csv")
    ranks = pd.read_csv(tables / "rank_study.csv")
    done = []
    digest = config_digest(config)
    base_digest = config_digest(configs[0]) if overlay else None
    for (seed, task), rows in runs.groupby(["seed", "task"]):
        d = out / (overlay or "seeds") / f"s{int(seed)}" / str(task)
        d.mkdir(parents=True, exist_ok=True)
        info_path = d / "run_info.json"
        previous = json.loads(info_path.read_text()) if info_path.is_file() else {}
        rank_rows = ranks[(ranks["seed"] == seed) & (ranks["task"] == task)]
        factorized = pd.DataFrame(after_factorization(results, int(seed), str(task), set(rows["chain"].astype(str))))
        # a run of a changed config replaces what was committed; one of the same config adds to it
        same_config = (previous.get("config_digest") == digest and previous.get("base_config_digest") == base_digest)
        merged = committed_rows_kept(d, set(rows["chain"].astype(str))) if same_config else {}
        if merged:  # an earlier invocation of the same config made other rows (e.g. another density): keep them
            rows = pd.concat([merged["runs.csv"], rows], ignore_index=True)
            rank_rows = pd.concat([merged.get("rank_study.csv"), rank_rows], ignore_index=True)
            factorized = pd.concat([merged.get("after_factorization.csv"), factorized], ignore_index=True)
        rows.to_csv(d / "runs.csv", index=False, float_format="%.6g")
        rank_rows.to_csv(d / "rank_study.csv", index=False, float_format="%.6g")
        if len(factorized):
            factorized.to_csv(d / "after_factorization.csv", index=False, float_format="%.6g")
        # a resumed run (same commit, same rows) adds up its invocations; a merged one lists the earlier apart
        invocations = (list(previous.get("snakemake_invocations_wall_s", []))
                       if not merged and previous.get("commit") == commit else [])
        if args.snakemake_wall_s is not None:
            invocations.append(args.snakemake_wall_s)
        earlier = list(previous.get("earlier_invocations", [])) if same_config else []
        if merged:
            earlier.append({k: previous.get(k) for k in ("command", "commit", "snakemake_invocations_wall_s")})
        info = {
            "command": args.command or COMMANDS.get(args.config[-1], f"snakemake --cores {args.cores} "
                                                                     f"--configfile {' '.join(args.config)}"),
            "config": args.config[-1],
            "config_digest": digest,
            "commit": commit,
            **({"configs": args.config, "base_config_digest": base_digest} if overlay else {}),
            **({"earlier_invocations": earlier} if earlier else {}),
            "seed": int(seed),
            "task": str(task),
            "tasks_in_invocation": sorted(map(str, runs["task"].unique())),
            "machine": {"cores": os.cpu_count(), "snakemake_cores": args.cores,
                        "platform": platform.platform(), "python": platform.python_version()},
            "snakemake_invocations_wall_s": invocations,
            "stage_wall_times": wall_times(results, int(seed), str(task), own=overlay_artifacts(rows) if overlay else None),
        }
        info_path.write_text(json.dumps(info, indent=2) + "\n")
        done.append(f"s{int(seed)}/{task}")
    print(f"mini_summary: committed {', '.join(done)} under {out / (overlay or 'seeds')}")
    # the table of every committed run (this one's and earlier ones), its figures, then the claims
    return subprocess.run([sys.executable, str(REPO / "benchmarks" / "mini_aggregate.py"), "--dir", str(out)],
                          cwd=REPO).returncode


if __name__ == "__main__":
    sys.exit(main())
