#!/usr/bin/env bash
# Packs what a GPU machine without internet needs to run benchmarks/gpu/device_run.sh into .gpu/
# (git-ignored; about 62 MiB): the shared MiniLM with fp16 weights on disk (lpaf loads every
# checkpoint as fp32), the GLUE files the studies read (SST-2, its training set gzipped: the
# movement masks are learned over all of it; CoLA, MRPC), and wheels of the Python packages the GPU image lacks (datasets, evaluate and their
# helpers, and transformers / huggingface_hub at the versions this repository is tested with).
#
#   benchmarks/gpu/pack_device_assets.sh          # then: run `bash benchmarks/gpu/device_run.sh` there, carrying .gpu
set -euo pipefail
cd "$(dirname "$0")/../.."
SHARED=${LPAF_SHARED:-../shared}
PY=${PYTHON:-python3}
grep -qx "/.gpu/" .git/info/exclude 2>/dev/null || echo "/.gpu/" >> .git/info/exclude
rm -rf .gpu && mkdir -p .gpu/whl .gpu/data/glue
cp -r "$SHARED/models/all-MiniLM-L6-v2" .gpu/minilm && rm -f .gpu/minilm/README.md
$PY - <<'PY'
from safetensors.torch import load_file, save_file
p = ".gpu/minilm/model.safetensors"
sd = load_file(p)
save_file({k: (v.half() if v.is_floating_point() else v) for k, v in sd.items()}, p, metadata={"format": "pt"})
PY
cp -r "$SHARED/data/glue/CoLA" "$SHARED/data/glue/MRPC" .gpu/data/glue/
rm -rf .gpu/data/glue/CoLA/cola_public_1.0/tokenized .gpu/data/glue/MRPC/{test.tsv,msr_paraphrase_test.txt,msr_paraphrase_train.txt,*.htm}
mkdir -p .gpu/data/glue/SST-2 && cp "$SHARED/data/glue/SST-2/dev.tsv" .gpu/data/glue/SST-2/
gzip -9 -c "$SHARED/data/glue/SST-2/train.tsv" > .gpu/data/glue/SST-2/train.tsv.gz   # device_run.sh unpacks it
versions=$($PY -m pip freeze | grep -iE "^(datasets|dill|multiprocess|evaluate|httpx2|httpcore2|transformers|huggingface.hub)==")
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .gpu/whl $versions
du -sh .gpu
