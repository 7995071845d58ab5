// Single-thread peak throughput of the multiply-add instructions an FP32 and an INT8 GEMM can use
// on an AVX2 + FMA CPU, so that the INT8 kernels' speed-up over FP32 can be judged against the
// best this CPU allows. Built and run by bench_isa_peak.py with `g++ -O2 -mavx2 -mfma` (this file
// only; the extension itself never uses -march flags).
//
// Each loop is inline assembly, so the compiler cannot drop or reorder it, with enough independent
// accumulators (10-12 per loop) to cover the instructions' latency (3-5 cycles) times their
// throughput (2 per cycle). Loops:
//   fma        vfmadd231ps ymm                                   8 FP32 MACs per instruction
//   madd16     vpmaddwd ymm + vpaddd ymm (exact int16 pairs)     16 MACs per pair
//   madd_only / maddubs_only / add_only: one instruction alone (its issue rate)
//   maddubs    vpmaddubsw + vpmaddwd(ones) + vpaddd (saturating) 32 MACs per triple
//   fma_kernel / madd16_kernel / madd16_bytes_kernel / maddubs_kernel: the same instructions in
//              the shape of a 6 x 16 GEMM micro-kernel step (A broadcast from memory, B loaded
//              from an L1-resident panel: as float, as int16, as int8 widened with vpmovsxbw, as
//              int8 for vpmaddubsw), i.e. with the loads a real kernel issues.
//   add_chain  a chain of dependent scalar adds: one per cycle, so it measures the clock.
// Output: one line per loop, "name seconds macs".
#include <immintrin.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// 12 independent FMAs per iteration: 96 MACs.
void fma_loop(int64_t n) {
  asm volatile(
      "vxorps %%ymm0, %%ymm0, %%ymm0\n\t"
      "vmovaps %%ymm0, %%ymm1\n\tvmovaps %%ymm0, %%ymm2\n\tvmovaps %%ymm0, %%ymm3\n\t"
      "vmovaps %%ymm0, %%ymm4\n\tvmovaps %%ymm0, %%ymm5\n\tvmovaps %%ymm0, %%ymm6\n\t"
      "vmovaps %%ymm0, %%ymm7\n\tvmovaps %%ymm0, %%ymm8\n\tvmovaps %%ymm0, %%ymm9\n\t"
      "vmovaps %%ymm0, %%ymm10\n\tvmovaps %%ymm0, %%ymm11\n\t"
      "vmovaps %%ymm0, %%ymm12\n\tvmovaps %%ymm0, %%ymm13\n\t"
      "1:\n\t"
      "vfmadd231ps %%ymm12, %%ymm13, %%ymm0\n\t"
      "vfmadd231ps %%ymm12, %%ymm13, %%ymm1\n\t"
      "vfmadd231ps %%ymm12, %%ymm13, %%ymm2\n\t"
      "vfmadd231ps %%ymm12, %%ymm13, %%ymm3\n\t"
      "vfmadd231ps %%ymm12, %%ymm13, %%ymm4\n\t"
      "vfmadd231ps %%ymm12, %%ymm13, %%ymm5\n\t"
      "vfmadd231ps %%ymm12, %%ymm13, %%ymm6\n\t"
      "vfmadd231ps %%ymm12, %%ymm13, %%ymm7\n\t"
      "vfmadd231ps %%ymm12, %%ymm13, %%ymm8\n\t"
      "vfmadd231ps %%ymm12, %%ymm13, %%ymm9\n\t"
      "vfmadd231ps %%ymm12, %%ymm13, %%ymm10\n\t"
      "vfmadd231ps %%ymm12, %%ymm13, %%ymm11\n\t"
      "dec %0\n\t"
      "jnz 1b\n\t"
      : "+r"(n)
      :
      : "cc", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9",
        "xmm10", "xmm11", "xmm12", "xmm13");
}

