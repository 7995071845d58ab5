// The INT8 operators as a libtorch C++ program sees them: a PackedLinear made in C++, every GEMM
// kernel exact through the dispatcher, and int8_linear against the float computation.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <ATen/core/dispatch/Dispatcher.h>

#include "ops/packed_linear.h"

namespace {

using torchqat::ops::PackedLinear;
using Int8Matmul = at::Tensor(const at::Tensor&, int64_t, const c10::intrusive_ptr<PackedLinear>&);
using Int8Linear = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t,
                              int64_t, const c10::intrusive_ptr<PackedLinear>&, c10::string_view);
using Kernels = std::vector<std::string>();

TEST(Int8Ops, EveryKernelIsExact) {
  torch::manual_seed(0);
  const auto kernels = c10::Dispatcher::singleton()
                           .findSchemaOrThrow("torchqat::int8_linear_kernels", "")
                           .typed<Kernels>()
                           .call();
  ASSERT_GE(kernels.size(), 2u);
  const auto op = c10::Dispatcher::singleton()
                      .findSchemaOrThrow("torchqat::int8_matmul", "")
                      .typed<Int8Matmul>();
  const auto w = torch::randint(-128, 128, {37, 515}, torch::kInt8);
  const auto a = torch::randint(0, 256, {19, 515}, torch::kUInt8);
  const auto ref = (a.to(torch::kLong) - 7).matmul(w.to(torch::kLong).t());
  for (const auto& k : kernels) {
    auto packed = c10::make_intrusive<PackedLinear>(w, torch::ones({37}), std::nullopt,
                                                    std::nullopt, std::nullopt, k);
    EXPECT_EQ(packed->kernel(), k);
    const auto acc = op.call(a, 7, packed);
    EXPECT_TRUE(torch::equal(acc.to(torch::kLong), ref)) << k;
  }
}

TEST(Int8Ops, LinearMatchesFloat) {
  torch::manual_seed(1);
  const auto w = torch::randint(-127, 128, {8, 64}, torch::kInt8);
  const auto s_w = torch::rand({8}) * 0.01 + 0.001;
  const auto b = torch::randn({8});
  auto packed = c10::make_intrusive<PackedLinear>(w, s_w, b, std::nullopt, std::nullopt, "auto");
  const auto x = torch::randn({5, 64});
  const auto s_x = torch::tensor({0.02f});
  const auto z_x = torch::tensor({3}, torch::kInt32);
  const auto y = c10::Dispatcher::singleton()
                     .findSchemaOrThrow("torchqat::int8_linear", "")
                     .typed<Int8Linear>()
                     .call(x, s_x, z_x, -128, 127, packed, "relu");
  const auto fq_x = at::fake_quantize_per_tensor_affine(x, s_x, z_x, -128, 127);
  const auto y_ref = torch::relu(torch::linear(fq_x, w.to(torch::kFloat) * s_w.unsqueeze(1), b));
  EXPECT_TRUE(torch::allclose(y, y_ref, /*rtol=*/1e-5, /*atol=*/1e-5));
}

}  // namespace
