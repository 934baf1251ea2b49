# Measurements on finished models: reload + dev scores + inference latency (the table's speed-up
# column), and the rank study of the teacher and the pruned models (claims C1, C2).
# Thread counts are fixed by the config, so latencies of different models compare.


rule evaluate:
    input:
        model=f"{RESULTS}/{{model}}/{{task}}/s{{seed}}/{{chain}}/metrics.json",
    output:
        json=f"{RESULTS}/{{model}}/{{task}}/s{{seed}}/{{chain}}/eval.json",
    log:
        "logs/{model}/{task}/s{seed}/{chain}/evaluate.log",
    params:
        model=lambda wildcards, input: out_dir(input.model),
        data=lambda wildcards: data_flags(wildcards.task),
        flags=evaluate_flags,
        run=run_flags(training=False),
    threads: config["compute"]["eval_threads"]
    resources:
        gpu=gpus(),
    conda:
        "../envs/lpaf.yaml"
    shell:
        f"{OFFLINE_ENV} OMP_NUM_THREADS={{threads}} MKL_NUM_THREADS={{threads}} {LPAF} "
        "evaluate --model {params.model} {params.data} --seed {wildcards.seed} "
        "{params.flags} {params.run} --out {output.json} > {log} 2>&1"


rule rank_study:
    input:
        model=f"{RESULTS}/{{model}}/{{task}}/s{{seed}}/{{chain}}/metrics.json",
    output:
        json=f"{RESULTS}/{{model}}/{{task}}/s{{seed}}/{{chain}}/rank.json",
    log:
        "logs/{model}/{task}/s{seed}/{chain}/rank_study.log",
    params:
        model=lambda wildcards, input: out_dir(input.model),
    threads: config["compute"]["eval_threads"]
    conda:
        "../envs/lpaf.yaml"
    shell:
        f"{OFFLINE_ENV} OMP_NUM_THREADS={{threads}} MKL_NUM_THREADS={{threads}} {LPAF} "
        "rank-study --models {params.model} --out {output.json} > {log} 2>&1"
