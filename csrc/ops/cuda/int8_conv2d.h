// CUDA INT8 2-D convolution as free functions on plain tensors, for PackedConv2d's CUDA
// registration (the int8_conv2d / int8_conv2d_acc contract: their schemas in
// csrc/registration.cpp).
// Implemented in int8_conv2d.cu. Compute in NHWC (channels_last); outputs are channels_last
// [N, O, Ho, Wo] tensors.
//
// Numerics: the CPU's. Activations are quantized per tensor with fake_quantize's rounding into
// int8 a = q + a_shift (a_shift = -128 for unsigned ranges); positions outside the image act
// as q = z (they contribute 0), and
//   acc[m][o] = sum over the window of (q - z) * w[o]          int32, exact
//   y         = act(fma(fma(float(acc), s_x * s_w[o], bias[o]), mult[o], shift[o]))
// with the epilogue of int8_linear (int8_gemm.h).
//
// Kernels, chosen by conv2d_cuda_kernel():
//   "gemm"          1x1, stride 1, no padding, groups 1: the NHWC input is the GEMM's A matrix
//                   [N*H*W, C]; cuBLASLt int8 GEMM (or dp4a) as for int8_linear.
//   "depthwise"     groups == in_channels (any channel multiplier): one thread per output, a
//                   direct loop over the window.
//   "implicit_gemm" everything else: a tiled dp4a implicit GEMM (M = N*Ho*Wo rows, O columns,
//                   K = kh*kw*C/groups), the window gathered while staging A in shared memory;
//                   32-bit loads where groups == 1 (channels padded to 16), byte gathers else.
//
// The operators: int8_conv2d.cu also registers torchqat::int8_conv2d and int8_conv2d_acc for
// CUDA (TORCH_LIBRARY_IMPL(torchqat, CUDA, m)). Their wrappers run the CPU operators' checks
// (same messages), fetch the PackedConv2d's Conv2dDeviceWeights for the input's device from
// PackedConv2d::device_cache (built by conv2d_device_weights on first use, kept per device), and
// call int8_conv2d_cuda / int8_conv2d_acc_cuda with the packed object's Conv2dParams. The packed
// object itself stays on the CPU, so one saved model serves both devices.
//
// Status: compiled with nvcc (sm_80, sm_90) in CI and run on an H200; tests/test_int8_cuda.py
// compares every kernel against the CPU operators (bit-exact accumulators and "none" / "relu"
// outputs) where a GPU is present.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <array>
#include <cstdint>
#include <optional>
#include <string>

#include "ops/cuda/int8_gemm.h"

namespace torchqat {
namespace cuda {

struct Conv2dParams {
  std::array<int64_t, 2> stride{1, 1};
  std::array<int64_t, 2> padding{0, 0};
  std::array<int64_t, 2> dilation{1, 1};
  int64_t groups = 1;
};

// A PackedConv2d's parameters on one GPU, in the layouts of the kernels. Build it once per
// device (conv2d_device_weights) and keep it, as PackedLinear::device_pack does.
struct Conv2dDeviceWeights {
  int64_t out_channels = 0;
  int64_t in_channels = 0;  // C (all groups)
  int64_t groups = 1;
  int64_t kh = 0;
  int64_t kw = 0;
  int64_t channels_padded = 0;  // Cgp: channels per tap in `weight` (C rounded up to 16 when
                                // groups == 1, else C / groups)
  at::Tensor weight;        // int8 [O, kh * kw * Cgp]: OHWI, channels zero-padded to Cgp
  at::Tensor gemm_weight;   // 1x1, groups 1 only: int8 [round_up(O, 8), Cgp], zero padding
  at::Tensor column_sums;   // int32 [O]: sum of weight[o] (the zero-point correction)
  at::Tensor weight_scale;  // float32 [O]
  at::Tensor bias;          // float32 [O] (zeros without a bias)
  std::optional<at::Tensor> out_multiplier, out_shift;  // float32 [O]
};

// weight: int8 [O, C / groups, kh, kw] (PackedConv2d's unpacked weight, on any device);
// weight_scale, bias, out_multiplier, out_shift: float [O]. Copies them to `device`.
Conv2dDeviceWeights conv2d_device_weights(const at::Tensor& weight, const at::Tensor& weight_scale,
                                          const std::optional<at::Tensor>& bias,
                                          const std::optional<at::Tensor>& out_multiplier,
                                          const std::optional<at::Tensor>& out_shift,
                                          int64_t groups, const c10::Device& device);

// "gemm", "depthwise" or "implicit_gemm" (see above).
std::string conv2d_cuda_kernel(const Conv2dDeviceWeights& w, const Conv2dParams& p);

// int8_conv2d_acc: input uint8 / int8 [N, C, H, W] (any memory format) on w's device ->
// int32 [N, O, Ho, Wo] channels_last, sum of (q - input_zero_point) * w, padding 0.
at::Tensor int8_conv2d_acc_cuda(const at::Tensor& input, int64_t input_zero_point,
                                const Conv2dDeviceWeights& w, const Conv2dParams& p);

// int8_conv2d: input float32 / float16 / bfloat16 [N, C, H, W] (any memory format); input_scale
// and input_zero_point one element each on input's device (checked there, no host sync) ->
// float32 [N, O, Ho, Wo] channels_last.
at::Tensor int8_conv2d_cuda(const at::Tensor& input, const at::Tensor& input_scale,
                            const at::Tensor& input_zero_point, int64_t quant_min,
                            int64_t quant_max, const Conv2dDeviceWeights& w,
                            const Conv2dParams& p, Activation activation);

}  // namespace cuda
}  // namespace torchqat
