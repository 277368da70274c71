// The planner (TieredStore::Maintain with displacement) driven by policies: promotion by value,
// the migration cap, hysteresis, and what happens when the sink reserve is full.
#include "tiering/policy/planner.h"

#include <memory>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "test_seed.h"
#include "tiering/clock.h"
#include "tiering/policy/kvtier_policy.h"
#include "tiering/ranked_policy.h"
#include "tiering/tiered_store.h"

namespace kvtier {
namespace {

constexpr uint64_t kPageBytes = 64;

struct Fixture {
  ManualClock clock;
  std::unique_ptr<TieredStore> store;
  NamespaceId ns = 0;
  std::vector<PageKey> keys;
};

std::unique_ptr<Fixture> Make(std::unique_ptr<PlacementPolicy> policy, uint32_t hbm, uint32_t dram,
                              uint32_t sink_slots, std::mt19937_64& rng, int pages) {
  auto f = std::make_unique<Fixture>();
  StoreOptions o;
  o.page_bytes = kPageBytes;
  o.hbm = TierOptions{.slots = hbm, .high_watermark = 1.0, .low_watermark = 1.0};
  o.dram = TierOptions{.slots = dram, .high_watermark = 1.0, .low_watermark = 1.0};
  o.hbm_backend = HbmBackend::kHostEmulated;
  o.pin_dram = false;
  o.sink_tokens = 0;
  o.clock = &f->clock;
  StoreParts parts;
  parts.policy = std::move(policy);
  absl::StatusOr<std::unique_ptr<TieredStore>> s = TieredStore::Create(o, std::move(parts));
  EXPECT_TRUE(s.ok()) << s.status();
  f->store = *std::move(s);
  f->ns = *f->store->AddNamespace("p", sink_slots);
  std::vector<std::byte> bytes(kPageBytes);
  for (int i = 0; i < pages; ++i) {
    f->clock.AdvanceNs(1'000'000);
    f->keys.push_back(PageKey{rng() | 1, rng()});
    for (auto& b : bytes) b = static_cast<std::byte>(rng());
    const ConstBuffer src{bytes.data(), bytes.size()};
    EXPECT_TRUE(f->store->Put(f->ns, f->keys.back(), absl::MakeConstSpan(&src, 1)).ok());
  }
  return f;
}

int InHbm(const Fixture& f, absl::Span<const PageKey> keys) {
  int n = 0;
  for (const PageKey& k : keys) n += f.store->Find(f.ns, k)->tier == Tier::kHbm;
  return n;
}

TEST(PlannerTest, DisplacementPromotesValuablePagesWithinTheMigrationCap) {
  std::mt19937_64 rng = testing::SeededRng();
  // 3 HBM + 8 DRAM slots, 8 pages: the first 5 were demoted by the last 3.
  auto f = Make(std::make_unique<LruPolicy>(), 3, 8, 0, rng, 8);
  std::vector<PageKey> old(f->keys.begin(), f->keys.begin() + 5);
  EXPECT_EQ(InHbm(*f, old), 0);
  // Touch three of the old pages: they are now the most recent.
  std::shuffle(old.begin(), old.end(), rng);
  std::vector<PageKey> hot(old.begin(), old.begin() + 3);
  for (const PageKey& k : hot) {
    f->clock.AdvanceNs(1'000'000);
    ASSERT_TRUE(f->store->Touch(f->ns, k).ok());
  }
  // Without displacement nothing moves (HBM has no free room).
  PlannerReport r =
      f->store->Maintain(MaintainOptions{.max_migration_bytes = 0, .displace = false});
  EXPECT_EQ(r.promoted, 0u);
  // A cap of one swap (two page moves) moves exactly one.
  r = f->store->Maintain(MaintainOptions{.max_migration_bytes = 2 * kPageBytes, .displace = true});
  EXPECT_EQ(r.promoted, 1u);
  EXPECT_LE(r.bytes_moved, 2 * kPageBytes);
  EXPECT_EQ(InHbm(*f, hot), 1);
  // Unlimited: all three, and nothing bounces back on the next pass.
  r = f->store->Maintain(MaintainOptions{.max_migration_bytes = 0, .displace = true});
  EXPECT_EQ(r.promoted, 2u);
  EXPECT_EQ(InHbm(*f, hot), 3);
  r = f->store->Maintain(MaintainOptions{.max_migration_bytes = 0, .displace = true});
  EXPECT_EQ(r.promoted, 0u);
}

TEST(PlannerTest, KvtierHysteresisHoldsBackSmallGains) {
  std::mt19937_64 rng = testing::SeededRng();
  for (double hysteresis : {0.0, 3.0}) {
    KvtierPolicyOptions o;
    o.hysteresis = hysteresis;
    o.frequency_half_life_ms = 30'000;
    o.priced_swaps = false;  // the rank decides swaps (before session 15)
    auto f = Make(std::make_unique<KvtierPolicy>(o), 2, 8, 0, rng, 6);
    // One touch of a demoted page one tau (the reuse estimator's initial 60 s) after the others
    // were written makes it a little more valuable than the HBM pages (its reuse estimate has
    // decayed one half-life less: +1 in log2, less a twentieth for being read from DRAM), less
    // than a hysteresis of 3.
    const PageKey demoted = f->keys[rng() % 4];
    f->clock.AdvanceNs(60'000'000'000ull);
    ASSERT_TRUE(f->store->Touch(f->ns, demoted).ok());
    const PlannerReport r =
        f->store->Maintain(MaintainOptions{.max_migration_bytes = 0, .displace = true});
    EXPECT_EQ(r.promoted, hysteresis == 0.0 ? 1u : 0u) << "hysteresis " << hysteresis;
    EXPECT_EQ(f->store->Find(f->ns, demoted)->tier, hysteresis == 0.0 ? Tier::kHbm : Tier::kDram);
  }
}

// Priced swaps (kvtier's default): the same touch as above, with no hysteresis, promotes the page
// only when HBM keeps pages long enough for the page's hits there to pay for the two moves: not
// when HBM turns over every millisecond, yes when a page stays there for 200 taus (the price is
// then 0.04 reuses per horizon, below any page's estimate: the prior alone is at least 1 / 8 here).
TEST(PlannerTest, KvtierSwapsOnlyWhenHitsOverHbmResidencyPayForTwoMoves) {
  std::mt19937_64 rng = testing::SeededRng();
  for (const bool slow : {false, true}) {
    KvtierPolicyOptions o;
    o.hysteresis = 0;
    o.adaptive_beta = false;
    auto policy = std::make_unique<KvtierPolicy>(o);
    const KvtierPolicy* kvtier = policy.get();
    auto f = Make(std::move(policy), 2, 8, 0, rng, 0);
    const uint64_t gap_ns = slow ? 6'000'000'000'000ull : 1'000'000ull;  // 100 taus or 1 ms
    std::vector<std::byte> bytes(kPageBytes);
    for (int i = 0; i < 6; ++i) {
      f->clock.AdvanceNs(gap_ns);
      f->keys.push_back(PageKey{rng() | 1, rng()});
      const ConstBuffer src{bytes.data(), bytes.size()};
      ASSERT_TRUE(f->store->Put(f->ns, f->keys.back(), absl::MakeConstSpan(&src, 1)).ok());
    }
    ASSERT_EQ(InHbm(*f, f->keys), 2);
    // HBM's two pages each stay two gaps: 200 taus, or 2 ms (3.3e-5 taus).
    EXPECT_NEAR(kvtier->Residency(Tier::kHbm), slow ? 200.0 : 2.0 / 60'000, slow ? 1e-6 : 1e-9);
    const PageKey demoted = f->keys[rng() % 4];
    f->clock.AdvanceNs(60'000'000'000ull);
    ASSERT_TRUE(f->store->Touch(f->ns, demoted).ok());
    const PlannerReport r =
        f->store->Maintain(MaintainOptions{.max_migration_bytes = 0, .displace = true});
    EXPECT_EQ(r.promoted, slow ? 1u : 0u) << "slow " << slow;
    EXPECT_EQ(f->store->Find(f->ns, demoted)->tier, slow ? Tier::kHbm : Tier::kDram);
  }
}

TEST(PlannerTest, KvtierDropsRatherThanDemotesIntoATierSlowerThanRecompute) {
  std::mt19937_64 rng = testing::SeededRng();
  KvtierPolicyOptions o;
  // 16 tokens x 128 KiB over 1 GB/s = 2.1 ms to load, 0.8 ms to recompute: DRAM saves nothing.
  o.dram_gbps = 1;
  const int pages = 3 + static_cast<int>(rng() % 6);
  auto f = Make(std::make_unique<KvtierPolicy>(o), 2, 8, 0, rng, pages);
  EXPECT_EQ(f->store->Usage(Tier::kDram).used_slots, 0u);
  EXPECT_EQ(f->store->page_count(), 2u);
  EXPECT_EQ(f->store->Usage(Tier::kHbm).used_slots, 2u);
}

TEST(PlannerTest, TokenBucketCapsMigrationBandwidth) {
  std::mt19937_64 rng = testing::SeededRng();
  auto f = Make(std::make_unique<LruPolicy>(), 3, 8, 0, rng, 8);
  std::vector<PageKey> old(f->keys.begin(), f->keys.begin() + 5);
  std::shuffle(old.begin(), old.end(), rng);
  const std::vector<PageKey> hot(old.begin(), old.begin() + 3);
  for (const PageKey& k : hot) {
    f->clock.AdvanceNs(1'000'000);
    ASSERT_TRUE(f->store->Touch(f->ns, k).ok());
  }
  // One page per millisecond, at most four pages banked.
  absl::StatusOr<Planner> planner =
      Planner::Create(f->store.get(), &f->clock,
                      PlannerOptions{.max_migration_bytes_per_s = kPageBytes * 1000.0,
                                     .burst_bytes = 4 * kPageBytes});
  ASSERT_TRUE(planner.ok()) << planner.status();
  EXPECT_EQ(planner->RunOnce().promoted, 0u);  // no time has passed: nothing to spend
  f->clock.AdvanceNs(2'000'000);               // two pages' worth: one swap
  PlannerReport r = planner->RunOnce();
  EXPECT_EQ(r.promoted, 1u);
  EXPECT_EQ(r.bytes_moved, 2 * kPageBytes);
  EXPECT_EQ(InHbm(*f, hot), 1);
  f->clock.AdvanceNs(1'000'000'000);  // a second idle: the bucket holds only its burst, 2 swaps
  r = planner->RunOnce();
  EXPECT_EQ(r.promoted, 2u);
  EXPECT_LE(r.bytes_moved, 4 * kPageBytes);
  EXPECT_EQ(InHbm(*f, hot), 3);
  EXPECT_FALSE(
      Planner::Create(f->store.get(), &f->clock, PlannerOptions{.max_migration_bytes_per_s = 0})
          .ok());
}

// Reserve full: a new sink replaces the least recently used unpinned sink (which goes on as an
// ordinary page a tier down); when every reserved sink is pinned, the new sink competes as an
// ordinary page and the overflow is counted.
TEST(PlannerTest, FullSinkReserveReplacesLruSinkOrOverflows) {
  std::mt19937_64 rng = testing::SeededRng();
  auto f = Make(std::make_unique<KvtierPolicy>(), 4, 8, 1, rng, 0);
  std::vector<std::byte> bytes(kPageBytes, std::byte{0x33});
  const ConstBuffer src{bytes.data(), bytes.size()};
  PutOptions sink;
  sink.class_hint = PageClass::kSink;
  const PageKey a{rng() | 1, rng()}, b{rng() | 1, rng()}, c{rng() | 1, rng()};
  ASSERT_TRUE(f->store->Put(f->ns, a, absl::MakeConstSpan(&src, 1), sink).ok());
  EXPECT_TRUE(f->store->Find(f->ns, a)->in_sink_slot);
  f->clock.AdvanceNs(1'000'000);
  ASSERT_TRUE(f->store->Put(f->ns, b, absl::MakeConstSpan(&src, 1), sink).ok());
  EXPECT_TRUE(f->store->Find(f->ns, b)->in_sink_slot);
  EXPECT_FALSE(f->store->Find(f->ns, a)->in_sink_slot);
  EXPECT_EQ(f->store->Counters().sink_replacements, 1u);
  ASSERT_TRUE(f->store->Pin(f->ns, absl::MakeConstSpan(&b, 1)).ok());
  ASSERT_TRUE(f->store->Put(f->ns, c, absl::MakeConstSpan(&src, 1), sink).ok());
  EXPECT_FALSE(f->store->Find(f->ns, c)->in_sink_slot);
  EXPECT_EQ(f->store->Find(f->ns, c)->cls, PageClass::kSink);
  EXPECT_EQ(f->store->Counters().sink_overflows, 1u);
  ASSERT_TRUE(f->store->Unpin(f->ns, absl::MakeConstSpan(&b, 1)).ok());
}

}  // namespace
}  // namespace kvtier
