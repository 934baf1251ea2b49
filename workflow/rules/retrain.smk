# Stage 3: re-train a factorized model (plain or mixed-rank), distilling from the teacher.


rule retrain:
    input:
        model=f"{RESULTS}/{{model}}/{{task}}/s{{seed}}/{{source}}/{{fact}}/metrics.json",
        teacher=lambda wildcards: f"{RESULTS}/{wildcards.model}/{wildcards.task}/s{wildcards.seed}/"
        f"{teacher_of(wildcards.source)}/metrics.json",
    output:
        metrics=f"{RESULTS}/{{model}}/{{task}}/s{{seed}}/{{source}}/{{fact}}/{{retrain}}/metrics.json",
    log:
        "logs/{model}/{task}/s{seed}/{source}/{fact}/{retrain}/retrain.log",
    benchmark:
        "logs/{model}/{task}/s{seed}/{source}/{fact}/{retrain}/retrain.benchmark.tsv"
    params:
        model=lambda wildcards, input: out_dir(input.model),
        teacher=lambda wildcards, input: out_dir(input.teacher),
        data=lambda wildcards: data_flags(wildcards.task),
        flags=stage_flags("retrain"),
        run=run_flags(),
        out=lambda wildcards, output: out_dir(output.metrics),
        deadline=signal_before_end_s,
    threads: config["compute"]["train_threads"]
    resources:
        **cluster_resources("retrain", "train_threads"),
    conda:
        "../envs/lpaf.yaml"
    shell:
        f"{OFFLINE_ENV} LPAF_SIGNAL_BEFORE_END_S={{params.deadline}} OMP_NUM_THREADS={{threads}} "
        f"MKL_NUM_THREADS={{threads}} {train_launcher()} "
        "retrain --model {params.model} --teacher {params.teacher} {params.data} --seed {wildcards.seed} "
        "{params.flags} {params.run} --out {params.out} > {log} 2>&1"
