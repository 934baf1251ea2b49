"""Export a dense, pruned or factorized model to ONNX, keeping the factorized layers as two thin
products (never re-densified), and check the exported graph against PyTorch.

The graph takes ``input_ids``, ``attention_mask`` and ``token_type_ids`` (int64, batch x length,
both axes dynamic) and returns the head's outputs: ``logits`` (classification, regression) or
``start_logits`` and ``end_logits`` (extractive QA). It is produced by ``torch.onnx.export`` (the
``torch.export``-based exporter, which needs ``onnxscript``) and runs in ONNX Runtime, whose graph
optimizations fuse attention, GELU and LayerNorm: the operations that do not shrink with rank.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lpaf.errors import LpafError

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
DEFAULT_OPSET = 18


def head_outputs(model: nn.Module) -> tuple[str, ...]:
    """Output names of a supported head, or a one-line error for anything else."""
    name = type(model).__name__
    if name.endswith("ForSequenceClassification"):
        return ("logits",)
    if name.endswith("ForQuestionAnswering"):
        return ("start_logits", "end_logits")
    raise LpafError(f"cannot export a {name}: lpaf exports sequence-classification / regression and extractive "
                    f"QA heads (…ForSequenceClassification, …ForQuestionAnswering)")


class _TupleOutputs(nn.Module):
    """The model with positional tensor inputs and a tuple of tensors out (what ONNX graphs take)."""

    def __init__(self, model: nn.Module, outputs: tuple[str, ...]):
        super().__init__()
        self.model = model
        self.outputs = outputs

    def forward(self, input_ids, attention_mask, token_type_ids):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        return tuple(getattr(out, k) for k in self.outputs)


def example_inputs(model: nn.Module, batch: int = 2, length: int = 16, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random token ids within the model's vocabulary, with a padded tail on the second row."""
    vocab = int(getattr(model.config, "vocab_size", 100))
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(low=min(5, vocab - 1), high=vocab, size=(batch, length), generator=g)
    mask = torch.ones_like(ids)
    if batch > 1 and length > 4:
        mask[1, length - 3:] = 0
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


def export_onnx(model: nn.Module, out_path: str | Path, opset: int = DEFAULT_OPSET) -> dict[str, Any]:
    """Write ``model`` (eval mode, fp32, CPU) as one self-contained ONNX file; return a summary."""
    outputs = head_outputs(model)
    try:
        import onnx  # noqa: F401 - the exporter needs it, and so do the checks below
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise LpafError(f"ONNX export needs the onnx extra ({e.name} is not installed): "
                        f"pip install -e \".[onnx]\"") from None
    model = model.float().cpu().eval()
    wrapper = _TupleOutputs(model, outputs).eval()
    inputs = example_inputs(model)
    batch = torch.export.Dim("batch", min=1, max=4096)
    length = torch.export.Dim("length", min=2, max=int(getattr(model.config, "max_position_embeddings", 512)))
    dynamic = {k: {0: batch, 1: length} for k in INPUT_NAMES}
    out_path = Path(out_path)
    with torch.no_grad():
        torch.onnx.export(wrapper, tuple(inputs[k] for k in INPUT_NAMES), str(out_path), input_names=list(INPUT_NAMES),
                          output_names=list(outputs), dynamic_shapes=dynamic, opset_version=opset, dynamo=True,
                          external_data=False, verbose=False)
    return {"path": str(out_path), "opset": opset, "outputs": list(outputs), "bytes": out_path.stat().st_size}


def factor_shapes_in_graph(onnx_path: str | Path, model: nn.Module) -> dict[str, int]:
    """How many of the model's factor matrices appear as graph weights of their own (thin) shape.

    A factorized layer kept as two products holds its r x in and out x r factors as initializers; a
    re-densified one would hold one out x in matrix instead. Shapes are compared in either
    orientation (the exporter may store a weight transposed)."""
    from collections import Counter

    import onnx

    from lpaf.lowrank import LowRankLinear

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    found = Counter(tuple(sorted(int(d) for d in init.dims)) for init in graph.initializer if len(init.dims) == 2)
    expected = Counter(tuple(sorted(w.shape)) for m in model.modules() if isinstance(m, LowRankLinear)
                       for w in (m.A.weight, m.B.weight))
    return {"factor_matrices": sum(expected.values()),
            "factor_matrices_in_graph": sum(min(n, found[k]) for k, n in expected.items())}


def onnx_parity(model: nn.Module, onnx_path: str | Path, inputs: dict[str, torch.Tensor],
                threads: int | None = None) -> float:
    """Max |ONNX Runtime − PyTorch| over every output, fp32, for ``inputs``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    feeds = {k: inputs[k].cpu().numpy().astype(np.int64) for k in INPUT_NAMES}
    got = session.run(None, feeds)
    with torch.no_grad():
        ref = _TupleOutputs(model.float().cpu().eval(), head_outputs(model))(*(inputs[k] for k in INPUT_NAMES))
    return float(max(np.abs(g - r.numpy()).max() for g, r in zip(got, ref)))


def atomic_export(model: nn.Module, out_path: str | Path, opset: int = DEFAULT_OPSET) -> dict[str, Any]:
    """export_onnx into a temporary file beside ``out_path``, renamed into place when complete."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.partial-{os.getpid()}")
    try:
        summary = export_onnx(model, tmp, opset)
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)
    summary["path"] = str(out_path)
    return summary
