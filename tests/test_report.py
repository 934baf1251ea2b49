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
        blob["predictions"] = {"degenerate": i == 0, "splits": {}}
        Path(row["metrics"]).write_text(json.dumps(blob))
    runs = load_runs(rows)
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


def test_figures_share_one_color_per_method(tmp_path):
    from lpaf.report import _method_colors

    table = _ablation_table()
    colors = _method_colors(table)
    assert list(colors) == ["lpaf", "lpaf − sa-svd", "lpaf − mixed-rank", "svd"]  # table order, dense excluded
    assert len(set(colors.values())) == 4
    assert _method_colors(table[table["method"] != "svd"])["lpaf"] == colors["lpaf"]


def test_rank_points_are_seed_means_with_sample_std():
    from lpaf.analysis import _mean_points

    rows = [{"retained_percent": 25.0 + i * 0.01, "density": 0.25, "avg_rank": r} for i, r in enumerate((100, 110, 120))]
    rows.append({"retained_percent": 10.0, "density": 0.1, "avg_rank": 50})
    points = _mean_points(rows, "avg_rank")
    assert points[0] == (10.0, 50.0, 0.0)
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
