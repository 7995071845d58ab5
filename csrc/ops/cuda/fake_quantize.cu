// CUDA kernels and host wrappers of the fake-quant operators. Formulas: csrc/core/fake_quant.h
// (the same functions the CPU kernels use, so both backends round identically).
//
// The tensor, in memory order, is viewed as [outer, channels, inner] (ops::prepare_fake_quant).
// Every operator walks it with one of two kernels, chosen by the layout:
//
//   rows     inner >= 32, or one scale for the whole tensor. Blocks are assigned to a channel
//            (gridDim.y) and split its outer * inner elements into contiguous chunks (gridDim.x);
//            threads stride through a chunk, 16 bytes per access when the pointers and the row
//            length allow it. The per-tensor case is a single row of numel elements.
//   columns  inner < 32 and several channels (channels_last, the last axis, short rows). A row
//            of the view is channels * inner contiguous "columns"; each thread owns one column,
//            so its channel never changes, and walks the rows: a warp reads contiguous memory.
//
// Scale and zero point are read on the device in their own dtypes and checked there, once per
// channel, by one thread: a bad value prints the operator, the argument and the value, then
// trips a device assertion. No wrapper reads a device value on the host.
//
// fake_quantize_lsq_backward is one pass: the kernel writes dx and reduces each block's scale and
// zero-point gradient contributions (threads in T, flushed into double; blocks in double) into a
// per-block partial; lsq_finalize_kernel adds the partials of a channel in a fixed order and
// applies grad_factor. No atomics: results are deterministic on a given GPU.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
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
#include <tuple>
#include <type_traits>

#include "core/fake_quant.h"
#include "ops/fake_quantize_common.h"

