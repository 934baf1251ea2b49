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
# Chain per task (SST-2, CoLA; length 64), the schedule study's recipe (benchmarks/prune_study):
# teacher on the first 20,000 training examples (lr 3e-5; SST-2 1 epoch; CoLA, 8,551 sentences,
# 3 epochs) -> learned movement pruning for PRUNE_STEPS steps over the whole training set at each
# density -> per (task, density) `study.py` re-trains, on the first 4,000 training examples, per
# (variant, seed), in this order (a timeout keeps every finished run):
#   results_fair-<task>-mov-d<d>.json          sparsity-aware SVD (mask weights, lambda 0.5, as
#                                              config/mini.yaml): plain-e1 / mixed-matched-e1 / mixed-e1
#   results_fair-<task>-mov-d<d>-fisher.json   lpaf + fisher (fisher-sparsity-aware): mixed-matched-e1
#   results_fair-<task>-mov-d<d>-svd.json      lpaf - sa-svd (SVD of the pruned model): mixed-matched-e1
#   then plain-e3 / mixed-matched-e3 (sparsity-aware), mixed-matched-e3 (SVD of the pruned model), and
#   results_fair-<task>-dense-{svd,fwsvd}-d<d>.json   the dense baselines of C3: plain-e1 / plain-e3
# Rerunning continues (finished artifacts are kept). Summaries: python benchmarks/retrain_study/study.py --table
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
TEACHER_SAMPLES=${TEACHER_SAMPLES:-20000}      # the teacher sees the first 20,000 (CoLA has 8,551)
EXTRA=${EXTRA:-1}                              # 0: only the sparsity-aware factorization's variants
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
      --epochs "$(teacher_epochs "$task")" --batch-size 32 --lr 3e-5 --seed 42 --device "$DEVICE" "${subset[@]}" \
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
        --batch-size 32 --lr 3e-5 --density "$d" --seed 42 --device "$DEVICE" \
        --logging-steps 100 --save-steps 100000 --out "$out" > "$WORK/$task-prune-d$d.log" 2>&1 &
    fi
  done
done
wait

for task in $TASKS; do
  for d in $DENSITIES; do
    [[ -f $WORK/$task/movement-d$d/metrics.json ]] || { echo "prune $task d$d failed" >&2; exit 1; }
    (
      # in order of priority (a timeout keeps every finished run): the fair-budget comparison itself,
      # then lpaf + fisher and lpaf - sa-svd at the fair budget, then 3 epochs, then the dense baselines
      base=(--task "$task" --teacher "$WORK/$task/teacher" --data "$DATA" --density "$d"
            --max-train-samples "$MAX_TRAIN_SAMPLES" --work "$WORK/studies" --device "$DEVICE" --jobs "$JOBS")
      pruned=(--pruned "$WORK/$task/movement-d$d")
      sa=(--tag "fair-$task-mov-d$d" "${base[@]}" "${pruned[@]}" --factorizer sparsity-aware --pruned-weight 0.5)
      fisher=(--tag "fair-$task-mov-d$d-fisher" "${base[@]}" "${pruned[@]}" --factorizer fisher-sparsity-aware
              --pruned-weight 0.5)
      svd=(--tag "fair-$task-mov-d$d-svd" "${base[@]}" "${pruned[@]}" --factorizer svd)
      dense_svd=(--tag "fair-$task-dense-svd-d$d" "${base[@]}" --pruned "$WORK/$task/teacher" --factorizer svd)
      dense_fwsvd=(--tag "fair-$task-dense-fwsvd-d$d" "${base[@]}" --pruned "$WORK/$task/teacher" --factorizer fwsvd)
      study() { $PY benchmarks/retrain_study/study.py "$@"; }
      study "${sa[@]}" --variants plain-e1 mixed-matched-e1 mixed-e1 --seeds $SEEDS_E1
      if [[ $EXTRA == 1 ]]; then
        study "${fisher[@]}" --variants mixed-matched-e1 --seeds $SEEDS_E3
        study "${svd[@]}" --variants mixed-matched-e1 --seeds $SEEDS_E3
      fi
      study "${sa[@]}" --variants plain-e3 mixed-matched-e3 --seeds $SEEDS_E3
      if [[ $EXTRA == 1 ]]; then
        study "${svd[@]}" --variants mixed-matched-e3 --seeds $SEEDS_E3
        study "${dense_svd[@]}" --variants plain-e1 plain-e3 --seeds $SEEDS_E3
        study "${dense_fwsvd[@]}" --variants plain-e1 plain-e3 --seeds $SEEDS_E3
      fi
    ) > "$WORK/study-$task-d$d.log" 2>&1 &
  done
done
wait
echo "[$(date -u +%T)] done"
$PY benchmarks/retrain_study/study.py --table
