"""lpaf/cli.py: flags generated from the stages' argument dataclasses."""

from __future__ import annotations

import re

import pytest

from lpaf.cli import STAGES, build_parser


def _options(stage: str):
    parser = build_parser(stage)
    sub = next(a for a in parser._actions if a.dest == "stage").choices[stage]
    return [a for a in sub._actions if a.option_strings and a.dest != "help"]


@pytest.mark.parametrize("stage", list(STAGES))
def test_help_states_each_default_once(stage):
    """A default is said once: by the field's help where it explains it, else by the parser's
    "(default: …)" — never both ("… (default: the Hugging Face hub) (default: None)")."""
    for action in _options(stage):
        said = len(re.findall(r"\bdefault\b", action.help or "", flags=re.I))
        assert said <= 1, f"lpaf {stage} {action.option_strings[0]}: {action.help!r}"


@pytest.mark.parametrize("stage", list(STAGES))
def test_help_states_every_default(stage):
    """…and an option with a default that its help does not explain still shows it."""
    for action in _options(stage):
        if action.required or action.default is None:
            continue
        assert re.search(r"\bdefault\b", action.help or "", flags=re.I), \
            f"lpaf {stage} {action.option_strings[0]} has default {action.default!r} but its help does not say it"
