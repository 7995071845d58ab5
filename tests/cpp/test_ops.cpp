// The operators as a libtorch C++ program sees them: found through the dispatcher, matching
// PyTorch's own fake-quant operators, and differentiable through the C++ autograd functions.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <ATen/core/dispatch/Dispatcher.h>

namespace {

using FakeQuantizeLsq = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                   int64_t, int64_t, std::optional<int64_t>, double, double);
using FakeQuantize = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t,
                                int64_t, std::optional<int64_t>);

auto fake_quantize_op() {
  return c10::Dispatcher::singleton()
      .findSchemaOrThrow("torchqat::fake_quantize", "")
      .typed<FakeQuantize>();
}

auto fake_quantize_lsq_op() {
  return c10::Dispatcher::singleton()
      .findSchemaOrThrow("torchqat::fake_quantize_lsq", "")
      .typed<FakeQuantizeLsq>();
}

TEST(Ops, PerTensorMatchesPyTorch) {
  torch::manual_seed(0);
  const auto x = torch::randn({3, 1000}) * 4;
  const auto scale = torch::tensor({0.037f});
  const auto zp = torch::tensor({5}, torch::kInt32);
  const auto ours = fake_quantize_op().call(x, scale, zp, -128, 127, std::nullopt);
  const auto ref = at::fake_quantize_per_tensor_affine(x, scale, zp, -128, 127);
  EXPECT_TRUE(torch::equal(ours, ref));
}

TEST(Ops, PerChannelMatchesPyTorch) {
  torch::manual_seed(1);
  const auto x = torch::randn({2, 5, 9, 3}) * 3;
  const auto scale = torch::rand({5}) * 0.1 + 0.01;
  const auto zp = torch::randint(0, 20, {5}, torch::kInt32);
  const auto ours = fake_quantize_op().call(x, scale, zp, 0, 255, 1);
  const auto ref = at::fake_quantize_per_channel_affine(x, scale, zp, 1, 0, 255);
  EXPECT_TRUE(torch::equal(ours, ref));
}

TEST(Ops, LsqTrainsScaleInCpp) {
  torch::manual_seed(2);
  const auto x = torch::randn({64}) * 10;  // many elements saturate at this scale
  auto scale = torch::tensor({0.01f}, torch::requires_grad());
  auto zp = torch::tensor({0.0f}, torch::requires_grad());
  const auto y = fake_quantize_lsq_op().call(x, scale, zp, -8, 7, std::nullopt, 1.0, 0.0);
  y.sum().backward();
  ASSERT_TRUE(scale.grad().defined());
  ASSERT_TRUE(zp.grad().defined());
  // Plain reference of the LSQ table with dy = 1.
  const auto v = torch::round(x / 0.01f);
  const auto below = v < -8, above = v > 7;
  const auto inside = ~(below | above);
  const auto yref = torch::clamp(v, -8, 7) * 0.01f;
  const auto ds = torch::where(inside, (yref - x) / 0.01f,
                               torch::where(below, torch::full_like(x, -8.0),
                                            torch::full_like(x, 7.0)))
                      .sum();
  const auto dz = torch::where(inside, torch::zeros_like(x), torch::full_like(x, -0.01)).sum();
  EXPECT_NEAR(scale.grad().item<float>(), ds.item<float>(), 1e-3);
  EXPECT_NEAR(zp.grad().item<float>(), dz.item<float>(), 1e-5);
}

TEST(Ops, BadScaleNamesTheOperator) {
  const auto x = torch::randn({4});
  try {
    fake_quantize_op().call(x, torch::tensor({-1.0f}), torch::tensor({0}), -128, 127,
                            std::nullopt);
    FAIL() << "expected an error";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("fake_quantize: scale must be positive"),
              std::string::npos)
        << e.what();
  }
}

}  // namespace
