// CPU host wrappers of int8_conv2d and int8_conv2d_acc: checks, quantization of the input into
// one NHWC byte buffer, then one of three paths, all ending in int8_linear's fused epilogue and
// an NHWC (channels_last) output:
//   - depthwise (groups == C == O): the direct kernel of int8_conv_kernels_impl.h;
//   - 1x1, stride 1, no padding, one group, byte-operand GEMM kernel: the GEMM reads the NHWC
//     buffer itself as A ([N*H*W, C]);
//   - otherwise im2col in row tiles (one tile per task, in a per-thread buffer, so memory stays
//     bounded) followed by the packed GEMM of the tile's group.
// Kernels: int8_kernels_impl.h (GEMM, epilogue), int8_conv_kernels_impl.h (im2col, depthwise).
// Formulas: csrc/core/quantize.h.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "core/quantize.h"
#include "ops/cpu/int8_conv_kernels.h"
#include "ops/cpu/int8_common.h"
#include "ops/cpu/int8_kernels.h"
#include "ops/packed_conv2d.h"

namespace torchqat {
namespace cpu {

const Int8ConvKernels& int8_conv_kernels() {
  static const Int8ConvKernels& chosen = [] () -> const Int8ConvKernels& {
    const std::string isa = int8_cpu_kernels().isa;
    if (isa == "avx512_vnni") return int8_conv_kernels_avx512();
    if (isa == "avx2") return int8_conv_kernels_avx2();
    return int8_conv_kernels_default();
  }();
  return chosen;
}

namespace {

using ops::PackedConv2d;

// Output columns per GEMM task on the pointwise path, as int8_linear's.
constexpr int64_t kTaskColumns = 128;

constexpr int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// Checks input against packed and computes the output geometry.
Conv2dGeometry geometry(const char* op, const c10::intrusive_ptr<PackedConv2d>& packed,
                        const at::Tensor& input) {
  const std::array<int64_t, 2> out_hw =
      check_packed_conv2d(op, packed, input, /*require_cpu=*/true);
  Conv2dGeometry g{};
  g.N = input.size(0);
  g.C = input.size(1);
  g.H = input.size(2);
  g.W = input.size(3);
  const auto ks = packed->kernel_size();
  const auto st = packed->stride(), pd = packed->padding(), dl = packed->dilation();
  g.kh = ks[0];
  g.kw = ks[1];
  g.stride_h = st[0];
  g.stride_w = st[1];
  g.pad_h = pd[0];
  g.pad_w = pd[1];
  g.dil_h = dl[0];
  g.dil_w = dl[1];
  g.groups = packed->groups();
  g.Ho = out_hw[0];
  g.Wo = out_hw[1];
  return g;
}

at::Tensor empty_output(const Conv2dGeometry& g, int64_t out_channels, at::ScalarType dtype) {
  return at::empty({g.N, out_channels, g.Ho, g.Wo},
                   at::TensorOptions().dtype(dtype).memory_format(at::MemoryFormat::ChannelsLast));
}

// The convolution of x (NHWC bytes, zero point z_a) with the packed weights; e without its
// offset, which this sets. Writes out (float) or out_raw (int32), NHWC [M, O].
// w: the GEMM kernel and packing to run (PackedConv2d::gemm_weights), unused when depthwise.
void run_conv(const PackedConv2d& p, const PackedGemmWeights& w, const Conv2dGeometry& g,
              const uint8_t* x, int32_t z_a, Int8Epilogue e, float* out, int32_t* out_raw) {
  const int64_t O = p.out_channels(), M = g.N * g.Ho * g.Wo;
  const Int8CpuKernels& k = int8_cpu_kernels();
  const Int8ConvKernels& ck = int8_conv_kernels();
  if (p.depthwise()) {
    const std::vector<int32_t> zeros(O, 0);  // the kernel subtracts z itself
    e.offset = zeros.data();
    const int64_t rows_per_step = std::max<int64_t>(1, 4096 / O);
    const int32_t* taps = p.packed_weight().const_data_ptr<int32_t>();
    at::parallel_for(0, M, rows_per_step, [&](int64_t begin, int64_t end) {
      std::vector<int32_t> acc(rows_per_step * O);
      for (int64_t m = begin; m < end; m += rows_per_step) {
        const int64_t rows = std::min(rows_per_step, end - m);
        ck.depthwise(x, g, z_a, taps, p.depthwise_pairs(), p.column_sums(), m, m + rows,
                     acc.data());
        k.epilogue(acc.data(), O, rows, O, e, out ? out + m * O : nullptr,
                   out_raw ? out_raw + m * O : nullptr, O);
      }
    });
    return;
  }

  const int64_t Ng = O / g.groups, K = p.depth();
  const Int8GemmKernel* gemm = w.gemm;
  // sum_k (a - z) * w = sum_k a * w - z * colsum; torch._int_mm reads a - 128 as int8.
  const int32_t z_gemm = gemm != nullptr ? z_a : z_a - 128;
  std::vector<int32_t> offset(O);
  for (int64_t o = 0; o < O; ++o) offset[o] = z_gemm * p.column_sums()[o];
  e.offset = offset.data();
  const uint8_t pad = static_cast<uint8_t>(z_a);
  const bool pointwise = g.kh == 1 && g.kw == 1 && g.stride_h == 1 && g.stride_w == 1 &&
                         g.pad_h == 0 && g.pad_w == 0;

  if (gemm != nullptr && pointwise && g.groups == 1 && gemm->a_bytes == 1 &&
      g.C % gemm->k_align == 0) {
    // The NHWC buffer is A already: (row block, panel group) tasks as in int8_linear.
    Int8GemmProblem prob{M, O, K, x, g.C, w.packed, e, out, out_raw, O};
    const int64_t panels = (O + gemm->panel_cols - 1) / gemm->panel_cols;
    const int64_t panels_per_task = std::max<int64_t>(1, kTaskColumns / gemm->panel_cols);
    const int64_t column_tasks = (panels + panels_per_task - 1) / panels_per_task;
    const int64_t row_tasks = (M + gemm->block_rows - 1) / gemm->block_rows;
    at::parallel_for(0, row_tasks * column_tasks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        const int64_t ct = t / row_tasks, rt = t % row_tasks;
        gemm->gemm(prob, rt * gemm->block_rows, std::min(M, (rt + 1) * gemm->block_rows),
                   ct * panels_per_task, std::min(panels, (ct + 1) * panels_per_task));
      }
    });
    return;
  }

