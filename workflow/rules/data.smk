# Inputs of the whole workflow: the pre-trained model and the task data, downloaded once into
# resources/ on a machine with internet (local rules: on SLURM they run on the login node), or
# taken from local paths (model_path, data_dir), or - for config/smoke.yaml - created here.
# The fetch rules enter the DAG only when model_path / data_dir are null; the smoke rule exists
# only with smoke_assets: true, so no rule can ever claim (and overwrite) a user's local files.
# A failed fetch (no network: a cluster node, HF_HUB_OFFLINE) ends its log with lpaf's one-line cause and
# the offline route (--config model_path=... data_dir=...); the profile's show-failed-logs prints it.


rule fetch_model:
    output:
        "resources/models/{model}/metrics.json",
    log:
        "logs/fetch/model-{model}.log",
    params:
        hub=config["model"],
        revision=to_flags({"revision": config["model_revision"]}),
        out=lambda wildcards, output: out_dir(output[0]),
    conda:
        "../envs/lpaf.yaml"
    shell:
        f"{LPAF} fetch-model --model {{params.hub}} {{params.revision}} --out {{params.out}} > {{log}} 2>&1"


rule fetch_data:
    output:
        "resources/data/{task}/metrics.json",
    log:
        "logs/fetch/data-{task}.log",
    params:
        revision=lambda wildcards: to_flags(
            {"revision": config["task_settings"].get(wildcards.task, {}).get("revision")}
        ),
        out=lambda wildcards, output: out_dir(output[0]),
    conda:
        "../envs/lpaf.yaml"
    shell:
        f"{LPAF} fetch-data --task {{wildcards.task}} {{params.revision}} --out {{params.out}} > {{log}} 2>&1"


if config["smoke_assets"]:

    rule smoke_assets:
        output:
            model=os.path.join(config["model_path"], "config.json"),
            data=os.path.join(config["data_dir"], "assets.json"),
        log:
            "logs/smoke_assets.log",
        localrule: True
        params:
            model=lambda wildcards, output: out_dir(output.model),
            data=lambda wildcards, output: out_dir(output.data),
        conda:
            "../envs/lpaf.yaml"
        shell:
            f"{LPAF_PYTHON} -m lpaf.smoke --model-out {{params.model}} --data-out {{params.data}} > {{log}} 2>&1"
