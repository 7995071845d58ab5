// Raw-pointer CPU kernels of the fake-quant operators, compiled once per instruction set
// (fake_quantize_kernels_{default,avx2,avx512}.cpp) and chosen at run time by
// fake_quant_kernels(). The host wrappers in fake_quantize.cpp validate arguments and lay the
// tensors out; these kernels only compute.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>
#include <string>

namespace torchqat {
namespace cpu {

// The tensor, in memory order, viewed as [outer, channels, inner]; the scale of an element is
// indexed by its middle coordinate. Per-tensor quantization is channels == 1.
struct FakeQuantShape {
  int64_t outer;
  int64_t channels;
  int64_t inner;
};

// Quantization parameters as host arrays of `channels` values. zero_point holds the effective
// zero points (rounded half to even and clamped to the range), so kernels never round them.
struct FakeQuantQParams {
  const double* scale;
  const double* zero_point;
  double quant_min;
  double quant_max;
};

struct FakeQuantKernels {
  const char* isa;  // "default", "avx2" or "avx512"
  // y = fake_quantize(x)
  void (*forward)(c10::ScalarType dtype, const void* x, void* y, FakeQuantShape shape,
                  FakeQuantQParams qp);
  // dx = dy * mask(x)
  void (*ste_backward)(c10::ScalarType dtype, const void* dy, const void* x, void* dx,
                       FakeQuantShape shape, FakeQuantQParams qp);
  // dx = dy * mask(x), and per channel the sums of the LSQ scale and zero-point gradient
  // contributions (before grad_factor) into dscale[channels] and dzero_point[channels].
  void (*lsq_backward)(c10::ScalarType dtype, const void* dy, const void* x, void* dx,
                       FakeQuantShape shape, FakeQuantQParams qp, double* dscale,
                       double* dzero_point);
  // lsq_backward fused with the SiLU before the quantizer: x = silu(pre), and dx is the
  // gradient with respect to pre, silu_backward(dy * mask(x), pre). pre has x's layout.
  void (*lsq_silu_backward)(c10::ScalarType dtype, const void* dy, const void* x,
                            const void* pre, void* dx, FakeQuantShape shape, FakeQuantQParams qp,
                            double* dscale, double* dzero_point);
  // Per tensor (qp has one channel), float32 / float64: m = LSQ's derivative of the output with
  // respect to the scale, per element (lsq_backward's scale term with dy = 1), and clipped = 1
  // where the element quantizes outside [quant_min, quant_max] (0 inside and for NaN).
  void (*lsq_scale_map)(c10::ScalarType dtype, const void* x, void* m, uint8_t* clipped,
                        int64_t numel, FakeQuantQParams qp);
};

const FakeQuantKernels& fake_quant_kernels_default();
const FakeQuantKernels& fake_quant_kernels_avx2();
const FakeQuantKernels& fake_quant_kernels_avx512();

// The kernels for this CPU: AVX-512 where the CPU has AVX-512 F/BW/VL/DQ, else AVX2 with FMA,
// else portable code. TORCHQAT_CPU_CAPABILITY=default|avx2|avx512 lowers the choice (tests use
// it to run every path on one machine); asking for more than the CPU has is an error.
const FakeQuantKernels& fake_quant_kernels();

// fake_quant_kernels().isa, for torch.ops.torchqat.cpu_capability().
std::string cpu_capability();

}  // namespace cpu
}  // namespace torchqat
