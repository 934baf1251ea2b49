"""Faults survived, end to end: the smoke workflow under random SIGTERM / SIGKILL of its jobs.

1. Clean run: ``snakemake --cores N --configfile CONFIG`` (this checkout's Snakefile, the default
   target) in ``WORKDIR/clean``, untouched. A monitor records how long each stage process lived,
   so that the faulted run can aim its kills at random moments inside a job's lifetime.
2. Faulted run: the same command in ``WORKDIR/faulted``. While it runs, the monitor finds the stage
   processes (``lpaf <stage>`` / ``python -m lpaf.cli <stage>`` descendants of Snakemake) and kills
   randomly chosen ones at random moments with SIGTERM or SIGKILL (both kinds in every stage; at least
   ``--kills`` in all, spread over finetune, prune, factorize, retrain and evaluate by per-stage
   quotas), and sends Snakemake itself one SIGTERM while jobs run (what a cluster user's login-node
   session gets when it is closed or preempted); and the timing job (``lpaf time-models``) once
   where the config has one. Then it runs the same command again — the recovery
   README.md / workflow/README.md document: no extra flag; the workflow profile has
   ``rerun-incomplete`` — until Snakemake exits 0 with ``results/<experiment>/table.csv`` written, counting reruns.
3. Compares ``table.csv`` and ``runs.csv`` (and ``rank_study.csv``) of ``results/<experiment>/`` of the two runs,
   every column except the timing ones (see ``TIMING_COLUMNS``); compares the dev metrics of every
   artifact and the bytes of every weight file; checks that no ``.partial-*`` / ``.old-*`` /
   checkpoint directory or Snakemake incomplete marker is left. Writes JSON and prints a summary.

    python benchmarks/fault_injection.py --workdir /tmp/fault/work --kills 12 --seed 0

The jobs run this checkout's ``lpaf`` (its directory goes first on PYTHONPATH), so an editable
install of another checkout is not what is measured.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import hashlib
import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAGES = ("finetune", "prune", "factorize", "retrain", "evaluate")  # the kill quota is spread over these
EXTRA_STAGES = ("time-models",)  # the workflow's timing job (`lpaf time-models`): one kill when the config has one
ALL_STAGES = STAGES + EXTRA_STAGES
FILE_OUTPUT_STAGES = ("evaluate", "time-models")  # --out is a JSON file, not an artifact directory
LOG_NAMES = {"time-models": "timing.log"}  # logs/<...>/<name> of a job; default <stage>.log
TRAINING_STAGES = ("finetune", "prune", "retrain")  # the ones that checkpoint and resume
MARKER = ".fault_injection"
# Columns that hold wall-clock measurements: they differ between any two runs, faults or not.
TIMING_COLUMNS = {
    "latency_ms": "median forward latency measured by `lpaf evaluate --latency-batches` (wall clock)",
    "dense_latency_ms": "the dense model's latency (wall clock)",
    "speedup": "dense_latency_ms / latency_ms (runs.csv): a ratio of two wall-clock measurements",
    "speedup_mean": "mean over seeds of speedup (table.csv)",
    "speedup_std": "std over seeds of speedup (table.csv)",
}
TIMING_SUFFIXES = ("wall_time_s", "_time_s", "_seconds")


def timing_column(name: str) -> bool:
    return name in TIMING_COLUMNS or name.endswith(TIMING_SUFFIXES)


# ------------------------------------------------------------------------------------------------
# processes
# ------------------------------------------------------------------------------------------------

try:
    import psutil
except ImportError:  # /proc fallback (Linux)
    psutil = None


def _proc_children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    return children


def descendants(pid: int) -> list[int]:
    if psutil is not None:
        try:
            return [p.pid for p in psutil.Process(pid).children(recursive=True)]
        except psutil.Error:
            return []
    children, out, todo = _proc_children_map(), [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def cmdline(pid: int) -> list[str]:
    try:
        if psutil is not None:
            return psutil.Process(pid).cmdline()
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except (OSError, Exception):
        return []


def parent_pid(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def start_ticks(pid: int) -> str | None:
    """Identity of a process across pid reuse: its start time."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def alive(pid: int, ticks: str | None) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return fields[0] != "Z" and fields[19] == ticks
    except (OSError, IndexError):
        return False


