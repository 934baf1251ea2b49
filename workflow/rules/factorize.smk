# Stage 2: factorize the teacher or a pruned model into low-rank factors (svd / fwsvd /
# sparsity-aware SVD). {source} is the teacher, or the teacher/pruned-model path.


rule factorize:
    input:
        source=f"{RESULTS}/{{model}}/{{task}}/s{{seed}}/{{source}}/metrics.json",
    output:
        metrics=f"{RESULTS}/{{model}}/{{task}}/s{{seed}}/{{source}}/{{fact}}/metrics.json",
    log:
        "logs/{model}/{task}/s{seed}/{source}/{fact}/factorize.log",
    benchmark:
        "logs/{model}/{task}/s{seed}/{source}/{fact}/factorize.benchmark.tsv"
    params:
        source=lambda wildcards, input: out_dir(input.source),
        data=lambda wildcards: data_flags(wildcards.task),
        flags=stage_flags("factorize"),
        run=placed_run_flags("factorize"),
        out=lambda wildcards, output: out_dir(output.metrics),
    threads: config["compute"]["train_threads"]
    resources:
        **cluster_resources("factorize", "train_threads"),
    conda:
        "../envs/lpaf.yaml"
    shell:
        f"{OFFLINE_ENV} OMP_NUM_THREADS={{threads}} MKL_NUM_THREADS={{threads}} {LPAF} "
        "factorize --model {params.source} {params.data} --seed {wildcards.seed} "
        "{params.flags} {params.run} --out {params.out} > {log} 2>&1"
