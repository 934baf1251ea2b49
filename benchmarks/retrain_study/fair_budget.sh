#!/usr/bin/env bash
# Fair re-training budgets (issue 14, point 3): plain vs mixed-rank re-training of the same
# factorization, at equal steps (`mixed-e1`, the comparison of sessions 2-4) and at an equal factor
# learning-rate integral (`mixed-matched-*`, `--factor-budget matched`, the default), after 1 and 3
# epochs, with paired seeds, from LEARNED movement masks (Sanh et al.'s setting: magnitude prior
# 0.1, a long schedule; the prune metrics record the overlap with the magnitude mask).
#
#   benchmarks/retrain_study/fair_budget.sh                       # CPU: many hours
#   DEVICE=cuda JOBS=6 benchmarks/retrain_study/fair_budget.sh    # one GPU: minutes
#
# Chain per task (SST-2, CoLA; length 64): teacher on the first 20,000 training examples (SST-2 1 epoch;
# CoLA, 8,551 sentences, 3 epochs)
# -> learned movement pruning for PRUNE_STEPS steps on the same examples at each density ->
# sparsity-aware SVD (mask weights, lambda 0.5, as config/mini.yaml) -> `study.py` re-trains the
# factorization on the first 4,000 training examples per (variant, seed) and writes
# results_fair-<task>-mov-d<density>.json beside this script. Rerunning continues (finished
# artifacts are kept). Summaries: python benchmarks/retrain_study/study.py --table
set -euo pipefail
cd "$(dirname "$0")/../.."
SHARED=${LPAF_SHARED:-../shared}
MODEL=${MODEL:-$SHARED/models/all-MiniLM-L6-v2}
DATA=${DATA:-$SHARED/data}
DEVICE=${DEVICE:-cpu}
WORK=${WORK:-/tmp/lpaf_fair}
JOBS=${JOBS:-1}                      # re-training runs at once per (task, density)
PRUNE_STEPS=${PRUNE_STEPS:-3000}
TASKS=${TASKS:-"sst2 cola"}
DENSITIES=${DENSITIES:-"0.25 0.1"}
SEEDS_E1=${SEEDS_E1:-"1 2 3 4 5"}
SEEDS_E3=${SEEDS_E3:-"1 2 3"}
MAX_TRAIN_SAMPLES=${MAX_TRAIN_SAMPLES:-4000}   # re-training subset (study.py)
TEACHER_SAMPLES=${TEACHER_SAMPLES:-20000}      # teacher and pruning: the first 20,000 (CoLA has 8,551)
PY=${PYTHON:-python3}
mkdir -p "$WORK"

subset=()
[[ -n "$TEACHER_SAMPLES" ]] && subset=(--max-train-samples "$TEACHER_SAMPLES")

teacher_epochs() { [[ $1 == sst2 ]] && echo 1 || echo 3; }

for task in $TASKS; do
  t=$WORK/$task/teacher
  if [[ ! -f $t/metrics.json ]]; then
    echo "[$(date -u +%T)] teacher $task"
    $PY -m lpaf.cli finetune --model "$MODEL" --task "$task" --data "$DATA" --max-length 64 \
      --epochs "$(teacher_epochs "$task")" --seed 42 --device "$DEVICE" "${subset[@]}" \
      --logging-steps 100 --save-steps 100000 --out "$t" > "$WORK/$task-teacher.log" 2>&1 &
  fi
done
wait
for task in $TASKS; do
  [[ -f $WORK/$task/teacher/metrics.json ]] || { echo "teacher $task failed: $WORK/$task-teacher.log" >&2; exit 1; }
done

for task in $TASKS; do
  for d in $DENSITIES; do
    out=$WORK/$task/movement-d$d
    if [[ ! -f $out/metrics.json ]]; then
      echo "[$(date -u +%T)] prune $task d$d ($PRUNE_STEPS steps)"
      $PY -m lpaf.cli prune --model "$WORK/$task/teacher" --task "$task" --data "$DATA" --max-length 64 \
        --method movement --score-init magnitude --score-init-scale 0.1 --max-steps "$PRUNE_STEPS" \
        --batch-size 32 --lr 3e-5 --density "$d" --seed 42 --device "$DEVICE" "${subset[@]}" \
        --logging-steps 100 --save-steps 100000 --out "$out" > "$WORK/$task-prune-d$d.log" 2>&1 &
    fi
  done
done
wait

for task in $TASKS; do
  for d in $DENSITIES; do
    [[ -f $WORK/$task/movement-d$d/metrics.json ]] || { echo "prune $task d$d failed" >&2; exit 1; }
    (
      common=(--tag "fair-$task-mov-d$d" --task "$task" --teacher "$WORK/$task/teacher" --data "$DATA"
              --pruned "$WORK/$task/movement-d$d" --density "$d" --factorizer sparsity-aware --pruned-weight 0.5
              --max-train-samples "$MAX_TRAIN_SAMPLES" --work "$WORK/studies" --device "$DEVICE" --jobs "$JOBS")
      $PY benchmarks/retrain_study/study.py "${common[@]}" --variants plain-e1 mixed-matched-e1 mixed-e1 \
        --seeds $SEEDS_E1
      $PY benchmarks/retrain_study/study.py "${common[@]}" --variants plain-e3 mixed-matched-e3 --seeds $SEEDS_E3
    ) > "$WORK/study-$task-d$d.log" 2>&1 &
  done
done
wait
echo "[$(date -u +%T)] done"
$PY benchmarks/retrain_study/study.py --table
