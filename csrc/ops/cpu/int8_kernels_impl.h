// The CPU kernels of the integer operators. Included once per instruction set by
// int8_kernels_{default,avx2,avx512_vnni}.cpp, each of which first selects the target with
// `#pragma GCC target` and names the namespace (TORCHQAT_INT8_NS) and the table function
// (TORCHQAT_INT8_TABLE), so every copy has its own symbols. No ATen here: the files compile fast.
//
// Element-wise kernels (quantize, dequantize, epilogue) are plain loops that the compiler
// vectorises for the file's target; the GEMM micro-kernels are written with intrinsics.
//
// GEMM: out[m][n] = epilogue(sum_k a[m][k] * w[n][k]), a unsigned (uint8, or uint8 values held
// as int16 for AVX2), w int8. W is packed once into panels of `kPanel` columns: panel p holds
// columns [p * kPanel, (p + 1) * kPanel) with K padded to kKAlign, laid out as
//   byte (k / kKAlign) * kPanel * kKAlign + column * kKAlign + k % kKAlign
// so that one vector load gives kKAlign consecutive k of several columns, the operand shape of
// vpmaddwd (kKAlign = 2) and vpdpbusd (kKAlign = 4). A micro-kernel multiplies kRows rows of A
// by one panel over the whole K into int32 registers, spills the tile to a small buffer, and the
// epilogue turns it into the output while it is in L1.
//
// Exactness: AVX2 widens both operands to int16 and uses vpmaddwd (int16 x int16 pairs summed
// into int32: |255 * 128 * 2| < 2^31), never vpmaddubsw, which saturates at 16 bits for
// 255 * 127 + 255 * 127. vpdpbusd sums four u8 x s8 products into int32 without saturation. The
// int32 sums cannot overflow for K <= core::kMaxInt8Depth.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(TORCHQAT_INT8_WITH_AVX2) || defined(TORCHQAT_INT8_WITH_AVX512_VNNI)
#include <immintrin.h>
#endif

#include "core/quantize.h"
#include "ops/cpu/int8_kernels.h"

#if !defined(TORCHQAT_INT8_NS) || !defined(TORCHQAT_INT8_TABLE) || !defined(TORCHQAT_INT8_ISA)
#error "define TORCHQAT_INT8_NS, TORCHQAT_INT8_TABLE and TORCHQAT_INT8_ISA first"
#endif

