// CUDA INT8 convolution kernels (free functions; interface and numerics: int8_conv2d.h).
//
// Every path first brings the input into an NHWC int8 matrix a [N*H*W (padded), Cp] with
// Cp = round_up(C, 16) (quantize_rows_cuda / convert_rows_cuda of int8_gemm.h, zero padding),
// then computes int32 accumulators [N*Ho*Wo, O] (NHWC), then runs int8_linear's epilogue.
//
// Padding: a position outside the image reads a = a_zero (the shifted zero point) in the
// implicit GEMM, and the epilogue subtracts a_zero * colsum[o] over the whole window, so that
// position contributes (a_zero - a_zero) * w = 0; the depthwise kernel skips it and subtracts
// nothing. Channel padding is 0 in both operands and so contributes 0.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/macros/Macros.h>

#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <memory>

#include "ops/cuda/int8_conv2d.h"
#include "ops/packed_conv2d.h"

namespace torchqat {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 65535;

C10_HOST_DEVICE int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

using cpu::shape_string;

struct ConvShape {
  int64_t N, H, W, C;
  int64_t Cp;   // row stride of the NHWC activation matrix
  int64_t O;    // output channels (all groups)
  int64_t Og;   // output channels per group
  int64_t Cg;   // input channels per group
  int64_t Cgp;  // channels per tap in the weight rows
  int64_t kh, kw, sh, sw, ph, pw, dh, dw;
  int64_t Ho, Wo;
  int64_t M;     // N * Ho * Wo
  int64_t Ktot;  // kh * kw * Cgp: bytes of a weight row
};

__device__ __forceinline__ int32_t shifted_zero_point(const float* qparams, int32_t a_shift,
                                                      int32_t host_zero) {
  return qparams != nullptr ? static_cast<int32_t>(qparams[2]) + a_shift : host_zero;
}

// ---------------------------------------------------------------------------------------------
// Implicit GEMM: C[m][g*Og + o] = sum_k A(m, k) * Wt[g*Og + o][k], with k = (r * kw + s) * Cgp + c
// and A(m, k) the activation of output pixel m's window at tap (r, s), channel g*Cg + c (a_zero
// outside the image). The tiling of gemm_dp4a_kernel (int8_gemm.cu): 64 x 64 outputs per block of
// 16 x 16 threads, 32 bytes of K per shared-memory slice; blockIdx.z is the group.

constexpr int kTile = 64;
constexpr int kSliceWords = 8;

// Word `kword` (bytes 4*kword .. 4*kword+3 of K) of row m of the implicit A matrix.
template <bool kWords>
__device__ __forceinline__ uint32_t load_a_word(const uint8_t* __restrict__ a, const ConvShape& s,
                                                int64_t n, int64_t ho, int64_t wo, int64_t group,
                                                int64_t kword, uint32_t zero_byte) {
  if constexpr (kWords) {
    // groups == 1, Cgp = Cp a multiple of 16: the 4 bytes are 4 channels of one tap.
    const int64_t k = kword * 4;
    const int64_t tap = k / s.Cgp, c = k - tap * s.Cgp;
    const int64_t r = tap / s.kw, q = tap - r * s.kw;
    const int64_t hi = ho * s.sh - s.ph + r * s.dh, wi = wo * s.sw - s.pw + q * s.dw;
    if (hi < 0 || hi >= s.H || wi < 0 || wi >= s.W) return zero_byte * 0x01010101u;
    return *reinterpret_cast<const uint32_t*>(a + ((n * s.H + hi) * s.W + wi) * s.Cp + c);
  } else {
    uint32_t word = 0;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t k = kword * 4 + j;
      if (k >= s.Ktot) break;
      const int64_t tap = k / s.Cgp, c = k - tap * s.Cgp;
      const int64_t r = tap / s.kw, q = tap - r * s.kw;
      const int64_t hi = ho * s.sh - s.ph + r * s.dh, wi = wo * s.sw - s.pw + q * s.dw;
      const uint32_t byte =
          (hi < 0 || hi >= s.H || wi < 0 || wi >= s.W)
              ? zero_byte
              : a[((n * s.H + hi) * s.W + wi) * s.Cp + group * s.Cg + c];
      word |= byte << (8 * j);
    }
    return word;
  }
}

