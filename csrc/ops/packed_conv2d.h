// PackedConv2d: the weights and geometry of an INT8 2-D convolution, packed once per group for
// the machine's GEMM kernel (or laid out for the direct depthwise kernel). A TorchScript custom
// class (torch.classes.torchqat.PackedConv2d), like PackedLinear: scripted INT8 models hold it as
// an attribute and save it; saving writes the unpacked parameters with a format version, and
// loading re-packs them for the CPU it runs on.
//
// TorchScript custom classes do not move with Module.to(), so the object never moves: the first
// int8_conv2d / int8_conv2d_acc call with an input on a GPU lays the weights out there for the
// CUDA kernels (device_cache) and keeps that copy, one per device, for the object's lifetime.
#pragma once

#include <ATen/core/Dict.h>
#include <ATen/core/Tensor.h>
#include <torch/custom_class.h>

#include <array>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "core/export.h"
#include "ops/cpu/int8_kernels.h"
#include "ops/seven_bit_packing.h"

namespace torchqat {
namespace ops {

class TORCHQAT_API PackedConv2d : public torch::CustomClassHolder {
 public:
  // Version 1: (1, {"weight": int8 [O, C/groups, kh, kw], "weight_scale": float32 [O], and
  // optionally "bias", "out_multiplier", "out_shift": float32 [O]},
  // [stride_h, stride_w, padding_h, padding_w, dilation_h, dilation_w, groups]).
  static constexpr int64_t kFormatVersion = 1;
  using State =
      std::tuple<int64_t, c10::Dict<std::string, at::Tensor>, std::vector<int64_t>>;

  PackedConv2d(const at::Tensor& weight, const at::Tensor& weight_scale,
               const std::optional<at::Tensor>& bias,
               const std::optional<at::Tensor>& out_multiplier,
               const std::optional<at::Tensor>& out_shift, std::vector<int64_t> stride,
               std::vector<int64_t> padding, std::vector<int64_t> dilation, int64_t groups,
               const std::string& kernel);

  at::Tensor weight() const { return weight_; }
  at::Tensor weight_scale() const { return weight_scale_; }
  std::optional<at::Tensor> bias() const { return bias_; }
  std::optional<at::Tensor> out_multiplier() const { return out_multiplier_; }
  std::optional<at::Tensor> out_shift() const { return out_shift_; }
  std::vector<int64_t> stride() const { return stride_; }
  std::vector<int64_t> padding() const { return padding_; }
  std::vector<int64_t> dilation() const { return dilation_; }
  int64_t groups() const { return groups_; }
  int64_t in_channels() const { return weight_.size(1) * groups_; }
  int64_t out_channels() const { return weight_.size(0); }
  std::vector<int64_t> kernel_size() const { return {weight_.size(2), weight_.size(3)}; }
  // The kernel the weights are packed for ("auto" resolved): a GEMM kernel's name, or
  // "depthwise" for the direct depthwise kernel (groups == in == out channels).
  std::string kernel() const { return kernel_; }
  // The kernel int8_conv2d runs for an input range [quant_min, quant_max]: kernel(), or
  // "avx2_u7" for a 7-bit unsigned range where kernel() is the "auto"-chosen 8-bit AVX2 one.
  std::string kernel_for_input(int64_t quant_min, int64_t quant_max) const;

  // Packed form, for the CPU operators.
  bool depthwise() const { return depthwise_; }
  // Reduction depth of one group's GEMM: in_channels / groups * kh * kw.
  int64_t depth() const { return weight_.size(1) * weight_.size(2) * weight_.size(3); }
  const cpu::Int8GemmKernel* gemm() const { return gemm_; }  // nullptr: torch._int_mm / direct
  // GEMM: group g's packed panels at g * packed_group_bytes(); int_mm: int8 [groups, K, O/g];
  // depthwise: int32 [kh * kw, C] (tap-major, so the kernel reads C consecutive weights).
  const at::Tensor& packed_weight() const { return packed_; }
  int64_t packed_group_bytes() const { return packed_group_bytes_; }
  // The GEMM kernel and packed weights for A bytes in [a_min, a_max] (q + a_shift): gemm() and
  // its panels, or the 7-bit kernel's (cpu::seven_bit_input_gemm), packed on first use and
  // kept; thread-safe. gemm == nullptr for torch._int_mm and the depthwise kernel.
  cpu::PackedGemmWeights gemm_weights(int32_t a_min, int32_t a_max) const;
  // Depthwise: the same weights for the pair-of-taps kernel (cpu::depthwise_pair_weights).
  const int16_t* depthwise_pairs() const { return pairs_.const_data_ptr<int16_t>(); }
  // Per output channel: sum of its weights (the zero point's correction).
  const int32_t* column_sums() const { return col_sum_.const_data_ptr<int32_t>(); }
  const float* bias_or_zeros() const { return bias_or_zeros_.const_data_ptr<float>(); }

  // The weights on `device` (an accelerator) in the layout of its kernels: made by `make` on
  // the first call for that device and kept; thread-safe (`make` runs under the lock, once per
  // device). Type-erased because this file is compiled in CPU-only builds too, where the CUDA
  // layout (cuda::Conv2dDeviceWeights, csrc/ops/cuda/int8_conv2d.h) does not exist; the one
  // caller, int8_conv2d.cu, always stores that type.
  std::shared_ptr<const void> device_cache(
      const c10::Device& device, const std::function<std::shared_ptr<const void>()>& make) const;

  State state() const;
  static c10::intrusive_ptr<PackedConv2d> from_state(State state);

 private:
  at::Tensor weight_, weight_scale_;
  std::optional<at::Tensor> bias_, out_multiplier_, out_shift_;
  std::vector<int64_t> stride_, padding_, dilation_;
  int64_t groups_ = 1;
  std::string kernel_;
  bool depthwise_ = false;
  const cpu::Int8GemmKernel* gemm_ = nullptr;
  at::Tensor packed_, col_sum_, bias_or_zeros_, pairs_;
  int64_t packed_group_bytes_ = 0;
  // Packs every group's [O / groups, K] weights for `gemm` at `out`, group g at
  // g * gemm.packed_b_bytes(O / groups, K).
  void pack_groups(const cpu::Int8GemmKernel& gemm, int8_t* out) const;
  SevenBitPacking seven_bit_;
  static constexpr int kMaxDevices = 64;  // c10 allows at most 64 devices of a type
  mutable std::mutex device_mutex_;
  mutable std::array<std::shared_ptr<const void>, kMaxDevices> device_caches_;
};

// Registers torch.classes.torchqat.PackedConv2d once (see register_packed_linear_class).
void register_packed_conv2d_class();

}  // namespace ops
}  // namespace torchqat
