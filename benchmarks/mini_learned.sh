#!/usr/bin/env bash
# The mini table's learned-movement rows in the regime where the scores learn (config/mini_learned.yaml on
# top of config/mini.yaml; issue 29, point 8): one Snakemake invocation per task on the committed seeds'
# teachers, then benchmarks/mini_summary.py commits each (seed, task) under benchmarks/results/mini/learned/
# and rebuilds the table and claims.
#
#   setsid nohup benchmarks/mini_learned.sh > logs/mini_learned.log 2>&1 &   # SST-2, seeds 43 44 45
#   SEEDS='[43]' TASKS='mrpc' DENSITIES='[0.25]' benchmarks/mini_learned.sh  # a smaller piece (< 150 min)
#
# Measured on 2 cores (benchmarks/results/mini/README.md): SST-2, three seeds, both densities, 75 min;
# MRPC, three seeds, one density per invocation, 65-74 min (its sequences are twice as long). A later
# invocation at another density adds its rows to the committed ones (mini_summary.py). Resumable:
# Snakemake reruns only what is missing, an interrupted job resumes from its last checkpoint. The teachers are mini.yaml's (the same artifact hash): when they are missing Snakemake
# trains them again, and mini_aggregate.py refuses a teacher whose dev score differs from the committed one.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${LPAF_SHARED:-../shared}
SEEDS=${SEEDS:-[43,44,45]}
TASKS=${TASKS:-sst2}
DENSITIES=${DENSITIES:-[0.5,0.25]}
CORES=${CORES:-2}
if [[ ! -f "$SHARED/models/all-MiniLM-L6-v2/config.json" || ! -d "$SHARED/data/glue" ]]; then
  echo "mini_learned: expected the model at $SHARED/models/all-MiniLM-L6-v2 and GLUE files under $SHARED/data/glue (set LPAF_SHARED=DIR)" >&2
  exit 2
fi
failed=0
for task in $TASKS; do
  echo "[$(date -u +%FT%TZ)] learned movement: $task, seeds $SEEDS, densities $DENSITIES"
  start=$(date +%s)
  cmd=(snakemake --cores "$CORES" --rerun-incomplete --keep-going
       --configfile config/mini.yaml config/mini_learned.yaml
       --config model_path="$SHARED/models/all-MiniLM-L6-v2" data_dir="$SHARED/data"
       "seeds=$SEEDS" "tasks=[$task]" "densities=$DENSITIES"
       "evaluate={latency_batches: 1, tasks: [$task]}" "rank_study={enabled: true, tasks: [$task]}")
  if ! "${cmd[@]}"; then
    echo "mini_learned: the workflow failed for $task (see the log above); nothing of it is committed" >&2
    failed=1
    continue
  fi
  wall=$(( $(date +%s) - start ))
  echo "[$(date -u +%FT%TZ)] $task done in $wall s"
  python benchmarks/mini_summary.py --config config/mini.yaml config/mini_learned.yaml --cores "$CORES" \
    --snakemake-wall-s "$wall" --command "$(printf '%q ' "${cmd[@]}")" \
    || { echo "mini_learned: collecting $task failed (rerun: python benchmarks/mini_summary.py --config config/mini.yaml config/mini_learned.yaml)" >&2; failed=1; }
done
exit "$failed"
