// AVX-512 (F, BW, VL, DQ) build of the fake-quant CPU kernels, chosen at run time. The target
// pragma comes before every ISA-dependent include (isa_prelude.h holds the others), so this file
// needs no per-file compiler flags. GCC's pragma does not define the ISA macros that headers test
// (sleef.h declares its AVX-512 functions under __AVX512F__), so this file defines them itself.
#define TORCHQAT_ISA_PRELUDE_ATEN
#include "ops/cpu/isa_prelude.h"  // before the target pragma: see there
#if defined(__x86_64__) || defined(_M_X64)
#pragma GCC target("avx,avx2,fma,f16c,bmi,bmi2,avx512f,avx512bw,avx512vl,avx512dq")
#define __AVX__ 1
#define __AVX2__ 1
#define __FMA__ 1
#define __F16C__ 1
#define __BMI__ 1
#define __BMI2__ 1
#define __AVX512F__ 1
#define __AVX512BW__ 1
#define __AVX512VL__ 1
#define __AVX512DQ__ 1
#define CPU_CAPABILITY AVX512
#define CPU_CAPABILITY_AVX512
// GCC 12's avx512fintrin.h trips -Wmaybe-uninitialized on its own undefined-vector idiom.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#else
#define CPU_CAPABILITY AVX512_UNAVAILABLE
#endif
#define TORCHQAT_KERNELS_NAME fake_quant_kernels_avx512
#define TORCHQAT_KERNELS_ISA "avx512"
#include "ops/cpu/fake_quantize_kernels_impl.h"
