#!/usr/bin/env bash
# One command for a GPU machine that already has torch, nvcc, cmake and ninja (no network):
# builds torchqat against that machine's torch with the CUDA kernels, runs every CUDA test (the
# `cuda`-marked tests: the CPU tests parametrised by device, and tests/test_int8_cuda.py with
# both GEMM paths), the GPU benchmarks, the C++ example program on the GPU (CMake build of
# libtorchqat with CUDA), and then the rest of the pytest suite. Everything it prints is also
# written to the output folder, one log per step (at most 8 files). Where the host CPU has
# AVX-512 VNNI, it also benchmarks the INT8 Linear kernels there.
#
#   bash scripts/gpu_check.sh [output-folder]      (default: out/gpu_check, or $OUT if set)
#
# GPU_CHECK_BUDGET (seconds, default 3600) bounds the whole run: each step gets what is left,
# so a lent machine with little time still returns every log it got to. The order puts what
# only a GPU can check first. On a 15-minute device budget: GPU_CHECK_BUDGET=540
# GPU_BENCH_MIN_TIME=0.3 and a 580 s call limit. Session 10 on an H100 (16 cores): build 52 s,
# the CUDA tests 76 s, the GPU benchmarks 16 s, the C++ example 69 s; the rest of the suite
# (CPU tests, which CI runs anyway) got ~90 % through in the remaining 316 s.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-out/gpu_check}}"
mkdir -p "$out"
py="${PYTHON:-python3}"
status=0
deadline=$(( $(date +%s) + ${GPU_CHECK_BUDGET:-3600} ))

step() {  # step NAME MAX_SECONDS COMMAND...: runs one step under a timeout, logs it
  local name=$1 max=$2; shift 2
  local left=$(( deadline - $(date +%s) ))
  (( left < max )) && max=$left
  if (( max < 10 )); then
    echo "=== $name: not run (budget spent)" | tee -a "$out/summary.txt"; status=1; return
  fi
  local t0=$(date +%s)
  echo "=== $name (<= ${max}s): $*" | tee -a "$out/summary.txt"
  timeout -k 10 "$max" "$@" >"$out/$name.log" 2>&1
  local rc=$?
  if (( rc == 0 )); then
    echo "=== $name: ok in $(( $(date +%s) - t0 ))s" | tee -a "$out/summary.txt"
  else
    echo "=== $name: FAILED (exit $rc$( (( rc == 124 || rc == 137 )) && echo ', timed out')) in $(( $(date +%s) - t0 ))s, last lines:" | tee -a "$out/summary.txt"
    # The tests that failed by name (pytest runs with -v, so a step cut off by its time limit
    # still names them), then the log's end.
    grep -E "(^| )(FAILED|ERROR)( |$)" "$out/$name.log" | head -n 30 | tee -a "$out/summary.txt"
    tail -n 40 "$out/$name.log" | tee -a "$out/summary.txt"
    status=1
  fi
}

{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
  "$py" -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)'
  nvcc --version | tail -n 1
  echo "cpus $(nproc)"
} 2>&1 | tee "$out/summary.txt"

# The system's gcc/g++ where there is one: one GPU image sets CC/CXX to a GCC wrapper (/opt/gcc)
# that links libstdc++ statically into the extension, whose operators then crashed on their first
# error message; setup.py now refuses such a build (python/torchqat/_linkcheck.py).
# GPU_CHECK_KEEP_CC=1 keeps the environment's compiler.
# nvcc's host compiler follows (CUDAHOSTCXX, for the CMake build of the C++ example): CMake links
# the CUDA host compiler's default libraries into libtorchqat, so the image's wrapper as nvcc's
# host compiler brought its static libstdc++ back in.
echo "environment: CC=${CC:-} CXX=${CXX:-} CUDAHOSTCXX=${CUDAHOSTCXX:-} NVCC_CCBIN=${NVCC_CCBIN:-}" \
  "NVCC_PREPEND_FLAGS=${NVCC_PREPEND_FLAGS:-} LDFLAGS=${LDFLAGS:-} g++ on PATH: $(command -v g++)" \
  | tee -a "$out/summary.txt"
if [ -z "${GPU_CHECK_KEEP_CC:-}" ] && [ -x /usr/bin/gcc ] && [ -x /usr/bin/g++ ]; then
  export CC=/usr/bin/gcc CXX=/usr/bin/g++ LDSHARED="/usr/bin/g++ -shared" CUDAHOSTCXX=/usr/bin/g++
  unset NVCC_CCBIN
fi
echo "compiler: ${CXX:-default} ($(${CXX:-g++} --version 2>/dev/null | head -n 1))" | tee -a "$out/summary.txt"

arch=$("$py" -c 'import torch; c = torch.cuda.get_device_capability(0); print(f"{c[0]}.{c[1]}")' 2>/dev/null || echo "8.0;9.0")
jobs="${MAX_JOBS:-$(nproc)}"
export TORCH_CUDA_ARCH_LIST="$arch" TORCHQAT_WITH_CUDA=1 MAX_JOBS="$jobs"
step build 600 "$py" setup.py -q build_ext --inplace --build-temp build/gpu
export PYTHONPATH="$PWD/python${PYTHONPATH:+:$PYTHONPATH}"

# pytest-xdist spreads the tests over the CPU cores when it is installed (one CUDA context each).
xdist=()
if "$py" -c 'import xdist' 2>/dev/null; then
  xdist=(-n "$(( jobs < 8 ? jobs : 8 ))")
fi
# Not -x: one GPU run should report every failure it can (the device time is scarce).
step pytest_cuda 900 "$py" -m pytest -v -m cuda -rs --maxfail=60 --durations=10 "${xdist[@]}"
step bench_gpu 600 "$py" benchmarks/bench_gpu.py --min-time "${GPU_BENCH_MIN_TIME:-1.0}" --profile
# The C++ deployment path on the GPU: libtorchqat built by CMake with the CUDA kernels, the
# example program runs the INT8 TorchScript model on the GPU, output equal to Python's there.
# (nvcc's host compiler: CUDAHOSTCXX where set above or by the environment, else CMakeLists.txt
# makes it the C++ compiler.)
step cpp_example_cuda 600 "$py" examples/cpp/check.py --device cuda --cmake-build build/gpu-cmake \
  --work build/gpu-cpp-example --jobs "$jobs" --threads 4 \
  --cmake-arg="-DCMAKE_CUDA_ARCHITECTURES=${arch//./}"
step pytest_rest 1800 "$py" -m pytest -v -m "not cuda" --maxfail=60 --durations=10 "${xdist[@]}"
# The host CPU's INT8 GEMM kernels: where it has AVX-512 VNNI (the build machine has AVX2 only),
# pytest_rest ran the avx512_vnni kernel's tests, and its speed is measured here.
cpu_kernels=$("$py" -c 'import torch, torchqat; print(" ".join(torch.ops.torchqat.int8_linear_kernels()))' 2>&1)
echo "cpu int8 kernels: $cpu_kernels" | tee -a "$out/summary.txt"
if [[ " $cpu_kernels " == *" avx512_vnni "* ]]; then
  step bench_int8_linear_vnni 300 "$py" benchmarks/bench_int8_linear.py --threads 1 --min-time 0.2
fi
echo "=== gpu_check: $([ $status -eq 0 ] && echo all steps passed || echo some steps FAILED)" | tee -a "$out/summary.txt"
exit $status
