#include "tiering/memory_tier.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstring>

#include "gtest/gtest.h"
#include "tests/unit/tiering/test_seed.h"
#include "tiering/slot_allocator.h"

namespace kvtier {
namespace {

TEST(SlotAllocatorTest, ExhaustsAndRecovers) {
  SlotAllocator a(8);
  std::vector<uint32_t> got;
  for (int i = 0; i < 8; ++i) {
    std::optional<uint32_t> s = a.Allocate();
    ASSERT_TRUE(s.has_value());
    got.push_back(*s);
  }
  EXPECT_FALSE(a.Allocate().has_value());
  EXPECT_EQ(a.used(), 8u);
  std::sort(got.begin(), got.end());
  for (uint32_t i = 0; i < 8; ++i) EXPECT_EQ(got[i], i);  // every slot exactly once
  EXPECT_TRUE(a.Free(3));
  EXPECT_TRUE(a.Free(6));
  EXPECT_EQ(a.free(), 2u);
  std::optional<uint32_t> x = a.Allocate(), y = a.Allocate();
  ASSERT_TRUE(x && y);
  EXPECT_EQ(std::min(*x, *y), 3u);
  EXPECT_EQ(std::max(*x, *y), 6u);
  EXPECT_FALSE(a.Allocate().has_value());
}

TEST(SlotAllocatorTest, DoubleFreeAndOutOfRangeAreRefused) {
  SlotAllocator a(4);
  std::optional<uint32_t> s = a.Allocate();
  ASSERT_TRUE(s.has_value());
  EXPECT_TRUE(a.Free(*s));
  EXPECT_FALSE(a.Free(*s));
  EXPECT_FALSE(a.Free(4));
  EXPECT_EQ(a.free(), 4u);
  EXPECT_TRUE(a.Claim(2));
  EXPECT_FALSE(a.Claim(2));
  EXPECT_FALSE(a.Claim(9));
  for (int i = 0; i < 3; ++i) EXPECT_NE(a.Allocate(), std::optional<uint32_t>(2));
  EXPECT_FALSE(a.Allocate().has_value());
}

TEST(MemfdRegionTest, AnotherMappingOfTheFdSeesTheSameBytesAndCannotShrinkIt) {
  auto rng = testing::SeededRng();
  absl::StatusOr<std::unique_ptr<MemoryRegion>> r = CreateMemfdRegion("test", 10000, false);
  ASSERT_TRUE(r.ok()) << r.status();
  const MemoryRegion& region = **r;
  ASSERT_GE(region.fd(), 0);
  EXPECT_EQ(region.size() % static_cast<size_t>(sysconf(_SC_PAGESIZE)), 0u);
  EXPECT_GE(region.size(), 10000u);
  EXPECT_EQ(region.backend(), "memfd");
  EXPECT_FALSE(region.pinned());
  // What a worker does with the fd it receives over SCM_RIGHTS.
  void* view = mmap(nullptr, region.size(), PROT_READ, MAP_SHARED, region.fd(), 0);
  ASSERT_NE(view, MAP_FAILED);
  for (size_t i = 0; i < region.size(); i += 8) {
    const uint64_t v = rng();
    std::memcpy(region.data() + i, &v, 8);
  }
  EXPECT_EQ(std::memcmp(view, region.data(), region.size()), 0);
  munmap(view, region.size());
  EXPECT_NE(ftruncate(region.fd(), 0), 0) << "sealed memfd must refuse to shrink";
}

class MemoryTierTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto region = CreateHostEmulatedDeviceRegion(4 * kSlot);
    ASSERT_TRUE(region.ok());
    auto tier = MemoryTier::Create(Tier::kHbm, *std::move(region), 4, kSlot, &engine_);
    ASSERT_TRUE(tier.ok()) << tier.status();
    tier_ = *std::move(tier);
  }
  static constexpr uint64_t kSlot = 4096;
  CpuCopyEngine engine_{1};
  std::unique_ptr<MemoryTier> tier_;
};

