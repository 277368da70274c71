// base/invariant.h: a debug build aborts at a violated invariant; a release build counts it and
// lets the caller fail the operation.
#include "base/invariant.h"

#include "gtest/gtest.h"

namespace kvtier {
namespace {

int Decrement(int& count) {
  if (!KVTIER_INVARIANT(count > 0, "count released below zero")) return -1;
  return --count;
}

TEST(Invariant, HoldingInvariantCostsNothingAndCountsNothing) {
  const uint64_t before = InvariantViolations();
  int count = 2;
  EXPECT_EQ(Decrement(count), 1);
  EXPECT_EQ(Decrement(count), 0);
  EXPECT_EQ(InvariantViolations(), before);
}

#ifdef NDEBUG
TEST(Invariant, ReleaseBuildCountsAndFailsTheOperation) {
  const uint64_t before = InvariantViolations();
  int count = 0;
  EXPECT_EQ(Decrement(count), -1);
  EXPECT_EQ(count, 0) << "the guarded step did not run";
  EXPECT_EQ(InvariantViolations(), before + 1);
}
#else
TEST(InvariantDeathTest, DebugBuildAbortsWithTheMessage) {
  int count = 0;
  EXPECT_DEATH(Decrement(count),
               "invariant violated at .*invariant_test.cc.*count released below zero");
}
#endif

}  // namespace
}  // namespace kvtier
