# The plan: every artifact path from the config, once (class Plan), and the table's rows.
#
# Artifact layout (docs/DESIGN.md), one directory per stage, nested along the chain of stages:
#   results/{model}/{task}/s{seed}/dense-{h}/                          the teacher (fine-tuned)
#       prune-{name}-{h}-d{density}/                                   a pruned model
#       [prune-.../]fact-{name}-{h}-d{density}/                        a factorized model
#       [prune-.../]fact-.../retrain-{name}-{h}/                       a re-trained model
# {name} is the setting's key in the config, {h} a short hash of the stage's own resolved flags,
# so two settings never share a directory, changing one setting creates new directories for it
# and what is downstream of it only, and table rows that share a chain prefix share its files.
# Each directory holds the model and metrics.json (the completion record; the rule's output),
# plus eval.json (evaluate rule: reloaded scores) and rank.json (rank study). Artifacts are shared by every
# experiment that plans them; results/{experiment}/ holds one experiment's own outputs: timing.json (every
# model of its grid timed side by side: the speed-up column), the table, the figures and the report.


import hashlib
import json
import posixpath
import re

# The paper's rank-study figure (MRPC, RTE, CoLA): rank_study.tasks' default where the config runs them.
RANK_STUDY_TASKS = ("mrpc", "rte", "cola")

# --------------------------------------------------------------------------------------------
# The plan: settings per stage, artifact tokens, rows of the table
# --------------------------------------------------------------------------------------------


def dtok(density):
    """Density as it appears in paths and flags: 0.25 -> '0.25', 1 -> '1'."""
    return format(float(density), ".10g")


def short_hash(obj):
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:6]


def _merged(*layers):
    out = {}
    for layer in layers:
        out.update({k: v for k, v in (layer or {}).items() if v is not None})
    return out


def _alt(tokens):
    tokens = sorted(set(tokens))
    return "|".join(re.escape(t) for t in tokens) if tokens else "(?!x)x"


