// daemon/fd_buffer: pages gathered from and scattered into memfds through their descriptors, on
// real memfds (no daemon): bit-exact round trips of a two-piece page, the seal query, and a
// buffer shrunk under the copy failing with a message instead of a fault.
#include "daemon/fd_buffer.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tests/unit/tiering/test_seed.h"

namespace kvtier {
namespace {

constexpr uint64_t kBufferBytes = uint64_t{64} * 1024;

FdBuffer MakeBuffer(unsigned flags) {
  FdBuffer b{UniqueFd(::memfd_create("fd-buffer-test", MFD_CLOEXEC | flags)), kBufferBytes};
  EXPECT_TRUE(b.fd.valid());
  EXPECT_EQ(::ftruncate(b.fd.get(), kBufferBytes), 0);
  return b;
}

// A page of SGLang's page_first layout: its K piece and its V piece, half a buffer apart.
std::vector<Piece> TwoPieces(uint64_t half_page, uint64_t block) {
  return {Piece{0, block * half_page, half_page, 0},
          Piece{0, kBufferBytes / 2 + block * half_page, half_page, half_page}};
}

TEST(FdBufferTest, SealQueryTellsMappableFromShrinkableAndRefusesOtherFiles) {
  FdBuffer sealed = MakeBuffer(MFD_ALLOW_SEALING);
  ASSERT_EQ(::fcntl(sealed.fd.get(), F_ADD_SEALS, F_SEAL_SHRINK), 0);
  EXPECT_EQ(SealedAgainstShrinking(sealed.fd.get()).value_or(false), true);
  FdBuffer seal_seal_only = MakeBuffer(0);  // SGLang's shm pool: F_SEAL_SEAL, nothing else
  ASSERT_EQ(::fcntl(seal_seal_only.fd.get(), F_GET_SEALS), F_SEAL_SEAL);
  EXPECT_EQ(SealedAgainstShrinking(seal_seal_only.fd.get()).value_or(true), false);
  char path[] = "/var/tmp/kvtier-fd-buffer-unit-XXXXXX";
  UniqueFd file(::mkstemp(path));
  ASSERT_TRUE(file.valid());
  ::unlink(path);
  absl::StatusOr<bool> disk = SealedAgainstShrinking(file.get());
  EXPECT_EQ(disk.status().code(), absl::StatusCode::kInvalidArgument) << disk.status();
}

TEST(FdBufferTest, TwoPiecePagesRoundTripBitExact) {
  auto rng = testing::SeededRng();
  std::vector<FdBuffer> buffers;
  buffers.push_back(MakeBuffer(0));
  std::string image(kBufferBytes, '\0');
  for (char& c : image) c = static_cast<char>(rng());
  ASSERT_EQ(::pwrite(buffers[0].fd.get(), image.data(), image.size(), 0),
            static_cast<ssize_t>(image.size()));
  constexpr uint64_t kHalf = 4096;
  std::vector<std::byte> page(2 * kHalf);
  ASSERT_TRUE(ReadPieces(buffers, TwoPieces(kHalf, 3), {page.data(), page.size()}).ok());
  EXPECT_EQ(std::memcmp(page.data(), image.data() + 3 * kHalf, kHalf), 0);
  EXPECT_EQ(std::memcmp(page.data() + kHalf, image.data() + kBufferBytes / 2 + 3 * kHalf, kHalf),
            0);
  ASSERT_TRUE(WritePieces(buffers, TwoPieces(kHalf, 6), {page.data(), page.size()}).ok());
  std::string after(kBufferBytes, '\0');
  ASSERT_EQ(::pread(buffers[0].fd.get(), after.data(), after.size(), 0),
            static_cast<ssize_t>(after.size()));
  EXPECT_EQ(after.compare(6 * kHalf, kHalf, image, 3 * kHalf, kHalf), 0);
  EXPECT_EQ(after.compare(kBufferBytes / 2 + 6 * kHalf, kHalf, image, kBufferBytes / 2 + 3 * kHalf,
                          kHalf),
            0);
  // Nothing else moved.
  EXPECT_EQ(after.compare(0, 6 * kHalf, image, 0, 6 * kHalf), 0);
}

TEST(FdBufferTest, ShrunkBufferFailsTheCopyNamingTheSizes) {
  std::vector<FdBuffer> buffers;
  buffers.push_back(MakeBuffer(0));
  constexpr uint64_t kHalf = 4096;
  std::vector<std::byte> page(2 * kHalf, std::byte{0x5a});
  ASSERT_EQ(::ftruncate(buffers[0].fd.get(), kBufferBytes / 2), 0);  // the V half is gone
  absl::Status read = ReadPieces(buffers, TwoPieces(kHalf, 1), {page.data(), page.size()});
  EXPECT_EQ(read.code(), absl::StatusCode::kFailedPrecondition) << read;
  EXPECT_NE(read.message().find("now holds 32768 bytes"), absl::string_view::npos) << read;
  absl::Status write = WritePieces(buffers, TwoPieces(kHalf, 1), {page.data(), page.size()});
  EXPECT_EQ(write.code(), absl::StatusCode::kFailedPrecondition) << write;
  // The refused write wrote nothing: not even the K piece, which still fits.
  struct stat st {};
  ASSERT_EQ(::fstat(buffers[0].fd.get(), &st), 0);
  EXPECT_EQ(static_cast<uint64_t>(st.st_size), kBufferBytes / 2);
  std::vector<std::byte> k(kHalf);
  ASSERT_EQ(::pread(buffers[0].fd.get(), k.data(), kHalf, kHalf), static_cast<ssize_t>(kHalf));
  EXPECT_EQ(k, std::vector<std::byte>(kHalf, std::byte{0}));
}

TEST(FdBufferTest, PieceOutsideTheRegisteredBufferIsRefused) {
  std::vector<FdBuffer> buffers;
  buffers.push_back(MakeBuffer(0));
  std::vector<std::byte> page(8192);
  const Piece past{0, kBufferBytes - 10, 4096, 0};
  EXPECT_EQ(ReadPieces(buffers, {&past, 1}, {page.data(), page.size()}).code(),
            absl::StatusCode::kInternal);
  const Piece other_buffer{1, 0, 4096, 0};
  EXPECT_EQ(WritePieces(buffers, {&other_buffer, 1}, {page.data(), page.size()}).code(),
            absl::StatusCode::kInternal);
}

}  // namespace
}  // namespace kvtier
