// The CUDA INT8 GEMM and the kernels around it: activation quantizer parameters, quantizing or
// converting activations into the GEMM's int8 operand, the GEMM (cuBLASLt, or our dp4a kernel
// where cuBLASLt declines the shape), and the float epilogue. Interfaces: int8_gemm.h.
// Numerics: csrc/core/quantize.h, the functions the CPU kernels call; built with --fmad=false,
// so the epilogue's fmaf calls are its only fused operations, as on the CPU.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Dispatch_v2.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/macros/Macros.h>
#include <cublasLt.h>

#include <algorithm>
#include <array>
#include <cfloat>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <sstream>
#include <tuple>

#include "core/quantize.h"
#include "ops/cuda/int8_gemm.h"

namespace torchqat {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 65535;  // grid-stride loops cover the rest

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

unsigned blocks_for(int64_t work) {
  return static_cast<unsigned>(std::max<int64_t>(1, std::min(ceil_div(work, kThreads), kMaxBlocks)));
}

using cpu::check_activation_qparam_tensors;

__device__ const char* op_name(Int8Op op) {
  return op == Int8Op::kInt8Linear ? "int8_linear" : "int8_conv2d";
}

// ---------------------------------------------------------------------------------------------
// Activation quantizer parameters.

__device__ __noinline__ void report_bad_activation_qparams(Int8Op op, int which, double v,
                                                           double quant_min, double quant_max) {
  switch (which) {
    case 0:
      printf("%s: input_scale must be positive and finite, got %g\n", op_name(op), v);
      break;
    case 1:
      printf("%s: input_scale must be at least %g (the smallest normal float32 number, so that "
             "1/scale is finite), got %g\n",
             op_name(op), static_cast<double>(FLT_MIN), v);
      break;
    case 2:
      printf("%s: input_zero_point must be finite, got %g\n", op_name(op), v);
      break;
    default:
      printf("%s: input_zero_point must lie in [quant_min, quant_max] = [%lld, %lld], got %lld\n",
             op_name(op), static_cast<long long>(quant_min), static_cast<long long>(quant_max),
             static_cast<long long>(v));
      break;
  }
  CUDA_KERNEL_ASSERT(false && "invalid activation quantization parameter");
}

// One thread: out = {float(s), 1/float(s), float(effective_zero_point(z))}, as the CPU wrapper
// forms them (activation_qparams in csrc/ops/cpu/int8_linear.cpp).
template <typename S, typename Z>
__global__ void activation_qparams_kernel(Int8Op op, const S* scale, const Z* zero_point,
                                          bool zero_point_integral, double quant_min,
                                          double quant_max, float* out) {
  if (blockIdx.x != 0 || threadIdx.x != 0) return;
  const double s = static_cast<double>(*scale);
  const double z = static_cast<double>(*zero_point);
  if (!(isfinite(s) && s > 0.0)) report_bad_activation_qparams(op, 0, s, quant_min, quant_max);
  if (static_cast<float>(s) < FLT_MIN) {
    report_bad_activation_qparams(op, 1, s, quant_min, quant_max);
  }
  if (!isfinite(z)) report_bad_activation_qparams(op, 2, z, quant_min, quant_max);
  if (zero_point_integral && (z < quant_min || z > quant_max)) {
    report_bad_activation_qparams(op, 3, z, quant_min, quant_max);
  }
  const float sf = static_cast<float>(s);
  out[0] = sf;
  out[1] = core::inverse_scale(sf);
  out[2] = static_cast<float>(core::effective_zero_point<double>(z, quant_min, quant_max));
}

// ---------------------------------------------------------------------------------------------
// Operand preparation: 4 bytes (one 32-bit word of A) per thread.

// a = quantize_value(x) + a_shift for row < M and k < K, else 0.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    quantize_rows_kernel(const scalar_t* __restrict__ x, int64_t M, int64_t K, int64_t Kp,
                         int64_t words, const float* __restrict__ qparams, float qmin,
                         float qmax, int32_t a_shift, uint32_t* __restrict__ a) {
  const float inv_s = qparams[1];
  const float z = qparams[2];
  const int64_t words_per_row = Kp / 4;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t w = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; w < words;
       w += step) {
    const int64_t row = w / words_per_row;
    const int64_t k0 = (w - row * words_per_row) * 4;
    uint32_t word = 0;
    if (row < M) {
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int64_t k = k0 + j;
        if (k < K) {
          const float q = core::quantize_value<float>(static_cast<float>(x[row * K + k]), inv_s,
                                                      z, qmin, qmax);
          const int32_t v = static_cast<int32_t>(q) + a_shift;
          word |= (static_cast<uint32_t>(v) & 0xffu) << (8 * j);
        }
      }
    }
    a[w] = word;
  }
}