namespace torchqat {
namespace cpu {
namespace TORCHQAT_INT8_NS {
namespace {

constexpr int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// ------------------------------------------------------------------------------------------
// Element-wise kernels

// Calls f(b, e, c, gather) for each maximal run [b, e) of [begin, end) that shares a layout:
// gather (inner == 1, several channels): element b + j has channel c + j; else all have c.
template <typename F>
inline void for_each_run(const ChannelShape& sh, int64_t begin, int64_t end, const F& f) {
  int64_t i = begin;
  if (sh.inner == 1 && sh.channels > 1) {
    while (i < end) {
      const int64_t c = i % sh.channels;
      const int64_t stop = std::min(end, i + (sh.channels - c));
      f(i, stop, c, true);
      i = stop;
    }
  } else {
    while (i < end) {
      const int64_t row = i / sh.inner;
      const int64_t stop = std::min(end, (row + 1) * sh.inner);
      f(i, stop, row % sh.channels, false);
      i = stop;
    }
  }
}

template <typename OutT>
inline OutT quantize_one(float x, float inv_s, float z, float qmin, float qmax) {
  return static_cast<OutT>(
      static_cast<int32_t>(core::quantize_value<float>(x, inv_s, z, qmin, qmax)));
}

template <typename OutT>
void quantize_typed(const float* x, OutT* q, const ChannelShape& sh, int64_t begin, int64_t end,
                    const float* inv_s, const float* z, float qmin, float qmax) {
  for_each_run(sh, begin, end, [&](int64_t b, int64_t e, int64_t c, bool gather) {
    const float* xb = x + b;
    OutT* qb = q + b;
    const int64_t n = e - b;
    if (gather) {
      const float* is = inv_s + c;
      const float* zc = z + c;
      for (int64_t j = 0; j < n; ++j) qb[j] = quantize_one<OutT>(xb[j], is[j], zc[j], qmin, qmax);
    } else {
      const float is = inv_s[c], zc = z[c];
      for (int64_t j = 0; j < n; ++j) qb[j] = quantize_one<OutT>(xb[j], is, zc, qmin, qmax);
    }
  });
}

void quantize(const float* x, void* q, IntType type, ChannelShape sh, int64_t begin, int64_t end,
              const float* inv_s, const float* z, float qmin, float qmax) {
  switch (type) {
    case IntType::kUInt8:
      return quantize_typed(x, static_cast<uint8_t*>(q), sh, begin, end, inv_s, z, qmin, qmax);
    case IntType::kInt8:
      return quantize_typed(x, static_cast<int8_t*>(q), sh, begin, end, inv_s, z, qmin, qmax);
    case IntType::kInt16:
      return quantize_typed(x, static_cast<int16_t*>(q), sh, begin, end, inv_s, z, qmin, qmax);
    case IntType::kInt32:
      return quantize_typed(x, static_cast<int32_t*>(q), sh, begin, end, inv_s, z, qmin, qmax);
  }
}

template <typename InT>
void dequantize_typed(const InT* q, float* y, const ChannelShape& sh, int64_t begin, int64_t end,
                      const float* s, const float* z) {
  for_each_run(sh, begin, end, [&](int64_t b, int64_t e, int64_t c, bool gather) {
    const InT* qb = q + b;
    float* yb = y + b;
    const int64_t n = e - b;
    if (gather) {
      const float* sc = s + c;
      const float* zc = z + c;
      for (int64_t j = 0; j < n; ++j) {
        yb[j] = core::dequantize_value(static_cast<float>(qb[j]), sc[j], zc[j]);
      }
    } else {
      const float sc = s[c], zc = z[c];
      for (int64_t j = 0; j < n; ++j) {
        yb[j] = core::dequantize_value(static_cast<float>(qb[j]), sc, zc);
      }
    }
  });
}

void dequantize(const void* q, IntType type, float* y, ChannelShape sh, int64_t begin,
                int64_t end, const float* s, const float* z) {
  switch (type) {
    case IntType::kUInt8:
      return dequantize_typed(static_cast<const uint8_t*>(q), y, sh, begin, end, s, z);
    case IntType::kInt8:
      return dequantize_typed(static_cast<const int8_t*>(q), y, sh, begin, end, s, z);
    case IntType::kInt16:
      return dequantize_typed(static_cast<const int16_t*>(q), y, sh, begin, end, s, z);
    case IntType::kInt32:
      return dequantize_typed(static_cast<const int32_t*>(q), y, sh, begin, end, s, z);
  }
}

// The epilogue of a block: rows of int32 accumulators (stride ld_acc) for output columns
// [n0, n0 + cols); out / out_raw point at (row 0, column n0), stride ldo. kCols > 0: cols is
// that compile-time constant (a full GEMM panel), so each row is a few whole vectors with no
// remainder loop; the per-column parameters are then loaded once for all rows.
// The activation fused into the epilogue is a template argument, so that each loop is one
// straight-line vector body.
template <bool kAffine, Activation kAct, int64_t kCols>
void epilogue_float(const int32_t* acc, int64_t ld_acc, int64_t rows, int64_t n0, int64_t cols_rt,
                    const Int8Epilogue& e, float* out, int64_t ldo) {
  const int64_t cols = kCols > 0 ? kCols : cols_rt;
  const int32_t* off = e.offset + n0;
  const float* alpha = e.alpha + n0;
  const float* bias = e.bias + n0;
  const float* mult = kAffine ? e.multiplier + n0 : nullptr;
  const float* shift = kAffine ? e.shift + n0 : nullptr;
  for (int64_t r = 0; r < rows; ++r) {
    const int32_t* ar = acc + r * ld_acc;
    float* o = out + r * ldo;
    // The output never overlaps the accumulators or the parameters: without this GCC left the
    // fixed 16-column loop scalar (it would not version a short loop for aliasing).
#pragma GCC ivdep
    for (int64_t j = 0; j < cols; ++j) {
      float t = core::linear_epilogue(ar[j] - off[j], alpha[j], bias[j]);
      if constexpr (kAffine) t = core::fused_multiply_add(t, mult[j], shift[j]);
      if constexpr (kAct == Activation::kRelu) t = t > 0.0f ? t : 0.0f;
      // SiLU here, while the block is in L1, instead of a separate pass over the output.
      if constexpr (kAct == Activation::kSilu) t = core::silu(t);
      o[j] = t;
    }
  }
}

template <bool kAffine, int64_t kCols>
void epilogue_float_act(const int32_t* acc, int64_t ld_acc, int64_t rows, int64_t n0,
                        int64_t cols, const Int8Epilogue& e, float* out, int64_t ldo) {
  switch (e.activation) {
    case Activation::kSilu:
      return epilogue_float<kAffine, Activation::kSilu, kCols>(acc, ld_acc, rows, n0, cols, e,
                                                               out, ldo);
    case Activation::kRelu:
      return epilogue_float<kAffine, Activation::kRelu, kCols>(acc, ld_acc, rows, n0, cols, e,
                                                               out, ldo);
    case Activation::kNone:
      break;
  }
  return epilogue_float<kAffine, Activation::kNone, kCols>(acc, ld_acc, rows, n0, cols, e, out,
                                                           ldo);
}

template <int64_t kCols>
void epilogue_block_cols(const int32_t* acc, int64_t ld_acc, int64_t rows, int64_t n0,
                         int64_t cols, const Int8Epilogue& e, float* out, int32_t* out_raw,
                         int64_t ldo) {
  if (e.raw_out) {
    const int32_t* off = e.offset + n0;
    for (int64_t r = 0; r < rows; ++r) {
      const int32_t* ar = acc + r * ld_acc;
      int32_t* o = out_raw + r * ldo;
      for (int64_t j = 0; j < cols; ++j) o[j] = ar[j] - off[j];
    }
    return;
  }
  if (e.multiplier != nullptr) {
    return epilogue_float_act<true, kCols>(acc, ld_acc, rows, n0, cols, e, out, ldo);
  }
  return epilogue_float_act<false, kCols>(acc, ld_acc, rows, n0, cols, e, out, ldo);
}

void epilogue_block(const int32_t* acc, int64_t ld_acc, int64_t rows, int64_t n0, int64_t cols,
                    const Int8Epilogue& e, float* out, int32_t* out_raw, int64_t ldo) {
  epilogue_block_cols<0>(acc, ld_acc, rows, n0, cols, e, out, out_raw, ldo);
}

void epilogue(const int32_t* acc, int64_t ld_acc, int64_t rows, int64_t N, const Int8Epilogue& e,
              float* out, int32_t* out_raw, int64_t ldo) {
  epilogue_block(acc, ld_acc, rows, 0, N, e, out, out_raw, ldo);
}

// ------------------------------------------------------------------------------------------
// GEMM: packing and the driver shared by every micro-kernel

template <class Micro>
int64_t packed_b_bytes(int64_t N, int64_t K) {
  return round_up(N, Micro::kPanel) * round_up(K, Micro::kKAlign);
}

template <class Micro>
void pack_b(const int8_t* w, int64_t N, int64_t K, int8_t* packed) {
  constexpr int64_t P = Micro::kPanel, A = Micro::kKAlign;
  const int64_t kp = round_up(K, A);
  const int64_t panels = round_up(N, P) / P;
  std::memset(packed, 0, static_cast<size_t>(panels * P * kp));
  for (int64_t p = 0; p < panels; ++p) {
    int8_t* out = packed + p * P * kp;
    for (int64_t c = 0; c < P && p * P + c < N; ++c) {
      const int8_t* row = w + (p * P + c) * K;
      for (int64_t k = 0; k < K; ++k) out[(k / A) * P * A + c * A + k % A] = row[k];
    }
  }
}

template <typename AType>
void quantize_a(const float* x, int64_t ldx, int64_t rows, int64_t K, float inv_s, float z,
                float qmin, float qmax, int32_t a_shift, void* a_, int64_t lda) {
  auto* a = static_cast<AType*>(a_);
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * ldx;
    AType* ar = a + r * lda;
    for (int64_t k = 0; k < K; ++k) {
      // Through uint32 so that a negative shift (the int8 operand of torch._int_mm) wraps.
      ar[k] = static_cast<AType>(static_cast<uint32_t>(
          static_cast<int32_t>(core::quantize_value<float>(xr[k], inv_s, z, qmin, qmax)) +
          a_shift));
    }
    for (int64_t k = K; k < lda; ++k) ar[k] = 0;
  }
}

template <typename AType>
void convert_a(const void* src, bool is_signed, int64_t ldx, int64_t rows, int64_t K, void* a_,
               int64_t lda) {
  auto* a = static_cast<AType*>(a_);
  for (int64_t r = 0; r < rows; ++r) {
    AType* ar = a + r * lda;
    if (is_signed) {
      const int8_t* s = static_cast<const int8_t*>(src) + r * ldx;
      for (int64_t k = 0; k < K; ++k) ar[k] = static_cast<AType>(static_cast<int32_t>(s[k]) + 128);
    } else {
      const uint8_t* s = static_cast<const uint8_t*>(src) + r * ldx;
      for (int64_t k = 0; k < K; ++k) ar[k] = static_cast<AType>(s[k]);
    }
    for (int64_t k = K; k < lda; ++k) ar[k] = 0;
  }
}

// Runs Micro::run<rows> for a run-time rows in [1, Micro::kRows].
template <class Micro, int R = Micro::kRows>
inline void run_rows(int64_t rows, int64_t kp, const typename Micro::AType* a, int64_t lda,
                     const int8_t* b, int32_t* acc) {
  if (rows == R) return Micro::template run<R>(kp, a, lda, b, acc);
  if constexpr (R > 1) run_rows<Micro, R - 1>(rows, kp, a, lda, b, acc);
}

template <class Micro>
void gemm(const Int8GemmProblem& g, int64_t m0, int64_t m1, int64_t p0, int64_t p1) {
  constexpr int64_t P = Micro::kPanel;
  const int64_t kp = round_up(g.K, Micro::kKAlign);
  const auto* a = static_cast<const typename Micro::AType*>(g.a);
  alignas(64) int32_t acc[Micro::kRows * P];
  for (int64_t p = p0; p < p1; ++p) {
    const int8_t* b = g.b_packed + p * P * kp;
    const int64_t n0 = p * P;
    const int64_t cols = std::min(P, g.N - n0);
    for (int64_t m = m0; m < m1; m += Micro::kRows) {
      const int64_t rows = std::min<int64_t>(Micro::kRows, m1 - m);
      run_rows<Micro>(rows, kp, a + m * g.lda, g.lda, b, acc);
      float* out = g.out ? g.out + m * g.ldo + n0 : nullptr;
      int32_t* out_raw = g.out_raw ? g.out_raw + m * g.ldo + n0 : nullptr;
      if (cols == P) {
        epilogue_block_cols<P>(acc, P, rows, n0, P, g.epilogue, out, out_raw, g.ldo);
      } else {
        epilogue_block(acc, P, rows, n0, cols, g.epilogue, out, out_raw, g.ldo);
      }
    }
  }
}

template <class Micro>
constexpr Int8GemmKernel make_gemm_kernel(const char* name, int64_t block_rows,
                                          int32_t max_a = 255) {
  return {name,
          Micro::kPanel,
          Micro::kKAlign,
          static_cast<int64_t>(sizeof(typename Micro::AType)),
          block_rows,
          max_a,
          &packed_b_bytes<Micro>,
          &pack_b<Micro>,
          &quantize_a<typename Micro::AType>,
          &convert_a<typename Micro::AType>,
          &gemm<Micro>};
}

// ------------------------------------------------------------------------------------------
// Micro-kernels: run<R>(kp, a, lda, b, acc) writes acc[r * kPanel + c] = sum_k a[r][k] * b[k][c]
// for r < R, every column of the panel.

// The plain loop (no SIMD intent), the reference the others are tested against.
struct ReferenceMicro {
  using AType = uint8_t;
  static constexpr int64_t kPanel = 8;
  static constexpr int64_t kKAlign = 1;
  static constexpr int kRows = 4;

