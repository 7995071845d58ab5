// What PackedLinear and PackedConv2d share: the checks of their per-channel vectors, the copies
// they hand to torch.export, and their saved form (a format version and a dict of tensors:
// "weight", "weight_scale", optionally "bias" and "out_multiplier" + "out_shift"). The classes
// add their own entries to the state tuple (PackedConv2d: its convolution parameters).
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/Dict.h>
#include <ATen/core/ivalue.h>
#include <torch/custom_class.h>

#include <cstdint>
#include <optional>
#include <string>

#include "ops/cpu/int8_common.h"  // shape_string

namespace torchqat {
namespace ops {
namespace packed {

using cpu::shape_string;
using TensorDict = c10::Dict<std::string, at::Tensor>;

// A copy of an optional tensor, for __obj_flatten__: strict torch.export (TorchDynamo) calls it
// more than once and refuses tensors that alias between calls (UnsafeScriptObjectError), so it
// must not hand out the stored tensors themselves.
inline std::optional<at::Tensor> optional_clone(const std::optional<at::Tensor>& t) {
  return t.has_value() ? std::optional<at::Tensor>(t->clone()) : std::nullopt;
}

// `self == other` (and `!=`) for the packed classes: true only for the same object. Python
// hashes a ScriptObject by its address, and torch.export's lift_constants_pass (torch 2.13 /
// 2.14) keeps real packed objects by that hash in the dict where it then looks up the
// FakeScriptObjects it traced with; where a fake's real copy lands at the address of a freed
// object whose hash is a key, the lookup compares the fake with an int and, with no __eq__,
// raised NotImplementedError (seen in a strict export of a convolution model; docs/convert.md,
// "Export").
template <class Packed>
bool same_object(const c10::intrusive_ptr<Packed>& self, const c10::IValue& other) {
  return other.isObject() &&
         other.type() == c10::getCustomClassType<c10::intrusive_ptr<Packed>>() &&
         other.toCustomClass<Packed>().get() == self.get();
}

template <class Packed>
bool other_object(const c10::intrusive_ptr<Packed>& self, const c10::IValue& other) {
  return !same_object(self, other);
}

// A per-output-channel float vector of `op`: floating dtype, [n], CPU, finite; returned as a
// contiguous float32 copy. `channels` names n in the message ("out_features", "out_channels").
inline at::Tensor channel_vector(const char* op, const at::Tensor& t, const char* name, int64_t n,
                                 const char* channels) {
  TORCH_CHECK(t.defined(), op, ": ", name, " must be a tensor");
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), op, ": ", name,
              " must be a floating-point tensor, got ", t.scalar_type());
  TORCH_CHECK(t.dim() == 1 && t.size(0) == n, op, ": ", name, " must have shape [", n, "] (",
              channels, "), got shape ", shape_string(t));
  TORCH_CHECK(t.is_cpu(), op, ": ", name, " must be a CPU tensor, got one on ", t.device());
  at::Tensor f = t.detach().to(at::kFloat, /*non_blocking=*/false, /*copy=*/true).contiguous();
  TORCH_CHECK(at::isfinite(f).all().item<bool>(), op, ": ", name, " must be finite");
  return f;
}

// The tensors of a saved packed object.
struct SavedTensors {
  at::Tensor weight;
  at::Tensor weight_scale;
  std::optional<at::Tensor> bias;
  std::optional<at::Tensor> out_multiplier;
  std::optional<at::Tensor> out_shift;
};

inline TensorDict to_dict(const SavedTensors& s) {
  TensorDict d;
  d.insert("weight", s.weight);
  d.insert("weight_scale", s.weight_scale);
  if (s.bias.has_value()) d.insert("bias", *s.bias);
  if (s.out_multiplier.has_value()) d.insert("out_multiplier", *s.out_multiplier);
  if (s.out_shift.has_value()) d.insert("out_shift", *s.out_shift);
  return d;
}

// Reads a saved dict of `op` after checking its format version and its entries. The tensors come
// back on the CPU: the packed objects keep them there and lay them out per device on first use,
// while a file loaded with map_location="cuda" hands them over on the GPU.
inline SavedTensors from_dict(const char* op, int64_t version, int64_t expected_version,
                              const TensorDict& d) {
  TORCH_CHECK(version == expected_version, op, ": cannot load packed weights of format version ",
              version, "; this build of torchqat reads version ", expected_version,
              " (the file was written by another torchqat version, or is damaged)");
  for (const auto& entry : d) {
    const std::string& key = entry.key();
    TORCH_CHECK(key == "weight" || key == "weight_scale" || key == "bias" ||
                    key == "out_multiplier" || key == "out_shift",
                op, ": unknown entry '", key, "' in saved packed weights of format version ",
                version);
  }
  TORCH_CHECK(d.contains("weight") && d.contains("weight_scale"), op,
              ": saved packed weights of format version ", version,
              " lack 'weight' or 'weight_scale'");
  const auto get = [&](const char* key) -> std::optional<at::Tensor> {
    return d.contains(key) ? std::optional<at::Tensor>(d.at(key).cpu()) : std::nullopt;
  };
  return {d.at("weight").cpu(), d.at("weight_scale").cpu(), get("bias"), get("out_multiplier"),
          get("out_shift")};
}

}  // namespace packed
}  // namespace ops
}  // namespace torchqat
