// CPU host wrappers of int8_linear and int8_matmul: checks, input quantization into the GEMM
// kernel's operand layout, the blocked GEMM with its fused epilogue over (row block, panel
// group) tasks, activation. Kernels: int8_kernels_impl.h. Formulas: csrc/core/quantize.h.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <sstream>
#include <vector>

#include "core/quantize.h"
#include "ops/cpu/int8_common.h"
#include "ops/cpu/int8_kernels.h"
#include "ops/packed_linear.h"

namespace torchqat {
namespace cpu {
namespace {

using ops::PackedLinear;

// Output columns per GEMM task: a task's B panels (128 x K bytes) stay in L2 while its row
// block streams past them.
constexpr int64_t kTaskColumns = 128;

std::vector<int64_t> output_shape(const at::Tensor& input, int64_t n) {
  std::vector<int64_t> shape(input.sizes().begin(), input.sizes().end());
  shape.back() = n;
  return shape;
}

// The GEMM of A (already in the kernel's layout) against the packed weights, in parallel over
// (row block, panel group) tasks. Consecutive tasks share their panels, so each thread reads
// its share of the weights once.
void run_gemm(const Int8GemmKernel& k, const Int8GemmProblem& g) {
  const int64_t panels = (g.N + k.panel_cols - 1) / k.panel_cols;
  const int64_t panels_per_task = std::max<int64_t>(1, kTaskColumns / k.panel_cols);
  const int64_t column_tasks = (panels + panels_per_task - 1) / panels_per_task;
  const int64_t row_tasks = (g.M + k.block_rows - 1) / k.block_rows;
  at::parallel_for(0, row_tasks * column_tasks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t ct = t / row_tasks, rt = t % row_tasks;
      k.gemm(g, rt * k.block_rows, std::min(g.M, (rt + 1) * k.block_rows), ct * panels_per_task,
             std::min(panels, (ct + 1) * panels_per_task));
    }
  });
}

// offset[n] = a_zero_point * colsum[n]: sum_k (a - z) * w = sum_k a * w - z * colsum.
std::vector<int32_t> column_offsets(const PackedLinear& packed, int32_t a_zero_point) {
  const int64_t n = packed.out_features();
  const int32_t* col_sum = packed.column_sums();
  std::vector<int32_t> offset(n);
  for (int64_t j = 0; j < n; ++j) offset[j] = a_zero_point * col_sum[j];
  return offset;
}

// torch._int_mm(A int8 [M, K], W int8 [K, N]) and the epilogue over its int32 result.
void int_mm_epilogue(const at::Tensor& a_s8, const PackedLinear& packed, const Int8Epilogue& e,
                     float* out, int32_t* out_raw) {
  const at::Tensor acc = at::_int_mm(a_s8, packed.packed_weight());
  const int64_t M = acc.size(0), N = acc.size(1);
  const int32_t* ap = acc.const_data_ptr<int32_t>();
  const Int8CpuKernels& k = int8_cpu_kernels();
  at::parallel_for(0, M, std::max<int64_t>(1, 16384 / N), [&](int64_t begin, int64_t end) {
    k.epilogue(ap + begin * N, N, end - begin, N, e, out ? out + begin * N : nullptr,
               out_raw ? out_raw + begin * N : nullptr, N);
  });
}

at::Tensor int8_linear_cpu(const at::Tensor& input, const at::Tensor& input_scale,
                           const at::Tensor& input_zero_point, int64_t quant_min,
                           int64_t quant_max, const c10::intrusive_ptr<PackedLinear>& packed,
                           c10::string_view activation) {
  const char* op = "int8_linear";
  const Activation act = parse_activation(op, activation);
  const auto dt = input.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16, op,
              ": input must be float32, float16 or bfloat16, got ", dt);
  check_packed_linear(op, packed, input, /*require_cpu=*/true);
  check_activation_range(op, quant_min, quant_max);
  const ActivationQParams q = activation_qparams(op, input, input_scale, input_zero_point,
                                                 quant_min, quant_max);

  const int64_t K = packed->in_features(), N = packed->out_features();
  const int64_t M = input.numel() / K;
  at::Tensor out = at::empty(output_shape(input, N), input.options().dtype(at::kFloat));
  if (M == 0) return out;
  const at::Tensor x = input.to(at::kFloat).contiguous();
  const float s_x = q.scale;
  const float inv_s = core::inverse_scale(s_x);
  const float qmin = static_cast<float>(quant_min), qmax = static_cast<float>(quant_max);
  const float z = q.zero_point;

  std::vector<float> alpha(N);
  const float* s_w = packed->weight_scale().const_data_ptr<float>();
  for (int64_t j = 0; j < N; ++j) alpha[j] = s_x * s_w[j];
  Int8Epilogue e;
  e.alpha = alpha.data();
  e.bias = packed->bias_or_zeros();
  if (packed->out_multiplier().has_value()) {
    e.multiplier = packed->out_multiplier()->const_data_ptr<float>();
    e.shift = packed->out_shift()->const_data_ptr<float>();
  }
  e.activation = act;

