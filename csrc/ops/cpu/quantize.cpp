// CPU host wrappers of quantize and dequantize: checks, layout, kernel choice by instruction set,
// launch. Kernels: int8_kernels_impl.h. Formulas: csrc/core/quantize.h.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <sstream>
#include <vector>

#include "core/quantize.h"
#include "ops/cpu/int8_kernels.h"
#include "ops/fake_quantize_common.h"

namespace torchqat {
namespace cpu {
namespace {

// Elements per parallel task, as for the fake-quant kernels.
constexpr int64_t kGrain = 32768;

// The smallest of uint8, int8, int16, int32 that holds [quant_min, quant_max].
at::ScalarType quantized_dtype(int64_t quant_min, int64_t quant_max) {
  if (quant_min >= 0 && quant_max <= 255) return at::kByte;
  if (quant_min >= -128 && quant_max <= 127) return at::kChar;
  if (quant_min >= -32768 && quant_max <= 32767) return at::kShort;
  return at::kInt;
}

IntType int_type(at::ScalarType t) {
  switch (t) {
    case at::kByte:
      return IntType::kUInt8;
    case at::kChar:
      return IntType::kInt8;
    case at::kShort:
      return IntType::kInt16;
    default:
      return IntType::kInt32;
  }
}

std::string shape_string(const at::Tensor& t) {
  std::ostringstream ss;
  ss << t.sizes();
  return ss.str();
}

// Writes into `out` when its strides are the layout's, else into a temporary copied back at the
// end (the output keeps empty_like(input)'s strides, as the fake implementations promise).
struct Output {
  at::Tensor out;
  at::Tensor work;
  Output(const at::Tensor& caller_input, const at::Tensor& layout, bool copied,
         at::ScalarType dtype) {
    out = at::empty_like(caller_input, caller_input.options().dtype(dtype));
    work = (!copied && out.strides() == layout.strides()) ? out
                                                         : at::empty_like(layout, layout.options().dtype(dtype));
  }
  at::Tensor finish() {
    if (!work.is_same(out)) out.copy_(work);
    return out;
  }
};

at::Tensor quantize_cpu(const at::Tensor& input, const at::Tensor& scale,
                        const at::Tensor& zero_point, int64_t quant_min, int64_t quant_max,
                        std::optional<int64_t> axis) {
  const auto p = ops::prepare_fake_quant("quantize", input, scale, zero_point, quant_min,
                                         quant_max, axis, at::Tensor());
  Output o(input, p.input, p.copied, quantized_dtype(quant_min, quant_max));
  if (p.numel() == 0) return o.out;
  const ChannelShape sh{p.outer, p.channels, p.inner};
  const double qmin = static_cast<double>(quant_min), qmax = static_cast<double>(quant_max);

  if (p.input.scalar_type() == at::kDouble) {
    // float64 computes in float64, like fake_quantize; a scalar loop (a testing path).
    std::vector<double> inv_s, z;
    for (size_t c = 0; c < p.host_scale.size(); ++c) {
      inv_s.push_back(core::inverse_scale(p.host_scale[c]));
      z.push_back(core::effective_zero_point(p.host_zero_point[c], qmin, qmax));
    }
    const double* x = p.input.const_data_ptr<double>();
    AT_DISPATCH_INTEGRAL_TYPES(o.work.scalar_type(), "quantize", [&] {
      scalar_t* q = o.work.mutable_data_ptr<scalar_t>();
      at::parallel_for(0, p.numel(), kGrain, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
          const int64_t c = (i / sh.inner) % sh.channels;
          q[i] = static_cast<scalar_t>(core::quantize_value(x[i], inv_s[c], z[c], qmin, qmax));
        }
      });
    });
    return o.finish();
  }

