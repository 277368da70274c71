#include "tiering/memory_tier.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
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

TEST(SlotAllocatorTest, PoolsServeTheirOwnSlotsAndFallBackToTheEmptiestPool) {
  SlotAllocator a({3, 5, 2});  // pool 0: slots 0-2, pool 1: 3-7, pool 2: 8-9
  ASSERT_EQ(a.pool_count(), 3u);
  EXPECT_EQ(a.capacity(), 10u);
  EXPECT_EQ(a.PoolOf(0), 0u);
  EXPECT_EQ(a.PoolOf(2), 0u);
  EXPECT_EQ(a.PoolOf(3), 1u);
  EXPECT_EQ(a.PoolOf(7), 1u);
  EXPECT_EQ(a.PoolOf(8), 2u);
  EXPECT_EQ(a.PoolOf(9), 2u);
  // A preferred pool with room serves, lowest slot first.
  EXPECT_EQ(a.Allocate(2), std::optional<uint32_t>(8));
  EXPECT_EQ(a.Allocate(2), std::optional<uint32_t>(9));
  EXPECT_EQ(a.pool_used(2), 2u);
  // Pool 2 is full: the emptiest pool (1, five free) serves instead, as does no preference and an
  // out-of-range one.
  EXPECT_EQ(a.Allocate(2), std::optional<uint32_t>(3));
  EXPECT_EQ(a.PoolOf(*a.Allocate()), 1u);   // pool 1 still has the most free: 4 against 3
  EXPECT_EQ(a.PoolOf(*a.Allocate(7)), 0u);  // 3 and 3: the first pool wins a tie
  EXPECT_EQ(a.used(), 5u);
  EXPECT_EQ(a.pool_free(0) + a.pool_free(1) + a.pool_free(2), a.free());
  // Freed slots go back to their own pool.
  EXPECT_TRUE(a.Free(9));
  EXPECT_EQ(a.pool_free(2), 1u);
  EXPECT_EQ(a.Allocate(2), std::optional<uint32_t>(9));
  EXPECT_FALSE(a.Free(10));
  // Claim takes a slot out of its pool; everything ends up allocated exactly once.
  EXPECT_TRUE(a.Claim(6));
  EXPECT_FALSE(a.Claim(6));
  std::vector<uint32_t> rest;
  while (std::optional<uint32_t> s = a.Allocate(0)) rest.push_back(*s);
  EXPECT_EQ(a.free(), 0u);
  EXPECT_EQ(a.used(), 10u);
  EXPECT_EQ(rest.size() + 5 + 1,
            10u);  // five allocated above (one freed, taken again), one claimed
  std::sort(rest.begin(), rest.end());
  EXPECT_TRUE(std::adjacent_find(rest.begin(), rest.end()) == rest.end());
  for (uint32_t s : rest) EXPECT_NE(s, 6u);
}

TEST(MemoryTierPoolsTest, PagesInSeveralPoolsRoundTripThroughTheirOwnEngines) {
  constexpr uint64_t kSlot = 256;
  CpuCopyEngine engine_a(1), engine_b(1);
  std::vector<MemoryPool> pools(2);
  for (int p = 0; p < 2; ++p) {
    auto region = CreateHostEmulatedDeviceRegion(kSlot * (p + 2));
    ASSERT_TRUE(region.ok()) << region.status();
    pools[p].region = *std::move(region);
    pools[p].slots = p + 2;  // 2 and 3 slots
    pools[p].engine = p == 0 ? &engine_a : &engine_b;
    pools[p].device = 7 - p;
  }
  const std::byte* base1 = pools[1].region->data();
  auto tier = MemoryTier::Create(Tier::kHbm, std::move(pools), kSlot);
  ASSERT_TRUE(tier.ok()) << tier.status();
  MemoryTier& t = **tier;
  EXPECT_EQ(t.slot_count(), 5u);
  const std::vector<TierPool> got = t.pools();
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0].first_slot, 0u);
  EXPECT_EQ(got[0].slots, 2u);
  EXPECT_EQ(got[0].device, 7);
  EXPECT_EQ(got[1].first_slot, 2u);
  EXPECT_EQ(got[1].slots, 3u);
  EXPECT_EQ(got[1].device, 6);
  EXPECT_EQ(t.SlotAddress(2), base1);  // pool 1's first slot starts its own region
  EXPECT_EQ(t.SlotAddress(4), base1 + 2 * kSlot);
  EXPECT_EQ(t.SlotAddress(5), nullptr);
  // One batch over both pools: every page comes back as written.
  std::vector<std::vector<std::byte>> pages(5, std::vector<std::byte>(kSlot));
  std::vector<ConstBuffer> src(5);
  std::vector<SlotWrite> writes(5);
  for (uint32_t i = 0; i < 5; ++i) {
    std::fill(pages[i].begin(), pages[i].end(), std::byte(0x10 + i));
    src[i] = ConstBuffer{pages[i].data(), kSlot};
    writes[i] = SlotWrite{i, PageMeta{.bytes = kSlot}, absl::MakeConstSpan(&src[i], 1)};
  }
  std::vector<absl::Status> results(5);
  t.Write(writes, absl::MakeSpan(results));
  for (const absl::Status& r : results) EXPECT_TRUE(r.ok()) << r;
  EXPECT_EQ(t.SlotAddress(3)[0], std::byte(0x13));
  std::vector<std::vector<std::byte>> back(5, std::vector<std::byte>(kSlot));
  std::vector<MutableBuffer> dst(5);
  std::vector<SlotRead> reads(5);
  for (uint32_t i = 0; i < 5; ++i) {
    dst[i] = MutableBuffer{back[i].data(), kSlot};
    reads[4 - i] = SlotRead{i, PageMeta{.bytes = kSlot}, absl::MakeConstSpan(&dst[i], 1)};
  }
  t.Read(reads, absl::MakeSpan(results));
  for (uint32_t i = 0; i < 5; ++i) {
    EXPECT_TRUE(results[i].ok()) << results[i];
    EXPECT_EQ(back[i], pages[i]) << "slot " << i;
  }
}

TEST(MemoryTierPoolsTest, PoolsWithoutSlotsOrRoomAreRefused) {
  CpuCopyEngine engine(1);
  std::vector<MemoryPool> pools(2);
  for (auto& p : pools) {
    p.region = *CreateHostEmulatedDeviceRegion(1024);
    p.engine = &engine;
    p.slots = 1;
  }
  pools[1].slots = 0;
  absl::StatusOr<std::unique_ptr<MemoryTier>> t =
      MemoryTier::Create(Tier::kHbm, std::move(pools), 1024);
  EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(t.status().message().find("no slots"), std::string::npos) << t.status();
  // Regions are rounded up to the OS page: two slots of a whole region each cannot fit.
  std::vector<MemoryPool> big(1);
  big[0].region = *CreateHostEmulatedDeviceRegion(1024);
  big[0].engine = &engine;
  big[0].slots = 2;
  const uint64_t slot_bytes = big[0].region->size();
  t = MemoryTier::Create(Tier::kHbm, std::move(big), slot_bytes);
  EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument) << t.status();
  EXPECT_EQ(MemoryTier::Create(Tier::kHbm, std::vector<MemoryPool>{}, 1024).status().code(),
            absl::StatusCode::kInvalidArgument);
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
