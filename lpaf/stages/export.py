"""``lpaf export``: a dense, pruned or factorized model directory -> one ONNX file.

Writes ``--out`` (atomically) and ``<out>.json``: the model, the head's outputs, the opset, the
number of factor matrices kept as thin products in the graph, and the ONNX Runtime parity
(max |Δ| against PyTorch in fp32 on inputs of two lengths; the export fails above ``--tolerance``).
Beside the graph go ``config.json`` (the base model's plain config with the label names: the graph
holds the factors itself) and the model's tokenizer, the layout ONNX runtimes such as optimum's
``ORTModelFor*`` load (``model.onnx`` is their default file name).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from lpaf.errors import LpafError


@dataclass
class ExportArgs:
    model: str = field(metadata={"help": "model directory: an lpaf artifact (dense, pruned, factorized) or any "
                                         "BERT-family classification / QA checkpoint"})
    out: str = field(metadata={"help": "output file (.onnx), in a directory of its own: config.json and the "
                                       "tokenizer are written beside it (e.g. mrpc-onnx/model.onnx)"})
    format: Literal["onnx"] = field(default="onnx", metadata={"help": "export format"})
    opset: int = field(default=18, metadata={"help": "ONNX opset version"})
    tolerance: float = field(default=1e-4, metadata={"help": "largest accepted max |ONNX - PyTorch| (fp32)"})

    def __post_init__(self):
        problems = []
        if not str(self.out).endswith(".onnx"):
            problems.append(f"--out must name a .onnx file (got {self.out})")
        if not 13 <= self.opset <= 23:
            problems.append(f"--opset must be in [13, 23] (got {self.opset})")
        if not self.tolerance > 0:
            problems.append(f"--tolerance must be > 0 (got {self.tolerance})")
        if problems:
            raise LpafError("; ".join(problems))


def _check_target_dir(directory: Path) -> None:
    """config.json beside the graph would overwrite a model directory's own (for a factorized artifact,
    with a config that plain transformers would load with random factors): refuse such a directory."""
    if (directory / "config.json").is_file() and (any(directory.glob("*.safetensors"))
                                                  or (directory / "metrics.json").is_file()):
        raise LpafError(f"--out's directory {directory} holds a model (config.json with weights); the export writes "
                        f"its own config.json and tokenizer beside the graph: give it a directory of its own, "
                        f"e.g. --out {directory / 'onnx' / 'model.onnx'}")


def write_companions(model, model_dir: str, directory: Path) -> dict:
    """config.json (plain, with the label names) and the tokenizer of ``model_dir`` beside the graph."""
    import sys

    from transformers import AutoTokenizer

    model.config.save_pretrained(directory)
    try:
        AutoTokenizer.from_pretrained(model_dir).save_pretrained(directory)
        tokenizer = True
    except (OSError, ValueError, TypeError) as e:
        sys.stderr.write(f"lpaf export: warning: no tokenizer written beside the graph ({model_dir}: "
                         f"{str(e).splitlines()[0] if str(e) else type(e).__name__}); runtimes that load a directory "
                         f"need one\n")
        tokenizer = False
    return {"config": str(directory / "config.json"), "tokenizer": tokenizer}


def run(args: ExportArgs) -> dict:
    import torch

    from lpaf import load_model
    from lpaf.export import atomic_export, example_inputs, factor_shapes_in_graph, head_outputs, onnx_parity

    _check_target_dir(Path(args.out).parent)
    model = load_model(args.model)
    head_outputs(model)  # unsupported heads fail here, before any file is written
    torch.manual_seed(0)
    out = Path(args.out)
    summary = atomic_export(model, out, args.opset)
    try:
        parity = max(onnx_parity(model, out, example_inputs(model, batch=b, length=n, seed=n))
                     for b, n in ((1, 8), (3, 37)))
        if not parity <= args.tolerance:
            raise LpafError(f"the exported graph differs from PyTorch by {parity:.3g} (> --tolerance "
                            f"{args.tolerance}); not keeping {out}")
        record = {"model": args.model, "architecture": type(model).__name__, **summary,
                  "parity_max_abs_diff": parity, **factor_shapes_in_graph(out, model), **_source_score(args.model)}
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    record.update(write_companions(model, args.model, out.parent))
    Path(f"{out}.json").write_text(json.dumps(record, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return record  # the CLI prints the summary: file, size, parity, thin factors, the source's dev score


def _source_score(model_dir: str) -> dict:
    """The dev score of an lpaf artifact being exported (its metrics.json), so the export says what it
    ships, degenerate or not; nothing for a model that is not an lpaf artifact."""
    path = Path(model_dir) / "metrics.json"
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(record, dict):
        return {}
    keys = ("task", "headline_metric", "headline", "predictions")
    return {k: record[k] for k in keys if k in record}
