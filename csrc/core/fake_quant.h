// Torch-free numerics of fake quantization, shared by the CPU kernels (scalar tails), the CUDA
// kernels and the C++ unit tests. One definition, so every backend rounds the same way:
//
//   q    = clamp(round_half_even(x * inv_s) + z, qmin, qmax)     inv_s = 1/s computed in float32
//   y    = (q - z) * s
//   mask = qmin <= round_half_even(x * inv_s) + z <= qmax          (before the clamp)
//
// LSQ / LSQ+ gradients of one element (before grad_factor and before the reduction):
//
//   element       d/ds                  d/dz
//   below range   dy * (qmin - z)       -dy * s
//   above range   dy * (qmax - z)       -dy * s
//   in range      dy * (y - x) / s      0
//
// NaN input: NaN output, zero gradients. +-inf clamp to the range ends (and count as out of range).
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define TORCHQAT_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define TORCHQAT_HOST_DEVICE inline
#endif

namespace torchqat {
namespace core {

// Round half to even: what std::nearbyint does under the default rounding mode, and what
// PyTorch's fake-quant kernels use. Written out so device code and host code share one name.
template <typename T>
TORCHQAT_HOST_DEVICE T round_half_even(T v) {
#if defined(__CUDA_ARCH__)
  return rint(v);
#else
  return std::nearbyint(v);
#endif
}

// The reciprocal of the scale, always formed in float32 (bit-identity with PyTorch's operators
// depends on it). float64 inputs compute entirely in float64: that path exists for gradcheck.
TORCHQAT_HOST_DEVICE float inverse_scale(float s) { return 1.0f / s; }
TORCHQAT_HOST_DEVICE double inverse_scale(double s) { return 1.0 / s; }

// Effective zero point of a stored (possibly float, learnable) zero point: rounded half to even,
// then clamped to the quantized range. Forward and backward both use this value.
template <typename T>
TORCHQAT_HOST_DEVICE T effective_zero_point(T z, T qmin, T qmax) {
  T r = round_half_even(z);
  return r < qmin ? qmin : (r > qmax ? qmax : r);
}

// Where an element falls relative to the representable range.
enum class Region : int { kBelow = -1, kInside = 0, kAbove = 1, kNaN = 2 };

template <typename T>
struct FakeQuantElement {
  T y;            // fake-quantized value
  Region region;  // which gradient formula applies
};

template <typename T>
TORCHQAT_HOST_DEVICE FakeQuantElement<T> fake_quantize_element(T x, T s, T inv_s, T z, T qmin,
                                                               T qmax) {
  const T v = round_half_even(x * inv_s) + z;
  if (v != v) return {v, Region::kNaN};
  if (v < qmin) return {(qmin - z) * s, Region::kBelow};
  if (v > qmax) return {(qmax - z) * s, Region::kAbove};
  return {(v - z) * s, Region::kInside};
}

template <typename T>
TORCHQAT_HOST_DEVICE T fake_quantize_value(T x, T s, T inv_s, T z, T qmin, T qmax) {
  return fake_quantize_element(x, s, inv_s, z, qmin, qmax).y;
}

// Gradients of one element: input gradient (STE), and the element's contributions to the
// scale and zero-point gradients (not yet multiplied by grad_factor).
template <typename T>
struct LsqElementGrad {
  T dx;
  T dscale;
  T dzero_point;
};

template <typename T>
TORCHQAT_HOST_DEVICE LsqElementGrad<T> lsq_element_grad(T dy, T x, T s, T inv_s, T z, T qmin,
                                                        T qmax) {
  const FakeQuantElement<T> e = fake_quantize_element(x, s, inv_s, z, qmin, qmax);
  switch (e.region) {
    case Region::kInside:
      return {dy, dy * (e.y - x) * inv_s, T(0)};
    case Region::kBelow:
      return {T(0), dy * (qmin - z), -dy * s};
    case Region::kAbove:
      return {T(0), dy * (qmax - z), -dy * s};
    default:
      return {T(0), T(0), T(0)};
  }
}

}  // namespace core
}  // namespace torchqat
