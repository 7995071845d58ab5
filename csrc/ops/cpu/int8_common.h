// Argument handling shared by the INT8 operators (int8_linear, int8_conv2d; the CUDA ones use
// the activation name, shape_string, the range and the packed-weight checks too): the activation
// name, the packed weights against the input, and the per-tensor activation quantizer's
// parameters, checked like fake_quantize's with messages that name the calling operator.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/util/string_view.h>

#include <array>
#include <cmath>
#include <limits>
#include <sstream>
#include <string>

#include "core/quantize.h"
#include "ops/cpu/int8_kernels.h"
#include "ops/packed_conv2d.h"
#include "ops/packed_linear.h"

namespace torchqat {
namespace cpu {

// Activation (int8_kernels.h) from the operators' `activation` argument.
inline Activation parse_activation(const char* op, c10::string_view name) {
  if (name == "none") return Activation::kNone;
  if (name == "relu") return Activation::kRelu;
  if (name == "silu") return Activation::kSilu;
  TORCH_CHECK(false, op, ": activation must be 'none', 'relu' or 'silu', got '",
              std::string(name), "'");
}

inline std::string shape_string(const at::Tensor& t) {
  std::ostringstream ss;
  ss << t.sizes();
  return ss.str();
}

// int8_linear / int8_matmul: packed is set and input is [*, in_features]. The CPU operators
// (require_cpu) also need a CPU input: there the dispatcher may pass any device's tensor.
inline void check_packed_linear(const char* op,
                                const c10::intrusive_ptr<ops::PackedLinear>& packed,
                                const at::Tensor& input, bool require_cpu) {
  TORCH_CHECK(packed, op, ": packed must be a PackedLinear, got None");
  TORCH_CHECK(!require_cpu || input.is_cpu(), op, ": input must be a CPU tensor (PackedLinear "
              "is packed for the CPU), got one on ", input.device());
  TORCH_CHECK(input.dim() >= 1 && input.size(-1) == packed->in_features(), op,
              ": input must have shape [*, ", packed->in_features(),
              "] (in_features of packed), got shape ", shape_string(input));
}

// int8_conv2d / int8_conv2d_acc: packed is set, input is [N, C, H, W] with packed's in_channels,
// and the output is not empty; returns the output's {height, width}. The CPU operators
// (require_cpu) also need a CPU input.
inline std::array<int64_t, 2> check_packed_conv2d(
    const char* op, const c10::intrusive_ptr<ops::PackedConv2d>& packed, const at::Tensor& input,
    bool require_cpu) {
  TORCH_CHECK(packed, op, ": packed must be a PackedConv2d, got None");
  TORCH_CHECK(!require_cpu || input.is_cpu(), op, ": input must be a CPU tensor (PackedConv2d "
              "is packed for the CPU), got one on ", input.device());
  TORCH_CHECK(input.dim() == 4, op, ": input must have shape [N, C, H, W], got shape ",
              shape_string(input));
  TORCH_CHECK(input.size(1) == packed->in_channels(), op, ": input must have ",
              packed->in_channels(), " channels (in_channels of packed), got shape ",
              shape_string(input));
  const auto ks = packed->kernel_size();
  const auto st = packed->stride(), pd = packed->padding(), dl = packed->dilation();
  const int64_t H = input.size(2), W = input.size(3);
  const int64_t span_h = H + 2 * pd[0] - dl[0] * (ks[0] - 1) - 1;
  const int64_t span_w = W + 2 * pd[1] - dl[1] * (ks[1] - 1) - 1;
  TORCH_CHECK(span_h >= 0 && span_w >= 0, op, ": the output would be empty: input of height x "
              "width ", H, " x ", W, " with padding [", pd[0], ", ", pd[1],
              "] is smaller than the dilated kernel (", dl[0] * (ks[0] - 1) + 1, " x ",
              dl[1] * (ks[1] - 1) + 1, ")");
  return {span_h / st[0] + 1, span_w / st[1] + 1};
}

// int8_matmul / int8_conv2d_acc: an integer input's zero point must lie in its dtype's range.
inline void check_integer_input_zero_point(const char* op, at::ScalarType dt, int64_t zero_point) {
  const bool is_signed = dt == at::kChar;
  const int64_t zmin = is_signed ? -128 : 0, zmax = is_signed ? 127 : 255;
  TORCH_CHECK(zero_point >= zmin && zero_point <= zmax, op, ": input_zero_point must lie in [",
              zmin, ", ", zmax, "] for ", dt, " input, got ", zero_point);
}

// The activation quantizer's parameters as the kernels use them: scale positive, finite and
// normal in float32; an integer zero point inside the range; a float one rounded half to even
// and clamped.
struct ActivationQParams {
  float scale;
  float zero_point;
};

inline double single_value(const at::Tensor& t) {
  double v = 0.0;
  AT_DISPATCH_ALL_TYPES_AND2(at::kHalf, at::kBFloat16, t.scalar_type(), "single_value", [&] {
    v = static_cast<double>(*t.const_data_ptr<scalar_t>());
  });
  return v;
}

// What the host knows of an activation's quantization parameters without reading them: one
// element each, parameter dtypes, on input's device. The CPU reads the values next
// (activation_qparams); CUDA checks them on the device (int8_gemm.cu).
inline void check_activation_qparam_tensors(const char* op, const at::Tensor& input,
                                            const at::Tensor& scale,
                                            const at::Tensor& zero_point) {
  TORCH_CHECK(scale.numel() == 1 && zero_point.numel() == 1, op,
              ": input_scale and input_zero_point must hold one element each (per-tensor "
              "activations), got shapes ", shape_string(scale), " and ", shape_string(zero_point));
  TORCH_CHECK(scale.scalar_type() == at::kFloat || scale.scalar_type() == at::kDouble, op,
              ": input_scale must be float32 or float64, got ", scale.scalar_type());
  TORCH_CHECK(at::isIntegralType(zero_point.scalar_type(), /*includeBool=*/false) ||
                  zero_point.scalar_type() == at::kFloat || zero_point.scalar_type() == at::kDouble,
              op, ": input_zero_point must be an integer, float32 or float64 tensor, got ",
              zero_point.scalar_type());
  TORCH_CHECK(scale.device() == input.device(), op, ": input_scale must be on input's device (",
              input.device(), "), got ", scale.device());
  TORCH_CHECK(zero_point.device() == input.device(), op,
              ": input_zero_point must be on input's device (", input.device(), "), got ",
              zero_point.device());
}

// The activation range every INT8 operator takes, with one message on every device:
// quant_min < quant_max, within [0, 255] (uint8) or [-128, 127] (int8).
inline void check_activation_range(const char* op, int64_t quant_min, int64_t quant_max) {
  TORCH_CHECK(quant_min < quant_max, op, ": quant_min must be less than quant_max, got [",
              quant_min, ", ", quant_max, "]");
  TORCH_CHECK((quant_min >= 0 && quant_max <= 255) || (quant_min >= -128 && quant_max <= 127),
              op, ": [quant_min, quant_max] must lie within [0, 255] or [-128, 127] (8-bit "
              "activations), got [", quant_min, ", ", quant_max, "]");
}

// The number of bits of an unsigned range [0, max] (127 -> 7).
inline int bits_of(int32_t max) {
  int bits = 0;
  while (max > 0) {
    ++bits;
    max >>= 1;
  }
  return bits;
}

// The kernels multiply bytes a = q + a_shift. One with max_a < 255 (avx2_u7) is exact only for
// a in [0, max_a]: the activation range must keep every code there.
inline void check_kernel_operand_range(const char* op, const Int8GemmKernel* gemm,
                                       int64_t quant_min, int64_t quant_max, int32_t a_shift) {
  if (gemm == nullptr || gemm->max_a >= 255) return;
  TORCH_CHECK(quant_min + a_shift >= 0 && quant_max + a_shift <= gemm->max_a, op,
              ": the packed weights use kernel '", gemm->name, "', which is exact only for "
              "activation ranges within [0, ", gemm->max_a, "] (", bits_of(gemm->max_a),
              "-bit unsigned), got [quant_min, "
              "quant_max] = [", quant_min, ", ", quant_max, "]; pack with kernel='auto' for "
              "8-bit activations");
}

// int8_matmul / int8_conv2d_acc take any uint8 / int8 bytes, which no max_a < 255 kernel can
// promise to be exact for.
inline void check_kernel_takes_any_byte(const char* op, const Int8GemmKernel* gemm) {
  if (gemm == nullptr || gemm->max_a >= 255) return;
  TORCH_CHECK(false, op, ": the packed weights use kernel '", gemm->name, "', which is exact "
              "only for activation bytes in [0, ", gemm->max_a, "]; raw uint8 / int8 input "
              "needs weights packed with kernel='auto'");
}

inline ActivationQParams activation_qparams(const char* op, const at::Tensor& input,
                                            const at::Tensor& scale, const at::Tensor& zero_point,
                                            int64_t quant_min, int64_t quant_max) {
  check_activation_qparam_tensors(op, input, scale, zero_point);
  const double s = single_value(scale);
  TORCH_CHECK(std::isfinite(s) && s > 0.0, op, ": input_scale must be positive and finite, got ",
              s);
  TORCH_CHECK(static_cast<float>(s) >= std::numeric_limits<float>::min(), op,
              ": input_scale must be at least ", std::numeric_limits<float>::min(),
              " (the smallest normal float32 number, so that 1/scale is finite), got ", s);
  const double z = single_value(zero_point);
  TORCH_CHECK(std::isfinite(z), op, ": input_zero_point must be finite, got ", z);
  const bool integral = at::isIntegralType(zero_point.scalar_type(), /*includeBool=*/false);
  TORCH_CHECK(!integral || (z >= quant_min && z <= quant_max), op,
              ": input_zero_point must lie in [quant_min, quant_max] = [", quant_min, ", ",
              quant_max, "], got ", static_cast<int64_t>(z));
  return {static_cast<float>(s),
          static_cast<float>(core::effective_zero_point<double>(
              z, static_cast<double>(quant_min), static_cast<double>(quant_max)))};
}

// int8_matmul's input: uint8 or int8, a zero point in that type's range, and the packed weights'
// checks (check_packed_linear). Shared by the CPU and CUDA operators.
inline void check_int8_matmul_input(const char* op, const at::Tensor& input,
                                    int64_t input_zero_point,
                                    const c10::intrusive_ptr<ops::PackedLinear>& packed,
                                    bool require_cpu) {
  const auto dt = input.scalar_type();
  TORCH_CHECK(dt == at::kByte || dt == at::kChar, op, ": input must be uint8 or int8, got ", dt);
  check_packed_linear(op, packed, input, require_cpu);
  check_integer_input_zero_point(op, dt, input_zero_point);
}

}  // namespace cpu
}  // namespace torchqat