template <bool kWords>
__device__ __forceinline__ uint32_t load_w_word(const uint8_t* __restrict__ w, const ConvShape& s,
                                                int64_t o, int64_t kword) {
  const uint8_t* row = w + o * s.Ktot;
  if constexpr (kWords) {
    return *reinterpret_cast<const uint32_t*>(row + kword * 4);  // Ktot is a multiple of 16
  } else {
    uint32_t word = 0;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t k = kword * 4 + j;
      if (k < s.Ktot) word |= static_cast<uint32_t>(row[k]) << (8 * j);
    }
    return word;
  }
}

template <bool kWords>
__global__ void __launch_bounds__(256)
    conv_implicit_gemm_kernel(const uint8_t* __restrict__ a, const uint8_t* __restrict__ w,
                              int32_t* __restrict__ c, const ConvShape s,
                              const float* __restrict__ qparams, int32_t a_shift,
                              int32_t host_zero) {
  __shared__ int32_t as[kSliceWords][kTile + 1];
  __shared__ int32_t ws[kSliceWords][kTile + 1];
  const uint32_t zero_byte =
      static_cast<uint32_t>(shifted_zero_point(qparams, a_shift, host_zero)) & 0xffu;
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int tid = ty * 16 + tx;
  const int64_t group = blockIdx.z;
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * kTile;
  const int64_t o0 = static_cast<int64_t>(blockIdx.x) * kTile;  // within the group
  const int64_t kwords = ceil_div(s.Ktot, 4);

  // The output pixels of the rows this thread stages (fixed over K): i = tid + 256 * t covers
  // rows r = i / kSliceWords.
  constexpr int kLoads = kTile * kSliceWords / 256;
  int64_t pix_n[kLoads], pix_ho[kLoads], pix_wo[kLoads];
  bool pix_ok[kLoads];
#pragma unroll
  for (int t = 0; t < kLoads; ++t) {
    const int r = (tid + 256 * t) / kSliceWords;
    const int64_t m = m0 + r;
    pix_ok[t] = m < s.M;
    const int64_t mm = pix_ok[t] ? m : 0;
    pix_n[t] = mm / (s.Ho * s.Wo);
    const int64_t rest = mm - pix_n[t] * s.Ho * s.Wo;
    pix_ho[t] = rest / s.Wo;
    pix_wo[t] = rest - pix_ho[t] * s.Wo;
  }

  int32_t acc[4][4] = {};
  for (int64_t k0 = 0; k0 < kwords; k0 += kSliceWords) {
#pragma unroll
    for (int t = 0; t < kLoads; ++t) {
      const int i = tid + 256 * t;
      const int r = i / kSliceWords, kk = i % kSliceWords;
      const int64_t kword = k0 + kk;
      uint32_t av = 0, wv = 0;
      if (kword < kwords) {
        if (pix_ok[t]) {
          av = load_a_word<kWords>(a, s, pix_n[t], pix_ho[t], pix_wo[t], group, kword, zero_byte);
        }
        const int64_t o = o0 + r;
        if (o < s.Og) wv = load_w_word<kWords>(w, s, group * s.Og + o, kword);
      }
      as[kk][r] = static_cast<int32_t>(av);
      ws[kk][r] = static_cast<int32_t>(wv);
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kSliceWords; ++kk) {
      int32_t av[4], wv[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        av[i] = as[kk][ty + 16 * i];
        wv[i] = ws[kk][tx + 16 * i];
      }
#pragma unroll
      for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = __dp4a(av[i], wv[j], acc[i][j]);
      }
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t m = m0 + ty + 16 * i;
    if (m >= s.M) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t o = o0 + tx + 16 * j;
      if (o < s.Og) c[m * s.O + group * s.Og + o] = acc[i][j];
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Depthwise (groups == C, Cg == 1): one thread per output (m, o), exact (a - a_zero) * w summed
// over the taps inside the image. Neighbouring threads take neighbouring o: coalesced NHWC reads.

__global__ void __launch_bounds__(kThreads)
    conv_depthwise_kernel(const int8_t* __restrict__ a, const int8_t* __restrict__ w,
                          int32_t* __restrict__ c, const ConvShape s,
                          const float* __restrict__ qparams, int32_t a_shift, int32_t host_zero) {
  const int32_t a_zero = shifted_zero_point(qparams, a_shift, host_zero);
  const int64_t total = s.M * s.O;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += step) {
    const int64_t m = i / s.O, o = i - m * s.O;
    const int64_t ch = o / s.Og;  // the group's single input channel
    const int64_t n = m / (s.Ho * s.Wo);
    const int64_t rest = m - n * s.Ho * s.Wo;
    const int64_t ho = rest / s.Wo, wo = rest - (rest / s.Wo) * s.Wo;
    const int8_t* wrow = w + o * s.Ktot;  // Cgp == 1: one byte per tap
    int32_t acc = 0;
    for (int64_t r = 0; r < s.kh; ++r) {
      const int64_t hi = ho * s.sh - s.ph + r * s.dh;
      if (hi < 0 || hi >= s.H) continue;
      for (int64_t q = 0; q < s.kw; ++q) {
        const int64_t wi = wo * s.sw - s.pw + q * s.dw;
        if (wi < 0 || wi >= s.W) continue;
        const int32_t av = a[((n * s.H + hi) * s.W + wi) * s.Cp + ch];
        acc += (av - a_zero) * static_cast<int32_t>(wrow[r * s.kw + q]);
      }
    }
    c[m * s.O + o] = acc;
  }
}

// ---------------------------------------------------------------------------------------------
// Host side.

ConvShape conv_shape(const at::Tensor& input, const Conv2dDeviceWeights& w, const Conv2dParams& p,
                     const char* op) {
  TORCH_CHECK(input.dim() == 4, op, ": input must have shape [N, C, H, W], got shape ",
              shape_string(input));
  TORCH_CHECK(input.size(1) == w.in_channels, op, ": input must have ", w.in_channels,
              " channels (in_channels of packed), got shape ", shape_string(input));
  TORCH_CHECK(p.groups == w.groups, op, ": groups (", p.groups, ") differ from the weights' (",
              w.groups, ")");
  TORCH_CHECK(input.device() == w.weight.device(), op, ": input must be on the weights' device (",
              w.weight.device(), "), got ", input.device());
  ConvShape s{};
  s.N = input.size(0);
  s.C = input.size(1);
  s.H = input.size(2);
  s.W = input.size(3);
  s.Cp = round_up(s.C, 16);
  s.O = w.out_channels;
  s.Og = w.out_channels / w.groups;
  s.Cg = w.in_channels / w.groups;
  s.Cgp = w.channels_padded;
  s.kh = w.kh;
  s.kw = w.kw;
  s.sh = p.stride[0];
  s.sw = p.stride[1];
  s.ph = p.padding[0];
  s.pw = p.padding[1];
  s.dh = p.dilation[0];
  s.dw = p.dilation[1];
  TORCH_CHECK(s.sh > 0 && s.sw > 0 && s.dh > 0 && s.dw > 0 && s.ph >= 0 && s.pw >= 0, op,
              ": stride and dilation must be positive and padding non-negative");
  // Checked before dividing: C++ division truncates towards zero, so a negative span of less
  // than one stride would give a size of 1.
  const int64_t span_h = s.H + 2 * s.ph - s.dh * (s.kh - 1) - 1;
  const int64_t span_w = s.W + 2 * s.pw - s.dw * (s.kw - 1) - 1;
  TORCH_CHECK(span_h >= 0 && span_w >= 0, op, ": the input ", shape_string(input),
              " is smaller than the (dilated) kernel after padding");
  s.Ho = span_h / s.sh + 1;
  s.Wo = span_w / s.sw + 1;
  s.M = s.N * s.Ho * s.Wo;
  s.Ktot = s.kh * s.kw * s.Cgp;
  return s;
}

// The accumulator matrix [M, O] (int32, NHWC) for the activation matrix `a` ([>= N*H*W, Cp]).
// qparams / a_shift / host_zero give a_zero as in the epilogue. col_sums_needed tells the
// caller whether the epilogue must subtract a_zero * colsum (all but the depthwise kernel).
at::Tensor accumulators(const at::Tensor& a, const Conv2dDeviceWeights& w, const ConvShape& s,
                        const std::string& kernel, const float* qparams, int32_t a_shift,
                        int32_t host_zero, bool* col_sums_needed) {
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  *col_sums_needed = true;
  if (kernel == "gemm") {
    // The GEMM's rows are all N*H*W pixels (== M here) of a, already padded to padded_rows(M).
    at::Tensor acc = gemm_s8s8s32_cuda(a, w.gemm_weight);  // [Mp, round_up(O, 8)]
    return acc;
  }
  at::Tensor acc = at::empty({s.M, s.O}, a.options().dtype(at::kInt));
  if (kernel == "depthwise") {
    *col_sums_needed = false;
    const int64_t blocks = std::max<int64_t>(1, std::min(ceil_div(s.M * s.O, kThreads), kMaxBlocks));
    conv_depthwise_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
        a.const_data_ptr<int8_t>(), w.weight.const_data_ptr<int8_t>(),
        acc.mutable_data_ptr<int32_t>(), s, qparams, a_shift, host_zero);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return acc;
  }
  const int64_t gx = ceil_div(s.Og, kTile), gy = ceil_div(s.M, kTile);
  TORCH_CHECK(gy <= 65535 && s.O / s.Og <= 65535, "int8_conv2d (CUDA): ", s.M,
              " output pixels exceed the implicit GEMM's grid (at most ", 65535 * kTile, ")");
  const dim3 grid(static_cast<unsigned>(gx), static_cast<unsigned>(gy),
                  static_cast<unsigned>(s.O / s.Og));
  const auto* ap = reinterpret_cast<const uint8_t*>(a.const_data_ptr<int8_t>());
  const auto* wp = reinterpret_cast<const uint8_t*>(w.weight.const_data_ptr<int8_t>());
  if (w.groups == 1) {
    conv_implicit_gemm_kernel<true><<<grid, dim3(16, 16), 0, stream>>>(
        ap, wp, acc.mutable_data_ptr<int32_t>(), s, qparams, a_shift, host_zero);
  } else {
    conv_implicit_gemm_kernel<false><<<grid, dim3(16, 16), 0, stream>>>(
        ap, wp, acc.mutable_data_ptr<int32_t>(), s, qparams, a_shift, host_zero);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return acc;
}

at::Tensor empty_output(const at::Tensor& input, const ConvShape& s, at::ScalarType dtype) {
  return at::empty({s.N, s.O, s.Ho, s.Wo},
                   input.options().dtype(dtype).memory_format(at::MemoryFormat::ChannelsLast));
}

}  // namespace

