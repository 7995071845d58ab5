// TORCHQAT_API marks the C++ symbols a program linking libtorchqat may use directly (the packed
// weight classes). Both builds compile with -fvisibility=hidden, so everything else (kernels,
// helpers, the registration code) stays private to the library and cannot clash with a symbol
// of the same name in another library loaded into the same process. Torch-free, like all of
// csrc/core.
#pragma once

#if defined(__GNUC__) || defined(__clang__)
#define TORCHQAT_API __attribute__((visibility("default")))
#else
#define TORCHQAT_API
#endif
