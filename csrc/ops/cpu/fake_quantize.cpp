// CPU host wrappers of the fake-quant operators: checks, layout, kernel choice by instruction
// set, launch. Kernels: fake_quantize_kernels_impl.h. Formulas: csrc/core/fake_quant.h.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <tuple>
#include <vector>

#include "core/fake_quant.h"
#include "ops/cpu/fake_quantize_kernels.h"
#include "ops/fake_quantize_common.h"

namespace torchqat {
namespace cpu {
namespace {

bool cpu_has_avx2() {
#if defined(__x86_64__) && defined(__GNUC__)
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
         __builtin_cpu_supports("f16c") && __builtin_cpu_supports("bmi2");
#else
  return false;
#endif
}

bool cpu_has_avx512() {
#if defined(__x86_64__) && defined(__GNUC__)
  return cpu_has_avx2() && __builtin_cpu_supports("avx512f") &&
         __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("avx512dq");
#else
  return false;
#endif
}

const FakeQuantKernels& choose_kernels() {
  const char* env = std::getenv("TORCHQAT_CPU_CAPABILITY");
  const std::string wanted = env ? env : "";
  if (wanted == "default") return fake_quant_kernels_default();
  if (wanted == "avx2") {
    TORCH_CHECK(cpu_has_avx2(), "TORCHQAT_CPU_CAPABILITY=avx2, but this CPU lacks AVX2/FMA");
    return fake_quant_kernels_avx2();
  }
  if (wanted == "avx512") {
    TORCH_CHECK(cpu_has_avx512(), "TORCHQAT_CPU_CAPABILITY=avx512, but this CPU lacks AVX-512");
    return fake_quant_kernels_avx512();
  }
  TORCH_CHECK(wanted.empty(), "TORCHQAT_CPU_CAPABILITY must be default, avx2 or avx512, got '",
              wanted, "'");
  if (cpu_has_avx512()) return fake_quant_kernels_avx512();
  if (cpu_has_avx2()) return fake_quant_kernels_avx2();
  return fake_quant_kernels_default();
}

// Scale and effective zero point of every channel, as the kernels read them.
struct HostQParams {
  std::vector<double> zero_point;
  FakeQuantQParams qp;

