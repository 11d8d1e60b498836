#!/usr/bin/env bash
# The CUDA checks, for a machine with a GPU (run from the repository root; results in $OUT):
#   1. the float64 golden and neuron tests on CUDA (tests/test_golden.py runs on every device), and
#      the Triton neuron kernels against the PyTorch loop (tests/test_fused.py),
#   2. bench.py on CUDA (SNN vs the equivalent ANN work), with the Triton kernels and without,
#   3. one CIFAR10 training epoch through torchrun + NCCL (+ SyncBatchNorm, DDP) on a synthetic
#      data set in the real CIFAR10 format (50 000 / 10 000 images), then a short adversarial test.
# Needs torch, torchvision, pyyaml, tqdm, tensorboard, pytest (no downloads).
set -uo pipefail
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
status=0

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
$PY -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/gpu.txt"

echo "== golden tests on CUDA"
$PY -m pytest -q -p no:cacheprovider tests/test_golden.py tests/test_neuron.py tests/test_fused.py \
  tests/test_speed_paths.py 2>&1 | tail -5 | tee "$OUT/golden.txt" || status=1

echo "== bench"
$PY scripts/bench.py --device cuda --batch 64,64 --json "$OUT/bench.json" 2>&1 | tee "$OUT/bench.txt" || status=1
echo "== bench without the Triton kernels"
HOSNN_NO_TRITON=1 $PY scripts/bench.py --device cuda --batch 64,64 --no-memory --json "$OUT/bench_plain.json" \
  2>&1 | tee "$OUT/bench_plain.txt" || status=1

echo "== one CIFAR10 epoch (torchrun, NCCL)"
DATA=/tmp/cifar10-synthetic
$PY -c "import sys; sys.path.insert(0, 'tests'); from fixtures import write_cifar10; write_cifar10('$DATA', 50000, 10000)"
rm -rf /tmp/c10run
torchrun --standalone --nproc_per_node=1 main.py -d 1 --device cuda --workers 8 --out /tmp/c10run \
  --set Network.data_path=$DATA --set Network.epochs=1 --set DEFAULT.test_samples=2000 \
  2>&1 | grep -v 'it/s' | tee "$OUT/cifar10_epoch.txt" || status=1
cp /tmp/c10run/results.json "$OUT/cifar10_epoch.json" 2>/dev/null || status=1
exit $status