namespace torchqat {
namespace cuda {
namespace {

constexpr int kThreads = 256;            // threads of every block
constexpr int kWarpSize = 32;
constexpr int64_t kColumnsMaxInner = 32;  // rows shorter than this are walked as columns
constexpr int64_t kMaxGridX = (int64_t{1} << 31) - 1;
constexpr int64_t kMaxGridY = 65535;
constexpr int kFlush = 4096;  // units a thread sums in T before moving the sum into double

// Half and bfloat16 compute in float32; float64 computes in float64.
template <typename scalar_t>
using opmath_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// ---------------------------------------------------------------------------------------------
// Quantization parameters, read on the device in their stored dtypes.

enum class OpId : int {
  kFakeQuantize,
  kFakeQuantizeBackward,
  kFakeQuantizeLsq,
  kFakeQuantizeLsqBackward,
};

enum class ParamType : int {
  kFloat,
  kDouble,
  kInt8,
  kUInt8,
  kInt16,
  kUInt16,
  kInt32,
  kUInt32,
  kInt64,
  kUInt64,
};

ParamType param_type_of(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return ParamType::kFloat;
    case at::kDouble: return ParamType::kDouble;
    case at::kChar: return ParamType::kInt8;
    case at::kByte: return ParamType::kUInt8;
    case at::kShort: return ParamType::kInt16;
    case at::kUInt16: return ParamType::kUInt16;
    case at::kInt: return ParamType::kInt32;
    case at::kUInt32: return ParamType::kUInt32;
    case at::kLong: return ParamType::kInt64;
    case at::kUInt64: return ParamType::kUInt64;
    default: break;
  }
  // prepare_fake_quant accepts exactly the types above.
  TORCH_INTERNAL_ASSERT(false, "fake_quantize (CUDA): unexpected parameter dtype ", t);
  return ParamType::kFloat;
}

// Where scale and zero_point live and how to read them. Passed by value to every kernel.
struct QParamsArgs {
  const void* scale;
  const void* zero_point;
  int64_t scale_stride;  // elements between channels (0 for a single element)
  int64_t zero_point_stride;
  ParamType scale_type;
  ParamType zero_point_type;
  bool zero_point_integral;
  double quant_min;
  double quant_max;
  OpId op;  // named in device-side error messages
};

QParamsArgs make_qparams_args(OpId op, const at::Tensor& scale, const at::Tensor& zero_point,
                              int64_t quant_min, int64_t quant_max) {
  QParamsArgs a;
  a.scale = scale.const_data_ptr();
  a.zero_point = zero_point.const_data_ptr();
  a.scale_stride = scale.dim() == 1 ? scale.stride(0) : 0;
  a.zero_point_stride = zero_point.dim() == 1 ? zero_point.stride(0) : 0;
  a.scale_type = param_type_of(scale.scalar_type());
  a.zero_point_type = param_type_of(zero_point.scalar_type());
  a.zero_point_integral = at::isIntegralType(zero_point.scalar_type(), /*includeBool=*/false);
  a.quant_min = static_cast<double>(quant_min);
  a.quant_max = static_cast<double>(quant_max);
  a.op = op;
  return a;
}

__device__ const char* op_name(OpId op) {
  switch (op) {
    case OpId::kFakeQuantize: return "fake_quantize";
    case OpId::kFakeQuantizeBackward: return "fake_quantize_backward";
    case OpId::kFakeQuantizeLsq: return "fake_quantize_lsq";
    case OpId::kFakeQuantizeLsqBackward: return "fake_quantize_lsq_backward";
  }
  return "fake_quantize";
}

// Reads element `index` as double, as the CPU path does through .to(kDouble). Exact for every
// value that passes check_qparams (float32/64, and integers inside a 16-bit range).
__device__ __forceinline__ double load_param(const void* p, int64_t index, ParamType t) {
  switch (t) {
    case ParamType::kFloat: return static_cast<double>(static_cast<const float*>(p)[index]);
    case ParamType::kDouble: return static_cast<const double*>(p)[index];
    case ParamType::kInt8: return static_cast<double>(static_cast<const int8_t*>(p)[index]);
    case ParamType::kUInt8: return static_cast<double>(static_cast<const uint8_t*>(p)[index]);
    case ParamType::kInt16: return static_cast<double>(static_cast<const int16_t*>(p)[index]);
    case ParamType::kUInt16: return static_cast<double>(static_cast<const uint16_t*>(p)[index]);
    case ParamType::kInt32: return static_cast<double>(static_cast<const int32_t*>(p)[index]);
    case ParamType::kUInt32: return static_cast<double>(static_cast<const uint32_t*>(p)[index]);
    case ParamType::kInt64: return static_cast<double>(static_cast<const int64_t*>(p)[index]);
    case ParamType::kUInt64: return static_cast<double>(static_cast<const uint64_t*>(p)[index]);
  }
  return 0.0;
}

// Cold path, kept out of line so the kernels' hot loops do not carry printf's registers.
__device__ __noinline__ void report_bad_qparams(OpId op, int64_t channel, double s, double z,
                                                bool scale_ok, bool scale_normal,
                                                bool zero_point_ok, double smallest_scale,
                                                double quant_min, double quant_max) {
  const long long index = static_cast<long long>(channel);
  if (!scale_ok) {
    printf("%s: scale must be positive and finite, got %g at index %lld\n", op_name(op), s,
           index);
  } else if (!scale_normal) {
    printf("%s: scale must be at least %g (the smallest normal %s number, so that 1/scale is "
           "finite), got %g at index %lld\n",
           op_name(op), smallest_scale, smallest_scale == DBL_MIN ? "float64" : "float32", s,
           index);
  } else if (!isfinite(z)) {
    printf("%s: zero_point must be finite, got %g at index %lld\n", op_name(op), z, index);
  } else {
    printf("%s: zero_point must lie in [quant_min, quant_max] = [%lld, %lld], got %lld at index "
           "%lld\n",
           op_name(op), static_cast<long long>(quant_min), static_cast<long long>(quant_max),
           static_cast<long long>(z), index);
  }
  CUDA_KERNEL_ASSERT(scale_ok && scale_normal && zero_point_ok);
}

// The checks the CPU path makes on the host (check_cpu_values in fake_quantize_common.cpp),
// including that the scale is a normal number of the compute type T: below that, 1/s is not
// finite and x = 0 would give NaN.
template <typename T>
__device__ __forceinline__ void check_qparams(const QParamsArgs& a, int64_t channel) {
  const double smallest_scale = std::is_same_v<T, double> ? DBL_MIN : FLT_MIN;
  const double s = load_param(a.scale, channel * a.scale_stride, a.scale_type);
  const double z = load_param(a.zero_point, channel * a.zero_point_stride, a.zero_point_type);
  const bool scale_ok = isfinite(s) && s > 0.0;
  const bool scale_normal = s >= smallest_scale;
  const bool zero_point_ok =
      isfinite(z) && (!a.zero_point_integral || (z >= a.quant_min && z <= a.quant_max));
  if (!scale_ok || !scale_normal || !zero_point_ok) {
    report_bad_qparams(a.op, channel, s, z, scale_ok, scale_normal, zero_point_ok,
                       smallest_scale, a.quant_min, a.quant_max);
  }
}

// Checks the channels of columns first, first + step, ... below end that start a channel
// (column % inner == 0). Kernels call it first thing, so that no value of theirs is live across
// this cold, out-of-line call and it costs their hot loops no registers.
template <typename T>
__device__ __noinline__ void check_qparams_of_columns(const QParamsArgs qa, int64_t first,
                                                      int64_t step, int64_t end, int64_t inner) {
  for (int64_t q = first; q < end; q += step) {
    if (q % inner == 0) check_qparams<T>(qa, q / inner);
  }
}

// One channel's parameters in the compute type: the scale, its reciprocal (formed in the compute
// type, float32 for float32/16 inputs as PyTorch does) and the effective zero point (rounded half
// to even and clamped in double, exactly as the CPU wrapper does before casting to T).
template <typename T>
struct ChannelQParams {
  T s;
  T inv_s;
  T z;
};

template <typename T>
__device__ __forceinline__ ChannelQParams<T> load_qparams(const QParamsArgs& a, int64_t channel) {
  const double s = load_param(a.scale, channel * a.scale_stride, a.scale_type);
  const double z = load_param(a.zero_point, channel * a.zero_point_stride, a.zero_point_type);
  const T st = static_cast<T>(s);
  const T zt = static_cast<T>(core::effective_zero_point<double>(z, a.quant_min, a.quant_max));
  return {st, core::inverse_scale(st), zt};
}

// ---------------------------------------------------------------------------------------------
// Element-wise work of each operator, on a unit of N consecutive elements of one channel.

template <typename scalar_t, int N>
struct alignas(sizeof(scalar_t) * N) Pack {
  scalar_t val[N];
};

template <int N, typename scalar_t>
__device__ __forceinline__ Pack<scalar_t, N> load_pack(const scalar_t* p) {
  return *reinterpret_cast<const Pack<scalar_t, N>*>(p);
}

template <int N, typename scalar_t>
__device__ __forceinline__ void store_pack(scalar_t* p, const Pack<scalar_t, N>& v) {
  *reinterpret_cast<Pack<scalar_t, N>*>(p) = v;
}

// A unit's contributions to the scale and zero-point gradients (zero for the other operators).
template <typename T>
struct UnitGrad {
  T ds;
  T dz;
};

// y = fake_quantize(x)
template <typename scalar_t_>
struct ForwardOp {
  using scalar_t = scalar_t_;
  using T = opmath_t<scalar_t>;
  static constexpr bool kReduces = false;
  static constexpr int kVec = 16 / sizeof(scalar_t);

