// CUDA host wrappers of int8_linear and int8_matmul: checks, the PackedLinear's weights on this
// device (copied there on first use, PackedLinear::device_pack), then three launches on the
// current stream and no host synchronisation:
//
//   1. the input, quantized per tensor (or, for int8_matmul, converted) into int8
//      a = q + a_shift, [Mp, Kp] with zero padding                    (quantize_rows_cuda)
//   2. the int8 GEMM, int32 [Mp, Np] = a @ W^T                          (gemm_s8s8s32_cuda:
//      cuBLASLt, or our dp4a kernel where cuBLASLt declines the shape)
//   3. the epilogue: zero-point correction with W's column sums, then exactly the CPU's float
//      operations (fma(float(acc), s_x * s_w[n], bias[n]), the folded-BN fma, the activation)
//                                                                      (epilogue_cuda)
//
// (Plus one single-thread launch that reads and checks input_scale / input_zero_point.)
// Integer accumulators equal the CPU's; the float output equals the CPU's bit for bit for
// "none" and "relu" (same fma sequence, IEEE rounding on both), and within a few ulp for "silu"
// (expf differs between libraries). Formulas: csrc/core/quantize.h. Building blocks:
// int8_gemm.{h,cu}.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <vector>

#include "ops/cuda/int8_gemm.h"
#include "ops/packed_linear.h"

namespace torchqat {
namespace cuda {
namespace {

using cpu::check_int8_matmul_input;
using cpu::check_packed_linear;
using ops::DevicePack;
using ops::PackedLinear;

std::vector<int64_t> output_shape(const at::Tensor& input, int64_t n) {
  std::vector<int64_t> shape(input.sizes().begin(), input.sizes().end());
  shape.back() = n;
  return shape;
}

at::Tensor int8_linear_cuda(const at::Tensor& input, const at::Tensor& input_scale,
                            const at::Tensor& input_zero_point, int64_t quant_min,
                            int64_t quant_max, const c10::intrusive_ptr<PackedLinear>& packed,
                            c10::string_view activation) {
  const char* op = "int8_linear";
  const Activation act = parse_activation(op, activation);
  const auto dt = input.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16, op,
              ": input must be float32, float16 or bfloat16, got ", dt);
  check_packed_linear(op, packed, input, /*require_cpu=*/false);
  check_activation_range(op, quant_min, quant_max);
  // qparams first: it checks that input_scale and input_zero_point are on input's device, which
  // the dispatcher does not (input may even be a CPU tensor here).
  const at::Tensor qparams = activation_qparams_cuda(Int8Op::kInt8Linear, input, input_scale,
                                                     input_zero_point, quant_min, quant_max);
  const c10::cuda::CUDAGuard device_guard(input.device());

  const int64_t K = packed->in_features(), N = packed->out_features();
  const int64_t M = input.numel() / K;
  at::Tensor out = at::empty(output_shape(input, N), input.options().dtype(at::kFloat));
  if (M == 0) return out;
  const std::shared_ptr<const DevicePack> w = packed->device_pack(input.device());
  const at::Tensor x = input.contiguous();
  const at::Tensor a = quantize_rows_cuda(x, M, K, w->k_padded, qparams, quant_min, quant_max);
  const at::Tensor acc = gemm_s8s8s32_cuda(a, w->weight);

  EpilogueParams e;
  e.acc = acc.const_data_ptr<int32_t>();
  e.ld_acc = w->n_padded;
  e.M = M;
  e.N = N;
  e.col_sums = w->column_sums.const_data_ptr<int32_t>();
  e.qparams = qparams.const_data_ptr<float>();
  e.a_shift = activation_shift(quant_min);
  e.w_scale = w->weight_scale.const_data_ptr<float>();
  e.bias = w->bias.const_data_ptr<float>();
  if (w->out_multiplier.has_value()) {
    e.multiplier = w->out_multiplier->const_data_ptr<float>();
    e.shift = w->out_shift->const_data_ptr<float>();
  }
  e.activation = act;
  e.out = out.mutable_data_ptr<float>();
  e.ldo = N;
  epilogue_cuda(e);
  return out;
}

at::Tensor int8_matmul_cuda(const at::Tensor& input, int64_t input_zero_point,
                            const c10::intrusive_ptr<PackedLinear>& packed) {
  const char* op = "int8_matmul";
  check_int8_matmul_input(op, input, input_zero_point, packed, /*require_cpu=*/false);
  const bool is_signed = input.scalar_type() == at::kChar;
  const c10::cuda::CUDAGuard device_guard(input.device());
  const int64_t K = packed->in_features(), N = packed->out_features();
  const int64_t M = input.numel() / K;
  at::Tensor out = at::empty(output_shape(input, N), input.options().dtype(at::kInt));
  if (M == 0) return out;
  const std::shared_ptr<const DevicePack> w = packed->device_pack(input.device());
  const at::Tensor a = convert_rows_cuda(input.contiguous(), M, K, w->k_padded);
  const at::Tensor acc = gemm_s8s8s32_cuda(a, w->weight);

  EpilogueParams e;
  e.acc = acc.const_data_ptr<int32_t>();
  e.ld_acc = w->n_padded;
  e.M = M;
  e.N = N;
  e.col_sums = w->column_sums.const_data_ptr<int32_t>();
  e.zero_point = static_cast<int32_t>(input_zero_point) + (is_signed ? 0 : -128);
  e.out_raw = out.mutable_data_ptr<int32_t>();
  e.ldo = N;
  epilogue_cuda(e);
  return out;
}

}  // namespace
}  // namespace cuda
}  // namespace torchqat

TORCH_LIBRARY_IMPL(torchqat, CUDA, m) {
  // The kernels' inferred schemas name PackedLinear: register the class first, whichever
  // static initialiser runs first.
  torchqat::ops::register_packed_linear_class();
  m.impl("int8_linear", &torchqat::cuda::int8_linear_cuda);
  m.impl("int8_matmul", &torchqat::cuda::int8_matmul_cuda);
}
