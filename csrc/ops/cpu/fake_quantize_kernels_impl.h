// The CPU kernels of the fake-quant operators. Included once per instruction set by
// fake_quantize_kernels_{default,avx2,avx512}.cpp, each of which first defines CPU_CAPABILITY
// (the inline namespace at::vec and these kernels live in) and ATen's CPU_CAPABILITY_<ISA>
// macro, so every copy has its own symbols. Formulas: csrc/core/fake_quant.h.
//
// Work is split over flat element ranges of the tensor in memory order, viewed as
// [outer, channels, inner]. Inside a range the kernels walk segments that share one layout:
//   inner > 1 or channels == 1: runs of `inner` elements with one scale, broadcast into vectors;
//   inner == 1 (channels last, or the last axis): runs across channels, parameters loaded as
//   vectors from per-channel arrays.
// Each segment is a vector body with a scalar tail; both round half to even.

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "core/fake_quant.h"
#include "ops/cpu/fake_quantize_kernels.h"

#ifndef TORCHQAT_KERNELS_NAME
#error "define TORCHQAT_KERNELS_NAME before including fake_quantize_kernels_impl.h"
#endif

namespace torchqat {
namespace cpu {
namespace CPU_CAPABILITY {
namespace {

using at::vec::Vectorized;

// Elements per parallel task: large enough to amortise a task, small enough for two cores to
// split 1M elements evenly.
constexpr int64_t kGrain = 32768;

// Software prefetch, kPrefetchBytes ahead of every vector load of a streamed input. The
// element-wise passes run ~12 instructions per 64-byte line, so the out-of-order window holds
// about a third of the lines in flight that ATen's one-instruction passes (relu, copy) get, and
// on tensors that come from memory they ran 1.2-1.35 x slower than those passes while equal on
// cached data. One prefetch per vector restores relu's rate (benchmarks/bench_fake_quant_dram.py;
// docs/benchmarks.md, session 12). Addresses past the end are harmless: a prefetch never faults,
// and the address is formed as an integer, not as a pointer past the array.
constexpr uintptr_t kPrefetchBytes = 4096;

template <typename scalar_t>
inline void prefetch_ahead(const scalar_t* p) {
  __builtin_prefetch(reinterpret_cast<const void*>(reinterpret_cast<uintptr_t>(p) + kPrefetchBytes),
                     /*rw=*/0, /*locality=*/2);
}

// The same for an output stream, with intent to write (the line arrives owned, so the store
// that follows does not wait for its read-for-ownership).
template <typename scalar_t>
inline void prefetch_ahead_for_write(scalar_t* p) {
  __builtin_prefetch(reinterpret_cast<void*>(reinterpret_cast<uintptr_t>(p) + kPrefetchBytes),
                     /*rw=*/1, /*locality=*/2);
}

// Half and bfloat16 compute in float32; float64 computes in float64.
template <typename scalar_t>
using opmath_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

template <typename scalar_t, typename T = opmath_t<scalar_t>>
inline Vectorized<T> load_opmath(const scalar_t* p) {
  if constexpr (std::is_same_v<scalar_t, T>) {
    return Vectorized<T>::loadu(p);
  } else {
    Vectorized<float> out;
    at::vec::load_to_float(p, out);
    return out;
  }
}

template <typename scalar_t, typename T = opmath_t<scalar_t>>
inline void store_opmath(scalar_t* p, const Vectorized<T>& v) {
  if constexpr (std::is_same_v<scalar_t, T>) {
    v.store(p);
  } else {
    at::vec::convert_from_float<scalar_t>(v, v).store(p, Vectorized<float>::size());
  }
}

// Per-channel parameters in the compute type, plus the derived constants the backward needs.
template <typename T>
struct Params {
  std::vector<T> s, inv_s, z, qmin_minus_z, qmax_minus_z, neg_s;
  T qmin, qmax;