Conv2dDeviceWeights conv2d_device_weights(const at::Tensor& weight, const at::Tensor& weight_scale,
                                          const std::optional<at::Tensor>& bias,
                                          const std::optional<at::Tensor>& out_multiplier,
                                          const std::optional<at::Tensor>& out_shift,
                                          int64_t groups, const c10::Device& device) {
  const char* op = "int8_conv2d";
  TORCH_CHECK(weight.scalar_type() == at::kChar && weight.dim() == 4, op,
              ": weight must be int8 [O, C / groups, kh, kw], got ", weight.scalar_type(), " ",
              shape_string(weight));
  TORCH_CHECK(groups > 0 && weight.size(0) % groups == 0, op, ": groups (", groups,
              ") must divide out_channels (", weight.size(0), ")");
  Conv2dDeviceWeights w;
  w.out_channels = weight.size(0);
  w.in_channels = weight.size(1) * groups;
  w.groups = groups;
  w.kh = weight.size(2);
  w.kw = weight.size(3);
  const int64_t cg = weight.size(1);
  w.channels_padded = groups == 1 ? round_up(cg, 16) : cg;
  const at::Tensor ohwi = weight.detach().to(at::kCPU).permute({0, 2, 3, 1}).contiguous();
  w.column_sums = ohwi.sum({1, 2, 3}, /*keepdim=*/false, at::kInt).to(device).contiguous();
  const at::Tensor padded = at::constant_pad_nd(ohwi, {0, w.channels_padded - cg}, 0);
  w.weight = padded.reshape({w.out_channels, w.kh * w.kw * w.channels_padded}).to(device).contiguous();
  if (groups == 1 && w.kh == 1 && w.kw == 1) {
    const int64_t np = round_up(w.out_channels, 8);
    w.gemm_weight = at::constant_pad_nd(
                        padded.reshape({w.out_channels, w.channels_padded}), {0, 0, 0, np - w.out_channels}, 0)
                        .to(device)
                        .contiguous();
  }
  const auto vec = [&](const at::Tensor& t) {
    return t.detach().to(device, at::kFloat).contiguous();
  };
  w.weight_scale = vec(weight_scale);
  w.bias = bias.has_value() ? vec(*bias)
                            : at::zeros({w.out_channels}, weight_scale.options().device(device).dtype(at::kFloat));
  TORCH_CHECK(out_multiplier.has_value() == out_shift.has_value(), op,
              ": out_multiplier and out_shift must be given together");
  if (out_multiplier.has_value()) {
    w.out_multiplier = vec(*out_multiplier);
    w.out_shift = vec(*out_shift);
  }
  return w;
}

