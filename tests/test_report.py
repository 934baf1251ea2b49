"""lpaf.report: aggregation of hand-made metrics.json / eval.json files into the results table."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pandas as pd
import pytest

from lpaf.errors import LpafError
from lpaf.report import ablation_figure, aggregate, best_dev_evaluation, load_runs, main, markdown_table, markdown_tables, \
    metric_figure, rank_figure, speedup_figure, write_table

DENSE_PARAMS = 1000


def _metrics(task: str, metrics: dict, retained: float, total: int, headline_metric: str, stage: str) -> dict:
    nonzero = int(DENSE_PARAMS * retained / 100)
    return {
        "stage": stage, "task": task, "metrics": metrics, "headline_metric": headline_metric,
        "headline": metrics[headline_metric],
        "params": {"encoder_linear": DENSE_PARAMS, "encoder_linear_nonzero": nonzero,
                   "encoder_linear_dense": DENSE_PARAMS, "total": total, "total_nonzero": total},
        "retained_percent": 100.0, "retained_percent_nonzero": retained, "seed": 0,
    }


def _write(path: Path, blob: dict) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(blob))
    return str(path)


# (method, density) -> per-seed (f1, accuracy, latency_ms); dense latency 100 ms for every seed.
MRPC = {
    ("dense", 1.0): [(0.90, 0.85, 100.0), (0.88, 0.83, 100.0), (0.92, 0.87, 100.0)],
    ("svd", 0.25): [(0.80, 0.70, 50.0), (0.82, 0.72, 40.0), (0.78, 0.68, 25.0)],
}
SEEDS = [1, 2, 3]


@pytest.fixture
def runs_dir(tmp_path):
    """Hand-made files for mrpc (all measured) and rte (no latency measured)."""
    rows = []
    for (method, density), per_seed in MRPC.items():
        for seed, (f1, acc, latency) in zip(SEEDS, per_seed):
            d = tmp_path / "mrpc" / f"s{seed}" / method
            retained = 100.0 if method == "dense" else 25.0
            _write(d / "metrics.json", _metrics("mrpc", {"f1": f1, "accuracy": acc}, retained,
                                                5000 if method == "dense" else 4250, "f1",
                                                "finetune" if method == "dense" else "retrain"))
            _write(d / "eval.json", {"latency_ms": {"median_ms": latency, "min_ms": latency}})
            rows.append({"model": "m", "task": "mrpc", "method": method, "label": method, "density": density,
                         "seed": seed, "dense": method == "dense", "chain": method,
                         "metrics": str(d / "metrics.json"), "eval": str(d / "eval.json"),
                         "dense_eval": str(tmp_path / "mrpc" / f"s{seed}" / "dense" / "eval.json")})
    for method, density, acc in (("dense", 1.0, 0.70), ("svd", 0.25, 0.60)):
        d = tmp_path / "rte" / "s1" / method
        _write(d / "metrics.json", _metrics("rte", {"accuracy": acc}, 100.0 if method == "dense" else 25.0, 5000,
                                            "accuracy", "finetune"))
        rows.append({"model": "m", "task": "rte", "method": method, "label": method, "density": density, "seed": 1,
                     "dense": method == "dense", "chain": method, "metrics": str(d / "metrics.json"),
                     "eval": None, "dense_eval": None})
    return tmp_path, rows


def test_mean_and_std_over_seeds(runs_dir):
    _, rows = runs_dir
    table = aggregate(load_runs(rows))
    svd = table[(table.task == "mrpc") & (table.method == "svd")].iloc[0]
    f1s = [s[0] for s in MRPC[("svd", 0.25)]]
    assert svd["n_seeds"] == 3
    assert svd["f1_mean"] == pytest.approx(statistics.mean(f1s))
    assert svd["f1_std"] == pytest.approx(statistics.stdev(f1s))  # sample std, ddof = 1
    assert svd["accuracy_mean"] == pytest.approx(0.70)
    assert svd["headline_metric"] == "f1"
    assert svd["headline_mean"] == pytest.approx(statistics.mean(f1s))
    assert svd["retained_percent"] == pytest.approx(25.0)
    assert svd["params_total"] == 4250


def test_one_seed_has_no_std(runs_dir):
    _, rows = runs_dir
    table = aggregate(load_runs(rows))
    rte = table[(table.task == "rte") & (table.method == "svd")].iloc[0]
    assert rte["n_seeds"] == 1
    assert math.isnan(rte["accuracy_std"])


def test_speedup_is_paired_by_seed(runs_dir):
    _, rows = runs_dir
    runs = load_runs(rows)
    svd = runs[(runs.task == "mrpc") & (runs.method == "svd")].sort_values("seed")
    assert list(svd["speedup"]) == pytest.approx([2.0, 2.5, 4.0])
    table = aggregate(runs)
    row = table[(table.task == "mrpc") & (table.method == "svd")].iloc[0]
    assert row["speedup_mean"] == pytest.approx(statistics.mean([2.0, 2.5, 4.0]))
    assert row["speedup_std"] == pytest.approx(statistics.stdev([2.0, 2.5, 4.0]))
    assert bool(row["speedup_measured"]) is True
    dense = table[(table.task == "mrpc") & (table.method == "dense")].iloc[0]
    assert dense["speedup_mean"] == pytest.approx(1.0)


def test_unmeasured_task_takes_the_rows_speedup(runs_dir):
    _, rows = runs_dir
    table = aggregate(load_runs(rows))
    rte = table[(table.task == "rte") & (table.method == "svd")].iloc[0]
    assert rte["speedup_mean"] == pytest.approx(statistics.mean([2.0, 2.5, 4.0]))
    assert bool(rte["speedup_measured"]) is False


def test_table_order_and_columns(runs_dir):
    _, rows = runs_dir
    table = aggregate(load_runs(rows))
    assert list(table[["task", "method"]].itertuples(index=False, name=None)) == [
        ("mrpc", "dense"), ("mrpc", "svd"), ("rte", "dense"), ("rte", "svd")]
    for col in ("model", "task", "method", "density", "n_seeds", "headline_mean", "headline_std", "retained_percent",
                "params_total", "speedup_mean", "speedup_std"):
        assert col in table.columns


def test_markdown_is_paper_style(runs_dir):
    _, rows = runs_dir
    runs = load_runs(rows)
    md = markdown_table(aggregate(runs), runs)
    header = next(line for line in md.splitlines() if line.startswith("| method"))
    assert "MRPC F1/acc" in header and "| RTE |" in header and "GLUE avg" in header  # short headers
    svd_line = next(line for line in md.splitlines() if line.startswith("| svd"))
    assert "80.0 ± 2.0 / 70.0 ± 2.0" in svd_line  # GLUE scores x100, mean ± sample std
    assert "2.83×" in svd_line
    assert "| 67.5 |" in svd_line  # GLUE avg: MRPC (80 + 70) / 2, then with RTE 60
    assert "25.0" in svd_line


def test_write_table_and_figures(runs_dir):
    tmp, rows = runs_dir
    write_table(rows, tmp / "out" / "table.csv", tmp / "out" / "table.md", tmp / "out" / "runs.csv")
    table = pd.read_csv(tmp / "out" / "table.csv")
    assert len(table) == 4
    assert len(pd.read_csv(tmp / "out" / "runs.csv")) == 8
    assert metric_figure(tmp / "out" / "table.csv", "mrpc", tmp / "fig" / "m.png").stat().st_size > 1000
    assert speedup_figure(tmp / "out" / "table.csv", tmp / "fig" / "s.png").stat().st_size > 1000


def test_rank_figure_from_rank_rows(tmp_path):
    ranks = []
    for label, density, retained, rank, dense in (("dense", 1.0, 100.0, 32.0, True),
                                                   ("movement", 0.5, 50.0, 20.0, False),
                                                   ("magnitude", 0.5, 50.0, 31.0, False)):
        path = _write(tmp_path / label / "rank.json", {"models": [{
            "retained_percent": retained, "metric": 0.8, "metric_name": "f1",
            "summary": {"mean_rank": rank, "mean_rank_fraction": rank / 32, "mean_effective_rank_99": rank}}]})
        ranks.append({"model": "m", "task": "mrpc", "seed": 1, "label": label, "density": density, "dense": dense,
                      "rank": path, "metrics": ""})
    from lpaf.report import load_rank_rows

    df = load_rank_rows(ranks)
    assert list(df["avg_rank"]) == [32.0, 20.0, 31.0]
    assert rank_figure(df, "mrpc", tmp_path / "rank.png").stat().st_size > 1000


def test_missing_or_bad_files_name_the_file(runs_dir):
    tmp, rows = runs_dir
    bad = [dict(rows[0], metrics=str(tmp / "nope" / "metrics.json"))]
    with pytest.raises(LpafError, match="file not found: .*nope/metrics.json"):
        load_runs(bad)
    no_latency = _write(tmp / "eval-empty.json", {"metrics": {}})
    with pytest.raises(LpafError, match="has no latency_ms"):
        load_runs([dict(rows[0], eval=no_latency)])
    with pytest.raises(LpafError, match="no runs"):
        load_runs([])


def test_cli_draws_one_figure(runs_dir, capsys):
    tmp, rows = runs_dir
    write_table(rows, tmp / "table.csv")
    assert main(["figure", "metric", "--table", str(tmp / "table.csv"), "--task", "mrpc",
                 "--out", str(tmp / "one.png")]) == 0
    assert (tmp / "one.png").is_file()
    assert main(["figure", "metric", "--table", str(tmp / "table.csv"), "--task", "cola",
                 "--out", str(tmp / "two.png")]) == 2
    assert "no rows for task 'cola'" in capsys.readouterr().err


def test_magnitude_overlap_and_degenerate_runs_reach_the_table(runs_dir, tmp_path):
    """A pruned chain's magnitude overlap is a column; a seed that predicted one class is counted and
    flagged in the markdown table (†n), so claims can treat it as a failed run."""
    _, rows = runs_dir
    svd_rows = [r for r in rows if r["task"] == "mrpc" and r["method"] == "svd"]
    for i, row in enumerate(svd_rows):
        blob = json.loads(Path(row["metrics"]).read_text())
        blob["magnitude_overlap"] = {"mean": 0.5 + 0.1 * i, "overall": 0.5, "random_baseline": 0.25}
        blob["predictions"] = {"degenerate": i == 0, "splits": {"validation": {
            "majority_fraction": 1.0 if i == 0 else 0.9, "degenerate": i == 0}}}
        Path(row["metrics"]).write_text(json.dumps(blob))
    runs = load_runs(rows)
    # how near a collapse each run is: a runs.csv column (nan where no predictions were recorded)
    svd_runs = runs[(runs["task"] == "mrpc") & (runs["method"] == "svd")].sort_values("seed")
    assert sorted(svd_runs["majority_fraction"]) == [0.9] * (len(svd_rows) - 1) + [1.0]
    assert runs[runs["method"] == "dense"]["majority_fraction"].isna().all()
    table = aggregate(runs)
    svd = table[(table["task"] == "mrpc") & (table["method"] == "svd")].iloc[0]
    dense = table[(table["task"] == "mrpc") & (table["method"] == "dense")].iloc[0]
    assert svd["magnitude_overlap"] == pytest.approx(0.6) and math.isnan(dense["magnitude_overlap"])
    assert svd["n_degenerate"] == 1 and dense["n_degenerate"] == 0
    md = markdown_table(table, runs)
    svd_line = next(line for line in md.splitlines() if line.startswith("| svd |"))
    assert "0.60" in svd_line and "†1" in svd_line
    assert "†" not in next(line for line in md.splitlines() if line.startswith("| dense |"))


def test_latex_table_booktabs_bold_best_and_glue_average(runs_dir, tmp_path):
    _, rows = runs_dir
    write_table(rows, tmp_path / "t.csv", tex_path=tmp_path / "table.tex")
    tex = (tmp_path / "table.tex").read_text()
    for text in ("\\toprule", "\\midrule", "\\bottomrule", "MRPC F1/acc", "RTE", "GLUE avg", "Speed-up"):
        assert text in tex, text
    svd = next(line for line in tex.splitlines() if line.startswith("svd &"))
    dense = next(line for line in tex.splitlines() if line.startswith("dense &"))
    # svd, MRPC F1 mean 80.0 ± 2.0 (the only compressed row: bold); GLUE avg = mean of MRPC's (F1+acc)/2 and RTE
    assert "\\textbf{80.0}{\\scriptsize$\\pm$2.0}" in svd
    assert f"{((80.0 + 70.0) / 2 + 60.0) / 2:.1f}" in svd
    assert "\\textbf" not in dense and "90.0" in dense  # the dense row is a reference, never bold
    assert "$\\times$" in svd


def test_best_dev_evaluation_per_stage():
    """Best = the recorded best dev evaluation, or the end of training when that is higher; a pruning
    run's mid-schedule evaluations (denser than its target) never count."""
    base = _metrics("mrpc", {"f1": 0.70, "accuracy": 0.60}, 25.0, 4250, "f1", "retrain")
    best = {"step": 40, "epoch": 1.0, "f1": 0.80, "accuracy": 0.65}
    assert best_dev_evaluation(base | {"best_eval": best})["f1"] == 0.80
    assert best_dev_evaluation(base | {"train": {"best_eval": best}, "stage": "finetune"})["accuracy"] == 0.65
    assert best_dev_evaluation(base | {"train": {"best_eval": best}, "stage": "prune"})["f1"] == 0.70
    assert best_dev_evaluation(base | {"best_eval": best | {"f1": 0.50}})["f1"] == 0.70
    assert best_dev_evaluation(base)["f1"] == 0.70


