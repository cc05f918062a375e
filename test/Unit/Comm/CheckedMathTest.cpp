//===- CheckedMathTest.cpp - Overflow-checked sizes -----------------------===//
#include "base/CheckedMath.h"

#include <gtest/gtest.h>

#include <limits>
#include <vector>

using namespace moert;

namespace {

constexpr int64_t kMax = std::numeric_limits<int64_t>::max();

TEST(CheckedMath, MulAndAdd) {
  int64_t v = 0;
  EXPECT_TRUE(checkedMul(6, 7, v));
  EXPECT_EQ(v, 42);
  EXPECT_FALSE(checkedMul(int64_t(1) << 32, int64_t(1) << 32, v));
  EXPECT_FALSE(checkedMul(kMax, 2, v));
  EXPECT_TRUE(checkedAdd(kMax - 1, 1, v));
  EXPECT_EQ(v, kMax);
  EXPECT_FALSE(checkedAdd(kMax, 1, v));
}

TEST(CheckedMath, ElementsAndBytes) {
  int64_t v = 0;
  EXPECT_TRUE(checkedNumElements(std::vector<int64_t>{}, v));
  EXPECT_EQ(v, 1);
  EXPECT_TRUE(checkedNumElements({64, 32}, v));
  EXPECT_EQ(v, 2048);
  EXPECT_TRUE(checkedNumElements({4, 0, 8}, v));
  EXPECT_EQ(v, 0);
  // The mesh of the issue: 2^32 * 2^32 wraps to 0 in int64.
  EXPECT_FALSE(checkedNumElements({4294967296, 4294967296}, v));
  EXPECT_FALSE(checkedNumElements({-1, 4}, v));
  EXPECT_TRUE(checkedByteSize(std::vector<int64_t>{64, 32}, 4, v));
  EXPECT_EQ(v, 8192);
  // tensor<4611686018427387904x64xf32>: 2^62 * 64 * 4 wraps to 0 in int64.
  EXPECT_FALSE(
      checkedByteSize(std::vector<int64_t>{4611686018427387904, 64}, 4, v));
  // 2^40 x 32 f32 elements fit (2^47 bytes): too big to allocate, not an
  // overflow.
  EXPECT_TRUE(checkedByteSize(std::vector<int64_t>{1099511627776, 32}, 4, v));
  EXPECT_EQ(v, int64_t(1) << 47);
  EXPECT_FALSE(checkedByteSize(std::vector<int64_t>{kMax / 2 + 1}, 2, v));
}

TEST(CheckedMath, AlignUp) {
  int64_t v = 0;
  EXPECT_TRUE(checkedAlignUp(0, 64, v));
  EXPECT_EQ(v, 0);
  EXPECT_TRUE(checkedAlignUp(65, 64, v));
  EXPECT_EQ(v, 128);
  EXPECT_FALSE(checkedAlignUp(kMax - 3, 64, v));
  EXPECT_FALSE(checkedAlignUp(5, 0, v));
}

} // namespace