  // float16 / bfloat16 compute in float32, like fake_quantize: convert first (same strides).
  const at::Tensor x = p.input.scalar_type() == at::kFloat ? p.input : p.input.to(at::kFloat);
  std::vector<float> inv_s, z;
  for (size_t c = 0; c < p.host_scale.size(); ++c) {
    inv_s.push_back(core::inverse_scale(static_cast<float>(p.host_scale[c])));
    z.push_back(static_cast<float>(core::effective_zero_point(p.host_zero_point[c], qmin, qmax)));
  }
  const float* xp = x.const_data_ptr<float>();
  void* q = o.work.mutable_data_ptr();
  const IntType type = int_type(o.work.scalar_type());
  const Int8CpuKernels& k = int8_cpu_kernels();
  at::parallel_for(0, p.numel(), kGrain, [&](int64_t begin, int64_t end) {
    k.quantize(xp, q, type, sh, begin, end, inv_s.data(), z.data(), static_cast<float>(qmin),
               static_cast<float>(qmax));
  });
  return o.finish();
}

// The [outer, channels, inner] view of a dense tensor for `axis` (-1: per-tensor); copies the
// input when its layout has no such view. Mirrors fake_quantize's layout rules.
struct Layout {
  at::Tensor input;
  ChannelShape shape;
  bool copied;
};

Layout dequantize_layout(const at::Tensor& input, int64_t axis) {
  Layout l{input, {1, 1, input.numel()}, false};
  if (axis < 0) {
    if (!input.is_non_overlapping_and_dense()) l.input = input.contiguous();
  } else if (axis == 1 && ((input.dim() == 4 && input.is_contiguous(at::MemoryFormat::ChannelsLast) &&
                            !input.is_contiguous()) ||
                           (input.dim() == 5 && input.is_contiguous(at::MemoryFormat::ChannelsLast3d) &&
                            !input.is_contiguous()))) {
    const int64_t c = input.size(1);
    l.shape = {c == 0 ? 0 : input.numel() / c, c, 1};
  } else {
    if (!input.is_contiguous()) l.input = input.contiguous();
    int64_t outer = 1, inner = 1;
    for (int64_t d = 0; d < axis; ++d) outer *= input.size(d);
    for (int64_t d = axis + 1; d < input.dim(); ++d) inner *= input.size(d);
    l.shape = {outer, input.size(axis), inner};
  }
  l.copied = !l.input.is_same(input);
  return l;
}

at::Tensor dequantize_cpu(const at::Tensor& input, const at::Tensor& scale,
                          const at::Tensor& zero_point, std::optional<int64_t> axis) {
  const char* op = "dequantize";
  const auto dt = input.scalar_type();
  TORCH_CHECK(dt == at::kByte || dt == at::kChar || dt == at::kShort || dt == at::kInt, op,
              ": input must be uint8, int8, int16 or int32, got ", dt);
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
  int64_t a = -1;
  if (axis.has_value()) {
    const int64_t dim = input.dim();
    TORCH_CHECK(dim > 0 && *axis >= -dim && *axis < dim, op, ": axis must be in [", -dim, ", ",
                dim - 1, "] for a ", dim, "-dimensional input, got axis=", *axis);
    a = *axis < 0 ? *axis + dim : *axis;
    const int64_t c = input.size(a);
    TORCH_CHECK(scale.dim() == 1 && scale.numel() == c, op, ": scale must have shape [", c,
                "] (input.size(", a, ")) for per-channel dequantization, got shape ",
                shape_string(scale));
    TORCH_CHECK(zero_point.dim() == 1 && zero_point.numel() == c, op,
                ": zero_point must have shape [", c, "] (input.size(", a,
                ")) for per-channel dequantization, got shape ", shape_string(zero_point));
  } else {
    TORCH_CHECK(scale.numel() == 1 && scale.dim() <= 1, op,
                ": scale must hold one element for per-tensor dequantization (axis=None), got "
                "shape ", shape_string(scale));
    TORCH_CHECK(zero_point.numel() == 1 && zero_point.dim() <= 1, op,
                ": zero_point must hold one element for per-tensor dequantization (axis=None), "
                "got shape ", shape_string(zero_point));
  }
  // Parameters as the kernel reads them: scale in float32, zero point rounded half to even.
  const at::Tensor s64 = scale.detach().to(at::kDouble).contiguous();
  const at::Tensor z64 = zero_point.detach().to(at::kDouble).contiguous();
  std::vector<float> s, z;
  for (int64_t i = 0; i < s64.numel(); ++i) {
    const double v = s64.const_data_ptr<double>()[i];
    TORCH_CHECK(std::isfinite(v) && v > 0.0, op, ": scale must be positive and finite, got ", v,
                s64.numel() > 1 ? " at index " + std::to_string(i) : std::string());
    s.push_back(static_cast<float>(v));
    const double zv = z64.const_data_ptr<double>()[i];
    TORCH_CHECK(std::isfinite(zv), op, ": zero_point must be finite, got ", zv,
                s64.numel() > 1 ? " at index " + std::to_string(i) : std::string());
    z.push_back(static_cast<float>(core::round_half_even(zv)));
  }

  const Layout l = dequantize_layout(input, a);
  Output o(input, l.input, l.copied, at::kFloat);
  const int64_t numel = input.numel();
  if (numel == 0) return o.out;
  const void* q = l.input.const_data_ptr();
  float* y = o.work.mutable_data_ptr<float>();
  const IntType type = int_type(dt);
  const Int8CpuKernels& k = int8_cpu_kernels();
  at::parallel_for(0, numel, kGrain, [&](int64_t begin, int64_t end) {
    k.dequantize(q, type, y, l.shape, begin, end, s.data(), z.data());
  });
  return o.finish();
}

}  // namespace
}  // namespace cpu
}  // namespace torchqat

TORCH_LIBRARY_IMPL(torchqat, CPU, m) {
  m.impl("quantize", &torchqat::cpu::quantize_cpu);
  m.impl("dequantize", &torchqat::cpu::dequantize_cpu);
}
