// The INT8 operators as a libtorch C++ program sees them: a PackedLinear made in C++, every GEMM
// kernel exact through the dispatcher, and int8_linear against the float computation; the same
// for PackedConv2d and int8_conv2d_acc / int8_conv2d.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <ATen/core/dispatch/Dispatcher.h>

#include "ops/packed_conv2d.h"
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

using torchqat::ops::PackedConv2d;
using Int8ConvAcc = at::Tensor(const at::Tensor&, int64_t, const c10::intrusive_ptr<PackedConv2d>&);
using Int8Conv = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t,
                            int64_t, const c10::intrusive_ptr<PackedConv2d>&, c10::string_view);

TEST(Int8Ops, ConvEveryKernelIsExact) {
  torch::manual_seed(2);
  auto kernels = c10::Dispatcher::singleton()
                     .findSchemaOrThrow("torchqat::int8_linear_kernels", "")
                     .typed<Kernels>()
                     .call();
  const auto op = c10::Dispatcher::singleton()
                      .findSchemaOrThrow("torchqat::int8_conv2d_acc", "")
                      .typed<Int8ConvAcc>();
  const auto x = torch::randint(0, 256, {2, 6, 11, 9}, torch::kUInt8);
  // groups 2, stride 2, padding 1, dilation 1; and depthwise
  for (const int64_t groups : {int64_t{2}, int64_t{6}}) {
    const int64_t out = groups == 6 ? 6 : 10;
    const auto w = torch::randint(-128, 128, {out, 6 / groups, 3, 3}, torch::kInt8);
    const auto ref = at::conv2d(x.to(torch::kDouble) - 7, w.to(torch::kDouble), {}, {2, 2},
                                {1, 1}, {1, 1}, groups).round().to(torch::kLong);
    std::vector<std::string> names = kernels;
    if (groups == 6) names.emplace_back("depthwise");
    for (const auto& k : names) {
      auto packed = c10::make_intrusive<PackedConv2d>(
          w, torch::ones({out}), std::nullopt, std::nullopt, std::nullopt,
          std::vector<int64_t>{2, 2}, std::vector<int64_t>{1, 1}, std::vector<int64_t>{1, 1},
          groups, k);
      EXPECT_EQ(packed->kernel(), k);
      const auto acc = op.call(x, 7, packed);
      EXPECT_TRUE(acc.is_contiguous(at::MemoryFormat::ChannelsLast)) << k;
      EXPECT_TRUE(torch::equal(acc.to(torch::kLong), ref)) << k << " groups " << groups;
    }
  }
}

TEST(Int8Ops, ConvMatchesFloat) {
  torch::manual_seed(3);
  const auto w = torch::randint(-127, 128, {8, 4, 3, 3}, torch::kInt8);
  const auto s_w = torch::rand({8}) * 0.01 + 0.001;
  const auto b = torch::randn({8});
  auto packed = c10::make_intrusive<PackedConv2d>(
      w, s_w, b, std::nullopt, std::nullopt, std::vector<int64_t>{1, 1},
      std::vector<int64_t>{1, 1}, std::vector<int64_t>{1, 1}, 1, "auto");
  const auto x = torch::randn({2, 4, 7, 5});
  const auto s_x = torch::tensor({0.02f});
  const auto z_x = torch::tensor({3}, torch::kInt32);
  const auto y = c10::Dispatcher::singleton()
                     .findSchemaOrThrow("torchqat::int8_conv2d", "")
                     .typed<Int8Conv>()
                     .call(x, s_x, z_x, -128, 127, packed, "relu");
  const auto fq_x = at::fake_quantize_per_tensor_affine(x, s_x, z_x, -128, 127);
  const auto y_ref = torch::relu(
      at::conv2d(fq_x, w.to(torch::kFloat) * s_w.view({8, 1, 1, 1}), b, {1, 1}, {1, 1}));
  EXPECT_TRUE(torch::allclose(y, y_ref, /*rtol=*/1e-5, /*atol=*/1e-5));
}

}  // namespace
