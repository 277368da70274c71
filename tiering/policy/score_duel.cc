#include "tiering/policy/score_duel.h"

#include <algorithm>
#include <cmath>

namespace kvtier {

ScoreDuel::ScoreDuel(const ScoreDuelOptions& options)
    : options_(options),
      shadows_(options_.betas.size()),
      scores_(options_.betas.size(), 0.0),
      beta_(options_.initial_beta) {}

void ScoreDuel::Count(bool sampled) {
  all_ += 1;
  if (sampled) sampled_ += 1;
  if (all_ >= 65'536) {
    all_ *= 0.5;
    sampled_ *= 0.5;
  }
}

void ScoreDuel::Resample(size_t capacity) {
  uint32_t shift = shift_;
  while ((capacity >> shift) > options_.max_shadow_pages) ++shift;
  if (shift == shift_) return;
  // A coarser sample: chains no longer in it leave every shadow.
  shift_ = shift;
  mask_ = (uint64_t{1} << shift_) - 1;
  for (Shadow& s : shadows_) {
    for (auto it = s.order.begin(); it != s.order.end();) {
      auto slot = s.slots.find(it->second);
      if (Sampled(slot->second.root)) {
        ++it;
        continue;
      }
      s.slots.erase(slot);
      it = s.order.erase(it);
    }
  }
}

void ScoreDuel::Observe(const PageKey& key, uint64_t root, bool continues, double v, double log_p,
                        double log_saved, double tie, uint32_t tokens, size_t capacity) {
  Resample(capacity);
  if (!Sampled(root)) return;
  const double share = all_ > 0 ? sampled_ / all_ : 1.0;
  const auto shadow_capacity =
      std::max<size_t>(static_cast<size_t>(static_cast<double>(capacity) * share), 1);
  for (size_t i = 0; i < shadows_.size(); ++i) {
    Shadow& s = shadows_[i];
    const double rank = v + options_.betas[i] * log_p + log_saved + tie;
    auto it = s.slots.find(key);
    const bool hit = it != s.slots.end() && (!continues || s.chain_hit);
    s.chain_hit = hit;
    if (hit) scores_[i] += tokens;
    if (it != s.slots.end()) {
      s.order.erase({it->second.rank, key});
      it->second.rank = rank;
    } else {
      // As the store: room is made before the page arrives, so a new page is never its own
      // victim (the store has no bypass).
      while (!s.order.empty() && s.order.size() >= shadow_capacity) {
        s.slots.erase(s.order.begin()->second);
        s.order.erase(s.order.begin());
      }
      s.slots.emplace(key, Slot{rank, root});
    }
    s.order.insert({rank, key});
  }
  if (++since_decision_ < options_.period) return;
  since_decision_ = 0;
  // The best shadow of the period; beta moves only if it beats the current beta's shadow by
  // `margin`: differences within it are noise, and the shadows see the classes the current
  // beta's cache produces (whether a page has forked depends on what is cached), not those
  // another beta would.
  size_t at = 0;
  for (size_t i = 1; i < options_.betas.size(); ++i) {
    if (std::abs(options_.betas[i] - beta_) < std::abs(options_.betas[at] - beta_)) at = i;
  }
  size_t best = at;
  for (size_t i = 0; i < scores_.size(); ++i) {
    if (scores_[i] > scores_[best]) best = i;
  }
  if (scores_[best] <= scores_[at] * (1 + options_.margin)) best = at;
  if (best > at) ++at;
  if (best < at) --at;
  beta_ = options_.betas[at];
  for (double& s : scores_) s *= options_.decay;
}

}  // namespace kvtier
