// Autograd for the fake-quant operators, in C++ so that TorchScript and libtorch programs train
// through them too. Forward and backward are operators of their own, so torch.compile and
// torch.export see two opaque nodes with fake implementations (python/torchqat/_ops.py).
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include "ops/fake_quantize_common.h"

#include <cmath>
#include <optional>
#include <tuple>

namespace torchqat {
namespace autograd {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using FakeQuantizeBackwardSig = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                          const at::Tensor&, int64_t, int64_t,
                                          std::optional<int64_t>);
using FakeQuantizeLsqBackwardSig = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, int64_t,
    std::optional<int64_t>, double);

using FakeQuantizeLsqSig = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                      int64_t, int64_t, std::optional<int64_t>, double, double);

c10::TypedOperatorHandle<FakeQuantizeLsqSig> fake_quantize_lsq_op() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("torchqat::fake_quantize_lsq", "")
                       .typed<FakeQuantizeLsqSig>();
  return op;
}

c10::TypedOperatorHandle<FakeQuantizeBackwardSig> fake_quantize_backward_op() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("torchqat::fake_quantize_backward", "")
                       .typed<FakeQuantizeBackwardSig>();
  return op;
}

c10::TypedOperatorHandle<FakeQuantizeLsqBackwardSig> fake_quantize_lsq_backward_op() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("torchqat::fake_quantize_lsq_backward", "")
                       .typed<FakeQuantizeLsqBackwardSig>();
  return op;
}

c10::IValue optional_axis(std::optional<int64_t> axis) {
  return axis.has_value() ? c10::IValue(*axis) : c10::IValue();
}

// The integer range and axis every fake-quant autograd node keeps for its backward.
void save_range(AutogradContext* ctx, int64_t quant_min, int64_t quant_max,
                std::optional<int64_t> axis) {
  ctx->saved_data["quant_min"] = quant_min;
  ctx->saved_data["quant_max"] = quant_max;
  ctx->saved_data["axis"] = optional_axis(axis);
}

std::optional<int64_t> saved_axis(AutogradContext* ctx) {
  const auto& v = ctx->saved_data["axis"];
  return v.isNone() ? std::nullopt : std::optional<int64_t>(v.toInt());
}

// The backward operators have autograd kernels of their own, for double backward. Outside
// create_graph=True (grad mode is off while the engine runs a backward) that kernel would only
// build an autograd node nobody uses, about a tenth of a small layer's quantizer time: skip it.
class BelowAutogradUnlessGradMode {
 public:
  BelowAutogradUnlessGradMode() {
    if (!at::GradMode::is_enabled()) guard_.emplace();
  }

 private:
  std::optional<at::AutoDispatchBelowADInplaceOrView> guard_;
};

using FakeQuantizeBackwardInplaceSig = void(at::Tensor&, const at::Tensor&, const at::Tensor&,
                                             const at::Tensor&, int64_t, int64_t,
                                             std::optional<int64_t>);

c10::TypedOperatorHandle<FakeQuantizeBackwardInplaceSig> fake_quantize_backward_inplace_op() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("torchqat::fake_quantize_backward_", "")
                       .typed<FakeQuantizeBackwardInplaceSig>();
  return op;
}

using FakeQuantizeLsqBackwardInplaceSig = std::tuple<at::Tensor, at::Tensor>(
    at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, int64_t,
    std::optional<int64_t>, double);

c10::TypedOperatorHandle<FakeQuantizeLsqBackwardInplaceSig> fake_quantize_lsq_backward_inplace_op() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("torchqat::fake_quantize_lsq_backward_", "")
                       .typed<FakeQuantizeLsqBackwardInplaceSig>();
  return op;
}