def stage_of(argv: list[str]) -> tuple[str, str] | None:
    """(stage, --out) of an lpaf stage process, or None (bash wrappers, other processes)."""
    if not argv or "python" not in Path(argv[0]).name:
        return None
    for i, arg in enumerate(argv[1:], start=1):
        if Path(arg).name == "lpaf" and i + 1 < len(argv):
            stage = argv[i + 1]
            break
        if arg == "-m" and i + 2 < len(argv) and argv[i + 1] == "lpaf.cli":
            stage = argv[i + 2]
            break
    else:
        return None
    if stage not in ALL_STAGES:
        return None
    out = argv[argv.index("--out") + 1] if "--out" in argv[:-1] else "?"
    return stage, out


# ------------------------------------------------------------------------------------------------
# one Snakemake invocation, watched (and, in the faulted run, attacked)
# ------------------------------------------------------------------------------------------------


class KillPlan:
    """Per-stage quotas, alternating signals within a stage, random moments inside a job's life."""

    def __init__(self, total: int, rng: random.Random, clean_jobs: dict, max_per_job: int, snakemake_kills: int,
                 clean_wall_s: float):
        self.rng = rng
        base, extra = divmod(total, len(STAGES))
        order = ["retrain", "prune", "finetune", "factorize", "evaluate"]  # most jobs first get the remainder
        self.quota = {s: max(base, 2) for s in STAGES}  # >= 2 per stage: both signals in every stage
        for s in order[:extra]:
            self.quota[s] += 1
        self.stage_total = {s: sum(1 for (st, _) in clean_jobs if st == s) for s in ALL_STAGES}
        for s in EXTRA_STAGES:
            self.quota[s] = 1 if self.stage_total[s] else 0
        self.next_signal = {s: rng.choice([signal.SIGTERM, signal.SIGKILL]) for s in ALL_STAGES}
        self.clean_jobs = clean_jobs  # (stage, out) -> duration in the clean run
        self.stage_median = {}
        for s in ALL_STAGES:
            d = [v for (st, _), v in clean_jobs.items() if st == s]
            self.stage_median[s] = statistics.median(d) if d else 10.0
        self.max_per_job = max_per_job
        self.kills_of_job: dict[tuple[str, str], int] = {}
        self.pending: dict[str, int] = {s: 0 for s in ALL_STAGES}
        self.done: dict[str, int] = {s: 0 for s in ALL_STAGES}
        self.completed: set[tuple[str, str]] = set()
        self.snakemake_kills_left = snakemake_kills
        self.clean_wall_s = clean_wall_s

    def left(self, stage: str) -> int:
        return self.quota[stage] - self.done[stage] - self.pending[stage]

    def all_done(self) -> bool:
        return all(self.done[s] >= self.quota[s] for s in ALL_STAGES) and self.snakemake_kills_left <= 0

    def decide(self, key: tuple[str, str]) -> tuple[str, float] | None:
        """Kill this new process? Return (trigger, delay) or None.

        trigger "time": ``delay`` seconds after the process was first seen, a uniform random moment
        within 5-90% of the job's duration in the clean run (the tiny smoke jobs spend most of it
        importing and loading, so these kills mostly land before or after training).
        trigger "checkpoint" (training stages, every second and third kill of a stage): ``delay``
        (0-0.6 s) after the job's first checkpoint appears, so kills also land inside training and a
        rerun has a checkpoint to resume from (SIGTERM: the stage saves one more and exits 75).
        """
        stage = key[0]
        if self.left(stage) <= 0 or self.kills_of_job.get(key, 0) >= self.max_per_job:
            return None
        remaining = max(1, self.stage_total[stage] - sum(1 for k in self.completed if k[0] == stage))
        if self.rng.random() >= min(1.0, 3.0 * self.left(stage) / remaining):
            return None
        duration = self.clean_jobs.get(key, self.stage_median[stage])
        n = self.done[stage] + self.pending[stage]
        self.pending[stage] += 1
        if stage in TRAINING_STAGES and n % 4 in (1, 2):
            return "checkpoint", self.rng.uniform(0.0, 0.6)
        return "time", self.rng.uniform(0.05, 0.9) * duration

    def take_signal(self, stage: str) -> int:
        sig = self.next_signal[stage]
        self.next_signal[stage] = signal.SIGKILL if sig == signal.SIGTERM else signal.SIGTERM
        return sig


