"""The one error type users see: a clear one-line message, exit code 2, no traceback."""

from __future__ import annotations


class LpafError(Exception):
    """Bad input (config value, file, model) detected before or while a stage runs.

    The CLI prints ``lpaf: error: <message>`` on one line and exits with code 2.
    Messages name the key / file / value and what is accepted.
    """

    exit_code = 2

    def __init__(self, message: str):
        # Guarantee one line: newlines would break the contract of the CLI.
        super().__init__(" ".join(str(message).split()))


class DegenerateResult(LpafError):
    """A run that finished but predicts (nearly) one output for every dev example: a failed teacher.

    ``lpaf finetune`` stops with exit code 3 unless ``--allow-degenerate`` (or
    ``LPAF_ALLOW_DEGENERATE=1``) accepts it; the workflow then builds nothing on it.
    """

    exit_code = 3
