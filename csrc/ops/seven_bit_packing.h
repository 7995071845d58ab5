// SevenBitPacking: the second packing of an INT8 layer's weights for the 7-bit GEMM kernel, shared
// by PackedLinear and PackedConv2d. Weights packed with "auto" for the 8-bit AVX2 kernel run
// avx2_u7 for calls whose input bytes lie in [0, 127] (cpu::seven_bit_input_gemm); that packing
// is made on the first such call and kept, so a saved model, which re-packs with "auto" on load,
// still runs its 7-bit layers on it (TorchScript, the C++ program).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <mutex>
#include <string>

#include "ops/cpu/int8_kernels.h"

namespace torchqat {
namespace ops {

class SevenBitPacking {
 public:
  // Packs the weights for `gemm` into `out` (allocated by it); returns the bytes of one group.
  using PackFn = std::function<int64_t(const cpu::Int8GemmKernel& gemm, at::Tensor* out)>;

  // Once the packed object has resolved its kernel (`requested` -> `resolved`).
  void init(const std::string& requested, const std::string& resolved) {
    gemm_ = cpu::seven_bit_input_gemm(requested, resolved);
  }
  // Whether A bytes in [a_min, a_max] run on the 7-bit kernel.
  bool applies(int32_t a_min, int32_t a_max) const {
    return gemm_ != nullptr && a_min >= 0 && a_max <= gemm_->max_a;
  }
  // The kernel an operator input range [quant_min, quant_max] runs: the 7-bit one where it
  // applies, else `packed_for` (the object's own kernel name).
  std::string kernel_for_input(int64_t quant_min, int64_t quant_max,
                               const std::string& packed_for) const {
    const int32_t shift = cpu::unsigned_a_shift(quant_min);
    return applies(static_cast<int32_t>(quant_min) + shift,
                   static_cast<int32_t>(quant_max) + shift)
               ? std::string(gemm_->name)
               : packed_for;
  }
  // The 7-bit kernel and its weights, packed by `pack` on the first call; thread-safe. Only
  // where applies() holds.
  cpu::PackedGemmWeights weights(const PackFn& pack) const {
    std::call_once(once_, [&] { group_bytes_ = pack(*gemm_, &packed_); });
    return {gemm_, packed_.const_data_ptr<int8_t>(), group_bytes_};
  }

 private:
  const cpu::Int8GemmKernel* gemm_ = nullptr;
  mutable std::once_flag once_;
  mutable at::Tensor packed_;
  mutable int64_t group_bytes_ = 0;
};

}  // namespace ops
}  // namespace torchqat
