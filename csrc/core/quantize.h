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
#include <cstring>

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

// exp(x) in float32 for the CPU epilogue's SiLU, within 2 ulp of the exact value where that is
// a normal float (checked in tests/cpp/test_quantize_core.cpp). Cephes' expf: x = n ln2 + r
// with n = rint(x / ln2) and |r| <= ln2 / 2 (ln2 split in two so that n ln2 is exact), a
// degree-6 polynomial for exp(r), and 2^n written into the exponent bits. x is first clamped to
// [-88, 89], so n lies in [-127, 128]: n = 128 writes the bits of +inf (from x >= 88.38, a
// little before exp overflows at 88.72) and n = -127 writes 0 (from x < -87.68, where exp is
// subnormal). NaN clamps to -88 and gives 0; silu keeps the NaN through its numerator.
// Written for the vectoriser: every multiply-add is one explicit fma and nothing else can be
// contracted, so every instruction set's vector loop and scalar tail give the same floats;
// no floor and no branch (GCC leaves a loop scalar for either unless trapping math is off).
// Host only: CUDA's epilogue uses expf.
inline float exp_float(float x) {
  constexpr float kRoundMagic = 12582912.0f;  // 1.5 * 2^23: (v + it) - it = rint(v), |v| < 2^22
  float xc = x > -88.0f ? x : -88.0f;
  xc = xc < 89.0f ? xc : 89.0f;
  const float n = (xc * 1.44269504088896341f + kRoundMagic) - kRoundMagic;
  float r = fused_multiply_add(-n, 0.693359375f, xc);
  r = fused_multiply_add(-n, -2.12194440e-4f, r);
  float p = 1.9875691500e-4f;
  p = fused_multiply_add(p, r, 1.3981999507e-3f);
  p = fused_multiply_add(p, r, 8.3334519073e-3f);
  p = fused_multiply_add(p, r, 4.1665795894e-2f);
  p = fused_multiply_add(p, r, 1.6666665459e-1f);
  p = fused_multiply_add(p, r, 5.0000001201e-1f);
  p = fused_multiply_add(p, r * r, r) + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float two_n;
  std::memcpy(&two_n, &bits, sizeof(two_n));
  return p * two_n;
}

// The epilogue's SiLU, t / (1 + exp(-t)), the formula of ATen's silu, with exp_float: within a
// few ulp of ATen's result (whose vectorised and scalar paths use different exp functions).
inline float silu(float t) { return t / (1.0f + exp_float(-t)); }

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
