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

#include "ops/cpu/int8_conv_kernels.h"

#if !defined(TORCHQAT_CONV_NS) || !defined(TORCHQAT_CONV_TABLE) || !defined(TORCHQAT_CONV_ISA)
#error "define TORCHQAT_CONV_NS, TORCHQAT_CONV_TABLE and TORCHQAT_CONV_ISA first"
#endif

namespace torchqat {
namespace cpu {
namespace TORCHQAT_CONV_NS {
namespace {

template <typename AType>
inline void copy_channels(const uint8_t* src, int64_t n, AType* dst) {
  if constexpr (sizeof(AType) == 1) {
    std::memcpy(dst, src, static_cast<size_t>(n));
  } else {
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
  for (int64_t m = m0; m < m1; ++m) {
    AType* row = a + (m - m0) * lda;
    if (pointwise) {  // output pixel m reads input pixel m
      copy_channels(xg + m * g.C, cg, row);
    } else {
      const int64_t n = m / hw, oy = (m / g.Wo) % g.Ho, ox = m % g.Wo;
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
    std::fill(row + K, row + lda, static_cast<AType>(0));
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

void depthwise(const uint8_t* x, const Conv2dGeometry& g, int32_t z, const int32_t* w,
               int64_t m0, int64_t m1, int32_t* acc) {
  const int64_t C = g.C, hw = g.Ho * g.Wo;
  const int64_t max_taps = g.kh * g.kw;
  // Pointers to the valid taps of the current pixel (input pixel, weight row).
  const uint8_t* tx_stack[64];
  const int32_t* tw_stack[64];
  const uint8_t** tx = tx_stack;
  const int32_t** tw = tw_stack;
  std::unique_ptr<const uint8_t*[]> tx_heap;
  std::unique_ptr<const int32_t*[]> tw_heap;
  if (max_taps > 64) {
    tx_heap.reset(new const uint8_t*[max_taps]);
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