  const float* xp = x.const_data_ptr<float>();
  const int64_t row_grain = std::max<int64_t>(1, 32768 / K);
  const Int8GemmKernel* gemm = packed->gemm();
  if (gemm == nullptr) {
    // torch._int_mm takes int8: unsigned activations are shifted down by 128.
    const int32_t a_shift = quant_min < 0 ? 0 : -128;
    const std::vector<int32_t> offset = column_offsets(*packed, static_cast<int32_t>(z) + a_shift);
    e.offset = offset.data();
    at::Tensor a = at::empty({M, K}, input.options().dtype(at::kChar));
    int8_t* ap = a.mutable_data_ptr<int8_t>();
    const Int8CpuKernels& k = int8_cpu_kernels();
    at::parallel_for(0, M, row_grain, [&](int64_t begin, int64_t end) {
      k.quantize_rows_u8(xp + begin * K, K, end - begin, K, inv_s, z, qmin, qmax, a_shift,
                         ap + begin * K, K);
    });
    int_mm_epilogue(a, *packed, e, out.mutable_data_ptr<float>(), nullptr);
  } else {
    // Our kernels take unsigned bytes: signed activations are shifted up by 128.
    const int32_t a_shift = unsigned_a_shift(quant_min);
    const PackedGemmWeights w = packed->gemm_weights(static_cast<int32_t>(quant_min) + a_shift,
                                                     static_cast<int32_t>(quant_max) + a_shift);
    gemm = w.gemm;
    check_kernel_operand_range(op, gemm, quant_min, quant_max, a_shift);
    const std::vector<int32_t> offset = column_offsets(*packed, static_cast<int32_t>(z) + a_shift);
    e.offset = offset.data();
    const int64_t lda = (K + gemm->k_align - 1) / gemm->k_align * gemm->k_align;
    at::Tensor a = at::empty({M * lda * gemm->a_bytes}, input.options().dtype(at::kByte));
    uint8_t* ap = a.mutable_data_ptr<uint8_t>();
    at::parallel_for(0, M, row_grain, [&](int64_t begin, int64_t end) {
      gemm->quantize_a(xp + begin * K, K, end - begin, K, inv_s, z, qmin, qmax, a_shift,
                       ap + begin * lda * gemm->a_bytes, lda);
    });
    Int8GemmProblem g{M, N, K, ap, lda, w.packed, e, out.mutable_data_ptr<float>(), nullptr, N};
    run_gemm(*gemm, g);
  }
  return out;
}

at::Tensor int8_matmul_cpu(const at::Tensor& input, int64_t input_zero_point,
                           const c10::intrusive_ptr<PackedLinear>& packed) {
  const char* op = "int8_matmul";
  check_int8_matmul_input(op, input, input_zero_point, packed, /*require_cpu=*/true);
  const bool is_signed = input.scalar_type() == at::kChar;
  const int64_t K = packed->in_features(), N = packed->out_features();
  const int64_t M = input.numel() / K;
  at::Tensor out = at::empty(output_shape(input, N), input.options().dtype(at::kInt));
  if (M == 0) return out;
  const at::Tensor x = input.contiguous();

  Int8Epilogue e;
  e.raw_out = true;
  const Int8GemmKernel* gemm = packed->gemm();
  check_kernel_takes_any_byte(op, gemm);
  if (gemm == nullptr) {
    const at::Tensor a = is_signed ? x.view({M, K})
                                   : x.view({M, K}).bitwise_xor(0x80).view(at::kChar);
    const int32_t z = static_cast<int32_t>(input_zero_point) + (is_signed ? 0 : -128);
    const std::vector<int32_t> offset = column_offsets(*packed, z);
    e.offset = offset.data();
    int_mm_epilogue(a, *packed, e, nullptr, out.mutable_data_ptr<int32_t>());
    return out;
  }
  const int32_t z = static_cast<int32_t>(input_zero_point) + (is_signed ? 128 : 0);
  const std::vector<int32_t> offset = column_offsets(*packed, z);
  e.offset = offset.data();
  const int64_t lda = (K + gemm->k_align - 1) / gemm->k_align * gemm->k_align;
  at::Tensor a = at::empty({M * lda * gemm->a_bytes}, input.options().dtype(at::kByte));
  uint8_t* ap = a.mutable_data_ptr<uint8_t>();
  const void* xp = x.const_data_ptr();
  at::parallel_for(0, M, std::max<int64_t>(1, 32768 / K), [&](int64_t begin, int64_t end) {
    gemm->convert_a(static_cast<const uint8_t*>(xp) + begin * K, is_signed, K, end - begin, K,
                    ap + begin * lda * gemm->a_bytes, lda);
  });
  Int8GemmProblem g{M, N, K, ap, lda, packed->packed_weight().const_data_ptr<int8_t>(), e,
                    nullptr, out.mutable_data_ptr<int32_t>(), N};
  run_gemm(*gemm, g);
  return out;
}

}  // namespace
}  // namespace cpu
}  // namespace torchqat

TORCH_LIBRARY_IMPL(torchqat, CPU, m) {
  // Registering a kernel infers its schema from the C++ signature, which names PackedLinear:
  // the class must exist first, whichever static initialiser runs first.
  torchqat::ops::register_packed_linear_class();
  m.impl("int8_linear", &torchqat::cpu::int8_linear_cpu);
  m.impl("int8_matmul", &torchqat::cpu::int8_matmul_cpu);
}
