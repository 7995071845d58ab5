// Host-side argument checking and layout shared by the CPU and CUDA wrappers of fake_quantize,
// quantize and dequantize.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <vector>

namespace torchqat {
namespace ops {

// One fake-quant call after validation, with its tensors in the layout the kernels read: dense,
// in memory order viewed as [outer, channels, inner], the scale indexed by the middle coordinate.
struct FakeQuantProblem {
  int64_t axis = -1;  // normalised channel axis, -1 for per-tensor
  int64_t outer = 1;
  int64_t channels = 1;
  int64_t inner = 0;
  at::Tensor input;  // the input itself when its layout allows, else a dense copy
  at::Tensor grad;   // backward only: the incoming gradient, laid out exactly like `input`
  bool copied = false;  // `input` is a copy: results must be copied back into the caller's layout
  // CPU only: the validated values of scale and zero_point (as stored, not yet rounded), read
  // once on the host so the CPU wrapper need not read them again.
  std::vector<double> host_scale;
  std::vector<double> host_zero_point;

  int64_t numel() const { return outer * channels * inner; }
};

// Checks what the host knows without reading device memory (dtypes, shapes, devices, the range,
// the axis) and, for CPU tensors, the values of scale and zero_point. Every message names `op`,
// the argument and the value. `grad` is undefined for the forward operators.
FakeQuantProblem prepare_fake_quant(const char* op, const at::Tensor& input,
                                    const at::Tensor& scale, const at::Tensor& zero_point,
                                    int64_t quant_min, int64_t quant_max,
                                    std::optional<int64_t> axis, const at::Tensor& grad);

void check_grad_factor(const char* op, double grad_factor);

// fake_quantize_lsq_after_silu's `pre_activation`: input's shape, dtype and device.
void check_pre_activation(const char* op, const at::Tensor& input,
                          const at::Tensor& pre_activation);

// fake_quantize_lsq's min_scale: max(scale, min_scale) when min_scale > 0, else scale itself.
// Checks that min_scale is finite and >= 0.
at::Tensor floor_scale(const char* op, const at::Tensor& scale, double min_scale);

// The output of an element-wise result: empty_like(input) keeps the caller's strides, which is
// what the fake (meta) implementations promise. `work` is where the kernel writes: the output
// itself, or a dense temporary when the problem works on a copy.
struct FakeQuantOutput {
  at::Tensor out;
  at::Tensor work;
  void finish() {
    if (!work.is_same(out)) out.copy_(work);
  }
};
// `dtype`: the output's dtype when it is not the input's (quantize, dequantize).
FakeQuantOutput make_output(const at::Tensor& caller_input, const FakeQuantProblem& problem,
                            std::optional<at::ScalarType> dtype = std::nullopt);

// dequantize's checks (dtypes, devices, the axis, the parameter shapes; not the parameter
// values, which CUDA checks on the device) and the same layout as prepare_fake_quant's, for an
// integer input. Every message names dequantize, the argument and the value.
FakeQuantProblem prepare_dequantize(const at::Tensor& input, const at::Tensor& scale,
                                    const at::Tensor& zero_point, std::optional<int64_t> axis);

// quantize's output dtype: the smallest of uint8, int8, int16, int32 that holds
// [quant_min, quant_max].
at::ScalarType quantized_dtype(int64_t quant_min, int64_t quant_max);

// dtype of the zero-point gradient: zero_point's own when it is floating, else scale's.
at::ScalarType zero_point_grad_dtype(const at::Tensor& scale, const at::Tensor& zero_point);

}  // namespace ops
}  // namespace torchqat
