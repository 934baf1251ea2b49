#!/usr/bin/env bash
# C3 at matched compute (issue 29, point 5): the svd and fwsvd baselines of the mini table's teachers,
# re-trained for lpaf's prune + re-train steps (config/mini_matched.yaml on top of config/mini.yaml),
# one Snakemake invocation per task, then the CSV that benchmarks/mini_claims.py reads.
#
#   benchmarks/c3_matched_compute.sh                       # SST-2 then MRPC, seeds 43 44 45 (mini.yaml's committed seeds)
#   SEEDS='[43]' TASKS='sst2' benchmarks/c3_matched_compute.sh
#
# Resumable (Snakemake reruns only what is missing). Log: logs/c3_matched_compute.log when run with
# nohup/setsid as below; each finished task's rows are collected into
# benchmarks/results/mini/matched/s<seed>/<task>/runs.csv and benchmarks/results/mini/c3_matched_compute.csv.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${LPAF_SHARED:-../shared}
SEEDS=${SEEDS:-[43,44,45]}
TASKS=${TASKS:-sst2 mrpc}
CORES=${CORES:-2}
failed=0
for task in $TASKS; do
  echo "[$(date -u +%FT%TZ)] C3 matched compute: $task, seeds $SEEDS"
  start=$(date +%s)
  snakemake --cores "$CORES" --rerun-incomplete --keep-going \
    --configfile config/mini.yaml config/mini_matched.yaml \
    --config model_path="$SHARED/models/all-MiniLM-L6-v2" data_dir="$SHARED/data" \
      "seeds=$SEEDS" "tasks=[$task]" "evaluate={tasks: [$task]}" "rank_study={enabled: false, tasks: [$task]}"
  echo "[$(date -u +%FT%TZ)] $task done in $(( $(date +%s) - start )) s"
  python benchmarks/c3_matched_compute.py collect --task "$task" --wall-s "$(( $(date +%s) - start ))" \
    || { echo "c3_matched_compute: collect of $task failed (rerun: python benchmarks/c3_matched_compute.py collect --task $task)" >&2; failed=1; }
done
exit "$failed"
