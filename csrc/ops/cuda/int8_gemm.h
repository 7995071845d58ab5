// The building blocks of the CUDA INT8 layers (int8_linear.cu, int8_conv2d.cu), implemented in
// int8_gemm.cu. Numerics: csrc/core/quantize.h.
//
// Every GEMM here multiplies two int8 matrices with int32 accumulation, A [Mp, Kp] by W [Np, Kp]
// (both row-major, K contiguous, zero padding; Kp a multiple of 16 so that every row starts on
// a 16-byte boundary, Np a multiple of 8). Activations reach it as int8 a = q + a_shift, with
// a_shift = -128 for unsigned ranges and 0 for signed ones; the zero point moves with them,
// a_zero = z + a_shift, and the epilogue restores the exact accumulator
//   acc[m][n] = sum_k (q - z) * w = sum_k a * w - a_zero * colsum[n]
// in wrapping int32 arithmetic (the true value always fits, see kMaxInt8Depth).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <cstdint>
#include <optional>
#include <string>

#include "ops/cpu/int8_common.h"

namespace torchqat {
namespace cuda {

// The epilogue's activation, its parser ("none" / "relu" / "silu"; anything else is an error
// naming `op`) and the activation-range check: the CPU operators' own (ops/cpu/int8_common.h), so
// the names and messages are the same on both devices.
using cpu::Activation;
using cpu::parse_activation;
using cpu::check_activation_range;

// Operators named in device-side error messages.
enum class Int8Op : int { kInt8Linear = 0, kInt8Conv2d = 1 };

// A per-tensor activation quantizer as the kernels read it: a float32 tensor of 3 elements on
// the device, {s, 1/s, z} (z the effective zero point: rounded half to even, clamped), made
// from input_scale / input_zero_point by one small kernel that also checks them there (the
// checks and messages of the CPU operators; a bad value trips a device assertion). No host
// synchronisation. Host-side checks (shapes, dtypes, devices) happen here too.
at::Tensor activation_qparams_cuda(Int8Op op, const at::Tensor& input,
                                   const at::Tensor& input_scale,
                                   const at::Tensor& input_zero_point, int64_t quant_min,
                                   int64_t quant_max);

// a_shift for an 8-bit range: -128 when it is unsigned (within [0, 255]), else 0.
inline int32_t activation_shift(int64_t quant_min) { return quant_min >= 0 ? -128 : 0; }

// Rounds n up to a multiple of `align`.
inline int64_t round_up(int64_t n, int64_t align) { return (n + align - 1) / align * align; }

// Rows of the A operand for M rows: cuBLASLt's int8 kernels want more than 16 (PyTorch's
// _int_mm asks the same), and a multiple of 8 keeps the int32 output rows aligned.
inline int64_t padded_rows(int64_t M) { return round_up(M < 32 ? 32 : M, 8); }

// x: float32 / float16 / bfloat16 [M, K] contiguous -> a: int8 [Mp, Kp] (allocated here) with
// a = quantize_value(x, 1/s, z, qmin, qmax) + a_shift, zero padding. qparams from
// activation_qparams_cuda.
at::Tensor quantize_rows_cuda(const at::Tensor& x, int64_t M, int64_t K, int64_t Kp,
                              const at::Tensor& qparams, int64_t quant_min, int64_t quant_max);

// x: uint8 or int8 [M, K] contiguous -> a: int8 [Mp, Kp] with a = x - 128 (uint8) or x (int8),
// zero padding.
at::Tensor convert_rows_cuda(const at::Tensor& x, int64_t M, int64_t K, int64_t Kp);

// c = a @ w^T: int8 [Mp, Kp] x int8 [Np, Kp] -> int32 [Mp, Np], exact. cuBLASLt's int8 GEMM
// (CUBLAS_COMPUTE_32I) where it supports the shape, else our dp4a kernel; the environment
// variable TORCHQAT_CUDA_INT8_GEMM=cublaslt|dp4a forces one (for tests and benchmarks).
at::Tensor gemm_s8s8s32_cuda(const at::Tensor& a, const at::Tensor& w);

// The per-channel epilogue over int32 accumulators acc [M, N] (row stride ld_acc):
//   v = acc - a_zero * col_sums[n]        (col_sums null: v = acc)
//   raw (out_raw): out_raw[m][n] = v
//   else t = fma(float(v), s_x * w_scale[n], bias[n]); t = fma(t, mult[n], shift[n]) when
//        mult is given; activation; out[m][n] = t
// a_zero = int(qparams[2]) + a_shift when qparams is defined (int8_linear), else the host value
// zero_point (int8_matmul, already shifted). Outputs are dense [M, N] with row stride ldo.
struct EpilogueParams {
  const int32_t* acc = nullptr;
  int64_t ld_acc = 0;
  int64_t M = 0;
  int64_t N = 0;
  const int32_t* col_sums = nullptr;
  const float* qparams = nullptr;  // {s_x, 1/s_x, z_x} on the device, or null
  int32_t a_shift = 0;
  int32_t zero_point = 0;  // used when qparams is null
  const float* w_scale = nullptr;
  const float* bias = nullptr;
  const float* multiplier = nullptr;  // null: no folded BatchNorm
  const float* shift = nullptr;
  Activation activation = Activation::kNone;
  float* out = nullptr;
  int32_t* out_raw = nullptr;
  int64_t ldo = 0;
};
void epilogue_cuda(const EpilogueParams& e);

}  // namespace cuda
}  // namespace torchqat
