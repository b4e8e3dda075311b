#!/usr/bin/env bash
# The gpu-scale fidelity suite and the CUDA train-speed table, as ONE command on one H200.
#
# Prepare once here (the 136 MB subset is too big to carry; this keeps 15,000 / 3,000 images, 49 MiB, in the
# ignored runs/ folder):
#   python benchmarks/fidelity.py prepare-data --data ../shared/data/cifar10_subset.npz --out runs/data/fidelity_gpu.npz
# Then, with the device tool:
#   run(command="bash benchmarks/fidelity_gpu.sh", carry=["runs/data"], timeout_s=600)
# Results come back under $OUT (results.md, results.json, the figure, log.txt, train_speed.json).
set -uo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-runs/data/fidelity_gpu.npz}
DEST=${OUT:-runs/gpu-out}
mkdir -p "$DEST"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
PY=${PY:-python3}
nvidia-smi -L || true
# 1. loader speed on CUDA (about a minute): per-sample DataLoader vs device-resident, fp32 / bf16 / channels_last
timeout 150 $PY benchmarks/train_speed.py --devices cuda --steps 40 --warmup 10 --repeats 3 --workers 4 \
    --bf16 --channels-last --json "$DEST/train_speed.json" 2>&1 | tee "$DEST/train_speed.txt"
# 2. all five experiments, students as 12 parallel processes (expected about 6 minutes, see docs/results.md)
timeout 420 $PY benchmarks/fidelity.py all --scale gpu --data "$DATA" --jobs 12 --threads 1 --out "$DEST" 2>&1 \
    | tee "$DEST/log.txt"
rm -f "$DEST/teacher.pt"  # 9 MB the results do not need