  template <int R>
  static void run(int64_t kp, const uint8_t* a, int64_t lda, const int8_t* b, int32_t* acc) {
    for (int r = 0; r < R; ++r) {
      for (int64_t c = 0; c < kPanel; ++c) {
        int32_t sum = 0;
        for (int64_t k = 0; k < kp; ++k) {
          sum += static_cast<int32_t>(a[r * lda + k]) * static_cast<int32_t>(b[k * kPanel + c]);
        }
        acc[r * kPanel + c] = sum;
      }
    }
  }
};

// How far ahead in the packed B stream the micro-kernels prefetch. On the (shared, noisy) build
// machine the hardware prefetcher alone read a cold 4096 x 4096 matrix-vector product at about
// 8 GB/s; prefetching 2 KB ahead gave 9-11 GB/s, and an M = 32, N = 4096, K = 1024 product
// about 10-15% more throughput.
constexpr int64_t kPrefetchBytes = 2048;

inline int32_t load_i32(const void* p) {
  int32_t v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

#if defined(TORCHQAT_INT8_WITH_AVX2)
// The AVX2 micro-kernels: 6 rows x 16 columns, 12 accumulators, 2 B vectors, 1 A vector. Step
// is the multiply-add of one group of kKAlign k: a broadcast group of A (4 bytes) against the
// group for 8 columns, summed into 8 int32 lanes.
template <class Step>
struct Avx2Micro16 {
  using AType = typename Step::AType;
  static constexpr int64_t kPanel = 16;
  static constexpr int64_t kKAlign = Step::kKAlign;
  static constexpr int kRows = 6;

  template <int R>
  static void run(int64_t kp, const AType* a, int64_t lda, const int8_t* b, int32_t* acc) {
    __m256i c0[R], c1[R];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) c0[r] = c1[r] = _mm256_setzero_si256();
    for (int64_t k = 0; k < kp; k += kKAlign, b += kPanel * kKAlign) {
      _mm_prefetch(reinterpret_cast<const char*>(b + kPrefetchBytes), _MM_HINT_T0);
      const __m256i b0 = Step::load_b(b);
      const __m256i b1 = Step::load_b(b + 8 * kKAlign);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        const __m256i av = _mm256_set1_epi32(load_i32(a + r * lda + k));
        c0[r] = _mm256_add_epi32(c0[r], Step::madd(av, b0));
        c1[r] = _mm256_add_epi32(c1[r], Step::madd(av, b1));
      }
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      _mm256_store_si256(reinterpret_cast<__m256i*>(acc + r * kPanel), c0[r]);
      _mm256_store_si256(reinterpret_cast<__m256i*>(acc + r * kPanel + 8), c1[r]);
    }
  }
};

// "avx2": A as int16 pairs, B widened from int8 to int16 on load, vpmaddwd.
struct Int16PairStep {
  using AType = int16_t;
  static constexpr int64_t kKAlign = 2;
  static __m256i load_b(const int8_t* b) {
    return _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b)));
  }
  static __m256i madd(__m256i a, __m256i b) { return _mm256_madd_epi16(a, b); }
};