def test_tables_carry_best_dev_scores_labelled(runs_dir, tmp_path):
    _, rows = runs_dir
    svd_rows = [r for r in rows if r["task"] == "mrpc" and r["method"] == "svd"]
    for i, row in enumerate(svd_rows):
        blob = json.loads(Path(row["metrics"]).read_text())
        blob["best_eval"] = {"step": 10, "f1": blob["metrics"]["f1"] + 0.05, "accuracy": blob["metrics"]["accuracy"]}
        Path(row["metrics"]).write_text(json.dumps(blob))
    table = aggregate(load_runs(rows))
    svd = table[(table.task == "mrpc") & (table.method == "svd")].iloc[0]
    assert svd["best_f1_mean"] == pytest.approx(0.85) and svd["f1_mean"] == pytest.approx(0.80)
    assert svd["best_headline_mean"] == pytest.approx(0.85) and svd["best_f1_std"] == pytest.approx(0.02)
    md = markdown_tables(table)
    end_part, best_part = md.split("## Best dev evaluation")
    assert "End of training (the paper-style table)" in end_part and "80.0 ± 2.0 / 70.0 ± 2.0" in end_part
    assert "85.0 ± 2.0 / 70.0 ± 2.0" in best_part and "selected on the same dev set" in best_part
    write_table(rows, tmp_path / "t.csv", tex_path=tmp_path / "table.tex")
    tex = (tmp_path / "table.tex").read_text()
    assert tex.count("\\begin{table}") == 2 and "end of training" in tex and "best dev evaluation" in tex
    assert "\\textbf{85.0}" in tex.split("best dev evaluation")[0].split("\\end{table}")[-1]


