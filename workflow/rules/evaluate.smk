# Measurements on finished models: reload + dev scores (evaluate), inference latency of every model
# side by side in one job per experiment (timing: the table's speed-up and device columns), and
# the rank study of the teacher and the pruned models (claims C1, C2).


rule evaluate:
    input:
        model=f"{RESULTS}/{{model}}/{{task}}/s{{seed}}/{{chain}}/metrics.json",
    output:
        json=f"{RESULTS}/{{model}}/{{task}}/s{{seed}}/{{chain}}/eval.json",
    log:
        "logs/{model}/{task}/s{seed}/{chain}/evaluate.log",
    benchmark:
        "logs/{model}/{task}/s{seed}/{chain}/evaluate.benchmark.tsv"
    params:
        model=lambda wildcards, input: out_dir(input.model),
        data=lambda wildcards: data_flags(wildcards.task),
        flags=evaluate_flags,
        run=placed_run_flags("evaluate"),
    threads: config["compute"]["eval_threads"]
    resources:
        **cluster_resources("evaluate", "eval_threads"),
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
    benchmark:
        "logs/{model}/{task}/s{seed}/{chain}/rank_study.benchmark.tsv"
    params:
        model=lambda wildcards, input: out_dir(input.model),
    threads: config["compute"]["eval_threads"]
    resources:
        **cluster_resources("rank_study", "eval_threads"),
    conda:
        "../envs/lpaf.yaml"
    shell:
        f"{OFFLINE_ENV} OMP_NUM_THREADS={{threads}} MKL_NUM_THREADS={{threads}} {LPAF} "
        "rank-study --models {params.model} --out {output.json} > {log} 2>&1"


rule timing:
    input:
        models=timing_inputs,
    output:
        json=PLAN.timing_file(),
    log:
        f"logs/{EXPERIMENT}/timing.log",
    benchmark:
        f"logs/{EXPERIMENT}/timing.benchmark.tsv"
    params:
        models=lambda wildcards, input: " ".join(shlex.quote(out_dir(m)) for m in input.models),
        flags=to_flags({"rounds": config["evaluate"]["latency_batches"]}),
        run=run_flags(training=False),
    threads: config["compute"]["eval_threads"]  # fixed, so latencies of different runs compare
    resources:
        **cluster_resources("timing", "eval_threads"),
    conda:
        "../envs/lpaf.yaml"
    shell:
        f"{OFFLINE_ENV} OMP_NUM_THREADS={{threads}} MKL_NUM_THREADS={{threads}} {LPAF} "
        "time-models --models {params.models} {params.flags} {params.run} --out {output.json} > {log} 2>&1"
