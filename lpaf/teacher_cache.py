"""The teacher's outputs on a training set, computed once and reused by every distillation run.

Distillation (prune, retrain) runs the teacher forward at every step, on the same examples epoch
after epoch, for every pruning method, density and re-training scheme of the same teacher. The
teacher is frozen and in eval mode (no dropout), so its output for an example is a function of the
example alone: computed once, it can be read instead of recomputed. Only the padding of the batch
differs, which attention masks out (a padded position's own logit depends on its position, not on how
far the padding goes), so the cached logits equal the live ones up to floating-point summation order.

The cache lives beside the tokenized training set (``<cache_dir>/teacher-outputs/``), one file per
(teacher weights, training features, precision), written to a temporary name and renamed into
place, so that concurrent jobs of one teacher never read half a file; the first of them computes it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

INDEX_KEY = "lpaf_index"  # the batch key that carries each example's index into the training set
OUTPUT_NAMES = ("logits", "start_logits", "end_logits")


class IndexedDataset(torch.utils.data.Dataset):
    """A training set whose examples carry their own index (``lpaf_index``), whatever order the
    sampler draws them in."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {**self.dataset[int(i)], INDEX_KEY: int(i)}


def _digest_tensors(tensors) -> str:
    h = hashlib.sha256()
    for name, t in tensors:
        h.update(name.encode())
        h.update(t.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def cache_key(teacher: nn.Module, dataset, precision: str) -> str:
    """Teacher weights, training features and precision: what the cached outputs depend on."""
    h = hashlib.sha256()
    h.update(_digest_tensors(sorted(teacher.state_dict().items())).encode())
    fingerprint = getattr(dataset, "_fingerprint", None)
    if fingerprint is None:  # not an HF dataset: the features themselves
        fingerprint = _digest_tensors((str(i), torch.as_tensor(dataset[i]["input_ids"])) for i in range(len(dataset)))
    h.update(f"|{fingerprint}|{len(dataset)}|{precision}".encode())
    return h.hexdigest()[:24]


class TeacherOutputs:
    """The teacher's outputs for every example of a training set, looked up by example index."""

    def __init__(self, outputs: dict[str, torch.Tensor]):
        self.outputs = outputs

    def __len__(self) -> int:
        return len(next(iter(self.outputs.values())))

    def lookup(self, index: torch.Tensor, device: torch.device | str, length: int | None = None) -> SimpleNamespace:
        """The outputs of a batch (what ``teacher(**batch)`` returns); token-level outputs (QA start /
        end logits) are cut to the batch's sequence ``length``."""
        index = index.to("cpu", torch.long)
        out = {}
        for name, values in self.outputs.items():
            picked = values.index_select(0, index)
            if picked.dim() == 2 and name != "logits" and length is not None:
                picked = picked[:, :length]
            out[name] = picked.to(device)
        return SimpleNamespace(**out)


@torch.no_grad()
def compute_outputs(teacher: nn.Module, dataset, collator, device: torch.device | str, precision: str,
                    batch_size: int = 64) -> dict[str, torch.Tensor]:
    """One eval-mode pass of the teacher over the training set, in order, in the training precision."""
    was_training = teacher.training
    teacher.eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collator)
    parts: dict[str, list[torch.Tensor]] = {}
    autocast = torch.autocast("cuda", dtype=torch.bfloat16 if precision == "bf16" else torch.float16) \
        if precision in ("bf16", "fp16") and str(device).startswith("cuda") else None
    for batch in loader:
        inputs = {k: v.to(device) for k, v in batch.items()
                  if k not in ("labels", "start_positions", "end_positions", INDEX_KEY)}
        with autocast if autocast is not None else _nothing():
            out = teacher(**inputs)
        for name in OUTPUT_NAMES:
            value = getattr(out, name, None)
            if value is not None:
                parts.setdefault(name, []).append(value.float().cpu())
    teacher.train(was_training)
    return {name: _cat_padded(chunks) for name, chunks in parts.items()}


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _cat_padded(chunks: list[torch.Tensor]) -> torch.Tensor:
    """Batches of token-level logits may differ in length (dynamic padding): pad to the longest."""
    if chunks[0].dim() < 2 or len({c.shape[1] for c in chunks}) == 1:
        return torch.cat(chunks)
    width = max(c.shape[1] for c in chunks)
    return torch.cat([torch.nn.functional.pad(c, (0, width - c.shape[1]), value=float("-inf")) for c in chunks])


def default_cache_root(dataset) -> Path:
    """Beside the tokenized training set when it is on disk, else $LPAF_CACHE (or ~/.cache/lpaf)."""
    files = getattr(dataset, "cache_files", None) or []
    if files:
        return Path(files[0]["filename"]).parent.parent / "teacher-outputs"
    return Path(os.environ.get("LPAF_CACHE", Path.home() / ".cache" / "lpaf")) / "teacher-outputs"


def load_or_compute(teacher: nn.Module, dataset, collator, device: torch.device | str, precision: str,
                    batch_size: int = 64, cache_root: str | Path | None = None,
                    log=print) -> TeacherOutputs:
    """The cached outputs of this teacher on this training set, computed and saved on first use."""
    from safetensors.torch import load_file, save_file

    root = Path(cache_root) if cache_root else default_cache_root(dataset)
    path = root / f"{cache_key(teacher, dataset, precision)}.safetensors"
    if path.is_file():
        try:
            outputs = load_file(str(path))
            if len(next(iter(outputs.values()))) == len(dataset):
                log(f"lpaf: teacher outputs read from {path}")
                return TeacherOutputs(outputs)
        except (OSError, ValueError, StopIteration):
            pass  # unreadable: compute it again
    outputs = compute_outputs(teacher, dataset, collator, device, precision, batch_size)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{path.name}.partial-{os.getpid()}"
    save_file({k: v.contiguous() for k, v in outputs.items()}, str(tmp))
    os.replace(tmp, path)
    log(f"lpaf: teacher outputs of {len(dataset)} training examples computed once, cached in {path}")
    return TeacherOutputs(outputs)
