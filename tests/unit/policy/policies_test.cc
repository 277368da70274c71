// Rankings of kvtier and the classic policies, checked on entries whose right order is known.
#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "gtest/gtest.h"
#include "test_seed.h"
#include "tiering/policy/classic_policies.h"
#include "tiering/policy/kvtier_policy.h"
#include "tiering/policy/policy_factory.h"
#include "tiering/tiered_store.h"

namespace kvtier {
namespace {

PageKey RandomKey(std::mt19937_64& rng) { return PageKey{rng() | 1, rng()}; }

std::vector<PageKey> Victims(PlacementPolicy& p, Tier t, size_t n) {
  std::vector<PageKey> out;
  p.LeastValuable(
      t, n, [](const PageKey&) { return true; }, out);
  return out;
}

TEST(KvtierPolicyTest, FrequencyTermOrdersLikeDecayedFrequencyAtAnyTime) {
  std::mt19937_64 rng = testing::SeededRng();
  KvtierPolicyOptions o;
  o.frequency_half_life_ms = 1000 + rng() % 60'000;
  const KvtierPolicy policy(o);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  for (int trial = 0; trial < 2000; ++trial) {
    PageStats a, b;
    a.frequency = static_cast<float>(1 + 50 * u(rng));
    b.frequency = static_cast<float>(1 + 50 * u(rng));
    a.last_access_ns = 1'000'000ull * (rng() % 100'000);
    b.last_access_ns = 1'000'000ull * (rng() % 100'000);
    const uint64_t now =
        std::max(a.last_access_ns, b.last_access_ns) + 1'000'000ull * (rng() % 500'000);
    auto decayed = [&](const PageStats& s) {
      return s.frequency * std::exp2(-static_cast<double>(now - s.last_access_ns) / 1e6 /
                                     o.frequency_half_life_ms);
    };
    const double da = decayed(a), db = decayed(b);
    if (std::fabs(da - db) < 1e-6 * std::max(da, db)) continue;  // a tie within rounding
    EXPECT_EQ(policy.FrequencyTerm(a) > policy.FrequencyTerm(b), da > db) << "trial " << trial;
  }
}

PageEntry Entry(Tier tier, uint64_t t_ns, float freq) {
  PageEntry e;
  e.tier = tier;
  e.state = PageState::kReady;
  e.stats.last_access_ns = t_ns;
  e.stats.frequency = freq;
  e.stats.tokens = 16;
  return e;
}

TEST(KvtierPolicyTest, PrefixChainsEvictLeafFirst) {
  std::mt19937_64 rng = testing::SeededRng();
  KvtierPolicy policy;
  // A chain root -> mid -> leaf, all touched together (equal frequency and recency), plus a
  // second leaf under root: the leaves go first, the root (two cached children) last.
  const PageKey root = RandomKey(rng), mid = RandomKey(rng), leaf = RandomKey(rng),
                leaf2 = RandomKey(rng);
  const uint64_t t = 1'000'000'000ull + rng() % 1'000'000'000ull;
  PageEntry e = Entry(Tier::kHbm, t, 3.0f);
  PageEntry root_e = e, mid_e = e, leaf_e = e, leaf2_e = e;
  root_e.cached_children = 2;
  mid_e.cached_children = 1;
  policy.OnInsert(mid, mid_e);
  policy.OnInsert(leaf, leaf_e);
  policy.OnInsert(root, root_e);
  policy.OnInsert(leaf2, leaf2_e);
  const std::vector<PageKey> order = Victims(policy, Tier::kHbm, 4);
  ASSERT_EQ(order.size(), 4u);
  EXPECT_TRUE((order[0] == leaf && order[1] == leaf2) || (order[0] == leaf2 && order[1] == leaf));
  EXPECT_EQ(order[2], mid);
  EXPECT_EQ(order[3], root);
}

TEST(KvtierPolicyTest, ValueNormGatesAttentionUtilityAndSinksRankOnTop) {
  std::mt19937_64 rng = testing::SeededRng();
  KvtierPolicy policy;
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  const uint64_t t = 5'000'000'000ull;
  PageEntry drained = Entry(Tier::kHbm, t, 4.0f);
  drained.stats.stat_reports = 5;
  drained.stats.attention_mass = 0.3f + 0.1f * u(rng);
  drained.stats.breadth = 0.95f;
  drained.stats.value_norm = 0.03f;  // hot, but carries nothing
  PageEntry semantic = drained;
  semantic.stats.attention_mass = drained.stats.attention_mass * 0.5f;  // half the mass
  semantic.stats.value_norm = 1.0f + 0.5f * u(rng);
  PageEntry sink = drained;
  sink.cls = PageClass::kSink;
  const PageKey kd = RandomKey(rng), ks = RandomKey(rng), kk = RandomKey(rng);
  policy.OnInsert(kd, drained);
  policy.OnInsert(ks, semantic);
  policy.OnInsert(kk, sink);
  EXPECT_LT(policy.Value(kd), policy.Value(ks));
  EXPECT_GT(policy.Value(kk), policy.Value(ks));
  EXPECT_EQ(Victims(policy, Tier::kHbm, 1).front(), kd);
}

TEST(KvtierPolicyTest, HysteresisIsABonusPerTierOfHeight) {
  std::mt19937_64 rng = testing::SeededRng();
  KvtierPolicyOptions o;
  o.hysteresis = 0.25 + static_cast<double>(rng() % 100) / 50;
  o.priced_swaps = false;  // the rank is the planner's Value (before session 15)
  KvtierPolicy policy(o);
  const PageKey k = RandomKey(rng);
  PageEntry e = Entry(Tier::kDram, 7'000'000'000ull, 2.5f);
  policy.OnInsert(k, e);
  const double in_dram = policy.Value(k);
  e.tier = Tier::kHbm;
  policy.OnMove(k, Tier::kDram, e);
  // A prefix page is also worth what it saves where it sits: a little more from HBM than DRAM.
  const double saved = std::log2(policy.SavedSeconds(Tier::kHbm, e.stats.tokens) /
                                 policy.SavedSeconds(Tier::kDram, e.stats.tokens));
  EXPECT_GT(saved, 0);
  // Prefix ranks are ordered by their time-invariant part rounded down to 1/16 (a level).
  EXPECT_NEAR(policy.Value(k) - in_dram, o.hysteresis + saved, 1.0 / 16);
}

TEST(ClassicPoliciesTest, LfuEvictsLeastCountedThenLeastRecent) {
  std::mt19937_64 rng = testing::SeededRng();
  LfuPolicy lfu;
  std::vector<std::pair<uint32_t, PageKey>> pages;
  for (int i = 0; i < 20; ++i) {
    PageEntry e = Entry(Tier::kHbm, 1'000'000ull * (1 + rng() % 1000), 1.0f);
    e.stats.access_count = 1 + static_cast<uint32_t>(rng() % 50);
    const PageKey k = RandomKey(rng);
    // Make counts distinct so the expected order is unique.
    e.stats.access_count = e.stats.access_count * 100 + i;
    pages.push_back({e.stats.access_count, k});
    lfu.OnInsert(k, e);
  }
  std::sort(pages.begin(), pages.end());
  const std::vector<PageKey> order = Victims(lfu, Tier::kHbm, pages.size());
  ASSERT_EQ(order.size(), pages.size());
  for (size_t i = 0; i < pages.size(); ++i) EXPECT_EQ(order[i], pages[i].second) << i;
}

TEST(ClassicPoliciesTest, ArcResistsScansAndAdaptsOnGhostHits) {
  std::mt19937_64 rng = testing::SeededRng();
  ArcPolicy arc;
  uint64_t t = 1'000;
  // Two pages used twice (frequency list), then a scan of one-time pages.
  std::vector<PageKey> hot = {RandomKey(rng), RandomKey(rng)};
  for (const PageKey& k : hot) {
    PageEntry e = Entry(Tier::kHbm, ++t, 1.0f);
    e.stats.access_count = 1;
    arc.OnInsert(k, e);
    e.stats.access_count = 2;
    e.stats.last_access_ns = ++t;
    arc.OnAccess(k, e);
  }
  std::vector<PageKey> scan;
  for (int i = 0; i < 6; ++i) {
    scan.push_back(RandomKey(rng));
    PageEntry e = Entry(Tier::kHbm, ++t, 1.0f);
    e.stats.access_count = 1;
    arc.OnInsert(scan.back(), e);
  }
  // With p = 0 the victims come from the recency list: every scan page before a hot one.
  std::vector<PageKey> order = Victims(arc, Tier::kHbm, 8);
  ASSERT_EQ(order.size(), 8u);
  for (size_t i = 0; i < scan.size(); ++i) EXPECT_EQ(order[i], scan[i]) << i;
  // A scan page evicted and asked for again (a ghost hit in B1) grows T1's target.
  PageEntry gone = Entry(Tier::kHbm, t, 1.0f);
  gone.stats.access_count = 1;
  arc.OnRemove(scan.front(), gone);
  const double before = arc.target_recent(Tier::kHbm);
  gone.stats.last_access_ns = ++t;
  arc.OnInsert(scan.front(), gone);
  EXPECT_GT(arc.target_recent(Tier::kHbm), before);
}

TEST(ClassicPoliciesTest, StreamingKeepsPositionSinksAndRecentWindow) {
  std::mt19937_64 rng = testing::SeededRng();
  StreamingLlmPolicy streaming;
  std::vector<PageKey> keys;
  for (uint32_t pos = 0; pos < 10; ++pos) {
    PageEntry e = Entry(Tier::kHbm, 100 + pos, 1.0f);
    e.position = pos;
    e.stats.insert_ns = 100 + pos;
    keys.push_back(RandomKey(rng));
    streaming.OnInsert(keys.back(), e);
  }
  const std::vector<PageKey> order = Victims(streaming, Tier::kHbm, 10);
  ASSERT_EQ(order.size(), 10u);
  for (uint32_t i = 0; i < 9; ++i) EXPECT_EQ(order[i], keys[i + 1]) << i;  // oldest first
  EXPECT_EQ(order[9], keys[0]);                                            // the sink last
}

// H2O through the real store: accumulated attention is the sum of the raw reported masses, even
// though the store keeps only an EWMA; the recent window is never a victim.
TEST(ClassicPoliciesTest, H2oAccumulatesRawMassThroughTheStore) {
  std::mt19937_64 rng = testing::SeededRng();
  StoreOptions o;
  o.page_bytes = 64;
  o.hbm.slots = 16;
  o.hbm_backend = HbmBackend::kHostEmulated;
  o.sink_tokens = 0;
  auto policy = std::make_unique<H2oPolicy>(H2oOptions{.recent_pages = 2, .ewma_alpha = 0.2});
  H2oPolicy* h2o = policy.get();
  StoreParts parts;
  parts.policy = std::move(policy);
  absl::StatusOr<std::unique_ptr<TieredStore>> store = TieredStore::Create(o, std::move(parts));
  ASSERT_TRUE(store.ok()) << store.status();
  absl::StatusOr<NamespaceId> ns = (*store)->AddNamespace("h", 0);
  ASSERT_TRUE(ns.ok());
  std::vector<PageKey> keys;
  std::vector<std::byte> bytes(64, std::byte{0x5a});
  for (int i = 0; i < 8; ++i) {
    keys.push_back(RandomKey(rng));
    const ConstBuffer src{bytes.data(), bytes.size()};
    ASSERT_TRUE((*store)->Put(*ns, keys.back(), absl::MakeConstSpan(&src, 1)).ok());
  }
  // What the policy sees: the store's index keys of the client's keys.
  std::vector<PageKey> seen(keys.size());
  for (size_t i = 0; i < keys.size(); ++i) seen[i] = (*store)->IndexKeyOf(*ns, keys[i]);
  std::vector<double> sums(keys.size(), 0.0);
  std::uniform_real_distribution<float> u(0.0f, 0.2f);
  for (int step = 0; step < 30; ++step) {
    for (size_t i = 0; i < keys.size(); ++i) {
      const float m = u(rng) * static_cast<float>(i + 1) / 8;
      sums[i] += m;
      ASSERT_TRUE(
          (*store)->ReportAttention(*ns, keys[i], AttentionSample{m, 0.5f, 1.0f, 0.5f}).ok());
    }
  }
  for (size_t i = 0; i < keys.size(); ++i) {
    EXPECT_NEAR(h2o->accumulated(seen[i]), sums[i], 1e-3 * (1 + sums[i])) << i;
  }
  // Victims: the non-recent pages (0..5) by accumulated mass; pages 6 and 7 are the window.
  std::vector<PageKey> order = Victims(*h2o, Tier::kHbm, 8);
  ASSERT_EQ(order.size(), 8u);
  for (size_t i = 0; i < 6; ++i) EXPECT_NE(order[i], seen[6]) << i;
  for (size_t i = 0; i < 6; ++i) EXPECT_NE(order[i], seen[7]) << i;
  for (size_t i = 1; i < 6; ++i) {
    EXPECT_LE(h2o->accumulated(order[i - 1]), h2o->accumulated(order[i])) << i;
  }
}

TEST(PolicyFactoryTest, BuildsEveryNamedPolicyAndRejectsOthers) {
  const NextUseOracle oracle;
  PolicyConfig with_oracle;
  with_oracle.oracle = &oracle;
  for (const std::string& name : PolicyNames()) {
    absl::StatusOr<std::unique_ptr<PlacementPolicy>> p = MakePolicy(name, with_oracle);
    ASSERT_TRUE(p.ok()) << name;
    EXPECT_EQ((*p)->name(), name);
    // Only the offline optimum needs the future.
    EXPECT_EQ(MakePolicy(name).ok(), name != "belady") << name;
  }
  EXPECT_FALSE(MakePolicy("fifo").ok());
}

}  // namespace
}  // namespace kvtier

namespace kvtier {
namespace {

// Random inserts, accesses, updates, moves between all three tiers and removals: each tier's
// victims come out in the order of the key the tier ranks by, candidates in the reverse order, and
// that key is the page's Value everywhere but in the drop tier (the lowest one holding pages).
// (With priced swaps, the default, Value is what a swap is worth instead: see kvtier_policy.h.)
void CheckOrders(KvtierPolicy& policy, const absl::flat_hash_map<PageKey, PageEntry>& live,
                 bool priced_swaps = true) {
  for (Tier t : kAllTiers) {
    const size_t in_tier = static_cast<size_t>(std::count_if(
        live.begin(), live.end(), [&](const auto& kv) { return kv.second.tier == t; }));
    const std::vector<PageKey> low = Victims(policy, t, live.size());
    ASSERT_EQ(low.size(), in_tier);
    for (size_t j = 1; j < low.size(); ++j) {
      EXPECT_LE(policy.OrderKey(low[j - 1]), policy.OrderKey(low[j])) << "victim " << j;
    }
    if (policy.drop_tier() != t && !priced_swaps) {
      for (const PageKey& k : low) EXPECT_EQ(policy.OrderKey(k), policy.Value(k));
    }
    std::vector<PageKey> high;
    policy.MostValuable(
        t, live.size(), [](const PageKey&) { return true; }, high);
    ASSERT_EQ(high.size(), in_tier);
    for (size_t j = 1; j < high.size(); ++j) {
      EXPECT_GE(policy.OrderKey(high[j - 1]), policy.OrderKey(high[j])) << "candidate " << j;
    }
    // Skipping: every other page of the order is ineligible.
    absl::flat_hash_set<PageKey> barred;
    for (size_t j = 0; j < low.size(); j += 2) barred.insert(low[j]);
    std::vector<PageKey> some;
    policy.LeastValuable(
        t, 5, [&](const PageKey& k) { return !barred.contains(k); }, some);
    for (size_t j = 0; j < some.size(); ++j) EXPECT_EQ(some[j], low[2 * j + 1]);
  }
}

// Inserts page `k` into `policy` and the test's records; half the time (when there are pages) as
// the child of a random one of them, at a random position in [1, max_position].
void InsertMaybeAsChild(std::mt19937_64& rng, const PageKey& k, PageEntry e, uint32_t max_position,
                        KvtierPolicy& policy, std::vector<PageKey>& keys,
                        absl::flat_hash_map<PageKey, PageEntry>& live) {
  if (!keys.empty() && rng() % 2 == 0) {
    e.parent = keys[rng() % keys.size()];
    e.position = 1 + static_cast<uint32_t>(rng() % max_position);
  }
  keys.push_back(k);
  live[k] = e;
  policy.OnInsert(k, e);
}

TEST(KvtierPolicyTest, LevelsMergeIntoOneRankOrder) {
  std::mt19937_64 rng = testing::SeededRng();
  for (const bool priced : {false, true}) {
    KvtierPolicyOptions o;
    o.priced_swaps = priced;
    KvtierPolicy policy(o);
    std::vector<PageKey> keys;
    absl::flat_hash_map<PageKey, PageEntry> live;
    uint64_t now = 1'000'000'000;
    for (int op = 0; op < 6000; ++op) {
      now += 1'000'000 * (1 + rng() % 2000);
      const int kind = static_cast<int>(rng() % 10);
      if (kind < 4 || keys.empty()) {
        const PageKey k = RandomKey(rng);
        // NVMe only in the second half: the drop tier moves from DRAM to NVMe mid-run.
        const Tier tier = rng() % 3 != 0                ? Tier::kHbm
                          : op > 3000 && rng() % 2 == 0 ? Tier::kNvme
                                                        : Tier::kDram;
        PageEntry e = Entry(tier, now, 1.0f);
        e.stats.tokens = rng() % 4 == 0 ? 7 : 16;
        InsertMaybeAsChild(rng, k, e, 100, policy, keys, live);
      } else {
        const size_t i = rng() % keys.size();
        PageEntry& e = live[keys[i]];
        if (kind < 7) {
          e.stats.last_access_ns = now;
          policy.OnAccess(keys[i], e);
        } else if (kind == 7) {
          e.cached_children = static_cast<uint32_t>(rng() % 3);
          policy.OnUpdate(keys[i], e);
        } else if (kind == 8) {
          const Tier from = e.tier;
          e.tier = static_cast<Tier>((TierIndex(from) + 1 + rng() % 2) % (op > 3000 ? 3 : 2));
          policy.OnMove(keys[i], from, e);
        } else {
          policy.OnRemove(keys[i], e);
          live.erase(keys[i]);
          keys[i] = keys.back();
          keys.pop_back();
        }
      }
      if (op == 2999) {
        EXPECT_EQ(policy.drop_tier(), Tier::kDram);
        CheckOrders(policy, live, priced);
      }
    }
    ASSERT_EQ(policy.tracked(), live.size());
    EXPECT_EQ(policy.drop_tier(), Tier::kNvme);
    CheckOrders(policy, live, priced);
  }
}

// Hits in the top tier leave a page's entry below its rank (deferred); victims must still come out
// in the exact (rank, key) order an eager update gives, each one as it is asked for, with
// ineligible pages skipped, while pages are hit, forked, moved and evicted in between.
TEST(KvtierPolicyTest, DeferredHitsEvictInExactRankOrder) {
  std::mt19937_64 rng = testing::SeededRng();
  for (const bool tiered : {false, true}) {
    KvtierPolicy policy;
    std::vector<PageKey> keys;
    absl::flat_hash_map<PageKey, PageEntry> live;
    uint64_t now = 1'000'000'000;
    auto expected_order = [&] {
      std::vector<std::pair<double, PageKey>> order;
      for (const auto& [k, e] : live) {
        if (e.tier == Tier::kHbm) order.emplace_back(policy.OrderKey(k), k);
      }
      std::sort(order.begin(), order.end());
      return order;
    };
    for (int op = 0; op < 4000; ++op) {
      now += 1'000'000 * (1 + rng() % 500);
      const int kind = static_cast<int>(rng() % 10);
      if (kind < 3 || keys.size() < 8) {
        const PageKey k = RandomKey(rng);
        PageEntry e = Entry(tiered && rng() % 3 == 0 ? Tier::kDram : Tier::kHbm, now, 1.0f);
        InsertMaybeAsChild(rng, k, e, 50, policy, keys, live);
      } else if (kind < 8) {
        const size_t i = rng() % keys.size();
        PageEntry& e = live[keys[i]];
        e.stats.last_access_ns = now;
        if (kind == 7) e.cached_children = static_cast<uint32_t>(rng() % 3);
        policy.OnAccess(keys[i], e);
      } else if (kind == 8 && tiered) {
        const size_t i = rng() % keys.size();
        PageEntry& e = live[keys[i]];
        const Tier from = e.tier;
        e.tier = from == Tier::kHbm ? Tier::kDram : Tier::kHbm;
        policy.OnMove(keys[i], from, e);
      } else {
        // Evict the top tier's victim, checked against the order of the pages' ranks.
        const auto order = expected_order();
        if (order.empty()) continue;
        // Every other page barred: the merge must skip them and still settle marked entries.
        std::vector<PageKey> some;
        policy.LeastValuable(
            Tier::kHbm, 4,
            [&](const PageKey& k) {
              const auto it = std::find_if(order.begin(), order.end(),
                                           [&](const auto& rk) { return rk.second == k; });
              return (it - order.begin()) % 2 == 1;
            },
            some);
        for (size_t j = 0; j < some.size(); ++j) {
          ASSERT_LT(2 * j + 1, order.size());
          EXPECT_EQ(some[j], order[2 * j + 1].second) << "op " << op << " skip " << j;
        }
        const std::vector<PageKey> victim = Victims(policy, Tier::kHbm, 1);
        ASSERT_EQ(victim.size(), 1u);
        ASSERT_EQ(victim.front(), order.front().second) << "op " << op;
        policy.OnRemove(victim.front(), live[victim.front()]);
        live.erase(victim.front());
        keys.erase(std::find(keys.begin(), keys.end(), victim.front()));
      }
    }
    EXPECT_GT(policy.deferred_hits(), 500u) << "tiered " << tiered;
    ASSERT_EQ(policy.tracked(), live.size());
    CheckOrders(policy, live);
  }
}

// The drop tier (NVMe below HBM; HBM alone in a one-tier cache) keeps a page asked for twice over
// a newer one asked for once, as long as the newer one's lead in recency is below the bonus;
// Value, what the planner compares across tiers, is still the plain rank (recency first here:
// the learned probabilities are about the prior for both classes this early).
TEST(KvtierPolicyTest, DropTierKeepsPagesAskedForTwice) {
  std::mt19937_64 rng = testing::SeededRng();
  for (const bool tiered : {false, true}) {
    KvtierPolicyOptions o;
    o.adaptive_beta = false;
    KvtierPolicy policy(o);
    const Tier t = tiered ? Tier::kNvme : Tier::kHbm;
    if (tiered) policy.OnInsert(RandomKey(rng), Entry(Tier::kHbm, 1'000'000, 1.0f));
    const PageKey proven = RandomKey(rng), fresh = RandomKey(rng);
    const uint64_t t0 = 1'000'000'000ull + rng() % 1'000'000'000ull;
    policy.OnInsert(proven, Entry(t, t0, 1.0f));
    policy.OnAccess(proven, Entry(t, t0 + 1'000'000'000ull, 1.0f));
    // Five initial taus (60 s each) later: less than the 16-tau bonus.
    policy.OnInsert(fresh, Entry(t, t0 + 300'000'000'000ull, 1.0f));
    EXPECT_EQ(policy.drop_tier(), t);
    EXPECT_EQ(Victims(policy, t, 1).front(), fresh) << "tiered " << tiered;
    // The planner compares plain ranks across tiers, in the drop tier too.
    EXPECT_LT(policy.Value(proven), policy.Value(fresh));
  }
}

// Priced swaps (the default): a prefix page's Value is its reuses per horizon, -ln(1 - p) with p
// its decayed P(reuse within the horizon), plus the price of each boundary below its tier; the
// price is two moves' worth of hits over the upper tier's residency (Little's law: pages there x
// mean gap between departures).
TEST(KvtierPolicyTest, PricedSwapValueIsReuseRatePlusThePriceOfTheBoundariesBelow) {
  std::mt19937_64 rng = testing::SeededRng();
  KvtierPolicyOptions o;
  o.adaptive_beta = false;
  KvtierPolicy policy(o);
  // One page per tier first (each tier has held a page), then pages through HBM and DRAM: a page
  // leaves HBM every `gap_ns` and DRAM every second time, so HBM holds 2 and DRAM 3.
  const uint64_t gap_ns = (1 + rng() % 20) * 60'000'000'000ull;  // 1-20 initial taus
  uint64_t now = 1'000'000'000;
  const PageKey bottom = RandomKey(rng);
  policy.OnInsert(bottom, Entry(Tier::kNvme, now, 1.0f));
  std::vector<std::pair<PageKey, PageEntry>> hbm, dram;
  for (int i = 0; i < 40; ++i) {
    now += gap_ns;
    const PageKey k = RandomKey(rng);
    hbm.emplace_back(k, Entry(Tier::kHbm, now, 1.0f));
    policy.OnInsert(k, hbm.back().second);
    if (hbm.size() > 2) {
      auto [key, e] = hbm.front();
      hbm.erase(hbm.begin());
      e.tier = Tier::kDram;
      policy.OnMove(key, Tier::kHbm, e);
      dram.emplace_back(key, e);
    }
    if (dram.size() > 3 && i % 2 == 0) {
      policy.OnRemove(dram.front().first, dram.front().second);
      dram.erase(dram.begin());
    }
  }
  // Gaps are in virtual time (units of tau, 60 s until reuse teaches otherwise).
  const double tau_gap = static_cast<double>(gap_ns) / 60e9;
  EXPECT_NEAR(policy.Residency(Tier::kHbm), 2 * tau_gap, 1e-6 * tau_gap);
  EXPECT_GT(policy.Residency(Tier::kDram), 0);
  EXPECT_EQ(policy.Residency(Tier::kNvme), HUGE_VAL);  // nothing has left it
  const double hd = 2 * (1 / o.dram_gbps) / (1 / o.dram_gbps - 1 / o.hbm_gbps) *
                    o.reuse.horizon_taus / policy.Residency(Tier::kHbm);
  EXPECT_NEAR(policy.SwapPrice(Tier::kHbm), hd, 1e-9 * hd);
  const double dn = 2 * (1 / o.nvme_gbps) / (1 / o.nvme_gbps - 1 / o.dram_gbps) *
                    o.reuse.horizon_taus / policy.Residency(Tier::kDram);
  EXPECT_NEAR(policy.SwapPrice(Tier::kDram), dn, 1e-9 * dn);
  EXPECT_EQ(policy.SwapPrice(Tier::kNvme), 0.0);  // nothing below
  // The newest HBM page, the newest DRAM page and the NVMe page; all but the NVMe one were
  // observed at `now` or one gap earlier, so their reuse terms are -ln(1 - p) with p <= the cap.
  const double cap = -std::log1p(-(1 - std::exp(-o.reuse.horizon_taus)));
  const double v_hbm = policy.Value(hbm.back().first), v_dram = policy.Value(dram.back().first);
  const double v_nvme = policy.Value(bottom);
  EXPECT_GT(v_hbm, hd + dn);
  EXPECT_LE(v_hbm, hd + dn + cap + 1e-9);
  EXPECT_GT(v_dram, dn);
  EXPECT_LE(v_dram, dn + cap + 1e-9);
  EXPECT_GE(v_nvme, 0);
  EXPECT_LT(v_nvme, 1e-6);  // decayed for 40 gaps of at least a tau each
  // The rank, not the swap value, still orders victims within a tier.
  EXPECT_NE(policy.OrderKey(hbm.back().first), v_hbm);
}

// Under priced swaps the top tier orders its prefix pages by the drop key too (a page leaving HBM
// seldom comes back, since a swap up must pay two moves): in a tiered cache HBM keeps a page asked
// for twice over a newer one asked for once, as the bottom tier does; without priced swaps HBM
// keeps the plain rank (recency first here).
TEST(KvtierPolicyTest, TopTierKeepsPagesAskedForTwiceUnderPricedSwaps) {
  std::mt19937_64 rng = testing::SeededRng();
  for (const bool priced : {false, true}) {
    KvtierPolicyOptions o;
    o.adaptive_beta = false;
    o.priced_swaps = priced;
    KvtierPolicy policy(o);
    policy.OnInsert(RandomKey(rng), Entry(Tier::kNvme, 1'000'000, 1.0f));
    const PageKey proven = RandomKey(rng), fresh = RandomKey(rng);
    const uint64_t t0 = 1'000'000'000ull + rng() % 1'000'000'000ull;
    policy.OnInsert(proven, Entry(Tier::kHbm, t0, 1.0f));
    policy.OnAccess(proven, Entry(Tier::kHbm, t0 + 1'000'000'000ull, 1.0f));
    // Five initial taus (60 s each) later: less than the 16-tau bonus.
    policy.OnInsert(fresh, Entry(Tier::kHbm, t0 + 300'000'000'000ull, 1.0f));
    EXPECT_EQ(policy.drop_tier(), Tier::kNvme);
    EXPECT_EQ(Victims(policy, Tier::kHbm, 1).front(), priced ? fresh : proven)
        << "priced " << priced;
  }
}

}  // namespace
}  // namespace kvtier
