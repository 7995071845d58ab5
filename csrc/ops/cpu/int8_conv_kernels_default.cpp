// Portable build of the INT8 convolution's im2col and depthwise kernels (any CPU).
#define TORCHQAT_CONV_NS int8_conv_default
#define TORCHQAT_CONV_TABLE int8_conv_kernels_default
#define TORCHQAT_CONV_ISA "default"
#include "ops/cpu/int8_conv_kernels_impl.h"
