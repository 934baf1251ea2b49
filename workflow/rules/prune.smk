# Stage 1: prune the teacher (movement / magnitude / soft movement / PLATON) to one density.
# One per (task, seed, pruning setting, density), shared by every row that starts with it.


rule prune:
    input:
        teacher=f"{RESULTS}/{{model}}/{{task}}/s{{seed}}/{{teacher}}/metrics.json",
    output:
        metrics=f"{RESULTS}/{{model}}/{{task}}/s{{seed}}/{{teacher}}/{{prune}}/metrics.json",
    log:
        "logs/{model}/{task}/s{seed}/{teacher}/{prune}/prune.log",
    benchmark:
        "logs/{model}/{task}/s{seed}/{teacher}/{prune}/prune.benchmark.tsv",
    params:
        teacher=lambda wildcards, input: out_dir(input.teacher),
        data=lambda wildcards: data_flags(wildcards.task),
        flags=stage_flags("prune"),
        run=run_flags(),
        out=lambda wildcards, output: out_dir(output.metrics),
        deadline=signal_before_end_s,
    threads: config["compute"]["train_threads"]
    resources:
        **cluster_resources("prune", "train_threads"),
    conda:
        "../envs/lpaf.yaml"
    shell:
        f"{OFFLINE_ENV} LPAF_SIGNAL_BEFORE_END_S={{params.deadline}} OMP_NUM_THREADS={{threads}} "
        f"MKL_NUM_THREADS={{threads}} {train_launcher()} "
        "prune --model {params.teacher} {params.data} --seed {wildcards.seed} "
        "{params.flags} {params.run} --out {params.out} > {log} 2>&1"
