// Torch-free numerics of real (integer) quantization and of the INT8 layers' epilogue, shared by
// the CPU kernels, the CUDA kernels and the C++ unit tests.
//
//   quantize   : q = clamp(round_half_even(x * inv_s) + z, qmin, qmax)   (the q of fake_quant.h;
//                NaN, which no integer holds, becomes z, so it dequantizes to 0)
//   dequantize : y = (q - z) * s                                          (fake_quantize's y)
//
// INT8 linear / convolution, for an input quantized with (s_x, z_x) and per-channel symmetric
// weights q_w[n] with scales s_w[n]:
//
//   acc[n] = sum_k (q_x[k] - z_x) * q_w[n][k]                 int32, exact
//   t[n]   = fma(float(acc[n]), alpha[n], bias[n])            alpha[n] = float(s_x * s_w[n])
//   t[n]   = fma(t[n], multiplier[n], shift[n])               only with a folded BatchNorm
//   y[n]   = activation(t[n])
//
// Kernels compute acc as sum_k a[k] * q_w[n][k] - z_a * colsum[n] on unsigned bytes a (a signed
// input is shifted by +128 and so is its zero point), which is the same integer.
#pragma once

#include <cmath>
#include <cstdint>

#include "core/fake_quant.h"

namespace torchqat {
namespace core {

// The integer fake_quantize_element rounds to, as a value of T (an exact integer in T).
template <typename T>
TORCHQAT_HOST_DEVICE T quantize_value(T x, T inv_s, T z, T qmin, T qmax) {
  const T v = round_half_even(x * inv_s) + z;
  if (v != v) return z;
  return v < qmin ? qmin : (v > qmax ? qmax : v);
}

template <typename T>
TORCHQAT_HOST_DEVICE T dequantize_value(T q, T s, T z) {
  return (q - z) * s;
}

// One fused multiply-add, rounded once: every backend forms the epilogue with it, so the
// INT8 layers give the same floats on every kernel and instruction set.
TORCHQAT_HOST_DEVICE float fused_multiply_add(float a, float b, float c) {
#if defined(__CUDA_ARCH__)
  return fmaf(a, b, c);
#else
  return std::fma(a, b, c);
#endif
}

// t = fma(float(acc), alpha, bias); with a folded BatchNorm, t = fma(t, multiplier, shift).
TORCHQAT_HOST_DEVICE float linear_epilogue(int32_t acc, float alpha, float bias) {
  return fused_multiply_add(static_cast<float>(acc), alpha, bias);
}

// The deepest reduction whose int32 accumulators cannot overflow for any operands:
// |a - z| <= 255 and |q_w| <= 128, and 255 * 128 * 65793 < 2^31.
constexpr int64_t kMaxInt8Depth = 65793;

// sum_k a[m][k] * w[n][k] for unsigned activations and signed weights (row-major A [M, K] and
// W [N, K]): the plain loop every optimised kernel is tested against.
inline void gemm_u8s8s32_reference(int64_t M, int64_t N, int64_t K, const uint8_t* a,
                                   int64_t lda, const int8_t* w, int64_t ldw, int32_t* c,
                                   int64_t ldc) {
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t n = 0; n < N; ++n) {
      int32_t sum = 0;
      for (int64_t k = 0; k < K; ++k) {
        sum += static_cast<int32_t>(a[m * lda + k]) * static_cast<int32_t>(w[n * ldw + k]);
      }
      c[m * ldc + n] = sum;
    }
  }
}

}  // namespace core
}  // namespace torchqat
