#include "tiering/policy/reuse_estimator.h"

#include <algorithm>
#include <bit>
#include <cmath>

namespace kvtier {
namespace {

// Decayed counts are halved once this many outcomes have accumulated, so the estimate follows
// a drifting workload (about the last 16 K sampled accesses weigh).
constexpr double kDecayAt = 16'384;

}  // namespace

FrequencySketch::FrequencySketch(uint32_t width) {
  width_ = std::bit_ceil(std::max<uint32_t>(width, 64));
  mask_ = width_ / 16 - 1;
  table_.assign(size_t{kRows} * width_, 0);
  reset_at_ = uint64_t{10} * width_;
}

uint32_t FrequencySketch::Increment(const PageKey& key) {
  // Conservative update: only the smallest counters grow, which keeps collisions from inflating
  // the estimate of a cold key.
  const uint64_t h = Hash(key);
  uint32_t idx[kRows];
  uint8_t low = kMax;
  for (int r = 0; r < kRows; ++r) {
    idx[r] = Index(h, r);
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
  const uint64_t h = Hash(key);
  for (int r = 0; r < kRows; ++r) {
    uint8_t& cell = table_[Index(h, r)];
    cell = std::max(cell, c);
  }
}

uint32_t FrequencySketch::Estimate(const PageKey& key) const {
  uint8_t low = kMax;
  const uint64_t h = Hash(key);
  for (int r = 0; r < kRows; ++r) low = std::min(low, table_[Index(h, r)]);
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
  // The log is read in order (no lookup): a follow whose horizon passed unlabelled records a
  // non-reuse, and one past the tracking window (or beyond the bound) is forgotten.
  const uint64_t horizon = HorizonNs();
  for (; label_seq_ < next_seq_; ++label_seq_) {
    Follow& f = log_[label_seq_ - base_seq_];
    if (!(f.at_ns + horizon < now_ns)) break;
    if (f.superseded || f.dropped || f.labelled) continue;
    Record(f.cls, /*reused=*/false);
    f.labelled = true;
  }
  const auto track = static_cast<uint64_t>(options_.track_ms * 1e6);
  for (; drop_seq_ < next_seq_; ++drop_seq_) {
    Follow& f = log_[drop_seq_ - base_seq_];
    if (!(f.at_ns + track < now_ns || next_seq_ - drop_seq_ > options_.max_samples)) break;
    // A sample pushed out by the bound before its horizon has no outcome: dropped, not counted.
    if (!f.superseded) samples_.erase(f.key);  // the key's live sample
    f.dropped = true;
  }
  for (const uint64_t done = std::min(label_seq_, drop_seq_); base_seq_ < done; ++base_seq_) {
    log_.pop_front();
  }
}

double ReuseEstimator::VirtualTime(uint64_t now_ns) const {
  if (now_ns <= clock_ns_) return virtual_;
  return virtual_ + static_cast<double>(now_ns - clock_ns_) / 1e6 / tau_ms_;
}

int ReuseEstimator::Observe(const PageKey& key, const PageEntry& e, uint64_t now_ns) {
  return ObserveCounted(key, e, now_ns, sketch_.Increment(key));
}

void ReuseEstimator::FollowSample(const PageKey& key, uint64_t now_ns, int cls) {
  Expire(now_ns);
  auto [it, fresh] = samples_.try_emplace(key, next_seq_);
  if (!fresh) {
    Follow& previous = log_[it->second - base_seq_];
    const uint64_t gap_ns = now_ns - std::min(now_ns, previous.at_ns);
    // Accesses within one millisecond are one request touching the page twice, not a reuse.
    if (gap_ns < 1'000'000) return;
    if (!previous.labelled) Record(previous.cls, gap_ns <= HorizonNs());
    // Tracks the median gap (a stochastic quantile step in log space): gaps span orders of
    // magnitude and bursts of near-simultaneous requests would drag a mean down.
    log_tau_ += std::log(static_cast<double>(gap_ns) / 1e6) > log_tau_ ? options_.tau_alpha
                                                                       : -options_.tau_alpha;
    tau_ms_ = std::exp(log_tau_);
    previous.superseded = true;
    it->second = next_seq_;
  }
  log_.push_back(Follow{key, now_ns, static_cast<uint8_t>(cls)});
  ++next_seq_;
}

double ReuseEstimator::Probability(int cls) const {
  const double prior = (reused_all_ + 1.0) / (seen_all_ + 2.0);
  const double m = options_.prior_samples;
  return (reused_[cls] + m * prior) / (seen_[cls] + m);
}

}  // namespace kvtier