// Whether the backward may write the input gradient over `grad`: no graph is being built
// (create_graph=False), nothing else refers to the tensor or its memory (no hook kept it, it is
// not a user's `gradient=` argument, not a view), and it is a plain dense CPU tensor of the
// input's dtype (the in-place kernel exists on the CPU only; not a fake, functional or subclass
// tensor of a tracer).
bool can_overwrite(const at::Tensor& grad, const at::Tensor& input) {
  return !at::GradMode::is_enabled() && grad.defined() && grad.use_count() == 1 &&
         !grad.is_view() && grad.has_storage() && grad.storage().use_count() == 1 &&
         grad.device().type() == c10::DeviceType::CPU && grad.layout() == at::kStrided &&
         !grad.key_set().has_any(c10::DispatchKeySet({c10::DispatchKey::Python,
                                                      c10::DispatchKey::Functionalize})) &&
         !grad.is_inference() &&
         grad.scalar_type() == input.scalar_type() && grad.sizes() == input.sizes();
}

class FakeQuantize : public torch::autograd::Function<FakeQuantize> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input,
                            const at::Tensor& scale, const at::Tensor& zero_point,
                            int64_t quant_min, int64_t quant_max, std::optional<int64_t> axis) {
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("torchqat::fake_quantize", "")
                         .typed<at::Tensor(const at::Tensor&, const at::Tensor&,
                                           const at::Tensor&, int64_t, int64_t,
                                           std::optional<int64_t>)>();
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({input, scale, zero_point});
    save_range(ctx, quant_min, quant_max, axis);
    return op.call(input, scale, zero_point, quant_min, quant_max, axis);
  }

  // grad_outputs by reference: see FakeQuantizeLsq::backward.
  static variable_list backward(AutogradContext* ctx, variable_list& grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const BelowAutogradUnlessGradMode below;
    at::Tensor grad = std::move(grad_outputs[0]);
    const int64_t quant_min = ctx->saved_data["quant_min"].toInt();
    const int64_t quant_max = ctx->saved_data["quant_max"].toInt();
    at::Tensor dx;
    if (can_overwrite(grad, saved[0])) {
      fake_quantize_backward_inplace_op().call(grad, saved[0], saved[1], saved[2], quant_min,
                                               quant_max, saved_axis(ctx));
      dx = std::move(grad);
    } else {
      dx = fake_quantize_backward_op().call(grad, saved[0], saved[1], saved[2], quant_min,
                                            quant_max, saved_axis(ctx));
    }
    // The straight-through estimator gives scale and zero_point no gradient.
    return {dx, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

class FakeQuantizeLsq : public torch::autograd::Function<FakeQuantizeLsq> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input,
                            const at::Tensor& scale, const at::Tensor& zero_point,
                            int64_t quant_min, int64_t quant_max, std::optional<int64_t> axis,
                            double grad_factor, double min_scale) {
    at::AutoDispatchBelowADInplaceOrView guard;
    // The floor is applied here, once: the backward sees the scale the forward used, and the
    // scale's gradient is returned for `scale` unchanged (straight through the floor).
    const at::Tensor floored = ops::floor_scale("fake_quantize_lsq", scale, min_scale);
    ctx->save_for_backward({input, floored, zero_point});
    save_range(ctx, quant_min, quant_max, axis);
    ctx->saved_data["grad_factor"] = grad_factor;
    return fake_quantize_lsq_op().call(input, floored, zero_point, quant_min, quant_max, axis,
                                       grad_factor, 0.0);
  }

  // grad_outputs by reference: CppNode passes its own list, so moving the gradient out of it
  // leaves this function the only owner when no hook or caller kept one.
  static variable_list backward(AutogradContext* ctx, variable_list& grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const BelowAutogradUnlessGradMode below;
    at::Tensor grad = std::move(grad_outputs[0]);
    const int64_t quant_min = ctx->saved_data["quant_min"].toInt();
    const int64_t quant_max = ctx->saved_data["quant_max"].toInt();
    const double grad_factor = ctx->saved_data["grad_factor"].toDouble();
    at::Tensor dx, dscale, dzero_point;
    if (can_overwrite(grad, saved[0])) {
      std::tie(dscale, dzero_point) = fake_quantize_lsq_backward_inplace_op().call(
          grad, saved[0], saved[1], saved[2], quant_min, quant_max, saved_axis(ctx),
          grad_factor);
      dx = std::move(grad);
    } else {
      std::tie(dx, dscale, dzero_point) = fake_quantize_lsq_backward_op().call(
          grad, saved[0], saved[1], saved[2], quant_min, quant_max, saved_axis(ctx),
          grad_factor);
    }
    // An integer zero point cannot require grad; report none rather than a float tensor.
    if (!ctx->needs_input_grad(2)) dzero_point = at::Tensor();
    if (!ctx->needs_input_grad(1)) dscale = at::Tensor();
    return {dx,          dscale,      dzero_point, at::Tensor(), at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor()};
  }
};