  const scalar_t* x;
  scalar_t* y;

  template <int N>
  __device__ __forceinline__ UnitGrad<T> unit(int64_t i, const ChannelQParams<T>& p, T qmin,
                                              T qmax) const {
    const Pack<scalar_t, N> xv = load_pack<N>(x + i);
    Pack<scalar_t, N> yv;
#pragma unroll
    for (int l = 0; l < N; ++l) {
      yv.val[l] = static_cast<scalar_t>(core::fake_quantize_value<T>(
          static_cast<T>(xv.val[l]), p.s, p.inv_s, p.z, qmin, qmax));
    }
    store_pack<N>(y + i, yv);
    return {T(0), T(0)};
  }
};

// dx = dy * mask(x), the mask recomputed from x.
template <typename scalar_t_>
struct SteBackwardOp {
  using scalar_t = scalar_t_;
  using T = opmath_t<scalar_t>;
  static constexpr bool kReduces = false;
  static constexpr int kVec = 16 / sizeof(scalar_t);

  const scalar_t* dy;
  const scalar_t* x;
  scalar_t* dx;

  template <int N>
  __device__ __forceinline__ UnitGrad<T> unit(int64_t i, const ChannelQParams<T>& p, T qmin,
                                              T qmax) const {
    const Pack<scalar_t, N> dyv = load_pack<N>(dy + i);
    const Pack<scalar_t, N> xv = load_pack<N>(x + i);
    Pack<scalar_t, N> dxv;
#pragma unroll
    for (int l = 0; l < N; ++l) {
      const auto e = core::fake_quantize_element<T>(static_cast<T>(xv.val[l]), p.s, p.inv_s, p.z,
                                                    qmin, qmax);
      dxv.val[l] = e.region == core::Region::kInside ? dyv.val[l] : static_cast<scalar_t>(T(0));
    }
    store_pack<N>(dx + i, dxv);
    return {T(0), T(0)};
  }
};

// LSQ / LSQ+ backward of one element (before grad_factor):
//
//   element       dx     d/ds                  d/dz
//   below range   0      dy * (qmin - z)       -dy * s
//   above range   0      dy * (qmax - z)       -dy * s
//   in range      dy     dy * (y - x) / s      0
//   NaN           0      0                     0
template <typename scalar_t_>
struct LsqBackwardOp {
  using scalar_t = scalar_t_;
  using T = opmath_t<scalar_t>;
  static constexpr bool kReduces = true;
  static constexpr int kVec = 16 / sizeof(scalar_t);