def _ablation_table() -> pd.DataFrame:
    rows = [{"model": "m", "task": t, "method": "dense", "label": "dense", "density": 1.0, "dense": True,
             "headline_mean": 0.9, "headline_std": float("nan"), "retained_percent": 100.0} for t in ("mrpc", "rte")]
    for method, label, score in (("lpaf", "lpaf", 0.8), ("lpaf-no-sa-svd", "lpaf − sa-svd", 0.7),
                                 ("lpaf-no-mixed-rank", "lpaf − mixed-rank", 0.75), ("svd", "svd", 0.6)):
        for density in (0.5, 0.25):
            rows += [{"model": "m", "task": t, "method": method, "label": label, "density": density, "dense": False,
                      "headline_mean": score * density * 2, "headline_std": 0.01, "retained_percent": density * 100}
                     for t in ("mrpc", "rte")]
    return pd.DataFrame(rows)


def test_ablation_figure_draws_the_three_rows_per_density(tmp_path):
    for out in (tmp_path / "ablation.png", tmp_path / "ablation.pdf"):
        assert ablation_figure(_ablation_table(), out).stat().st_size > 1000
    assert (tmp_path / "ablation.pdf").read_bytes().startswith(b"%PDF")
    only_svd = _ablation_table().query("method in ['dense', 'svd', 'lpaf']")
    with pytest.raises(LpafError, match="needs at least two of the methods"):
        ablation_figure(only_svd, tmp_path / "x.png")


