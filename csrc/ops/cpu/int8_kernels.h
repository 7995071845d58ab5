// Raw-pointer CPU kernels of the integer operators (quantize, dequantize, the INT8 GEMM and its
// epilogue), compiled once per instruction set (int8_kernels_{default,avx2,avx512_vnni}.cpp) and
// chosen at run time. Host wrappers (quantize.cpp, int8_linear.cpp) validate, allocate and
// parallelise; these kernels only compute. Numerics: csrc/core/quantize.h. This header is
// torch-free so that the kernel files compile without ATen.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace torchqat {
namespace cpu {

// Integer element types of quantized tensors.
enum class IntType : int { kUInt8, kInt8, kInt16, kInt32 };

// A tensor in memory order viewed as [outer, channels, inner]; parameters are indexed by the
// middle coordinate (per-tensor: channels == 1).
struct ChannelShape {
  int64_t outer;
  int64_t channels;
  int64_t inner;
};

// The activation an INT8 operator fuses into its epilogue (the operators' `activation`
// argument: "none", "relu", "silu"; parse_activation in int8_common.h reads it).
enum class Activation { kNone, kRelu, kSilu };

// The epilogue of one GEMM, per output column n (arrays of N values):
//   v = acc_raw[n] - offset[n]                     (offset = z_a * colsum[n])
//   raw_out: write v as int32; else
//   t = fma(float(v), alpha[n], bias[n]); if multiplier: t = fma(t, multiplier[n], shift[n]);
//   kRelu: t = t > 0 ? t : 0;  kSilu: t = core::silu(t)
struct Int8Epilogue {
  const int32_t* offset = nullptr;
  const float* alpha = nullptr;
  const float* bias = nullptr;
  const float* multiplier = nullptr;  // null: no folded BatchNorm
  const float* shift = nullptr;
  Activation activation = Activation::kNone;
  bool raw_out = false;
};

// The epilogue with its per-column arrays advanced by n0 columns (a group's or a panel's first).
inline Int8Epilogue epilogue_from_column(const Int8Epilogue& e, int64_t n0) {
  Int8Epilogue s = e;
  if (s.offset) s.offset += n0;
  if (s.alpha) s.alpha += n0;
  if (s.bias) s.bias += n0;
  if (s.multiplier) s.multiplier += n0;
  if (s.shift) s.shift += n0;
  return s;
}

// One GEMM: out[m][n] = epilogue(sum_k a[m][k] * w[n][k]) for rows of A in the kernel's own
// layout (a_bytes per element, rows padded to lda elements) and W packed by pack_b.
struct Int8GemmProblem {
  int64_t M;
  int64_t N;
  int64_t K;
  const void* a;
  int64_t lda;              // elements per row of A (K rounded up to k_align)
  const int8_t* b_packed;   // pack_b's output
  Int8Epilogue epilogue;
  float* out = nullptr;         // float output [M, ldo], unless epilogue.raw_out
  int32_t* out_raw = nullptr;   // int32 output [M, ldo] when epilogue.raw_out
  int64_t ldo;
};

// A GEMM kernel family: its packed-B layout, its A layout, and the compute over a block of rows
// and a range of B panels (panel p holds columns [p * panel_cols, (p + 1) * panel_cols)).
struct Int8GemmKernel {
  const char* name;      // "reference", "avx2", "avx512_vnni", "vnni_emulated", "avx2_u7",
                         // "brgemm"
  int64_t panel_cols;    // columns per packed panel
  int64_t k_align;       // K is padded with zeros to a multiple of this
  int64_t a_bytes;       // bytes per element of A (1: uint8, 2: int16)
  int64_t block_rows;    // rows per host task (a multiple of the micro-kernel's rows)
  int32_t max_a;         // largest A byte the kernel is exact for: 255, or 127 for avx2_u7
  // Bytes of packed B for [N, K] weights.
  int64_t (*packed_b_bytes)(int64_t N, int64_t K);
  // w: int8 [N, K] row-major → packed panels (padding zero).
  void (*pack_b)(const int8_t* w, int64_t N, int64_t K, int8_t* packed);
  // Quantizes rows of float32 x ([rows, K], row stride ldx) into A (row stride lda):
  // a = quantize_value(x, inv_s, z, qmin, qmax) + a_shift, padding zero.
  void (*quantize_a)(const float* x, int64_t ldx, int64_t rows, int64_t K, float inv_s,
                     float z, float qmin, float qmax, int32_t a_shift, void* a, int64_t lda);
  // Copies rows of uint8 (is_signed: int8, stored + 128) integers into A.
  void (*convert_a)(const void* src, bool is_signed, int64_t ldx, int64_t rows, int64_t K,
                    void* a, int64_t lda);
  // Rows [m0, m1) and panels [p0, p1) of the problem.
  void (*gemm)(const Int8GemmProblem& g, int64_t m0, int64_t m1, int64_t p0, int64_t p1);
};

// Everything one kernel file provides.
struct Int8CpuKernels {
  const char* isa;  // "default", "avx2" or "avx512_vnni"
  // q[i] = quantize_value(x[i]) for elements [begin, end); params per channel.
  void (*quantize)(const float* x, void* q, IntType type, ChannelShape shape, int64_t begin,
                   int64_t end, const float* inv_scale, const float* zero_point, float qmin,
                   float qmax);
  // y[i] = (q[i] - z) * s for elements [begin, end).
  void (*dequantize)(const void* q, IntType type, float* y, ChannelShape shape, int64_t begin,
                     int64_t end, const float* scale, const float* zero_point);
  // Quantizes rows of float32 x into uint8 bytes (row stride K): a = q + a_shift, wrapping, so
  // a_shift = -128 gives the int8 operand torch._int_mm takes.
  void (*quantize_rows_u8)(const float* x, int64_t ldx, int64_t rows, int64_t K, float inv_s,
                           float z, float qmin, float qmax, int32_t a_shift, void* a,
                           int64_t lda);
  // The epilogue over rows of int32 accumulators (acc [rows, ld_acc]) for columns [0, N).
  void (*epilogue)(const int32_t* acc, int64_t ld_acc, int64_t rows, int64_t N,
                   const Int8Epilogue& e, float* out, int32_t* out_raw, int64_t ldo);
  // The GEMM kernel families compiled in this file (nullptr-terminated).
  const Int8GemmKernel* gemms[4];
};

const Int8CpuKernels& int8_cpu_kernels_default();
const Int8CpuKernels& int8_cpu_kernels_avx2();
const Int8CpuKernels& int8_cpu_kernels_avx512_vnni();

// The GEMM on ATen's oneDNN brgemm micro-kernel (int8_kernels_brgemm.cpp; AMX tiles), or nullptr
// where this torch or this CPU cannot run it.
const Int8GemmKernel* int8_brgemm_kernel();

// The element-wise kernels for this CPU: AVX-512 (F, BW, VL, DQ, VNNI), else AVX2 with FMA, else
// portable; TORCHQAT_CPU_CAPABILITY=default|avx2|avx512 lowers the choice.
const Int8CpuKernels& int8_cpu_kernels();

// A GEMM kernel by name: "auto" is the best one this CPU runs (TORCHQAT_INT8_KERNEL=<name>
// overrides it; TORCHQAT_CPU_CAPABILITY lowers it); "int_mm" (torch._int_mm) has no kernel
// here and returns nullptr. Asking for one the CPU cannot run is an error. "auto" takes
// "brgemm", where the CPU runs it, only for the GEMMs a caller marks `deep_gemm`
// (brgemm_pays_off_for_conv); else, and for every linear layer (one row per batch row, where
// brgemm's 16-row tiles lost to avx512_vnni), the first of avx512_vnni, avx2, reference.
const Int8GemmKernel* find_int8_gemm(const std::string& name, std::string* resolved_name,
                                     bool deep_gemm = false);

// Whether "auto" should pack a convolution for brgemm: a kernel larger than 1 x 1 and a depth
// K = C / groups * kh * kw of at least 256. Measured on an AMX Xeon (docs/benchmarks.md,
// session 9): brgemm took 0.54-0.79 x avx512_vnni's time on 3 x 3 layers of K = 576-4608 and
// 0.94 x at K = 288, but 1.44 x on the 7 x 7 stem (K = 147) and 1.03-1.25 x on 1 x 1 layers
// (K = 64-256), where the per-call cost of a short GEMM dominates.
inline bool brgemm_pays_off_for_conv(int64_t kh, int64_t kw, int64_t depth) {
  return kh * kw > 1 && depth >= 256;
}

// Names of the GEMM kernels this CPU runs, best first, "int_mm" last.
std::vector<std::string> int8_cpu_gemm_kernels();

// The kernel that weights packed for kernel `requested` (which find_int8_gemm resolved to
// `resolved`) run for inputs of at most 7 bits: avx2_u7 where "auto" took the 8-bit AVX2 kernel
// (exact for A in [0, 127] and faster), unless TORCHQAT_INT8_KERNEL names the kernel; else
// nullptr. The packed classes make that second packing on first use, so that a saved model,
// which re-packs with "auto" on load, still runs 7-bit layers on it (TorchScript, C++).
const Int8GemmKernel* seven_bit_input_gemm(const std::string& requested,
                                           const std::string& resolved);

// A GEMM kernel and the weights packed for it; group g's panels start at
// packed + g * group_bytes (convolutions; 0 for a linear layer). gemm == nullptr: the weights are
// not packed for one of our GEMM kernels (torch._int_mm, the depthwise kernel).
struct PackedGemmWeights {
  const Int8GemmKernel* gemm = nullptr;
  const int8_t* packed = nullptr;
  int64_t group_bytes = 0;
};

// The A-byte shift of our GEMM kernels, which take unsigned bytes: signed activation ranges are
// stored as q + 128.
inline int32_t unsigned_a_shift(int64_t quant_min) { return quant_min < 0 ? 128 : 0; }

}  // namespace cpu
}  // namespace torchqat
