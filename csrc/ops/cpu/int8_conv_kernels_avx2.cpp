// AVX2 + FMA build of the INT8 convolution's im2col and depthwise kernels, chosen at run time.
// The target pragma comes before every ISA-dependent include; no ATen header, so no ISA macros
// are needed.
#include "ops/cpu/isa_prelude.h"  // before the target pragma: see there
#if defined(__x86_64__) || defined(_M_X64)
#pragma GCC target("avx,avx2,fma,f16c,bmi,bmi2")
#define TORCHQAT_CONV_WITH_AVX2 1
#endif
#define TORCHQAT_CONV_NS int8_conv_avx2
#define TORCHQAT_CONV_TABLE int8_conv_kernels_avx2
#define TORCHQAT_CONV_ISA "avx2"
#include "ops/cpu/int8_conv_kernels_impl.h"
