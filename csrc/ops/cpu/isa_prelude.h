// Headers that do not depend on the instruction set, included by every ISA-specific kernel file
// (*_avx2.cpp, *_avx512*.cpp) *before* its `#pragma GCC target`.
//
// Why: with libstdc++ 13, std::allocator's members are always_inline. When <string> or
// <vector> is first parsed under a target pragma, those members get the pragma's target, while
// the members the compiler defines implicitly (std::string's _Alloc_hider destructor) keep the
// default one, and GCC refuses to inline the first into the second ("inlining failed in call to
// 'always_inline' '~allocator()': target specific option mismatch"). Parsed here, before the
// pragma, everything from the standard library and ATen's ISA-independent headers has the
// default target, which code compiled for any wider target may inline. ATen's vector headers
// (ATen/cpu/vec) do depend on the ISA and stay after the pragma, in the *_impl.h files.
#pragma once

#include <algorithm>
#include <array>
#include <atomic>
#include <bitset>
#include <cmath>
#include <complex>
#include <cstdint>
#include <cstring>
#include <functional>
#include <iostream>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <ostream>
#include <sstream>
#include <string>
#include <tuple>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <variant>
#include <vector>

#ifdef TORCHQAT_ISA_PRELUDE_ATEN
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/core/ScalarType.h>
#endif