def log_path(work: Path, stage: str, out: str) -> Path:
    rel = Path(out)
    if stage in FILE_OUTPUT_STAGES:
        rel = rel.parent
    try:
        rel = rel.relative_to("results")
    except ValueError:
        pass
    return work / "logs" / rel / LOG_NAMES.get(stage, f"{stage}.log")


def output_done(work: Path, stage: str, out: str) -> bool:
    p = work / out
    return p.is_file() if stage in FILE_OUTPUT_STAGES else (p / "metrics.json").is_file()


def checkpoints_of(work: Path, out: str) -> list[str]:
    p = work / out
    d = p.parent / f".{p.name}.checkpoints"
    return sorted((c.name for c in d.glob("checkpoint-*")), key=lambda n: int(n.split("-")[1])) if d.is_dir() else []


def lpaf_lines(path: Path) -> list[str]:
    try:
        return [line.strip() for line in path.read_text(errors="replace").splitlines() if line.startswith("lpaf:")]
    except OSError:
        return []


def run_snakemake(cmd: list[str], work: Path, env: dict, log_file: Path, t_origin: float, run_index: int,
                  plan: KillPlan | None, rng: random.Random, events: dict, poll_s: float = 0.2) -> dict:
    """Run one Snakemake invocation to its end, watching (and with a plan, killing) its stage jobs."""
    t0 = time.time()
    with open(log_file, "w") as log:
        proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    seen: dict[int, dict] = {}  # pid -> job record
    scheduled: list[tuple[float, int]] = []  # (kill time, pid)
    armed: dict[int, float] = {}  # pid -> delay after its first checkpoint
    # Snakemake itself gets its SIGTERM once a random number of stage jobs have started in this
    # invocation (and one still runs: its scheduler, which handles SIGTERM, is then up)
    sm_kill_after = rng.randint(2, 10) if plan is not None and plan.snakemake_kills_left > 0 else None
    jobs_ended = []
    try:
        while True:
            finished = proc.poll() is not None
            now = time.time()
            for pid in descendants(proc.pid) if not finished else []:
                if pid in seen:
                    continue
                found = stage_of(cmdline(pid))
                if found is None or stage_of(cmdline(parent_pid(pid))) is not None:
                    continue  # not a stage, or a stage's own short-lived fork (same command line until exec)
                stage, out = found
                rec = {"pid": pid, "ticks": start_ticks(pid), "stage": stage, "out": out, "seen": now,
                       "kill_at": None, "killed": None, "trigger": None}
                seen[pid] = rec
                if plan is not None:
                    decision = plan.decide((stage, out))
                    if decision is not None:
                        rec["trigger"], delay = decision
                        if rec["trigger"] == "time":
                            rec["kill_at"] = now + delay
                            scheduled.append((rec["kill_at"], pid))
                        else:
                            armed[pid] = delay
            # checkpoint-triggered kills: armed until the job's first checkpoint appears
            for pid, delay in list(armed.items()):
                rec = seen[pid]
                if not alive(pid, rec["ticks"]):
                    del armed[pid]
                    plan.pending[rec["stage"]] -= 1  # it finished (or failed) before checkpointing
                elif checkpoints_of(work, rec["out"]):
                    del armed[pid]
                    rec["kill_at"] = now + delay
                    scheduled.append((rec["kill_at"], pid))
            # kills due
            for when, pid in list(scheduled):
                if when > now:
                    continue
                scheduled.remove((when, pid))
                rec = seen[pid]
                plan.pending[rec["stage"]] -= 1
                if not alive(pid, rec["ticks"]):
                    continue  # it finished first: no kill
                sig = plan.take_signal(rec["stage"])
                ckpts = checkpoints_of(work, rec["out"])
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    plan.next_signal[rec["stage"]] = sig
                    continue
                key = (rec["stage"], rec["out"])
                plan.kills_of_job[key] = plan.kills_of_job.get(key, 0) + 1
                plan.done[rec["stage"]] += 1
                clean_d = plan.clean_jobs.get(key)
                rec["killed"] = {
                    "run": run_index, "t_s": round(now - t_origin, 2), "t_in_run_s": round(now - t0, 2),
                    "stage": rec["stage"], "signal": signal.Signals(sig).name, "trigger": rec["trigger"],
                    "pid": pid, "out": rec["out"],
                    "log": str(log_path(work, rec["stage"], rec["out"]).relative_to(work)),
                    "age_s": round(now - rec["seen"], 2),
                    "clean_duration_s": round(clean_d, 2) if clean_d else None,
                    "checkpoints_before": ckpts, "attempt_of_this_job": plan.kills_of_job[key],
                }
                events["kills"].append(rec["killed"])
                print(f"[{now - t_origin:7.1f}s] run {run_index}: {signal.Signals(sig).name} -> {rec['stage']} "
                      f"pid {pid} ({rec['out']}) at {now - rec['seen']:.1f}s", flush=True)
            if sm_kill_after is not None and len(seen) >= sm_kill_after and not finished:
                running = [r for r in seen.values() if alive(r["pid"], r["ticks"])]
                if running:  # the scheduler (and its SIGTERM handler) is up
                    os.kill(proc.pid, signal.SIGTERM)
                    plan.snakemake_kills_left -= 1
                    sm_kill_after = None
                    events["snakemake_kills"].append({
                        "run": run_index, "t_s": round(now - t_origin, 2), "t_in_run_s": round(now - t0, 2),
                        "signal": "SIGTERM", "pid": proc.pid, "jobs_running": [r["out"] for r in running]})
                    print(f"[{now - t_origin:7.1f}s] run {run_index}: SIGTERM -> snakemake pid {proc.pid} "
                          f"({len(running)} jobs running)", flush=True)
            # ended jobs
            for rec in seen.values():
                if "ended" in rec or alive(rec["pid"], rec["ticks"]):
                    continue
                rec["ended"] = now
                done = output_done(work, rec["stage"], rec["out"])
                lines = lpaf_lines(log_path(work, rec["stage"], rec["out"]))
                resumed = [line for line in lines if "resuming from checkpoint" in line]
                job = {"run": run_index, "stage": rec["stage"], "out": rec["out"], "duration_s": round(now - rec["seen"], 2),
                       "completed": done, "killed": rec["killed"] is not None, "resumed": resumed}
                jobs_ended.append(job)
                if resumed:
                    events["resumes"].append({"run": run_index, "stage": rec["stage"], "out": rec["out"],
                                              "line": resumed[-1], "completed": done})
                if rec["killed"] is not None:
                    rec["killed"]["outcome_lines"] = [line for line in lines if "resuming" not in line][-2:]
                    rec["killed"]["checkpoints_after"] = checkpoints_of(work, rec["out"])
                    rec["killed"]["preempted_cleanly"] = any("checkpoint saved" in line for line in lines)
                if plan is not None and done:
                    plan.completed.add((rec["stage"], rec["out"]))
            if finished and all("ended" in r for r in seen.values()):
                break
            time.sleep(poll_s)
        for pid in [p for _, p in scheduled] + list(armed):  # the run ended before these kills were due
            plan.pending[seen[pid]["stage"]] -= 1
    except BaseException:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        raise
    graceful = "Will exit after finishing currently running jobs" in log_file.read_text(errors="replace")
    by_harness = any(k["run"] == run_index for k in events["snakemake_kills"])
    return {"run": run_index, "returncode": proc.returncode, "wall_s": round(time.time() - t0, 1),
            "snakemake_sigterm_by_harness": by_harness,
            # Snakemake logs this line only after a SIGTERM; one the harness did not send came from outside
            "snakemake_graceful_shutdown": graceful, "snakemake_sigterm_from_outside": graceful and not by_harness,
            "jobs_seen": len(seen), "jobs_completed": sum(j["completed"] for j in jobs_ended),
            "kills": sum(1 for r in seen.values() if r["killed"]), "jobs": jobs_ended,
            "log": log_file.name}


