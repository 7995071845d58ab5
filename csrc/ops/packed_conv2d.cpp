#include "ops/packed_conv2d.h"

#include <ATen/ATen.h>

#include <sstream>

#include "core/quantize.h"
#include "ops/packed_common.h"
#include "ops/cpu/int8_conv_kernels.h"

namespace torchqat {
namespace cpu {

void depthwise_pair_weights(const int32_t* w, int64_t taps, int64_t C, int16_t* out) {
  const int64_t blocks = C / 16, pairs = (taps + 1) / 2;
  const auto weight = [&](int64_t t, int64_t c) -> int16_t {
    return t < taps ? static_cast<int16_t>(w[t * C + c]) : int16_t{0};
  };
  for (int64_t p = 0; p < pairs; ++p) {
    for (int64_t b = 0; b < blocks; ++b) {
      int16_t* o = out + (p * blocks + b) * 32;
      // 16 int16 per half; within each 128-bit lane, pairs of 4 consecutive channels.
      for (int64_t half = 0; half < 2; ++half) {      // 0: unpacklo, 1: unpackhi
        for (int64_t lane = 0; lane < 2; ++lane) {    // 128-bit lane
          for (int64_t i = 0; i < 4; ++i) {
            const int64_t c = 16 * b + 8 * lane + 4 * half + i;
            o[16 * half + 8 * lane + 2 * i] = weight(2 * p, c);
            o[16 * half + 8 * lane + 2 * i + 1] = weight(2 * p + 1, c);
          }
        }
      }
    }
  }
}

}  // namespace cpu

namespace ops {
namespace {

constexpr const char* kOp = "PackedConv2d";

using packed::optional_clone;
using packed::shape_string;

std::string list_string(const std::vector<int64_t>& v) {
  std::ostringstream ss;
  ss << c10::IntArrayRef(v);
  return ss.str();
}

at::Tensor channel_vector(const at::Tensor& t, const char* name, int64_t n) {
  return packed::channel_vector(kOp, t, name, n, "out_channels");
}

// stride / padding / dilation: two values (a single value is accepted and repeated, as
// nn.Conv2d does), each >= min_value.
std::vector<int64_t> pair_param(const std::vector<int64_t>& v, const char* name,
                                int64_t min_value) {
  TORCH_CHECK(v.size() == 2 || v.size() == 1, kOp, ": ", name,
              " must have 2 elements (height, width), got ", list_string(v));
  std::vector<int64_t> out = v.size() == 2 ? v : std::vector<int64_t>{v[0], v[0]};
  TORCH_CHECK(out[0] >= min_value && out[1] >= min_value, kOp, ": ", name, " must be ",
              min_value == 0 ? "non-negative" : "positive", ", got ", list_string(v));
  return out;
}

}  // namespace

PackedConv2d::PackedConv2d(const at::Tensor& weight, const at::Tensor& weight_scale,
                           const std::optional<at::Tensor>& bias,
                           const std::optional<at::Tensor>& out_multiplier,
                           const std::optional<at::Tensor>& out_shift, std::vector<int64_t> stride,
                           std::vector<int64_t> padding, std::vector<int64_t> dilation,
                           int64_t groups, const std::string& kernel) {
  TORCH_CHECK(weight.scalar_type() == at::kChar, kOp, ": weight must be int8, got ",
              weight.scalar_type());
  TORCH_CHECK(weight.dim() == 4, kOp, ": weight must have shape [out_channels, "
              "in_channels / groups, kernel_h, kernel_w], got shape ", shape_string(weight));
  TORCH_CHECK(weight.is_cpu(), kOp, ": weight must be a CPU tensor, got one on ",
              weight.device());
  TORCH_CHECK(weight.numel() > 0, kOp, ": weight must have at least one element in every "
              "dimension, got shape ", shape_string(weight));
  stride_ = pair_param(stride, "stride", 1);
  padding_ = pair_param(padding, "padding", 0);
  dilation_ = pair_param(dilation, "dilation", 1);
  TORCH_CHECK(groups >= 1, kOp, ": groups must be positive, got ", groups);
  groups_ = groups;
  const int64_t O = weight.size(0);
  TORCH_CHECK(O % groups == 0, kOp, ": out_channels (weight.size(0) = ", O,
              ") must be divisible by groups = ", groups);
  const int64_t K = weight.size(1) * weight.size(2) * weight.size(3);
  TORCH_CHECK(K <= core::kMaxInt8Depth, kOp, ": in_channels / groups * kernel_h * kernel_w "
              "must be at most ", core::kMaxInt8Depth,
              " (so that int32 accumulators cannot overflow), got ", K, " for weight shape ",
              shape_string(weight));
  TORCH_CHECK(weight_scale.scalar_type() == at::kFloat, kOp,
              ": weight_scale must be float32, got ", weight_scale.scalar_type());
  weight_scale_ = channel_vector(weight_scale, "weight_scale", O);
  TORCH_CHECK((weight_scale_ > 0).all().item<bool>(), kOp,
              ": weight_scale must be positive, got minimum ", weight_scale_.min().item<float>());
  weight_ = weight.detach().clone(at::MemoryFormat::Contiguous);
  if (bias.has_value()) bias_ = channel_vector(*bias, "bias", O);
  TORCH_CHECK(out_multiplier.has_value() == out_shift.has_value(), kOp,
              ": out_multiplier and out_shift must be given together (a folded BatchNorm), got ",
              out_multiplier.has_value() ? "only out_multiplier" : "only out_shift");
  if (out_multiplier.has_value()) {
    out_multiplier_ = channel_vector(*out_multiplier, "out_multiplier", O);
    out_shift_ = channel_vector(*out_shift, "out_shift", O);
  }

  // Depthwise (one input and one output channel per group) has too little depth per output
  // (kh * kw) for a GEMM to pay: "auto" takes the direct kernel, vectorised over channels.
  const bool is_depthwise = groups == O && weight.size(1) == 1;
  if (kernel == "depthwise") {
    TORCH_CHECK(is_depthwise, kOp, ": kernel 'depthwise' needs groups == in_channels == "
                "out_channels, got groups = ", groups, " for weight shape ", shape_string(weight));
  }
  const int64_t Ng = O / groups;
  col_sum_ = weight_.view({O, K}).sum(1, /*keepdim=*/false, at::kInt).contiguous();
  bias_or_zeros_ = bias_.has_value() ? *bias_ : at::zeros({O}, at::TensorOptions().dtype(at::kFloat));
  if (kernel == "depthwise" || (kernel == "auto" && is_depthwise)) {
    depthwise_ = true;
    kernel_ = "depthwise";
    // [C, 1, kh, kw] -> [kh * kw, C] int32: tap-major, channels contiguous.
    packed_ = weight_.view({O, K}).t().to(at::kInt).contiguous();
    pairs_ = at::zeros({std::max<int64_t>(1, (K + 1) / 2 * (O / 16) * 32)},
                       at::TensorOptions().dtype(at::kShort));
    cpu::depthwise_pair_weights(packed_.const_data_ptr<int32_t>(), K, O,
                                pairs_.mutable_data_ptr<int16_t>());
    return;
  }
  gemm_ = cpu::find_int8_gemm(kernel, &kernel_,
                              cpu::brgemm_pays_off_for_conv(weight.size(2), weight.size(3), K));
  if (gemm_ != nullptr) {
    packed_group_bytes_ = gemm_->packed_b_bytes(Ng, K);
    packed_ = at::empty({groups * packed_group_bytes_}, at::TensorOptions().dtype(at::kChar));
    pack_groups(*gemm_, packed_.mutable_data_ptr<int8_t>());
  } else {
    // torch._int_mm's [K, N] per group, rows in im2col's order (see pack_groups).
    packed_ = weight_.permute({0, 2, 3, 1}).contiguous().view({groups, Ng, K}).transpose(1, 2)
                  .contiguous();
  }
  seven_bit_.init(kernel, kernel_);
}

void PackedConv2d::pack_groups(const cpu::Int8GemmKernel& gemm, int8_t* out) const {
  const int64_t Ng = out_channels() / groups_, K = depth();
  // Rows of B in the order im2col writes a window of the NHWC input: (ky, kx, channel).
  const at::Tensor w_nhwc = weight_.permute({0, 2, 3, 1}).contiguous().view({groups_, Ng, K});
  const int64_t group_bytes = gemm.packed_b_bytes(Ng, K);
  for (int64_t g = 0; g < groups_; ++g) {
    gemm.pack_b(w_nhwc[g].const_data_ptr<int8_t>(), Ng, K, out + g * group_bytes);
  }
}

cpu::PackedGemmWeights PackedConv2d::gemm_weights(int32_t a_min, int32_t a_max) const {
  if (!seven_bit_.applies(a_min, a_max)) {
    return {gemm_, gemm_ != nullptr ? packed_.const_data_ptr<int8_t>() : nullptr,
            packed_group_bytes_};
  }
  return seven_bit_.weights([this](const cpu::Int8GemmKernel& gemm, at::Tensor* out) {
    const int64_t group_bytes = gemm.packed_b_bytes(out_channels() / groups_, depth());
    *out = at::empty({groups_ * group_bytes}, at::TensorOptions().dtype(at::kChar));
    pack_groups(gemm, out->mutable_data_ptr<int8_t>());
    return group_bytes;
  });
}

std::string PackedConv2d::kernel_for_input(int64_t quant_min, int64_t quant_max) const {
  return seven_bit_.kernel_for_input(quant_min, quant_max, kernel_);
}

std::shared_ptr<const void> PackedConv2d::device_cache(
    const c10::Device& device, const std::function<std::shared_ptr<const void>()>& make) const {
  TORCH_CHECK(!device.is_cpu() && device.has_index() && device.index() >= 0 &&
                  device.index() < kMaxDevices,
              kOp, ": device_cache needs an accelerator with an index below ", kMaxDevices,
              ", got ", device);
  const std::lock_guard<std::mutex> lock(device_mutex_);
  std::shared_ptr<const void>& slot = device_caches_[device.index()];
  if (!slot) slot = make();
  return slot;
}

PackedConv2d::State PackedConv2d::state() const {
  std::vector<int64_t> params{stride_[0],   stride_[1],   padding_[0], padding_[1],
                              dilation_[0], dilation_[1], groups_};
  return {kFormatVersion,
          packed::to_dict({weight_, weight_scale_, bias_, out_multiplier_, out_shift_}), params};
}

c10::intrusive_ptr<PackedConv2d> PackedConv2d::from_state(State state) {
  const int64_t version = std::get<0>(state);
  const packed::SavedTensors t =
      packed::from_dict(kOp, version, kFormatVersion, std::get<1>(state));
  const std::vector<int64_t>& p = std::get<2>(state);
  TORCH_CHECK(p.size() == 7, kOp, ": saved packed weights of format version ", version,
              " must hold 7 convolution parameters, got ", p.size());
  return c10::make_intrusive<PackedConv2d>(
      t.weight, t.weight_scale, t.bias, t.out_multiplier, t.out_shift,
      std::vector<int64_t>{p[0], p[1]}, std::vector<int64_t>{p[2], p[3]},
      std::vector<int64_t>{p[4], p[5]}, p[6], "auto");
}

void register_packed_conv2d_class() {
  static const auto cls =
      torch::class_<PackedConv2d>("torchqat", "PackedConv2d")
          .def(torch::init<at::Tensor, at::Tensor, std::optional<at::Tensor>,
                           std::optional<at::Tensor>, std::optional<at::Tensor>,
                           std::vector<int64_t>, std::vector<int64_t>, std::vector<int64_t>,
                           int64_t, std::string>(),
               "", {torch::arg("weight_int8"), torch::arg("weight_scale"), torch::arg("bias"),
                    torch::arg("out_multiplier"), torch::arg("out_shift"), torch::arg("stride"),
                    torch::arg("padding"), torch::arg("dilation"), torch::arg("groups"),
                    torch::arg("kernel") = std::string("auto")})
          .def("weight", &PackedConv2d::weight)
          .def("weight_scale", &PackedConv2d::weight_scale)
          .def("bias", &PackedConv2d::bias)
          .def("out_multiplier", &PackedConv2d::out_multiplier)
          .def("out_shift", &PackedConv2d::out_shift)
          .def("stride", &PackedConv2d::stride)
          .def("padding", &PackedConv2d::padding)
          .def("dilation", &PackedConv2d::dilation)
          .def("groups", &PackedConv2d::groups)
          .def("in_channels", &PackedConv2d::in_channels)
          .def("out_channels", &PackedConv2d::out_channels)
          .def("kernel_size", &PackedConv2d::kernel_size)
          .def("kernel", &PackedConv2d::kernel)
          .def("kernel_for_input", &PackedConv2d::kernel_for_input)
          // (name, value) pairs for the fake object of python/torchqat/_ops.py (torch.compile /
          // torch.export); names differ from the methods', which the fake object has too.
          // Copies of the tensors (optional_clone says why); a few KB to MB once per trace.
          .def("__eq__", &packed::same_object<PackedConv2d>)
          .def("__ne__", &packed::other_object<PackedConv2d>)
          .def("__obj_flatten__",
               [](const c10::intrusive_ptr<PackedConv2d>& self) {
                 return std::make_tuple(
                     std::make_tuple(std::string("w_int8"), self->weight().clone()),
                     std::make_tuple(std::string("w_scale"), self->weight_scale().clone()),
                     std::make_tuple(std::string("b"), optional_clone(self->bias())),
                     std::make_tuple(std::string("bn_multiplier"),
                                     optional_clone(self->out_multiplier())),
                     std::make_tuple(std::string("bn_shift"), optional_clone(self->out_shift())),
                     std::make_tuple(std::string("conv_stride"), self->stride()),
                     std::make_tuple(std::string("conv_padding"), self->padding()),
                     std::make_tuple(std::string("conv_dilation"), self->dilation()),
                     std::make_tuple(std::string("conv_groups"), self->groups()),
                     std::make_tuple(std::string("kernel_name"), self->kernel()));
               })
          .def_pickle(
              [](const c10::intrusive_ptr<PackedConv2d>& self) -> PackedConv2d::State {
                return self->state();
              },
              [](PackedConv2d::State state) -> c10::intrusive_ptr<PackedConv2d> {
                return PackedConv2d::from_state(std::move(state));
              });
  (void)cls;
}

}  // namespace ops
}  // namespace torchqat
