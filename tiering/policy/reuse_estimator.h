// Online reuse prediction for prefix pages: a frequency sketch that remembers keys after they
// leave the cache, and a learner that estimates, per class of page, the probability that an
// access is followed by another one within a horizon.
//
// FrequencySketch is TinyLFU's count-min sketch (Einziger et al., TOS'17; as in Caffeine):
// 4 rows of 4-bit-saturating counters (one byte each here, capped at 15), halved every
// 10 x width additions so old popularity fades. W-TinyLFU uses it as its admission filter and
// kvtier uses it for "how often has this page been asked for", which the page index forgets on
// eviction.
//
// ReuseEstimator learns what the offline optimum would have wanted to know, from the past, in
// the spirit of Hawkeye (ISCA'16) and Learning Relaxed Belady (NSDI'20): it follows a sample of
// keys (1 in 2^sample_shift, chosen by key bits so every access of a sampled key is seen) whether
// they are cached or not, and when a sampled key is accessed again, or its horizon passes without
// that, records a reuse or a non-reuse for the class the key had at its previous access. Classes
// combine the signals the KVCache-in-the-wild study (ATC'25) found predictive for prefix pages:
// how often the page has been asked for (sketch), its depth in the prefix tree, whether its chain
// has forked (cached children), and whether it is a partial last block (rarely reused: the next
// turn re-hashes it with new tokens). The probability per class is a Beta-smoothed ratio of
// exponentially decayed counts. The time scale is learned too: tau is the running median of the
// observed reuse gaps and the horizon is horizon_taus x tau.
//
// Reuse probability is modelled, as the ATC'25 study measured, as decaying exponentially with the
// time since last use; to keep ranks comparable while tau is being learned, time is measured on a
// virtual clock that advances by dt / tau (so a rank log2(p) + V(last access) orders pages as
// p x 2^-(age / tau) does at every instant, and never has to be recomputed when tau changes).
//
// Cost per access: 4 sketch counters, one hash probe for 1 in 8 keys, O(1) amortised expiry.
// Memory: 4 x history_width bytes + at most max_samples followed keys (a log entry of 32 bytes
// and a map slot of 24 each; the log also keeps follows whose horizon has not passed yet);
// nothing per cached page.
// Thread model: owned by one policy, called under the store's lock.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <deque>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "tiering/page_index.h"
#include "tiering/page_key.h"

namespace kvtier {

class FrequencySketch {
 public:
  // `width` counters per row (rounded up to a power of two, at least 64).
  explicit FrequencySketch(uint32_t width);
  // Counts one access; returns the key's estimate after it (as Estimate would).
  uint32_t Increment(const PageKey& key);
  // Estimated accesses (0..15), an over-estimate by at most the colliding keys' counts.
  uint32_t Estimate(const PageKey& key) const;
  // Counts an access whose count the caller keeps itself (a cached page's record): ages the table
  // as Increment would, without touching the key's counters.
  void Tick();
  // Raises the key's counters to at least `count` (a record's count returned as the page leaves).
  void Remember(const PageKey& key, uint32_t count);
  // How many times the table has been halved: a count kept outside it halves as often.
  uint32_t epoch() const { return epoch_; }
  // Starts loading the key's counters (one cache line), so the miss overlaps the caller's work.
  void Prefetch(const PageKey& key) const { __builtin_prefetch(&table_[Index(Hash(key), 0)]); }

 private:
  static constexpr int kRows = 4;
  static constexpr uint8_t kMax = 15;
  static uint64_t Mix(uint64_t x) {
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    return x ^ (x >> 31);
  }
  // One hash a key; every row's counter is picked from it.
  static uint64_t Hash(const PageKey& key) { return Mix(key.lo ^ Mix(key.hi)); }
  // Blocked layout (as Caffeine's): a key's four counters share one 64-byte block, one row per
  // 16-byte quarter, so an access costs one cache miss instead of four.
  uint32_t Index(uint64_t h, int row) const {
    const uint32_t block = static_cast<uint32_t>(h & mask_) * 64;
    return block + static_cast<uint32_t>(row) * 16 +
           static_cast<uint32_t>((h >> (40 + 4 * row)) & 15);
  }
  std::vector<uint8_t> table_;  // kRows x width_
  uint32_t width_;
  uint32_t mask_;
  uint64_t additions_ = 0;
  uint64_t reset_at_;
  uint32_t epoch_ = 0;
};

struct ReuseEstimatorOptions {
  // Sketch columns. Default 2^18 (1 MiB of counters): keeps the counts of ~256 K distinct recent
  // pages apart; size it to the page count (too small and collisions inflate every count).
  uint32_t history_width = 1u << 18;
  // One key in 2^sample_shift is followed. Default 3 (1 in 8), as Hawkeye's sampled sets.
  uint32_t sample_shift = 3;
  // Most samples followed at once; the oldest is dropped (unrecorded) beyond. Default 2^16.
  uint32_t max_samples = 1u << 16;
  // tau before any reuse has been seen. Default 60 s (a typical inter-turn gap).
  double initial_tau_ms = 60'000;
  // How long a sample is followed to learn tau (a gap longer than the horizon still teaches the
  // time scale). Default 1 h.
  double track_ms = 3'600'000;
  // Horizon of "reused within", in units of tau. Default 4.
  double horizon_taus = 4.0;
  // Step of the running median of log(gap), in natural-log units per reuse. Default 0.02 (a 2 %
  // change of tau per observed reuse).
  double tau_alpha = 0.02;
  // Beta prior strength pulling a class with few samples towards the overall reuse rate.
  // Default 8 samples.
  double prior_samples = 8.0;
};

class ReuseEstimator {
 public:
  static constexpr int kCountBuckets = 4;  // asked for 1, 2, 3-4, 5+ times
  static constexpr int kDepthBuckets = 4;  // position 0, 1-7, 8-63, 64+
  static constexpr int kClasses = kCountBuckets * kDepthBuckets * 2 * 2;  // x forked x partial