def test_rank_points_are_seed_means_with_sample_std():
    from lpaf.analysis import _mean_points

    rows = [{"retained_percent": 25.0 + i * 0.01, "density": 0.25, "avg_rank": r} for i, r in enumerate((100, 110, 120))]
    rows.append({"retained_percent": 10.0, "density": 0.1, "avg_rank": 50})
    points = _mean_points(rows, "avg_rank")
    assert points[0][:2] == (10.0, 50.0) and math.isnan(points[0][2])  # one seed: no error bar
    x, mean, std = points[1]
    assert x == pytest.approx(25.01) and mean == pytest.approx(110.0) and std == pytest.approx(10.0)


def test_speedup_and_device_come_from_the_one_timing_job(runs_dir, tmp_path):
    """Rows naming a timing.json take both latencies from it (one process, one device) and its device."""
    _, rows = runs_dir
    timed = {}
    for r in rows:
        if r["task"] == "mrpc":
            model_dir, dense_dir = str(Path(r["metrics"]).parent), str(Path(r["dense_eval"]).parent)
            timed[model_dir] = {"median_ms": 10.0 if r["method"] == "dense" else 4.0}
            r.update(timing=str(tmp_path / "timing.json"), timing_model=model_dir, timing_dense=dense_dir,
                     eval=None, dense_eval=None)
    (tmp_path / "timing.json").write_text(json.dumps({"device": "cuda: Fake GPU", "latency_ms": timed}))
    runs = load_runs(rows)
    svd = runs[(runs.task == "mrpc") & (runs.method == "svd")]
    assert list(svd["speedup"]) == pytest.approx([2.5, 2.5, 2.5]) and set(svd["device"]) == {"cuda: Fake GPU"}
    table = aggregate(runs)
    assert set(table["device"]) == {"cuda: Fake GPU"}  # rte (not timed) takes the timing job's device too
    rte = table[(table.task == "rte") & (table.method == "svd")].iloc[0]
    assert rte["speedup_mean"] == pytest.approx(2.5) and not bool(rte["speedup_measured"])
    rows[0]["timing_model"] = "/not/timed"
    with pytest.raises(LpafError, match="did not time /not/timed"):
        load_runs(rows)


