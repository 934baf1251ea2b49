"""Snakemake script of rule `table`: run rows (params) -> results/table.csv, table.md, runs.csv,
rank_study.csv. The logic lives in lpaf.report; this file only maps Snakemake's objects onto it."""

import sys
from pathlib import Path

sys.stderr = open(snakemake.log[0], "w")  # noqa: F821 (snakemake is injected)
# this checkout's lpaf first (with --software-deployment-method conda it is not installed)
sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1]))  # noqa: F821

from lpaf.report import write_table  # noqa: E402

write_table(
    snakemake.params.rows,  # noqa: F821
    snakemake.output.csv,  # noqa: F821
    md_path=snakemake.output.md,  # noqa: F821
    tex_path=snakemake.output.tex,  # noqa: F821
    runs_path=snakemake.output.runs,  # noqa: F821
    rank_rows=snakemake.params.rank_rows,  # noqa: F821
    rank_path=snakemake.output.ranks,  # noqa: F821
)