  const scalar_t* dy;
  const scalar_t* x;
  scalar_t* dx;

  template <int N>
  __device__ __forceinline__ UnitGrad<T> unit(int64_t i, const ChannelQParams<T>& p, T qmin,
                                              T qmax) const {
    const Pack<scalar_t, N> dyv = load_pack<N>(dy + i);
    const Pack<scalar_t, N> xv = load_pack<N>(x + i);
    Pack<scalar_t, N> dxv;
    UnitGrad<T> sum{T(0), T(0)};
#pragma unroll
    for (int l = 0; l < N; ++l) {
      const auto g = core::lsq_element_grad<T>(static_cast<T>(dyv.val[l]),
                                               static_cast<T>(xv.val[l]), p.s, p.inv_s, p.z,
                                               qmin, qmax);
      dxv.val[l] = static_cast<scalar_t>(g.dx);
      sum.ds += g.dscale;
      sum.dz += g.dzero_point;
    }
    store_pack<N>(dx + i, dxv);
    return sum;
  }
};

// A thread's running sum: in T, moved into double every kFlush units so that long runs keep
// their precision.
template <typename T>
struct Accumulator {
  T part = T(0);
  double total = 0.0;
  int count = 0;

  __device__ __forceinline__ void add(T v) {
    part += v;
    if (++count == kFlush) {
      total += static_cast<double>(part);
      part = T(0);
      count = 0;
    }
  }
  __device__ __forceinline__ double sum() const { return total + static_cast<double>(part); }
};

__device__ __forceinline__ double warp_sum(double v) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    v += __shfl_down_sync(0xffffffffu, v, offset);
  }
  return v;  // the sum is in lane 0
}

// Sums a and b over a 1-D block of kThreads threads; the result is valid in thread 0. Every
// thread of the block must call it (it synchronises).
__device__ __forceinline__ void block_sum2(double& a, double& b) {
  __shared__ double warp_a[kThreads / kWarpSize];
  __shared__ double warp_b[kThreads / kWarpSize];
  a = warp_sum(a);
  b = warp_sum(b);
  const int warp = threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  if (lane == 0) {
    warp_a[warp] = a;
    warp_b[warp] = b;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    a = 0.0;
    b = 0.0;
    for (int w = 0; w < kThreads / kWarpSize; ++w) {
      a += warp_a[w];
      b += warp_b[w];
    }
  }
  __syncthreads();  // the next call may overwrite warp_a / warp_b
}

// Per-block partial sums of the LSQ gradients: [channels][partials_per_channel], row-major.
struct Partials {
  double* s = nullptr;
  double* z = nullptr;
};

// ---------------------------------------------------------------------------------------------
// The rows kernel: blockIdx.y walks channels, blockIdx.x is a contiguous chunk of the channel's
// outer * (inner / N) units. A thread tracks its (row, unit-in-row) position incrementally, so
// the loop has no 64-bit division.

struct RowsShape {
  int64_t outer;
  int64_t channels;
  int64_t inner;  // elements of a row done in units of N (a multiple of N)
  int64_t tail;   // single-row problems only: elements [inner, inner + tail), one at a time
  int64_t chunk;  // units of one channel per block
};