TEST_F(MemoryTierTest, GathersIntoASlotAndScattersOutBitIdentical) {
  auto rng = testing::SeededRng();
  std::vector<std::byte> a(1000), b(3096), out1(2000), out2(2096);
  for (auto& x : a) x = static_cast<std::byte>(rng());
  for (auto& x : b) x = static_cast<std::byte>(rng());
  const ConstBuffer src[2] = {{a.data(), a.size()}, {b.data(), b.size()}};
  const PageMeta meta{PageKey{1, 2}, 0, PageClass::kSemantic, kSlot};
  absl::Status st;
  tier_->Write({SlotWrite{2, meta, src}}, absl::MakeSpan(&st, 1));
  ASSERT_TRUE(st.ok()) << st;
  const MutableBuffer dst[2] = {{out1.data(), out1.size()}, {out2.data(), out2.size()}};
  tier_->Read({SlotRead{2, meta, dst}}, absl::MakeSpan(&st, 1));
  ASSERT_TRUE(st.ok()) << st;
  std::vector<std::byte> in(a), out(out1);
  in.insert(in.end(), b.begin(), b.end());
  out.insert(out.end(), out2.begin(), out2.end());
  EXPECT_EQ(in, out);
  EXPECT_EQ(tier_->name(), "host-emulated");
}

TEST_F(MemoryTierTest, RejectsBadSlotsAndSizesPerItem) {
  std::vector<std::byte> page(kSlot, std::byte{7}), small(100, std::byte{1});
  const ConstBuffer good{page.data(), page.size()};
  const ConstBuffer bad{small.data(), small.size()};
  const PageMeta meta{PageKey{1, 2}, 0, PageClass::kSemantic, kSlot};
  const SlotWrite writes[3] = {SlotWrite{9, meta, absl::MakeConstSpan(&good, 1)},
                               SlotWrite{0, meta, absl::MakeConstSpan(&bad, 1)},
                               SlotWrite{1, meta, absl::MakeConstSpan(&good, 1)}};
  absl::Status results[3];
  tier_->Write(writes, absl::MakeSpan(results));
  EXPECT_EQ(results[0].code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(results[1].code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(results[2].ok()) << "a bad item must not fail its neighbours";
  EXPECT_EQ(std::memcmp(tier_->HostSlot(1), page.data(), kSlot), 0);
  EXPECT_EQ(tier_->HostSlot(4), nullptr);
}

TEST(MemoryTierCreateTest, RegionTooSmallIsRejected) {
  CpuCopyEngine engine(1);
  auto region = CreateHostEmulatedDeviceRegion(4096);
  ASSERT_TRUE(region.ok());
  auto tier = MemoryTier::Create(Tier::kDram, *std::move(region), 1000, 4096, &engine);
  EXPECT_EQ(tier.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(CpuCopyEngineTest, FanOutAcrossThreadsCopiesEveryByte) {
  auto rng = testing::SeededRng();
  CpuCopyEngine engine(3);
  constexpr size_t kPieces = 97, kPiece = 64 * 1024 + 8;  // > kFanOutBytes in total
  std::vector<std::byte> src(kPieces * kPiece), dst(kPieces * kPiece, std::byte{0});
  for (auto& x : src) x = static_cast<std::byte>(rng() | 1);
  std::vector<CopyOp> ops;
  // Reverse the piece order so a copy that ignored the ops' addresses would fail.
  for (size_t i = 0; i < kPieces; ++i) {
    ops.push_back(CopyOp{dst.data() + (kPieces - 1 - i) * kPiece, src.data() + i * kPiece, kPiece});
  }
  ASSERT_TRUE(engine.Copy(ops).ok());
  for (size_t i = 0; i < kPieces; ++i) {
    ASSERT_EQ(std::memcmp(dst.data() + (kPieces - 1 - i) * kPiece, src.data() + i * kPiece, kPiece),
              0)
        << "piece " << i;
  }
  EXPECT_TRUE(engine.Copy({}).ok());
  const CopyOp null_op{nullptr, src.data(), 1};
  EXPECT_FALSE(engine.Copy({null_op}).ok());
}

}  // namespace
}  // namespace kvtier