  Params(const FakeQuantQParams& qp, int64_t channels)
      : qmin(static_cast<T>(qp.quant_min)), qmax(static_cast<T>(qp.quant_max)) {
    for (int64_t c = 0; c < channels; ++c) {
      const T sc = static_cast<T>(qp.scale[c]);
      const T zc = static_cast<T>(qp.zero_point[c]);
      s.push_back(sc);
      inv_s.push_back(core::inverse_scale(sc));
      z.push_back(zc);
      qmin_minus_z.push_back(qmin - zc);
      qmax_minus_z.push_back(qmax - zc);
      neg_s.push_back(-sc);
    }
  }
};

// One channel's (or one vector of channels') parameters as vectors.
template <typename T>
struct VecParams {
  Vectorized<T> s, inv_s, z, qmin, qmax, qmin_minus_z, qmax_minus_z, neg_s;

  // All lanes hold channel c.
  static VecParams broadcast(const Params<T>& p, int64_t c) {
    return {Vectorized<T>(p.s[c]),        Vectorized<T>(p.inv_s[c]),
            Vectorized<T>(p.z[c]),        Vectorized<T>(p.qmin),
            Vectorized<T>(p.qmax),        Vectorized<T>(p.qmin_minus_z[c]),
            Vectorized<T>(p.qmax_minus_z[c]), Vectorized<T>(p.neg_s[c])};
  }
  // Lane k holds channel c + k.
  static VecParams gather(const Params<T>& p, int64_t c) {
    return {Vectorized<T>::loadu(&p.s[c]),        Vectorized<T>::loadu(&p.inv_s[c]),
            Vectorized<T>::loadu(&p.z[c]),        Vectorized<T>(p.qmin),
            Vectorized<T>(p.qmax),                Vectorized<T>::loadu(&p.qmin_minus_z[c]),
            Vectorized<T>::loadu(&p.qmax_minus_z[c]), Vectorized<T>::loadu(&p.neg_s[c])};
  }
};

// round_half_even(x * inv_s) + z, the unclamped quantized value.
template <typename T>
inline Vectorized<T> unclamped(const Vectorized<T>& x, const VecParams<T>& p) {
  return (x * p.inv_s).round() + p.z;
}

template <typename T>
inline Vectorized<T> fake_quantize_vec(const Vectorized<T>& x, const VecParams<T>& p) {
  const Vectorized<T> v = unclamped(x, p);
  // maximum/minimum propagate NaN, so a NaN input stays NaN.
  const Vectorized<T> q = at::vec::minimum(at::vec::maximum(v, p.qmin), p.qmax);
  return (q - p.z) * p.s;
}

template <typename T>
inline Vectorized<T> inside_mask(const Vectorized<T>& x, const VecParams<T>& p) {
  const Vectorized<T> v = unclamped(x, p);
  return (v >= p.qmin) & (v <= p.qmax);  // all bits set where inside; NaN compares false
}

// The LSQ gradients of one vector of elements: the masks are disjoint, so OR selects.
template <typename T>
inline void lsq_vec(const Vectorized<T>& dy, const Vectorized<T>& x, const VecParams<T>& p,
                    Vectorized<T>& dx, Vectorized<T>& ds, Vectorized<T>& dz) {
  const Vectorized<T> v = unclamped(x, p);
  const Vectorized<T> below = v < p.qmin;
  const Vectorized<T> above = v > p.qmax;
  const Vectorized<T> inside = (v >= p.qmin) & (v <= p.qmax);
  const Vectorized<T> y = (v - p.z) * p.s;
  dx = dy & inside;
  ds = ((dy * (y - x) * p.inv_s) & inside) | ((dy * p.qmin_minus_z) & below) |
       ((dy * p.qmax_minus_z) & above);
  dz = (dy * p.neg_s) & (below | above);
}

#if defined(CPU_CAPABILITY_AVX512)
// float32 on AVX-512: the functions above, the same operations in the same order (so the same
// bits), on mask registers. at::vec builds every comparison and every NaN-propagating minimum /
// maximum as an all-ones vector (a compare, a masked set and an OR); with those, the element-wise
// passes issued about twice the vector instructions these need (benchmarks/bench_fake_quant_dram.py
// times both builds against ATen passes that move the same bytes; docs/benchmarks.md).
// Overloads, not specialisations: a non-template function wins over the templates above.
inline __m512 all_ones_ps() { return _mm512_castsi512_ps(_mm512_set1_epi32(-1)); }

inline __m512 unclamped_avx512(__m512 x, const VecParams<float>& p) {
  return _mm512_add_ps(_mm512_roundscale_ps(_mm512_mul_ps(x, p.inv_s),
                                            _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC),
                       p.z);
}

// v >= qmin && v <= qmax (false for NaN).
inline __mmask16 inside_avx512(__m512 v, const VecParams<float>& p) {
  return _mm512_mask_cmp_ps_mask(_mm512_cmp_ps_mask(v, p.qmin, _CMP_GE_OQ), v, p.qmax,
                                 _CMP_LE_OQ);
}

inline Vectorized<float> fake_quantize_vec(const Vectorized<float>& x,
                                           const VecParams<float>& p) {
  const __m512 v = unclamped_avx512(x, p);
  // minimum(maximum(v, qmin), qmax): the bounds are never NaN, so a lane is NaN exactly where v
  // is, and at::vec makes it all ones there.
  const __m512 q = _mm512_mask_mov_ps(_mm512_min_ps(_mm512_max_ps(v, p.qmin), p.qmax),
                                      _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), all_ones_ps());
  return _mm512_mul_ps(_mm512_sub_ps(q, p.z), p.s);
}

inline Vectorized<float> inside_mask(const Vectorized<float>& x, const VecParams<float>& p) {
  return _mm512_maskz_mov_ps(inside_avx512(unclamped_avx512(x, p), p), all_ones_ps());
}

inline void lsq_vec(const Vectorized<float>& dy_vec, const Vectorized<float>& x_vec,
                    const VecParams<float>& p, Vectorized<float>& dx, Vectorized<float>& ds,
                    Vectorized<float>& dz) {
  const __m512 dy = dy_vec;
  const __m512 x = x_vec;
  const __m512 v = unclamped_avx512(x, p);
  const __mmask16 below = _mm512_cmp_ps_mask(v, p.qmin, _CMP_LT_OQ);
  const __mmask16 above = _mm512_cmp_ps_mask(v, p.qmax, _CMP_GT_OQ);
  const __mmask16 inside = inside_avx512(v, p);
  const __m512 y = _mm512_mul_ps(_mm512_sub_ps(v, p.z), p.s);
  dx = _mm512_maskz_mov_ps(inside, dy);
  // The masks are disjoint; a lane in none of them (NaN) is +0, as the OR of three zeros.
  __m512 scale_term =
      _mm512_maskz_mul_ps(inside, _mm512_mul_ps(dy, _mm512_sub_ps(y, x)), p.inv_s);
  scale_term = _mm512_mask_mul_ps(scale_term, below, dy, p.qmin_minus_z);
  scale_term = _mm512_mask_mul_ps(scale_term, above, dy, p.qmax_minus_z);
  ds = scale_term;
  dz = _mm512_maskz_mul_ps(static_cast<__mmask16>(below | above), dy, p.neg_s);
}
#endif  // CPU_CAPABILITY_AVX512

// silu_backward(g, pre) = g * sigmoid(pre) * (1 + pre * (1 - sigmoid(pre))), in ATen's order.
// sigmoid(pre) is x / pre, from the SiLU output x = pre * sigmoid(pre) the kernel reads anyway:
// a division instead of an exponential, which made the fused pass compute-bound. In float32 and
// float64, x / pre carries two roundings where ATen's 1 / (1 + exp(-pre)) carries its own few,
// so the results agree up to float rounding; float16 / bfloat16 compute from the stored x, which
// has too few bits for that, so they take ATen's exponential. sigmoid(0) = 1/2 (x / pre is 0/0).
template <bool kFromOutput, typename T>
inline T silu_grad(T g, T pre, T x) {
  T sigmoid;
  if constexpr (kFromOutput) {
    sigmoid = pre == T(0) ? T(0.5) : x / pre;
  } else {
    sigmoid = T(1) / (T(1) + std::exp(-pre));
  }
  return g * sigmoid * (T(1) + pre * (T(1) - sigmoid));
}

template <bool kFromOutput, typename T>
inline Vectorized<T> silu_grad_vec(const Vectorized<T>& g, const Vectorized<T>& pre,
                                   const Vectorized<T>& x) {
  const Vectorized<T> one(T(1));
  Vectorized<T> sigmoid;
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (kFromOutput && std::is_same_v<T, float>) {
    // The blend below on a mask register (see the AVX-512 overloads above).
    sigmoid = _mm512_mask_mov_ps(
        _mm512_div_ps(x, pre), _mm512_cmp_ps_mask(pre, _mm512_setzero_ps(), _CMP_EQ_OQ),
        _mm512_set1_ps(0.5f));
  } else
#endif
  if constexpr (kFromOutput) {
    sigmoid = Vectorized<T>::blendv(x / pre, Vectorized<T>(T(0.5)), pre == Vectorized<T>(T(0)));
  } else {
    sigmoid = one / (one + pre.neg().exp());
  }
  return g * sigmoid * (one + pre * (one - sigmoid));
}

// Calls seg(begin, end, c) for every maximal run inside [begin, end) that shares channel c
// (broadcast layout), or seg(begin, end, first_channel) for runs across channels (gather layout).
template <typename Segment>
inline void for_each_segment(int64_t begin, int64_t end, const FakeQuantShape& sh,
                             const Segment& seg) {
  if (sh.inner == 1 && sh.channels > 1) {
    int64_t i = begin;
    while (i < end) {
      const int64_t c = i % sh.channels;
      const int64_t stop = std::min(end, i + (sh.channels - c));
      seg(i, stop, c);
      i = stop;
    }
  } else {
    int64_t i = begin;
    while (i < end) {
      const int64_t row = i / sh.inner;
      const int64_t stop = std::min(end, (row + 1) * sh.inner);
      seg(i, stop, row % sh.channels);
      i = stop;
    }
  }
}

template <typename scalar_t>
void forward_typed(const scalar_t* x_ptr, scalar_t* y_ptr, FakeQuantShape sh,
                   const FakeQuantQParams& qp) {
  using T = opmath_t<scalar_t>;
  using Vec = Vectorized<T>;
  constexpr int64_t W = Vec::size();
  const Params<T> p(qp, sh.channels);
  const bool gather = sh.inner == 1 && sh.channels > 1;
  const int64_t numel = sh.outer * sh.channels * sh.inner;
  at::parallel_for(0, numel, kGrain, [&](int64_t begin, int64_t end) {
    for_each_segment(begin, end, sh, [&](int64_t b, int64_t e, int64_t c) {
      // Local copies: the vector stores may alias anything, so pointers read through the
      // closure would be reloaded on every iteration.
      const scalar_t* const x = x_ptr;
      scalar_t* const y = y_ptr;
      int64_t i = b;
      if (gather) {
        for (; i + W <= e; i += W, c += W) {
          prefetch_ahead(x + i);
          prefetch_ahead_for_write(y + i);
          store_opmath(y + i, fake_quantize_vec(load_opmath(x + i), VecParams<T>::gather(p, c)));
        }
        for (; i < e; ++i, ++c) {
          y[i] = static_cast<scalar_t>(core::fake_quantize_value<T>(
              static_cast<T>(x[i]), p.s[c], p.inv_s[c], p.z[c], p.qmin, p.qmax));
        }
      } else {
        const VecParams<T> vp = VecParams<T>::broadcast(p, c);
        for (; i + W <= e; i += W) {
          prefetch_ahead(x + i);
          prefetch_ahead_for_write(y + i);
          store_opmath(y + i, fake_quantize_vec(load_opmath(x + i), vp));
        }
        for (; i < e; ++i) {
          y[i] = static_cast<scalar_t>(core::fake_quantize_value<T>(
              static_cast<T>(x[i]), p.s[c], p.inv_s[c], p.z[c], p.qmin, p.qmax));
        }
      }
    });
  });
}

template <typename scalar_t>
void ste_backward_typed(const scalar_t* dy_ptr, const scalar_t* x_ptr, scalar_t* dx_ptr,
                        FakeQuantShape sh, const FakeQuantQParams& qp) {
  using T = opmath_t<scalar_t>;
  using Vec = Vectorized<T>;
  constexpr int64_t W = Vec::size();
  const Params<T> p(qp, sh.channels);
  const bool gather = sh.inner == 1 && sh.channels > 1;
  const int64_t numel = sh.outer * sh.channels * sh.inner;
  auto scalar = [&](int64_t i, int64_t c) {
    const auto e = core::fake_quantize_element<T>(static_cast<T>(x_ptr[i]), p.s[c], p.inv_s[c],
                                                  p.z[c], p.qmin, p.qmax);
    dx_ptr[i] = e.region == core::Region::kInside ? dy_ptr[i] : static_cast<scalar_t>(0);
  };
  at::parallel_for(0, numel, kGrain, [&](int64_t begin, int64_t end) {
    for_each_segment(begin, end, sh, [&](int64_t b, int64_t e, int64_t c) {
      const scalar_t* const dy = dy_ptr;  // local copies, as in forward_typed
      const scalar_t* const x = x_ptr;
      scalar_t* const dx = dx_ptr;
      int64_t i = b;
      if (gather) {
        for (; i + W <= e; i += W, c += W) {
          prefetch_ahead(dy + i);
          prefetch_ahead(x + i);
          prefetch_ahead_for_write(dx + i);
          store_opmath(dx + i, load_opmath(dy + i) & inside_mask(load_opmath(x + i), VecParams<T>::gather(p, c)));
        }
        for (; i < e; ++i, ++c) scalar(i, c);
      } else {
        const VecParams<T> vp = VecParams<T>::broadcast(p, c);
        for (; i + W <= e; i += W) {
          prefetch_ahead(dy + i);
          prefetch_ahead(x + i);
          prefetch_ahead_for_write(dx + i);
          store_opmath(dx + i, load_opmath(dy + i) & inside_mask(load_opmath(x + i), vp));
        }
        for (; i < e; ++i) scalar(i, c);
      }
    });
  });
}

// One pass: writes dx and reduces the scale and zero-point gradients. Each thread sums into its
// own per-channel partials (vector lanes in T, flushed into double every block so that sums over
// millions of elements keep their precision); the partials are added in thread order at the end,
// so the result is deterministic for a given thread count.
//
// kSilu: x is silu(pre) and dx is the gradient with respect to pre, dy * mask(x) * silu'(pre)
// (silu_grad): one pass instead of LSQ's and then SiLU's.
template <bool kSilu, typename scalar_t>
void lsq_backward_typed(const scalar_t* dy_ptr, const scalar_t* x_ptr, const scalar_t* pre_ptr,
                        scalar_t* dx_ptr, FakeQuantShape sh, const FakeQuantQParams& qp,
                        double* dscale, double* dzero_point) {
  using T = opmath_t<scalar_t>;
  using Vec = Vectorized<T>;
  constexpr int64_t W = Vec::size();
  constexpr int64_t kFlush = 4096;  // elements summed in T before moving into double
  // silu_grad's sigmoid from x; static, so the lambdas below use it without a capture.
  static constexpr bool kFromOutput = std::is_same_v<scalar_t, T>;
  const Params<T> p(qp, sh.channels);
  const bool gather = sh.inner == 1 && sh.channels > 1;
  const int64_t C = sh.channels;
  const int64_t numel = sh.outer * C * sh.inner;
  const int nthreads = std::max(1, at::get_num_threads());
  std::vector<double> partial_s(static_cast<size_t>(nthreads) * C, 0.0);
  std::vector<double> partial_z(static_cast<size_t>(nthreads) * C, 0.0);

  at::parallel_for(0, numel, kGrain, [&](int64_t begin, int64_t end) {
    const int tid = std::min(at::get_thread_num(), nthreads - 1);
    double* ps = partial_s.data() + static_cast<size_t>(tid) * C;
    double* pz = partial_z.data() + static_cast<size_t>(tid) * C;
    // Per-lane sums for the gather layout, one slot per channel, flushed with the rows.
    std::vector<T> lane_s, lane_z;
    int64_t rows_since_flush = 0;
    if (gather) {
      lane_s.assign(C, T(0));
      lane_z.assign(C, T(0));
    }
    auto flush_lanes = [&]() {
      for (int64_t c = 0; c < C; ++c) {
        ps[c] += lane_s[c];
        pz[c] += lane_z[c];
        lane_s[c] = T(0);
        lane_z[c] = T(0);
      }
      rows_since_flush = 0;
    };
    auto scalar = [&](int64_t i, int64_t c, T& acc_s, T& acc_z) {
      const auto g = core::lsq_element_grad<T>(static_cast<T>(dy_ptr[i]), static_cast<T>(x_ptr[i]),
                                               p.s[c], p.inv_s[c], p.z[c], p.qmin, p.qmax);
      if constexpr (kSilu) {
        dx_ptr[i] = static_cast<scalar_t>(silu_grad<kFromOutput>(
            g.dx, static_cast<T>(pre_ptr[i]), static_cast<T>(x_ptr[i])));
      } else {
        dx_ptr[i] = static_cast<scalar_t>(g.dx);
      }
      acc_s += g.dscale;
      acc_z += g.dzero_point;
    };

    for_each_segment(begin, end, sh, [&](int64_t b, int64_t e, int64_t c) {
      const scalar_t* const dy = dy_ptr;  // local copies, as in forward_typed
      const scalar_t* const x = x_ptr;
      const scalar_t* const pre = pre_ptr;
      scalar_t* const dx = dx_ptr;
      // dx of one vector: the LSQ input gradient, times silu'(pre) when fused.
      const auto store_dx = [dx, pre, x](int64_t at, const Vec& v) {
        prefetch_ahead_for_write(dx + at);
        if constexpr (kSilu) {
          prefetch_ahead(pre + at);
          store_opmath(dx + at,
                       silu_grad_vec<kFromOutput>(v, load_opmath(pre + at), load_opmath(x + at)));
        } else {
          store_opmath(dx + at, v);
        }
      };
      int64_t i = b;
      if (gather) {
        T* const ls = lane_s.data();
        T* const lz = lane_z.data();
        for (; i + W <= e; i += W, c += W) {
          Vec vdx, vds, vdz;
          prefetch_ahead(dy + i);
          prefetch_ahead(x + i);
          lsq_vec(load_opmath(dy + i), load_opmath(x + i), VecParams<T>::gather(p, c), vdx, vds, vdz);
          store_dx(i, vdx);
          (Vec::loadu(ls + c) + vds).store(ls + c);
          (Vec::loadu(lz + c) + vdz).store(lz + c);
        }
        for (; i < e; ++i, ++c) scalar(i, c, lane_s[c], lane_z[c]);
        if (++rows_since_flush * C >= kFlush) flush_lanes();
      } else {
        const VecParams<T> vp = VecParams<T>::broadcast(p, c);
        while (i < e) {
          const int64_t block_end = std::min(e, i + kFlush);
          Vec acc_s(T(0)), acc_z(T(0));
          for (; i + W <= block_end; i += W) {
            Vec vdx, vds, vdz;
            prefetch_ahead(dy + i);
            prefetch_ahead(x + i);
            lsq_vec(load_opmath(dy + i), load_opmath(x + i), vp, vdx, vds, vdz);
            store_dx(i, vdx);
            acc_s = acc_s + vds;
            acc_z = acc_z + vdz;
          }
          T tail_s(0), tail_z(0);
          for (; i < block_end; ++i) scalar(i, c, tail_s, tail_z);
          ps[c] += static_cast<double>(at::vec::vec_reduce_all<T>(
                       [](Vec a, Vec b) { return a + b; }, acc_s)) +
                   tail_s;
          pz[c] += static_cast<double>(at::vec::vec_reduce_all<T>(
                       [](Vec a, Vec b) { return a + b; }, acc_z)) +
                   tail_z;
        }
      }
    });
    if (gather) flush_lanes();
  });

  for (int64_t c = 0; c < C; ++c) {
    double s = 0.0, z = 0.0;
    for (int t = 0; t < nthreads; ++t) {
      s += partial_s[static_cast<size_t>(t) * C + c];
      z += partial_z[static_cast<size_t>(t) * C + c];
    }
    dscale[c] = s;
    dzero_point[c] = z;
  }
}

// LSQ's per-element derivative of the output with respect to a per-tensor scale (the lsq_vec
// term with dy = 1) into m, and clipped[i] = 1 where x[i] quantizes outside the range. For the
// model input's adjoint scale gradient (python/torchqat/nn/input_scale_grad.py).
template <typename scalar_t>
void lsq_scale_map_typed(const scalar_t* x_ptr, scalar_t* m_ptr, uint8_t* clipped_ptr,
                         int64_t numel, const FakeQuantQParams& qp) {
  using T = opmath_t<scalar_t>;
  using Vec = Vectorized<T>;
  constexpr int64_t W = Vec::size();
  const Params<T> p(qp, 1);
  at::parallel_for(0, numel, kGrain, [&](int64_t begin, int64_t end) {
    const scalar_t* const x = x_ptr;  // local copies, as in forward_typed
    scalar_t* const m = m_ptr;
    uint8_t* const clipped = clipped_ptr;
    const VecParams<T> vp = VecParams<T>::broadcast(p, 0);
    int64_t i = begin;
    const Vec one(T(1));
    for (; i + W <= end; i += W) {
      // lsq_vec with dy = 1: ds is the map, dz is -s (nonzero: s > 0) exactly where clipped.
      Vec dx, ds, dz;
      prefetch_ahead(x + i);
      prefetch_ahead_for_write(m + i);
      lsq_vec(one, load_opmath(x + i), vp, dx, ds, dz);
      store_opmath(m + i, ds);
      T lanes[W];
      dz.store(lanes);
      for (int64_t k = 0; k < W; ++k) clipped[i + k] = lanes[k] != T(0);
    }
    for (; i < end; ++i) {
      const auto g = core::lsq_element_grad<T>(T(1), static_cast<T>(x[i]), p.s[0], p.inv_s[0],
                                               p.z[0], p.qmin, p.qmax);
      m[i] = static_cast<scalar_t>(g.dscale);
      clipped[i] = g.dzero_point != T(0);
    }
  });
}

void lsq_scale_map(c10::ScalarType dtype, const void* x, void* m, uint8_t* clipped,
                   int64_t numel, FakeQuantQParams qp) {
  AT_DISPATCH_FLOATING_TYPES(dtype, "fake_quantize_lsq_input_maps", [&] {
    lsq_scale_map_typed(static_cast<const scalar_t*>(x), static_cast<scalar_t*>(m), clipped,
                        numel, qp);
  });
}

void forward(c10::ScalarType dtype, const void* x, void* y, FakeQuantShape sh,
             FakeQuantQParams qp) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "fake_quantize", [&] {
    forward_typed(static_cast<const scalar_t*>(x), static_cast<scalar_t*>(y), sh, qp);
  });
}

void ste_backward(c10::ScalarType dtype, const void* dy, const void* x, void* dx,
                  FakeQuantShape sh, FakeQuantQParams qp) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "fake_quantize_backward", [&] {
    ste_backward_typed(static_cast<const scalar_t*>(dy), static_cast<const scalar_t*>(x),
                       static_cast<scalar_t*>(dx), sh, qp);
  });
}

