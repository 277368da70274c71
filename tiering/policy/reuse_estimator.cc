#include "tiering/policy/reuse_estimator.h"

#include <algorithm>
#include <bit>
#include <cmath>

namespace kvtier {
namespace {

uint64_t Mix(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// Decayed counts are halved once this many outcomes have accumulated, so the estimate follows
// a drifting workload (about the last 16 K sampled accesses weigh).
constexpr double kDecayAt = 16'384;

}  // namespace

FrequencySketch::FrequencySketch(uint32_t width) {
  width_ = std::bit_ceil(std::max<uint32_t>(width, 64));
  // Blocked layout (as Caffeine's): a key's four counters share one 64-byte block, one row per
  // 16-byte quarter, so an access costs one cache miss instead of four.
  mask_ = width_ / 16 - 1;
  table_.assign(size_t{kRows} * width_, 0);
  reset_at_ = uint64_t{10} * width_;
}

uint32_t FrequencySketch::Index(const PageKey& key, int row) const {
  const uint64_t h = Mix(key.lo ^ Mix(key.hi));
  const uint32_t block = static_cast<uint32_t>(h & mask_) * 64;
  return block + static_cast<uint32_t>(row) * 16 +
         static_cast<uint32_t>((h >> (40 + 4 * row)) & 15);
}

uint32_t FrequencySketch::Increment(const PageKey& key) {
  // Conservative update: only the smallest counters grow, which keeps collisions from inflating
  // the estimate of a cold key.
  uint32_t idx[kRows];
  uint8_t low = kMax;
  for (int r = 0; r < kRows; ++r) {
    idx[r] = Index(key, r);
    low = std::min(low, table_[idx[r]]);
  }
  if (low < kMax) {
    for (uint32_t i : idx) {
      if (table_[i] == low) ++table_[i];
    }
    ++low;
  }
  if (++additions_ >= reset_at_) {
    for (uint8_t& c : table_) c >>= 1;
    additions_ /= 2;
    low >>= 1;
    ++epoch_;
  }
  return low;
}

void FrequencySketch::Tick() {
  if (++additions_ >= reset_at_) {
    for (uint8_t& c : table_) c >>= 1;
    additions_ /= 2;
    ++epoch_;
  }
}

void FrequencySketch::Remember(const PageKey& key, uint32_t count) {
  const auto c = static_cast<uint8_t>(std::min<uint32_t>(count, kMax));
  for (int r = 0; r < kRows; ++r) {
    uint8_t& cell = table_[Index(key, r)];
    cell = std::max(cell, c);
  }
}

uint32_t FrequencySketch::Estimate(const PageKey& key) const {
  uint8_t low = kMax;
  for (int r = 0; r < kRows; ++r) low = std::min(low, table_[Index(key, r)]);
  return low;
}

ReuseEstimator::ReuseEstimator(const ReuseEstimatorOptions& options)
    : options_(options),
      sketch_(options_.history_width),
      log_tau_(std::log(std::max(options_.initial_tau_ms, 1.0))),
      tau_ms_(std::max(options_.initial_tau_ms, 1.0)) {}

int ReuseEstimator::ClassOf(const PageKey& key, const PageEntry& e) const {
  return ClassOf(sketch_.Estimate(key), e);
}

int ReuseEstimator::ClassOf(uint32_t n, const PageEntry& e) const {
  const int count = n <= 1 ? 0 : n == 2 ? 1 : n <= 4 ? 2 : 3;
  const uint32_t p = e.position;
  const int depth = p == 0 ? 0 : p < 8 ? 1 : p < 64 ? 2 : 3;
  const int forked = e.cached_children >= 2 ? 1 : 0;
  // A block with fewer tokens than the largest seen is a sequence's partial last block.
  const int partial = e.stats.tokens < largest_tokens_ ? 1 : 0;
  return ((count * kDepthBuckets + depth) * 2 + forked) * 2 + partial;
}

uint64_t ReuseEstimator::HorizonNs() const {
  return static_cast<uint64_t>(options_.horizon_taus * tau_ms_ * 1e6);
}

void ReuseEstimator::Record(int cls, bool reused) {
  seen_[cls] += 1;
  seen_all_ += 1;
  if (reused) {
    reused_[cls] += 1;
    reused_all_ += 1;
  }
  ++recorded_;
  if (seen_all_ >= kDecayAt) {
    for (int c = 0; c < kClasses; ++c) {
      seen_[c] *= 0.5;
      reused_[c] *= 0.5;
    }
    seen_all_ *= 0.5;
    reused_all_ *= 0.5;
  }
}

void ReuseEstimator::Expire(uint64_t now_ns) {
  const uint64_t horizon = HorizonNs();
  while (!unlabelled_.empty() && unlabelled_.front().at_ns + horizon < now_ns) {
    const Pending p = unlabelled_.front();
    unlabelled_.pop_front();
    auto it = samples_.find(p.key);
    if (it == samples_.end() || it->second.seq != p.seq || it->second.labelled) continue;
    Record(it->second.cls, /*reused=*/false);
    it->second.labelled = true;
  }
  const auto track = static_cast<uint64_t>(options_.track_ms * 1e6);
  while (!order_.empty() &&
         (order_.front().at_ns + track < now_ns || order_.size() > options_.max_samples)) {
    const Pending p = order_.front();
    order_.pop_front();
    auto it = samples_.find(p.key);
    // A sample pushed out by the bound before its horizon has no outcome: dropped, not counted.
    if (it != samples_.end() && it->second.seq == p.seq) samples_.erase(it);
  }
}

void ReuseEstimator::AdvanceClock(uint64_t now_ns) {
  if (now_ns > clock_ns_) {
    virtual_ += static_cast<double>(now_ns - clock_ns_) / 1e6 / tau_ms_;
    clock_ns_ = now_ns;
  }
}

double ReuseEstimator::VirtualTime(uint64_t now_ns) const {
  if (now_ns <= clock_ns_) return virtual_;
  return virtual_ + static_cast<double>(now_ns - clock_ns_) / 1e6 / tau_ms_;
}

int ReuseEstimator::Observe(const PageKey& key, const PageEntry& e, uint64_t now_ns) {
  return ObserveCounted(key, e, now_ns, sketch_.Increment(key));
}

int ReuseEstimator::ObserveCounted(const PageKey& key, const PageEntry& e, uint64_t now_ns,
                                   uint32_t count) {
  AdvanceClock(now_ns);
  largest_tokens_ = std::max(largest_tokens_, e.stats.tokens);
  const int cls = ClassOf(count, e);
  const uint64_t pick = (key.hi >> 17) & ((uint64_t{1} << options_.sample_shift) - 1);
  if (pick != 0) return cls;
  Expire(now_ns);
  auto it = samples_.find(key);
  if (it != samples_.end()) {
    const uint64_t gap_ns = now_ns - std::min(now_ns, it->second.at_ns);
    // Accesses within one millisecond are one request touching the page twice, not a reuse.
    if (gap_ns < 1'000'000) return cls;
    if (!it->second.labelled) Record(it->second.cls, gap_ns <= HorizonNs());
    // Tracks the median gap (a stochastic quantile step in log space): gaps span orders of
    // magnitude and bursts of near-simultaneous requests would drag a mean down.
    log_tau_ += std::log(static_cast<double>(gap_ns) / 1e6) > log_tau_ ? options_.tau_alpha
                                                                       : -options_.tau_alpha;
    tau_ms_ = std::exp(log_tau_);
  }
  const Sample s{now_ns, next_seq_++, cls, false};
  samples_[key] = s;
  unlabelled_.push_back(Pending{key, now_ns, s.seq});
  order_.push_back(Pending{key, now_ns, s.seq});
  return cls;
}

double ReuseEstimator::Probability(int cls) const {
  const double prior = (reused_all_ + 1.0) / (seen_all_ + 2.0);
  const double m = options_.prior_samples;
  return (reused_[cls] + m * prior) / (seen_[cls] + m);
}

}  // namespace kvtier
