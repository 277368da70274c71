#include "base/errno_status.h"

#include <cerrno>
#include <cstring>
#include <string>

#include "gtest/gtest.h"

namespace kvtier {
namespace {

TEST(ErrnoStatus, CodeFollowsErrnoAndMessageNamesTheCall) {
  const absl::Status s = ErrnoStatus(ENOENT, "opening '/x'");
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(s.message(), std::string("opening '/x': ") + std::strerror(ENOENT));
  EXPECT_EQ(ErrnoStatus(ENOSPC, "write").code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(ErrnoStatus(EACCES, "bind").code(), absl::StatusCode::kPermissionDenied);
}

TEST(ErrnoStatus, ZeroErrnoIsAnErrorNotOk) {
  const absl::Status s = ErrnoStatus(0, "mmap");
  EXPECT_EQ(s.code(), absl::StatusCode::kInternal);
  EXPECT_EQ(s.message(), "mmap: failed without setting errno");
}

}  // namespace
}  // namespace kvtier