// a = x - 128 (uint8, is_unsigned) or x (int8) for row < M and k < K, else 0.
__global__ void __launch_bounds__(kThreads)
    convert_rows_kernel(const uint8_t* __restrict__ x, int64_t M, int64_t K, int64_t Kp,
                        int64_t words, bool is_unsigned, uint32_t* __restrict__ a) {
  const int64_t words_per_row = Kp / 4;
  const uint32_t flip = is_unsigned ? 0x80u : 0u;  // x - 128 == x ^ 0x80 in two's complement
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t w = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; w < words;
       w += step) {
    const int64_t row = w / words_per_row;
    const int64_t k0 = (w - row * words_per_row) * 4;
    uint32_t word = 0;
    if (row < M) {
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int64_t k = k0 + j;
        if (k < K) word |= ((static_cast<uint32_t>(x[row * K + k]) ^ flip) & 0xffu) << (8 * j);
      }
    }
    a[w] = word;
  }
}

// ---------------------------------------------------------------------------------------------
// Our GEMM: c[m][n] = sum_k a[m][k] * w[n][k] with __dp4a (4 int8 products added into an int32
// per instruction; exact). A 64 x 64 tile of C per block of 16 x 16 threads, 4 x 4 outputs per
// thread, K in slices of 32 bytes staged in shared memory. The path for shapes cuBLASLt
// declines; correctness first, a plain tiling.

constexpr int kTileM = 64;
constexpr int kTileN = 64;
constexpr int kSliceWords = 8;  // 32 bytes of K per slice

__global__ void __launch_bounds__(256)
    gemm_dp4a_kernel(const int32_t* __restrict__ a, const int32_t* __restrict__ w, int32_t* c,
                     int64_t Mp, int64_t Np, int64_t Kw) {
  __shared__ int32_t as[kSliceWords][kTileM + 1];
  __shared__ int32_t ws[kSliceWords][kTileN + 1];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int tid = ty * 16 + tx;
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * kTileM;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * kTileN;
  int32_t acc[4][4] = {};
  for (int64_t k0 = 0; k0 < Kw; k0 += kSliceWords) {
    for (int i = tid; i < kTileM * kSliceWords; i += 256) {
      const int r = i / kSliceWords, kk = i % kSliceWords;
      const int64_t row = m0 + r, col = n0 + r, k = k0 + kk;
      as[kk][r] = (row < Mp && k < Kw) ? a[row * Kw + k] : 0;
      ws[kk][r] = (col < Np && k < Kw) ? w[col * Kw + k] : 0;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kSliceWords; ++kk) {
      int32_t av[4], wv[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        av[i] = as[kk][ty + 16 * i];
        wv[i] = ws[kk][tx + 16 * i];
      }
#pragma unroll
      for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = __dp4a(av[i], wv[j], acc[i][j]);
      }
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t row = m0 + ty + 16 * i;
    if (row >= Mp) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t col = n0 + tx + 16 * j;
      if (col < Np) c[row * Np + col] = acc[i][j];
    }
  }
}

