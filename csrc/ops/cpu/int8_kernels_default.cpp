// Portable build of the integer CPU kernels (any CPU): the reference GEMM kernel.
#define TORCHQAT_INT8_NS int8_default
#define TORCHQAT_INT8_TABLE int8_cpu_kernels_default
#define TORCHQAT_INT8_ISA "default"
#include "ops/cpu/int8_kernels_impl.h"