std::string conv2d_cuda_kernel(const Conv2dDeviceWeights& w, const Conv2dParams& p) {
  if (w.groups == 1 && w.kh == 1 && w.kw == 1 && p.stride[0] == 1 && p.stride[1] == 1 &&
      p.padding[0] == 0 && p.padding[1] == 0) {
    return "gemm";  // dilation is irrelevant for a 1x1 kernel
  }
  if (w.groups > 1 && w.groups == w.in_channels) return "depthwise";
  return "implicit_gemm";
}

at::Tensor int8_conv2d_acc_cuda(const at::Tensor& input, int64_t input_zero_point,
                                const Conv2dDeviceWeights& w, const Conv2dParams& p) {
  const char* op = "int8_conv2d_acc";
  const auto dt = input.scalar_type();
  TORCH_CHECK(dt == at::kByte || dt == at::kChar, op, ": input must be uint8 or int8, got ", dt);
  cpu::check_integer_input_zero_point(op, dt, input_zero_point);
  const bool is_signed = dt == at::kChar;
  const c10::cuda::CUDAGuard device_guard(input.device());
  const ConvShape s = conv_shape(input, w, p, op);
  at::Tensor out = empty_output(input, s, at::kInt);
  if (s.M == 0 || s.O == 0) return out;
  // NHWC memory: the channels_last tensor's storage, [N*H*W, C] row-major.
  const at::Tensor x = input.contiguous(at::MemoryFormat::ChannelsLast).permute({0, 2, 3, 1});
  const at::Tensor a = convert_rows_cuda(x, s.N * s.H * s.W, s.C, s.Cp);
  const int32_t a_zero = static_cast<int32_t>(input_zero_point) + (is_signed ? 0 : -128);
  const std::string kernel = conv2d_cuda_kernel(w, p);
  bool subtract = true;
  const at::Tensor acc = accumulators(a, w, s, kernel, nullptr, 0, a_zero, &subtract);

  EpilogueParams e;
  e.acc = acc.const_data_ptr<int32_t>();
  e.ld_acc = acc.size(1);
  e.M = s.M;
  e.N = s.O;
  e.col_sums = subtract ? w.column_sums.const_data_ptr<int32_t>() : nullptr;
  e.zero_point = a_zero;
  e.out_raw = out.mutable_data_ptr<int32_t>();  // channels_last: [N, Ho, Wo, O] in memory
  e.ldo = s.O;
  epilogue_cuda(e);
  return out;
}

