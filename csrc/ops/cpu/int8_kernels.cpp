// Run-time choice of the integer CPU kernels by instruction set and by name.
#include "ops/cpu/int8_kernels.h"

#include <c10/util/Exception.h>

#include <cstdlib>

namespace torchqat {
namespace cpu {
namespace {

enum class Level : int { kDefault = 0, kAvx2 = 1, kAvx512Vnni = 2 };

bool cpu_has_avx2() {
#if defined(__x86_64__) && defined(__GNUC__)
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
         __builtin_cpu_supports("f16c") && __builtin_cpu_supports("bmi2");
#else
  return false;
#endif
}

bool cpu_has_avx512_vnni() {
#if defined(__x86_64__) && defined(__GNUC__)
  return cpu_has_avx2() && __builtin_cpu_supports("avx512f") &&
         __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vnni");
#else
  return false;
#endif
}

Level cpu_level() {
  if (cpu_has_avx512_vnni()) return Level::kAvx512Vnni;
  if (cpu_has_avx2()) return Level::kAvx2;
  return Level::kDefault;
}

// The CPU's level, lowered by TORCHQAT_CPU_CAPABILITY (the variable the fake-quant kernels
// read; "avx512" means no limit here, since only AVX-512 VNNI has an int8 kernel of its own).
Level allowed_level() {
  const char* env = std::getenv("TORCHQAT_CPU_CAPABILITY");
  const std::string wanted = env ? env : "";
  Level cap = Level::kAvx512Vnni;
  if (wanted == "default") {
    cap = Level::kDefault;
  } else if (wanted == "avx2") {
    cap = Level::kAvx2;
  } else {
    TORCH_CHECK(wanted.empty() || wanted == "avx512",
                "TORCHQAT_CPU_CAPABILITY must be default, avx2 or avx512, got '", wanted, "'");
  }
  return std::min(cap, cpu_level());
}

const Int8CpuKernels& table_for(Level level) {
  switch (level) {
    case Level::kAvx512Vnni:
      return int8_cpu_kernels_avx512_vnni();
    case Level::kAvx2:
      return int8_cpu_kernels_avx2();
    default:
      return int8_cpu_kernels_default();
  }
}

const Int8GemmKernel* gemm_named(const Int8CpuKernels& table, const std::string& name) {
  for (const Int8GemmKernel* k : table.gemms) {
    if (k != nullptr && name == k->name) return k;
  }
  return nullptr;
}

constexpr const char* kKernelNames =
    "'auto', 'brgemm', 'avx512_vnni', 'avx2', 'reference', 'int_mm', 'vnni_emulated' or "
    "'avx2_u7'";

// oneDNN's brgemm with AMX tiles, where present (it needs the AVX-512 VNNI kernel's A layout).
bool brgemm_available() { return cpu_has_avx512_vnni() && int8_brgemm_kernel() != nullptr; }

}  // namespace

const Int8CpuKernels& int8_cpu_kernels() {
  static const Int8CpuKernels& chosen = table_for(allowed_level());
  return chosen;
}

const Int8GemmKernel* find_int8_gemm(const std::string& name, std::string* resolved_name,
                                     bool deep_gemm) {
  std::string wanted = name;
  if (wanted == "auto") {
    const char* env = std::getenv("TORCHQAT_INT8_KERNEL");
    if (env != nullptr && *env != '\0') {
      wanted = env;
      TORCH_CHECK(wanted != "auto", "TORCHQAT_INT8_KERNEL must name a kernel (", kKernelNames,
                  " without 'auto'), got 'auto'");
    } else {
      const Level level = allowed_level();
      wanted = level == Level::kAvx512Vnni && deep_gemm && brgemm_available() ? "brgemm"
               : level == Level::kAvx512Vnni ? "avx512_vnni"
               : level == Level::kAvx2     ? "avx2"
                                           : "reference";
    }
  }
  if (resolved_name != nullptr) *resolved_name = wanted;
  if (wanted == "int_mm") return nullptr;
  if (wanted == "reference") return gemm_named(int8_cpu_kernels_default(), wanted);
  if (wanted == "avx2" || wanted == "vnni_emulated" || wanted == "avx2_u7") {
    TORCH_CHECK(cpu_has_avx2(), "int8 kernel '", wanted, "' needs AVX2 and FMA, which this CPU lacks");
    return gemm_named(int8_cpu_kernels_avx2(), wanted);
  }
  if (wanted == "brgemm") {
    TORCH_CHECK(brgemm_available(), "int8 kernel 'brgemm' needs AVX-512 VNNI and AMX-INT8 (and a "
                "torch whose cpublas::brgemm takes uint8 x int8), which this machine lacks");
    return int8_brgemm_kernel();
  }
  if (wanted == "avx512_vnni") {
    TORCH_CHECK(cpu_has_avx512_vnni(), "int8 kernel 'avx512_vnni' needs AVX-512 (F, BW, VL, DQ) "
                "and AVX512_VNNI, which this CPU lacks");
    return gemm_named(int8_cpu_kernels_avx512_vnni(), wanted);
  }
  TORCH_CHECK(false, "int8 kernel must be ", kKernelNames, ", got '", wanted, "'");
}

const Int8GemmKernel* seven_bit_input_gemm(const std::string& requested,
                                           const std::string& resolved) {
  if (requested != "auto" || resolved != "avx2") return nullptr;
  const char* env = std::getenv("TORCHQAT_INT8_KERNEL");
  if (env != nullptr && *env != '\0') return nullptr;
  return find_int8_gemm("avx2_u7", nullptr);
}

std::vector<std::string> int8_cpu_gemm_kernels() {
  std::vector<std::string> names;
  if (cpu_has_avx512_vnni()) names.emplace_back("avx512_vnni");
  if (brgemm_available()) names.emplace_back("brgemm");
  if (cpu_has_avx2()) names.emplace_back("avx2");
  names.emplace_back("reference");
  names.emplace_back("int_mm");
  if (cpu_has_avx2()) names.emplace_back("vnni_emulated");
  return names;
}

}  // namespace cpu
}  // namespace torchqat
