// Portable build of the fake-quant CPU kernels (any x86-64 or other CPU).
#define CPU_CAPABILITY DEFAULT
#define TORCHQAT_KERNELS_NAME fake_quant_kernels_default
#define TORCHQAT_KERNELS_ISA "default"
#include "ops/cpu/fake_quantize_kernels_impl.h"
