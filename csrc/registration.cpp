// The one TORCH_LIBRARY(torchqat, m): every schema of the library, with the shape of each tensor.
// Kernels register implementations in csrc/ops/{cpu,cuda,autograd}/ with TORCH_LIBRARY_IMPL.
// Numerics: csrc/core/fake_quant.h and docs/numerics.md.
#include <torch/library.h>

#include "ops/cpu/fake_quantize_kernels.h"
#include "ops/cpu/int8_kernels.h"
#include "ops/packed_conv2d.h"
#include "ops/packed_linear.h"

TORCH_LIBRARY(torchqat, m) {
  // The element-wise fake-quant operators take inputs in any layout (non-dense ones are copied
  // to a dense layout inside) and return results laid out like `input`, as their fake
  // implementations say (python/torchqat/_ops.py). flexible_layout lets Inductor hand them
  // tensors in the layout it chose (channels_last around convolutions) instead of re-laying
  // every activation out before and after each call (docs/benchmarks.md, session 12).
  const std::vector<at::Tag> elementwise = {at::Tag::flexible_layout};

  // Custom classes first: the INT8 schemas below name them.
  torchqat::ops::register_packed_linear_class();
  torchqat::ops::register_packed_conv2d_class();

  // Fake quantization with a straight-through estimator: the gradient flows to `input` only,
  // masked to the elements inside the quantized range.
  m.def(
      "fake_quantize("
      "Tensor input, "       // any shape; float32 / float16 / bfloat16 / float64
      "Tensor scale, "       // per-tensor: 1 element; per-channel: [input.size(axis)]; float32/64
      "Tensor zero_point, "  // same shape as scale; integer, or float (rounded, clamped)
      "int quant_min, "
      "int quant_max, "
      "int? axis=None"       // None: per-tensor; else the channel axis (negative counts from end)
      ") -> Tensor",         // input's shape, dtype and strides
      elementwise);
  m.def(
      "fake_quantize_backward("
      "Tensor grad, "        // input's shape
      "Tensor input, "       // the forward input
      "Tensor scale, "
      "Tensor zero_point, "
      "int quant_min, "
      "int quant_max, "
      "int? axis=None"
      ") -> Tensor",         // grad * mask, input's shape and strides
      elementwise);
  // fake_quantize_backward writing grad * mask over `grad` (returns nothing: functionalization
  // takes no custom operator that returns an alias of its input). The autograd
  // backward uses it when it owns the only reference to `grad`.
  m.def(
      "fake_quantize_backward_("
      "Tensor(a!) grad, "    // input's shape and dtype; overwritten with grad * mask
      "Tensor input, "
      "Tensor scale, "
      "Tensor zero_point, "
      "int quant_min, "
      "int quant_max, "
      "int? axis=None"
      ") -> ()");

  // Fake quantization with learnable scale and zero point (LSQ / LSQ+). Same forward as
  // fake_quantize; the backward also reduces gradients for `scale` and `zero_point`.
  m.def(
      "fake_quantize_lsq("
      "Tensor input, "       // any shape; float32 / float16 / bfloat16 / float64
      "Tensor scale, "       // per-tensor: 1 element; per-channel: [input.size(axis)]
      "Tensor zero_point, "  // same shape as scale; float when learnable
      "int quant_min, "
      "int quant_max, "
      "int? axis=None, "
      "float grad_factor=1.0, "  // multiplies the scale and zero-point gradients (LSQ's g)
      "float min_scale=0.0"  // > 0: the forward uses max(scale, min_scale) and the scale's
                             // gradient passes the floor unchanged (straight through), as
                             // clamp_min_ste, in the same autograd node
      ") -> Tensor",
      elementwise);
  m.def(
      "fake_quantize_lsq_backward("
      "Tensor grad, "        // input's shape
      "Tensor input, "
      "Tensor scale, "
      "Tensor zero_point, "
      "int quant_min, "
      "int quant_max, "
      "int? axis=None, "
      "float grad_factor=1.0"
      ") -> (Tensor, Tensor, Tensor)",  // (grad_input: input's shape and strides, grad_scale:
                                         //  scale's shape and dtype, grad_zero_point:
                                         //  zero_point's shape, float dtype)
      elementwise);
  // fake_quantize_lsq_backward writing grad_input over `grad`; returns (grad_scale,
  // grad_zero_point). The autograd backward uses it when it owns the only reference to `grad`.
  m.def(
      "fake_quantize_lsq_backward_("
      "Tensor(a!) grad, "    // input's shape and dtype; overwritten with grad_input
      "Tensor input, "
      "Tensor scale, "
      "Tensor zero_point, "
      "int quant_min, "
      "int quant_max, "
      "int? axis=None, "
      "float grad_factor=1.0"
      ") -> (Tensor, Tensor)");

  // fake_quantize_lsq of the output of a SiLU, given the SiLU's input as well:
  // input = silu(pre_activation). The value is fake_quantize_lsq(input, ...); the gradient flows
  // to pre_activation (silu_backward of the LSQ input gradient), scale and zero_point, and not to
  // input, which must not require grad. Its backward fuses the two element-wise passes into one
  // (CPU). FakeQuantizer takes it in eager mode when its input comes straight from a SiLU.
  m.def(
      "fake_quantize_lsq_after_silu("
      "Tensor input, "           // silu(pre_activation); any shape; floating dtype
      "Tensor pre_activation, "  // input's shape, dtype and device
      "Tensor scale, "
      "Tensor zero_point, "
      "int quant_min, "
      "int quant_max, "
      "int? axis=None, "
      "float grad_factor=1.0, "
      "float min_scale=0.0"
      ") -> Tensor");            // input's shape, dtype and strides
  // Its backward (CPU): (grad_pre_activation, grad_scale, grad_zero_point), where
  // grad_pre_activation = silu'(pre_activation) * grad_input and grad_input is
  // fake_quantize_lsq_backward's, in one pass. The sigmoid comes from input / pre_activation
  // (float32 / float64), so it agrees with aten::silu_backward up to float rounding.
  m.def(
      "fake_quantize_lsq_after_silu_backward("
      "Tensor grad, "            // input's shape
      "Tensor input, "
      "Tensor pre_activation, "
      "Tensor scale, "
      "Tensor zero_point, "
      "int quant_min, "
      "int quant_max, "
      "int? axis=None, "
      "float grad_factor=1.0"
      ") -> (Tensor, Tensor, Tensor)");
  // The same, writing grad_pre_activation over `grad` (bit for bit the functional result);
  // returns (grad_scale, grad_zero_point).
  m.def(
      "fake_quantize_lsq_after_silu_backward_("
      "Tensor(a!) grad, "        // input's shape and dtype; overwritten with grad_pre_activation
      "Tensor input, "
      "Tensor pre_activation, "
      "Tensor scale, "
      "Tensor zero_point, "
      "int quant_min, "
      "int quant_max, "
      "int? axis=None, "
      "float grad_factor=1.0"
      ") -> (Tensor, Tensor)");

  // For a per-tensor learnable quantizer on an input that needs no gradient (the model's image),
  // whose scale gradient torchqat computes by the adjoint identity (CPU): LSQ's per-element
  // derivative of fake_quantize_lsq(input) with respect to the scale (inside the range
  // (y - x) / s, below quant_min - z, above quant_max - z) and the flat indices, in row-major
  // order, of the elements quantized outside [quant_min, quant_max] (where the zero point's
  // derivative, -s, is nonzero).
  m.def(
      "fake_quantize_lsq_input_maps("
      "Tensor input, "           // any shape; float32 / float64
      "Tensor scale, "           // 1 element
      "Tensor zero_point, "      // 1 element
      "int quant_min, "
      "int quant_max"
      ") -> (Tensor, Tensor)");  // (scale map: input's shape and dtype, contiguous;
                                 //  clipped: int64 [number clipped])

  // max(input, min) whose gradient passes straight through, also where input < min: how a
  // FakeQuantizer keeps a learnable scale positive without a host synchronisation, while a scale
  // an optimizer pushed below the floor still receives gradient and can recover (a plain
  // clamp_min would give it none). One autograd node instead of four ATen ops.
  m.def(
      "clamp_min_ste("
      "Tensor input, "       // any shape and floating dtype (a scale vector, in practice)
      "float min"
      ") -> Tensor");        // input's shape and dtype

  // The instruction set of the CPU kernels in use: "avx512", "avx2" or "default". It takes no
  // tensor, so it has one kernel for every backend, given here with its schema.
  m.def("cpu_capability() -> str", &torchqat::cpu::cpu_capability);

  // Real quantization into plain integer tensors (not PyTorch's quantized dtypes), with exactly
  // fake_quantize's rounding: dequantize(quantize(x)) == fake_quantize(x).
  m.def(
      "quantize("
      "Tensor input, "       // any shape; float32 / float16 / bfloat16 / float64
      "Tensor scale, "       // per-tensor: 1 element; per-channel: [input.size(axis)]; float32/64
      "Tensor zero_point, "  // same shape as scale; integer in range, or float (rounded, clamped)
      "int quant_min, "
      "int quant_max, "
      "int? axis=None"
      ") -> Tensor");        // input's shape and strides; the smallest of uint8, int8, int16,
                             // int32 holding [quant_min, quant_max]; NaN becomes zero_point
  m.def(
      "dequantize("
      "Tensor input, "       // any shape; uint8 / int8 / int16 / int32
      "Tensor scale, "       // per-tensor: 1 element; per-channel: [input.size(axis)]; float32/64
      "Tensor zero_point, "  // same shape as scale; integer, or float (rounded half to even)
      "int? axis=None"
      ") -> Tensor");        // float32, input's shape and strides: (input - zero_point) * scale

  // INT8 linear layer: quantizes the input per tensor, multiplies it by the packed int8
  // weights with int32 accumulation, and applies the float epilogue
  //   y = act((acc * (s_x * s_w[n]) + bias[n]) * out_multiplier[n] + out_shift[n])
  // (multiplier and shift only where packed holds them, e.g. a folded BatchNorm).
  m.def(
      "int8_linear("
      "Tensor input, "             // [*, in_features]; float32 / float16 / bfloat16
      "Tensor input_scale, "       // 1 element, float32
      "Tensor input_zero_point, "  // 1 element; integer in range, or float (rounded, clamped)
      "int quant_min, "            // 8-bit: within [0, 255] or [-128, 127]
      "int quant_max, "
      "__torch__.torch.classes.torchqat.PackedLinear packed, "  // weight [out, in] int8, ...
      "str activation=\"none\""  // "none", "relu" or "silu"
      ") -> Tensor");              // [*, out_features], float32
  // The integer part of int8_linear, for tests and custom epilogues:
  //   out[..., n] = sum_k (input[..., k] - input_zero_point) * weight[n, k]   (int32, exact)
  m.def(
      "int8_matmul("
      "Tensor input, "             // [*, in_features]; uint8 or int8
      "int input_zero_point, "     // within input's dtype range
      "__torch__.torch.classes.torchqat.PackedLinear packed"
      ") -> Tensor");              // [*, out_features], int32
  // Names of the CPU GEMM kernels PackedLinear can pack for on this machine, best first
  // ("int_mm" is torch._int_mm; "vnni_emulated" runs the VNNI kernel's logic on AVX2, for tests).
  m.def("int8_linear_kernels() -> str[]", &torchqat::cpu::int8_cpu_gemm_kernels);

  // INT8 2-D convolution (zero padding): quantizes the input per tensor into NHWC bytes (padded
  // positions act as q = zero point, so they contribute exactly 0), convolves with the packed
  // int8 weights in int32 and applies int8_linear's epilogue per output channel c:
  //   y = act((acc * (s_x * s_w[c]) + bias[c]) * out_multiplier[c] + out_shift[c])
  m.def(
      "int8_conv2d("
      "Tensor input, "             // [N, C, H, W], any memory format; float32 / float16 / bfloat16
      "Tensor input_scale, "       // 1 element, float32
      "Tensor input_zero_point, "  // 1 element; integer in range, or float (rounded, clamped)
      "int quant_min, "            // 8-bit: within [0, 255] or [-128, 127]
      "int quant_max, "
      "__torch__.torch.classes.torchqat.PackedConv2d packed, "  // weight [O, C/groups, kh, kw]
      "str activation=\"none\""  // "none", "relu" or "silu"
      ") -> Tensor");              // [N, O, Ho, Wo], float32, channels_last
  // The integer part of int8_conv2d, for tests and custom epilogues:
  //   out[n, o, y, x] = sum over the window of (input - input_zero_point) * weight  (int32, exact;
  //   padding contributes 0)
  m.def(
      "int8_conv2d_acc("
      "Tensor input, "             // [N, C, H, W], any memory format; uint8 or int8
      "int input_zero_point, "     // within input's dtype range
      "__torch__.torch.classes.torchqat.PackedConv2d packed"
      ") -> Tensor");              // [N, O, Ho, Wo], int32, channels_last
}