// 8 x (vpmaddwd into a temporary, vpaddd into one of 8 accumulators) per iteration, each add
// right after its multiply (the order that ran fastest here): 128 MACs.
void madd16_loop(int64_t n) {
  asm volatile(
      "vpxor %%ymm0, %%ymm0, %%ymm0\n\t"
      "vmovdqa %%ymm0, %%ymm1\n\tvmovdqa %%ymm0, %%ymm2\n\tvmovdqa %%ymm0, %%ymm3\n\t"
      "vmovdqa %%ymm0, %%ymm4\n\tvmovdqa %%ymm0, %%ymm5\n\tvmovdqa %%ymm0, %%ymm6\n\t"
      "vmovdqa %%ymm0, %%ymm7\n\tvmovdqa %%ymm0, %%ymm14\n\tvmovdqa %%ymm0, %%ymm15\n\t"
      "1:\n\t"
      "vpmaddwd %%ymm14, %%ymm15, %%ymm8\n\t"
      "vpaddd %%ymm8, %%ymm0, %%ymm0\n\t"
      "vpmaddwd %%ymm14, %%ymm15, %%ymm9\n\t"
      "vpaddd %%ymm9, %%ymm1, %%ymm1\n\t"
      "vpmaddwd %%ymm14, %%ymm15, %%ymm10\n\t"
      "vpaddd %%ymm10, %%ymm2, %%ymm2\n\t"
      "vpmaddwd %%ymm14, %%ymm15, %%ymm11\n\t"
      "vpaddd %%ymm11, %%ymm3, %%ymm3\n\t"
      "vpmaddwd %%ymm14, %%ymm15, %%ymm12\n\t"
      "vpaddd %%ymm12, %%ymm4, %%ymm4\n\t"
      "vpmaddwd %%ymm14, %%ymm15, %%ymm13\n\t"
      "vpaddd %%ymm13, %%ymm5, %%ymm5\n\t"
      "vpmaddwd %%ymm14, %%ymm15, %%ymm8\n\t"
      "vpaddd %%ymm8, %%ymm6, %%ymm6\n\t"
      "vpmaddwd %%ymm14, %%ymm15, %%ymm9\n\t"
      "vpaddd %%ymm9, %%ymm7, %%ymm7\n\t"
      "dec %0\n\t"
      "jnz 1b\n\t"
      : "+r"(n)
      :
      : "cc", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9",
        "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15");
}

// 8 x (vpmaddubsw, vpmaddwd with ones, vpaddd) per iteration: 256 MACs (u8 x s8, pairs
// saturated to int16 — fbgemm's AVX2 path).
void maddubs_loop(int64_t n) {
  asm volatile(
      "vpxor %%ymm0, %%ymm0, %%ymm0\n\t"
      "vmovdqa %%ymm0, %%ymm1\n\tvmovdqa %%ymm0, %%ymm2\n\tvmovdqa %%ymm0, %%ymm3\n\t"
      "vmovdqa %%ymm0, %%ymm13\n\tvmovdqa %%ymm0, %%ymm14\n\tvmovdqa %%ymm0, %%ymm15\n\t"
      "1:\n\t"
      "vpmaddubsw %%ymm14, %%ymm15, %%ymm4\n\t"
      "vpmaddubsw %%ymm14, %%ymm15, %%ymm5\n\t"
      "vpmaddubsw %%ymm14, %%ymm15, %%ymm6\n\t"
      "vpmaddubsw %%ymm14, %%ymm15, %%ymm7\n\t"
      "vpmaddwd %%ymm13, %%ymm4, %%ymm8\n\t"
      "vpmaddwd %%ymm13, %%ymm5, %%ymm9\n\t"
      "vpmaddwd %%ymm13, %%ymm6, %%ymm10\n\t"
      "vpmaddwd %%ymm13, %%ymm7, %%ymm11\n\t"
      "vpaddd %%ymm8, %%ymm0, %%ymm0\n\t"
      "vpaddd %%ymm9, %%ymm1, %%ymm1\n\t"
      "vpaddd %%ymm10, %%ymm2, %%ymm2\n\t"
      "vpaddd %%ymm11, %%ymm3, %%ymm3\n\t"
      "vpmaddubsw %%ymm15, %%ymm14, %%ymm4\n\t"
      "vpmaddubsw %%ymm15, %%ymm14, %%ymm5\n\t"
      "vpmaddubsw %%ymm15, %%ymm14, %%ymm6\n\t"
      "vpmaddubsw %%ymm15, %%ymm14, %%ymm7\n\t"
      "vpmaddwd %%ymm13, %%ymm4, %%ymm8\n\t"
      "vpmaddwd %%ymm13, %%ymm5, %%ymm9\n\t"
      "vpmaddwd %%ymm13, %%ymm6, %%ymm10\n\t"
      "vpmaddwd %%ymm13, %%ymm7, %%ymm11\n\t"
      "vpaddd %%ymm8, %%ymm0, %%ymm0\n\t"
      "vpaddd %%ymm9, %%ymm1, %%ymm1\n\t"
      "vpaddd %%ymm10, %%ymm2, %%ymm2\n\t"
      "vpaddd %%ymm11, %%ymm3, %%ymm3\n\t"
      "dec %0\n\t"
      "jnz 1b\n\t"
      : "+r"(n)
      :
      : "cc", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9",
        "xmm10", "xmm11", "xmm13", "xmm14", "xmm15");
}

