// AVX2 + FMA build of the integer CPU kernels, chosen at run time: the AVX2 GEMM kernel and the
// AVX2 emulation of the AVX-512 VNNI kernel (for tests). The target pragma comes before every
// ISA-dependent include, so this file needs no per-file compiler flags; it includes no ATen
// header, so no ISA macros need defining (see fake_quantize_kernels_avx2.cpp for files that do).
#include "ops/cpu/isa_prelude.h"  // before the target pragma: see there
#if defined(__x86_64__) || defined(_M_X64)
#pragma GCC target("avx,avx2,fma,f16c,bmi,bmi2")
#define TORCHQAT_INT8_WITH_AVX2 1
#endif
#define TORCHQAT_INT8_NS int8_avx2
#define TORCHQAT_INT8_TABLE int8_cpu_kernels_avx2
#define TORCHQAT_INT8_ISA "avx2"
#include "ops/cpu/int8_kernels_impl.h"