using FakeQuantizeLsqAfterSiluBackwardInplaceSig = std::tuple<at::Tensor, at::Tensor>(
    at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    int64_t, int64_t, std::optional<int64_t>, double);

c10::TypedOperatorHandle<FakeQuantizeLsqAfterSiluBackwardInplaceSig>
fake_quantize_lsq_after_silu_backward_inplace_op() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("torchqat::fake_quantize_lsq_after_silu_backward_", "")
                       .typed<FakeQuantizeLsqAfterSiluBackwardInplaceSig>();
  return op;
}

using FakeQuantizeLsqAfterSiluBackwardSig = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    const at::Tensor&, int64_t, int64_t, std::optional<int64_t>, double);

c10::TypedOperatorHandle<FakeQuantizeLsqAfterSiluBackwardSig>
fake_quantize_lsq_after_silu_backward_op() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("torchqat::fake_quantize_lsq_after_silu_backward", "")
                       .typed<FakeQuantizeLsqAfterSiluBackwardSig>();
  return op;
}

// fake_quantize_lsq(input) where input = silu(pre_activation): the gradient goes to
// pre_activation. On the CPU the backward is the fused kernel (fake_quantize_lsq's backward and
// SiLU's in one pass: one read of grad, input and pre_activation and one write, in place when
// this node owns grad), with the same bits in place or not. Elsewhere (CUDA), or under
// create_graph, it is the two differentiable steps, whose sigmoid ATen computes with exp: equal
// up to float rounding.
class FakeQuantizeLsqAfterSilu : public torch::autograd::Function<FakeQuantizeLsqAfterSilu> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input,
                            const at::Tensor& pre_activation, const at::Tensor& scale,
                            const at::Tensor& zero_point, int64_t quant_min, int64_t quant_max,
                            std::optional<int64_t> axis, double grad_factor, double min_scale) {
    const char* op_name = "fake_quantize_lsq_after_silu";
    TORCH_CHECK(!input.requires_grad(), op_name,
                ": input (= silu(pre_activation)) must not require grad; its gradient goes to "
                "pre_activation. Pass input.detach().");
    ops::check_pre_activation(op_name, input, pre_activation);
    at::AutoDispatchBelowADInplaceOrView guard;
    const at::Tensor floored = ops::floor_scale(op_name, scale, min_scale);
    ctx->save_for_backward({input, pre_activation, floored, zero_point});
    save_range(ctx, quant_min, quant_max, axis);
    ctx->saved_data["grad_factor"] = grad_factor;
    return fake_quantize_lsq_op().call(input, floored, zero_point, quant_min, quant_max, axis,
                                       grad_factor, 0.0);
  }

  static variable_list backward(AutogradContext* ctx, variable_list& grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &input = saved[0], &pre = saved[1], &scale = saved[2], &zp = saved[3];
    const BelowAutogradUnlessGradMode below;
    at::Tensor grad = std::move(grad_outputs[0]);
    const int64_t quant_min = ctx->saved_data["quant_min"].toInt();
    const int64_t quant_max = ctx->saved_data["quant_max"].toInt();
    const double grad_factor = ctx->saved_data["grad_factor"].toDouble();
    at::Tensor dpre, dscale, dzero_point;
    const bool fused = !at::GradMode::is_enabled() && grad.device().is_cpu() &&
                       !grad.key_set().has_any(c10::DispatchKeySet(
                           {c10::DispatchKey::Python, c10::DispatchKey::Functionalize}));
    if (fused && can_overwrite(grad, input)) {
      std::tie(dscale, dzero_point) = fake_quantize_lsq_after_silu_backward_inplace_op().call(
          grad, input, pre, scale, zp, quant_min, quant_max, saved_axis(ctx), grad_factor);
      dpre = std::move(grad);
    } else if (fused) {
      std::tie(dpre, dscale, dzero_point) = fake_quantize_lsq_after_silu_backward_op().call(
          grad, input, pre, scale, zp, quant_min, quant_max, saved_axis(ctx), grad_factor);
    } else {
      at::Tensor dx;
      std::tie(dx, dscale, dzero_point) = fake_quantize_lsq_backward_op().call(
          grad, input, scale, zp, quant_min, quant_max, saved_axis(ctx), grad_factor);
      if (at::GradMode::is_enabled()) {
        // create_graph: SiLU's derivative in differentiable ops (aten::silu_backward has none),
        // as autograd differentiates silu itself.
        const at::Tensor sigmoid = at::sigmoid(pre);
        dpre = dx * sigmoid * (1 + pre * (1 - sigmoid));
      } else {
        dpre = at::silu_backward(dx, pre);
      }
    }
    if (!ctx->needs_input_grad(3)) dzero_point = at::Tensor();
    if (!ctx->needs_input_grad(2)) dscale = at::Tensor();
    return {at::Tensor(), dpre,        dscale,      dzero_point, at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// The backward operators are linear in `grad`, so their own derivative with respect to `grad` is
// exact and cheap; this is what double backward (e.g. gradient penalties) needs. With respect
// to input, scale and zero point they are piecewise constant: derivative 0, reported as none.
class FakeQuantizeBackward : public torch::autograd::Function<FakeQuantizeBackward> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& grad, const at::Tensor& input,
                            const at::Tensor& scale, const at::Tensor& zero_point,
                            int64_t quant_min, int64_t quant_max, std::optional<int64_t> axis) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({input, scale, zero_point});
    save_range(ctx, quant_min, quant_max, axis);
    return fake_quantize_backward_op().call(grad, input, scale, zero_point, quant_min, quant_max,
                                            axis);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    // d(grad * mask)/d(grad) applied to v is v * mask: the operator itself.
    const at::Tensor dgrad = fake_quantize_backward_op().call(
        grad_outputs[0], saved[0], saved[1], saved[2], ctx->saved_data["quant_min"].toInt(),
        ctx->saved_data["quant_max"].toInt(), saved_axis(ctx));
    return {dgrad, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor()};
  }
};