// 8 independent vpmaddwd per iteration (no accumulation).
void madd_only(int64_t n) {
  asm volatile(
      "vpxor %%ymm14, %%ymm14, %%ymm14\n\tvpxor %%ymm15, %%ymm15, %%ymm15\n\t"
      "vpxor %%ymm0, %%ymm0, %%ymm0\n\tvmovdqa %%ymm0, %%ymm1\n\tvmovdqa %%ymm0, %%ymm2\n\t"
      "vmovdqa %%ymm0, %%ymm3\n\tvmovdqa %%ymm0, %%ymm4\n\tvmovdqa %%ymm0, %%ymm5\n\t"
      "vmovdqa %%ymm0, %%ymm6\n\tvmovdqa %%ymm0, %%ymm7\n\t"
      "1:\n\t"
      "vpmaddwd %%ymm14, %%ymm15, %%ymm0\n\t"
      "vpmaddwd %%ymm14, %%ymm15, %%ymm1\n\t"
      "vpmaddwd %%ymm14, %%ymm15, %%ymm2\n\t"
      "vpmaddwd %%ymm14, %%ymm15, %%ymm3\n\t"
      "vpmaddwd %%ymm14, %%ymm15, %%ymm4\n\t"
      "vpmaddwd %%ymm14, %%ymm15, %%ymm5\n\t"
      "vpmaddwd %%ymm14, %%ymm15, %%ymm6\n\t"
      "vpmaddwd %%ymm14, %%ymm15, %%ymm7\n\t"
      "dec %0\n\t"
      "jnz 1b\n\t"
      : "+r"(n)
      :
      : "cc", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm14", "xmm15");
}

// 8 independent vpmaddubsw per iteration.
void maddubs_only(int64_t n) {
  asm volatile(
      "vpxor %%ymm14, %%ymm14, %%ymm14\n\tvpxor %%ymm15, %%ymm15, %%ymm15\n\t"
      "vpxor %%ymm0, %%ymm0, %%ymm0\n\tvmovdqa %%ymm0, %%ymm1\n\tvmovdqa %%ymm0, %%ymm2\n\t"
      "vmovdqa %%ymm0, %%ymm3\n\tvmovdqa %%ymm0, %%ymm4\n\tvmovdqa %%ymm0, %%ymm5\n\t"
      "vmovdqa %%ymm0, %%ymm6\n\tvmovdqa %%ymm0, %%ymm7\n\t"
      "1:\n\t"
      "vpmaddubsw %%ymm14, %%ymm15, %%ymm0\n\t"
      "vpmaddubsw %%ymm14, %%ymm15, %%ymm1\n\t"
      "vpmaddubsw %%ymm14, %%ymm15, %%ymm2\n\t"
      "vpmaddubsw %%ymm14, %%ymm15, %%ymm3\n\t"
      "vpmaddubsw %%ymm14, %%ymm15, %%ymm4\n\t"
      "vpmaddubsw %%ymm14, %%ymm15, %%ymm5\n\t"
      "vpmaddubsw %%ymm14, %%ymm15, %%ymm6\n\t"
      "vpmaddubsw %%ymm14, %%ymm15, %%ymm7\n\t"
      "dec %0\n\t"
      "jnz 1b\n\t"
      : "+r"(n)
      :
      : "cc", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm14", "xmm15");
}

// 8 vpaddd into 8 accumulators per iteration.
void add_only(int64_t n) {
  asm volatile(
      "vpxor %%ymm14, %%ymm14, %%ymm14\n\tvpxor %%ymm15, %%ymm15, %%ymm15\n\t"
      "vpxor %%ymm0, %%ymm0, %%ymm0\n\tvmovdqa %%ymm0, %%ymm1\n\tvmovdqa %%ymm0, %%ymm2\n\t"
      "vmovdqa %%ymm0, %%ymm3\n\tvmovdqa %%ymm0, %%ymm4\n\tvmovdqa %%ymm0, %%ymm5\n\t"
      "vmovdqa %%ymm0, %%ymm6\n\tvmovdqa %%ymm0, %%ymm7\n\t"
      "1:\n\t"
      "vpaddd %%ymm14, %%ymm0, %%ymm0\n\t"
      "vpaddd %%ymm14, %%ymm1, %%ymm1\n\t"
      "vpaddd %%ymm14, %%ymm2, %%ymm2\n\t"
      "vpaddd %%ymm14, %%ymm3, %%ymm3\n\t"
      "vpaddd %%ymm14, %%ymm4, %%ymm4\n\t"
      "vpaddd %%ymm14, %%ymm5, %%ymm5\n\t"
      "vpaddd %%ymm14, %%ymm6, %%ymm6\n\t"
      "vpaddd %%ymm14, %%ymm7, %%ymm7\n\t"
      "dec %0\n\t"
      "jnz 1b\n\t"
      : "+r"(n)
      :
      : "cc", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm14", "xmm15");
}

// Kernel-shaped loops: 6 rows x 16 columns per step, A broadcast from memory, B from a panel of
// `panel_bytes` bytes that stays in L1 (the loop wraps around it). Written with intrinsics (the
// compiler keeps the 12 accumulators in registers at -O2); the results are stored to `sink`.
constexpr int kRows = 6;
alignas(64) float g_bf[4096];
alignas(64) int16_t g_bw[8192];
alignas(64) int8_t g_bb[8192];
alignas(64) float g_af[kRows * 64];
alignas(64) int16_t g_aw[kRows * 64];
alignas(64) uint8_t g_ab[kRows * 64];
alignas(64) int32_t g_sink[kRows * 16];

inline int32_t load_i32(const void* p) {
  int32_t v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

// FP32: per k, 2 B vectors (16 columns), 6 broadcasts, 12 FMAs (96 MACs).
void fma_kernel(int64_t n) {
  __m256 c0[kRows], c1[kRows];
#pragma GCC unroll 6
  for (int r = 0; r < kRows; ++r) c0[r] = c1[r] = _mm256_setzero_ps();
  for (int64_t i = 0; i < n; i += 64) {
    const float* b = g_bf;
    for (int k = 0; k < 64; ++k, b += 16) {
      const __m256 b0 = _mm256_load_ps(b), b1 = _mm256_load_ps(b + 8);
#pragma GCC unroll 6
      for (int r = 0; r < kRows; ++r) {
        const __m256 av = _mm256_broadcast_ss(g_af + r * 64 + k);
        c0[r] = _mm256_fmadd_ps(av, b0, c0[r]);
        c1[r] = _mm256_fmadd_ps(av, b1, c1[r]);
      }
    }
  }
#pragma GCC unroll 6
  for (int r = 0; r < kRows; ++r) {
    _mm256_store_ps(reinterpret_cast<float*>(g_sink) + r * 16, c0[r]);
    _mm256_store_ps(reinterpret_cast<float*>(g_sink) + r * 16 + 8, c1[r]);
  }
}

// Exact int16: per 2 k, 2 B vectors of int16 pairs, 6 broadcasts of A pairs, 12 vpmaddwd +
// 12 vpaddd (192 MACs). kBytes: B stored as int8 and widened with vpmovsxbw (the current
// kernel); else stored as int16 (B pre-widened at pack time).
template <bool kBytes>
void madd16_kernel(int64_t n) {
  __m256i c0[kRows], c1[kRows];
#pragma GCC unroll 6
  for (int r = 0; r < kRows; ++r) c0[r] = c1[r] = _mm256_setzero_si256();
  for (int64_t i = 0; i < n; i += 32) {
    for (int k = 0; k < 64; k += 2) {
      __m256i b0, b1;
      if constexpr (kBytes) {
        const int8_t* b = g_bb + k * 16;
        b0 = _mm256_cvtepi8_epi16(_mm_load_si128(reinterpret_cast<const __m128i*>(b)));
        b1 = _mm256_cvtepi8_epi16(_mm_load_si128(reinterpret_cast<const __m128i*>(b + 16)));
      } else {
        const int16_t* b = g_bw + k * 16;
        b0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(b));
        b1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(b + 16));
      }
#pragma GCC unroll 6
      for (int r = 0; r < kRows; ++r) {
        const __m256i av = _mm256_set1_epi32(load_i32(g_aw + r * 64 + k));
        c0[r] = _mm256_add_epi32(c0[r], _mm256_madd_epi16(av, b0));
        c1[r] = _mm256_add_epi32(c1[r], _mm256_madd_epi16(av, b1));
      }
    }
  }
#pragma GCC unroll 6
  for (int r = 0; r < kRows; ++r) {
    _mm256_store_si256(reinterpret_cast<__m256i*>(g_sink + r * 16), c0[r]);
    _mm256_store_si256(reinterpret_cast<__m256i*>(g_sink + r * 16 + 8), c1[r]);
  }
}

// fbgemm-style u8 x s8: per 4 k, 2 B vectors of 4-byte groups (16 columns), 6 broadcasts of 4
// A bytes, 12 x (vpmaddubsw, vpmaddwd ones, vpaddd) (384 MACs).
void maddubs_kernel(int64_t n) {
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i c0[kRows], c1[kRows];
#pragma GCC unroll 6
  for (int r = 0; r < kRows; ++r) c0[r] = c1[r] = _mm256_setzero_si256();
  for (int64_t i = 0; i < n; i += 16) {
    for (int k = 0; k < 64; k += 4) {
      const int8_t* b = g_bb + k * 16;
      const __m256i b0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(b));
      const __m256i b1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(b + 32));
#pragma GCC unroll 6
      for (int r = 0; r < kRows; ++r) {
        const __m256i av = _mm256_set1_epi32(load_i32(g_ab + r * 64 + k));
        c0[r] = _mm256_add_epi32(c0[r], _mm256_madd_epi16(_mm256_maddubs_epi16(av, b0), ones));
        c1[r] = _mm256_add_epi32(c1[r], _mm256_madd_epi16(_mm256_maddubs_epi16(av, b1), ones));
      }
    }
  }
#pragma GCC unroll 6
  for (int r = 0; r < kRows; ++r) {
    _mm256_store_si256(reinterpret_cast<__m256i*>(g_sink + r * 16), c0[r]);
    _mm256_store_si256(reinterpret_cast<__m256i*>(g_sink + r * 16 + 8), c1[r]);
  }
}

