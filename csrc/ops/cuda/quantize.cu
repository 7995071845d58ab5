// CUDA kernels and host wrappers of quantize and dequantize. Formulas: csrc/core/quantize.h, the
// functions the CPU kernels (csrc/ops/cpu/quantize.cpp) call, so both backends give the same
// integers and the same floats.
//
// Each operator is two launches on the current stream:
//   1. a parameter kernel reads scale and zero_point in their stored dtypes, checks them (one
//      thread per channel; a bad value prints the operator, the argument and the value, then
//      trips a device assertion) and writes the values the element kernel uses, in the compute
//      type: 1/s and the effective zero point (quantize), s and the rounded zero point
//      (dequantize);
//   2. an element kernel walks the tensor in memory order, viewed as [outer, channels, inner].
// No wrapper reads a device value on the host.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Dispatch_v2.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/macros/Macros.h>
#include <torch/library.h>

#include <algorithm>
#include <cfloat>
#include <cstdint>
#include <cstdio>
#include <optional>
#include <type_traits>

#include "core/quantize.h"
#include "ops/fake_quantize_common.h"

namespace torchqat {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 65535;  // grid-stride loops cover the rest

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// ---------------------------------------------------------------------------------------------
// Parameters, read on the device.

enum class OpId : int { kQuantize, kDequantize };

__device__ const char* op_name(OpId op) {
  return op == OpId::kQuantize ? "quantize" : "dequantize";
}

// Element `i` of a 0-d or 1-d parameter tensor of any real dtype, as double (what the CPU path
// reads through .to(kDouble)).
template <typename P>
__device__ __forceinline__ double param_at(const void* p, int64_t i, int64_t stride) {
  return static_cast<double>(static_cast<const P*>(p)[i * stride]);
}

// Cold path, out of line so the kernels do not carry printf's registers.
__device__ __noinline__ void report_bad_param(OpId op, int which, double v, long long index,
                                              double limit, double quant_min, double quant_max) {
  switch (which) {
    case 0:
      printf("%s: scale must be positive and finite, got %g at index %lld\n", op_name(op), v,
             index);
      break;
    case 1:
      printf("%s: scale must be at least %g (the smallest normal %s number, so that 1/scale is "
             "finite), got %g at index %lld\n",
             op_name(op), limit, limit == DBL_MIN ? "float64" : "float32", v, index);
      break;
    case 2:
      printf("%s: zero_point must be finite, got %g at index %lld\n", op_name(op), v, index);
      break;
    default:
      printf("%s: zero_point must lie in [quant_min, quant_max] = [%lld, %lld], got %lld at "
             "index %lld\n",
             op_name(op), static_cast<long long>(quant_min), static_cast<long long>(quant_max),
             static_cast<long long>(v), index);
      break;
  }
  CUDA_KERNEL_ASSERT(false && "invalid quantization parameter");
}

// What each channel's element loop needs, in the compute type T.
template <typename T>
struct ChannelParams {
  T* a;  // quantize: 1/s; dequantize: s
  T* z;  // quantize: effective zero point (rounded, clamped); dequantize: rounded zero point
};

// quantize:   checks as fake_quantize does (csrc/ops/fake_quantize_common.cpp, check_cpu_values);
//             a = inverse_scale(T(s)), z = T(effective_zero_point(z, qmin, qmax)) formed in double
//             and cast, exactly as the CPU wrapper does.
// dequantize: scale positive and finite, zero point finite (dequantize_cpu's checks);
//             a = float(s), z = float(round_half_even(z)).
template <typename T, typename S, typename Z>
__global__ void __launch_bounds__(kThreads)
    channel_params_kernel(OpId op, const void* scale, int64_t scale_stride, const void* zero_point,
                          int64_t zero_point_stride, bool zero_point_integral, int64_t channels,
                          double quant_min, double quant_max, ChannelParams<T> out) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= channels) return;
  const double s = param_at<S>(scale, c, scale_stride);
  const double z = param_at<Z>(zero_point, c, zero_point_stride);
  const long long index = channels > 1 ? static_cast<long long>(c) : 0;
  if (!(isfinite(s) && s > 0.0)) report_bad_param(op, 0, s, index, 0.0, quant_min, quant_max);
  if (!isfinite(z)) report_bad_param(op, 2, z, index, 0.0, quant_min, quant_max);
  if (op == OpId::kQuantize) {
    const double smallest = std::is_same_v<T, double> ? DBL_MIN : FLT_MIN;
    if (s < smallest) report_bad_param(op, 1, s, index, smallest, quant_min, quant_max);
    if (zero_point_integral && (z < quant_min || z > quant_max)) {
      report_bad_param(op, 3, z, index, 0.0, quant_min, quant_max);
    }
    out.a[c] = core::inverse_scale(static_cast<T>(s));
    out.z[c] = static_cast<T>(core::effective_zero_point<double>(z, quant_min, quant_max));
  } else {
    out.a[c] = static_cast<T>(s);
    out.z[c] = static_cast<T>(core::round_half_even(z));
  }
}