# ------------------------------------------------------------------------------------------------
# comparison
# ------------------------------------------------------------------------------------------------


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def compare_csv(a: Path, b: Path) -> dict:
    if not a.is_file() or not b.is_file():
        return {"identical": False, "error": f"missing: {[str(p) for p in (a, b) if not p.is_file()]}"}
    cols_a, rows_a = read_csv(a)
    cols_b, rows_b = read_csv(b)
    excluded = [c for c in cols_a if timing_column(c)]
    compared = [c for c in cols_a if c not in excluded]
    result = {"rows": len(rows_a), "columns_compared": compared, "columns_excluded": excluded,
              "differences": []}
    if cols_a != cols_b or len(rows_a) != len(rows_b):
        result.update(identical=False, error=f"shape differs: {len(rows_a)} vs {len(rows_b)} rows, "
                                             f"columns {cols_a} vs {cols_b}")
        return result
    key_cols = [c for c in ("model", "task", "method", "density", "seed") if c in cols_a]
    for ra, rb in zip(rows_a, rows_b):
        for c in compared:
            if ra[c] != rb[c]:
                result["differences"].append({"row": {k: ra[k] for k in key_cols}, "column": c,
                                              "clean": ra[c], "faulted": rb[c]})
    result["identical"] = not result["differences"]
    result["differing_columns"] = sorted({d["column"] for d in result["differences"]})
    return result


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def safetensors_equal(a: Path, b: Path) -> bool:
    """Same metadata (as a dict) and the same tensors, bit for bit."""
    import torch
    from safetensors import safe_open

    with safe_open(str(a), "pt") as fa, safe_open(str(b), "pt") as fb:
        if fa.metadata() != fb.metadata() or sorted(fa.keys()) != sorted(fb.keys()):
            return False
        for k in fa.keys():
            ta, tb = fa.get_tensor(k), fb.get_tensor(k)
            if ta.dtype != tb.dtype or ta.shape != tb.shape:
                return False
            # compare the bits (NaN == NaN, -0.0 != 0.0)
            if not torch.equal(ta.reshape(-1).view(torch.uint8), tb.reshape(-1).view(torch.uint8)):
                return False
    return True


