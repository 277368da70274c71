// S3-FIFO, W-TinyLFU and Belady, checked on small sequences whose right answer is known.
#include "tiering/policy/modern_policies.h"

#include <algorithm>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "test_seed.h"

namespace kvtier {
namespace {

PageKey RandomKey(std::mt19937_64& rng) { return PageKey{rng() | 1, rng()}; }

PageEntry Entry(Tier tier, uint32_t position = 0) {
  PageEntry e;
  e.tier = tier;
  e.state = PageState::kReady;
  e.position = position;
  e.stats.tokens = 16;
  return e;
}

std::vector<PageKey> Victims(PlacementPolicy& p, Tier t, size_t n) {
  std::vector<PageKey> out;
  p.LeastValuable(
      t, n, [](const PageKey&) { return true; }, out);
  return out;
}

TEST(S3FifoPolicyTest, AccessedPagesMoveToMainAndGhostsReturnThere) {
  std::mt19937_64 rng = testing::SeededRng();
  S3FifoPolicy p;
  std::vector<PageKey> keys;
  for (int i = 0; i < 20; ++i) {
    keys.push_back(RandomKey(rng));
    p.OnInsert(keys.back(), Entry(Tier::kHbm));
  }
  // The oldest page was read again while in S: it moves to M, the next oldest is the victim.
  // A later page read again stays in S (S is read from its oldest end only as far as needed).
  const size_t later = 2 + rng() % 10;
  p.OnAccess(keys[0], Entry(Tier::kHbm));
  p.OnAccess(keys[later], Entry(Tier::kHbm));
  const std::vector<PageKey> v = Victims(p, Tier::kHbm, 1);
  ASSERT_EQ(v.size(), 1u);
  EXPECT_EQ(v[0], keys[1]);
  EXPECT_TRUE(p.InMain(keys[0]));
  EXPECT_FALSE(p.InMain(keys[later]));
  // The victim leaves unused: its key is a ghost, and on its return it goes straight to M.
  p.OnRemove(v[0], Entry(Tier::kHbm));
  EXPECT_FALSE(p.InMain(v[0]));
  p.OnInsert(v[0], Entry(Tier::kHbm));
  EXPECT_TRUE(p.InMain(v[0]));
}

TEST(WTinyLfuPolicyTest, WindowLeaverIsAdmittedOnlyIfMoreFrequentThanTheVictim) {
  std::mt19937_64 rng = testing::SeededRng();
  WTinyLfuOptions o;
  o.climb_period = 0;  // a fixed 1 % window: the test reasons about one candidate at a time
  WTinyLfuPolicy p(o);
  std::vector<PageKey> keys;
  for (int i = 0; i < 50; ++i) {
    keys.push_back(RandomKey(rng));
    p.OnInsert(keys.back(), Entry(Tier::kHbm));
  }
  // A page asked for 4 times leaves the window: it beats probation's LRU page (asked for once).
  const PageKey hot = RandomKey(rng);
  p.OnInsert(hot, Entry(Tier::kHbm));
  for (int i = 0; i < 3; ++i) p.OnAccess(hot, Entry(Tier::kHbm));
  p.OnInsert(RandomKey(rng), Entry(Tier::kHbm));  // pushes `hot` out of the window
  std::vector<PageKey> v = Victims(p, Tier::kHbm, 1);
  ASSERT_EQ(v.size(), 1u);
  EXPECT_EQ(v[0], keys[0]);
  p.OnRemove(v[0], Entry(Tier::kHbm));
  // A page asked for once leaves the window: it loses the tie and is the victim itself.
  const PageKey cold = RandomKey(rng);
  p.OnInsert(cold, Entry(Tier::kHbm));
  p.OnInsert(RandomKey(rng), Entry(Tier::kHbm));
  v = Victims(p, Tier::kHbm, 1);
  ASSERT_EQ(v.size(), 1u);
  EXPECT_NE(v[0], hot);
  EXPECT_NE(v[0], keys[1]);  // probation's LRU page stays: the newcomer is no more popular
}

TEST(BeladyPolicyTest, EvictsFurthestNextUseThenDeepestPage) {
  std::mt19937_64 rng = testing::SeededRng();
  NextUseOracle oracle;
  BeladyPolicy p(&oracle);
  const int n = 12;
  std::vector<PageKey> keys;
  std::vector<uint64_t> next(n);
  for (int i = 0; i < n; ++i) {
    keys.push_back(RandomKey(rng));
    oracle.Add(keys[i], 0);
    // Pages 0 and 1 share their next use; 2 is never used again; the rest are distinct.
    next[i] = i < 2 ? 500 : i == 2 ? NextUseOracle::kNever : 1 + (rng() % 400) * 16 + i;
    if (next[i] != NextUseOracle::kNever) oracle.Add(keys[i], next[i]);
  }
  oracle.SetNow(0);
  for (int i = 0; i < n; ++i) p.OnInsert(keys[i], Entry(Tier::kHbm, i < 2 ? 3 - i : 0));
  const std::vector<PageKey> order = Victims(p, Tier::kHbm, n);
  ASSERT_EQ(order.size(), static_cast<size_t>(n));
  EXPECT_EQ(order[0], keys[2]);  // never used again
  for (int i = 1; i < n; ++i) {
    const auto a = std::find(keys.begin(), keys.end(), order[i - 1]) - keys.begin();
    const auto b = std::find(keys.begin(), keys.end(), order[i]) - keys.begin();
    EXPECT_GE(next[a], next[b]) << i;
  }
  // Equal next use: the deeper page (position 3, key 0) before its parent (position 2, key 1).
  const auto k0 = std::find(order.begin(), order.end(), keys[0]);
  const auto k1 = std::find(order.begin(), order.end(), keys[1]);
  EXPECT_LT(k0, k1);
  EXPECT_EQ(oracle.NextUse(keys[0]), 500u);
  oracle.SetNow(500);
  EXPECT_EQ(oracle.NextUse(keys[0]), NextUseOracle::kNever);
}

}  // namespace
}  // namespace kvtier
