# Shared constants and the helpers the rules call (flags, inputs, output paths).
# Config checking: rules/config_check.smk; the plan (artifact paths, table rows): rules/plan.smk.

import os
import posixpath
import shlex
import sys

RESULTS = "results"  # artifacts: results/{model}/...; an experiment's own outputs: results/{experiment}/
REPO_ROOT = os.path.dirname(WORKFLOW_DIR)
TRAINING_FAMILIES = ("finetune", "prune", "retrain")
# Flags that change how a job runs, not what it computes: left out of the artifact hash.
OPERATIONAL_FLAGS = frozenset(
    {
        "cache_dir",
        "eval_batch_size",
        "save_steps",
        "save_total_limit",
        "logging_steps",
        "preprocessing_num_workers",
        "teacher_cache",  # the cached teacher outputs equal the live ones (lpaf.teacher_cache)
        "dataloader_num_workers",
        "report_to",
    }
)
# Keys of a stage setting that are not flags of its command (they choose inputs; they still key the artifact).
STAGE_ONLY_KEYS = frozenset({"start"})
OFFLINE_ENV = "HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1"
# The paper's ablation rows (method keys): the ablation figure is drawn when a config has two of them.
ABLATION_METHODS = ("lpaf", "lpaf-no-sa-svd", "lpaf-no-mixed-rank")
NAME_HELP = "letters, digits, '_', '+', '-' (at most 48 characters; no slash, dot or space)"

# --------------------------------------------------------------------------------------------
# The experiment: results/<experiment>/ holds its table, figures, timing and report
# --------------------------------------------------------------------------------------------

from lpaf.report import EXPERIMENT_NAME, experiment_name


def experiment_of(cfg):
    """`name:`, else the stem of the (last) config file: config/smoke.yaml -> smoke; config/config.yaml -> default."""
    files = workflow.overwrite_configfiles or workflow.configfiles
    return experiment_name(cfg.get("name"), str(list(files)[-1]) if files else None)


def report_requested():
    """`snakemake --report FILE`: Snakemake gives a Snakefile no sign of it but its command line."""
    return any(a == "--report" or a.startswith("--report=") for a in sys.argv[1:])


def refuse_report_without_table(experiment_dir):
    """A report of an experiment that has not run would hold nothing of it: one line, exit 2."""
    table = f"{experiment_dir}/table.csv"
    if report_requested() and not os.path.exists(table):
        files = " ".join(f"--configfile {f}" for f in (workflow.overwrite_configfiles or []))
        run = f"snakemake --cores N {files}".strip()
        sys.stderr.write(
            f"lpaf workflow: experiment {os.path.basename(experiment_dir)!r} has no table yet ({table}); "
            f"run it first ({run}), then the report; no report was written\n"
        )
        sys.exit(2)


# --------------------------------------------------------------------------------------------
# Flags and inputs used by the rules
# --------------------------------------------------------------------------------------------


def to_flags(flags):
    """{'max_train_samples': 8, 'distill': False} -> '--max-train-samples 8 --no-distill'."""
    parts = []
    for key, value in sorted(flags.items()):
        if value is None:
            continue
        name = key.replace("_", "-")
        flag = f"--{name}"
        if isinstance(value, bool):
            parts.append(flag if value else f"--no-{name}")
        elif isinstance(value, (list, tuple)):
            values = " ".join(shlex.quote(str(v)) for v in value)
            parts.append(f"{flag} {values}")
        else:
            parts.append(f"{flag} {shlex.quote(str(value))}")
    return " ".join(parts)


def lpaf_python():
    """The Python that runs lpaf in a job.

    The rules' conda env (--software-deployment-method conda) holds lpaf's dependencies but not
    lpaf itself (conda cannot pip-install a local checkout from a copied env file), so there the
    checkout is put on PYTHONPATH; otherwise lpaf is installed in the environment running Snakemake.
    """
    from snakemake_interface_executor_plugins.settings import DeploymentMethod

    methods = getattr(workflow.deployment_settings, "deployment_method", ()) or ()
    if DeploymentMethod.CONDA in methods:
        return f"PYTHONPATH={shlex.quote(REPO_ROOT)}${{PYTHONPATH:+:$PYTHONPATH}} python"
    return "python"


def lpaf_command():
    """The `lpaf` console command, or its module where lpaf is only on PYTHONPATH (conda)."""
    python = lpaf_python()
    return "lpaf" if python == "python" else f"{python} -m lpaf.cli"


def use_cuda():
    return config["compute"]["device"] == "cuda"


def gpus():
    """GPU count a GPU-capable job requests: only when the config asks for CUDA."""
    return config["compute"]["gpus"] if use_cuda() else 0


def training_precision():
    """compute.precision, with auto = bf16 on cuda (fp32 where the device is only known at run time)."""
    precision = config["compute"]["precision"]
    if precision == "auto":
        return "bf16" if config["compute"]["device"] == "cuda" else "fp32"
    return precision


