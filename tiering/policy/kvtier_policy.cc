#include "tiering/policy/kvtier_policy.h"

#include <algorithm>
#include <cmath>

namespace kvtier {
namespace {
// Sinks sit above any reachable rank: F grows by 1 per half-life, so 1e12 is millennia away.
constexpr double kSinkRank = 1e12;
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

double KvtierPolicy::Rank(const PageKey&, const PageEntry& e) const {
  const double height = static_cast<double>(kNumTiers - 1 - TierIndex(e.tier));
  const double base = e.cls == PageClass::kSink ? kSinkRank : 0.0;
  return base + options_.frequency_weight * FrequencyTerm(e.stats) +
         options_.utility_weight * UtilityTerm(e) + options_.hysteresis * height;
}

}  // namespace kvtier
