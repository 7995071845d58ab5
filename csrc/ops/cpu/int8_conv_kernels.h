// Raw-pointer CPU kernels of the INT8 convolution that are not GEMMs: im2col of the quantized
// NHWC input into a GEMM kernel's A layout, and the direct depthwise kernel. Compiled once per
// instruction set (int8_conv_kernels_{default,avx2,avx512}.cpp, plain loops the compiler
// vectorises for the file's target) and chosen at run time with the element-wise INT8 kernels.
// The GEMMs themselves are the INT8 linear kernels (int8_kernels.h). Torch-free.
#pragma once

#include <cstdint>

namespace torchqat {
namespace cpu {

// A convolution over a quantized NHWC input x [N, H, W, C] (unsigned bytes), giving an NHWC
// output [N, Ho, Wo, O]; output row m is pixel (n, oy, ox) = (m / (Ho Wo), m / Wo % Ho, m % Wo).
struct Conv2dGeometry {
  int64_t N, H, W, C;
  int64_t Ho, Wo;
  int64_t kh, kw;
  int64_t stride_h, stride_w;
  int64_t pad_h, pad_w;
  int64_t dil_h, dil_w;
  int64_t groups;
};

struct Int8ConvKernels {
  const char* isa;
  // Rows [m0, m1) of group g's im2col matrix into a (row stride lda elements): row m holds, for
  // each tap (ky, kx) in order, the group's C / groups channels of the input pixel the tap
  // reads, or `pad` (the zero point, so that a - z = 0) where it reads padding; elements
  // [K, lda) are zero.
  void (*im2col_u8)(const uint8_t* x, const Conv2dGeometry& g, int64_t group, uint8_t pad,
                    int64_t m0, int64_t m1, uint8_t* a, int64_t lda);
  void (*im2col_i16)(const uint8_t* x, const Conv2dGeometry& g, int64_t group, uint8_t pad,
                     int64_t m0, int64_t m1, int16_t* a, int64_t lda);
  // Depthwise (groups == C == O), output rows [m0, m1):
  //   acc[(m - m0) * C + c] = sum over the taps inside the input of (x - z) * w[tap * C + c]
  // (taps over padding contribute 0). w: int32 [kh * kw, C]. Pixels whose taps all lie inside
  // may instead use w_pairs (depthwise_pair_weights' layout) and w_sum[c] = sum_tap w[tap][c]:
  // acc = sum x * w - z * w_sum, the same integer.
  void (*depthwise)(const uint8_t* x, const Conv2dGeometry& g, int32_t z, const int32_t* w,
                    const int16_t* w_pairs, const int32_t* w_sum, int64_t m0, int64_t m1,
                    int32_t* acc);
};

const Int8ConvKernels& int8_conv_kernels_default();
const Int8ConvKernels& int8_conv_kernels_avx2();
const Int8ConvKernels& int8_conv_kernels_avx512();

// Depthwise weights for vpmaddwd on pairs of taps: for tap pair p (taps 2p, 2p + 1; a missing
// last tap has weight 0) and block b of 16 channels, 32 int16 at (p * (C / 16) + b) * 32: first
// the interleaved pairs (w[2p][c], w[2p+1][c]) of channels c = 16b + {0..3, 8..11}, then of
// 16b + {4..7, 12..15} (the lane order of vpunpcklwd / vpunpckhwd on two 16-channel vectors).
// w: int32 [taps, C]; out: ceil(taps / 2) * (C / 16) * 32 values.
void depthwise_pair_weights(const int32_t* w, int64_t taps, int64_t C, int16_t* out);

// The table of the instruction set the element-wise INT8 kernels use (int8_cpu_kernels()).
const Int8ConvKernels& int8_conv_kernels();

}  // namespace cpu
}  // namespace torchqat