void gemm_dp4a(const at::Tensor& a, const at::Tensor& w, at::Tensor& c) {
  const int64_t Mp = a.size(0), Kp = a.size(1), Np = w.size(0);
  const dim3 block(16, 16);
  const int64_t gx = ceil_div(Np, kTileN), gy = ceil_div(Mp, kTileM);
  TORCH_CHECK(gy <= 65535, "int8 GEMM (CUDA): too many rows for the dp4a kernel: ", Mp);
  gemm_dp4a_kernel<<<dim3(static_cast<unsigned>(gx), static_cast<unsigned>(gy)), block, 0,
                     at::cuda::getCurrentCUDAStream()>>>(
      reinterpret_cast<const int32_t*>(a.const_data_ptr<int8_t>()),
      reinterpret_cast<const int32_t*>(w.const_data_ptr<int8_t>()),
      c.mutable_data_ptr<int32_t>(), Mp, Np, Kp / 4);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// ---------------------------------------------------------------------------------------------
// cuBLASLt. Row-major C [Mp, Np] = A [Mp, Kp] W^T is column-major C^T [Np, Mp] = W A^T: cuBLASLt's
// "A" is our W, stored column-major as [Kp, Np] (ld Kp) and transposed; its "B" is our A,
// column-major [Kp, Mp] (ld Kp), not transposed. That is the "TN" form cuBLASLt's int8 kernels
// take with the plain column-major order (no COL32 / IMMA-specific layouts), with every leading
// dimension a multiple of 16 bytes.

constexpr size_t kWorkspaceBytes = size_t{4} << 20;

#define TORCHQAT_CUBLASLT_CHECK(expr)                                                        \
  do {                                                                                       \
    const cublasStatus_t status_ = (expr);                                                   \
    TORCH_CHECK(status_ == CUBLAS_STATUS_SUCCESS, "int8 GEMM (CUDA): ", #expr, " failed: ", \
                cublasLtGetStatusName(status_), " (", cublasLtGetStatusString(status_), ")"); \
  } while (0)

// One handle per device, created on first use and kept for the process (destroying handles at
// exit races the CUDA runtime's own teardown). cuBLASLt handles may be shared between threads.
cublasLtHandle_t cublaslt_handle(c10::DeviceIndex device) {
  static std::mutex mutex;
  static std::array<cublasLtHandle_t, 64> handles{};
  TORCH_CHECK(device >= 0 && device < 64, "int8 GEMM (CUDA): device index out of range: ", device);
  const std::lock_guard<std::mutex> lock(mutex);
  if (handles[device] == nullptr) {
    const c10::cuda::CUDAGuard guard(device);
    TORCHQAT_CUBLASLT_CHECK(cublasLtCreate(&handles[device]));
  }
  return handles[device];
}

// The descriptors of one GEMM shape, destroyed with it.
struct LtProblem {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t la = nullptr, lb = nullptr, lc = nullptr;

  LtProblem(int64_t Mp, int64_t Np, int64_t Kp) {
    TORCHQAT_CUBLASLT_CHECK(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32I, CUDA_R_32I));
    const cublasOperation_t transa = CUBLAS_OP_T, transb = CUBLAS_OP_N;
    TORCHQAT_CUBLASLT_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA,
                                                           &transa, sizeof(transa)));
    TORCHQAT_CUBLASLT_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB,
                                                           &transb, sizeof(transb)));
    TORCHQAT_CUBLASLT_CHECK(cublasLtMatrixLayoutCreate(&la, CUDA_R_8I, Kp, Np, Kp));
    TORCHQAT_CUBLASLT_CHECK(cublasLtMatrixLayoutCreate(&lb, CUDA_R_8I, Kp, Mp, Kp));
    TORCHQAT_CUBLASLT_CHECK(cublasLtMatrixLayoutCreate(&lc, CUDA_R_32I, Np, Mp, Np));
  }
  ~LtProblem() {
    if (lc) cublasLtMatrixLayoutDestroy(lc);
    if (lb) cublasLtMatrixLayoutDestroy(lb);
    if (la) cublasLtMatrixLayoutDestroy(la);
    if (desc) cublasLtMatmulDescDestroy(desc);
  }
  LtProblem(const LtProblem&) = delete;
  LtProblem& operator=(const LtProblem&) = delete;
};

// How cuBLASLt runs one shape on one device, found once per (device, Mp, Np, Kp): a heuristic
// query costs tens of microseconds of host time.
//   kAlgo      the heuristic query returned an algorithm (run it with its workspace)
//   kUntried   the query returned none; PyTorch's own int8 GEMM found explicit queries
//              unreliable for int8 and lets cublasLtMatmul choose (algo = nullptr), so the
//              first call tries that
//   kImplicit  that worked
//   kNone      cuBLASLt has no int8 kernel for the shape: our dp4a kernel runs it
enum class LtMode { kAlgo, kUntried, kImplicit, kNone };

struct LtChoice {
  LtMode mode = LtMode::kUntried;
  cublasLtMatmulAlgo_t algo{};
  size_t workspace = 0;
};

using LtKey = std::tuple<int, int64_t, int64_t, int64_t>;

std::mutex& lt_mutex() {
  static std::mutex mutex;
  return mutex;
}

std::map<LtKey, LtChoice>& lt_cache() {
  static std::map<LtKey, LtChoice> cache;
  return cache;
}