// Launches channel_params_kernel for the stored dtypes of scale and zero_point.
template <typename T>
ChannelParams<T> channel_params(OpId op, const at::Tensor& scale, const at::Tensor& zero_point,
                                int64_t channels, double quant_min, double quant_max,
                                at::Tensor& storage) {
  storage = at::empty({2, channels}, scale.options().dtype(c10::CppTypeToScalarType<T>::value));
  ChannelParams<T> out{storage.mutable_data_ptr<T>(), storage.mutable_data_ptr<T>() + channels};
  const int64_t s_stride = scale.dim() == 1 ? scale.stride(0) : 0;
  const int64_t z_stride = zero_point.dim() == 1 ? zero_point.stride(0) : 0;
  const bool integral = at::isIntegralType(zero_point.scalar_type(), /*includeBool=*/false);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const unsigned blocks = static_cast<unsigned>(ceil_div(channels, kThreads));
  AT_DISPATCH_FLOATING_TYPES(scale.scalar_type(), "quantize_params_cuda", [&] {
    using S = scalar_t;
    // Every integer dtype fake_quantize accepts for zero points, unsigned ones included.
    AT_DISPATCH_V2(zero_point.scalar_type(), "quantize_params_cuda", AT_WRAP([&] {
      channel_params_kernel<T, S, scalar_t><<<blocks, kThreads, 0, stream>>>(
          op, scale.const_data_ptr(), s_stride, zero_point.const_data_ptr(), z_stride, integral,
          channels, quant_min, quant_max, out);
    }), AT_EXPAND(AT_ALL_TYPES), AT_EXPAND(AT_BAREBONES_UNSIGNED_TYPES));
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

// ---------------------------------------------------------------------------------------------
// Element kernels over [outer, channels, inner] in memory order; 64-bit indices.

struct Shape {
  int64_t numel;
  int64_t channels;
  int64_t inner;
};

template <bool kPerChannel>
__device__ __forceinline__ int64_t channel_of(int64_t i, const Shape& sh) {
  if constexpr (kPerChannel) {
    return (i / sh.inner) % sh.channels;
  } else {
    return 0;
  }
}

// q = quantize_value(x): clamp(round_half_even(x * (1/s)) + z, qmin, qmax), in T (float32 for
// float32 / float16 / bfloat16 inputs, float64 for float64), stored as the integer type.
template <typename scalar_t, typename T, typename Q, bool kPerChannel>
__global__ void __launch_bounds__(kThreads)
    quantize_kernel(const scalar_t* __restrict__ x, Q* __restrict__ q, Shape sh,
                    ChannelParams<T> p, T qmin, T qmax) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < sh.numel;
       i += step) {
    const int64_t c = channel_of<kPerChannel>(i, sh);
    const T v = core::quantize_value<T>(static_cast<T>(x[i]), p.a[c], p.z[c], qmin, qmax);
    q[i] = static_cast<Q>(static_cast<int64_t>(v));
  }
}

// y = (float(q) - z) * s in float32.
template <typename Q, bool kPerChannel>
__global__ void __launch_bounds__(kThreads)
    dequantize_kernel(const Q* __restrict__ q, float* __restrict__ y, Shape sh,
                      ChannelParams<float> p) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < sh.numel;
       i += step) {
    const int64_t c = channel_of<kPerChannel>(i, sh);
    y[i] = core::dequantize_value(static_cast<float>(q[i]), p.a[c], p.z[c]);
  }
}

