// The non-GEMM CPU kernels of the INT8 convolution (int8_conv_kernels.h). Included once per
// instruction set by int8_conv_kernels_{default,avx2,avx512}.cpp, which select the target with
// `#pragma GCC target` first and name the namespace (TORCHQAT_CONV_NS), the table function
// (TORCHQAT_CONV_TABLE) and the ISA (TORCHQAT_CONV_ISA). Plain loops over channels with fixed
// trip counts where it matters, so that the compiler vectorises them for the file's target.
//
// Exactness of the depthwise kernel: (x - z) is formed in int32 (|x - z| <= 255) and multiplied
// by the int32-widened weight (|w| <= 128), so no 8- or 16-bit intermediate can saturate (no
// vpmaddubsw); the sum of kh * kw <= 65793 products fits int32.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>

#if defined(TORCHQAT_CONV_WITH_AVX2)
#include <immintrin.h>
#endif

#include "ops/cpu/int8_conv_kernels.h"

#if !defined(TORCHQAT_CONV_NS) || !defined(TORCHQAT_CONV_TABLE) || !defined(TORCHQAT_CONV_ISA)
#error "define TORCHQAT_CONV_NS, TORCHQAT_CONV_TABLE and TORCHQAT_CONV_ISA first"
#endif

namespace torchqat {
namespace cpu {
namespace TORCHQAT_CONV_NS {
namespace {

// n bytes, B <= n <= 2B, as two overlapping fixed-size moves (the first B and the last B bytes;
// both loads before the stores; src and dst never overlap). Fixed-size memcpy compiles to
// register moves, no call.
template <size_t B>
inline void copy_two_overlapping(const uint8_t* src, int64_t n, uint8_t* dst) {
  unsigned char head[B], tail[B];
  std::memcpy(head, src, B);
  std::memcpy(tail, src + n - B, B);
  std::memcpy(dst, head, B);
  std::memcpy(dst + n - B, tail, B);
}

// n bytes from src to dst (n >= 0), inline: the runs of an im2col row are short (21 bytes for
// a 3-channel 7x7 stem), and a library memcpy call per run showed in its profile.
inline void copy_bytes(const uint8_t* src, int64_t n, uint8_t* dst) {
  if (n > 32) {  // long runs (64 channels and more): the library's copy is as good
    std::memcpy(dst, src, static_cast<size_t>(n));
  } else if (n >= 16) {
    copy_two_overlapping<16>(src, n, dst);
  } else if (n >= 8) {
    copy_two_overlapping<8>(src, n, dst);
  } else if (n >= 4) {
    copy_two_overlapping<4>(src, n, dst);
  } else {
    for (int64_t c = 0; c < n; ++c) dst[c] = src[c];
  }
}

template <typename AType>
inline void copy_channels(const uint8_t* src, int64_t n, AType* dst) {
  if constexpr (sizeof(AType) == 1) {
    copy_bytes(src, n, reinterpret_cast<uint8_t*>(dst));
  } else {
#if defined(TORCHQAT_CONV_WITH_AVX2)
    // 16 bytes widened per step; a tail of a run of 16 or more redoes the last 16 (overlapping,
    // same values) instead of a scalar loop.
    if (n >= 16) {
      int64_t c = 0;
      for (; c + 16 <= n; c += 16) {
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + c), _mm256_cvtepu8_epi16(
            _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + c))));
      }
      if (c < n) {
        c = n - 16;
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + c), _mm256_cvtepu8_epi16(
            _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + c))));
      }
      return;
    }
#endif
    for (int64_t c = 0; c < n; ++c) dst[c] = static_cast<AType>(src[c]);
  }
}

