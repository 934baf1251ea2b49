"""Write config/README.md, the reference of every workflow config key, from the schema.

The schema (workflow/schemas/config.schema.yaml) is what Snakemake validates against, so the
reference generated from it cannot drift from what the workflow accepts; a test regenerates it and
compares.

    python workflow/scripts/config_reference.py            # rewrites config/README.md
    python workflow/scripts/config_reference.py --check    # exit 1 if config/README.md is stale
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
OUT = REPO / "config" / "README.md"
GROUP_TITLES = {"data": "Data flags (`data`, and per stage / per task)",
                "train": "Training flags (`train`, and every training stage)",
                "finetune": "Fine-tune flags (`finetune`)", "prune": "Pruning flags (`prune.<name>`)",
                "factorize": "Factorization flags (`factorize.<name>`)", "retrain": "Re-training flags (`retrain.<name>`)"}


def _type(node: dict) -> str:
    if "enum" in node:
        return " \\| ".join("null" if v is None else f"`{v}`" for v in node["enum"])
    t = node.get("type", "object")
    return " or ".join(t) if isinstance(t, list) else str(t)


def _default(node: dict) -> str:
    if "default" not in node:
        return "required" if node.get("_required") else "–"
    d = node["default"]
    return "null" if d is None else f"`{d}`"


def _row(key: str, node: dict) -> str:
    desc = " ".join(str(node.get("description", "")).split()).replace("|", "\\|")
    return f"| `{key}` | {_type(node)} | {_default(node)} | {desc} |"


def _table(rows: list[str]) -> list[str]:
    return ["| key | type | default | what it changes |", "|---|---|---|---|", *rows, ""]


def _shipped_configs() -> list[str]:
    lines = []
    for path in sorted((REPO / "config").glob("*.yaml")):
        words: list[str] = []
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.startswith("#"):
                break
            text = line.lstrip("#").strip()
            if set(text) <= set("=-") and not words:
                continue  # the banner rule above the header
            if not text or set(text) <= set("=-"):
                break  # the header's first paragraph ends here
            words.append(text)
        first = " ".join(words)
        summary = first.split("—", 1)[-1].strip() if "—" in first else first
        lines.append(f"| `config/{path.name}` | {summary} |")
    return ["| file | what it runs |", "|---|---|", *lines, ""]


def render() -> str:
    schema = yaml.safe_load(SCHEMA.read_text(encoding="utf-8"))
    required = set(schema.get("required", []))
    out = ["# Workflow configuration reference", "",
           "Generated from `workflow/schemas/config.schema.yaml` by `python workflow/scripts/config_reference.py`;",
           "do not edit by hand (a test checks it is current). Every object rejects unknown keys; a stage flag",
           "maps onto the `lpaf <stage>` flag of the same name (`max_train_samples` → `--max-train-samples`), and",
           "null means the command's own default. Flags that are not part of an artifact's key (where it writes",
           "caches and logs, worker counts, how often it checkpoints) can change without rerunning anything.", "",
           "## Configs that ship", "", *_shipped_configs(),
           "## Top-level keys", ""]
    rows = []
    for key, node in schema["properties"].items():
        node = dict(node, _required=key in required)
        rows.append(_row(key, node))
    out += _table(rows)
    for key, node in schema["properties"].items():
        subs = node.get("properties")
        if isinstance(subs, dict) and key not in ("data", "train", "finetune"):
            out += [f"## `{key}`", "", " ".join(str(node.get("description", "")).split()), "",
                    *_table([_row(f"{key}.{k}", v) for k, v in subs.items()])]
        elif isinstance(node.get("additionalProperties"), dict) and key == "methods":
            item = node["additionalProperties"]
            out += ["## `methods.<row>`", "", " ".join(str(node.get("description", "")).split()), "",
                    *_table([_row(f"methods.<row>.{k}", v) for k, v in item["properties"].items()])]
    for group, flags in schema["x-flag-groups"].items():
        out += [f"## {GROUP_TITLES.get(group, group)}", "",
                *_table([_row(k, v) for k, v in flags.items()])]
    return "\n".join(out).rstrip() + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="exit 1 when config/README.md differs from the schema")
    args = p.parse_args()
    text = render()
    if args.check:
        current = OUT.read_text(encoding="utf-8") if OUT.is_file() else ""
        if current != text:
            print(f"{OUT} is stale: run python workflow/scripts/config_reference.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