unsigned element_blocks(int64_t numel) {
  return static_cast<unsigned>(std::max<int64_t>(1, std::min(ceil_div(numel, kThreads), kMaxBlocks)));
}

// ---------------------------------------------------------------------------------------------
// Host wrappers. Checks, layouts and the output are shared with csrc/ops/cpu/quantize.cpp
// (ops/fake_quantize_common.h).

at::Tensor quantize_cuda(const at::Tensor& input, const at::Tensor& scale,
                         const at::Tensor& zero_point, int64_t quant_min, int64_t quant_max,
                         std::optional<int64_t> axis) {
  const auto p = ops::prepare_fake_quant("quantize", input, scale, zero_point, quant_min,
                                         quant_max, axis, at::Tensor());
  const c10::cuda::CUDAGuard device_guard(input.device());
  ops::FakeQuantOutput o =
      ops::make_output(input, p, ops::quantized_dtype(quant_min, quant_max));
  if (p.numel() == 0) return o.out;
  const Shape sh{p.numel(), p.channels, p.inner};
  const bool per_channel = p.channels > 1;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const unsigned blocks = element_blocks(sh.numel);
  at::Tensor storage;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.input.scalar_type(),
                                  "quantize_cuda", [&] {
    using T = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    using X = scalar_t;
    const ChannelParams<T> params = channel_params<T>(
        OpId::kQuantize, scale, zero_point, p.channels, static_cast<double>(quant_min),
        static_cast<double>(quant_max), storage);
    const T qmin = static_cast<T>(quant_min), qmax = static_cast<T>(quant_max);
    AT_DISPATCH_INTEGRAL_TYPES(o.work.scalar_type(), "quantize_cuda", [&] {
      const X* x = p.input.const_data_ptr<X>();
      scalar_t* q = o.work.mutable_data_ptr<scalar_t>();
      if (per_channel) {
        quantize_kernel<X, T, scalar_t, true><<<blocks, kThreads, 0, stream>>>(x, q, sh, params,
                                                                                qmin, qmax);
      } else {
        quantize_kernel<X, T, scalar_t, false><<<blocks, kThreads, 0, stream>>>(x, q, sh, params,
                                                                                 qmin, qmax);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  o.finish();
  return o.out;
}

at::Tensor dequantize_cuda(const at::Tensor& input, const at::Tensor& scale,
                           const at::Tensor& zero_point, std::optional<int64_t> axis) {
  const ops::FakeQuantProblem p = ops::prepare_dequantize(input, scale, zero_point, axis);
  const c10::cuda::CUDAGuard device_guard(input.device());
  ops::FakeQuantOutput o = ops::make_output(input, p, at::kFloat);
  const int64_t numel = p.numel();
  if (numel == 0) return o.out;
  // A channel may be empty (size 0 elsewhere): numel == 0 returned above, so channels >= 1.
  at::Tensor storage;
  const ChannelParams<float> params =
      channel_params<float>(OpId::kDequantize, scale, zero_point, p.channels, 0.0, 0.0, storage);
  const Shape sh{numel, p.channels, p.inner};
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const unsigned blocks = element_blocks(numel);
  float* y = o.work.mutable_data_ptr<float>();
  AT_DISPATCH_INTEGRAL_TYPES(input.scalar_type(), "dequantize_cuda", [&] {
    const scalar_t* q = p.input.const_data_ptr<scalar_t>();
    if (p.channels > 1) {
      dequantize_kernel<scalar_t, true><<<blocks, kThreads, 0, stream>>>(q, y, sh, params);
    } else {
      dequantize_kernel<scalar_t, false><<<blocks, kThreads, 0, stream>>>(q, y, sh, params);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  o.finish();
  return o.out;
}

}  // namespace
}  // namespace cuda
}  // namespace torchqat

TORCH_LIBRARY_IMPL(torchqat, CUDA, m) {
  m.impl("quantize", &torchqat::cuda::quantize_cuda);
  m.impl("dequantize", &torchqat::cuda::dequantize_cuda);
}