def compare_artifacts(a: Path, b: Path) -> dict:
    """Dev metrics of every metrics.json / eval.json, and the bytes of every weight file."""
    out = {"metrics_files": 0, "metrics_differ": [], "weight_files": 0, "weights_differ": [],
           "bytes_differ_content_equal": [], "missing": []}
    for pa in sorted((a / "results").rglob("*.json")):
        if pa.name not in ("metrics.json", "eval.json"):
            continue
        rel = pa.relative_to(a)
        pb = b / rel
        if not pb.is_file():
            out["missing"].append(str(rel))
            continue
        ma, mb = json.loads(pa.read_text()).get("metrics"), json.loads(pb.read_text()).get("metrics")
        out["metrics_files"] += 1
        if ma != mb:
            keys = sorted(k for k in set(ma or {}) | set(mb or {}) if (ma or {}).get(k) != (mb or {}).get(k))
            out["metrics_differ"].append({"file": str(rel), "keys": {k: [(ma or {}).get(k), (mb or {}).get(k)]
                                                                      for k in keys}})
    for pa in sorted((a / "results").rglob("*.safetensors")):
        rel = pa.relative_to(a)
        pb = b / rel
        if not pb.is_file():
            out["missing"].append(str(rel))
            continue
        out["weight_files"] += 1
        if sha256(pa) != sha256(pb):
            if safetensors_equal(pa, pb):
                out["bytes_differ_content_equal"].append(str(rel))
            else:
                out["weights_differ"].append(str(rel))
    out["identical"] = not (out["metrics_differ"] or out["weights_differ"] or out["missing"])
    if out["bytes_differ_content_equal"]:
        out["bytes_differ_note"] = (
            "same tensors and the same metadata dict, different bytes: the JSON header lists the "
            "__metadata__ keys in another order (safetensors serializes metadata from a Rust HashMap, "
            "whose order changes from process to process), so these files differ between any two runs")
    return out