def test_seeds_built_with_different_stage_settings_are_refused(tmp_path):
    """A row whose seeds were built with different resolved stage arguments (here a re-training
    default that changed between versions: the artifact path, hashed from the configured flags, is
    the same) is an error naming the row, the setting and both values; arguments only one seed
    recorded (a newer switch), file paths, the seed and the device are not compared."""
    rows = []
    for seed, retrain_args in ((1, {"factor_budget": "matched", "max_steps": 195, "new_switch": 1}),
                               (2, {"factor_budget": "steps", "max_steps": 125})):
        base = tmp_path / f"s{seed}" / "dense-abc"
        prune = base / "prune-platon-def-d0.25"
        fact = prune / "fact-sa-svd-123-d0.25"
        retrain = fact / "retrain-mixed-rank-456"
        for d, stage, args in ((base, "finetune", {"lr": 5e-5}), (prune, "prune", {"method": "platon"}),
                               (fact, "factorize", {"pruned_weight": 0.5}), (retrain, "retrain", retrain_args)):
            blob = _metrics("sst2", {"accuracy": 0.8}, 25.0, 4000, "accuracy", stage)
            blob["args"] = {**args, "seed": seed, "out": str(d), "model": str(d.parent), "device": f"cuda:{seed}"}
            _write(d / "metrics.json", blob)
        rows.append({"model": "m", "task": "sst2", "method": "lpaf", "label": "lpaf", "density": 0.25, "seed": seed,
                     "dense": False, "chain": "dense-abc/prune-platon-def-d0.25/fact-sa-svd-123-d0.25/retrain-mixed-rank-456",
                     "metrics": str(retrain / "metrics.json"), "eval": None, "dense_eval": None})
    with pytest.raises(LpafError, match=r"sst2 lpaf row at density 0.25 mixes settings across seeds: "
                                        r"retrain.factor_budget is 'matched' in seed 1 and 'steps' in seed 2"):
        load_runs(rows)
    # the same recipe (paths, seeds and devices differ; seed 1 has one more recorded switch): accepted
    blob = json.loads(Path(rows[1]["metrics"]).read_text())
    blob["args"].update(factor_budget="matched", max_steps=195)
    Path(rows[1]["metrics"]).write_text(json.dumps(blob))
    runs = load_runs(rows)
    assert aggregate(runs)["n_seeds"].tolist() == [2]
    # an ancestor's setting counts too
    prune_metrics = Path(rows[1]["metrics"]).parent.parent.parent / "metrics.json"
    blob = json.loads(prune_metrics.read_text())
    blob["args"]["method"] = "movement"
    prune_metrics.write_text(json.dumps(blob))
    with pytest.raises(LpafError, match="prune.method is 'platon' in seed 1 and 'movement' in seed 2"):
        load_runs(rows)


# --------------------------------------------------------------------------------------------
# Paper outputs that keep their marks (issue 31, point 5)
# --------------------------------------------------------------------------------------------

def _paper_table(rows: list[tuple]) -> pd.DataFrame:
    """An aggregated table by hand: (label, density, task, {metric: mean}, n_degenerate) per row,
    3 seeds, std 0.01 (so cells carry a ±)."""
    out = []
    for label, density, task, means, failed in rows:
        row = {"model": "m", "task": task, "method": label, "label": label, "density": density,
               "dense": label == "dense", "n_seeds": 3, "n_degenerate": failed, "headline_metric": next(iter(means)),
               "retained_percent": density * 100, "speedup_mean": 1.0 / density, "magnitude_overlap": math.nan}
        for key, mean in means.items():
            row[f"{key}_mean"], row[f"{key}_std"] = mean, 0.01
        row["headline_mean"], row["headline_std"] = next(iter(means.values())), 0.01
        out.append(row)
    return pd.DataFrame(out)


