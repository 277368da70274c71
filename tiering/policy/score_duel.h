// ScoreDuel: learns online how much kvtier's prefix score should trust the learned reuse
// probability against plain recency, by racing small shadow caches on a sample of the keys.
//
// kvtier ranks a prefix page by V + beta * log2(P) + log2(saved) (kvtier_policy.h): V is recency
// (virtual time of the last use), P the page's learned probability of reuse, the frequency side.
// Which beta is best depends on the workload and on the cache's size: on the public trace small
// caches want beta ~ 0.5 (recency), on a multi-turn workload beta ~ 2 (ARC and S3-FIFO win their
// columns by adapting the same split, bench/RESULTS.md). So beta is not a constant: as in set
// dueling (DIP, ISCA'07; Hawkeye, ISCA'16) and as SHARDS (FAST'15) scales a cache down, a
// sampled subset of the prefix chains (1 in 2^shift roots, by key bits, so every access of a
// sampled chain is seen) is replayed through one shadow cache per candidate beta, each holding
// the sampled share of the real cache's pages and ranking them by the same score with its own
// beta. Each shadow counts the tokens it would have served (a page serves only if the pages
// before it in the request did, as in the store's prefix lookup), decayed by half every
// `period` sampled accesses; kvtier uses the beta of the shadow with the most. The shadows see only
// what the policy sees (its own observations of each access), nothing from the future.
//
// Cost: two counter updates for an unsampled access; for a sampled one, one probe and one ordered
// insert per shadow. The shift grows with the cache so a shadow holds at most ~max_shadow_pages:
// on a large cache almost no access is sampled. Memory: candidates x max_shadow_pages entries.
// Thread model: owned by one policy, called under the store's lock.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "absl/container/btree_set.h"
#include "absl/container/flat_hash_map.h"
#include "tiering/page_key.h"

namespace kvtier {

struct ScoreDuelOptions {
  // The betas raced. Default 0 (recency only), 0.5, 1, 2, 4.
  std::vector<double> betas = {0.0, 0.5, 1.0, 2.0, 4.0};
  // The beta used from the start (and always, with KvtierPolicyOptions::adaptive_beta off).
  // Default 2: the best fixed beta on the public trace at 2 and 5 % HBM (1 is as good at 10 and
  // 20 %); chosen there only, as kvtier's other defaults.
  double initial_beta = 2.0;
  // Most pages a shadow holds: the sample shift grows until capacity >> shift fits. Default 512.
  uint32_t max_shadow_pages = 512;
  // Sampled accesses between two decisions. Default 4096 (2048 moved beta on noise more often:
  // 0.2 points lower hit share on the public trace at 5 %, no better elsewhere).
  uint32_t period = 4096;
  // The shadows' counts are multiplied by this at each decision. Default 0.75 (a memory of
  // about four periods).
  double decay = 0.75;
  // Relative lead the best shadow needs over the current beta's before beta moves. Default 0.03.
  double margin = 0.03;
};

class ScoreDuel {
 public:
  explicit ScoreDuel(const ScoreDuelOptions& options = {});

  // Whether pages under the chain root `root` (its key's low word) are in the sample at the
  // current shift. Sampling whole chains keeps what makes a prefix hit: a page serves only if
  // every page before it in its request is cached, and a shadow sees all of them.
  bool Sampled(uint64_t root) const { return (Mix(root) & mask_) == 0; }
  // Every prefix access, sampled or not (the sampled share sizes the shadows).
  void Count(bool sampled);
  // A sampled access of `key` under `root`: `continues` whether the previous sampled access was
  // its parent (same request), `v` its virtual time now, `log_p` log2 of its reuse probability,
  // `log_saved` the rest of its time-invariant rank, `tie` the policy's tie-break (deeper pages
  // of a request first), `tokens` what a hit serves, `capacity` the pages the real cache holds.
  void Observe(const PageKey& key, uint64_t root, bool continues, double v, double log_p,
               double log_saved, double tie, uint32_t tokens, size_t capacity);
  double beta() const { return beta_; }
  // Decayed token hits of each candidate (for tests and explanations).
  const std::vector<double>& scores() const { return scores_; }
  uint32_t shift() const { return shift_; }

 private:
  static uint64_t Mix(uint64_t x) {
    x ^= x >> 31;
    x *= 0x9e3779b97f4a7c15ull;
    return x ^ (x >> 29);
  }
  struct Slot {
    double rank;
    uint64_t root;
  };
  struct Shadow {
    absl::flat_hash_map<PageKey, Slot> slots;
    absl::btree_set<std::pair<double, PageKey>> order;
    bool chain_hit = false;  // the previous sampled access hit here
  };
  void Resample(size_t capacity);

  ScoreDuelOptions options_;
  std::vector<Shadow> shadows_;
  std::vector<double> scores_;
  double beta_;
  uint32_t shift_ = 0;
  uint64_t mask_ = 0;
  // Decayed counts of all and of sampled prefix accesses: their ratio is the share of the
  // workload the shadows see, so a shadow holds that share of the real cache's pages.
  double all_ = 0, sampled_ = 0;
  uint32_t since_decision_ = 0;
};

}  // namespace kvtier
