"""Snakemake script of the figure rules: one figure per job (kind in params). The logic lives in
lpaf.report; outside Snakemake, `python -m lpaf.report figure KIND ...` draws the same figure."""

import sys
from pathlib import Path

sys.stderr = open(snakemake.log[0], "w")  # noqa: F821 (snakemake is injected)
# this checkout's lpaf first (with --software-deployment-method conda it is not installed)
sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1]))  # noqa: F821

from lpaf.report import ablation_figure, metric_figure, rank_figure, speedup_figure  # noqa: E402

kind = snakemake.params.kind  # noqa: F821
for out in (snakemake.output.png, snakemake.output.pdf):  # noqa: F821 - the same figure, for screens and papers
    if kind == "metric":
        metric_figure(snakemake.input.table, snakemake.wildcards.task, out)  # noqa: F821
    elif kind == "rank":
        rank_figure(snakemake.input.ranks, snakemake.wildcards.task, out)  # noqa: F821
    elif kind == "ablation":
        ablation_figure(snakemake.input.table, out)  # noqa: F821
    else:
        speedup_figure(snakemake.input.table, out)  # noqa: F821
