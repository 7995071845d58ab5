// AVX2 + FMA build of the fake-quant CPU kernels, chosen at run time. The target pragma comes
// before every ISA-dependent include (isa_prelude.h holds the others), so this file needs no
// per-file compiler flags in setup.py or CMake.
// GCC's pragma does not define the ISA macros that headers test (sleef.h declares its AVX2
// functions under __AVX2__), so this file defines them for itself.
#define TORCHQAT_ISA_PRELUDE_ATEN
#include "ops/cpu/isa_prelude.h"  // before the target pragma: see there
#if defined(__x86_64__) || defined(_M_X64)
#pragma GCC target("avx,avx2,fma,f16c,bmi,bmi2")
#define __AVX__ 1
#define __AVX2__ 1
#define __FMA__ 1
#define __F16C__ 1
#define __BMI__ 1
#define __BMI2__ 1
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#else
#define CPU_CAPABILITY AVX2_UNAVAILABLE
#endif
#define TORCHQAT_KERNELS_NAME fake_quant_kernels_avx2
#define TORCHQAT_KERNELS_ISA "avx2"
#include "ops/cpu/fake_quantize_kernels_impl.h"
