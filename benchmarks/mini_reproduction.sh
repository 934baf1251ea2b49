#!/usr/bin/env bash
# The real-data mini reproduction (config/mini.yaml, or CONFIG=config/mini_qa.yaml) on the shared
# MiniLM and GLUE / SQuAD files.
#
#   benchmarks/mini_reproduction.sh              # starts in the background, prints the log path
#                                                # and the command that stops it
#   benchmarks/mini_reproduction.sh --foreground # same, in this terminal
#   SEEDS='[42,43,44,45,46]' benchmarks/mini_reproduction.sh   # 5 seeds (continues a 1-seed run)
#   SEEDS='[43]' TASKS='[cola]' benchmarks/mini_reproduction.sh  # one task of one seed (< 150 min each)
#   RUN_METHODS='[dense, platon, magnitude, svd, fwsvd, lpaf, lpaf-no-sa-svd, lpaf-no-mixed-rank]' ...
#                                                # only these rows (CoLA's and SQuAD's committed seeds)
#   CONFIG=config/mini_qa.yaml SEEDS='[43]' benchmarks/mini_reproduction.sh   # SQuAD, one seed: first
#                                                # writes the config's split of the shared SQuAD dev
#                                                # set (lpaf split-squad) when it is missing
#
# Stopping: the background run is its own process group (pid in logs/mini_reproduction.pid), so
# `kill -TERM -- -PID` stops Snakemake and its running jobs together. Killing only the script's pid,
# or a SIGINT to Snakemake alone, leaves a --keep-going run starting new jobs.
# Resumable: rerunning it continues where it stopped (Snakemake reruns only missing or incomplete
# artifacts; an interrupted training job resumes from its last checkpoint). When the table is
# complete, benchmarks/mini_summary.py commits each (seed, task) run's rows and per-stage wall times
# under benchmarks/results/mini/seeds/s<seed>/<task>/ and rebuilds the table, figures and claims
# from every committed run (small files only; no weights).
# Needs: ../shared (models/all-MiniLM-L6-v2, data/glue) beside the repository, and an environment
# with lpaf installed; without one it creates .venv the way .ci/run does.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${LPAF_SHARED:-../shared}
MODEL="$SHARED/models/all-MiniLM-L6-v2"
DATA="$SHARED/data"
CONFIG=${CONFIG:-config/mini.yaml}
CORES=${CORES:-2}
SEEDS=${SEEDS:-}
TASKS=${TASKS:-}
RUN_METHODS=${RUN_METHODS:-}
LOG=${LPAF_MINI_LOG:-logs/mini_reproduction.log}
PIDFILE="${LOG%.log}.pid"

if [[ ! -f "$CONFIG" ]]; then
  echo "mini_reproduction: CONFIG=$CONFIG: no such file; accepted: config/mini.yaml (GLUE) or config/mini_qa.yaml (SQuAD)" >&2
  exit 2
fi
SQUAD_SOURCE="$DATA/squad/v1.1/dev-v1.1.json"
if [[ ! -f "$MODEL/config.json" || ( ! -d "$DATA/glue" && ! -f "$SQUAD_SOURCE" ) ]]; then
  echo "mini_reproduction: expected the model at $MODEL and GLUE files under $DATA/glue or $SQUAD_SOURCE (set LPAF_SHARED=DIR)" >&2
  exit 2
fi

if [[ "${1:-}" != "--foreground" ]]; then
  mkdir -p "$(dirname "$LOG")"
  # setsid: a process group of its own (the script, Snakemake and its jobs), stoppable as one
  setsid nohup "$0" --foreground >>"$LOG" 2>&1 </dev/null &
  echo "$!" >"$PIDFILE"
  echo "mini reproduction running in the background (pid $!); log: $LOG"
  echo "stop it with: kill -TERM -- -$! (rerun the same command to continue)"
  exit 0
fi

if ! python3 -c "import lpaf, snakemake" 2>/dev/null; then
  if [[ ! -x .venv/bin/python ]]; then
    python3 -m venv .venv
    .venv/bin/pip install -q torch==2.13.0
    .venv/bin/pip install -q -e ".[test]"
  fi
  . .venv/bin/activate
fi

# a SQuAD config names its split of the shared dev set (task_settings.squad.data_dir): write it once
SQUAD_SPLIT=$(python3 -c 'import sys, yaml; c = yaml.safe_load(open(sys.argv[1])) or {}
print(((c.get("task_settings") or {}).get("squad") or {}).get("data_dir") or "")' "$CONFIG")
if [[ -n "$SQUAD_SPLIT" && ! -d "$SQUAD_SPLIT" ]]; then
  if [[ ! -f "$SQUAD_SOURCE" ]]; then
    echo "mini_reproduction: $CONFIG needs $SQUAD_SPLIT, split from $SQUAD_SOURCE, which is missing (set LPAF_SHARED=DIR)" >&2
    exit 2
  fi
  echo "[$(date -u +%FT%TZ)] writing $SQUAD_SPLIT from $SQUAD_SOURCE"
  lpaf split-squad --source "$SQUAD_SOURCE" --out "$SQUAD_SPLIT"
fi

extra=()
[[ -n "$SEEDS" ]] && extra=("seeds=$SEEDS")
# a subset of the tasks: the latency and rank-study task lists follow it (they must name run tasks)
[[ -n "$TASKS" ]] && extra+=("tasks=$TASKS" "evaluate={tasks: $TASKS}" "rank_study={tasks: $TASKS}")
[[ -n "$RUN_METHODS" ]] && extra+=("run_methods=$RUN_METHODS")
echo "[$(date -u +%FT%TZ)] start: commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown), $(nproc) cores, CONFIG=$CONFIG, CORES=$CORES, SEEDS=${SEEDS:-config}, TASKS=${TASKS:-config}, RUN_METHODS=${RUN_METHODS:-config}"
start=$(date +%s)
snakemake --cores "$CORES" --configfile "$CONFIG" --rerun-incomplete --keep-going \
  --config model_path="$MODEL" data_dir="$DATA" "${extra[@]}"
end=$(date +%s)
echo "[$(date -u +%FT%TZ)] snakemake finished in $((end - start)) s"
cmd="snakemake --cores $CORES --configfile $CONFIG --rerun-incomplete --keep-going --config model_path=$MODEL data_dir=$DATA"
for e in "${extra[@]}"; do cmd+=" '$e'"; done
python3 benchmarks/mini_summary.py --config "$CONFIG" --snakemake-wall-s "$((end - start))" --cores "$CORES" --command "$cmd"