template <typename AType>
void im2col(const uint8_t* x, const Conv2dGeometry& g, int64_t group, uint8_t pad, int64_t m0,
            int64_t m1, AType* a, int64_t lda) {
  const int64_t cg = g.C / g.groups;
  const int64_t K = cg * g.kh * g.kw;
  const int64_t hw = g.Ho * g.Wo;
  const uint8_t* xg = x + group * cg;
  const bool pointwise = g.kh == 1 && g.kw == 1 && g.stride_h == 1 && g.stride_w == 1 &&
                         g.pad_h == 0 && g.pad_w == 0;
  // Output pixel (n, oy, ox) of row m, advanced row by row (no divisions per row).
  int64_t n = m0 / hw, oy = (m0 / g.Wo) % g.Ho, ox = m0 % g.Wo;
  for (int64_t m = m0; m < m1; ++m) {
    AType* row = a + (m - m0) * lda;
    if (pointwise) {  // output pixel m reads input pixel m
      copy_channels(xg + m * g.C, cg, row);
    } else {
      const uint8_t* xn = xg + n * g.H * g.W * g.C;
      // With one group and no horizontal dilation, the taps kx of one kernel row read adjacent
      // pixels, whose channels are adjacent in NHWC: one copy per kernel row (for the 3-channel
      // stem, 21 bytes instead of 7 copies of 3).
      const bool runs = g.groups == 1 && g.dil_w == 1;
      const int64_t ix0 = ox * g.stride_w - g.pad_w;
      const int64_t kx_lo = std::max<int64_t>(0, -ix0);
      const int64_t kx_hi = std::min<int64_t>(g.kw, g.W - ix0);
      AType* dst = row;
      for (int64_t ky = 0; ky < g.kh; ++ky) {
        const int64_t iy = oy * g.stride_h - g.pad_h + ky * g.dil_h;
        const bool row_inside = iy >= 0 && iy < g.H;
        if (runs) {
          if (!row_inside || kx_lo >= kx_hi) {
            std::fill(dst, dst + g.kw * cg, static_cast<AType>(pad));
          } else {
            std::fill(dst, dst + kx_lo * cg, static_cast<AType>(pad));
            copy_channels(xn + (iy * g.W + ix0 + kx_lo) * g.C, (kx_hi - kx_lo) * cg,
                          dst + kx_lo * cg);
            std::fill(dst + kx_hi * cg, dst + g.kw * cg, static_cast<AType>(pad));
          }
          dst += g.kw * cg;
          continue;
        }
        for (int64_t kx = 0; kx < g.kw; ++kx, dst += cg) {
          const int64_t ix = ix0 + kx * g.dil_w;
          if (row_inside && ix >= 0 && ix < g.W) {
            copy_channels(xn + (iy * g.W + ix) * g.C, cg, dst);
          } else {
            std::fill(dst, dst + cg, static_cast<AType>(pad));
          }
        }
      }
    }
    for (int64_t k = K; k < lda; ++k) row[k] = 0;
    if (++ox == g.Wo) {
      ox = 0;
      if (++oy == g.Ho) {
        oy = 0;
        ++n;
      }
    }
  }
}

void im2col_u8(const uint8_t* x, const Conv2dGeometry& g, int64_t group, uint8_t pad, int64_t m0,
               int64_t m1, uint8_t* a, int64_t lda) {
  im2col(x, g, group, pad, m0, m1, a, lda);
}

void im2col_i16(const uint8_t* x, const Conv2dGeometry& g, int64_t group, uint8_t pad,
                int64_t m0, int64_t m1, int16_t* a, int64_t lda) {
  im2col(x, g, group, pad, m0, m1, a, lda);
}

// Channels per register block of the depthwise kernel: 32 int32 sums stay in registers (4 ymm /
// 2 zmm) across all taps of one output pixel.
constexpr int64_t kDwBlock = 32;

// One block of kDwBlock channels of one output pixel, over its valid taps; `s` lives in
// registers (fixed trip counts, no other use), the tail block goes through the generic loop.
inline void depthwise_block(const uint8_t* const* taps_x, const int32_t* const* taps_w,
                            int64_t ntaps, int64_t c, int32_t z, int32_t* out) {
  int32_t s[kDwBlock] = {};
  for (int64_t t = 0; t < ntaps; ++t) {
    const uint8_t* xp = taps_x[t] + c;
    const int32_t* wp = taps_w[t] + c;
#pragma GCC unroll 32
    for (int64_t j = 0; j < kDwBlock; ++j) s[j] += (static_cast<int32_t>(xp[j]) - z) * wp[j];
  }
#pragma GCC unroll 32
  for (int64_t j = 0; j < kDwBlock; ++j) out[j] = s[j];
}

inline void depthwise_tail(const uint8_t* const* taps_x, const int32_t* const* taps_w,
                           int64_t ntaps, int64_t c, int64_t n, int32_t z, int32_t* out) {
  for (int64_t j = 0; j < n; ++j) out[j] = 0;
  for (int64_t t = 0; t < ntaps; ++t) {
    const uint8_t* xp = taps_x[t] + c;
    const int32_t* wp = taps_w[t] + c;
    for (int64_t j = 0; j < n; ++j) out[j] += (static_cast<int32_t>(xp[j]) - z) * wp[j];
  }
}

