"""The results table as LaTeX (booktabs), for pasting into a paper.

Rows are methods at each density (the dense model first), columns each task's headline metrics
under short headers (MNLI m/mm, STS-B P/S, SQuAD EM/F1, MRPC F1/acc, …), then the GLUE average,
% encoder parameters retained and the speed-up. A cell is the mean over seeds with the sample
std as a small ±; the best compressed row of each column at each density is bold. The GLUE
average is the leaderboard's: each task's metrics averaged first, then the tasks (only over rows
that have every GLUE task of the table; "–" otherwise).
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
    GLUE average, % retained, speed-up, n_degenerate). score "end": end-of-training scores;
    "best": the best dev evaluation of each run (columns ``best_<metric>``)."""
    prefix = {"end": "", "best": "best_"}[score]
    tasks = list(dict.fromkeys(mt["task"]))
    glue_tasks = [t for t in tasks if t in GLUE]
    rows = []
    for (label, density), g in mt.groupby(["label", "density"], sort=False):
        cells, task_scores, failed = {}, [], 0
        for t in tasks:
            r = g[g["task"] == t]
            _, keys = _task_keys(t, mt)
            if r.empty:
                cells[t] = None
                continue
            r = r.iloc[0]
            failed += int(r.get("n_degenerate", 0) or 0)
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
        header = ["Method", "\\% params"] + [escape(_task_keys(t, mt)[0]) for t in tasks]
        header += (["GLUE avg"] if glue_tasks else []) + ["Speed-up"]
        out += ["\\begin{table}[t]", "\\centering", "\\small",
                "\\begin{tabular}{l" + "r" * (len(header) - 1) + "}", "\\toprule",
                " & ".join(header) + " \\\\", "\\midrule"]
        previous_density = None
        for label_, density, dense, cells, glue, retained, speed, _ in rows:
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
                    if m is not None and not dense and best.get((t, i, density)) == m:
                        text = f"\\textbf{{{text}}}"
                    if s is not None:
                        text += f"{{\\scriptsize$\\pm${s:.1f}}}"
                    parts.append(text)
                line.append("/".join(parts))
            if glue_tasks:
                text = "--" if glue is None else f"{glue:.1f}"
                if glue is not None and not dense and best.get(("glue", 0, density)) == glue:
                    text = f"\\textbf{{{text}}}"
                line.append(text)
            line.append("--" if speed is None else f"{speed:.2f}$\\times$")
            out.append(" & ".join(line) + " \\\\")
        seeds = sorted({int(n) for n in mt["n_seeds"]})
        when = {"end": "end of training", "best": "best dev evaluation of each run (selected on the same dev set)"}[score]
        cap = caption or (f"{escape(model)}: dev scores (mean{{\\scriptsize$\\pm$std}} over "
                          f"{'/'.join(map(str, seeds))} seed(s), {when}; GLUE $\\times$100, SQuAD EM/F1 in \\%). "
                          f"\\% params: encoder linear weights retained. Bold: best compressed row per column at "
                          f"each density.")
        out += ["\\bottomrule", "\\end{tabular}", f"\\caption{{{cap}}}",
                f"\\label{{{label}{'' if score == 'end' else '-best'}}}", "\\end{table}", ""]
    return "\n".join(out)


def _best_per_column(rows, tasks) -> dict[tuple[str, int, float], float]:
    """(task, metric index, density) -> the best mean among compressed rows at that density."""
    best: dict[tuple[str, int, float], float] = {}
    for label, density, dense, cells, glue, *_ in rows:
        if dense:
            continue
        for t in tasks:
            for i, (m, _) in enumerate(cells[t] or []):
                if m is not None and m > best.get((t, i, density), -math.inf):
                    best[(t, i, density)] = m
        if glue is not None and glue > best.get(("glue", 0, density), -math.inf):
            best[("glue", 0, density)] = glue
    return best
