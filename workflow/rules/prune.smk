# Stage 1: prune to one density (movement / magnitude / soft movement / PLATON). The setting's
# `start` chooses the student: the teacher itself (finetuned, distilling from a frozen copy) or the
# pre-trained model (pretrained: fine-pruning, distilling from the teacher). Either way the artifact
# sits under its teacher, and `start` is part of its hash. One per (task, seed, setting, density).


rule prune:
    input:
        unpack(prune_inputs),
    output:
        metrics=f"{RESULTS}/{{model}}/{{task}}/s{{seed}}/{{teacher}}/{{prune}}/metrics.json",
    log:
        "logs/{model}/{task}/s{seed}/{teacher}/{prune}/prune.log",
    benchmark:
        "logs/{model}/{task}/s{seed}/{teacher}/{prune}/prune.benchmark.tsv"
    params:
        model=prune_model_flags,
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
        "prune {params.model} {params.data} --seed {wildcards.seed} "
        "{params.flags} {params.run} --out {params.out} > {log} 2>&1"
