#!/usr/bin/env bash
# One command for a GPU machine that already has torch, nvcc, cmake and ninja (no network):
# builds torchqat against that machine's torch with the CUDA kernels, runs the whole pytest
# suite (the CUDA parametrisations switch on when a GPU is visible) and the C++ tests, and runs
# the GPU benchmarks. Everything it prints is also written to the output folder.
#
#   bash scripts/gpu_check.sh [output-folder]      (default: out/gpu_check, or $OUT if set)
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-out/gpu_check}}"
mkdir -p "$out"
py="${PYTHON:-python3}"
status=0

step() {  # step NAME COMMAND...: runs one step, logs it, remembers a failure
  local name=$1; shift
  echo "=== $name: $*" | tee -a "$out/summary.txt"
  if "$@" >"$out/$name.log" 2>&1; then
    echo "=== $name: ok" | tee -a "$out/summary.txt"
  else
    echo "=== $name: FAILED (exit $?), last lines:" | tee -a "$out/summary.txt"
    tail -n 40 "$out/$name.log" | tee -a "$out/summary.txt"
    status=1
  fi
}

{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
  "$py" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)'
  nvcc --version | tail -n 1
} 2>&1 | tee "$out/summary.txt"

arch=$("$py" -c 'import torch; c = torch.cuda.get_device_capability(0); print(f"{c[0]}.{c[1]}")' 2>/dev/null || echo "8.0;9.0")
export TORCH_CUDA_ARCH_LIST="$arch" TORCHQAT_WITH_CUDA=1 MAX_JOBS="${MAX_JOBS:-16}"
step build "$py" setup.py -q build_ext --inplace --build-temp build/gpu
export PYTHONPATH="$PWD/python${PYTHONPATH:+:$PYTHONPATH}"
# Not -x: one GPU run should report every failure it can (the device time is scarce).
step pytest "$py" -m pytest -q --maxfail=30 --durations=15
# The CUDA INT8 operators against the CPU ones, both GEMM paths, in their own log.
step pytest_int8_cuda "$py" -m pytest -q -rs tests/test_int8_cuda.py
for bench in benchmarks/bench_gpu.py benchmarks/bench_fake_quant.py; do
  [ -f "$bench" ] && step "$(basename "$bench" .py)" "$py" "$bench"
done
echo "=== gpu_check: $([ $status -eq 0 ] && echo all steps passed || echo some steps FAILED)" | tee -a "$out/summary.txt"
exit $status
