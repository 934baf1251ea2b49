"""Multi-process (DDP) training under ``torchrun``: ranks, the global batch, and who writes.

A training stage started by ``torchrun --standalone --nproc_per_node N -m lpaf.cli <stage> ...``
runs as N processes (one per GPU, or N CPU processes with the gloo backend). The HF Trainer sees
``WORLD_SIZE``/``RANK`` in the environment and wraps the model in ``DistributedDataParallel``;
this module holds what lpaf adds on top:

- ``--batch-size`` stays the *global* batch: every process gets ``batch_size // world_size``
  examples a step (:func:`per_device_batch`), so results do not depend on the number of GPUs;
- rank 0 alone evaluates and writes the artifact; the others wait for it (:func:`finish`);
- state that lpaf updates outside DDP's gradient all-reduce (PLATON's sensitivity) is averaged
  with :func:`all_reduce_mean_`, and :func:`same_on_all_ranks` checks the result.

A single process never falls back to ``torch.nn.DataParallel``: with several visible GPUs it uses
one and says how to launch DDP (:func:`single_process_warning`).
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, Iterable

import torch

from lpaf.errors import LpafError


def world_size() -> int:
    """Number of training processes: ``WORLD_SIZE`` set by torchrun, else 1."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's global rank (0 without torchrun)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", "0"))


def is_distributed() -> bool:
    return world_size() > 1


def is_main_process() -> bool:
    """Rank 0: the process that prints, evaluates and writes the artifact."""
    return rank() == 0


def _initialized() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized() and world_size() > 1


def barrier() -> None:
    """Wait for every process (no-op in a single process)."""
    if _initialized():
        torch.distributed.barrier()


def finish() -> None:
    """End of a stage on every rank: rank 0 calls it once the artifact is written, the others right
    after training; it returns everywhere when rank 0 is done, then leaves the process group."""
    if _initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def per_device_batch(global_batch: int, processes: int | None = None) -> int:
    """Examples per process and step for a global batch of ``global_batch``.

    Raises a one-line LpafError naming both numbers when the batch does not divide evenly.
    """
    processes = world_size() if processes is None else processes
    if global_batch % processes:
        raise LpafError(f"--batch-size {global_batch} is the global batch and must be divisible by the number of "
                        f"processes ({processes}); use a multiple of {processes}")
    return global_batch // processes


def all_reduce_mean_(tensors: Iterable[torch.Tensor]) -> None:
    """Average tensors over the processes, in place (every rank passes the same list, in order)."""
    if not _initialized():
        return
    tensors = list(tensors)
    handles = [torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM, async_op=True) for t in tensors]
    n = world_size()
    for t, h in zip(tensors, handles):
        h.wait()
        t.div_(n)


def any_rank(flag: bool, device: torch.device | str = "cpu") -> bool:
    """True on every rank when ``flag`` is True on at least one (a stop signal all ranks obey)."""
    if not _initialized():
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item())


def fingerprint(obj: Any) -> str:
    """A short hash of tensors (a dict or list of them) or of a JSON-like object."""
    h = hashlib.sha256()
    items = sorted(obj.items()) if isinstance(obj, dict) else [(None, obj)]
    for key, value in items:
        h.update(repr(key).encode())
        if isinstance(value, torch.Tensor):
            h.update(value.detach().cpu().contiguous().numpy().tobytes())
        else:
            h.update(repr(value).encode())
    return h.hexdigest()[:16]


def same_on_all_ranks(obj: Any) -> bool | None:
    """Whether ``obj`` (see :func:`fingerprint`) is identical on every rank; None in a single process.

    A collective: every rank must call it at the same point.
    """
    if not _initialized():
        return None
    mine = fingerprint(obj)
    gathered: list[Any] = [None] * world_size()
    torch.distributed.all_gather_object(gathered, mine)
    return all(g == mine for g in gathered)


def launch_prefix(gpus: int, python: str | None = None) -> list[str]:
    """The command that starts an lpaf stage on ``gpus`` processes (DDP); [] for one.

    ``python``: run torchrun as ``python -m torch.distributed.run`` with this interpreter.
    ``--standalone`` picks a free rendezvous port, so jobs on one node do not collide.
    """
    if gpus <= 1:
        return []
    launcher = [python, "-m", "torch.distributed.run"] if python else ["torchrun"]
    return [*launcher, "--standalone", "--nproc_per_node", str(gpus), "-m", "lpaf.cli"]


def single_process_warning(devices: int) -> str:
    """What a single process with several visible GPUs says before it trains on one of them."""
    return (f"lpaf: warning: {devices} CUDA devices are visible but this single process trains on one (no "
            f"DataParallel); to train on all {devices} with DDP at the same global batch, run "
            f"'{' '.join(launch_prefix(devices))} <stage> ...'")
