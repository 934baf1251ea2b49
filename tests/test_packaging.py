"""The repository's packaging: the licence pyproject.toml names, and the workflow's conda environment."""

from __future__ import annotations

import hashlib
import re
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
# sha256 of https://www.apache.org/licenses/LICENSE-2.0.txt (the same bytes as the LICENSE of datasets,
# evaluate, onnx, absl-py …)
APACHE_2_SHA256 = "cfc7749b96f63bd31c3c42b5c471bf756814053e847c10f3eb003417bc523d30"


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def test_license_is_the_standard_apache_2_text():
    assert _pyproject()["project"]["license"] == {"text": "Apache-2.0"}
    text = (REPO / "LICENSE").read_bytes()
    assert hashlib.sha256(text).hexdigest() == APACHE_2_SHA256


def _requirement(spec: str) -> tuple[str, str]:
    """'Transformers >= 5.0, <6' -> ('transformers', '<6,>=5.0'): name normalised, specifiers sorted."""
    m = re.fullmatch(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(.*)", spec)
    assert m, spec
    name = re.sub(r"[-_.]+", "-", m.group(1)).lower()
    return name, ",".join(sorted(s.replace(" ", "") for s in m.group(2).split(",") if s.strip()))


def test_workflow_env_lists_every_dependency_with_the_same_pins():
    env = yaml.safe_load((REPO / "workflow" / "envs" / "lpaf.yaml").read_text(encoding="utf-8"))
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    listed = dict(_requirement(s) for s in pip)
    wanted = dict(_requirement(s) for s in _pyproject()["project"]["dependencies"])
    assert listed == wanted
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python"))
    minimum = _pyproject()["project"]["requires-python"].removeprefix(">=")
    assert python.removeprefix("python=").split(".")[:2] >= minimum.split(".")[:2]


def test_the_workflow_is_snakefmt_clean():
    """snakefmt (the Snakemake formatter) would change nothing in the workflow's files. snakefmt is in the
    test extra, so CI always runs this; elsewhere it skips only where snakefmt is not installed."""
    import os
    import shutil
    import subprocess
    import sys

    import pytest

    exe = shutil.which("snakefmt") or shutil.which("snakefmt", path=str(Path(sys.executable).parent))
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("snakefmt is not installed under CI: pip install -e '.[test]' installs it")
        pytest.skip("snakefmt is not installed (pip install -e '.[test]')")
    files = ["Snakefile", *sorted(str(p.relative_to(REPO)) for p in (REPO / "workflow").rglob("*.smk")),
             "workflow/Snakefile"]
    res = subprocess.run([exe, "--check", *files], cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 0, f"run `snakefmt {' '.join(files)}`:\n{res.stdout}{res.stderr}"


def test_snakefmt_is_in_the_test_extra():
    assert any(_requirement(s)[0] == "snakefmt" for s in _pyproject()["project"]["optional-dependencies"]["test"])