// 8 dependent 1-cycle adds per iteration.
void add_chain(int64_t n) {
  int64_t x = 0;
  asm volatile(
      "1:\n\t"
      "add $1, %1\n\tadd $1, %1\n\tadd $1, %1\n\tadd $1, %1\n\t"
      "add $1, %1\n\tadd $1, %1\n\tadd $1, %1\n\tadd $1, %1\n\t"
      "dec %0\n\t"
      "jnz 1b\n\t"
      : "+r"(n), "+r"(x)
      :
      : "cc");
}

template <typename F>
double best_of(F f, int64_t n, int reps) {
  f(n / 10);  // warm-up (and the clock ramp)
  double best = 1e30;
  for (int i = 0; i < reps; ++i) {
    const auto t0 = Clock::now();
    f(n);
    const double s = seconds_since(t0);
    if (s < best) best = s;
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  // Iterations per timed run: ~50-100 ms each on a ~3 GHz core.
  const int64_t n = argc > 1 ? std::atoll(argv[1]) : 20000000;
  const int reps = argc > 2 ? std::atoi(argv[2]) : 5;
  for (int i = 0; i < 8192; ++i) {
    g_bw[i] = static_cast<int16_t>((i * 37) % 255 - 127);
    g_bb[i] = static_cast<int8_t>((i * 37) % 255 - 127);
  }
  for (int i = 0; i < 4096; ++i) g_bf[i] = 0.001f * static_cast<float>(i % 17);
  for (int i = 0; i < kRows * 64; ++i) {
    g_af[i] = 0.01f * static_cast<float>(i % 13);
    g_aw[i] = static_cast<int16_t>(i % 256);
    g_ab[i] = static_cast<uint8_t>(i % 256);
  }
  std::printf("add_chain %.6e %.6e\n", best_of(add_chain, n, reps), 8.0 * n);
  std::printf("fma %.6e %.6e\n", best_of(fma_loop, n, reps), 96.0 * n);
  std::printf("madd16 %.6e %.6e\n", best_of(madd16_loop, n, reps), 128.0 * n);
  std::printf("maddubs %.6e %.6e\n", best_of(maddubs_loop, n, reps), 256.0 * n);
  std::printf("madd_only %.6e %.6e\n", best_of(madd_only, n, reps), 8.0 * n);
  std::printf("maddubs_only %.6e %.6e\n", best_of(maddubs_only, n, reps), 8.0 * n);
  std::printf("add_only %.6e %.6e\n", best_of(add_only, n, reps), 8.0 * n);
  std::printf("fma_kernel %.6e %.6e\n", best_of(fma_kernel, n, reps), 96.0 * n);
  std::printf("madd16_kernel %.6e %.6e\n", best_of(madd16_kernel<false>, n, reps), 192.0 * n);
  std::printf("madd16_bytes_kernel %.6e %.6e\n", best_of(madd16_kernel<true>, n, reps), 192.0 * n);
  std::printf("maddubs_kernel %.6e %.6e\n", best_of(maddubs_kernel, n, reps), 384.0 * n);
  std::printf("sink %d\n", g_sink[0]);
  return 0;
}