def run_flags(training=True):
    compute = config["compute"]
    flags = {"device": compute["device"]}
    if training and compute["device"] != "cpu":
        flags["precision"] = training_precision()
    if compute["device"] != "cpu":
        flags["tf32"] = compute["tf32"]
    return to_flags(flags)


def task_data_dir(task):
    ts = config["task_settings"].get(task, {})
    return ts.get("data_dir") or config["data_dir"] or f"resources/data/{task}"


def data_flags(task):
    return f"--task {task} --data {shlex.quote(task_data_dir(task))}"


def model_dir():
    return config["model_path"] or f"resources/models/{PLAN.model}"


def model_input(wildcards):
    if config["model_path"]:
        return os.path.join(config["model_path"], "config.json")
    return f"resources/models/{PLAN.model}/metrics.json"


def data_input(wildcards):
    """What the teacher waits for before it can read the task's data."""
    ts = config["task_settings"].get(wildcards.task, {})
    if ts.get("data_dir"):
        return []
    if config["smoke_assets"]:
        return [os.path.join(config["data_dir"], "assets.json")]
    if config["data_dir"]:
        return []
    return [f"resources/data/{wildcards.task}/metrics.json"]


def stage_flags(family):
    """Params function: the resolved flags of the stage named by the job's wildcards."""
    token_key = {"prune": "prune", "factorize": "fact", "retrain": "retrain"}[family]

    def get(wildcards):
        key = (wildcards.task, getattr(wildcards, token_key))
        if key not in PLAN.stages[family]:
            raise ValueError(
                f"{getattr(wildcards, token_key)} is not a {family} setting of task {wildcards.task} " f"in this config"
            )
        name, density, flags = PLAN.stages[family][key]
        if density is not None:
            flags = flags | {"density": dtok(density)}
        # `start` chooses --model / --teacher (prune_model_flags); it is not a flag of lpaf prune
        return to_flags({k: v for k, v in flags.items() if k not in STAGE_ONLY_KEYS})

    return get


def prune_start(wildcards):
    """ "pretrained" (fine-pruning from the pre-trained model, distilling from the teacher) or "finetuned"."""
    name, density, flags = PLAN.stages["prune"][(wildcards.task, wildcards.prune)]
    return flags.get("start", "finetuned")


def prune_inputs(wildcards):
    """The teacher always (the start or the distillation source); the pre-trained model for a pre-trained start."""
    teacher = f"{RESULTS}/{wildcards.model}/{wildcards.task}/s{wildcards.seed}/{wildcards.teacher}/metrics.json"
    inputs = {"teacher": teacher}
    if prune_start(wildcards) == "pretrained":
        inputs["pretrained"] = model_input(wildcards)
    return inputs


def prune_model_flags(wildcards, input):
    """--model (and --teacher) of a prune job: the teacher itself, or the pre-trained model with the teacher."""
    teacher = shlex.quote(out_dir(input.teacher))
    if prune_start(wildcards) != "pretrained":
        return f"--model {teacher}"
    revision = to_flags({"model_revision": config["model_revision"]})
    return f"--model {shlex.quote(model_dir())} {revision} --teacher {teacher}".replace("  ", " ")


def teacher_flags(wildcards):
    return to_flags(PLAN.teacher[wildcards.task][1])


def evaluate_flags(wildcards):
    data = {
        k: v
        for k, v in _merged(config["data"], config["task_settings"].get(wildcards.task, {}).get("data")).items()
        if k != "max_train_samples"
    }
    ev = config["evaluate"]
    if ev["max_eval_samples"] is not None:
        data["max_eval_samples"] = ev["max_eval_samples"]
    ts = config["task_settings"].get(wildcards.task, {})
    if ts.get("revision"):
        data["revision"] = ts["revision"]
    return to_flags(data | {"batch_size": ev["batch_size"]})


def timing_inputs(wildcards):
    """Every model the timing job times: the final models of the timed tasks and their teachers."""
    models = []
    for row in PLAN.report_rows():
        for key in ("timing_model", "timing_dense"):
            if row.get(key):
                models.append(f"{row[key]}/metrics.json")
    return sorted(set(models))


def out_dir(path):
    """The artifact directory of a metrics.json output."""
    return os.path.dirname(path)


def teacher_of(source):
    return source.split(posixpath.sep, 1)[0]


def figure_targets():
    """Every figure of the experiment, as PNG (screens, the report) and PDF (papers)."""
    figures = [f"{EXPERIMENT_DIR}/figures/{task}_metric.{ext}" for task in PLAN.tasks for ext in ("png", "pdf")]
    figures += [f"{EXPERIMENT_DIR}/figures/{task}_rank.{ext}" for task in PLAN.rank_tasks() for ext in ("png", "pdf")]
    figures += [f"{EXPERIMENT_DIR}/figures/speedup.{ext}" for ext in ("png", "pdf")]
    if len(set(PLAN.methods()) & set(ABLATION_METHODS)) >= 2:  # the paper's ablation rows are in the config
        figures += [f"{EXPERIMENT_DIR}/figures/ablation.{ext}" for ext in ("png", "pdf")]
    return figures


LPAF_PYTHON = lpaf_python()
LPAF = lpaf_command()
