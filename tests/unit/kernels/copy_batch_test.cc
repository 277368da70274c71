// The CPU twin of the gather/scatter copy: random batches land byte-exact, the 16-byte rule is
// enforced with an error that names the descriptor, empty batches are fine.
#include "kernels/copy_batch.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "absl/strings/str_cat.h"
#include "tests/unit/kernels/test_util.h"

namespace kvtier::kernels {
namespace {

TEST(CopyBatchCpuTest, RandomScatteredPiecesLandExactly) {
  std::mt19937_64 rng(testing::TestSeed("RandomScatteredPiecesLandExactly"));
  for (int round = 0; round < 20; ++round) {
    // Odd piece counts and sizes (multiples of 16, 16 B .. 64 KiB).
    const size_t pieces = 1 + rng() % 97;
    std::vector<uint64_t> sizes(pieces);
    for (auto& s : sizes) s = 16 * (1 + rng() % 4096);
    const uint64_t total = std::accumulate(sizes.begin(), sizes.end(), uint64_t{0});
    std::vector<unsigned char> src(total), dst(total + 64);
    for (auto& b : src) b = static_cast<unsigned char>(rng());
    std::fill(dst.begin(), dst.end(), 0xA5);  // poison: every byte must be overwritten
    // Gather: piece i of src goes to a shuffled position in dst.
    std::vector<size_t> order(pieces);
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), rng);
    std::vector<uint64_t> src_off(pieces), dst_off(pieces);
    for (size_t i = 0, o = 0; i < pieces; o += sizes[i], ++i) src_off[i] = o;
    for (size_t k = 0, o = 0; k < pieces; o += sizes[order[k]], ++k) dst_off[order[k]] = o;
    // Align the destination base to 16 bytes inside the vector.
    unsigned char* dst_base = dst.data() + (16 - reinterpret_cast<uintptr_t>(dst.data()) % 16) % 16;
    unsigned char* src_base = src.data();
    ASSERT_EQ(reinterpret_cast<uintptr_t>(src_base) % 16, 0u) << "allocator not 16-aligned";
    std::vector<CopyDescriptor> batch;
    for (size_t i = 0; i < pieces; ++i) {
      batch.push_back({src_base + src_off[i], dst_base + dst_off[i], sizes[i]});
    }
    ASSERT_TRUE(CopyBatchCpu(batch).ok());
    EXPECT_EQ(CopyBatchBytes(batch), total);
    for (size_t i = 0; i < pieces; ++i) {
      ASSERT_EQ(0, std::memcmp(src_base + src_off[i], dst_base + dst_off[i], sizes[i]))
          << "round " << round << " piece " << i;
    }
  }
}

TEST(CopyBatchCpuTest, EmptyBatchAndZeroLengthDescriptorsAreFine) {
  EXPECT_TRUE(CopyBatchCpu({}).ok());
  std::vector<CopyDescriptor> batch = {{nullptr, nullptr, 0}};
  EXPECT_TRUE(CopyBatchCpu(batch).ok());
}

TEST(CopyBatchCpuTest, UnalignedDescriptorsAreRejectedByIndex) {
  std::mt19937_64 rng(testing::TestSeed("UnalignedDescriptorsAreRejectedByIndex"));
  alignas(16) static unsigned char src[4096], dst[4096];
  for (auto& b : src) b = static_cast<unsigned char>(rng());
  std::fill(std::begin(dst), std::end(dst), 0x11);
  const size_t bad = rng() % 5;
  std::vector<CopyDescriptor> batch;
  for (size_t i = 0; i < 5; ++i) batch.push_back({src + i * 256, dst + i * 256, 256});
  switch (rng() % 3) {
    case 0:
      batch[bad].bytes = 16 * (1 + rng() % 8) + 1 + rng() % 15;  // length not whole vectors
      break;
    case 1:
      batch[bad].src = src + bad * 256 + 1 + rng() % 15;
      break;
    default:
      batch[bad].dst = dst + bad * 256 + 1 + rng() % 15;
      break;
  }
  const absl::Status s = CopyBatchCpu(batch);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find(absl::StrCat("descriptor ", bad, " of 5")), absl::string_view::npos)
      << s;
  EXPECT_NE(s.message().find("16-byte"), absl::string_view::npos) << s;
  // Validation runs before any byte moves.
  for (unsigned char b : dst) ASSERT_EQ(b, 0x11);
}

TEST(CopyBatchCpuTest, NullPointerWithBytesIsRejected) {
  alignas(16) static unsigned char buf[64];
  std::vector<CopyDescriptor> batch = {{buf, nullptr, 32}};
  EXPECT_EQ(CopyBatchCpu(batch).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace kvtier::kernels
