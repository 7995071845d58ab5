// The INT8 GEMM on ATen's oneDNN micro-kernel, at::native::cpublas::brgemm (uint8 x int8 ->
// int32). On a CPU with AMX it runs the tile instructions (TDPBUSD: eight times the multiply-adds
// per cycle of AVX-512 VNNI's vpdpbusd), which none of torchqat's own kernels use. The products
// and the int32 sums are exact, as in every other kernel, and the float epilogue is the shared
// one (int8_cpu_kernels().epilogue), so the outputs are the same bits.
//
// Layouts: A is the avx512_vnni kernel's (uint8 rows padded with zeros to a multiple of 4, whose
// quantize_a / convert_a this kernel uses); B is packed in panels of 64 output columns, each the
// panel's [K padded to 4, 64] block in oneDNN's VNNI layout (cpublas::pack). Offered where this
// torch has the u8s8s32 brgemm and can pack int8 for it, i.e. on CPUs with AMX-INT8; "auto" takes
// it for deep convolutions only (brgemm_pays_off_for_conv in int8_kernels.h; docs/int8_cpu.md).
#include <ATen/ATen.h>
#include <ATen/native/CPUBlas.h>

#include <algorithm>
#include <vector>

#include "ops/cpu/int8_kernels.h"

namespace torchqat {
namespace cpu {

#if defined(CPUBLAS_BRGEMM_U8I8I32) && (defined(__x86_64__) || defined(_M_X64))

namespace {

constexpr int64_t kPanel = 64;   // columns per packed panel: one brgemm call's N
constexpr int64_t kKAlign = 4;   // VNNI groups of 4 bytes along K
constexpr int64_t kCallRows = 32;  // rows per brgemm call (two AMX tiles of 16 rows)

int64_t padded_k(int64_t K) { return (K + kKAlign - 1) / kKAlign * kKAlign; }

int64_t packed_b_bytes(int64_t N, int64_t K) {
  return (N + kPanel - 1) / kPanel * kPanel * padded_k(K);
}

void pack_b(const int8_t* w, int64_t N, int64_t K, int8_t* packed) {
  const int64_t kp = padded_k(K);
  std::vector<int8_t> block(static_cast<size_t>(kp * kPanel));
  for (int64_t n0 = 0; n0 < N; n0 += kPanel) {
    // The panel as a row-major [kp, 64] block (zero beyond K and beyond N), then oneDNN's layout.
    std::fill(block.begin(), block.end(), int8_t{0});
    for (int64_t c = 0; c < std::min(kPanel, N - n0); ++c) {
      const int8_t* row = w + (n0 + c) * K;
      for (int64_t k = 0; k < K; ++k) block[k * kPanel + c] = row[k];
    }
    at::native::cpublas::pack(kp, kPanel, kPanel, kPanel, at::kChar, at::kChar, block.data(),
                              packed + n0 * kp);
  }
}

void gemm(const Int8GemmProblem& g, int64_t m0, int64_t m1, int64_t p0, int64_t p1) {
  const int64_t kp = padded_k(g.K);
  const auto* a = static_cast<const uint8_t*>(g.a);
  const auto& epilogue = int8_cpu_kernels().epilogue;
  alignas(64) int32_t acc[kCallRows * kPanel];
  for (int64_t p = p0; p < p1; ++p) {
    const int64_t n0 = p * kPanel;
    const int64_t cols = std::min(kPanel, g.N - n0);
    const Int8Epilogue e = epilogue_from_column(g.epilogue, n0);
    for (int64_t m = m0; m < m1; m += kCallRows) {
      const int64_t rows = std::min(kCallRows, m1 - m);
      at::native::cpublas::brgemm(rows, kPanel, kp, g.lda, kPanel, kPanel, /*add_C=*/false,
                                  a + m * g.lda, g.b_packed + n0 * kp, acc, /*is_vnni=*/true);
      epilogue(acc, kPanel, rows, cols, e, g.out ? g.out + m * g.ldo + n0 : nullptr,
               g.out_raw ? g.out_raw + m * g.ldo + n0 : nullptr, g.ldo);
    }
  }
  // AMX keeps a tile configuration per thread; hand it back before other code runs.
  at::native::cpublas::brgemm_release(/*is_vnni=*/true);
}

}  // namespace

const Int8GemmKernel* int8_brgemm_kernel() {
  static const Int8GemmKernel* const kernel = []() -> const Int8GemmKernel* {
    // could_pack: ATen packs int8 B (and brgemm takes the packed layout) only where the CPU has
    // AMX-INT8; such CPUs have AVX-512 VNNI, whose kernel quantizes A in the layout used here.
    if (!at::native::cpublas::could_pack(at::kChar)) return nullptr;
    const Int8GemmKernel* vnni = find_int8_gemm("avx512_vnni", nullptr);
    static const Int8GemmKernel k = {"brgemm",        kPanel,  kKAlign,          1,
                                     kCallRows,       255,     &packed_b_bytes,  &pack_b,
                                     vnni->quantize_a, vnni->convert_a, &gemm};
    return &k;
  }();
  return kernel;
}

#else  // no u8s8s32 brgemm in this torch, or not x86-64

const Int8GemmKernel* int8_brgemm_kernel() { return nullptr; }

#endif

}  // namespace cpu
}  // namespace torchqat