// The shape that broadcasts a scale-shaped tensor against `input`: [1, .., C, .., 1].
std::vector<int64_t> parameter_shape(const at::Tensor& input, std::optional<int64_t> axis) {
  std::vector<int64_t> shape(input.dim(), 1);
  if (axis.has_value()) {
    const int64_t a = *axis < 0 ? *axis + input.dim() : *axis;
    shape[a] = input.size(a);
  }
  return shape;
}

// Per-element LSQ factors with dy = 1 (the table in csrc/core/fake_quant.h), as ATen ops in the
// compute dtype, broadcast against `input`. Only double backward uses them.
std::pair<at::Tensor, at::Tensor> lsq_factors(const at::Tensor& input, const at::Tensor& scale,
                                              const at::Tensor& zero_point, int64_t quant_min,
                                              int64_t quant_max, std::optional<int64_t> axis) {
  const auto dtype = input.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const auto shape = parameter_shape(input, axis);
  const auto as_param = [&](const at::Tensor& t) { return t.to(dtype).reshape(shape); };
  const at::Tensor x = input.to(dtype);
  const at::Tensor s = as_param(scale);
  const at::Tensor inv_s = at::reciprocal(s);  // in the compute dtype, as the kernels do
  const double qmin = static_cast<double>(quant_min), qmax = static_cast<double>(quant_max);
  const at::Tensor z = at::clamp(at::round(as_param(zero_point)), qmin, qmax);
  const at::Tensor v = at::round(x * inv_s) + z;
  const at::Tensor below = v < qmin, above = v > qmax;
  const at::Tensor inside = at::logical_and(v >= qmin, v <= qmax);
  const at::Tensor y = (v - z) * s;
  const at::Tensor zero = at::zeros({}, x.options());
  const at::Tensor fs = at::where(
      inside, (y - x) * inv_s,
      at::where(below, qmin - z, at::where(above, qmax - z, zero)));
  const at::Tensor fz = at::where(at::logical_or(below, above), -s, zero);
  return {fs, fz};
}

