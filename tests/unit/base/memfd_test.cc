// CreateMemfd and Mapping: a sealed memfd refuses to shrink, and a mapping of it sees what is
// written through another mapping (the sharing the daemon and its workers rely on).
#include "base/memfd.h"

#include <fcntl.h>
#include <unistd.h>

#include <cstring>

#include "base/mapping.h"
#include "gtest/gtest.h"

namespace kvtier {
namespace {

TEST(Memfd, SizedSealedAndShared) {
  constexpr uint64_t kBytes = 3 * 4096;
  absl::StatusOr<UniqueFd> fd = CreateMemfd("memfd-test", kBytes, F_SEAL_SHRINK | F_SEAL_SEAL);
  ASSERT_TRUE(fd.ok()) << fd.status();
  EXPECT_EQ(::lseek(fd->get(), 0, SEEK_END), static_cast<off_t>(kBytes));
  EXPECT_EQ(::fcntl(fd->get(), F_GET_SEALS), F_SEAL_SHRINK | F_SEAL_SEAL);
  EXPECT_NE(::ftruncate(fd->get(), 4096), 0) << "a memfd sealed against shrinking shrank";

  absl::StatusOr<Mapping> writer = Mapping::Map(fd->get(), kBytes, /*writable=*/true);
  absl::StatusOr<Mapping> reader = Mapping::Map(fd->get(), kBytes, /*writable=*/false);
  ASSERT_TRUE(writer.ok()) << writer.status();
  ASSERT_TRUE(reader.ok()) << reader.status();
  ASSERT_EQ(reader->size(), kBytes);
  std::memcpy(writer->data() + kBytes - 5, "kvtier", 5);
  EXPECT_EQ(std::memcmp(reader->data() + kBytes - 5, "kvtie", 5), 0);

  Mapping moved = *std::move(writer);
  EXPECT_EQ(writer->data(), nullptr);  // NOLINT(bugprone-use-after-move): checks the move
  EXPECT_EQ(moved.size(), kBytes);
}

TEST(Memfd, UnsealedWhenNoSealsAsked) {
  absl::StatusOr<UniqueFd> fd = CreateMemfd("memfd-test", 4096, 0);
  ASSERT_TRUE(fd.ok()) << fd.status();
  EXPECT_EQ(::fcntl(fd->get(), F_GET_SEALS), 0);
  EXPECT_EQ(::ftruncate(fd->get(), 0), 0);
}

TEST(Mapping, FailureNamesTheSize) {
  absl::StatusOr<Mapping> m = Mapping::Map(-1, 8192, /*writable=*/false);
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), absl::StatusCode::kFailedPrecondition) << m.status();  // EBADF
  EXPECT_NE(m.status().message().find("mmap of 8192 bytes"), absl::string_view::npos);
}

}  // namespace
}  // namespace kvtier