# MRPC at 0.5: a and b collapsed to the majority class (one tied, higher F1), c is a real model; SST-2: a and
# c tie at the best displayed value, b is below. At 0.25 every compressed MRPC row collapsed (the smoke run).
MARKED = _paper_table([
    ("dense", 1.0, "mrpc", {"f1": 0.88, "accuracy": 0.84}, 0),
    ("dense", 1.0, "sst2", {"accuracy": 0.91}, 0),
    ("a", 0.5, "mrpc", {"f1": 0.812, "accuracy": 0.684}, 3),
    ("a", 0.5, "sst2", {"accuracy": 0.9001}, 0),
    ("b", 0.5, "mrpc", {"f1": 0.812, "accuracy": 0.684}, 1),
    ("b", 0.5, "sst2", {"accuracy": 0.85}, 0),
    ("c", 0.5, "mrpc", {"f1": 0.78, "accuracy": 0.70}, 0),
    ("c", 0.5, "sst2", {"accuracy": 0.8999}, 0),
    ("a", 0.25, "mrpc", {"f1": 0.812, "accuracy": 0.684}, 3),
    ("a", 0.25, "sst2", {"accuracy": 0.80}, 0),
    ("b", 0.25, "mrpc", {"f1": 0.812, "accuracy": 0.684}, 3),
    ("b", 0.25, "sst2", {"accuracy": 0.70}, 0),
])


def _tex_cells(tex: str, label: str, density_block: int) -> dict[str, str]:
    """The cells of one row of the first table: density_block 0 = the dense block, 1 = the first density…"""
    first = tex.split("\\end{table}")[0]
    header, *blocks = first.split("\\midrule")[1:]  # [header, dense rows, density 0.5 rows, density 0.25 rows]
    names = ["Method", "% params", "MRPC", "SST-2", "GLUE avg", "Speed-up"]
    block = (header + "".join(blocks[:0])) if density_block == 0 else blocks[density_block - 1]
    line = next(l for l in block.splitlines() if l.startswith(f"{label} &"))
    return dict(zip(names, line.removesuffix(" \\\\").split(" & ")))


def test_latex_table_carries_failed_marks_and_never_bolds_a_failed_row():
    from lpaf.table_tex import latex_table

    tex = latex_table(MARKED)
    a, b, c = (_tex_cells(tex, x, 1) for x in "abc")
    # the † of the markdown table (n failed seeds) is in the LaTeX cell too, and explained in the caption
    assert "\\dagger" in a["MRPC"] and "3" in a["MRPC"].split("\\dagger")[1]
    assert "\\dagger" in b["MRPC"] and "\\dagger" not in c["MRPC"] and "\\dagger" not in a["SST-2"]
    assert "\\dagger" in tex.split("\\caption{")[1].split("\\label")[0]
    # failed rows are never bold, even with the highest value; the best real row is
    assert "\\textbf" not in a["MRPC"] and "\\textbf" not in b["MRPC"]
    assert "\\textbf{78.0}" in c["MRPC"] and "\\textbf{70.0}" in c["MRPC"]
    # ties at the displayed value (90.0 and 90.0) are both bold; the lower row is not
    assert "\\textbf{90.0}" in a["SST-2"] and "\\textbf{90.0}" in c["SST-2"] and "\\textbf" not in b["SST-2"]
    # GLUE avg: a row with a failed task is not a candidate (a's 82.4 > c's 82.0)
    assert "\\textbf" not in a["GLUE avg"] and "\\textbf{82.0}" in c["GLUE avg"]
    # density 0.25: every compressed MRPC row failed with tied values -> nothing bold there, both marked
    a25, b25 = _tex_cells(tex, "a", 2), _tex_cells(tex, "b", 2)
    assert "\\textbf" not in a25["MRPC"] + b25["MRPC"]
    assert "\\dagger" in a25["MRPC"] and "\\dagger" in b25["MRPC"]
    assert "\\textbf{80.0}" in a25["SST-2"]


def _captured_figures(monkeypatch) -> list:
    """Every matplotlib Figure saved from now on (the figure functions return only the path)."""
    from matplotlib.figure import Figure

    saved, original = [], Figure.savefig

    def savefig(self, *args, **kwargs):
        saved.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    return saved