void lt_remember(const LtKey& key, const LtChoice& choice) {
  const std::lock_guard<std::mutex> lock(lt_mutex());
  auto& cache = lt_cache();
  if (cache.size() > 4096 && cache.find(key) == cache.end()) cache.clear();  // many batch sizes
  cache[key] = choice;
}

LtChoice lt_choice(const LtKey& key) {
  {
    const std::lock_guard<std::mutex> lock(lt_mutex());
    const auto it = lt_cache().find(key);
    if (it != lt_cache().end()) return it->second;
  }
  const auto [device, Mp, Np, Kp] = key;
  LtChoice choice;
  const LtProblem p(Mp, Np, Kp);
  cublasLtMatmulPreference_t pref = nullptr;
  TORCHQAT_CUBLASLT_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  const uint64_t max_workspace = kWorkspaceBytes;
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                       &max_workspace, sizeof(max_workspace));
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  const cublasStatus_t status = cublasLtMatmulAlgoGetHeuristic(
      cublaslt_handle(static_cast<c10::DeviceIndex>(device)), p.desc, p.la, p.lb, p.lc, p.lc,
      pref, 1, &result, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  if (status == CUBLAS_STATUS_SUCCESS && found > 0 && result.state == CUBLAS_STATUS_SUCCESS) {
    choice.mode = LtMode::kAlgo;
    choice.algo = result.algo;
    choice.workspace = result.workspaceSize;
  }
  lt_remember(key, choice);
  return choice;
}

// Runs c = a @ w^T with cuBLASLt as `choice` says; returns false (computing nothing) when
// cuBLASLt turns out to have no kernel for the shape.
bool gemm_cublaslt(const at::Tensor& a, const at::Tensor& w, at::Tensor& c, const LtKey& key,
                   LtChoice choice) {
  if (choice.mode == LtMode::kNone) return false;
  const int64_t Mp = a.size(0), Kp = a.size(1), Np = w.size(0);
  const c10::DeviceIndex device = a.device().index();
  const LtProblem p(Mp, Np, Kp);
  const int32_t alpha = 1, beta = 0;
  at::Tensor workspace;
  void* ws = nullptr;
  const bool explicit_algo = choice.mode == LtMode::kAlgo;
  if (explicit_algo && choice.workspace > 0) {
    workspace = at::empty({static_cast<int64_t>(choice.workspace)}, a.options().dtype(at::kByte));
    ws = workspace.mutable_data_ptr();
  }
  const cublasStatus_t status = cublasLtMatmul(
      cublaslt_handle(device), p.desc, &alpha, w.const_data_ptr<int8_t>(), p.la,
      a.const_data_ptr<int8_t>(), p.lb, &beta, c.mutable_data_ptr<int32_t>(), p.lc,
      c.mutable_data_ptr<int32_t>(), p.lc, explicit_algo ? &choice.algo : nullptr, ws,
      explicit_algo ? choice.workspace : 0, at::cuda::getCurrentCUDAStream());
  if (choice.mode == LtMode::kUntried) {
    if (status == CUBLAS_STATUS_NOT_SUPPORTED || status == CUBLAS_STATUS_INVALID_VALUE) {
      choice.mode = LtMode::kNone;
      lt_remember(key, choice);
      return false;
    }
    if (status == CUBLAS_STATUS_SUCCESS) {
      choice.mode = LtMode::kImplicit;
      lt_remember(key, choice);
    }
  }
  TORCH_CHECK(status == CUBLAS_STATUS_SUCCESS, "int8 GEMM (CUDA): cublasLtMatmul failed for [",
              Mp, ", ", Kp, "] x [", Np, ", ", Kp, "]^T: ", cublasLtGetStatusName(status), " (",
              cublasLtGetStatusString(status), ")");
  return true;
}

enum class GemmChoice { kAuto, kCublasLt, kDp4a };

GemmChoice gemm_choice_from_environment() {
  const char* v = std::getenv("TORCHQAT_CUDA_INT8_GEMM");
  if (v == nullptr || *v == '\0' || std::strcmp(v, "auto") == 0) return GemmChoice::kAuto;
  if (std::strcmp(v, "cublaslt") == 0) return GemmChoice::kCublasLt;
  if (std::strcmp(v, "dp4a") == 0) return GemmChoice::kDp4a;
  TORCH_CHECK(false, "TORCHQAT_CUDA_INT8_GEMM must be auto, cublaslt or dp4a, got '", v, "'");
  return GemmChoice::kAuto;
}

