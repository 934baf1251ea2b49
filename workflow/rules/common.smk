# Pure helpers: config checking, the plan (every artifact path from the config), flag building.
#
# Artifact layout (docs/DESIGN.md), one directory per stage, nested along the chain of stages:
#   results/{model}/{task}/s{seed}/dense-{h}/                          the teacher (fine-tuned)
#       prune-{name}-{h}-d{density}/                                   a pruned model
#       [prune-.../]fact-{name}-{h}-d{density}/                        a factorized model
#       [prune-.../]fact-.../retrain-{name}-{h}/                       a re-trained model
# {name} is the setting's key in the config, {h} a short hash of the stage's own resolved flags,
# so two settings never share a directory, changing one setting creates new directories for it
# and what is downstream of it only, and table rows that share a chain prefix share its files.
# Each directory holds the model and metrics.json (the completion record; the rule's output),
# plus eval.json (evaluate rule: reloaded scores and latency) and rank.json (rank study).

import hashlib
import json
import os
import posixpath
import re
import shlex
import sys

import yaml

RESULTS = "results"
REPO_ROOT = os.path.dirname(WORKFLOW_DIR)
TRAINING_FAMILIES = ("finetune", "prune", "retrain")
# Flags that change how a job runs, not what it computes: left out of the artifact hash.
OPERATIONAL_FLAGS = frozenset({"cache_dir", "eval_batch_size", "save_steps", "save_total_limit", "logging_steps",
                               "preprocessing_num_workers", "dataloader_num_workers", "report_to"})
OFFLINE_ENV = "HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1"
NAME_HELP = "letters, digits, '_', '+', '-' (at most 48 characters; no slash, dot or space)"


# --------------------------------------------------------------------------------------------
# Config checking: every problem at once, each naming the key and what is accepted
# --------------------------------------------------------------------------------------------

def load_schema(path):
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def _key(path):
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top level)"


def _description(schema, schema_path):
    """The description of the innermost schema node on the path that has one."""
    node, found = schema, schema.get("description")
    for part in schema_path:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            break
        if isinstance(node, dict) and "description" in node:
            found = node["description"]
    return found


def _format_error(error, schema):
    key = _key(error.absolute_path)
    kind = error.validator
    desc = _description(schema, list(error.absolute_schema_path)[:-1])
    hint = f" ({desc})" if desc else ""
    if kind == "additionalProperties" and error.validator_value is False:
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        where = f"under '{key}'" if error.absolute_path else "at the top level"
        return (f"unknown key(s) {', '.join(repr(k) for k in extra)} {where}; "
                f"accepted keys: {', '.join(allowed)}")
    if kind == "propertyNames":
        sub = error.validator_value
        if "enum" in sub:
            accepted = ", ".join(str(v) for v in sub["enum"])
            return f"'{key}' has key {error.instance!r}, which is not accepted; accepted keys: {accepted}"
        return f"'{key}' has the name {error.instance!r}, which is not allowed; names use {NAME_HELP}"
    if kind == "enum":
        accepted = ", ".join("null" if v is None else str(v) for v in error.validator_value)
        return f"{key} = {error.instance!r} is not accepted; accepted values: {accepted}"
    if kind == "type":
        expected = error.validator_value
        expected = " or ".join(expected) if isinstance(expected, list) else expected
        return f"{key} = {error.instance!r} has the wrong type: expected {expected}{hint}"
    if kind == "required":
        return f"'{key}' misses the required key {error.message.split(chr(39))[1]!r}{hint}"
    if kind == "pattern" and "propertyNames" in error.absolute_schema_path:
        return f"'{key}' has the name {error.instance!r}, which is not allowed; names use {NAME_HELP}"
    if kind == "pattern":
        return f"{key} = {error.instance!r} is not allowed{hint}"
    if kind in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        return f"{key} = {error.instance!r} is out of range: {error.message}{hint}"
    return f"{key}: {error.message}{hint}"


def schema_problems(cfg, schema):
    from jsonschema import Draft202012Validator

    validator = Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(cfg), key=lambda e: [str(p) for p in e.absolute_path])
    return [_format_error(e, schema) for e in errors]