void lsq_backward(c10::ScalarType dtype, const void* dy, const void* x, void* dx,
                  FakeQuantShape sh, FakeQuantQParams qp, double* dscale, double* dzero_point) {
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, dtype, "fake_quantize_lsq_backward", [&] {
        lsq_backward_typed<false>(static_cast<const scalar_t*>(dy),
                                  static_cast<const scalar_t*>(x),
                                  static_cast<const scalar_t*>(nullptr),
                                  static_cast<scalar_t*>(dx), sh, qp, dscale, dzero_point);
      });
}

void lsq_silu_backward(c10::ScalarType dtype, const void* dy, const void* x, const void* pre,
                       void* dx, FakeQuantShape sh, FakeQuantQParams qp, double* dscale,
                       double* dzero_point) {
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, dtype, "fake_quantize_lsq_after_silu_backward_", [&] {
        lsq_backward_typed<true>(static_cast<const scalar_t*>(dy),
                                 static_cast<const scalar_t*>(x),
                                 static_cast<const scalar_t*>(pre), static_cast<scalar_t*>(dx),
                                 sh, qp, dscale, dzero_point);
      });
}

}  // namespace
}  // namespace CPU_CAPABILITY

const FakeQuantKernels& TORCHQAT_KERNELS_NAME() {
  static const FakeQuantKernels kernels{TORCHQAT_KERNELS_ISA, &CPU_CAPABILITY::forward,
                                        &CPU_CAPABILITY::ste_backward,
                                        &CPU_CAPABILITY::lsq_backward,
                                        &CPU_CAPABILITY::lsq_silu_backward,
                                        &CPU_CAPABILITY::lsq_scale_map};
  return kernels;
}

}  // namespace cpu
}  // namespace torchqat