  // im2col tiles: a tile is `tile` output rows of one group. Tiles of the GEMM kernel's block
  // rows, made smaller (down to 12, a multiple of every micro-kernel's rows) when that leaves
  // too few tasks to keep every thread busy (late layers: 7 x 7 = 49 rows).
  const int64_t block = gemm != nullptr ? gemm->block_rows : 48;
  const int64_t target_tasks = 4 * static_cast<int64_t>(at::get_num_threads());
  int64_t tile = round_up((M * g.groups + target_tasks - 1) / target_tasks, 12);
  tile = std::max<int64_t>(12, std::min(block, tile));
  const int64_t row_tiles = (M + tile - 1) / tile;
  const int64_t lda = gemm != nullptr ? round_up(K, gemm->k_align) : K;
  const int64_t a_bytes = gemm != nullptr ? gemm->a_bytes : 1;
  const int64_t group_bytes = w.group_bytes;
  const int8_t* packed = w.packed;

  at::parallel_for(0, g.groups * row_tiles, 1, [&](int64_t begin, int64_t end) {
    // 64-byte aligned rows start the A tile on a cache line.
    std::vector<uint8_t> buffer(static_cast<size_t>(tile * lda * a_bytes + 64));
    uint8_t* a = buffer.data() + (64 - reinterpret_cast<uintptr_t>(buffer.data()) % 64) % 64;
    for (int64_t t = begin; t < end; ++t) {
      const int64_t grp = t / row_tiles, rt = t % row_tiles;
      const int64_t m0 = rt * tile, m1 = std::min(M, m0 + tile), rows = m1 - m0;
      const Int8Epilogue eg = epilogue_from_column(e, grp * Ng);
      float* og = out ? out + m0 * O + grp * Ng : nullptr;
      int32_t* rg = out_raw ? out_raw + m0 * O + grp * Ng : nullptr;
      if (gemm != nullptr) {
        if (a_bytes == 1) {
          ck.im2col_u8(x, g, grp, pad, m0, m1, a, lda);
        } else {
          ck.im2col_i16(x, g, grp, pad, m0, m1, reinterpret_cast<int16_t*>(a), lda);
        }
        const Int8GemmProblem prob{rows, Ng, K, a, lda, packed + grp * group_bytes, eg, og, rg,
                                   O};
        gemm->gemm(prob, 0, rows, 0, (Ng + gemm->panel_cols - 1) / gemm->panel_cols);
      } else {
        ck.im2col_u8(x, g, grp, pad, m0, m1, a, lda);
        for (int64_t i = 0; i < rows * K; ++i) a[i] ^= 0x80;  // uint8 a -> int8 a - 128
        const at::Tensor a_s8 = at::from_blob(a, {rows, K}, at::TensorOptions().dtype(at::kChar));
        const at::Tensor acc = at::_int_mm(a_s8, p.packed_weight()[grp]);
        k.epilogue(acc.const_data_ptr<int32_t>(), Ng, rows, Ng, eg, og, rg, O);
      }
    }
  });
}

// input viewed as NHWC and made dense in that order (no copy for a channels_last input).
at::Tensor nhwc(const at::Tensor& input) { return input.permute({0, 2, 3, 1}).contiguous(); }

at::Tensor int8_conv2d_cpu(const at::Tensor& input, const at::Tensor& input_scale,
                           const at::Tensor& input_zero_point, int64_t quant_min,
                           int64_t quant_max, const c10::intrusive_ptr<PackedConv2d>& packed,
                           c10::string_view activation) {
  const char* op = "int8_conv2d";
  const Activation act = parse_activation(op, activation);
  const auto dt = input.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16, op,
              ": input must be float32, float16 or bfloat16, got ", dt);
  const Conv2dGeometry g = geometry(op, packed, input);
  check_activation_range(op, quant_min, quant_max);
  const ActivationQParams q = activation_qparams(op, input, input_scale, input_zero_point,
                                                 quant_min, quant_max);
  const int64_t O = packed->out_channels();
  at::Tensor out = empty_output(g, O, at::kFloat);
  if (out.numel() == 0) return out;