def semantic_problems(cfg):
    """Cross-key checks the schema cannot express (run after defaults are filled in)."""
    problems = []
    tasks = cfg["tasks"]
    for method, chain in cfg["methods"].items():
        for family in ("prune", "factorize", "retrain"):
            name = chain.get(family)
            if name is not None and name not in cfg[family]:
                defined = ", ".join(cfg[family]) or "none"
                problems.append(f"methods.{method}.{family} = {name!r} names no setting under '{family}'; "
                                f"defined: {defined}")
        for t in chain.get("tasks") or []:
            if t not in tasks:
                problems.append(f"methods.{method}.tasks names {t!r}, which is not in tasks; accepted values: "
                                f"{', '.join(tasks)}")
        if chain.get("retrain") is not None and chain.get("factorize") is None:
            problems.append(f"methods.{method}: a retrain stage needs a factorize stage before it "
                            f"(accepted chains: none, prune, factorize, prune+factorize, [prune+]factorize+retrain)")
    for m in cfg["run_methods"] or []:
        if m not in cfg["methods"]:
            problems.append(f"run_methods names unknown method {m!r}; accepted values: {', '.join(cfg['methods'])}")
    for key in ("evaluate", "rank_study"):
        for t in cfg[key]["tasks"] or []:
            if t not in tasks:
                problems.append(f"{key}.tasks names {t!r}, which is not in tasks; accepted values: {', '.join(tasks)}")
    if cfg["compute"]["precision"] != "fp32" and cfg["compute"]["device"] == "cpu":
        problems.append(f"compute.precision = {cfg['compute']['precision']!r} needs compute.device cuda; "
                        f"accepted on cpu: fp32")
    if cfg["smoke_assets"]:
        for key in ("model_path", "data_dir"):
            if not cfg[key]:
                problems.append(f"smoke_assets: true needs {key} (where the synthetic assets are written)")
    else:
        if cfg["model_path"] is not None and not os.path.isfile(os.path.join(cfg["model_path"], "config.json")):
            problems.append(f"model_path = {cfg['model_path']!r}: no such model directory (no config.json there); "
                            f"accepted: a local directory from 'lpaf fetch-model' or save_pretrained, or null")
        data_dirs = [("data_dir", cfg["data_dir"])]
        data_dirs += [(f"task_settings.{t}.data_dir", s.get("data_dir")) for t, s in cfg["task_settings"].items()]
        for key, path in data_dirs:
            if path is not None and not os.path.isdir(path):
                problems.append(f"{key} = {path!r}: no such directory; accepted: an existing local data directory "
                                f"or null (download from the hub)")
    return problems


def _coerce(value, node):
    """A --config value as YAML would read it, where the schema expects a non-string.

    Snakemake parses `--config key=[1, 2]` with YAML's BaseLoader, so every scalar inside arrives
    as a string ('1', 'false', 'null'); the config files themselves are read with full YAML.
    """
    if not isinstance(node, dict):
        return value
    if isinstance(value, dict):
        props = node.get("properties", {})
        extra = node.get("additionalProperties")
        return {k: _coerce(v, props.get(k, extra if isinstance(extra, dict) else {})) for k, v in value.items()}
    if isinstance(value, list):
        return [_coerce(v, node.get("items", {})) for v in value]
    if not isinstance(value, str):
        return value
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        return value
    types = node.get("type", [])
    types = [types] if isinstance(types, str) else types
    if parsed is None or isinstance(parsed, (dict, list)):
        return parsed
    if "string" in types or value in node.get("enum", []):
        return value
    return parsed


def coerce_command_line_config(cfg, schema):
    """Re-read the --config overrides with the types the schema expects (see _coerce)."""
    overrides = workflow.config_settings.overwrite_config or {}
    for key, value in overrides.items():
        cfg[key] = _merge(cfg.get(key), _coerce(value, schema.get("properties", {}).get(key, {})))


def _merge(base, update):
    if isinstance(base, dict) and isinstance(update, dict):
        merged = dict(base)
        for k, v in update.items():
            merged[k] = _merge(base.get(k), v)
        return merged
    return update


def check_config(cfg, schema_path):
    """Stop before any job runs if the config is wrong, listing every problem."""
    schema = load_schema(schema_path)
    coerce_command_line_config(cfg, schema)
    problems = schema_problems(cfg, schema)
    if problems:
        stop_with_config_errors(problems)
    return schema