at::Tensor int8_conv2d_cuda(const at::Tensor& input, const at::Tensor& input_scale,
                            const at::Tensor& input_zero_point, int64_t quant_min,
                            int64_t quant_max, const Conv2dDeviceWeights& w,
                            const Conv2dParams& p, Activation activation) {
  const char* op = "int8_conv2d";
  const auto dt = input.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16, op,
              ": input must be float32, float16 or bfloat16, got ", dt);
  check_activation_range(op, quant_min, quant_max);
  const c10::cuda::CUDAGuard device_guard(input.device());
  const at::Tensor qparams = activation_qparams_cuda(Int8Op::kInt8Conv2d, input, input_scale,
                                                     input_zero_point, quant_min, quant_max);
  const ConvShape s = conv_shape(input, w, p, op);
  at::Tensor out = empty_output(input, s, at::kFloat);
  if (s.M == 0 || s.O == 0) return out;
  const at::Tensor x = input.contiguous(at::MemoryFormat::ChannelsLast).permute({0, 2, 3, 1});
  const at::Tensor a =
      quantize_rows_cuda(x, s.N * s.H * s.W, s.C, s.Cp, qparams, quant_min, quant_max);
  const std::string kernel = conv2d_cuda_kernel(w, p);
  const int32_t a_shift = activation_shift(quant_min);
  bool subtract = true;
  const at::Tensor acc =
      accumulators(a, w, s, kernel, qparams.const_data_ptr<float>(), a_shift, 0, &subtract);

  EpilogueParams e;
  e.acc = acc.const_data_ptr<int32_t>();
  e.ld_acc = acc.size(1);
  e.M = s.M;
  e.N = s.O;
  e.col_sums = subtract ? w.column_sums.const_data_ptr<int32_t>() : nullptr;
  e.qparams = qparams.const_data_ptr<float>();
  e.a_shift = a_shift;
  e.w_scale = w.weight_scale.const_data_ptr<float>();
  e.bias = w.bias.const_data_ptr<float>();
  if (w.out_multiplier.has_value()) {
    e.multiplier = w.out_multiplier->const_data_ptr<float>();
    e.shift = w.out_shift->const_data_ptr<float>();
  }
  e.activation = activation;
  e.out = out.mutable_data_ptr<float>();
  e.ldo = s.O;
  epilogue_cuda(e);
  return out;
}

