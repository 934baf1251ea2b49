#!/usr/bin/env bash
# On a lent GPU machine (no internet; the working tree with .gpu/ from pack_device_assets.sh):
# the fair-budget study (benchmarks/retrain_study/fair_budget.sh) on the GPU, and beside it a
# BERT-base-shaped calibration for `lpaf plan` (MRPC at 128 tokens, bf16, batch 32). Writes the
# study's results_fair-*.json, the calibration JSON and a log archive to $OUT (default ./device_out).
cd "$(dirname "$0")/../.."
OUT=${OUT:-device_out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl || exit 3
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
gunzip -kf .gpu/data/glue/SST-2/train.tsv.gz || exit 3
nvidia-smi -L; nproc
python3 -c "import torch, transformers, datasets, evaluate, lpaf; print(torch.__version__, transformers.__version__, datasets.__version__, torch.cuda.get_device_name())" || exit 4
( python3 benchmarks/gpu/random_bert_base.py --tokenizer .gpu/minilm --out /tmp/bert-base \
  && timeout 300 python3 -m lpaf.cli calibrate --model /tmp/bert-base --task mrpc --data .gpu/data --max-length 128 \
     --device cuda --precision bf16 --threads 8 --steps 12 --prune-methods movement magnitude platon \
     --label "measured: BERT-base shapes (random weights), MRPC at 128, bf16, batch 32, one GPU, beside the fair-budget study's jobs" \
     --out "$OUT/calib_bert_base_mrpc128.json" ) > /tmp/calib.log 2>&1 &
DEVICE=cuda JOBS=${JOBS:-5} WORK=/tmp/fair MODEL=.gpu/minilm DATA=.gpu/data timeout "${STUDY_TIMEOUT_S:-470}" \
  benchmarks/retrain_study/fair_budget.sh > /tmp/fair.log 2>&1
echo "fair rc=$?"
wait
cp benchmarks/retrain_study/results_fair-*.json "$OUT/" 2>/dev/null
tar czf "$OUT/logs.tgz" /tmp/calib.log /tmp/fair.log /tmp/fair/*.log /tmp/fair/*/*/metrics.json /tmp/fair/studies/*/*.log 2>/dev/null
tail -n 30 /tmp/fair.log; tail -n 5 /tmp/calib.log; ls "$OUT"