def stop_with_config_errors(problems):
    files = ", ".join(str(f) for f in (workflow.overwrite_configfiles or workflow.configfiles)) or "the config"
    lines = [f"lpaf workflow: config error in {files} ({len(problems)} problem(s)); no job was started:"]
    lines += [f"  - {p}" for p in problems]
    sys.stderr.write("\n".join(lines + [""]))
    sys.exit(2)


# --------------------------------------------------------------------------------------------
# The plan: settings per stage, artifact tokens, rows of the table
# --------------------------------------------------------------------------------------------

def dtok(density):
    """Density as it appears in paths and flags: 0.25 -> '0.25', 1 -> '1'."""
    return format(float(density), ".10g")


def short_hash(obj):
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:6]


def _merged(*layers):
    out = {}
    for layer in layers:
        out.update({k: v for k, v in (layer or {}).items() if v is not None})
    return out


def _alt(tokens):
    tokens = sorted(set(tokens))
    return "|".join(re.escape(t) for t in tokens) if tokens else "(?!x)x"


class Plan:
    """Everything the rules need, computed once from the validated config."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.model = cfg["model_name"] or posixpath.basename(cfg["model"])
        self.tasks = list(cfg["tasks"])
        self.seeds = [int(s) for s in cfg["seeds"]]
        self.teacher = {}  # task -> (token, flags)
        self.stages = {"prune": {}, "factorize": {}, "retrain": {}}  # family -> {(task, token): (name, density, flags)}
        self.rows = []
        self._build()

    # settings ---------------------------------------------------------------------------
    def settings(self, family, task, name=None):
        """Resolved flags of one stage for one task: data < task data < train < stage block < task stage."""
        cfg = self.cfg
        ts = cfg["task_settings"].get(task, {})
        layers = [cfg["data"], ts.get("data")]
        if family in TRAINING_FAMILIES:
            layers.append(cfg["train"])
        layers.append(cfg["finetune"] if family == "finetune" else cfg[family][name])
        layers.append(ts.get(family))
        flags = _merged(*layers)
        if ts.get("revision"):
            flags["revision"] = ts["revision"]
        return flags

    def _token(self, family, task, name=None, density=None):
        flags = self.settings(family, task, name)
        keyed = {k: v for k, v in flags.items() if k not in OPERATIONAL_FLAGS}
        if family == "finetune":
            keyed["model_revision"] = self.cfg["model_revision"]
            return f"dense-{short_hash(keyed)}", flags
        prefix = {"prune": "prune", "factorize": "fact", "retrain": "retrain"}[family]
        token = f"{prefix}-{name}-{short_hash(keyed)}"
        if density is not None:
            token += f"-d{dtok(density)}"
        self.stages[family][(task, token)] = (name, density, flags)
        return token, flags

    # rows ----------------------------------------------------------------------------------
    def _build(self):
        cfg = self.cfg
        methods = cfg["run_methods"] or list(cfg["methods"])
        for task in self.tasks:
            self.teacher[task] = self._token("finetune", task)
        for method in methods:
            chain = cfg["methods"][method]
            label = chain.get("label") or method
            dense = not any(chain.get(f) for f in ("prune", "factorize", "retrain"))
            densities = [1.0] if dense else (chain.get("densities") or cfg["densities"])
            for task in [t for t in self.tasks if t in (chain.get("tasks") or self.tasks)]:
                for density in densities:
                    parts = [self.teacher[task][0]]
                    pruner = chain.get("prune")
                    if pruner:
                        parts.append(self._token("prune", task, pruner, density)[0])
                    if chain.get("factorize"):
                        parts.append(self._token("factorize", task, chain["factorize"], density)[0])
                    if chain.get("retrain"):
                        parts.append(self._token("retrain", task, chain["retrain"])[0])
                    for seed in self.seeds:
                        self.rows.append({
                            "model": self.model, "task": task, "method": method, "label": label,
                            "density": 1.0 if dense else float(density), "seed": seed, "dense": dense,
                            "pruner": pruner, "chain": posixpath.join(*parts), "dir": self.artifact(task, seed, *parts),
                        })

    def artifact(self, task, seed, *parts):
        return posixpath.join(RESULTS, self.model, task, f"s{seed}", *parts)

    # targets -------------------------------------------------------------------------------
    def latency_tasks(self):
        return self.cfg["evaluate"]["tasks"] or self.tasks

    def rank_tasks(self):
        if not self.cfg["rank_study"]["enabled"]:
            return []
        return self.cfg["rank_study"]["tasks"] or self.tasks

    def report_rows(self):
        """Rows for lpaf.report: one per (task, method, density, seed) with its files."""
        latency = set(self.latency_tasks())
        out = []
        for r in self.rows:
            dense_dir = self.artifact(r["task"], r["seed"], self.teacher[r["task"]][0])
            measured = r["task"] in latency
            out.append({k: r[k] for k in ("model", "task", "method", "label", "density", "seed", "dense", "chain")}
                       | {"metrics": f"{r['dir']}/metrics.json",
                          "eval": f"{r['dir']}/eval.json" if measured else None,
                          "dense_eval": f"{dense_dir}/eval.json" if measured else None})
        return out

    def rank_rows(self):
        """Rank-study entries: the teacher and every pruned model of the rank-study tasks."""
        tasks = set(self.rank_tasks())
        seen, out = set(), []
        for r in self.rows:
            if r["task"] not in tasks:
                continue
            parts = r["chain"].split(posixpath.sep)
            entries = [(parts[0], "dense", 1.0, True)]
            if r["pruner"]:
                entries.append((posixpath.join(*parts[:2]), r["pruner"], r["density"], False))
            for chain, label, density, dense in entries:
                key = (r["task"], r["seed"], chain)
                if key in seen:
                    continue
                seen.add(key)
                d = self.artifact(r["task"], r["seed"], chain)
                out.append({"model": self.model, "task": r["task"], "seed": r["seed"], "label": label,
                            "density": density, "dense": dense, "chain": chain,
                            "rank": f"{d}/rank.json", "metrics": f"{d}/metrics.json"})
        return out

    def wildcard_constraints(self):
        teacher = _alt(t for t, _ in self.teacher.values())
        prune = _alt(tok for _, tok in self.stages["prune"])
        fact = _alt(tok for _, tok in self.stages["factorize"])
        retrain = _alt(tok for _, tok in self.stages["retrain"])
        return {
            "model": re.escape(self.model),
            "task": _alt(self.tasks),
            "seed": _alt(str(s) for s in self.seeds),
            "teacher": teacher,
            "prune": prune,
            "fact": fact,
            "retrain": retrain,
            "source": f"(?:{teacher})(?:/(?:{prune}))?",
            "chain": f"(?:{teacher})(?:/(?:{prune}))?(?:/(?:{fact})(?:/(?:{retrain}))?)?",
        }


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


def run_flags(training=True):
    compute = config["compute"]
    flags = {"device": compute["device"]}
    if training and compute["device"] != "cpu":
        flags["precision"] = compute["precision"]
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
            raise ValueError(f"{getattr(wildcards, token_key)} is not a {family} setting of task {wildcards.task} "
                             f"in this config")
        name, density, flags = PLAN.stages[family][key]
        if density is not None:
            flags = flags | {"density": dtok(density)}
        return to_flags(flags)

    return get


def teacher_flags(wildcards):
    return to_flags(PLAN.teacher[wildcards.task][1])


def evaluate_flags(wildcards):
    data = {k: v for k, v in _merged(config["data"], config["task_settings"].get(wildcards.task, {}).get("data")).items()
            if k != "max_train_samples"}
    ev = config["evaluate"]
    if ev["max_eval_samples"] is not None:
        data["max_eval_samples"] = ev["max_eval_samples"]
    ts = config["task_settings"].get(wildcards.task, {})
    if ts.get("revision"):
        data["revision"] = ts["revision"]
    return to_flags(data | {"batch_size": ev["batch_size"], "latency_batches": ev["latency_batches"]})


def out_dir(path):
    """The artifact directory of a metrics.json output."""
    return os.path.dirname(path)


def teacher_of(source):
    return source.split(posixpath.sep, 1)[0]


def figure_targets():
    """Every figure, as PNG (screens, the report) and PDF (papers)."""
    figures = [f"{RESULTS}/figures/{task}_metric.{ext}" for task in PLAN.tasks for ext in ("png", "pdf")]
    figures += [f"{RESULTS}/figures/{task}_rank.{ext}" for task in PLAN.rank_tasks() for ext in ("png", "pdf")]
    figures += [f"{RESULTS}/figures/speedup.{ext}" for ext in ("png", "pdf")]
    return figures


LPAF_PYTHON = lpaf_python()
LPAF = lpaf_command()