class FakeQuantizeLsqBackward : public torch::autograd::Function<FakeQuantizeLsqBackward> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& grad,
                               const at::Tensor& input, const at::Tensor& scale,
                               const at::Tensor& zero_point, int64_t quant_min,
                               int64_t quant_max, std::optional<int64_t> axis,
                               double grad_factor) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({input, scale, zero_point});
    save_range(ctx, quant_min, quant_max, axis);
    ctx->saved_data["grad_factor"] = grad_factor;
    auto [dx, dscale, dzero_point] = fake_quantize_lsq_backward_op().call(
        grad, input, scale, zero_point, quant_min, quant_max, axis, grad_factor);
    return {dx, dscale, dzero_point};
  }

  // dx = grad * mask, dscale[c] = g * sum(grad * fs), dzero_point[c] = g * sum(grad * fz):
  // linear in grad, so d/d(grad) of <v, outputs> = v_dx * mask + g * (v_ds[c] fs + v_dz[c] fz).
  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& input = saved[0];
    const int64_t quant_min = ctx->saved_data["quant_min"].toInt();
    const int64_t quant_max = ctx->saved_data["quant_max"].toInt();
    const auto axis = saved_axis(ctx);
    const double g = ctx->saved_data["grad_factor"].toDouble();
    at::Tensor dgrad = at::zeros_like(input);
    if (grad_outputs[0].defined()) {
      dgrad = fake_quantize_backward_op().call(grad_outputs[0], input, saved[1], saved[2],
                                               quant_min, quant_max, axis);
    }
    if (grad_outputs[1].defined() || grad_outputs[2].defined()) {
      auto [fs, fz] = lsq_factors(input, saved[1], saved[2], quant_min, quant_max, axis);
      at::Tensor extra = at::zeros_like(fs);
      const auto shape = parameter_shape(input, axis);
      if (grad_outputs[1].defined()) {
        extra = extra + grad_outputs[1].to(fs.scalar_type()).reshape(shape) * fs;
      }
      if (grad_outputs[2].defined()) {
        extra = extra + grad_outputs[2].to(fs.scalar_type()).reshape(shape) * fz;
      }
      dgrad = dgrad + (extra * g).to(dgrad.scalar_type());
    }
    return {dgrad,       at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// clamp_min_ste: the forward is clamp_min, the backward passes the gradient through unchanged.
class ClampMinSte : public torch::autograd::Function<ClampMinSte> {
 public:
  static at::Tensor forward(AutogradContext* /*ctx*/, const at::Tensor& input, double min) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return clamp_min_ste_op().call(input, min);
  }

  static variable_list backward(AutogradContext* /*ctx*/, variable_list grad_outputs) {
    return {grad_outputs[0], at::Tensor()};
  }

 private:
  static c10::TypedOperatorHandle<at::Tensor(const at::Tensor&, double)> clamp_min_ste_op() {
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("torchqat::clamp_min_ste", "")
                         .typed<at::Tensor(const at::Tensor&, double)>();
    return op;
  }
};

at::Tensor clamp_min_ste_autograd(const at::Tensor& input, double min) {
  return ClampMinSte::apply(input, min);
}

// The forward on every backend (CPU, CUDA, Meta / fake tensors): ATen's clamp_min.
at::Tensor clamp_min_ste_forward(const at::Tensor& input, double min) {
  TORCH_CHECK(at::isFloatingType(input.scalar_type()),
              "clamp_min_ste: input must be a floating-point tensor, got ", input.scalar_type());
  TORCH_CHECK(std::isfinite(min), "clamp_min_ste: min must be finite, got ", min);
  return at::clamp_min(input, min);
}