  // Quantize once into NHWC bytes; signed ranges are stored as q + 128, their zero point alike.
  const at::Tensor x = nhwc(input.to(at::kFloat));
  const int32_t a_shift = unsigned_a_shift(quant_min);
  const PackedGemmWeights w = packed->gemm_weights(static_cast<int32_t>(quant_min) + a_shift,
                                                   static_cast<int32_t>(quant_max) + a_shift);
  check_kernel_operand_range(op, w.gemm, quant_min, quant_max, a_shift);
  const int64_t C = g.C, pixels = g.N * g.H * g.W;
  at::Tensor xq = at::empty({pixels * C}, x.options().dtype(at::kByte));
  const float inv_s = core::inverse_scale(q.scale);
  const float qmin = static_cast<float>(quant_min), qmax = static_cast<float>(quant_max);
  const float* xp = x.const_data_ptr<float>();
  uint8_t* xqp = xq.mutable_data_ptr<uint8_t>();
  const Int8CpuKernels& k = int8_cpu_kernels();
  // x and xq are both dense [pixels * C]: quantized as single rows of up to 32768 elements,
  // so that few-channel inputs (a 1- or 3-channel stem) run the vector loop, not C-long rows.
  at::parallel_for(0, pixels * C, 32768, [&](int64_t begin, int64_t end) {
    k.quantize_rows_u8(xp + begin, end - begin, 1, end - begin, inv_s, q.zero_point, qmin, qmax,
                       a_shift, xqp + begin, end - begin);
  });

  std::vector<float> alpha(O);
  const float* s_w = packed->weight_scale().const_data_ptr<float>();
  for (int64_t o = 0; o < O; ++o) alpha[o] = q.scale * s_w[o];
  Int8Epilogue e;
  e.alpha = alpha.data();
  e.bias = packed->bias_or_zeros();
  if (packed->out_multiplier().has_value()) {
    e.multiplier = packed->out_multiplier()->const_data_ptr<float>();
    e.shift = packed->out_shift()->const_data_ptr<float>();
  }
  e.activation = act;
  run_conv(*packed, w, g, xqp, static_cast<int32_t>(q.zero_point) + a_shift, e,
           out.mutable_data_ptr<float>(), nullptr);
  return out;
}

at::Tensor int8_conv2d_acc_cpu(const at::Tensor& input, int64_t input_zero_point,
                               const c10::intrusive_ptr<PackedConv2d>& packed) {
  const char* op = "int8_conv2d_acc";
  const auto dt = input.scalar_type();
  TORCH_CHECK(dt == at::kByte || dt == at::kChar, op, ": input must be uint8 or int8, got ", dt);
  const Conv2dGeometry g = geometry(op, packed, input);
  check_integer_input_zero_point(op, dt, input_zero_point);
  // Any byte may come: the packing for the full range.
  const PackedGemmWeights w = packed->gemm_weights(0, 255);
  check_kernel_takes_any_byte(op, w.gemm);
  const bool is_signed = dt == at::kChar;
  at::Tensor out = empty_output(g, packed->out_channels(), at::kInt);
  if (out.numel() == 0) return out;
  // Unsigned bytes for the kernels: int8 v is stored as v + 128 (flipping the sign bit).
  const at::Tensor x = is_signed ? nhwc(input).view(at::kByte).bitwise_xor(0x80).contiguous()
                                 : nhwc(input);
  const int32_t z_a = static_cast<int32_t>(input_zero_point) + (is_signed ? 128 : 0);
  Int8Epilogue e;
  e.raw_out = true;
  run_conv(*packed, w, g, x.const_data_ptr<uint8_t>(), z_a, e, nullptr,
           out.mutable_data_ptr<int32_t>());
  return out;
}

}  // namespace
}  // namespace cpu
}  // namespace torchqat

TORCH_LIBRARY_IMPL(torchqat, CPU, m) {
  // The kernels' inferred signatures name PackedConv2d: register the class first.
  torchqat::ops::register_packed_conv2d_class();
  m.impl("int8_conv2d", &torchqat::cpu::int8_conv2d_cpu);
  m.impl("int8_conv2d_acc", &torchqat::cpu::int8_conv2d_acc_cpu);
}