def resumed_artifacts(work: Path) -> list[dict]:
    """Finished artifacts whose training resumed from a checkpoint (metrics.json train.resumed_from_step)."""
    found = []
    for p in sorted((work / "results").rglob("metrics.json")):
        train = json.loads(p.read_text()).get("train") or {}
        if train.get("resumed_from_step") is not None:
            found.append({"artifact": str(p.parent.relative_to(work)), "resumed_from_step": train["resumed_from_step"],
                          "train_steps": train.get("train_steps"),
                          "mid_training": train.get("train_steps") is not None
                          and train["resumed_from_step"] < train["train_steps"]})
    return found


def leftovers(work: Path) -> dict:
    results = work / "results"
    found = {"partial": [], "old": [], "checkpoints": [], "snakemake_incomplete": []}
    for p in results.rglob(".*"):
        name = p.name
        if ".partial-" in name:
            found["partial"].append(str(p.relative_to(work)))
        elif ".old-" in name:
            found["old"].append(str(p.relative_to(work)))
        elif name.endswith(".checkpoints"):
            found["checkpoints"].append(str(p.relative_to(work)))
    inc = work / ".snakemake" / "incomplete"
    if inc.is_dir():
        found["snakemake_incomplete"] = [p.name for p in inc.iterdir()]
    found["clean"] = not any(found.values())
    return found


# ------------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------------