// "avx2_u7", for 7-bit activations (A bytes in [0, 127]): vpmaddubsw multiplies 4 bytes of A by
// 4 k of 8 columns into int16 pair sums, vpmaddwd against ones adds the pairs into int32. A pair
// sum is at most 127 * 128 * 2 = 32512 < 2^15, so vpmaddubsw cannot saturate (with A up to 255
// it can: the reason the 8-bit kernel widens to int16 instead). 3 instructions per 32 products
// against the int16 kernel's 4, and A stays in bytes. B is packed like the VNNI kernel's (4 k
// per column). Callers keep A within max_a = 127 (the host wrappers check the activation range).
struct U7QuadStep {
  using AType = uint8_t;
  static constexpr int64_t kKAlign = 4;
  static __m256i load_b(const int8_t* b) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b));
  }
  static __m256i madd(__m256i a, __m256i b) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(a, b), _mm256_set1_epi16(1));
  }
};

// vpdpbusd on two 256-bit halves, exactly: bytes split into even and odd int16 lanes (unsigned
// for A, sign-extended for B), two vpmaddwd. Runs the VNNI kernel's packing and blocking on
// AVX2 machines, so that its logic is tested where the instruction is missing.
struct EmulatedVnniOps {
  struct V {
    __m256i lo, hi;
  };
  static V zero() { return {_mm256_setzero_si256(), _mm256_setzero_si256()}; }
  static V load(const int8_t* p) {
    return {_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)),
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 32))};
  }
  static V broadcast(int32_t v) { return {_mm256_set1_epi32(v), _mm256_set1_epi32(v)}; }
  static __m256i dpbusd_half(__m256i acc, __m256i a, __m256i b) {
    const __m256i a_even = _mm256_and_si256(a, _mm256_set1_epi16(0x00ff));
    const __m256i a_odd = _mm256_srli_epi16(a, 8);
    const __m256i b_even = _mm256_srai_epi16(_mm256_slli_epi16(b, 8), 8);
    const __m256i b_odd = _mm256_srai_epi16(b, 8);
    return _mm256_add_epi32(acc, _mm256_add_epi32(_mm256_madd_epi16(a_even, b_even),
                                                  _mm256_madd_epi16(a_odd, b_odd)));
  }
  static V dpbusd(V acc, V a, V b) {
    return {dpbusd_half(acc.lo, a.lo, b.lo), dpbusd_half(acc.hi, a.hi, b.hi)};
  }
  static void store(int32_t* p, V v) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), v.lo);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p + 8), v.hi);
  }
};
#endif  // TORCHQAT_INT8_WITH_AVX2