at::Tensor fake_quantize_autograd(const at::Tensor& input, const at::Tensor& scale,
                                  const at::Tensor& zero_point, int64_t quant_min,
                                  int64_t quant_max, std::optional<int64_t> axis) {
  return FakeQuantize::apply(input, scale, zero_point, quant_min, quant_max, axis);
}

at::Tensor fake_quantize_lsq_autograd(const at::Tensor& input, const at::Tensor& scale,
                                      const at::Tensor& zero_point, int64_t quant_min,
                                      int64_t quant_max, std::optional<int64_t> axis,
                                      double grad_factor, double min_scale) {
  return FakeQuantizeLsq::apply(input, scale, zero_point, quant_min, quant_max, axis,
                                grad_factor, min_scale);
}

at::Tensor fake_quantize_lsq_after_silu_autograd(
    const at::Tensor& input, const at::Tensor& pre_activation, const at::Tensor& scale,
    const at::Tensor& zero_point, int64_t quant_min, int64_t quant_max,
    std::optional<int64_t> axis, double grad_factor, double min_scale) {
  return FakeQuantizeLsqAfterSilu::apply(input, pre_activation, scale, zero_point, quant_min,
                                         quant_max, axis, grad_factor, min_scale);
}

// Below autograd on every backend (CPU, CUDA, Meta / fake tensors): the value is
// fake_quantize_lsq's.
at::Tensor fake_quantize_lsq_after_silu_forward(
    const at::Tensor& input, const at::Tensor& pre_activation, const at::Tensor& scale,
    const at::Tensor& zero_point, int64_t quant_min, int64_t quant_max,
    std::optional<int64_t> axis, double grad_factor, double min_scale) {
  ops::check_pre_activation("fake_quantize_lsq_after_silu", input, pre_activation);
  return fake_quantize_lsq_op().call(input, scale, zero_point, quant_min, quant_max, axis,
                                     grad_factor, min_scale);
}

at::Tensor fake_quantize_backward_autograd(const at::Tensor& grad, const at::Tensor& input,
                                           const at::Tensor& scale, const at::Tensor& zero_point,
                                           int64_t quant_min, int64_t quant_max,
                                           std::optional<int64_t> axis) {
  return FakeQuantizeBackward::apply(grad, input, scale, zero_point, quant_min, quant_max, axis);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> fake_quantize_lsq_backward_autograd(
    const at::Tensor& grad, const at::Tensor& input, const at::Tensor& scale,
    const at::Tensor& zero_point, int64_t quant_min, int64_t quant_max,
    std::optional<int64_t> axis, double grad_factor) {
  auto out = FakeQuantizeLsqBackward::apply(grad, input, scale, zero_point, quant_min, quant_max,
                                            axis, grad_factor);
  return {out[0], out[1], out[2]};
}

}  // namespace
}  // namespace autograd
}  // namespace torchqat

TORCH_LIBRARY_IMPL(torchqat, Autograd, m) {
  m.impl("fake_quantize", &torchqat::autograd::fake_quantize_autograd);
  m.impl("fake_quantize_lsq", &torchqat::autograd::fake_quantize_lsq_autograd);
  m.impl("fake_quantize_backward", &torchqat::autograd::fake_quantize_backward_autograd);
  m.impl("fake_quantize_lsq_backward", &torchqat::autograd::fake_quantize_lsq_backward_autograd);
  m.impl("clamp_min_ste", &torchqat::autograd::clamp_min_ste_autograd);
  m.impl("fake_quantize_lsq_after_silu",
         &torchqat::autograd::fake_quantize_lsq_after_silu_autograd);
}

TORCH_LIBRARY_IMPL(torchqat, CompositeExplicitAutograd, m) {
  m.impl("clamp_min_ste", &torchqat::autograd::clamp_min_ste_forward);
  m.impl("fake_quantize_lsq_after_silu",
         &torchqat::autograd::fake_quantize_lsq_after_silu_forward);
}
