"""``evaluate`` metric modules shipped with lpaf: ``glue``, ``squad`` (v1.1) and ``squad_v2``.

Each sub-directory holds one module script named like its directory, so ``evaluate`` loads it by
path, offline, with the interface of the hub module of the same name::

    import evaluate
    from lpaf.metric_modules import module_path

    glue = evaluate.load(module_path("glue"), "mrpc")
    glue.compute(predictions=[1, 0, 1], references=[1, 1, 1])   # {'accuracy': ..., 'f1': ...}

lpaf itself loads them through ``lpaf.metrics.load_metric`` (cached per process, in memory, with a
private modules directory: see there). The scripts import nothing from lpaf, so a copy of a
directory works on its own.
"""

from __future__ import annotations

from pathlib import Path

MODULES_DIR = Path(__file__).resolve().parent
MODULE_NAMES = ("glue", "squad", "squad_v2")


def module_path(name: str) -> str:
    """The directory of the module ``name`` (``glue``, ``squad`` or ``squad_v2``), for ``evaluate.load``."""
    if name not in MODULE_NAMES:
        raise ValueError(f"unknown metric module {name!r}; lpaf ships {', '.join(MODULE_NAMES)}")
    return str(MODULES_DIR / name)
