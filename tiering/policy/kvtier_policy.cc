#include "tiering/policy/kvtier_policy.h"

#include <algorithm>
#include <cmath>

namespace kvtier {
namespace {
// Sinks sit above any reachable rank: F grows by 1 per half-life, so 1e12 is millennia away.
constexpr double kSinkRank = 1e12;
// Rank of a page in a tier where it saves nothing: below every page that saves something.
constexpr double kWorthlessRank = -1e12;
}  // namespace

double KvtierPolicy::FrequencyTerm(const PageStats& s) const {
  const double f = std::max(static_cast<double>(s.frequency), 1e-9);
  return std::log2(f) +
         static_cast<double>(s.last_access_ns) / 1e6 / options_.frequency_half_life_ms;
}

double KvtierPolicy::UtilityTerm(const PageEntry& e) const {
  const PageStats& s = e.stats;
  double u;
  if (s.stat_reports > 0) {
    const double vn = std::min(1.0, s.value_norm / options_.reference_value_norm);
    u = (s.attention_mass / options_.reference_mass) * (0.5 + 0.5 * s.breadth) * vn;
  } else {
    u = (static_cast<double>(s.tokens) / options_.reference_tokens) * (1.0 + e.cached_children);
  }
  return std::log2(std::max(u, options_.utility_floor));
}

double KvtierPolicy::SavedSeconds(Tier tier, uint32_t tokens) const {
  const double gbps = tier == Tier::kHbm    ? options_.hbm_gbps
                      : tier == Tier::kDram ? options_.dram_gbps
                                            : options_.nvme_gbps;
  const double t = static_cast<double>(tokens);
  return t / options_.prefill_tokens_per_s - t * options_.bytes_per_token / (gbps * 1e9);
}

bool KvtierPolicy::RanksByReuse(const PageEntry& e) const {
  return e.stats.stat_reports == 0 && !attention_namespaces_.contains(e.ns);
}

bool KvtierPolicy::Admits(Tier tier, const PageEntry& e) const {
  if (e.cls == PageClass::kSink || !RanksByReuse(e)) return true;
  return SavedSeconds(tier, e.stats.tokens) > 0;
}

double KvtierPolicy::ReuseTerm(const PageKey& key, const PageEntry& e) const {
  const double saved = SavedSeconds(e.tier, e.stats.tokens);
  if (!(saved > 0)) return kWorthlessRank;
  const double reference = options_.reference_tokens / options_.prefill_tokens_per_s;
  Prefix p{reuse_.VirtualTime(0), 0, reuse_.Probability(0)};
  if (key == last_observed_) {
    p = last_prefix_;
  } else if (auto it = prefix_.find(key); it != prefix_.end()) {
    p = it->second;
  }
  // Among equals (one request's pages share their last use), the page more cached pages hang
  // from stays longest and the deeper one goes first: chains are cut leaf first.
  return std::log2(p.p_chain * saved / reference) + p.virtual_last +
         1e-9 * (static_cast<double>(e.cached_children) - static_cast<double>(e.position));
}

double KvtierPolicy::ChainProbability(const PageEntry& e, int cls) const {
  double p = reuse_.Probability(cls);
  if (!e.parent.is_null()) {
    if (auto it = prefix_.find(e.parent); it != prefix_.end()) p = std::min(p, it->second.p_chain);
  }
  return p;
}

double KvtierPolicy::Rank(const PageKey& key, const PageEntry& e) const {
  const double height = static_cast<double>(kNumTiers - 1 - TierIndex(e.tier));
  const double base = e.cls == PageClass::kSink ? kSinkRank : 0.0;
  if (RanksByReuse(e)) return base + ReuseTerm(key, e) + options_.hysteresis * height;
  return base + options_.frequency_weight * FrequencyTerm(e.stats) +
         options_.utility_weight * UtilityTerm(e) + options_.hysteresis * height;
}

void KvtierPolicy::Observe(const PageKey& key, const PageEntry& e) {
  if (e.stats.stat_reports > 0) attention_namespaces_.insert(e.ns);
  const uint64_t now = e.stats.last_access_ns;
  const int cls = reuse_.Observe(key, e, now);
  double p = reuse_.Probability(cls);
  if (!e.parent.is_null()) {
    if (e.parent == last_observed_) {
      p = std::min(p, last_p_chain_);
    } else if (auto it = prefix_.find(e.parent); it != prefix_.end()) {
      p = std::min(p, it->second.p_chain);
    }
  }
  last_prefix_ = Prefix{reuse_.VirtualTime(now), cls, p};
  prefix_[key] = last_prefix_;
  last_observed_ = key;
  last_p_chain_ = p;
}

void KvtierPolicy::OnInsert(const PageKey& key, const PageEntry& e) {
  Observe(key, e);
  Place(key, e);
}

void KvtierPolicy::OnAccess(const PageKey& key, const PageEntry& e) {
  Observe(key, e);
  Place(key, e);
}

void KvtierPolicy::OnUpdate(const PageKey& key, const PageEntry& e) {
  if (e.stats.stat_reports > 0) attention_namespaces_.insert(e.ns);
  // A fork (a new cached child) changes the page's class, not its last use.
  if (auto it = prefix_.find(key); it != prefix_.end()) {
    it->second.cls = reuse_.ClassOf(key, e);
    it->second.p_chain = ChainProbability(e, it->second.cls);
    if (key == last_observed_) last_prefix_ = it->second;
  }
  Place(key, e);
}

void KvtierPolicy::OnRemove(const PageKey& key, const PageEntry&) {
  prefix_.erase(key);
  if (key == last_observed_) last_observed_ = PageKey{};
  Forget(key);
}

}  // namespace kvtier
