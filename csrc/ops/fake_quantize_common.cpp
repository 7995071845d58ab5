#include "ops/fake_quantize_common.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/util/irange.h>

#include <cmath>
#include <limits>

namespace torchqat {
namespace ops {
namespace {

bool is_supported_input_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

// Lays the tensor out so that memory order is [outer, channels, inner] for `axis`.
// Dense per-tensor inputs keep their strides (element order does not matter there);
// channels_last inputs quantized along dim 1 keep theirs (channels become innermost).
void choose_layout(FakeQuantProblem& p, const at::Tensor& input) {
  if (p.axis < 0) {
    p.input = input.is_non_overlapping_and_dense() ? input : input.contiguous();
    p.outer = 1;
    p.channels = 1;
    p.inner = input.numel();
  } else if (input.is_contiguous()) {
    p.input = input;
    p.outer = 1;
    for (int64_t d = 0; d < p.axis; ++d) p.outer *= input.size(d);
    p.channels = input.size(p.axis);
    p.inner = 1;
    for (int64_t d = p.axis + 1; d < input.dim(); ++d) p.inner *= input.size(d);
  } else if (p.axis == 1 && ((input.dim() == 4 && input.is_contiguous(at::MemoryFormat::ChannelsLast)) ||
                             (input.dim() == 5 && input.is_contiguous(at::MemoryFormat::ChannelsLast3d)))) {
    p.input = input;
    p.channels = input.size(1);
    p.outer = p.channels == 0 ? 0 : input.numel() / p.channels;
    p.inner = 1;
  } else {
    FakeQuantProblem dense;
    dense.axis = p.axis;
    choose_layout(dense, input.contiguous());
    p.input = dense.input;
    p.outer = dense.outer;
    p.channels = dense.channels;
    p.inner = dense.inner;
  }
  p.copied = !p.input.is_same(input);
}

std::string shape_string(const at::Tensor& t) {
  std::ostringstream ss;
  ss << t.sizes();
  return ss.str();
}

// Checks that scale and zero_point have parameter dtypes, are on input's device and hold one
// value per channel along `axis`, or one value (axis=None: per-tensor); returns the normalised
// axis, -1 for per-tensor. `what` names the operation in the messages ("quantization",
// "dequantization").
int64_t check_qparams(const char* op, const char* what, const at::Tensor& input,
                      const at::Tensor& scale, const at::Tensor& zero_point,
                      std::optional<int64_t> axis) {
  TORCH_CHECK(scale.scalar_type() == at::kFloat || scale.scalar_type() == at::kDouble, op,
              ": scale must be float32 or float64, got ", scale.scalar_type());
  TORCH_CHECK(at::isIntegralType(zero_point.scalar_type(), /*includeBool=*/false) ||
                  zero_point.scalar_type() == at::kFloat || zero_point.scalar_type() == at::kDouble,
              op, ": zero_point must be an integer, float32 or float64 tensor, got ",
              zero_point.scalar_type());
  TORCH_CHECK(scale.device() == input.device(), op, ": scale must be on input's device (",
              input.device(), "), got ", scale.device());
  TORCH_CHECK(zero_point.device() == input.device(), op,
              ": zero_point must be on input's device (", input.device(), "), got ",
              zero_point.device());
  if (!axis.has_value()) {
    TORCH_CHECK(scale.numel() == 1 && scale.dim() <= 1, op,
                ": scale must hold one element for per-tensor ", what, " (axis=None), got "
                "shape ", shape_string(scale));
    TORCH_CHECK(zero_point.numel() == 1 && zero_point.dim() <= 1, op,
                ": zero_point must hold one element for per-tensor ", what, " (axis=None), "
                "got shape ", shape_string(zero_point));
    return -1;
  }
  const int64_t dim = input.dim();
  const int64_t a = *axis;
  TORCH_CHECK(dim > 0 && a >= -dim && a < dim, op, ": axis must be in [", -dim, ", ", dim - 1,
              "] for a ", dim, "-dimensional input, got axis=", a);
  const int64_t normalised = a < 0 ? a + dim : a;
  const int64_t channels = input.size(normalised);
  TORCH_CHECK(scale.dim() == 1 && scale.numel() == channels, op, ": scale must have shape [",
              channels, "] (input.size(", normalised, ")) for per-channel ", what,
              ", got shape ", shape_string(scale));
  TORCH_CHECK(zero_point.dim() == 1 && zero_point.numel() == channels, op,
              ": zero_point must have shape [", channels, "] (input.size(", normalised,
              ")) for per-channel ", what, ", got shape ", shape_string(zero_point));
  return normalised;
}

// The values of a small CPU tensor (a scale or zero-point vector) as doubles, read in place.
std::vector<double> host_values(const at::Tensor& t) {
  const at::Tensor c = t.is_contiguous() ? t : t.contiguous();
  std::vector<double> v(c.numel());
  AT_DISPATCH_ALL_TYPES_AND2(at::kHalf, at::kBFloat16, c.scalar_type(), "host_values", [&] {
    const scalar_t* p = c.const_data_ptr<scalar_t>();
    for (const auto i : c10::irange(c.numel())) v[i] = static_cast<double>(p[i]);
  });
  return v;
}

std::string at_index(size_t i, size_t n) {
  return n > 1 ? " at index " + std::to_string(i) : std::string();
}

// Value checks of scale and zero_point that only the host can make cheaply: CPU tensors only.
// (CUDA kernels check the same conditions on the device, without a host synchronisation.)
void check_cpu_values(const char* op, FakeQuantProblem& p, at::ScalarType compute_dtype,
                      const at::Tensor& scale, const at::Tensor& zero_point, int64_t quant_min,
                      int64_t quant_max) {
  p.host_scale = host_values(scale);
  // Kernels form 1/s in float32 (float64 for float64 inputs): a scale that is positive in
  // float64 but zero or subnormal there has no finite reciprocal and would turn 0 into NaN.
  const double smallest = compute_dtype == at::kDouble ? std::numeric_limits<double>::min()
                                                       : std::numeric_limits<float>::min();
  for (size_t i = 0; i < p.host_scale.size(); ++i) {
    const double s = p.host_scale[i];
    TORCH_CHECK(std::isfinite(s) && s > 0.0, op, ": scale must be positive and finite, got ", s,
                at_index(i, p.host_scale.size()));
    TORCH_CHECK(s >= smallest, op, ": scale must be at least ", smallest, " (the smallest normal ",
                compute_dtype == at::kDouble ? "float64" : "float32",
                " number, so that 1/scale is finite), got ", s, at_index(i, p.host_scale.size()));
  }
  p.host_zero_point = host_values(zero_point);
  const bool integral = at::isIntegralType(zero_point.scalar_type(), /*includeBool=*/false);
  for (size_t i = 0; i < p.host_zero_point.size(); ++i) {
    const double z = p.host_zero_point[i];
    TORCH_CHECK(std::isfinite(z), op, ": zero_point must be finite, got ", z,
                at_index(i, p.host_zero_point.size()));
    TORCH_CHECK(!integral || (z >= quant_min && z <= quant_max), op,
                ": zero_point must lie in [quant_min, quant_max] = [", quant_min, ", ",
                quant_max, "], got ", static_cast<int64_t>(z),
                at_index(i, p.host_zero_point.size()));
  }
}

}  // namespace

FakeQuantProblem prepare_fake_quant(const char* op, const at::Tensor& input,
                                    const at::Tensor& scale, const at::Tensor& zero_point,
                                    int64_t quant_min, int64_t quant_max,
                                    std::optional<int64_t> axis, const at::Tensor& grad) {
  TORCH_CHECK(is_supported_input_dtype(input.scalar_type()), op,
              ": input must be float32, float64, float16 or bfloat16, got ",
              input.scalar_type());
  TORCH_CHECK(quant_min < quant_max, op, ": quant_min must be < quant_max, got quant_min=",
              quant_min, ", quant_max=", quant_max);
  // 2 to 16 bits, signed or unsigned: every value of the range is exact in float32.
  TORCH_CHECK(quant_min >= -65536 && quant_max <= 65535 && quant_max - quant_min <= 65535, op,
              ": [quant_min, quant_max] must span at most 16 bits within [-65536, 65535], got [",
              quant_min, ", ", quant_max, "]");

  FakeQuantProblem p;
  p.axis = check_qparams(op, "quantization", input, scale, zero_point, axis);
  if (grad.defined()) {
    TORCH_CHECK(grad.sizes() == input.sizes(), op, ": grad must have input's shape ",
                shape_string(input), ", got ", shape_string(grad));
    TORCH_CHECK(grad.scalar_type() == input.scalar_type(), op, ": grad must have input's dtype ",
                input.scalar_type(), ", got ", grad.scalar_type());
    TORCH_CHECK(grad.device() == input.device(), op, ": grad must be on input's device (",
                input.device(), "), got ", grad.device());
  }
  if (input.is_cpu()) {
    const auto compute_dtype = input.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
    check_cpu_values(op, p, compute_dtype, scale, zero_point, quant_min, quant_max);
  }

  choose_layout(p, input);
  if (grad.defined()) {
    if (grad.strides() == p.input.strides()) {
      p.grad = grad;
    } else {
      p.grad = at::empty_like(p.input);
      p.grad.copy_(grad);
    }
  }
  return p;
}

void check_grad_factor(const char* op, double grad_factor) {
  TORCH_CHECK(std::isfinite(grad_factor), op, ": grad_factor must be finite, got ", grad_factor);
}

void check_pre_activation(const char* op, const at::Tensor& input,
                          const at::Tensor& pre_activation) {
  TORCH_CHECK(pre_activation.sizes() == input.sizes(), op,
              ": pre_activation must have input's shape ", shape_string(input), ", got ",
              shape_string(pre_activation));
  TORCH_CHECK(pre_activation.scalar_type() == input.scalar_type(), op,
              ": pre_activation must have input's dtype ", input.scalar_type(), ", got ",
              pre_activation.scalar_type());
  TORCH_CHECK(pre_activation.device() == input.device(), op,
              ": pre_activation must be on input's device (", input.device(), "), got ",
              pre_activation.device());
}

at::Tensor floor_scale(const char* op, const at::Tensor& scale, double min_scale) {
  TORCH_CHECK(std::isfinite(min_scale) && min_scale >= 0.0, op,
              ": min_scale must be finite and >= 0, got ", min_scale);
  if (min_scale == 0.0) return scale;
  TORCH_CHECK(scale.is_floating_point(), op, ": scale must be float32 or float64, got ",
              scale.scalar_type());
  if (scale.is_cpu() && scale.layout() == at::kStrided &&
      !scale.key_set().has_any(c10::DispatchKeySet(
          {c10::DispatchKey::Python, c10::DispatchKey::Functionalize}))) {
    // A CPU scale already at or above the floor (the usual case) is its own floored value:
    // reading it costs nothing, and it saves an operator call and an allocation per quantizer.
    bool above = true;
    AT_DISPATCH_FLOATING_TYPES(scale.scalar_type(), "floor_scale", [&] {
      const at::Tensor c = scale.contiguous();
      const scalar_t* v = c.const_data_ptr<scalar_t>();
      for (int64_t i = 0; i < c.numel() && above; ++i) above = v[i] >= min_scale;
    });
    if (above) return scale;
  }
  return at::clamp_min(scale, min_scale);
}

FakeQuantOutput make_output(const at::Tensor& caller_input, const FakeQuantProblem& problem,
                            std::optional<at::ScalarType> dtype) {
  const at::ScalarType t = dtype.value_or(caller_input.scalar_type());
  at::Tensor out = at::empty_like(caller_input, caller_input.options().dtype(t));
  // Also when the problem works on a dense copy of the input: the kernel can write the output
  // in place of a temporary whenever the two layouts agree (a channel slice of a contiguous
  // tensor, whose empty_like is contiguous, like its dense copy).
  if (out.strides() == problem.input.strides()) return {out, out};
  return {out, at::empty_like(problem.input, problem.input.options().dtype(t))};
}

FakeQuantProblem prepare_dequantize(const at::Tensor& input, const at::Tensor& scale,
                                    const at::Tensor& zero_point, std::optional<int64_t> axis) {
  const char* op = "dequantize";
  const auto dt = input.scalar_type();
  TORCH_CHECK(dt == at::kByte || dt == at::kChar || dt == at::kShort || dt == at::kInt, op,
              ": input must be uint8, int8, int16 or int32, got ", dt);
  FakeQuantProblem p;
  p.axis = check_qparams(op, "dequantization", input, scale, zero_point, axis);
  choose_layout(p, input);
  return p;
}

at::ScalarType quantized_dtype(int64_t quant_min, int64_t quant_max) {
  if (quant_min >= 0 && quant_max <= 255) return at::kByte;
  if (quant_min >= -128 && quant_max <= 127) return at::kChar;
  if (quant_min >= -32768 && quant_max <= 32767) return at::kShort;
  return at::kInt;
}

at::ScalarType zero_point_grad_dtype(const at::Tensor& scale, const at::Tensor& zero_point) {
  return at::isFloatingType(zero_point.scalar_type()) ? zero_point.scalar_type()
                                                      : scale.scalar_type();
}

}  // namespace ops
}  // namespace torchqat