#if defined(TORCHQAT_CONV_WITH_AVX2)
// A pixel whose taps all lie inside, channels [0, 16 * blocks): two taps per vpmaddwd (x as
// int16 <= 255, w in [-128, 127]: a pair sums to at most 65280, no saturation), i.e. 16
// multiply-adds per instruction instead of vpmulld's 8, and no per-tap zero-point subtraction:
// acc = sum x * w - z * w_sum.
inline void depthwise_pairs(const uint8_t* const* taps_x, int64_t npairs, const int16_t* w_pairs,
                            int64_t blocks, const int32_t* w_sum, int32_t z, int32_t* out) {
  const __m256i zv = _mm256_set1_epi32(z);
  for (int64_t b = 0; b < blocks; ++b) {
    __m256i lo = _mm256_setzero_si256(), hi = _mm256_setzero_si256();
    for (int64_t p = 0; p < npairs; ++p) {
      const __m256i a0 = _mm256_cvtepu8_epi16(
          _mm_loadu_si128(reinterpret_cast<const __m128i*>(taps_x[2 * p] + 16 * b)));
      const __m256i a1 = _mm256_cvtepu8_epi16(
          _mm_loadu_si128(reinterpret_cast<const __m128i*>(taps_x[2 * p + 1] + 16 * b)));
      const int16_t* wp = w_pairs + (p * blocks + b) * 32;
      lo = _mm256_add_epi32(lo, _mm256_madd_epi16(_mm256_unpacklo_epi16(a0, a1),
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wp))));
      hi = _mm256_add_epi32(hi, _mm256_madd_epi16(_mm256_unpackhi_epi16(a0, a1),
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wp + 16))));
    }
    // lo holds channels {0..3, 8..11}, hi {4..7, 12..15}.
    __m256i c0 = _mm256_permute2x128_si256(lo, hi, 0x20);
    __m256i c8 = _mm256_permute2x128_si256(lo, hi, 0x31);
    const int32_t* ws = w_sum + 16 * b;
    c0 = _mm256_sub_epi32(c0, _mm256_mullo_epi32(
        zv, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ws))));
    c8 = _mm256_sub_epi32(c8, _mm256_mullo_epi32(
        zv, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ws + 8))));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 16 * b), c0);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 16 * b + 8), c8);
  }
}
#endif

void depthwise(const uint8_t* x, const Conv2dGeometry& g, int32_t z, const int32_t* w,
               const int16_t* w_pairs, const int32_t* w_sum, int64_t m0, int64_t m1,
               int32_t* acc) {
  (void)w_pairs;
  (void)w_sum;
  const int64_t C = g.C, hw = g.Ho * g.Wo;
  const int64_t max_taps = g.kh * g.kw;
  // Pointers to the valid taps of the current pixel (input pixel, weight row).
  // (+1: the pair path's missing last tap points at tap 0, with weight 0.)
  const uint8_t* tx_stack[65];
  const int32_t* tw_stack[65];
  const uint8_t** tx = tx_stack;
  const int32_t** tw = tw_stack;
  std::unique_ptr<const uint8_t*[]> tx_heap;
  std::unique_ptr<const int32_t*[]> tw_heap;
  if (max_taps > 64) {
    tx_heap.reset(new const uint8_t*[max_taps + 1]);
    tw_heap.reset(new const int32_t*[max_taps]);
    tx = tx_heap.get();
    tw = tw_heap.get();
  }
  for (int64_t m = m0; m < m1; ++m) {
    const int64_t n = m / hw, oy = (m / g.Wo) % g.Ho, ox = m % g.Wo;
    const uint8_t* xn = x + n * g.H * g.W * C;
    int64_t ntaps = 0;
    for (int64_t ky = 0; ky < g.kh; ++ky) {
      const int64_t iy = oy * g.stride_h - g.pad_h + ky * g.dil_h;
      if (iy < 0 || iy >= g.H) continue;
      for (int64_t kx = 0; kx < g.kw; ++kx) {
        const int64_t ix = ox * g.stride_w - g.pad_w + kx * g.dil_w;
        if (ix < 0 || ix >= g.W) continue;
        tx[ntaps] = xn + (iy * g.W + ix) * C;
        tw[ntaps] = w + (ky * g.kw + kx) * C;
        ++ntaps;
      }
    }
    int32_t* out = acc + (m - m0) * C;
    int64_t c = 0;
#if defined(TORCHQAT_CONV_WITH_AVX2)
    if (ntaps == max_taps && w_pairs != nullptr && C >= 16) {
      tx[ntaps] = tx[0];
      depthwise_pairs(tx, (ntaps + 1) / 2, w_pairs, C / 16, w_sum, z, out);
      c = C / 16 * 16;
    }
#endif
    for (; c + kDwBlock <= C; c += kDwBlock) depthwise_block(tx, tw, ntaps, c, z, out + c);
    if (c < C) depthwise_tail(tx, tw, ntaps, c, C - c, z, out + c);
  }
}

}  // namespace
}  // namespace TORCHQAT_CONV_NS

const Int8ConvKernels& TORCHQAT_CONV_TABLE() {
  using namespace TORCHQAT_CONV_NS;
  static const Int8ConvKernels kernels{TORCHQAT_CONV_ISA, &im2col_u8, &im2col_i16, &depthwise};
  return kernels;
}

}  // namespace cpu
}  // namespace torchqat
