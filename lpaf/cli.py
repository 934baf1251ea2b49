"""``lpaf <stage>``: one console command per pipeline stage.

Each stage module under ``lpaf/stages/`` exposes typed argument dataclasses and ``run(...)``; flags
are generated from the dataclass fields (``max_train_samples`` -> ``--max-train-samples``), so the
CLI, the docs and the metrics.json ``args`` block all come from the same definitions.

Why not transformers' ``HfArgumentParser``, which does the same from the same dataclasses: it would change
the command lines the workflow and the tests write. It gives a ``False``-default boolean no ``--no-x``
(only ``--x [true|false]``), stops with an argparse conflict where two dataclasses of one stage share a
field (the ``seen`` set below keeps the first), has no per-stage defaults (``lpaf prune`` trains 10
epochs, ``lpaf retrain`` 3), rewrites the dataclass fields' types in place, and appends "(default: …)"
to every help, also where the help already explains the default.

Bad input -> ``lpaf: error: <one line>`` on stderr, exit code 2, no traceback. A finished command
ends with one summary line on stderr (what it wrote, its dev score, its wall time; lpaf.console).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import re
import sys
import time
import types
import typing
from typing import Any, Literal, get_args, get_origin

from lpaf.errors import LpafError

# stage -> (module, stage-args class, shared dataclasses it also takes, default overrides, one-line help)
STAGES: dict[str, tuple[str, str, tuple[str, ...], dict[str, Any], str]] = {
    "fetch-data": ("lpaf.stages.fetch", "FetchDataArgs", (), {}, "download a task's data set for offline use"),
    "fetch-model": ("lpaf.stages.fetch", "FetchModelArgs", (), {}, "download a model + tokenizer for offline use"),
    "finetune": ("lpaf.stages.finetune", "FinetuneArgs", ("DataArgs", "RunArgs", "TrainArgs"), {},
                 "fine-tune a pre-trained model on a task (the dense teacher)"),
    "evaluate": ("lpaf.stages.evaluate", "EvaluateArgs", ("DataArgs", "RunArgs"), {},
                 "score any model directory on a task's dev split(s)"),
    "time-models": ("lpaf.stages.timing", "TimingArgs", ("RunArgs",), {},
                    "time the dense and compressed models side by side, round-robin in one process"),
    "prune": ("lpaf.stages.prune", "PruneArgs", ("DataArgs", "RunArgs", "TrainArgs"),
              {"epochs": 10.0, "lr": 3e-5, "distill_alpha": 0.9, "warmup_ratio": 0.0},
              "movement / magnitude / soft-movement / PLATON pruning of the encoder linears"),
    "factorize": ("lpaf.stages.factorize", "FactorizeArgs", ("DataArgs", "RunArgs"), {},
                  "SVD / FWSVD / sparsity-aware SVD into low-rank factors"),
    "retrain": ("lpaf.stages.retrain", "RetrainArgs", ("DataArgs", "RunArgs", "TrainArgs"),
                {"epochs": 3.0, "lr": 5e-5, "distill_alpha": 0.9},
                "re-train a factorized model (plain or mixed-rank)"),
    "rank-study": ("lpaf.stages.rank_study", "RankStudyArgs", (), {},
                   "matrix rank / effective rank / spectrum of every encoder linear"),
    "split-squad": ("lpaf.stages.split_squad", "SplitSquadArgs", (), {},
                    "split a SQuAD JSON file by article into training and evaluation parts (not the official split)"),
    "plan": ("lpaf.stages.plan", "PlanArgs", (), {},
             "jobs, optimizer steps and device-hours of a workflow config, before launch"),
    "calibrate": ("lpaf.stages.plan", "CalibrateArgs", (), {},
                  "time a few steps of every stage on this device (the calibration `lpaf plan` reads)"),
    "export": ("lpaf.stages.export", "ExportArgs", (), {},
               "write a dense, pruned or factorized model as ONNX (factorized layers stay two thin products)"),
}
# the --help epilog of a stage: exit codes beyond 0 (done) and 2 (bad input)
EPILOGS = {
    "finetune": "Exit code 3: a degenerate teacher, one that predicts one class (or answer) for at least 99% of "
                "the dev examples (regression: almost no spread); the model is kept for inspection in "
                "<out>.degenerate and nothing is written to --out; accept it with --allow-degenerate (or "
                "LPAF_ALLOW_DEGENERATE=1). Exit code 2: bad input. Exit code 75: interrupted with a checkpoint "
                "saved; rerun the same command to resume.",
}
RUNNERS = {"plan": "run_plan", "calibrate": "run_calibrate"}  # stages whose module holds more than one command
# Output flags checked before any work (writable, a valid path, not an entry of the other kind): flag -> kind
# per stage; every other stage's --out is an artifact directory.
OUTPUT_FILES = {"evaluate": {"out": "file"}, "export": {"out": "file"}, "rank-study": {"out": "file"},
                "time-models": {"out": "file"}, "calibrate": {"out": "file"}, "plan": {"json": "file"}}
SHARED = {"DataArgs": "lpaf.stages.common", "RunArgs": "lpaf.stages.common", "TrainArgs": "lpaf.training"}


class OneLineParser(argparse.ArgumentParser):
    """argparse prints usage + error on two lines; we promise one line and exit code 2."""

    def error(self, message: str):  # noqa: D102
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        sys.exit(2)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _add_dataclass(parser: argparse.ArgumentParser, cls, overrides: dict[str, Any], seen: set[str]) -> None:
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(cls.__name__)
    for f in dataclasses.fields(cls):
        if f.name in seen:
            continue
        seen.add(f.name)
        tp = hints[f.name]
        kwargs: dict[str, Any] = {"help": f.metadata.get("help", ""), "dest": f.name}
        default = overrides.get(f.name, f.default)
        required = default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if not required:
            kwargs["default"] = default if default is not dataclasses.MISSING else f.default_factory()
            if not re.search(r"\bdefault\b", kwargs["help"], flags=re.I):  # said once: the help may explain it
                kwargs["help"] += f" (default: {kwargs['default']})"
        origin = get_origin(tp)
        args = [a for a in get_args(tp) if a is not type(None)]
        if origin in (typing.Union, types.UnionType) and len(args) == 1:
            tp, origin, args = args[0], get_origin(args[0]), list(get_args(args[0]))
        if tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif origin is Literal:
            kwargs["choices"] = list(args)
            kwargs["type"] = type(args[0])
        elif origin is list:
            kwargs["nargs"] = "+"
            kwargs["type"] = args[0]
        else:
            kwargs["type"] = tp
        if required:
            kwargs["required"] = True
        group.add_argument(_flag(f.name), **kwargs)


def _load(module: str, name: str):
    return getattr(importlib.import_module(module), name)


def build_parser(stage: str | None = None) -> OneLineParser:
    parser = OneLineParser(prog="lpaf", description="LPAF: low-rank prune-and-factorize compression of BERT-family "
                                                     "models, one command per pipeline stage.")
    sub = parser.add_subparsers(dest="stage", metavar="STAGE", parser_class=OneLineParser)
    for name, (module, cls_name, shared, overrides, help_) in STAGES.items():
        sp = sub.add_parser(name, help=help_, description=help_, epilog=EPILOGS.get(name))
        if name != stage:
            continue  # build only the requested stage's flags (imports stay light)
        seen: set[str] = set()
        _add_dataclass(sp, _load(module, cls_name), overrides, seen)
        for s in shared:
            _add_dataclass(sp, _load(SHARED[s], s), overrides, seen)
    return parser


def _construct(cls, ns: argparse.Namespace):
    return cls(**{f.name: getattr(ns, f.name) for f in dataclasses.fields(cls)})


def _check_outputs(ns: argparse.Namespace) -> None:
    """An unwritable or invalid output path fails in one line before the stage starts any work."""
    from lpaf.artifacts import check_output_path

    for dest, kind in OUTPUT_FILES.get(ns.stage, {"out": "dir"}).items():
        value = getattr(ns, dest, None)
        if value is not None:
            check_output_path(value, kind, flag=f"--{dest}")


def _quiet_libraries() -> None:
    """Progress bars of weight loading/saving would bury our one-line messages in stderr."""
    import os

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:
        pass


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _quiet_libraries()
    stage = next((a for a in argv if a in STAGES), None)
    try:
        parser = build_parser(stage)
        ns = parser.parse_args(argv)
        if ns.stage is None:
            parser.print_help()
            return 2
        _check_outputs(ns)  # before the arguments' own checks, which may already load files
        module, cls_name, shared, _, _ = STAGES[ns.stage]
        objs = [_construct(_load(module, cls_name), ns)] + [_construct(_load(SHARED[s], s), ns) for s in shared]
        t0 = time.perf_counter()
        record = _load(module, RUNNERS.get(ns.stage, "run"))(*objs)
        _finish(ns.stage, objs[0], record, time.perf_counter() - t0)
    except LpafError as e:
        sys.stderr.write(f"lpaf: error: {e}\n")
        return e.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("lpaf: interrupted\n")
        return 130
    except Exception as e:  # Preempted is the one expected non-LpafError failure
        from lpaf.training import Preempted

        if isinstance(e, Preempted):
            sys.stderr.write(f"lpaf: {e}\n")
            return Preempted.exit_code
        raise
    return 0


def _finish(stage: str, args, record, wall_s: float) -> None:
    """The degenerate warning and the one summary line; under torchrun only rank 0 speaks."""
    from lpaf import distributed as dist
    from lpaf.console import finish

    if dist.is_main_process():
        finish(stage, args, record, wall_s)


if __name__ == "__main__":
    sys.exit(main())
