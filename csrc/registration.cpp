// The one TORCH_LIBRARY(torchqat, m): every schema of the library, with the shape of each tensor.
// Kernels register implementations in csrc/ops/{cpu,cuda,autograd}/ with TORCH_LIBRARY_IMPL.
// Numerics: csrc/core/fake_quant.h and docs/numerics.md.
#include <torch/library.h>

#include "ops/cpu/fake_quantize_kernels.h"

TORCH_LIBRARY(torchqat, m) {
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
      ") -> Tensor");        // input's shape, dtype and strides
  m.def(
      "fake_quantize_backward("
      "Tensor grad, "        // input's shape
      "Tensor input, "       // the forward input
      "Tensor scale, "
      "Tensor zero_point, "
      "int quant_min, "
      "int quant_max, "
      "int? axis=None"
      ") -> Tensor");        // grad * mask, input's shape

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
      "float grad_factor=1.0"  // multiplies the scale and zero-point gradients (LSQ's g)
      ") -> Tensor");
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
      ") -> (Tensor, Tensor, Tensor)");  // (grad_input: input's shape, grad_scale: scale's
                                          //  shape and dtype, grad_zero_point: zero_point's
                                          //  shape, float dtype)

  // The instruction set of the CPU kernels in use: "avx512", "avx2" or "default". It takes no
  // tensor, so it has one kernel for every backend, given here with its schema.
  m.def("cpu_capability() -> str", &torchqat::cpu::cpu_capability);
}
