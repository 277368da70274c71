// The reuse estimator: its sketch counts, and what it learns from a workload whose reuse is
// known by construction.
#include "tiering/policy/reuse_estimator.h"

#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "test_seed.h"
#include "tiering/policy/kvtier_policy.h"

namespace kvtier {
namespace {

TEST(FrequencySketchTest, CountsAndSaturates) {
  std::mt19937_64 rng = testing::SeededRng();
  FrequencySketch sketch(1u << 12);
  std::vector<std::pair<PageKey, uint32_t>> keys;
  for (int i = 0; i < 40; ++i) keys.push_back({PageKey{rng() | 1, rng()}, 1 + rng() % 20});
  for (const auto& [k, n] : keys) {
    for (uint32_t i = 0; i < n; ++i) sketch.Increment(k);
  }
  // 40 keys in 4 x 4096 counters: an estimate is at least the truth (capped at 15), and in
  // practice exact.
  int exact = 0;
  for (const auto& [k, n] : keys) {
    EXPECT_GE(sketch.Estimate(k), std::min<uint32_t>(n, 15));
    exact += sketch.Estimate(k) == std::min<uint32_t>(n, 15);
  }
  EXPECT_GE(exact, 38);
  EXPECT_EQ(sketch.Estimate(PageKey{rng() | 1, rng()}), 0u);
}

TEST(ReuseEstimatorTest, LearnsWhichClassIsReusedAndTheGapScale) {
  std::mt19937_64 rng = testing::SeededRng();
  ReuseEstimator est;
  // Shallow pages (position 0) come back every 10 s; deep pages (position 100) never do.
  std::vector<PageKey> shallow, deep;
  for (int i = 0; i < 400; ++i) shallow.push_back(PageKey{rng() | 1, rng()});
  uint64_t now = 1'000'000'000;
  PageEntry s_entry, d_entry;
  s_entry.stats.tokens = d_entry.stats.tokens = 512;
  d_entry.position = 100;
  int s_cls = 0, d_cls = 0;
  for (int round = 0; round < 30; ++round) {
    for (const PageKey& k : shallow) {
      now += 25'000'000;  // 400 pages over 10 s
      s_cls = est.Observe(k, s_entry, now);
      const PageKey fresh{rng() | 1, rng()};
      d_cls = est.Observe(fresh, d_entry, now);
    }
  }
  EXPECT_NE(s_cls, d_cls);
  EXPECT_GT(est.Probability(s_cls), 0.8);
  EXPECT_LT(est.Probability(d_cls), 0.2);
  // tau tracks the median gap between reuses (10 s) from its 60 s start.
  EXPECT_GT(est.tau_ms(), 5'000);
  EXPECT_LT(est.tau_ms(), 20'000);
  EXPECT_GT(est.VirtualTime(now + 60'000'000'000ull), est.VirtualTime(now) + 2);
}

TEST(KvtierPolicyTest, RefusesATierWhoseLoadCostsMoreThanRecompute) {
  KvtierPolicyOptions o;
  o.nvme_gbps = 0.5;  // 512 tokens x 128 KiB over 0.5 GB/s = 134 ms > 25.6 ms of prefill
  KvtierPolicy policy(o);
  PageEntry e;
  e.stats.tokens = 512;
  EXPECT_TRUE(policy.Admits(Tier::kHbm, e));
  EXPECT_TRUE(policy.Admits(Tier::kDram, e));
  EXPECT_FALSE(policy.Admits(Tier::kNvme, e));
  EXPECT_LT(policy.SavedSeconds(Tier::kNvme, 512), 0);
  // A decode page (attention reported) is placed by attention, not refused.
  e.stats.stat_reports = 1;
  EXPECT_TRUE(policy.Admits(Tier::kNvme, e));
}

}  // namespace
}  // namespace kvtier
