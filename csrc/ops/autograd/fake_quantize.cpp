// Autograd for the fake-quant operators, in C++ so that TorchScript and libtorch programs train
// through them too. Forward and backward are operators of their own, so torch.compile and
// torch.export see two opaque nodes with fake implementations (python/torchqat/_ops.py).
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

namespace torchqat {
namespace autograd {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

c10::IValue optional_axis(std::optional<int64_t> axis) {
  return axis.has_value() ? c10::IValue(*axis) : c10::IValue();
}

std::optional<int64_t> saved_axis(AutogradContext* ctx) {
  const auto& v = ctx->saved_data["axis"];
  return v.isNone() ? std::nullopt : std::optional<int64_t>(v.toInt());
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
    ctx->saved_data["quant_min"] = quant_min;
    ctx->saved_data["quant_max"] = quant_max;
    ctx->saved_data["axis"] = optional_axis(axis);
    return op.call(input, scale, zero_point, quant_min, quant_max, axis);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("torchqat::fake_quantize_backward", "")
                         .typed<at::Tensor(const at::Tensor&, const at::Tensor&,
                                           const at::Tensor&, const at::Tensor&, int64_t,
                                           int64_t, std::optional<int64_t>)>();
    const auto saved = ctx->get_saved_variables();
    const at::Tensor dx =
        op.call(grad_outputs[0], saved[0], saved[1], saved[2],
                ctx->saved_data["quant_min"].toInt(), ctx->saved_data["quant_max"].toInt(),
                saved_axis(ctx));
    // The straight-through estimator gives scale and zero_point no gradient.
    return {dx, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

class FakeQuantizeLsq : public torch::autograd::Function<FakeQuantizeLsq> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input,
                            const at::Tensor& scale, const at::Tensor& zero_point,
                            int64_t quant_min, int64_t quant_max, std::optional<int64_t> axis,
                            double grad_factor) {
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("torchqat::fake_quantize_lsq", "")
                         .typed<at::Tensor(const at::Tensor&, const at::Tensor&,
                                           const at::Tensor&, int64_t, int64_t,
                                           std::optional<int64_t>, double)>();
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({input, scale, zero_point});
    ctx->saved_data["quant_min"] = quant_min;
    ctx->saved_data["quant_max"] = quant_max;
    ctx->saved_data["axis"] = optional_axis(axis);
    ctx->saved_data["grad_factor"] = grad_factor;
    return op.call(input, scale, zero_point, quant_min, quant_max, axis, grad_factor);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    static auto op =
        c10::Dispatcher::singleton()
            .findSchemaOrThrow("torchqat::fake_quantize_lsq_backward", "")
            .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                int64_t, int64_t, std::optional<int64_t>, double)>();
    const auto saved = ctx->get_saved_variables();
    auto [dx, dscale, dzero_point] =
        op.call(grad_outputs[0], saved[0], saved[1], saved[2],
                ctx->saved_data["quant_min"].toInt(), ctx->saved_data["quant_max"].toInt(),
                saved_axis(ctx), ctx->saved_data["grad_factor"].toDouble());
    // An integer zero point cannot require grad; report none rather than a float tensor.
    if (!ctx->needs_input_grad(2)) dzero_point = at::Tensor();
    if (!ctx->needs_input_grad(1)) dscale = at::Tensor();
    return {dx, dscale, dzero_point, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor fake_quantize_autograd(const at::Tensor& input, const at::Tensor& scale,
                                  const at::Tensor& zero_point, int64_t quant_min,
                                  int64_t quant_max, std::optional<int64_t> axis) {
  return FakeQuantize::apply(input, scale, zero_point, quant_min, quant_max, axis);
}

at::Tensor fake_quantize_lsq_autograd(const at::Tensor& input, const at::Tensor& scale,
                                      const at::Tensor& zero_point, int64_t quant_min,
                                      int64_t quant_max, std::optional<int64_t> axis,
                                      double grad_factor) {
  return FakeQuantizeLsq::apply(input, scale, zero_point, quant_min, quant_max, axis,
                                grad_factor);
}

}  // namespace
}  // namespace autograd
}  // namespace torchqat

TORCH_LIBRARY_IMPL(torchqat, Autograd, m) {
  m.impl("fake_quantize", &torchqat::autograd::fake_quantize_autograd);
  m.impl("fake_quantize_lsq", &torchqat::autograd::fake_quantize_lsq_autograd);
}
