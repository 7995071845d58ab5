// Unit tests of the torch-free numerics in csrc/core/fake_quant.h.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "core/fake_quant.h"

namespace core = torchqat::core;

TEST(RoundHalfEven, TiesGoToEven) {
  EXPECT_EQ(core::round_half_even(0.5f), 0.0f);
  EXPECT_EQ(core::round_half_even(1.5f), 2.0f);
  EXPECT_EQ(core::round_half_even(2.5f), 2.0f);
  EXPECT_EQ(core::round_half_even(-0.5f), 0.0f);
  EXPECT_EQ(core::round_half_even(-1.5f), -2.0f);
  EXPECT_EQ(core::round_half_even(-2.5), -2.0);
  EXPECT_EQ(core::round_half_even(2.4999999), 2.0);
  EXPECT_EQ(core::round_half_even(2.5000001), 3.0);
}

TEST(EffectiveZeroPoint, RoundsThenClamps) {
  EXPECT_EQ(core::effective_zero_point(3.5f, 0.0f, 255.0f), 4.0f);
  EXPECT_EQ(core::effective_zero_point(2.5f, 0.0f, 255.0f), 2.0f);
  EXPECT_EQ(core::effective_zero_point(-7.0f, 0.0f, 255.0f), 0.0f);
  EXPECT_EQ(core::effective_zero_point(300.0f, 0.0f, 255.0f), 255.0f);
}

TEST(FakeQuantizeElement, InsideRangeRoundsToTheGrid) {
  const float s = 0.25f, inv = core::inverse_scale(s);
  // 0.3 / 0.25 = 1.2 -> 1, plus z = 2 -> q = 3, y = (3 - 2) * 0.25
  auto e = core::fake_quantize_element(0.3f, s, inv, 2.0f, -8.0f, 7.0f);
  EXPECT_EQ(e.region, core::Region::kInside);
  EXPECT_EQ(e.y, 0.25f);
  // A tie: 0.375 / 0.25 = 1.5 -> 2 (even)
  e = core::fake_quantize_element(0.375f, s, inv, 0.0f, -8.0f, 7.0f);
  EXPECT_EQ(e.y, 0.5f);
  // Exactly the range ends count as inside.
  e = core::fake_quantize_element(7.0f * s, s, inv, 0.0f, -8.0f, 7.0f);
  EXPECT_EQ(e.region, core::Region::kInside);
  e = core::fake_quantize_element(-8.0f * s, s, inv, 0.0f, -8.0f, 7.0f);
  EXPECT_EQ(e.region, core::Region::kInside);
}

TEST(FakeQuantizeElement, OutOfRangeClamps) {
  const float s = 0.1f, inv = core::inverse_scale(s);
  auto e = core::fake_quantize_element(100.0f, s, inv, 3.0f, 0.0f, 15.0f);
  EXPECT_EQ(e.region, core::Region::kAbove);
  EXPECT_EQ(e.y, (15.0f - 3.0f) * s);
  e = core::fake_quantize_element(-100.0f, s, inv, 3.0f, 0.0f, 15.0f);
  EXPECT_EQ(e.region, core::Region::kBelow);
  EXPECT_EQ(e.y, (0.0f - 3.0f) * s);
}

TEST(FakeQuantizeElement, InfinitiesClampAndNaNPropagates) {
  const float s = 0.1f, inv = core::inverse_scale(s);
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(core::fake_quantize_value(inf, s, inv, 0.0f, -128.0f, 127.0f), 127.0f * s);
  EXPECT_EQ(core::fake_quantize_value(-inf, s, inv, 0.0f, -128.0f, 127.0f), -128.0f * s);
  const auto e = core::fake_quantize_element(std::nanf(""), s, inv, 0.0f, -128.0f, 127.0f);
  EXPECT_EQ(e.region, core::Region::kNaN);
  EXPECT_TRUE(std::isnan(e.y));
}

TEST(InverseScale, IsFormedInFloat32) {
  // 1/s in float32 differs from 1/s in double for this s; the float path must use float.
  const float s = 0.1f;
  EXPECT_EQ(core::inverse_scale(s), 1.0f / s);
  EXPECT_NE(static_cast<double>(core::inverse_scale(s)), 1.0 / static_cast<double>(s));
}

TEST(LsqElementGrad, FollowsTheTable) {
  const double s = 0.5, inv = core::inverse_scale(s), z = 1.0, qmin = -4.0, qmax = 3.0;
  const double dy = 2.0;
  // inside: x = 0.6 -> 0.6/0.5 = 1.2 -> 1, +z = 2 -> y = (2 - 1) * 0.5 = 0.5
  auto g = core::lsq_element_grad(dy, 0.6, s, inv, z, qmin, qmax);
  EXPECT_DOUBLE_EQ(g.dx, dy);
  EXPECT_DOUBLE_EQ(g.dscale, dy * (0.5 - 0.6) / s);
  EXPECT_DOUBLE_EQ(g.dzero_point, 0.0);
  // above
  g = core::lsq_element_grad(dy, 10.0, s, inv, z, qmin, qmax);
  EXPECT_DOUBLE_EQ(g.dx, 0.0);
  EXPECT_DOUBLE_EQ(g.dscale, dy * (qmax - z));
  EXPECT_DOUBLE_EQ(g.dzero_point, -dy * s);
  // below
  g = core::lsq_element_grad(dy, -10.0, s, inv, z, qmin, qmax);
  EXPECT_DOUBLE_EQ(g.dx, 0.0);
  EXPECT_DOUBLE_EQ(g.dscale, dy * (qmin - z));
  EXPECT_DOUBLE_EQ(g.dzero_point, -dy * s);
  // NaN: no gradient anywhere
  g = core::lsq_element_grad(dy, std::nan(""), s, inv, z, qmin, qmax);
  EXPECT_DOUBLE_EQ(g.dx, 0.0);
  EXPECT_DOUBLE_EQ(g.dscale, 0.0);
  EXPECT_DOUBLE_EQ(g.dzero_point, 0.0);
}

TEST(FakeQuantizeElement, SixteenBitRangeIsExact) {
  // Every integer of a 16-bit range is representable, so q - z is exact in float32.
  const float s = 1.0f, inv = core::inverse_scale(s);
  for (float q = -32768.0f; q <= 32767.0f; q += 4099.0f) {
    EXPECT_EQ(core::fake_quantize_value(q, s, inv, 0.0f, -32768.0f, 32767.0f), q);
  }
}