// ---------------------------------------------------------------------------------------------
// The epilogue: a 2-D grid, threadIdx.x / blockIdx.x over output columns (each thread keeps its
// column's parameters in registers), threadIdx.y / blockIdx.y striding over rows. No division
// per element; 64-bit offsets.

template <Activation kAct, bool kAffine, bool kRaw>
__global__ void __launch_bounds__(kThreads) epilogue_kernel(const EpilogueParams e) {
  const int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n >= e.N) return;
  const int32_t a_zero =
      e.qparams != nullptr ? static_cast<int32_t>(e.qparams[2]) + e.a_shift : e.zero_point;
  // Wrapping arithmetic: the intermediate may leave int32, the exact result never does.
  const uint32_t correction =
      e.col_sums != nullptr
          ? static_cast<uint32_t>(a_zero) * static_cast<uint32_t>(e.col_sums[n])
          : 0u;
  float alpha = 0.0f, bias = 0.0f, mult = 0.0f, shift = 0.0f;
  if constexpr (!kRaw) {
    alpha = e.qparams[0] * e.w_scale[n];  // float(s_x * s_w[n]), as the CPU forms it
    bias = e.bias[n];
    if constexpr (kAffine) {
      mult = e.multiplier[n];
      shift = e.shift[n];
    }
  }
  const int64_t step = static_cast<int64_t>(gridDim.y) * blockDim.y;
  for (int64_t m = static_cast<int64_t>(blockIdx.y) * blockDim.y + threadIdx.y; m < e.M;
       m += step) {
    const int32_t acc =
        static_cast<int32_t>(static_cast<uint32_t>(e.acc[m * e.ld_acc + n]) - correction);
    if constexpr (kRaw) {
      e.out_raw[m * e.ldo + n] = acc;
    } else {
      float t = core::linear_epilogue(acc, alpha, bias);
      if constexpr (kAffine) t = core::fused_multiply_add(t, mult, shift);
      if constexpr (kAct == Activation::kRelu) t = t > 0.0f ? t : 0.0f;
      if constexpr (kAct == Activation::kSilu) t = t / (1.0f + expf(-t));
      e.out[m * e.ldo + n] = t;
    }
  }
}