  explicit ReuseEstimator(const ReuseEstimatorOptions& options = {});

  // Starts loading what Observe(key, ...) will read first.
  void Prefetch(const PageKey& key) const { sketch_.Prefetch(key); }
  // Records an access (or the insertion) of `key` at `now_ns`; returns the page's class.
  int Observe(const PageKey& key, const PageEntry& entry, uint64_t now_ns);
  // The same for a caller that keeps the page's count itself while the page is cached (see
  // KvtierPolicy): `count` is the page's asked-for count after this access.
  int ObserveCounted(const PageKey& key, const PageEntry& entry, uint64_t now_ns, uint32_t count) {
    AdvanceClock(now_ns);
    largest_tokens_ = std::max(largest_tokens_, entry.stats.tokens);
    const int cls = ClassOf(count, entry);
    const uint64_t pick = (key.hi >> 17) & ((uint64_t{1} << options_.sample_shift) - 1);
    if (pick == 0) FollowSample(key, now_ns, cls);
    return cls;
  }
  FrequencySketch& sketch() { return sketch_; }
  // The class the page would have now (no side effects).
  int ClassOf(const PageKey& key, const PageEntry& entry) const;
  int ClassOf(uint32_t count, const PageEntry& entry) const {
    const int c = count <= 1 ? 0 : count == 2 ? 1 : count <= 4 ? 2 : 3;
    const uint32_t p = entry.position;
    const int depth = p == 0 ? 0 : p < 8 ? 1 : p < 64 ? 2 : 3;
    const int forked = entry.cached_children >= 2 ? 1 : 0;
    // A block with fewer tokens than the largest seen is a sequence's partial last block.
    const int partial = entry.stats.tokens < largest_tokens_ ? 1 : 0;
    return ((c * kDepthBuckets + depth) * 2 + forked) * 2 + partial;
  }
  // P(accessed again within the horizon | class), smoothed.
  double Probability(int cls) const;
  // Probability(cls) and its log2, as computed from them, kept per class until the next
  // recorded outcome (which moves every class's estimate through the prior): an access of a
  // page whose class was looked up since costs no division and no logarithm.
  std::pair<double, double> ProbabilityAndLog(int cls) const {
    Cached& c = cached_[cls];
    if (c.version != recorded_) {
      c.p = Probability(cls);
      c.log_p = std::log2(c.p);
      c.version = recorded_;
    }
    return {c.p, c.log_p};
  }
  // Virtual time (in units of tau) at `now_ns`; monotone.
  double VirtualTime(uint64_t now_ns) const;
  double tau_ms() const { return tau_ms_; }
  uint64_t samples_recorded() const { return recorded_; }

 private:
  // One follow of a sampled key, from one access to the next (or to the end of its window).
  struct Follow {
    PageKey key;
    uint64_t at_ns = 0;
    uint8_t cls = 0;
    bool labelled = false;    // its outcome within the horizon is recorded
    bool superseded = false;  // the key was accessed again: a newer follow is its live one
    bool dropped = false;     // past the tracking window, or pushed out by the bound
  };
  struct Cached {
    uint64_t version = ~uint64_t{0};  // recorded_ when computed
    double p = 0, log_p = 0;
  };
  // A sampled key's access: labels its previous one, and follows this one.
  void FollowSample(const PageKey& key, uint64_t now_ns, int cls);
  void Record(int cls, bool reused);
  void Expire(uint64_t now_ns);
  void AdvanceClock(uint64_t now_ns) {
    if (now_ns > clock_ns_) {
      virtual_ += static_cast<double>(now_ns - clock_ns_) / 1e6 / tau_ms_;
      clock_ns_ = now_ns;
    }
  }
  uint64_t HorizonNs() const;

  ReuseEstimatorOptions options_;
  FrequencySketch sketch_;
  uint32_t largest_tokens_ = 0;
  // Each followed key's live follow, by sequence number; the follows in order of their start
  // (sequence numbers base_seq_ .. next_seq_ - 1). The log is read at two cursors: label_seq_
  // reaches the horizon (no reuse: recorded), drop_seq_ the tracking window (forgotten); a
  // follow leaves the log once both passed it. So expiry reads the log in order and needs no
  // lookup of the key.
  absl::flat_hash_map<PageKey, uint64_t> samples_;
  std::deque<Follow> log_;
  uint64_t base_seq_ = 0, label_seq_ = 0, drop_seq_ = 0, next_seq_ = 0;
  std::array<double, kClasses> reused_{};
  std::array<double, kClasses> seen_{};
  double reused_all_ = 0, seen_all_ = 0;
  uint64_t recorded_ = 0;
  mutable std::array<Cached, kClasses> cached_{};
  double log_tau_;
  double tau_ms_;
  uint64_t clock_ns_ = 0;  // last time the virtual clock was advanced to
  double virtual_ = 0;     // virtual time at clock_ns_
};

}  // namespace kvtier