def _legend_colours(fig) -> dict[str, tuple]:
    """label -> RGBA of every labelled method artist (lines, error-bar lines, bars) in every axes."""
    from matplotlib.colors import to_rgba
    from matplotlib.container import BarContainer, ErrorbarContainer

    out = {}
    for ax in fig.axes:
        for c in ax.containers:
            label = c.get_label()
            if not label or label.startswith("_"):
                continue
            if isinstance(c, ErrorbarContainer):
                out[label] = to_rgba(c.lines[0].get_color())
            elif isinstance(c, BarContainer):
                out[label] = to_rgba(c.patches[0].get_facecolor())
        for line in ax.get_lines():
            if line.get_label() and not line.get_label().startswith("_") and line.get_label() not in out:
                out[line.get_label()] = to_rgba(line.get_color())
    return out


def _title(fig) -> str:
    suptitle = fig._suptitle.get_text() if fig._suptitle is not None else ""
    return " ".join([suptitle] + [ax.get_title() for ax in fig.axes]).strip()


def _config_methods() -> dict[str, str]:
    """method key -> label of the default experiment (config/config.yaml)."""
    import yaml

    methods = yaml.safe_load((Path(__file__).resolve().parents[1] / "config" / "config.yaml").read_text())["methods"]
    return {key: (spec or {}).get("label") or key for key, spec in methods.items()}


def _figure_table(methods: dict[str, str], n_seeds: int = 3, tasks=("mrpc",)) -> pd.DataFrame:
    rows = []
    for task in tasks:
        metric = {"mrpc": "f1", "stsb": "pearson", "sst2": "accuracy"}[task]
        for i, (key, label) in enumerate(methods.items()):
            for density in ((1.0,) if key == "dense" else (0.5, 0.25)):
                rows.append({"model": "m", "task": task, "method": key, "label": label, "density": density,
                             "dense": key == "dense", "n_seeds": n_seeds, "headline_metric": metric,
                             "headline_mean": 0.9 - 0.01 * i - 0.1 * (1 - density),
                             "headline_std": 0.02 if n_seeds > 1 else float("nan"),
                             "retained_percent": density * 100, "speedup_mean": 1.0 / density})
    return pd.DataFrame(rows)


def _rank_table(labels: list[str], seeds=(1, 2)) -> pd.DataFrame:
    rows = [{"model": "m", "task": "mrpc", "seed": s, "label": "dense", "density": 1.0, "dense": True,
             "retained_percent": 100.0, "metric": 0.9, "metric_name": "f1", "avg_rank": 32.0} for s in seeds]
    for i, label in enumerate(labels):
        for density in (0.5, 0.25):
            rows += [{"model": "m", "task": "mrpc", "seed": s, "label": label, "density": density, "dense": False,
                      "retained_percent": density * 100, "metric": 0.8 - 0.01 * i + 0.001 * s,
                      "metric_name": "f1", "avg_rank": 20.0 + i + s} for s in seeds]
    return pd.DataFrame(rows)


def test_one_colour_and_name_per_method_across_figures(tmp_path, monkeypatch):
    """platon (say) has one colour whatever else a figure holds and in whichever order: the metric
    figure (every default method), the rank figure (only the pruners, sorted differently), the
    ablation and the speed-up figure all draw it alike, under one name."""
    saved = _captured_figures(monkeypatch)
    methods = _config_methods()
    table = _figure_table(methods)
    metric_figure(table, "mrpc", tmp_path / "metric.png")
    rank_figure(_rank_table(["platon", "magnitude"]), "mrpc", tmp_path / "rank.png")
    ablation_figure(table, tmp_path / "ablation.png")
    speedup_figure(table, tmp_path / "speedup.png")
    metric, rank, ablation, speedup = (_legend_colours(f) for f in saved)
    for figure in (rank, ablation, speedup):
        for label, colour in figure.items():
            if label in metric:
                assert colour == metric[label], label
    assert rank["platon"] == metric["platon"] and rank["magnitude"] == metric["magnitude"]
    assert ablation["lpaf"] == metric["lpaf"] and speedup["lpaf − sa-svd"] == metric["lpaf − sa-svd"]
    compressed = {label for key, label in methods.items() if key != "dense"}
    assert compressed <= set(metric) and compressed <= set(speedup)  # one name: the table's label
    # a figure with fewer methods draws the ones it has in the same colours
    saved.clear()
    metric_figure(table[table["method"].isin(["dense", "lpaf", "platon"])], "mrpc", tmp_path / "few.png")
    few = _legend_colours(saved[0])
    assert few["platon"] == metric["platon"] and few["lpaf"] == metric["lpaf"]


