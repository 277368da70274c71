// RETURN_IF_ERROR / ASSIGN_OR_RETURN: they return the first error unchanged, evaluate their
// expression once, and pass values (including move-only ones) through.
#include "base/status_macros.h"

#include <memory>
#include <string>

#include "gtest/gtest.h"

namespace kvtier {
namespace {

absl::Status Step(int& calls, absl::Status result) {
  ++calls;
  return result;
}

absl::Status TwoSteps(int& calls, absl::Status first, absl::Status second) {
  RETURN_IF_ERROR(Step(calls, first));
  RETURN_IF_ERROR(Step(calls, second));
  return absl::OkStatus();
}

TEST(StatusMacros, ReturnIfErrorStopsAtTheFirstErrorAndEvaluatesOnce) {
  int calls = 0;
  EXPECT_TRUE(TwoSteps(calls, absl::OkStatus(), absl::OkStatus()).ok());
  EXPECT_EQ(calls, 2);
  calls = 0;
  const absl::Status s = TwoSteps(calls, absl::NotFoundError("page 7"), absl::OkStatus());
  EXPECT_EQ(s, absl::NotFoundError("page 7"));
  EXPECT_EQ(calls, 1);
}

absl::StatusOr<std::unique_ptr<int>> MakeInt(int v) {
  if (v < 0) return absl::InvalidArgumentError("value " + std::to_string(v) + " is negative");
  return std::make_unique<int>(v);
}

absl::StatusOr<int> SumOfTwo(int a, int b) {
  ASSIGN_OR_RETURN(std::unique_ptr<int> x, MakeInt(a));  // declares
  std::unique_ptr<int> y;
  ASSIGN_OR_RETURN(y, MakeInt(b));  // assigns to an existing variable
  return *x + *y;
}

TEST(StatusMacros, AssignOrReturnDeclaresAssignsAndPropagates) {
  ASSERT_TRUE(SumOfTwo(3, 4).ok());
  EXPECT_EQ(*SumOfTwo(3, 4), 7);
  EXPECT_EQ(SumOfTwo(-1, 4).status(), absl::InvalidArgumentError("value -1 is negative"));
  EXPECT_EQ(SumOfTwo(3, -2).status(), absl::InvalidArgumentError("value -2 is negative"));
}

}  // namespace
}  // namespace kvtier