  HostQParams(const ops::FakeQuantProblem& p, int64_t quant_min, int64_t quant_max) {
    zero_point.reserve(p.host_zero_point.size());
    for (const double z : p.host_zero_point) {
      zero_point.push_back(core::effective_zero_point<double>(
          z, static_cast<double>(quant_min), static_cast<double>(quant_max)));
    }
    qp = {p.host_scale.data(), zero_point.data(), static_cast<double>(quant_min),
          static_cast<double>(quant_max)};
  }
};

FakeQuantShape shape_of(const ops::FakeQuantProblem& p) {
  return {p.outer, p.channels, p.inner};
}

at::Tensor forward_impl(const char* op, const at::Tensor& input, const at::Tensor& scale,
                        const at::Tensor& zero_point, int64_t quant_min, int64_t quant_max,
                        std::optional<int64_t> axis) {
  const auto p = ops::prepare_fake_quant(op, input, scale, zero_point, quant_min, quant_max,
                                         axis, at::Tensor());
  auto out = ops::make_output(input, p);
  if (p.numel() == 0) return out.out;
  const HostQParams hq(p, quant_min, quant_max);
  fake_quant_kernels().forward(p.input.scalar_type(), p.input.const_data_ptr(),
                               out.work.mutable_data_ptr(), shape_of(p), hq.qp);
  out.finish();
  return out.out;
}

at::Tensor fake_quantize_cpu(const at::Tensor& input, const at::Tensor& scale,
                             const at::Tensor& zero_point, int64_t quant_min, int64_t quant_max,
                             std::optional<int64_t> axis) {
  return forward_impl("fake_quantize", input, scale, zero_point, quant_min, quant_max, axis);
}

at::Tensor fake_quantize_lsq_cpu(const at::Tensor& input, const at::Tensor& scale,
                                 const at::Tensor& zero_point, int64_t quant_min,
                                 int64_t quant_max, std::optional<int64_t> axis,
                                 double grad_factor, double min_scale) {
  ops::check_grad_factor("fake_quantize_lsq", grad_factor);
  return forward_impl("fake_quantize_lsq", input,
                      ops::floor_scale("fake_quantize_lsq", scale, min_scale), zero_point,
                      quant_min, quant_max, axis);
}

at::Tensor fake_quantize_backward_cpu(const at::Tensor& grad, const at::Tensor& input,
                                      const at::Tensor& scale, const at::Tensor& zero_point,
                                      int64_t quant_min, int64_t quant_max,
                                      std::optional<int64_t> axis) {
  const auto p = ops::prepare_fake_quant("fake_quantize_backward", input, scale, zero_point,
                                         quant_min, quant_max, axis, grad);
  auto dx = ops::make_output(input, p);
  if (p.numel() == 0) return dx.out;
  const HostQParams hq(p, quant_min, quant_max);
  fake_quant_kernels().ste_backward(p.input.scalar_type(), p.grad.const_data_ptr(),
                                    p.input.const_data_ptr(), dx.work.mutable_data_ptr(),
                                    shape_of(p), hq.qp);
  dx.finish();
  return dx.out;
}

// Runs the LSQ backward kernel of problem `p` into `dx` (input's layout in `p`) and returns the
// scale and zero-point gradients, already multiplied by grad_factor. With `pre` (the SiLU's
// input, in p.input's layout) the fused kernel writes the gradient with respect to `pre`.
std::pair<at::Tensor, at::Tensor> lsq_backward_into(const ops::FakeQuantProblem& p, void* dx,
                                                    const at::Tensor& scale,
                                                    const at::Tensor& zero_point,
                                                    int64_t quant_min, int64_t quant_max,
                                                    double grad_factor,
                                                    const void* pre = nullptr) {
  std::vector<double> dscale(p.channels, 0.0), dzero(p.channels, 0.0);
  if (p.numel() > 0) {
    const HostQParams hq(p, quant_min, quant_max);
    if (pre != nullptr) {
      fake_quant_kernels().lsq_silu_backward(p.input.scalar_type(), p.grad.const_data_ptr(),
                                             p.input.const_data_ptr(), pre, dx, shape_of(p),
                                             hq.qp, dscale.data(), dzero.data());
    } else {
      fake_quant_kernels().lsq_backward(p.input.scalar_type(), p.grad.const_data_ptr(),
                                        p.input.const_data_ptr(), dx, shape_of(p), hq.qp,
                                        dscale.data(), dzero.data());
    }
  }
  // Written straight into tensors of the parameters' shapes (not at::tensor(v).to().view():
  // three allocations and two copies, a visible share of a small layer's backward).
  const auto as_tensor = [grad_factor](const std::vector<double>& v, const at::Tensor& like,
                                       at::ScalarType dtype) {
    at::Tensor t = at::empty(like.sizes(), like.options().dtype(dtype));
    AT_DISPATCH_FLOATING_TYPES(dtype, "fake_quantize_lsq_backward", [&] {
      scalar_t* out = t.mutable_data_ptr<scalar_t>();
      for (size_t i = 0; i < v.size(); ++i) out[i] = static_cast<scalar_t>(v[i] * grad_factor);
    });
    return t;
  };
  return {as_tensor(dscale, scale, scale.scalar_type()),
          as_tensor(dzero, zero_point, ops::zero_point_grad_dtype(scale, zero_point))};
}

// fake_quantize_backward writing over `grad` (see fake_quantize_lsq_backward_inplace_cpu).
void fake_quantize_backward_inplace_cpu(at::Tensor& grad, const at::Tensor& input,
                                        const at::Tensor& scale, const at::Tensor& zero_point,
                                        int64_t quant_min, int64_t quant_max,
                                        std::optional<int64_t> axis) {
  const auto p = ops::prepare_fake_quant("fake_quantize_backward_", input, scale, zero_point,
                                         quant_min, quant_max, axis, grad);
  if (p.numel() == 0) return;
  if (p.grad.is_same(grad)) {
    // Each element is read before it is written, at the same index.
    const HostQParams hq(p, quant_min, quant_max);
    fake_quant_kernels().ste_backward(p.input.scalar_type(), p.grad.const_data_ptr(),
                                      p.input.const_data_ptr(), grad.mutable_data_ptr(),
                                      shape_of(p), hq.qp);
    return;
  }
  // grad's layout differs from the kernel's: compute beside it and copy back.
  grad.copy_(fake_quantize_backward_cpu(grad, input, scale, zero_point, quant_min, quant_max,
                                        axis));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> fake_quantize_lsq_backward_cpu(
    const at::Tensor& grad, const at::Tensor& input, const at::Tensor& scale,
    const at::Tensor& zero_point, int64_t quant_min, int64_t quant_max,
    std::optional<int64_t> axis, double grad_factor) {
  const char* op = "fake_quantize_lsq_backward";
  ops::check_grad_factor(op, grad_factor);
  const auto p = ops::prepare_fake_quant(op, input, scale, zero_point, quant_min, quant_max,
                                         axis, grad);
  auto dx = ops::make_output(input, p);
  auto [dscale, dzero] = lsq_backward_into(p, dx.work.mutable_data_ptr(), scale, zero_point,
                                           quant_min, quant_max, grad_factor);
  if (p.numel() > 0) dx.finish();
  return {dx.out, dscale, dzero};
}

// The same, writing the input gradient over `grad`: the autograd backward calls it when it holds
// the only reference to `grad`, which saves an allocation and a write-allocate pass over memory.
std::tuple<at::Tensor, at::Tensor> fake_quantize_lsq_backward_inplace_cpu(
    at::Tensor& grad, const at::Tensor& input, const at::Tensor& scale,
    const at::Tensor& zero_point, int64_t quant_min, int64_t quant_max,
    std::optional<int64_t> axis, double grad_factor) {
  const char* op = "fake_quantize_lsq_backward_";
  ops::check_grad_factor(op, grad_factor);
  const auto p = ops::prepare_fake_quant(op, input, scale, zero_point, quant_min, quant_max,
                                         axis, grad);
  if (p.grad.is_same(grad)) {
    // Each element is read before it is written, at the same index.
    return lsq_backward_into(p, grad.mutable_data_ptr(), scale, zero_point, quant_min,
                             quant_max, grad_factor);
  }
  // grad's layout differs from the kernel's: compute beside it and copy back.
  auto [dx, dscale, dzero] = fake_quantize_lsq_backward_cpu(grad, input, scale, zero_point,
                                                            quant_min, quant_max, axis,
                                                            grad_factor);
  grad.copy_(dx);
  return {dscale, dzero};
}

// The backward of fake_quantize_lsq_after_silu (input = silu(pre)): the gradient with respect
// to `pre`, silu'(pre) * grad_input, from one pass of the fused kernel. Both operators below run
// that kernel whatever the layouts (pre is copied into the kernel's layout when it differs), so
// the in-place and the functional backward give the same bits.
std::pair<at::Tensor, at::Tensor> lsq_after_silu_backward_into(
    const ops::FakeQuantProblem& p, void* dx, const at::Tensor& pre_activation,
    const at::Tensor& scale, const at::Tensor& zero_point, int64_t quant_min, int64_t quant_max,
    double grad_factor) {
  at::Tensor pre = pre_activation;
  if (p.copied || pre.strides() != p.input.strides()) {
    pre = at::empty_like(p.input);
    pre.copy_(pre_activation);
  }
  return lsq_backward_into(p, dx, scale, zero_point, quant_min, quant_max, grad_factor,
                           pre.const_data_ptr());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> fake_quantize_lsq_after_silu_backward_cpu(
    const at::Tensor& grad, const at::Tensor& input, const at::Tensor& pre_activation,
    const at::Tensor& scale, const at::Tensor& zero_point, int64_t quant_min, int64_t quant_max,
    std::optional<int64_t> axis, double grad_factor) {
  const char* op = "fake_quantize_lsq_after_silu_backward";
  ops::check_pre_activation(op, input, pre_activation);
  ops::check_grad_factor(op, grad_factor);
  const auto p = ops::prepare_fake_quant(op, input, scale, zero_point, quant_min, quant_max,
                                         axis, grad);
  auto dx = ops::make_output(input, p);
  auto [dscale, dzero] = lsq_after_silu_backward_into(p, dx.work.mutable_data_ptr(),
                                                      pre_activation, scale, zero_point,
                                                      quant_min, quant_max, grad_factor);
  if (p.numel() > 0) dx.finish();
  return {dx.out, dscale, dzero};
}

// The same, writing the gradient with respect to `pre` over `grad`.
std::tuple<at::Tensor, at::Tensor> fake_quantize_lsq_after_silu_backward_inplace_cpu(
    at::Tensor& grad, const at::Tensor& input, const at::Tensor& pre_activation,
    const at::Tensor& scale, const at::Tensor& zero_point, int64_t quant_min, int64_t quant_max,
    std::optional<int64_t> axis, double grad_factor) {
  const char* op = "fake_quantize_lsq_after_silu_backward_";
  ops::check_pre_activation(op, input, pre_activation);
  ops::check_grad_factor(op, grad_factor);
  const auto p = ops::prepare_fake_quant(op, input, scale, zero_point, quant_min, quant_max,
                                         axis, grad);
  if (p.grad.is_same(grad)) {
    // Each element is read before it is written, at the same index.
    return lsq_after_silu_backward_into(p, grad.mutable_data_ptr(), pre_activation, scale,
                                        zero_point, quant_min, quant_max, grad_factor);
  }
  // grad's layout differs from the kernel's: compute beside it and copy back.
  auto [dpre, dscale, dzero] = fake_quantize_lsq_after_silu_backward_cpu(
      grad, input, pre_activation, scale, zero_point, quant_min, quant_max, axis, grad_factor);
  grad.copy_(dpre);
  return {dscale, dzero};
}

// For the adjoint gradient of a model input's per-tensor learnable scale: LSQ's per-element
// derivative map with respect to the scale, and the flat indices of the clipped elements (where
// the zero point's map is nonzero), from one pass over the input.
std::tuple<at::Tensor, at::Tensor> fake_quantize_lsq_input_maps_cpu(
    const at::Tensor& input, const at::Tensor& scale, const at::Tensor& zero_point,
    int64_t quant_min, int64_t quant_max) {
  const char* op = "fake_quantize_lsq_input_maps";
  TORCH_CHECK(input.scalar_type() == at::kFloat || input.scalar_type() == at::kDouble, op,
              ": input must be float32 or float64, got ", input.scalar_type());
  TORCH_CHECK(scale.numel() == 1, op, ": per-tensor only: scale must have 1 element, got ",
              scale.numel());
  const auto p = ops::prepare_fake_quant(op, input, scale, zero_point, quant_min, quant_max,
                                         std::nullopt, at::Tensor());
  const at::Tensor x = input.contiguous();  // indices count in this (row-major) order
  at::Tensor map = at::empty_like(x);
  const int64_t numel = x.numel();
  std::vector<uint8_t> clipped(static_cast<size_t>(numel));
  if (numel > 0) {
    const HostQParams hq(p, quant_min, quant_max);
    fake_quant_kernels().lsq_scale_map(x.scalar_type(), x.const_data_ptr(),
                                       map.mutable_data_ptr(), clipped.data(), numel, hq.qp);
  }
  // Few elements clip in a calibrated input: skip zero bytes eight at a time.
  std::vector<int64_t> where;
  int64_t i = 0;
  for (; i + 8 <= numel; i += 8) {
    uint64_t word;
    std::memcpy(&word, clipped.data() + i, sizeof(word));
    if (word == 0) continue;
    for (int64_t k = i; k < i + 8; ++k) {
      if (clipped[k]) where.push_back(k);
    }
  }
  for (; i < numel; ++i) {
    if (clipped[i]) where.push_back(i);
  }
  at::Tensor indices = at::empty({static_cast<int64_t>(where.size())}, x.options().dtype(at::kLong));
  if (!where.empty()) {
    std::memcpy(indices.mutable_data_ptr<int64_t>(), where.data(), where.size() * sizeof(int64_t));
  }
  return {map, indices};
}

}  // namespace

const FakeQuantKernels& fake_quant_kernels() {
  static const FakeQuantKernels& chosen = choose_kernels();
  return chosen;
}

std::string cpu_capability() { return fake_quant_kernels().isa; }

}  // namespace cpu
}  // namespace torchqat

TORCH_LIBRARY_IMPL(torchqat, CPU, m) {
  m.impl("fake_quantize", &torchqat::cpu::fake_quantize_cpu);
  m.impl("fake_quantize_backward", &torchqat::cpu::fake_quantize_backward_cpu);
  m.impl("fake_quantize_lsq", &torchqat::cpu::fake_quantize_lsq_cpu);
  m.impl("fake_quantize_lsq_backward", &torchqat::cpu::fake_quantize_lsq_backward_cpu);
  m.impl("fake_quantize_backward_", &torchqat::cpu::fake_quantize_backward_inplace_cpu);
  m.impl("fake_quantize_lsq_backward_", &torchqat::cpu::fake_quantize_lsq_backward_inplace_cpu);
  m.impl("fake_quantize_lsq_after_silu_backward",
         &torchqat::cpu::fake_quantize_lsq_after_silu_backward_cpu);
  m.impl("fake_quantize_lsq_input_maps", &torchqat::cpu::fake_quantize_lsq_input_maps_cpu);
  m.impl("fake_quantize_lsq_after_silu_backward_",
         &torchqat::cpu::fake_quantize_lsq_after_silu_backward_inplace_cpu);
}