class Plan:
    """Everything the rules need, computed once from the validated config."""

    def __init__(self, cfg, experiment_dir):
        self.cfg = cfg
        self.experiment_dir = experiment_dir  # results/<experiment>: timing, table, figures, report
        self.model = cfg["model_name"] or posixpath.basename(cfg["model"])
        self.tasks = list(cfg["tasks"])
        self.seeds = [int(s) for s in cfg["seeds"]]
        self.teacher = {}  # task -> (token, flags)
        self.stages = {"prune": {}, "factorize": {}, "retrain": {}}  # family -> {(task, token): (name, density, flags)}
        self.rows = []
        self._build()

    # settings ---------------------------------------------------------------------------
    def settings(self, family, task, name=None):
        """Resolved flags of one stage for one task: data < task data < train < stage block < task stage."""
        cfg = self.cfg
        ts = cfg["task_settings"].get(task, {})
        layers = [cfg["data"], ts.get("data")]
        if family in TRAINING_FAMILIES:
            layers.append(cfg["train"])
        layers.append(cfg["finetune"] if family == "finetune" else cfg[family][name])
        layers.append(ts.get(family))
        flags = _merged(*layers)
        if ts.get("revision"):
            flags["revision"] = ts["revision"]
        return flags

    def _token(self, family, task, name=None, density=None):
        flags = self.settings(family, task, name)
        keyed = {k: v for k, v in flags.items() if k not in OPERATIONAL_FLAGS}
        if keyed.get("start") == "finetuned":  # the default, said or not: one artifact
            del keyed["start"]
        if family == "finetune":
            keyed["model_revision"] = self.cfg["model_revision"]
            return f"dense-{short_hash(keyed)}", flags
        prefix = {"prune": "prune", "factorize": "fact", "retrain": "retrain"}[family]
        token = f"{prefix}-{name}-{short_hash(keyed)}"
        if density is not None:
            token += f"-d{dtok(density)}"
        self.stages[family][(task, token)] = (name, density, flags)
        return token, flags

    # rows ----------------------------------------------------------------------------------
    def _build(self):
        cfg = self.cfg
        methods = cfg["run_methods"] or list(cfg["methods"])
        for task in self.tasks:
            self.teacher[task] = self._token("finetune", task)
        for method in methods:
            chain = cfg["methods"][method]
            label = chain.get("label") or method
            dense = not any(chain.get(f) for f in ("prune", "factorize", "retrain"))
            densities = [1.0] if dense else (chain.get("densities") or cfg["densities"])
            for task in [t for t in self.tasks if t in (chain.get("tasks") or self.tasks)]:
                for density in densities:
                    parts = [self.teacher[task][0]]
                    pruner = chain.get("prune")
                    if pruner:
                        parts.append(self._token("prune", task, pruner, density)[0])
                    if chain.get("factorize"):
                        parts.append(self._token("factorize", task, chain["factorize"], density)[0])
                    if chain.get("retrain"):
                        parts.append(self._token("retrain", task, chain["retrain"])[0])
                    for seed in self.seeds:
                        self.rows.append(
                            {
                                "model": self.model,
                                "task": task,
                                "method": method,
                                "label": label,
                                "density": 1.0 if dense else float(density),
                                "seed": seed,
                                "dense": dense,
                                "pruner": pruner,
                                "chain": posixpath.join(*parts),
                                "dir": self.artifact(task, seed, *parts),
                            }
                        )

        self._build_rank_study()

    def _build_rank_study(self):
        """The rank study's own grid: every pruning setting of a rank-study task's rows, at each
        rank_study.densities (the paper's figure has more points than its table)."""
        self.rank_prunes = {}  # task -> [(pruner, density, prune token)]
        densities = self.rank_densities()
        for task in self.rank_tasks():
            pruners = list(dict.fromkeys(r["pruner"] for r in self.rows if r["task"] == task and r["pruner"]))
            self.rank_prunes[task] = [
                (p, float(d), self._token("prune", task, p, d)[0]) for p in pruners for d in densities
            ]

    def methods(self):
        """The method keys this run plans (run_methods, else every method)."""
        return list(dict.fromkeys(r["method"] for r in self.rows))

    def artifact(self, task, seed, *parts):
        return posixpath.join(RESULTS, self.model, task, f"s{seed}", *parts)

    # targets -------------------------------------------------------------------------------
    def latency_tasks(self):
        return self.cfg["evaluate"]["tasks"] or self.tasks

    def rank_tasks(self):
        """rank_study.tasks, or the paper's rank-study tasks this config runs, or else every task."""
        study = self.cfg["rank_study"]
        if not study["enabled"]:
            return []
        if study["tasks"]:
            return list(study["tasks"])
        return [t for t in self.tasks if t in RANK_STUDY_TASKS] or self.tasks

    def rank_densities(self):
        return [float(d) for d in (self.cfg["rank_study"]["densities"] or self.cfg["densities"])]

    def report_rows(self):
        """Rows for lpaf.report: one per (task, method, density, seed) with its files."""
        latency = set(self.latency_tasks())
        out = []
        for r in self.rows:
            dense_dir = self.artifact(r["task"], r["seed"], self.teacher[r["task"]][0])
            measured = r["task"] in latency
            out.append(
                {k: r[k] for k in ("model", "task", "method", "label", "density", "seed", "dense", "chain")}
                | {
                    "metrics": f"{r['dir']}/metrics.json",
                    "eval": f"{r['dir']}/eval.json" if measured else None,  # reload + score check
                    "dense_eval": f"{dense_dir}/eval.json" if measured else None,
                    "timing": self.timing_file() if measured else None,
                    "timing_model": r["dir"] if measured else None,
                    "timing_dense": dense_dir if measured else None,
                }
            )
        return out

    def timing_file(self):
        """The experiment's one timing job: every timed model of its grid side by side."""
        return posixpath.join(self.experiment_dir, "timing.json")

    def rank_rows(self):
        """Rank-study entries: per rank-study task and seed, the teacher and every pruning setting
        at every rank-study density."""
        out = []
        for task in self.rank_tasks():
            teacher = self.teacher[task][0]
            entries = [(teacher, "dense", 1.0, True)]
            entries += [
                (posixpath.join(teacher, token), pruner, density, False)
                for pruner, density, token in self.rank_prunes[task]
            ]
            for seed in self.seeds:
                for chain, label, density, dense in entries:
                    d = self.artifact(task, seed, chain)
                    out.append(
                        {
                            "model": self.model,
                            "task": task,
                            "seed": seed,
                            "label": label,
                            "density": density,
                            "dense": dense,
                            "chain": chain,
                            "rank": f"{d}/rank.json",
                            "metrics": f"{d}/metrics.json",
                        }
                    )
        return out

    def wildcard_constraints(self):
        teacher = _alt(t for t, _ in self.teacher.values())
        prune = _alt(tok for _, tok in self.stages["prune"])
        fact = _alt(tok for _, tok in self.stages["factorize"])
        retrain = _alt(tok for _, tok in self.stages["retrain"])
        return {
            "model": re.escape(self.model),
            "task": _alt(self.tasks),
            "seed": _alt(str(s) for s in self.seeds),
            "teacher": teacher,
            "prune": prune,
            "fact": fact,
            "retrain": retrain,
            "source": f"(?:{teacher})(?:/(?:{prune}))?",
            "chain": f"(?:{teacher})(?:/(?:{prune}))?(?:/(?:{fact})(?:/(?:{retrain}))?)?",
        }
