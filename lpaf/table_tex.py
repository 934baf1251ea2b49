"""The results table as LaTeX (booktabs), for pasting into a paper.

Rows are methods at each density (the dense model first), columns each task's headline metrics
under short headers (MNLI m/mm, STS-B P/S, SQuAD EM/F1, MRPC F1/acc, …), then the GLUE average,
% encoder parameters retained and the speed-up. A cell is the mean over seeds with the sample
std as a small ±. The GLUE average is the leaderboard's: each task's metrics averaged first, then
the tasks (only over rows that have every GLUE task of the table; "–" otherwise).

Failed runs keep their mark, as in table.md: a cell whose row has n seeds that predicted one class
(or a constant) for ≥ 99% of dev examples carries a superscript †n.

Bold (``_best_per_column``): in each column and at each density, the compressed rows whose
displayed value (one decimal) is the best among the *candidates*: compressed rows none of whose
seeds failed on that task (for the GLUE average: on any GLUE task). Every candidate that shows the
best value is bold (a tie at one decimal is a tie to the reader). A failed row is never bold, even
where its value is the highest; where no candidate has a value, nothing in that column is bold.
The dense teacher is a reference and never bold.
"""

from __future__ import annotations

import math
from typing import Any

from lpaf.tasks import display_scale

# task -> (short header, metric keys in the order the header names them)
HEADERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "cola": ("CoLA", ("matthews_correlation",)),
    "sst2": ("SST-2", ("accuracy",)),
    "mrpc": ("MRPC F1/acc", ("f1", "accuracy")),
    "stsb": ("STS-B P/S", ("pearson", "spearmanr")),
    "qqp": ("QQP acc/F1", ("accuracy", "f1")),
    "mnli": ("MNLI m/mm", ("validation_matched_accuracy", "validation_mismatched_accuracy")),
    "qnli": ("QNLI", ("accuracy",)),
    "rte": ("RTE", ("accuracy",)),
    "squad": ("SQuAD EM/F1", ("exact_match", "f1")),
    "squad_v2": ("SQuAD2 EM/F1", ("exact_match", "f1")),
}
GLUE = ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte")
_LATEX_ESCAPES = {"&": r"\&", "%": r"\%", "_": r"\_", "#": r"\#", "$": r"\$", "{": r"\{", "}": r"\}",
                  "−": "--", "λ": r"$\lambda$", "~": r"\textasciitilde{}"}


def escape(text: str) -> str:
    return "".join(_LATEX_ESCAPES.get(ch, ch) for ch in str(text))


