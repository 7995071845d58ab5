// PackedLinear: the weights of an INT8 linear layer, packed once for the machine's GEMM kernel.
// A TorchScript custom class (torch.classes.torchqat.PackedLinear), so that scripted INT8 models
// hold it as an attribute and save it. Saving writes the unpacked parameters with a format
// version; loading re-packs them for the CPU it runs on.
//
// TorchScript custom classes do not move with Module.to(), so the CUDA kernels do not need the
// object to move: the first int8_linear call with an input on a GPU copies the weights there
// (device_pack) and keeps that copy, one per device, for the object's lifetime.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/Dict.h>
#include <torch/custom_class.h>

#include <array>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <tuple>

#include "core/export.h"
#include "ops/cpu/int8_kernels.h"
#include "ops/seven_bit_packing.h"

namespace torchqat {
namespace ops {

// The weights of a PackedLinear on one accelerator, in the layout of the CUDA GEMM (cuBLASLt's
// int8 "TN" GEMM, csrc/ops/cuda/int8_linear.cu): rows padded to n_padded and the reduction to
// k_padded with zeros, so that every leading dimension and row start is 16-byte aligned.
struct DevicePack {
  static constexpr int64_t kKAlign = 16;  // bytes of a weight row: 16-byte aligned rows
  static constexpr int64_t kNAlign = 8;   // output columns: int32 rows of 32 bytes
  int64_t k_padded = 0;
  int64_t n_padded = 0;
  at::Tensor weight;        // int8 [n_padded, k_padded], zero padding
  at::Tensor column_sums;   // int32 [N]: sum_k weight[n, k]
  at::Tensor weight_scale;  // float32 [N]
  at::Tensor bias;          // float32 [N] (zeros without a bias)
  std::optional<at::Tensor> out_multiplier, out_shift;  // float32 [N]
};

class TORCHQAT_API PackedLinear : public torch::CustomClassHolder {
 public:
  // Version 1: {"weight": int8 [N, K], "weight_scale": float32 [N], and optionally "bias",
  // "out_multiplier", "out_shift": float32 [N]}.
  static constexpr int64_t kFormatVersion = 1;
  using State = std::tuple<int64_t, c10::Dict<std::string, at::Tensor>>;

  // weight: int8 [N, K] (per-channel symmetric, normally in [-127, 127]); weight_scale: [N] > 0;
  // bias, out_multiplier, out_shift: [N] (the last two together: a folded BatchNorm).
  // kernel: "auto" or a name from torch.ops.torchqat.int8_linear_kernels().
  PackedLinear(const at::Tensor& weight, const at::Tensor& weight_scale,
               const std::optional<at::Tensor>& bias,
               const std::optional<at::Tensor>& out_multiplier,
               const std::optional<at::Tensor>& out_shift, const std::string& kernel);

  int64_t in_features() const { return weight_.size(1); }
  int64_t out_features() const { return weight_.size(0); }
  at::Tensor weight() const { return weight_; }
  at::Tensor weight_scale() const { return weight_scale_; }
  std::optional<at::Tensor> bias() const { return bias_; }
  std::optional<at::Tensor> out_multiplier() const { return out_multiplier_; }
  std::optional<at::Tensor> out_shift() const { return out_shift_; }
  // The kernel the weights are packed for ("auto" resolved).
  std::string kernel() const { return kernel_; }
  // The kernel int8_linear runs for an input range [quant_min, quant_max]: kernel(), or
  // "avx2_u7" for a 7-bit unsigned range where kernel() is the "auto"-chosen 8-bit AVX2 one.
  std::string kernel_for_input(int64_t quant_min, int64_t quant_max) const;

  // Packed form, for the CPU operators.
  const cpu::Int8GemmKernel* gemm() const { return gemm_; }  // nullptr: torch._int_mm
  const at::Tensor& packed_weight() const { return packed_; }  // gemm's panels, or int8 [K, N]
  // The GEMM kernel and packed weights for A bytes in [a_min, a_max] (q + a_shift): gemm() and
  // its panels, or the 7-bit kernel's (cpu::seven_bit_input_gemm), packed on first use and
  // kept; thread-safe.
  cpu::PackedGemmWeights gemm_weights(int32_t a_min, int32_t a_max) const;
  const int32_t* column_sums() const { return col_sum_.const_data_ptr<int32_t>(); }
  const float* bias_or_zeros() const { return bias_or_zeros_.const_data_ptr<float>(); }

  // The weights on `device` (a GPU), copied there on the first call for that device and kept;
  // thread-safe. The copy is a synchronous host-to-device transfer, once per device.
  std::shared_ptr<const DevicePack> device_pack(const c10::Device& device) const;

  State state() const;
  static c10::intrusive_ptr<PackedLinear> from_state(State state);

 private:
  at::Tensor weight_, weight_scale_;
  std::optional<at::Tensor> bias_, out_multiplier_, out_shift_;
  std::string kernel_;
  const cpu::Int8GemmKernel* gemm_ = nullptr;
  at::Tensor packed_, col_sum_, bias_or_zeros_;
  SevenBitPacking seven_bit_;
  static constexpr int kMaxDevices = 64;  // c10 allows at most 64 devices of a type
  mutable std::mutex device_mutex_;
  mutable std::array<std::shared_ptr<const DevicePack>, kMaxDevices> device_packs_;
};

// Registers torch.classes.torchqat.PackedLinear once. Every registration block that names the
// class calls it first (registration.cpp's schemas, the kernels' inferred signatures), since
// static initialisers of different files run in no fixed order.
void register_packed_linear_class();

}  // namespace ops
}  // namespace torchqat
