// CPU host wrappers of quantize and dequantize: checks, layout, kernel choice by instruction set,
// launch. Kernels: int8_kernels_impl.h. Formulas: csrc/core/quantize.h.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "core/quantize.h"
#include "ops/cpu/int8_kernels.h"
#include "ops/fake_quantize_common.h"

namespace torchqat {
namespace cpu {
namespace {

// Elements per parallel task, as for the fake-quant kernels.
constexpr int64_t kGrain = 32768;

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

at::Tensor quantize_cpu(const at::Tensor& input, const at::Tensor& scale,
                        const at::Tensor& zero_point, int64_t quant_min, int64_t quant_max,
                        std::optional<int64_t> axis) {
  const auto p = ops::prepare_fake_quant("quantize", input, scale, zero_point, quant_min,
                                         quant_max, axis, at::Tensor());
  ops::FakeQuantOutput o =
      ops::make_output(input, p, ops::quantized_dtype(quant_min, quant_max));
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
    o.finish();
    return o.out;
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
  o.finish();
  return o.out;
}

at::Tensor dequantize_cpu(const at::Tensor& input, const at::Tensor& scale,
                          const at::Tensor& zero_point, std::optional<int64_t> axis) {
  const char* op = "dequantize";
  const ops::FakeQuantProblem p = ops::prepare_dequantize(input, scale, zero_point, axis);
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

  ops::FakeQuantOutput o = ops::make_output(input, p, at::kFloat);
  const int64_t numel = p.numel();
  if (numel == 0) return o.out;
  const void* q = p.input.const_data_ptr();
  float* y = o.work.mutable_data_ptr<float>();
  const IntType type = int_type(input.scalar_type());
  const ChannelShape shape{p.outer, p.channels, p.inner};
  const Int8CpuKernels& k = int8_cpu_kernels();
  at::parallel_for(0, numel, kGrain, [&](int64_t begin, int64_t end) {
    k.dequantize(q, type, y, shape, begin, end, s.data(), z.data());
  });
  o.finish();
  return o.out;
}

}  // namespace
}  // namespace cpu
}  // namespace torchqat

TORCH_LIBRARY_IMPL(torchqat, CPU, m) {
  m.impl("quantize", &torchqat::cpu::quantize_cpu);
  m.impl("dequantize", &torchqat::cpu::dequantize_cpu);
}