template <int N, typename Op>
__global__ void __launch_bounds__(kThreads)
    fake_quant_rows_kernel(const Op op, const RowsShape sh, const QParamsArgs qa,
                           const Partials partials) {
  using T = typename Op::T;
  if (blockIdx.x == 0 && threadIdx.x == 0) {  // each channel once
    check_qparams_of_columns<T>(qa, blockIdx.y, gridDim.y, sh.channels, 1);
  }

  const T qmin = static_cast<T>(qa.quant_min);
  const T qmax = static_cast<T>(qa.quant_max);
  const int64_t inner_units = sh.inner / N;
  const int64_t units = sh.outer * inner_units;
  const int64_t begin = static_cast<int64_t>(blockIdx.x) * sh.chunk;
  const int64_t end = begin + sh.chunk < units ? begin + sh.chunk : units;
  const int64_t step = blockDim.x;

  for (int64_t c = blockIdx.y; c < sh.channels; c += gridDim.y) {
    const ChannelQParams<T> p = load_qparams<T>(qa, c);
    Accumulator<T> acc_s, acc_z;

    int64_t u = begin + threadIdx.x;
    if (u < end) {  // then units > 0, so inner_units > 0
      int64_t row = u / inner_units;
      int64_t k = u % inner_units;
      const int64_t step_rows = step / inner_units;
      const int64_t step_k = step % inner_units;
      for (; u < end; u += step) {
        const UnitGrad<T> g =
            op.template unit<N>((row * sh.channels + c) * sh.inner + k * N, p, qmin, qmax);
        if constexpr (Op::kReduces) {
          acc_s.add(g.ds);
          acc_z.add(g.dz);
        }
        row += step_rows;
        k += step_k;
        if (k >= inner_units) {
          k -= inner_units;
          ++row;
        }
      }
    }
    // A single row (so c == 0) whose length is not a multiple of N: the last block takes the
    // remaining elements.
    if (sh.tail > 0 && blockIdx.x == gridDim.x - 1 && threadIdx.x < sh.tail) {
      const UnitGrad<T> g = op.template unit<1>(sh.inner + threadIdx.x, p, qmin, qmax);
      if constexpr (Op::kReduces) {
        acc_s.add(g.ds);
        acc_z.add(g.dz);
      }
    }

    if constexpr (Op::kReduces) {
      double s = acc_s.sum();
      double z = acc_z.sum();
      block_sum2(s, z);
      if (threadIdx.x == 0) {
        const int64_t slot = c * gridDim.x + blockIdx.x;
        partials.s[slot] = s;
        partials.z[slot] = z;
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// The columns kernel: the view is outer rows of channels * inner columns. threadIdx.x and
// blockIdx.x pick a column (its channel is fixed: column / inner), threadIdx.y and blockIdx.y
// stride over the rows. Adjacent threads read adjacent elements.

struct ColumnsShape {
  int64_t outer;
  int64_t inner;    // columns per channel (< kColumnsMaxInner)
  int64_t columns;  // channels * inner
};

template <typename Op>
__global__ void __launch_bounds__(kThreads)
    fake_quant_columns_kernel(const Op op, const ColumnsShape sh, const QParamsArgs qa,
                              const Partials partials) {
  using T = typename Op::T;
  if (blockIdx.y == 0 && threadIdx.y == 0) {  // each channel once, by its first column
    check_qparams_of_columns<T>(qa, static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x,
                                static_cast<int64_t>(gridDim.x) * blockDim.x, sh.columns,
                                sh.inner);
  }

  const T qmin = static_cast<T>(qa.quant_min);
  const T qmax = static_cast<T>(qa.quant_max);
  const int64_t tiles = (sh.columns + blockDim.x - 1) / blockDim.x;
  const int64_t row_step = static_cast<int64_t>(gridDim.y) * blockDim.y;

  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const int64_t q = tile * blockDim.x + threadIdx.x;
    const bool active = q < sh.columns;
    Accumulator<T> acc_s, acc_z;
    if (active) {
      const int64_t c = q / sh.inner;
      const ChannelQParams<T> p = load_qparams<T>(qa, c);
      for (int64_t row = static_cast<int64_t>(blockIdx.y) * blockDim.y + threadIdx.y;
           row < sh.outer; row += row_step) {
        const UnitGrad<T> g = op.template unit<1>(row * sh.columns + q, p, qmin, qmax);
        if constexpr (Op::kReduces) {
          acc_s.add(g.ds);
          acc_z.add(g.dz);
        }
      }
    }

    if constexpr (Op::kReduces) {
      // Sum the column over threadIdx.y, in order.
      __shared__ double sum_s[kThreads];
      __shared__ double sum_z[kThreads];
      const int t = threadIdx.y * blockDim.x + threadIdx.x;
      sum_s[t] = acc_s.sum();
      sum_z[t] = acc_z.sum();
      __syncthreads();
      if (threadIdx.y == 0 && active) {
        double s = 0.0;
        double z = 0.0;
        for (unsigned r = 0; r < blockDim.y; ++r) {
          s += sum_s[r * blockDim.x + threadIdx.x];
          z += sum_z[r * blockDim.x + threadIdx.x];
        }
        // Column q = c * inner + k: a channel's partials are contiguous.
        const int64_t slot = q * gridDim.y + blockIdx.y;
        partials.s[slot] = s;
        partials.z[slot] = z;
      }
      __syncthreads();  // the next tile overwrites sum_s / sum_z
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Second pass of fake_quantize_lsq_backward: one warp per channel adds the channel's partials
// (lane j takes j, j + 32, ... in order, then a fixed shuffle tree), multiplies by grad_factor
// and writes dscale / dzero_point in their dtypes (float32 or float64, contiguous).

__global__ void __launch_bounds__(kThreads)
    lsq_finalize_kernel(const Partials partials, int64_t channels, int64_t per_channel,
                        double grad_factor, void* dscale, bool dscale_double, void* dzero_point,
                        bool dzero_point_double) {
  const int lane = threadIdx.x % kWarpSize;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x / kWarpSize);
  for (int64_t c = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarpSize;
       c < channels; c += warps) {
    const double* ps = partials.s + c * per_channel;
    const double* pz = partials.z + c * per_channel;
    double s = 0.0;
    double z = 0.0;
    for (int64_t j = lane; j < per_channel; j += kWarpSize) {
      s += ps[j];
      z += pz[j];
    }
    s = warp_sum(s) * grad_factor;
    z = warp_sum(z) * grad_factor;
    if (lane == 0) {
      if (dscale_double) {
        static_cast<double*>(dscale)[c] = s;
      } else {
        static_cast<float*>(dscale)[c] = static_cast<float>(s);
      }
      if (dzero_point_double) {
        static_cast<double*>(dzero_point)[c] = z;
      } else {
        static_cast<float*>(dzero_point)[c] = static_cast<float>(z);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Launch configuration.

struct LaunchPlan {
  bool columns = false;
  int unit = 1;  // rows kernel: elements per access (1, or 16 bytes' worth)
  RowsShape rows{};
  ColumnsShape cols{};
  dim3 grid;
  dim3 block;
  int64_t partials_per_channel = 0;
};

// Enough resident blocks to fill every SM (2048 threads each on sm_80 / sm_90). An attribute
// query, not a synchronisation. (ATen/cuda/CUDAContext.h, home of getCurrentDeviceProperties,
// pulls in cuSPARSE/cuBLAS headers that a bare CUDA toolkit lacks.)
int64_t target_blocks(c10::DeviceIndex device) {
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  return static_cast<int64_t>(std::max(sms, 1)) * (2048 / kThreads);
}

bool is_aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

LaunchPlan make_plan(const ops::FakeQuantProblem& p, int vec_unit, bool aligned) {
  LaunchPlan plan;
  const int64_t channels = p.channels;
  // One scale for the whole (dense) tensor: it is a single row of numel elements.
  const int64_t outer = channels == 1 ? 1 : p.outer;
  const int64_t inner = channels == 1 ? p.numel() : p.inner;
  const int64_t target = target_blocks(p.input.device().index());

  if (channels > 1 && inner < kColumnsMaxInner) {
    plan.columns = true;
    const int64_t columns = channels * inner;
    int bx = 1;
    while (bx < kWarpSize && bx < columns) bx *= 2;
    const int by = kThreads / bx;
    const int64_t gx = std::min(ceil_div(columns, bx), kMaxGridX);
    const int64_t gy = std::max<int64_t>(
        1, std::min({ceil_div(target, gx), ceil_div(outer, by), kMaxGridY}));
    plan.cols = {outer, inner, columns};
    plan.block = dim3(bx, by);
    plan.grid = dim3(static_cast<unsigned>(gx), static_cast<unsigned>(gy));
    plan.partials_per_channel = inner * gy;
    return plan;
  }

  const bool single_row = outer == 1 && channels == 1;
  plan.unit = aligned && (single_row || inner % vec_unit == 0) ? vec_unit : 1;
  const int64_t tail = single_row ? inner % plan.unit : 0;
  const int64_t inner_main = inner - tail;
  const int64_t units = outer * (inner_main / plan.unit);
  const int64_t gy = std::min(channels, kMaxGridY);
  const int64_t splits = std::max<int64_t>(
      1, std::min(ceil_div(target, gy), ceil_div(units, kThreads)));
  plan.rows = {outer, channels, inner_main, tail, ceil_div(units, splits)};
  plan.block = dim3(kThreads);
  plan.grid = dim3(static_cast<unsigned>(splits), static_cast<unsigned>(gy));
  plan.partials_per_channel = splits;
  return plan;
}

template <typename Op>
void launch(const Op& op, const LaunchPlan& plan, const QParamsArgs& qa, const Partials& partials) {
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  if (plan.columns) {
    fake_quant_columns_kernel<Op><<<plan.grid, plan.block, 0, stream>>>(op, plan.cols, qa,
                                                                         partials);
  } else if (plan.unit == Op::kVec) {
    fake_quant_rows_kernel<Op::kVec, Op><<<plan.grid, plan.block, 0, stream>>>(op, plan.rows, qa,
                                                                               partials);
  } else {
    fake_quant_rows_kernel<1, Op><<<plan.grid, plan.block, 0, stream>>>(op, plan.rows, qa,
                                                                        partials);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// ---------------------------------------------------------------------------------------------
// Host wrappers: checks -> device guard -> allocate -> early return when empty -> dispatch ->
// launch. Same structure, results and dtypes as csrc/ops/cpu/fake_quantize.cpp.

at::Tensor forward_impl(OpId id, const char* op, const at::Tensor& input,
                        const at::Tensor& scale, const at::Tensor& zero_point, int64_t quant_min,
                        int64_t quant_max, std::optional<int64_t> axis) {
  const auto p = ops::prepare_fake_quant(op, input, scale, zero_point, quant_min, quant_max,
                                         axis, at::Tensor());
  const c10::cuda::CUDAGuard device_guard(input.device());
  auto out = ops::make_output(input, p);
  if (p.numel() == 0) return out.out;
  const QParamsArgs qa = make_qparams_args(id, scale, zero_point, quant_min, quant_max);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, p.input.scalar_type(), "fake_quantize_cuda", [&] {
        const ForwardOp<scalar_t> k{p.input.const_data_ptr<scalar_t>(),
                                    out.work.mutable_data_ptr<scalar_t>()};
        const LaunchPlan plan = make_plan(p, k.kVec, is_aligned16(k.x) && is_aligned16(k.y));
        launch(k, plan, qa, Partials{});
      });
  out.finish();
  return out.out;
}

at::Tensor fake_quantize_cuda(const at::Tensor& input, const at::Tensor& scale,
                              const at::Tensor& zero_point, int64_t quant_min, int64_t quant_max,
                              std::optional<int64_t> axis) {
  return forward_impl(OpId::kFakeQuantize, "fake_quantize", input, scale, zero_point, quant_min,
                      quant_max, axis);
}

at::Tensor fake_quantize_lsq_cuda(const at::Tensor& input, const at::Tensor& scale,
                                  const at::Tensor& zero_point, int64_t quant_min,
                                  int64_t quant_max, std::optional<int64_t> axis,
                                  double grad_factor, double min_scale) {
  ops::check_grad_factor("fake_quantize_lsq", grad_factor);
  return forward_impl(OpId::kFakeQuantizeLsq, "fake_quantize_lsq", input,
                      ops::floor_scale("fake_quantize_lsq", scale, min_scale), zero_point,
                      quant_min, quant_max, axis);
}

at::Tensor fake_quantize_backward_cuda(const at::Tensor& grad, const at::Tensor& input,
                                       const at::Tensor& scale, const at::Tensor& zero_point,
                                       int64_t quant_min, int64_t quant_max,
                                       std::optional<int64_t> axis) {
  const char* op = "fake_quantize_backward";
  const auto p = ops::prepare_fake_quant(op, input, scale, zero_point, quant_min, quant_max,
                                         axis, grad);
  const c10::cuda::CUDAGuard device_guard(input.device());
  auto dx = ops::make_output(input, p);
  if (p.numel() == 0) return dx.out;
  const QParamsArgs qa =
      make_qparams_args(OpId::kFakeQuantizeBackward, scale, zero_point, quant_min, quant_max);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, p.input.scalar_type(), "fake_quantize_backward_cuda", [&] {
        const SteBackwardOp<scalar_t> k{p.grad.const_data_ptr<scalar_t>(),
                                        p.input.const_data_ptr<scalar_t>(),
                                        dx.work.mutable_data_ptr<scalar_t>()};
        const bool aligned = is_aligned16(k.dy) && is_aligned16(k.x) && is_aligned16(k.dx);
        launch(k, make_plan(p, k.kVec, aligned), qa, Partials{});
      });
  dx.finish();
  return dx.out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> fake_quantize_lsq_backward_cuda(
    const at::Tensor& grad, const at::Tensor& input, const at::Tensor& scale,
    const at::Tensor& zero_point, int64_t quant_min, int64_t quant_max,
    std::optional<int64_t> axis, double grad_factor) {
  const char* op = "fake_quantize_lsq_backward";
  ops::check_grad_factor(op, grad_factor);
  const auto p = ops::prepare_fake_quant(op, input, scale, zero_point, quant_min, quant_max,
                                         axis, grad);
  const c10::cuda::CUDAGuard device_guard(input.device());
  auto dx = ops::make_output(input, p);
  const auto dz_dtype = ops::zero_point_grad_dtype(scale, zero_point);
  if (p.numel() == 0) {
    return {dx.out, at::zeros(scale.sizes(), scale.options()),
            at::zeros(zero_point.sizes(), zero_point.options().dtype(dz_dtype))};
  }
  at::Tensor dscale = at::empty(scale.sizes(), scale.options());
  at::Tensor dzero_point = at::empty(zero_point.sizes(), zero_point.options().dtype(dz_dtype));
  const QParamsArgs qa =
      make_qparams_args(OpId::kFakeQuantizeLsqBackward, scale, zero_point, quant_min, quant_max);
  int64_t per_channel = 0;
  at::Tensor partial_buffer;
  Partials partials;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, p.input.scalar_type(), "fake_quantize_lsq_backward_cuda", [&] {
        const LsqBackwardOp<scalar_t> k{p.grad.const_data_ptr<scalar_t>(),
                                        p.input.const_data_ptr<scalar_t>(),
                                        dx.work.mutable_data_ptr<scalar_t>()};
        const bool aligned = is_aligned16(k.dy) && is_aligned16(k.x) && is_aligned16(k.dx);
        const LaunchPlan plan = make_plan(p, k.kVec, aligned);
        per_channel = plan.partials_per_channel;
        const int64_t slots = p.channels * per_channel;
        partial_buffer = at::empty({2, slots}, input.options().dtype(at::kDouble));
        partials = {partial_buffer.mutable_data_ptr<double>(),
                    partial_buffer.mutable_data_ptr<double>() + slots};
        launch(k, plan, qa, partials);
      });
  const int64_t warps_per_block = kThreads / kWarpSize;
  const int64_t blocks = std::min(ceil_div(p.channels, warps_per_block), kMaxGridX);
  lsq_finalize_kernel<<<static_cast<unsigned>(blocks), kThreads, 0,
                        at::cuda::getCurrentCUDAStream()>>>(
      partials, p.channels, per_channel, grad_factor, dscale.mutable_data_ptr(),
      dscale.scalar_type() == at::kDouble, dzero_point.mutable_data_ptr(),
      dzero_point.scalar_type() == at::kDouble);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  dx.finish();
  return {dx.out, dscale, dzero_point};
}

}  // namespace
}  // namespace cuda
}  // namespace torchqat

TORCH_LIBRARY_IMPL(torchqat, CUDA, m) {
  m.impl("fake_quantize", &torchqat::cuda::fake_quantize_cuda);
  m.impl("fake_quantize_backward", &torchqat::cuda::fake_quantize_backward_cuda);
  m.impl("fake_quantize_lsq", &torchqat::cuda::fake_quantize_lsq_cuda);
  m.impl("fake_quantize_lsq_backward", &torchqat::cuda::fake_quantize_lsq_backward_cuda);
}
