"""Snakemake script of rule `table`: run rows (params) -> results/table.csv, table.md, runs.csv,
rank_study.csv. The logic lives in lpaf.report; this file only maps Snakemake's objects onto it."""

import sys

sys.stderr = open(snakemake.log[0], "w")  # noqa: F821 (snakemake is injected)

from lpaf.report import write_table  # noqa: E402

write_table(
    snakemake.params.rows,  # noqa: F821
    snakemake.output.csv,  # noqa: F821
    md_path=snakemake.output.md,  # noqa: F821
    runs_path=snakemake.output.runs,  # noqa: F821
    rank_rows=snakemake.params.rank_rows,  # noqa: F821
    rank_path=snakemake.output.ranks,  # noqa: F821
)