def _nan(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def _task_keys(task: str, table) -> tuple[str, tuple[str, ...]]:
    if task in HEADERS:
        return HEADERS[task]
    keys = tuple(c[: -len("_mean")] for c in table.columns if c.endswith("_mean")
                 and c not in ("headline_mean", "speedup_mean"))
    return task.upper(), keys[:1]


def paper_rows(mt, score: str = "end") -> tuple[list[str], list[tuple]]:
    """One model's rows for the paper-style tables (LaTeX and Markdown): the tasks in order and, per
    (label, density), (label, density, dense, {task: [(mean, std) per headline metric] or None},
    GLUE average, % retained, speed-up, {task: number of failed (degenerate) seeds}). score "end":
    end-of-training scores; "best": the best dev evaluation of each run (columns ``best_<metric>``)."""
    prefix = {"end": "", "best": "best_"}[score]
    tasks = list(dict.fromkeys(mt["task"]))
    glue_tasks = [t for t in tasks if t in GLUE]
    rows = []
    for (label, density), g in mt.groupby(["label", "density"], sort=False):
        cells, task_scores, failed = {}, [], {}
        for t in tasks:
            r = g[g["task"] == t]
            _, keys = _task_keys(t, mt)
            if r.empty:
                cells[t], failed[t] = None, 0
                continue
            r = r.iloc[0]
            n_failed = r.get("n_degenerate", 0)
            failed[t] = 0 if _nan(n_failed) else int(n_failed or 0)
            vals = [(r.get(f"{prefix}{k}_mean"), r.get(f"{prefix}{k}_std")) for k in keys]
            cells[t] = [(None if _nan(m) else m * display_scale(t), None if _nan(s) else s * display_scale(t)) for m, s in vals]
            if t in GLUE and all(m is not None for m, _ in cells[t]):
                task_scores.append(sum(m for m, _ in cells[t]) / len(cells[t]))
        glue = (sum(task_scores) / len(task_scores)
                if glue_tasks and len(task_scores) == len(glue_tasks) else None)
        speed = g["speedup_mean"].mean()
        rows.append((str(label), float(density), bool(g["dense"].iloc[0]), cells, glue,
                     float(g["retained_percent"].mean()), None if _nan(speed) else float(speed), failed))
    return tasks, rows


def latex_table(table, caption: str = "", label: str = "tab:lpaf", score: str = "end") -> str:
    """table: lpaf.report.aggregate's DataFrame. Returns a complete ``table`` environment per model."""
    out: list[str] = []
    for model, mt in table.groupby("model", sort=False):
        tasks, rows = paper_rows(mt, score)
        glue_tasks = [t for t in tasks if t in GLUE]
        best = _best_per_column(rows, tasks)
        any_failed = any(n for *_, failed in rows for n in failed.values())
        header = ["Method", "\\% params"] + [escape(_task_keys(t, mt)[0]) for t in tasks]
        header += (["GLUE avg"] if glue_tasks else []) + ["Speed-up"]
        out += ["\\begin{table}[t]", "\\centering", "\\small",
                "\\begin{tabular}{l" + "r" * (len(header) - 1) + "}", "\\toprule",
                " & ".join(header) + " \\\\", "\\midrule"]
        previous_density = None
        for label_, density, dense, cells, glue, retained, speed, failed in rows:
            if previous_density is not None and density != previous_density:
                out.append("\\midrule")
            previous_density = density
            line = [escape(label_), f"{retained:.1f}"]
            for t in tasks:
                if cells[t] is None:
                    line.append("--")
                    continue
                parts = []
                for i, (m, s) in enumerate(cells[t]):
                    text = "--" if m is None else f"{m:.1f}"
                    if _is_best(best, (t, i, density), m, dense or failed[t] > 0):
                        text = f"\\textbf{{{text}}}"
                    if s is not None:
                        text += f"{{\\scriptsize$\\pm${s:.1f}}}"
                    parts.append(text)
                line.append("/".join(parts) + (f"$^{{\\dagger{failed[t]}}}$" if failed[t] else ""))
            if glue_tasks:
                text = "--" if glue is None else f"{glue:.1f}"
                if _is_best(best, ("glue", 0, density), glue, dense or _glue_failed(failed)):
                    text = f"\\textbf{{{text}}}"
                line.append(text)
            line.append("--" if speed is None else f"{speed:.2f}$\\times$")
            out.append(" & ".join(line) + " \\\\")
        seeds = sorted({int(n) for n in mt["n_seeds"]})
        when = {"end": "end of training", "best": "best dev evaluation of each run (selected on the same dev set)"}[score]
        cap = caption or (f"{escape(model)}: dev scores (mean{{\\scriptsize$\\pm$std}} over "
                          f"{'/'.join(map(str, seeds))} seed(s), {when}; GLUE $\\times$100, SQuAD EM/F1 in \\%). "
                          f"\\% params: encoder linear weights retained. Bold: best compressed row per column at "
                          f"each density among rows without failed seeds (ties at the shown value all bold)."
                          + (f" $^{{\\dagger n}}$: n seeds predicted one class (or a constant) for $\\geq$99\\% "
                             f"of dev examples: failed runs, not scores; never bold." if any_failed else ""))
        out += ["\\bottomrule", "\\end{tabular}", f"\\caption{{{cap}}}",
                f"\\label{{{label}{'' if score == 'end' else '-best'}}}", "\\end{table}", ""]
    return "\n".join(out)


def _shown(value: float) -> float:
    """The value as the table prints it (one decimal): bolding compares what the reader sees."""
    return float(f"{value:.1f}")


def _glue_failed(failed: dict[str, int]) -> bool:
    return any(n for t, n in failed.items() if t in GLUE)


def _is_best(best: dict[tuple[str, int, float], float], key: tuple[str, int, float], value: float | None,
             excluded: bool) -> bool:
    return value is not None and not excluded and key in best and _shown(value) == best[key]


def _best_per_column(rows, tasks) -> dict[tuple[str, int, float], float]:
    """(task, metric index, density) -> the best displayed mean among the candidates at that density:
    compressed rows with no failed seed on that task ("glue": on any GLUE task). A column whose
    rows all failed has no entry, so nothing in it is bold."""
    best: dict[tuple[str, int, float], float] = {}
    for label, density, dense, cells, glue, *_, failed in rows:
        if dense:
            continue
        for t in tasks:
            if failed[t]:
                continue
            for i, (m, _) in enumerate(cells[t] or []):
                if m is not None and _shown(m) > best.get((t, i, density), -math.inf):
                    best[(t, i, density)] = _shown(m)
        glue_ok = glue is not None and not _glue_failed(failed)
        if glue_ok and _shown(glue) > best.get(("glue", 0, density), -math.inf):
            best[("glue", 0, density)] = _shown(glue)
    return best