// ---------------------------------------------------------------------------------------------
// The operators torchqat::int8_conv2d / int8_conv2d_acc on CUDA: the CPU operators' checks and
// messages (csrc/ops/cpu/int8_conv2d.cpp), then PackedConv2d's weights on the input's device
// (laid out there on first use and kept, PackedConv2d::device_cache) and the kernels above.

namespace {

using ops::PackedConv2d;

// The CPU operators' checks of packed and input (ops/cpu/int8_common.h), less "input must be a
// CPU tensor".
void check_input(const char* op, const c10::intrusive_ptr<PackedConv2d>& packed,
                 const at::Tensor& input) {
  cpu::check_packed_conv2d(op, packed, input, /*require_cpu=*/false);
}

// The dispatcher picks this kernel when any tensor argument is on a GPU, so input itself may
// not be: say so before a CUDAGuard would assert on a CPU device.
void check_device(const char* op, const char* name, const at::Tensor& t,
                  const at::Tensor& input) {
  TORCH_CHECK(t.device() == input.device(), op, ": ", name, " must be on input's device (",
              input.device(), "), got ", t.device());
}

Conv2dParams conv_params(const PackedConv2d& packed) {
  const auto st = packed.stride(), pd = packed.padding(), dl = packed.dilation();
  Conv2dParams p;
  p.stride = {st[0], st[1]};
  p.padding = {pd[0], pd[1]};
  p.dilation = {dl[0], dl[1]};
  p.groups = packed.groups();
  return p;
}

// packed's weights on `device`: laid out by conv2d_device_weights on the first call for that
// device (synchronous host-to-device copies), then the same object every time.
std::shared_ptr<const Conv2dDeviceWeights> device_weights(const PackedConv2d& packed,
                                                          const c10::Device& device) {
  return std::static_pointer_cast<const Conv2dDeviceWeights>(
      packed.device_cache(device, [&]() -> std::shared_ptr<const void> {
        return std::make_shared<const Conv2dDeviceWeights>(conv2d_device_weights(
            packed.weight(), packed.weight_scale(), packed.bias(), packed.out_multiplier(),
            packed.out_shift(), packed.groups(), device));
      }));
}

at::Tensor int8_conv2d_op(const at::Tensor& input, const at::Tensor& input_scale,
                          const at::Tensor& input_zero_point, int64_t quant_min,
                          int64_t quant_max, const c10::intrusive_ptr<PackedConv2d>& packed,
                          c10::string_view activation) {
  const char* op = "int8_conv2d";
  const Activation act = parse_activation(op, activation);
  const auto dt = input.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16, op,
              ": input must be float32, float16 or bfloat16, got ", dt);
  check_input(op, packed, input);
  check_activation_range(op, quant_min, quant_max);
  check_device(op, "input_scale", input_scale, input);
  check_device(op, "input_zero_point", input_zero_point, input);
  const c10::cuda::CUDAGuard device_guard(input.device());
  const auto w = device_weights(*packed, input.device());
  return int8_conv2d_cuda(input, input_scale, input_zero_point, quant_min, quant_max, *w,
                          conv_params(*packed), act);
}

at::Tensor int8_conv2d_acc_op(const at::Tensor& input, int64_t input_zero_point,
                              const c10::intrusive_ptr<PackedConv2d>& packed) {
  const char* op = "int8_conv2d_acc";
  const auto dt = input.scalar_type();
  TORCH_CHECK(dt == at::kByte || dt == at::kChar, op, ": input must be uint8 or int8, got ", dt);
  check_input(op, packed, input);
  cpu::check_integer_input_zero_point(op, dt, input_zero_point);
  const c10::cuda::CUDAGuard device_guard(input.device());
  const auto w = device_weights(*packed, input.device());
  return int8_conv2d_acc_cuda(input, input_zero_point, *w, conv_params(*packed));
}

}  // namespace
}  // namespace cuda
}  // namespace torchqat

TORCH_LIBRARY_IMPL(torchqat, CUDA, m) {
  // The kernels' inferred signatures name PackedConv2d: register the class first, whichever
  // static initialiser runs first.
  torchqat::ops::register_packed_conv2d_class();
  m.impl("int8_conv2d", &torchqat::cuda::int8_conv2d_op);
  m.impl("int8_conv2d_acc", &torchqat::cuda::int8_conv2d_acc_op);
}
