// AVX-512 (F, BW, VL, DQ) + VNNI build of the integer CPU kernels, chosen at run time where the
// CPU has avx512_vnni: the vpdpbusd GEMM kernel. The target pragma comes before every
// ISA-dependent include, so this file needs no per-file compiler flags; it includes no ATen
// header.
#include "ops/cpu/isa_prelude.h"  // before the target pragma: see there
#if defined(__x86_64__) || defined(_M_X64)
#pragma GCC target("avx,avx2,fma,f16c,bmi,bmi2,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")
#define TORCHQAT_INT8_WITH_AVX512_VNNI 1
#endif
#define TORCHQAT_INT8_NS int8_avx512_vnni
#define TORCHQAT_INT8_TABLE int8_cpu_kernels_avx512_vnni
#define TORCHQAT_INT8_ISA "avx512_vnni"
#include "ops/cpu/int8_kernels_impl.h"
