#include "ops/packed_linear.h"

#include <ATen/ATen.h>

#include <cmath>

#include "core/quantize.h"
#include "ops/packed_common.h"

namespace torchqat {
namespace ops {
namespace {

constexpr const char* kOp = "PackedLinear";

using packed::optional_clone;
using packed::shape_string;

at::Tensor channel_vector(const at::Tensor& t, const char* name, int64_t n) {
  return packed::channel_vector(kOp, t, name, n, "out_features");
}

}  // namespace

PackedLinear::PackedLinear(const at::Tensor& weight, const at::Tensor& weight_scale,
                           const std::optional<at::Tensor>& bias,
                           const std::optional<at::Tensor>& out_multiplier,
                           const std::optional<at::Tensor>& out_shift, const std::string& kernel) {
  TORCH_CHECK(weight.scalar_type() == at::kChar, kOp, ": weight must be int8, got ",
              weight.scalar_type());
  TORCH_CHECK(weight.dim() == 2, kOp, ": weight must have shape [out_features, in_features], "
              "got shape ", shape_string(weight));
  TORCH_CHECK(weight.is_cpu(), kOp, ": weight must be a CPU tensor, got one on ",
              weight.device());
  const int64_t N = weight.size(0), K = weight.size(1);
  TORCH_CHECK(N > 0 && K > 0, kOp, ": weight must have at least one output and one input "
              "feature, got shape ", shape_string(weight));
  TORCH_CHECK(K <= core::kMaxInt8Depth, kOp, ": in_features must be at most ",
              core::kMaxInt8Depth, " (so that int32 accumulators cannot overflow), got ", K);
  TORCH_CHECK(weight_scale.scalar_type() == at::kFloat, kOp, ": weight_scale must be float32, got ",
              weight_scale.scalar_type());
  weight_scale_ = channel_vector(weight_scale, "weight_scale", N);
  TORCH_CHECK((weight_scale_ > 0).all().item<bool>(), kOp,
              ": weight_scale must be positive, got minimum ", weight_scale_.min().item<float>());
  weight_ = weight.detach().clone(at::MemoryFormat::Contiguous);
  if (bias.has_value()) bias_ = channel_vector(*bias, "bias", N);
  TORCH_CHECK(out_multiplier.has_value() == out_shift.has_value(), kOp,
              ": out_multiplier and out_shift must be given together (a folded BatchNorm), got ",
              out_multiplier.has_value() ? "only out_multiplier" : "only out_shift");
  if (out_multiplier.has_value()) {
    out_multiplier_ = channel_vector(*out_multiplier, "out_multiplier", N);
    out_shift_ = channel_vector(*out_shift, "out_shift", N);
  }

  gemm_ = cpu::find_int8_gemm(kernel, &kernel_);
  if (gemm_ != nullptr) {
    packed_ = at::empty({gemm_->packed_b_bytes(N, K)}, at::TensorOptions().dtype(at::kChar));
    gemm_->pack_b(weight_.const_data_ptr<int8_t>(), N, K, packed_.mutable_data_ptr<int8_t>());
  } else {
    packed_ = weight_.t().contiguous();  // torch._int_mm's [K, N]
  }
  col_sum_ = weight_.sum(1, /*keepdim=*/false, at::kInt).contiguous();
  bias_or_zeros_ = bias_.has_value() ? *bias_ : at::zeros({N}, at::TensorOptions().dtype(at::kFloat));
  seven_bit_.init(kernel, kernel_);
}

cpu::PackedGemmWeights PackedLinear::gemm_weights(int32_t a_min, int32_t a_max) const {
  if (!seven_bit_.applies(a_min, a_max)) {
    return {gemm_, gemm_ != nullptr ? packed_.const_data_ptr<int8_t>() : nullptr, 0};
  }
  return seven_bit_.weights([this](const cpu::Int8GemmKernel& gemm, at::Tensor* out) {
    const int64_t N = out_features(), K = in_features();
    *out = at::empty({gemm.packed_b_bytes(N, K)}, at::TensorOptions().dtype(at::kChar));
    gemm.pack_b(weight_.const_data_ptr<int8_t>(), N, K, out->mutable_data_ptr<int8_t>());
    return int64_t{0};
  });
}

std::string PackedLinear::kernel_for_input(int64_t quant_min, int64_t quant_max) const {
  return seven_bit_.kernel_for_input(quant_min, quant_max, kernel_);
}

std::shared_ptr<const DevicePack> PackedLinear::device_pack(const c10::Device& device) const {
  TORCH_CHECK(!device.is_cpu() && device.has_index() && device.index() >= 0 &&
                  device.index() < kMaxDevices,
              kOp, ": device_pack needs an accelerator with an index below ", kMaxDevices, ", got ",
              device);
  const std::lock_guard<std::mutex> lock(device_mutex_);
  std::shared_ptr<const DevicePack>& slot = device_packs_[device.index()];
  if (slot) return slot;
  auto p = std::make_shared<DevicePack>();
  const int64_t N = out_features(), K = in_features();
  p->k_padded = (K + DevicePack::kKAlign - 1) / DevicePack::kKAlign * DevicePack::kKAlign;
  p->n_padded = (N + DevicePack::kNAlign - 1) / DevicePack::kNAlign * DevicePack::kNAlign;
  const auto on_device = [&](const at::Tensor& t) { return t.to(device).contiguous(); };
  p->weight = on_device(at::constant_pad_nd(weight_, {0, p->k_padded - K, 0, p->n_padded - N}, 0));
  p->column_sums = on_device(col_sum_);
  p->weight_scale = on_device(weight_scale_);
  p->bias = on_device(bias_or_zeros_);
  if (out_multiplier_.has_value()) {
    p->out_multiplier = on_device(*out_multiplier_);
    p->out_shift = on_device(*out_shift_);
  }
  slot = std::move(p);
  return slot;
}

PackedLinear::State PackedLinear::state() const {
  return {kFormatVersion,
          packed::to_dict({weight_, weight_scale_, bias_, out_multiplier_, out_shift_})};
}

c10::intrusive_ptr<PackedLinear> PackedLinear::from_state(State state) {
  const packed::SavedTensors t =
      packed::from_dict(kOp, std::get<0>(state), kFormatVersion, std::get<1>(state));
  return c10::make_intrusive<PackedLinear>(t.weight, t.weight_scale, t.bias, t.out_multiplier,
                                           t.out_shift, "auto");
}

void register_packed_linear_class() {
  static const auto cls =
      torch::class_<PackedLinear>("torchqat", "PackedLinear")
          .def(torch::init<at::Tensor, at::Tensor, std::optional<at::Tensor>,
                           std::optional<at::Tensor>, std::optional<at::Tensor>, std::string>())
          .def("in_features", &PackedLinear::in_features)
          .def("out_features", &PackedLinear::out_features)
          .def("weight", &PackedLinear::weight)
          .def("weight_scale", &PackedLinear::weight_scale)
          .def("bias", &PackedLinear::bias)
          .def("out_multiplier", &PackedLinear::out_multiplier)
          .def("out_shift", &PackedLinear::out_shift)
          .def("kernel", &PackedLinear::kernel)
          .def("kernel_for_input", &PackedLinear::kernel_for_input)
          // (name, value) pairs that torch.compile / torch.export turn into the fake object of
          // python/torchqat/_ops.py, so that traced graphs can carry a PackedLinear. The names
          // must differ from the methods', which the fake object gets too.
          // Copies of the tensors (optional_clone says why); a few KB to MB once per trace.
          .def("__eq__", &packed::same_object<PackedLinear>)
          .def("__ne__", &packed::other_object<PackedLinear>)
          .def("__obj_flatten__",
               [](const c10::intrusive_ptr<PackedLinear>& self) {
                 return std::make_tuple(
                     std::make_tuple(std::string("w_int8"), self->weight().clone()),
                     std::make_tuple(std::string("w_scale"), self->weight_scale().clone()),
                     std::make_tuple(std::string("b"), optional_clone(self->bias())),
                     std::make_tuple(std::string("bn_multiplier"),
                                     optional_clone(self->out_multiplier())),
                     std::make_tuple(std::string("bn_shift"), optional_clone(self->out_shift())),
                     std::make_tuple(std::string("kernel_name"), self->kernel()));
               })
          .def_pickle(
              [](const c10::intrusive_ptr<PackedLinear>& self) -> PackedLinear::State {
                return self->state();
              },
              [](PackedLinear::State state) -> c10::intrusive_ptr<PackedLinear> {
                return PackedLinear::from_state(std::move(state));
              });
  (void)cls;
}

}  // namespace ops
}  // namespace torchqat