#if defined(TORCHQAT_INT8_WITH_AVX512_VNNI)
struct Avx512VnniOps {
  using V = __m512i;
  static V zero() { return _mm512_setzero_si512(); }
  static V load(const int8_t* p) { return _mm512_loadu_si512(p); }
  static V broadcast(int32_t v) { return _mm512_set1_epi32(v); }
  static V dpbusd(V acc, V a, V b) { return _mm512_dpbusd_epi32(acc, a, b); }
  static void store(int32_t* p, V v) { _mm512_storeu_si512(p, v); }
};
#endif

#if defined(TORCHQAT_INT8_WITH_AVX2) || defined(TORCHQAT_INT8_WITH_AVX512_VNNI)
// AVX-512 VNNI: 4 bytes of A broadcast to every lane, vpdpbusd against 4 k of 16 columns.
// 6 rows x 64 columns: 24 accumulators, 4 B vectors, 1 A vector (29 of 32 zmm registers).
template <class Ops>
struct VnniMicro {
  using AType = uint8_t;
  static constexpr int64_t kPanel = 64;
  static constexpr int64_t kKAlign = 4;
  static constexpr int kRows = 6;

  template <int R>
  static void run(int64_t kp, const uint8_t* a, int64_t lda, const int8_t* b, int32_t* acc) {
    using V = decltype(Ops::zero());
    V c[R][4];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
      for (int v = 0; v < 4; ++v) c[r][v] = Ops::zero();
    }
    for (int64_t k = 0; k < kp; k += 4, b += 256) {
#pragma GCC unroll 4
      for (int line = 0; line < 4; ++line) {
        _mm_prefetch(reinterpret_cast<const char*>(b + 2 * kPrefetchBytes + 64 * line),
                     _MM_HINT_T0);
      }
      const V b0 = Ops::load(b), b1 = Ops::load(b + 64), b2 = Ops::load(b + 128),
              b3 = Ops::load(b + 192);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        const V av = Ops::broadcast(load_i32(a + r * lda + k));
        c[r][0] = Ops::dpbusd(c[r][0], av, b0);
        c[r][1] = Ops::dpbusd(c[r][1], av, b1);
        c[r][2] = Ops::dpbusd(c[r][2], av, b2);
        c[r][3] = Ops::dpbusd(c[r][3], av, b3);
      }
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
      for (int v = 0; v < 4; ++v) Ops::store(acc + r * kPanel + 16 * v, c[r][v]);
    }
  }
};
#endif