def _lab(rgba) -> tuple[float, float, float]:
    """sRGB -> CIELAB (D65)."""
    def lin(c):
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (lin(c) for c in rgba[:3])
    xyz = (0.4124 * r + 0.3576 * g + 0.1805 * b) / 0.95047, 0.2126 * r + 0.7152 * g + 0.0722 * b, \
        (0.0193 * r + 0.1192 * g + 0.9505 * b) / 1.08883
    f = [t ** (1 / 3) if t > 216 / 24389 else (24389 / 27 * t + 16) / 116 for t in xyz]
    return 116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])


def test_method_colours_are_easy_to_tell_apart(tmp_path, monkeypatch):
    """Every method of the default experiment has its own colour, no light tab20 shade of another,
    and any two differ by at least 20 CIELAB units (ΔE76)."""
    from matplotlib import colormaps
    from matplotlib.colors import to_rgba

    saved = _captured_figures(monkeypatch)
    metric_figure(_figure_table(_config_methods()), "mrpc", tmp_path / "metric.png")
    colours = {label: c for label, c in _legend_colours(saved[0]).items() if not label.startswith("dense")}
    assert len(colours) == len(_config_methods()) - 1
    assert len(set(colours.values())) == len(colours)
    light_tab20 = {to_rgba(c) for c in colormaps["tab20"].colors[1::2]}
    assert not light_tab20 & set(colours.values())
    labs = {label: _lab(c) for label, c in colours.items()}
    for x in labs:
        for y in labs:
            if x < y:
                assert math.dist(labs[x], labs[y]) >= 20, (x, y)


def test_every_figure_has_a_title_and_metric_display_names(tmp_path, monkeypatch):
    saved = _captured_figures(monkeypatch)
    methods = {"dense": "dense", "platon": "platon", "lpaf": "lpaf", "lpaf-no-sa-svd": "lpaf − sa-svd"}
    table = _figure_table(methods, tasks=("mrpc", "stsb"))
    metric_figure(table, "mrpc", tmp_path / "m1.png")
    metric_figure(table, "stsb", tmp_path / "m2.png")
    rank_figure(_rank_table(["platon"]), "mrpc", tmp_path / "rank.png")
    ablation_figure(table, tmp_path / "ablation.png")
    speedup_figure(table, tmp_path / "speedup.png")
    mrpc, stsb, rank, ablation, speedup = saved
    assert "MRPC" in _title(mrpc) and "STS-B" in _title(stsb)
    assert "MRPC" in _title(rank) and "rank" in _title(rank).lower()
    assert "ablation" in _title(ablation).lower() and "speed-up" in _title(speedup).lower()
    assert mrpc.axes[0].get_ylabel() == "F1" and stsb.axes[0].get_ylabel() == "Pearson r"
    assert rank.axes[0].get_ylabel() == "F1"
    ticks = " ".join(t.get_text() for t in ablation.axes[0].get_xticklabels())
    assert "MRPC" in ticks and "STS-B" in ticks and "Pearson r" in ticks  # task and its metric, not raw ids
    for fig in saved:
        for ax in fig.axes:
            text = " ".join([ax.get_ylabel(), ax.get_xlabel()] + [t.get_text() for t in ax.get_xticklabels()])
            for raw in ("×100", "pearson", "f1", "matthews_correlation", "headline"):
                assert raw not in text, (raw, text)


def _error_bars(fig) -> int:
    """How many drawn error bars (segments with a finite length) the figure has."""
    import numpy as np
    from matplotlib.container import BarContainer, ErrorbarContainer

    n = 0
    for ax in fig.axes:
        for c in ax.containers:
            bars = c if isinstance(c, ErrorbarContainer) else getattr(c, "errorbar", None) \
                if isinstance(c, BarContainer) else None
            if bars is None or not bars.has_yerr:
                continue
            for collection in bars.lines[2]:
                n += sum(1 for seg in collection.get_segments() if len(seg) and np.all(np.isfinite(seg)))
    return n


@pytest.mark.parametrize("n_seeds", [1, 3])
def test_error_bars_only_with_two_seeds_or_more(tmp_path, monkeypatch, n_seeds):
    saved = _captured_figures(monkeypatch)
    table = _figure_table({"dense": "dense", "platon": "platon", "lpaf": "lpaf", "lpaf-no-sa-svd": "lpaf − sa-svd"},
                          n_seeds=n_seeds)
    metric_figure(table, "mrpc", tmp_path / "metric.png")
    ablation_figure(table, tmp_path / "ablation.png")
    rank_figure(_rank_table(["platon"], seeds=tuple(range(1, n_seeds + 1))), "mrpc", tmp_path / "rank.png")
    for fig in saved:
        if n_seeds == 1:
            assert _error_bars(fig) == 0, _title(fig)
        else:
            assert _error_bars(fig) > 0, _title(fig)
