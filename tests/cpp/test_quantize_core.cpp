// Unit tests of the torch-free numerics in csrc/core/quantize.h: real quantization agrees with
// fake quantization, the epilogue rounds once per fused multiply-add, and the reference GEMM is
// exact at the ends of the operand ranges.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "core/fake_quant.h"
#include "core/quantize.h"

namespace core = torchqat::core;

TEST(QuantizeValue, IsTheIntegerFakeQuantizeRoundsTo) {
  std::mt19937 rng(0);
  std::uniform_real_distribution<float> dist(-40.0f, 40.0f);
  const float qmin = -128.0f, qmax = 127.0f;
  for (const float s : {0.1f, 0.0371f, 0.25f}) {
    const float inv = core::inverse_scale(s);
    for (const float z : {0.0f, 5.0f, -128.0f}) {
      for (int i = 0; i < 10000; ++i) {
        const float x = (i % 3 == 0) ? (std::round(dist(rng)) + 0.5f) * s : dist(rng);
        const float q = core::quantize_value(x, inv, z, qmin, qmax);
        EXPECT_EQ(q, std::round(q));
        EXPECT_GE(q, qmin);
        EXPECT_LE(q, qmax);
        EXPECT_EQ(core::dequantize_value(q, s, z),
                  core::fake_quantize_value(x, s, inv, z, qmin, qmax));
      }
    }
  }
}

TEST(QuantizeValue, TiesInfinitiesAndNaN) {
  const float s = 0.5f, inv = core::inverse_scale(s);
  EXPECT_EQ(core::quantize_value(0.25f, inv, 0.0f, 0.0f, 255.0f), 0.0f);   // 0.5 -> 0
  EXPECT_EQ(core::quantize_value(0.75f, inv, 0.0f, 0.0f, 255.0f), 2.0f);   // 1.5 -> 2
  EXPECT_EQ(core::quantize_value(1.25f, inv, 3.0f, 0.0f, 255.0f), 5.0f);   // 2.5 -> 2, + 3
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(core::quantize_value(inf, inv, 3.0f, 0.0f, 255.0f), 255.0f);
  EXPECT_EQ(core::quantize_value(-inf, inv, 3.0f, 0.0f, 255.0f), 0.0f);
  EXPECT_EQ(core::quantize_value(std::nanf(""), inv, 3.0f, 0.0f, 255.0f), 3.0f);
}

TEST(LinearEpilogue, RoundsOnce) {
  // 2^24 + 1 is not a float: float(acc) rounds (to even), then the fma rounds once more.
  EXPECT_EQ(core::linear_epilogue(1 << 24, 1.0f, 1.0f), 16777216.0f);
  // a * b + c with a * b not representable: one rounding, not two.
  const float a = 1.0f + 0x1p-12f, b = 1.0f - 0x1p-12f, c = -1.0f;
  EXPECT_EQ(core::fused_multiply_add(a, b, c), -0x1p-24f);
  EXPECT_EQ(core::linear_epilogue(-3, 0.5f, 2.0f), 0.5f);
}

// Distance from y to the exactly rounded float of v, in units of that float's last place.
double ulps(float y, double v) {
  const float r = static_cast<float>(v);
  const double ulp = std::nextafter(std::fabs(r), std::numeric_limits<float>::infinity()) -
                     std::fabs(r);
  return std::fabs(static_cast<double>(y) - v) / ulp;
}

// Every 61st float in the range where exp is a normal float, both signs: within 2 ulp.
TEST(ExpFloat, WithinTwoUlpOverTheNormalRange) {
  double worst = 0.0;
  for (const float end : {88.3f, -87.3f}) {
    uint32_t last;
    std::memcpy(&last, &end, sizeof(last));
    const uint32_t first = end > 0 ? 0u : 0x80000000u;
    for (uint32_t b = first; b <= last; b += 61) {
      float x;
      std::memcpy(&x, &b, sizeof(x));
      worst = std::max(worst, ulps(core::exp_float(x), std::exp(static_cast<double>(x))));
    }
  }
  EXPECT_LE(worst, 2.0);
}

TEST(ExpFloat, RangeEndsInfinitiesAndNaN) {
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(core::exp_float(0.0f), 1.0f);
  EXPECT_EQ(core::exp_float(88.4f), inf);    // a little before the exact overflow (88.72)
  EXPECT_EQ(core::exp_float(89.0f), inf);
  EXPECT_EQ(core::exp_float(inf), inf);
  EXPECT_EQ(core::exp_float(-87.7f), 0.0f);  // exp is subnormal here
  EXPECT_EQ(core::exp_float(-inf), 0.0f);
  EXPECT_EQ(core::exp_float(std::numeric_limits<float>::quiet_NaN()), 0.0f);  // documented
}

// SiLU against float64: a few ulp where it is a normal float; 0 / -0 where ATen's gives the
// same or a number below 1e-36; -inf / (1 + inf) is NaN, as in ATen; NaN stays NaN.
TEST(Silu, WithinAFewUlpOfFloat64) {
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> dist(-100.0f, 100.0f);
  double worst = 0.0;
  for (int i = 0; i < 200000; ++i) {
    const float t = i < 100000 ? dist(rng) : dist(rng) * 0.05f;
    const double ref = t / (1.0 + std::exp(-static_cast<double>(t)));
    if (std::fabs(ref) < 1e-36) {
      EXPECT_LE(std::fabs(core::silu(t)), 1e-36) << t;
      continue;
    }
    worst = std::max(worst, ulps(core::silu(t), ref));
  }
  EXPECT_LE(worst, 4.0);
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(core::silu(0.0f), 0.0f);
  EXPECT_EQ(core::silu(inf), inf);
  EXPECT_TRUE(std::isnan(core::silu(-inf)));
  EXPECT_EQ(core::silu(-200.0f), 0.0f);
  EXPECT_EQ(core::silu(200.0f), 200.0f);
  EXPECT_TRUE(std::isnan(core::silu(std::numeric_limits<float>::quiet_NaN())));
}

TEST(ReferenceGemm, ExactAtTheRangeEnds) {
  const int64_t M = 2, N = 3, K = core::kMaxInt8Depth;
  const std::vector<uint8_t> a(M * K, 255);
  std::vector<int8_t> w(N * K, -128);
  std::fill(w.begin() + K, w.begin() + 2 * K, 127);
  std::vector<int32_t> c(M * N);
  core::gemm_u8s8s32_reference(M, N, K, a.data(), K, w.data(), K, c.data(), N);
  EXPECT_EQ(c[0], -255LL * 128 * K);
  EXPECT_EQ(c[1], 255LL * 127 * K);
  EXPECT_EQ(c[N + 2], -255LL * 128 * K);
  // kMaxInt8Depth is the deepest K whose worst-case sum fits int32.
  EXPECT_LE(255LL * 128 * core::kMaxInt8Depth, static_cast<int64_t>(INT32_MAX));
  EXPECT_GT(255LL * 128 * (core::kMaxInt8Depth + 1), static_cast<int64_t>(INT32_MAX));
}
