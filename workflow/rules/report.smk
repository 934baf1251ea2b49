# The experiment's table and figures (results/<experiment>/): light local rules over the metrics
# files, rerun whenever a row changes. `snakemake --report results/<experiment>/report.html
# --configfile <its config>` collects them with their captions (refused while the table is missing).


rule table:
    input:
        metrics=[r["metrics"] for r in PLAN.report_rows()],
        evals=sorted({f for r in PLAN.report_rows() for f in (r["eval"], r["dense_eval"]) if f}),
        timing=sorted({r["timing"] for r in PLAN.report_rows() if r["timing"]}),
        ranks=[r["rank"] for r in PLAN.rank_rows()],
    output:
        csv=report(f"{EXPERIMENT_DIR}/table.csv", caption="../report/table.rst", category="Table"),
        md=report(f"{EXPERIMENT_DIR}/table.md", caption="../report/table_md.rst", category="Table"),
        tex=report(f"{EXPERIMENT_DIR}/table.tex", caption="../report/table_tex.rst", category="Table"),
        runs=f"{EXPERIMENT_DIR}/runs.csv",
        ranks=f"{EXPERIMENT_DIR}/rank_study.csv",
    log:
        f"logs/{EXPERIMENT}/report/table.log",
    params:
        rows=PLAN.report_rows(),
        rank_rows=PLAN.rank_rows(),
    conda:
        "../envs/lpaf.yaml"
    script:
        "../scripts/table.py"


rule figure_metric:
    input:
        table=rules.table.output.csv,
    output:
        png=report(
            f"{EXPERIMENT_DIR}/figures/{{task}}_metric.png",
            caption="../report/metric.rst",
            category="Metric vs % retained",
            labels={"task": "{task}"},
        ),
        pdf=f"{EXPERIMENT_DIR}/figures/{{task}}_metric.pdf",
    log:
        f"logs/{EXPERIMENT}/report/figure_metric_{{task}}.log",
    params:
        kind="metric",
    conda:
        "../envs/lpaf.yaml"
    script:
        "../scripts/figure.py"


rule figure_rank:
    input:
        ranks=rules.table.output.ranks,
    output:
        png=report(
            f"{EXPERIMENT_DIR}/figures/{{task}}_rank.png",
            caption="../report/rank.rst",
            category="Rank study",
            labels={"task": "{task}"},
        ),
        pdf=f"{EXPERIMENT_DIR}/figures/{{task}}_rank.pdf",
    log:
        f"logs/{EXPERIMENT}/report/figure_rank_{{task}}.log",
    params:
        kind="rank",
    conda:
        "../envs/lpaf.yaml"
    script:
        "../scripts/figure.py"


rule figure_speedup:
    input:
        table=rules.table.output.csv,
    output:
        png=report(
            f"{EXPERIMENT_DIR}/figures/speedup.png",
            caption="../report/speedup.rst",
            category="Speed-up",
            labels={"figure": "speed-up vs % retained"},
        ),
        pdf=f"{EXPERIMENT_DIR}/figures/speedup.pdf",
    log:
        f"logs/{EXPERIMENT}/report/figure_speedup.log",
    params:
        kind="speedup",
    conda:
        "../envs/lpaf.yaml"
    script:
        "../scripts/figure.py"


rule figure_ablation:
    input:
        table=rules.table.output.csv,
    output:
        png=report(
            f"{EXPERIMENT_DIR}/figures/ablation.png",
            caption="../report/ablation.rst",
            category="Ablation",
            labels={"figure": "lpaf vs − sa-svd vs − mixed-rank"},
        ),
        pdf=f"{EXPERIMENT_DIR}/figures/ablation.pdf",
    log:
        f"logs/{EXPERIMENT}/report/figure_ablation.log",
    params:
        kind="ablation",
    conda:
        "../envs/lpaf.yaml"
    script:
        "../scripts/figure.py"
