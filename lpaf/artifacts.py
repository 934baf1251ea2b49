"""Atomic artifact directories and the metrics.json completion record.

Every stage writes into ``<parent>/.<name>.partial-<pid>`` and renames it into place only when
complete, with ``metrics.json`` written last; a ``kill -9`` at any moment leaves either nothing
(or the previous finished artifact) or the finished artifact. Stages that read an lpaf artifact
call :func:`require_complete`, so a directory without its completion record is never loaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

from lpaf.errors import LpafError

METRICS_FILE = "metrics.json"


def library_versions() -> dict[str, str]:
    import importlib.metadata as md

    versions = {"python": platform.python_version()}
    for pkg in ("lpaf", "torch", "transformers", "datasets", "safetensors", "numpy"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = "not installed"
    return versions


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def config_hash(args: dict[str, Any]) -> str:
    """Stable hash of a stage's arguments (sorted JSON), recorded in every metrics.json."""
    blob = json.dumps(args, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON atomically (temp file + rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=_json_default)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, (set, tuple)):
        return list(o)
    return str(o)


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise LpafError(f"file not found: {path}") from None
    except json.JSONDecodeError as e:
        raise LpafError(f"{path} is not valid JSON ({e.msg} at line {e.lineno})") from None


# Leave room in a file name for the temporary sibling lpaf writes first (".<name>.partial-<pid>").
_TEMP_NAME_ROOM = 24


def check_output_path(path: str | Path, kind: str, flag: str = "--out") -> None:
    """Refuse, before any work, an output path that cannot be written: one line naming the reason.

    ``kind`` is "dir" (an artifact directory) or "file" (a JSON / ONNX file). Checked: a usable name,
    an existing entry of the other kind, a parent chain that holds a regular file, and whether the
    nearest existing directory lets this process create a file (tried with a temporary file, removed
    at once: ``os.access`` says yes to root even where writing fails). Nothing is left behind.
    """
    import errno
    import tempfile

    text = str(path)
    if not text or "\0" in text:
        raise LpafError(f"{flag} {text!r} is not a valid path")
    p = Path(os.path.abspath(text))
    try:
        name_max = os.pathconf(p.anchor, "PC_NAME_MAX")
    except (OSError, ValueError):
        name_max = 255
    for part in p.parts[1:]:
        limit = name_max - (_TEMP_NAME_ROOM if part == p.name else 0)
        if len(os.fsencode(part)) > limit:
            raise LpafError(f"{flag} {text}: the name {part[:20]}… is too long ({len(os.fsencode(part))} bytes; at most "
                            f"{limit} here)")
    if p.exists():
        if kind == "dir" and not p.is_dir():
            raise LpafError(f"{flag} {text} exists and is not a directory; expected an output directory")
        if kind == "file" and p.is_dir():
            raise LpafError(f"{flag} {text} is a directory; expected a file")
    ancestor = p.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise LpafError(f"{flag} {text}: {ancestor} is not a directory")
    try:
        fd, probe = tempfile.mkstemp(dir=ancestor, prefix=".lpaf-write-check-")
    except OSError as e:
        reason = os.strerror(e.errno) if e.errno not in (errno.ENOENT,) else "the file system accepts no new files"
        raise LpafError(f"{flag} {text}: cannot write in {ancestor} ({reason})") from None
    os.close(fd)
    os.unlink(probe)


def is_complete(directory: str | Path) -> bool:
    return (Path(directory) / METRICS_FILE).is_file()


def require_complete(directory: str | Path, what: str = "artifact") -> Path:
    """Refuse to read an lpaf artifact that has no completion record."""
    directory = Path(directory)
    if not directory.is_dir():
        raise LpafError(f"{what} directory not found: {directory}")
    if not is_complete(directory):
        raise LpafError(
            f"{what} {directory} has no {METRICS_FILE} (it is incomplete or not an lpaf artifact); "
            f"rerun the stage that produces it"
        )
    return directory


@contextlib.contextmanager
def atomic_output_dir(out_dir: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success replace ``out_dir`` with it.

    On any exception the temporary directory is removed and ``out_dir`` is untouched. A previous
    finished artifact is swapped out in one atomic exchange (Linux ``renameat2``); where the file
    system cannot exchange, it is first moved aside to ``.<name>.old-<pid>`` and a ``kill -9``
    between the two renames is repaired by the next run (:func:`recover_interrupted_replace`).
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    recover_interrupted_replace(out_dir)
    tmp = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
        if not is_complete(tmp):
            raise RuntimeError(f"internal error: stage finished without writing {METRICS_FILE}")
        _fault_pause_before_commit()
        if out_dir.exists() and _exchange(tmp, out_dir):
            shutil.rmtree(tmp, ignore_errors=True)  # now holds the previous artifact
            return
        old = None
        if out_dir.exists():
            old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def recover_interrupted_replace(out_dir: str | Path) -> None:
    """Undo the effects of a run killed while it replaced ``out_dir`` (never lose finished work).

    A finished artifact moved aside (``.<name>.old-<pid>``) whose replacement never arrived is
    moved back; leftovers of dead runs (``.old-*`` next to a present artifact, ``.partial-*``)
    are removed.
    """
    out_dir = Path(out_dir)
    if not out_dir.parent.is_dir():
        return
    for old in sorted(out_dir.parent.glob(f".{out_dir.name}.old-*")):
        if not out_dir.exists() and is_complete(old):
            os.replace(old, out_dir)
            print(f"lpaf: restored the finished artifact {out_dir} from an interrupted replace", file=sys.stderr)
        else:
            shutil.rmtree(old, ignore_errors=True)
    for partial in out_dir.parent.glob(f".{out_dir.name}.partial-*"):
        pid = partial.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            shutil.rmtree(partial, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with renameat2(RENAME_EXCHANGE); False where unsupported."""
    if os.environ.get("LPAF_NO_RENAME_EXCHANGE") or not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    return renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0


def _fault_pause_before_commit() -> None:
    """Fault injection for the kill -9 test: hold the finished temporary directory before the rename."""
    delay = os.environ.get("LPAF_FAULT_SLEEP_BEFORE_COMMIT_S")
    if delay:
        import time

        time.sleep(float(delay))


def run_record(args: dict[str, Any]) -> dict[str, Any]:
    """The provenance block every metrics.json carries."""
    return {
        "args": args,
        # where things are written/cached is not part of the experiment's configuration
        "config_hash": config_hash({k: v for k, v in args.items() if k not in ("out", "cache_dir")}),
        "versions": library_versions(),
        "git_commit": git_commit(),
        "command": " ".join(sys.argv),
    }