def machine_info() -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "processor": platform.processor()}
    try:
        info["cpu_model"] = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                                 if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    for mod in ("torch", "transformers", "snakemake"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:
            info[mod] = None
    return info


def prepare(work: Path) -> None:
    if work.exists():
        if not (work / MARKER).is_file():
            raise SystemExit(f"fault_injection: {work} exists and was not made by this script; pick another --workdir")
        shutil.rmtree(work)
    work.mkdir(parents=True)
    (work / MARKER).write_text("scratch directory of benchmarks/fault_injection.py\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configfile", default="config/smoke.yaml", help="workflow config (relative to the repo)")
    ap.add_argument("--workdir", required=True, help="scratch directory: clean/ and faulted/ run there")
    ap.add_argument("--kills", type=int, default=12, help="stage-process kills, at least (>= 2 per stage)")
    ap.add_argument("--snakemake-kills", type=int, default=1, help="SIGTERMs to Snakemake itself (first run)")
    ap.add_argument("--max-kills-per-job", type=int, default=2, help="kill one job at most this often")
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill schedule")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--max-reruns", type=int, default=25)
    ap.add_argument("--reuse-clean", action="store_true",
                    help="keep a finished WORKDIR/clean from an earlier call of this script")
    ap.add_argument("--source-commit", default=None, help="commit of this checkout (recorded; default: git)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "fault_injection.json"))
    args = ap.parse_args(argv)

    config = Path(args.configfile)
    config = (config if config.is_absolute() else REPO / config).resolve()
    root = Path(args.workdir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    clean, faulted = root / "clean", root / "faulted"
    from lpaf.report import experiment_name

    import yaml

    # the experiment's own outputs (table, runs, rank study) are under results/<experiment>/
    experiment = experiment_name((yaml.safe_load(config.read_text()) or {}).get("name"), str(config))
    rng = random.Random(args.seed)
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(REPO), env.get("PYTHONPATH", "")] if p)
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--cores", str(args.cores),
           "--configfile", str(config)]
    commit = args.source_commit
    if commit is None:
        try:
            commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                                    check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            commit = None
    t_start = time.time()
    load_start = os.getloadavg()
    record = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "source_commit": commit,
              "configfile": str(config.relative_to(REPO)) if config.is_relative_to(REPO) else str(config),
              "config": config.read_text(), "command": "snakemake --cores {} --configfile {}  (run as: {} -d DIR)".format(
                  args.cores, args.configfile, " ".join(cmd)),
              "recovery": "the same command again (the workflow profile profiles/default sets rerun-incomplete and "
                          "keep-going; README: 'Run an interrupted workflow again with the same command')",
              "settings": {k: v for k, v in vars(args).items() if k not in ("out",)},
              "machine": machine_info() | {"loadavg_start": load_start}}

    # 1. clean run
    clean_info = clean / ".fault_injection_clean.json"
    if args.reuse_clean and clean_info.is_file() and (clean / "results" / experiment / "table.csv").is_file():
        clean_run = json.loads(clean_info.read_text())
        print(f"clean run reused from {clean} ({clean_run['wall_s']} s)", flush=True)
    else:
        prepare(clean)
        print(f"clean run in {clean} ...", flush=True)
        ev = {"kills": [], "snakemake_kills": [], "resumes": []}
        clean_run = run_snakemake(cmd + ["-d", str(clean)], clean, env, clean / "snakemake.log", time.time(), 0,
                                  None, rng, ev)
        if clean_run["returncode"] != 0:
            raise SystemExit(f"fault_injection: the clean run failed (exit {clean_run['returncode']}); "
                             f"see {clean / 'snakemake.log'}")
        clean_info.write_text(json.dumps(clean_run))
        print(f"clean run: {clean_run['wall_s']} s, {clean_run['jobs_seen']} stage jobs", flush=True)
    clean_jobs: dict[tuple[str, str], float] = {}
    for j in clean_run["jobs"]:
        clean_jobs[(j["stage"], j["out"])] = max(j["duration_s"], clean_jobs.get((j["stage"], j["out"]), 0.0))
    record["clean_run"] = {k: v for k, v in clean_run.items() if k != "jobs"}
    record["clean_run"]["jobs_seen"] = len(clean_jobs)
    record["clean_run"]["stage_jobs"] = {s: sum(1 for k in clean_jobs if k[0] == s) for s in ALL_STAGES}
    record["clean_run"]["median_job_s"] = {s: round(statistics.median([d for k, d in clean_jobs.items()
                                                                         if k[0] == s]), 2)
                                           for s in ALL_STAGES if any(k[0] == s for k in clean_jobs)}

    # 2. faulted run, rerun until it completes
    prepare(faulted)
    plan = KillPlan(args.kills, rng, clean_jobs, args.max_kills_per_job, args.snakemake_kills, clean_run["wall_s"])
    record["kill_quota"] = dict(plan.quota)
    events = {"kills": [], "snakemake_kills": [], "resumes": []}
    runs = []
    t_faulted = time.time()
    completed = False
    for i in range(args.max_reruns + 1):
        print(f"faulted run, invocation {i} ...", flush=True)
        r = run_snakemake(cmd + ["-d", str(faulted)], faulted, env, faulted / f"snakemake.{i}.log", t_faulted, i,
                          plan, rng, events)
        runs.append({k: v for k, v in r.items() if k != "jobs"})
        print(f"  invocation {i}: exit {r['returncode']}, {r['wall_s']} s, {r['jobs_completed']} jobs completed, "
              f"{r['kills']} kills", flush=True)
        if r["returncode"] == 0 and (faulted / "results" / experiment / "table.csv").is_file():
            completed = True
            break
    faulted_wall = time.time() - t_faulted
    kills = events["kills"]
    by_stage = {s: {"SIGTERM": 0, "SIGKILL": 0} for s in ALL_STAGES}
    for k in kills:
        by_stage[k["stage"]][k["signal"]] += 1
    record["faulted_run"] = {
        "completed": completed, "invocations": len(runs), "reruns_needed": len(runs) - 1,
        "wall_s_total": round(faulted_wall, 1), "runs": runs,
        "kills_total": len(kills), "kills_per_stage": by_stage,
        "kills_by_signal": {s: sum(1 for k in kills if k["signal"] == s) for s in ("SIGTERM", "SIGKILL")},
        "snakemake_kills": events["snakemake_kills"],
        "snakemake_sigterms_from_outside": sum(1 for r in runs if r["snakemake_sigterm_from_outside"]),
        "kills_requested": args.kills, "quota_met": all(plan.done[s] >= plan.quota[s] for s in ALL_STAGES),
        "kills_that_saved_a_checkpoint": sum(1 for k in kills if k.get("preempted_cleanly")),
        "resumed_from_checkpoint": events["resumes"],
        "kills": kills,
        "finished_artifacts_resumed": resumed_artifacts(faulted),
    }

    # 3. compare
    comparison = {f: compare_csv(clean / "results" / experiment / f, faulted / "results" / experiment / f)
                  for f in ("table.csv", "runs.csv", "rank_study.csv")}
    comparison["excluded_columns_why"] = {c: TIMING_COLUMNS.get(c, "a wall-clock time") for c in sorted(
        {c for f in ("table.csv", "runs.csv") for c in comparison[f].get("columns_excluded", [])})}
    comparison["artifacts"] = compare_artifacts(clean, faulted)
    comparison["leftovers_faulted"] = leftovers(faulted)
    comparison["leftovers_clean"] = leftovers(clean)
    identical = completed and comparison["table.csv"].get("identical") and comparison["runs.csv"].get("identical")
    record["comparison"] = comparison
    record["identical"] = bool(identical)
    record["wall_s"] = {"clean": clean_run["wall_s"], "faulted_total": round(faulted_wall, 1),
                        "script_total": round(time.time() - t_start, 1)}
    record["machine"]["loadavg_end"] = os.getloadavg()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1, default=str) + "\n")

    # summary
    print()
    print(f"kills survived: {len(kills)} stage processes "
          f"({record['faulted_run']['kills_by_signal']['SIGTERM']} SIGTERM, "
          f"{record['faulted_run']['kills_by_signal']['SIGKILL']} SIGKILL) + {len(events['snakemake_kills'])} "
          f"SIGTERM to snakemake")
    for s in ALL_STAGES:
        print(f"  {s:<11} SIGTERM {by_stage[s]['SIGTERM']}  SIGKILL {by_stage[s]['SIGKILL']}")
    if not record["faulted_run"]["quota_met"]:
        print(f"  (fewer than requested: quotas {plan.quota}; the workflow finished first)")
    outside = record["faulted_run"]["snakemake_sigterms_from_outside"]
    if outside:
        print(f"  + Snakemake shut down gracefully in {outside} invocation(s) after a SIGTERM this script did not send")
    print(f"kills that saved a checkpoint (exit 75): {record['faulted_run']['kills_that_saved_a_checkpoint']}; "
          f"jobs resumed from a checkpoint: {len(events['resumes'])}")
    res = record["faulted_run"]["finished_artifacts_resumed"]
    print(f"finished artifacts trained across a resume: {len(res)} "
          f"({sum(r['mid_training'] for r in res)} resumed mid-training, the rest after the last step)")
    print(f"reruns needed: {len(runs) - 1} ({'completed' if completed else 'NOT completed'})")
    print(f"wall: clean {clean_run['wall_s']} s, faulted {faulted_wall:.0f} s in all")
    for f in ("table.csv", "runs.csv", "rank_study.csv"):
        c = comparison[f]
        print(f"{f}: {'identical' if c.get('identical') else 'DIFFERENT'}"
              + (f" (excluding {', '.join(c['columns_excluded'])})" if c.get("columns_excluded") else "")
              + (f"; differing columns {c.get('differing_columns')}" if not c.get("identical") else ""))
    a = comparison["artifacts"]
    print(f"artifacts: {a['metrics_files']} metrics files, {a['weight_files']} weight files: "
          f"{'identical' if a['identical'] else 'DIFFERENT'} ({len(a['metrics_differ'])} metrics, "
          f"{len(a['weights_differ'])} weights differ, {len(a['missing'])} missing; "
          f"{len(a['bytes_differ_content_equal'])} differ only in the order of their metadata header)")
    print(f"leftovers in the faulted run: {'none' if comparison['leftovers_faulted']['clean'] else comparison['leftovers_faulted']}")
    print(f"wrote {out}")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
