"""The README's figures for the main command and the quick real-data run are what `lpaf plan` says
(issue 31, point 4): the command it names, run here, gives the jobs, steps and hours it quotes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from lpaf.cli import main

REPO = Path(__file__).resolve().parents[1]
CALIBRATION = "benchmarks/results/calibration/minilm_mrpc128_cpu_side_by_side.json"


def _readme() -> str:
    return " ".join((REPO / "README.md").read_text(encoding="utf-8").split())  # line breaks as spaces


def _plan(config: str, tmp_path: Path) -> dict:
    out = tmp_path / "plan.json"
    assert main(["plan", "--configfile", str(REPO / config), "--calibration", str(REPO / CALIBRATION),
                 "--json", str(out)]) == 0
    return json.loads(out.read_text())["total"]


@pytest.mark.parametrize("config, pattern", [
    ("config/config.yaml", r"\*\*Its size:\*\* ([\d,]+) jobs, ([\d,]+) optimizer steps, \*\*about (\d+) CPU-hours\*\* "
                           r"\(([\d.]+) device-hours at one thread per job\), from `lpaf plan --configfile "
                           r"config/config.yaml --calibration " + re.escape(CALIBRATION) + "`"),
    ("config/quick.yaml", r"\*\*estimate, not a measurement\*\*: ([\d,]+) jobs, ([\d,]+) optimizer steps, ([\d.]+) "
                          r"device-hours \(([\d.]+) minutes of one thread per job in sequence\) from `lpaf plan "
                          r"--configfile config/quick.yaml --calibration " + re.escape(CALIBRATION) + "`"),
], ids=["main-command", "quick-run"])
def test_the_readme_quotes_lpaf_plan(tmp_path, config, pattern):
    m = re.search(pattern, _readme())
    assert m, f"README does not state the size of {config} in the expected words"
    total = _plan(config, tmp_path)
    jobs, steps = (int(g.replace(",", "")) for g in m.groups()[:2])
    assert (jobs, steps) == (total["jobs"], total["steps"])
    if config == "config/config.yaml":
        assert float(m.group(4)) == pytest.approx(total["hours"], abs=0.005)
        assert int(m.group(3)) == round(total["hours"])
    else:
        assert float(m.group(3)) == pytest.approx(total["hours"], abs=0.005)
        assert float(m.group(4)) == pytest.approx(60 * total["hours"], abs=0.05)
        assert 60 * total["hours"] <= 12, "the quick run is advertised as about 10 minutes"


def test_the_main_command_builds_the_default_experiment():
    """The README's main command is the default target (table and figures of results/default/)."""
    text = _readme()
    assert "pip install -e . && snakemake --cores 8 ```" in text
    assert "results/table.csv" not in text
