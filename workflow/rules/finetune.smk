# Stage 0: fine-tune the pre-trained model on each task and seed - the dense reference row and
# the distillation teacher of every later stage. One per (task, seed), shared by all rows.
# A degenerate teacher (one prediction for almost every dev example) fails its job with exit code 3:
# lpaf writes it to <teacher>.degenerate for inspection, never to the output, so nothing of that task
# builds on it (the other tasks go on: keep-going). Accept one anyway with LPAF_ALLOW_DEGENERATE=1
# snakemake ...; the smoke run (a random model, a few steps on synthetic data) always accepts them.


rule finetune:
    input:
        model=model_input,
        data=data_input,
    output:
        metrics=f"{RESULTS}/{{model}}/{{task}}/s{{seed}}/{{teacher}}/metrics.json",
    log:
        "logs/{model}/{task}/s{seed}/{teacher}/finetune.log",
    benchmark:
        "logs/{model}/{task}/s{seed}/{teacher}/finetune.benchmark.tsv"
    params:
        model=model_dir(),
        revision=to_flags({"model_revision": config["model_revision"]}),
        data=lambda wildcards: data_flags(wildcards.task),
        flags=teacher_flags,
        accept="--allow-degenerate" if config["smoke_assets"] else "",
        run=run_flags(),
        out=lambda wildcards, output: out_dir(output.metrics),
        deadline=signal_before_end_s,
    threads: config["compute"]["train_threads"]
    resources:
        **cluster_resources("finetune", "train_threads"),
    conda:
        "../envs/lpaf.yaml"
    shell:
        f"{OFFLINE_ENV} LPAF_SIGNAL_BEFORE_END_S={{params.deadline}} OMP_NUM_THREADS={{threads}} "
        f"MKL_NUM_THREADS={{threads}} {train_launcher()} "
        "finetune --model {params.model} {params.revision} {params.data} --seed {wildcards.seed} "
        "{params.flags} {params.accept} {params.run} --out {params.out} > {log} 2>&1"