template <Activation kAct>
void launch_float_epilogue(const EpilogueParams& e, dim3 grid, dim3 block, cudaStream_t stream) {
  if (e.multiplier != nullptr) {
    epilogue_kernel<kAct, true, false><<<grid, block, 0, stream>>>(e);
  } else {
    epilogue_kernel<kAct, false, false><<<grid, block, 0, stream>>>(e);
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Host functions of int8_gemm.h.

at::Tensor activation_qparams_cuda(Int8Op op_id, const at::Tensor& input,
                                   const at::Tensor& scale, const at::Tensor& zero_point,
                                   int64_t quant_min, int64_t quant_max) {
  const char* op = op_id == Int8Op::kInt8Linear ? "int8_linear" : "int8_conv2d";
  check_activation_qparam_tensors(op, input, scale, zero_point);
  // After the device checks: the dispatcher runs the CUDA kernels when any argument is on a GPU,
  // and a CUDAGuard on a CPU input would fail with an internal assertion instead.
  const c10::cuda::CUDAGuard device_guard(input.device());
  at::Tensor out = at::empty({3}, input.options().dtype(at::kFloat));
  const bool integral = at::isIntegralType(zero_point.scalar_type(), /*includeBool=*/false);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(scale.scalar_type(), "activation_qparams_cuda", [&] {
    using S = scalar_t;
    AT_DISPATCH_V2(zero_point.scalar_type(), "activation_qparams_cuda", AT_WRAP([&] {
      activation_qparams_kernel<S, scalar_t><<<1, 32, 0, stream>>>(
          op_id, scale.const_data_ptr<S>(), zero_point.const_data_ptr<scalar_t>(), integral,
          static_cast<double>(quant_min), static_cast<double>(quant_max),
          out.mutable_data_ptr<float>());
    }), AT_EXPAND(AT_ALL_TYPES), AT_EXPAND(AT_BAREBONES_UNSIGNED_TYPES));
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor quantize_rows_cuda(const at::Tensor& x, int64_t M, int64_t K, int64_t Kp,
                              const at::Tensor& qparams, int64_t quant_min, int64_t quant_max) {
  TORCH_INTERNAL_ASSERT(x.is_contiguous() && Kp % 16 == 0 && Kp >= K);
  const int64_t Mp = padded_rows(M);
  at::Tensor a = at::empty({Mp, Kp}, x.options().dtype(at::kChar));
  const int64_t words = Mp * Kp / 4;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "quantize_rows_cuda",
                                  [&] {
    quantize_rows_kernel<scalar_t><<<blocks_for(words), kThreads, 0,
                                     at::cuda::getCurrentCUDAStream()>>>(
        x.const_data_ptr<scalar_t>(), M, K, Kp, words, qparams.const_data_ptr<float>(),
        static_cast<float>(quant_min), static_cast<float>(quant_max),
        activation_shift(quant_min), reinterpret_cast<uint32_t*>(a.mutable_data_ptr<int8_t>()));
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return a;
}

at::Tensor convert_rows_cuda(const at::Tensor& x, int64_t M, int64_t K, int64_t Kp) {
  TORCH_INTERNAL_ASSERT(x.is_contiguous() && Kp % 16 == 0 && Kp >= K);
  TORCH_INTERNAL_ASSERT(x.scalar_type() == at::kByte || x.scalar_type() == at::kChar);
  const int64_t Mp = padded_rows(M);
  at::Tensor a = at::empty({Mp, Kp}, x.options().dtype(at::kChar));
  const int64_t words = Mp * Kp / 4;
  convert_rows_kernel<<<blocks_for(words), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      static_cast<const uint8_t*>(x.const_data_ptr()), M, K, Kp, words,
      x.scalar_type() == at::kByte,
      reinterpret_cast<uint32_t*>(a.mutable_data_ptr<int8_t>()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return a;
}

at::Tensor gemm_s8s8s32_cuda(const at::Tensor& a, const at::Tensor& w) {
  TORCH_INTERNAL_ASSERT(a.scalar_type() == at::kChar && w.scalar_type() == at::kChar);
  TORCH_INTERNAL_ASSERT(a.is_contiguous() && w.is_contiguous() && a.dim() == 2 && w.dim() == 2);
  const int64_t Mp = a.size(0), Kp = a.size(1), Np = w.size(0);
  TORCH_INTERNAL_ASSERT(w.size(1) == Kp && Kp % 16 == 0 && Np % 8 == 0 && Mp % 8 == 0);
  at::Tensor c = at::empty({Mp, Np}, a.options().dtype(at::kInt));
  const GemmChoice choice = gemm_choice_from_environment();
  if (choice != GemmChoice::kDp4a) {
    const LtKey key{static_cast<int>(a.device().index()), Mp, Np, Kp};
    if (gemm_cublaslt(a, w, c, key, lt_choice(key))) return c;
    TORCH_CHECK(choice == GemmChoice::kAuto,
                "int8 GEMM (CUDA): TORCHQAT_CUDA_INT8_GEMM=cublaslt, but cuBLASLt has no int8 "
                "kernel for [", Mp, ", ", Kp, "] x [", Np, ", ", Kp, "]^T on this GPU");
  }
  gemm_dp4a(a, w, c);
  return c;
}

void epilogue_cuda(const EpilogueParams& e) {
  if (e.M == 0 || e.N == 0) return;
  TORCH_INTERNAL_ASSERT(e.out_raw != nullptr || e.qparams != nullptr);
  // 32 to 256 columns per block (whole warps), the rest of the 256 threads on rows.
  int bx = 32;
  while (bx < kThreads && bx < e.N) bx *= 2;
  const dim3 block(bx, kThreads / bx);
  const int64_t gx = ceil_div(e.N, bx);
  const int64_t gy = std::max<int64_t>(
      1, std::min(ceil_div(e.M, block.y), std::max<int64_t>(1, kMaxBlocks / gx)));
  const dim3 grid(static_cast<unsigned>(gx), static_cast<unsigned>(gy));
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  if (e.out_raw != nullptr) {
    epilogue_kernel<Activation::kNone, false, true><<<grid, block, 0, stream>>>(e);
  } else {
    switch (e.activation) {
      case Activation::kNone:
        launch_float_epilogue<Activation::kNone>(e, grid, block, stream);
        break;
      case Activation::kRelu:
        launch_float_epilogue<Activation::kRelu>(e, grid, block, stream);
        break;
      case Activation::kSilu:
        launch_float_epilogue<Activation::kSilu>(e, grid, block, stream);
        break;
    }
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace cuda
}  // namespace torchqat
