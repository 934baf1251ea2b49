# Config checking: every problem at once, each naming the key and what is accepted, before any
# job runs (exit 2). The schema (schemas/config.schema.yaml) is the single source of keys and defaults.

import os
import sys

import yaml

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
        return f"unknown key(s) {', '.join(repr(k) for k in extra)} {where}; " f"accepted keys: {', '.join(allowed)}"
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
                problems.append(
                    f"methods.{method}.{family} = {name!r} names no setting under '{family}'; " f"defined: {defined}"
                )
        for t in chain.get("tasks") or []:
            if t not in tasks:
                problems.append(
                    f"methods.{method}.tasks names {t!r}, which is not in tasks; accepted values: "
                    f"{', '.join(tasks)}"
                )
        if chain.get("retrain") is not None and chain.get("factorize") is None:
            problems.append(
                f"methods.{method}: a retrain stage needs a factorize stage before it "
                f"(accepted chains: none, prune, factorize, prune+factorize, [prune+]factorize+retrain)"
            )
    for m in cfg["run_methods"] or []:
        if m not in cfg["methods"]:
            problems.append(f"run_methods names unknown method {m!r}; accepted values: {', '.join(cfg['methods'])}")
    for key in ("evaluate", "rank_study"):
        for t in cfg[key]["tasks"] or []:
            if t not in tasks:
                problems.append(f"{key}.tasks names {t!r}, which is not in tasks; accepted values: {', '.join(tasks)}")
    experiment = experiment_of(cfg)
    if not cfg["name"] and not EXPERIMENT_NAME.fullmatch(experiment):
        problems.append(
            f"the experiment name {experiment!r} (the config file's name) is not allowed; names use "
            f"{NAME_HELP}: set `name:` in the config (or --config name=...)"
        )
    if cfg["compute"]["precision"] not in ("fp32", "auto") and cfg["compute"]["device"] == "cpu":
        problems.append(
            f"compute.precision = {cfg['compute']['precision']!r} needs compute.device cuda; "
            f"accepted on cpu: fp32, auto"
        )
    if cfg["smoke_assets"]:
        for key in ("model_path", "data_dir"):
            if not cfg[key]:
                problems.append(f"smoke_assets: true needs {key} (where the synthetic assets are written)")
    else:
        if cfg["model_path"] is not None and not os.path.isfile(os.path.join(cfg["model_path"], "config.json")):
            problems.append(
                f"model_path = {cfg['model_path']!r}: no such model directory (no config.json there); "
                f"accepted: a local directory from 'lpaf fetch-model' or save_pretrained, or null"
            )
        data_dirs = [("data_dir", cfg["data_dir"])]
        data_dirs += [(f"task_settings.{t}.data_dir", s.get("data_dir")) for t, s in cfg["task_settings"].items()]
        for key, path in data_dirs:
            if path is not None and not os.path.isdir(path):
                problems.append(
                    f"{key} = {path!r}: no such directory; accepted: an existing local data directory "
                    f"or null (download from the hub)"
                )
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
