// The duel that learns kvtier's beta: on workloads where trusting the learned probability (or
// ignoring it) is right by construction, beta must go there.
#include "tiering/policy/score_duel.h"

#include <algorithm>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "test_seed.h"

namespace kvtier {
namespace {

PageKey Key(std::mt19937_64& rng) { return PageKey{rng() | 1, rng()}; }

// One-page chains into a cache of 100 pages. `honest`: 80 hot pages marked likely (log_p 0) come
// back every cycle among 220 one-shot pages marked unlikely (log_p -4): their reuse distance (300)
// is beyond the cache, so only trusting P enough (beta >= 2 here) keeps them. Otherwise the marks
// lie: the pages that come back (every cycle, 60 of them, among 40 one-shot pages) are marked
// unlikely and the one-shots likely, and plain recency (beta 0) is what keeps the returning pages.
double LearnedBeta(bool honest, std::mt19937_64& rng) {
  ScoreDuelOptions o;
  o.period = 512;
  o.initial_beta = 1.0;
  ScoreDuel duel(o);
  const int hot = honest ? 80 : 60, cold = honest ? 220 : 40;
  std::vector<PageKey> hot_keys;
  for (int i = 0; i < hot; ++i) hot_keys.push_back(Key(rng));
  const double hot_p = honest ? 0.0 : -4.0, cold_p = honest ? -4.0 : 0.0;
  double v = 0;
  for (int cycle = 0; cycle < 80; ++cycle) {
    std::vector<std::pair<PageKey, double>> order;
    for (const PageKey& k : hot_keys) order.push_back({k, hot_p});
    for (int i = 0; i < cold; ++i) order.push_back({Key(rng), cold_p});
    std::shuffle(order.begin(), order.end(), rng);
    for (const auto& [k, log_p] : order) {
      v += 0.02;  // 6 units of recency a cycle: beta 1 (4 units for the mark) is not enough
      duel.Observe(k, k.lo, /*continues=*/false, v, log_p, 0.0, 0.0, 16, 100);
    }
  }
  return duel.beta();
}

TEST(ScoreDuelTest, TrustsTheProbabilityWhenItPredicts) {
  std::mt19937_64 rng = testing::SeededRng();
  EXPECT_GE(LearnedBeta(/*honest=*/true, rng), 2.0);
}

TEST(ScoreDuelTest, FallsBackToRecencyWhenTheProbabilityMisleads) {
  std::mt19937_64 rng = testing::SeededRng();
  EXPECT_EQ(LearnedBeta(/*honest=*/false, rng), 0.0);
}

}  // namespace
}  // namespace kvtier