// Rows per host task: enough to reuse each B panel from L1/L2 across micro-kernels while the
// task's A block (rows x K) stays in L2.
#if defined(TORCHQAT_INT8_WITH_AVX512_VNNI)
constexpr Int8GemmKernel kVnniKernel = make_gemm_kernel<VnniMicro<Avx512VnniOps>>("avx512_vnni", 48);
#elif defined(TORCHQAT_INT8_WITH_AVX2)
constexpr Int8GemmKernel kAvx2Kernel = make_gemm_kernel<Avx2Micro16<Int16PairStep>>("avx2", 48);
constexpr Int8GemmKernel kVnniEmulatedKernel =
    make_gemm_kernel<VnniMicro<EmulatedVnniOps>>("vnni_emulated", 48);
constexpr Int8GemmKernel kAvx2U7Kernel =
    make_gemm_kernel<Avx2Micro16<U7QuadStep>>("avx2_u7", 48, 127);
#else
constexpr Int8GemmKernel kReferenceKernel = make_gemm_kernel<ReferenceMicro>("reference", 32);
#endif

}  // namespace
}  // namespace TORCHQAT_INT8_NS

const Int8CpuKernels& TORCHQAT_INT8_TABLE() {
  using namespace TORCHQAT_INT8_NS;
  static const Int8CpuKernels kernels{TORCHQAT_INT8_ISA,
                                      &quantize,
                                      &dequantize,
                                      &quantize_a<uint8_t>,
                                      &epilogue,
#if defined(TORCHQAT_INT8_WITH_AVX512_VNNI)
                                      {&kVnniKernel, nullptr, nullptr, nullptr}
#elif defined(TORCHQAT_INT8_WITH_AVX2)
                                      {&kAvx2Kernel, &kVnniEmulatedKernel, &kAvx2U7Kernel, nullptr}
#else
                                      {&kReferenceKernel, nullptr, nullptr, nullptr}
#endif
  };
  return kernels;
}

}  // namespace cpu
}  // namespace torchqat
