#include "tiering/policy/modern_policies.h"

#include <algorithm>

namespace kvtier {

// --- S3-FIFO -----------------------------------------------------------------------------------

namespace {
// Share of a tier that S may hold before it gives up pages (the paper's 10 %).
constexpr double kSmallShare = 0.10;
constexpr uint8_t kMaxFreq = 3;
}  // namespace

void S3FifoPolicy::Enter(const PageKey& key, Tier tier) {
  TierState& t = tiers_[TierIndex(tier)];
  Where w{tier, false, 0, ++seq_, {}};
  if (auto g = t.ghost_keys.find(key); g != t.ghost_keys.end()) {
    // Seen recently and left S unused: this time it goes straight to M.
    t.ghost.erase(g->second);
    t.ghost_keys.erase(g);
    w.main = true;
    w.it = t.main.insert(t.main.end(), key);
  } else {
    w.it = t.small.insert(t.small.end(), key);
  }
  where_[key] = w;
  t.capacity = std::max(t.capacity, t.small.size() + t.main.size());
}

void S3FifoPolicy::Leave(const PageKey& key, bool to_ghost) {
  auto it = where_.find(key);
  if (it == where_.end()) return;
  TierState& t = tiers_[TierIndex(it->second.tier)];
  (it->second.main ? t.main : t.small).erase(it->second.it);
  if (to_ghost && !t.ghost_keys.contains(key)) {
    t.ghost_keys[key] = t.ghost.insert(t.ghost.end(), key);
    const size_t ghost_cap =
        std::max<size_t>(1, t.capacity - static_cast<size_t>(kSmallShare * t.capacity));
    while (t.ghost.size() > ghost_cap) {
      t.ghost_keys.erase(t.ghost.front());
      t.ghost.pop_front();
    }
  }
  where_.erase(it);
}

void S3FifoPolicy::ToMainBack(TierState& t, Where& w, const PageKey& key) {
  (w.main ? t.main : t.small).erase(w.it);
  w.it = t.main.insert(t.main.end(), key);
  w.main = true;
  w.seq = ++seq_;
}

void S3FifoPolicy::OnInsert(const PageKey& key, const PageEntry& e) { Enter(key, e.tier); }

void S3FifoPolicy::OnAccess(const PageKey& key, const PageEntry& e) {
  auto it = where_.find(key);
  if (it == where_.end()) return Enter(key, e.tier);
  it->second.freq = static_cast<uint8_t>(std::min<int>(it->second.freq + 1, kMaxFreq));
}

void S3FifoPolicy::OnMove(const PageKey& key, Tier, const PageEntry& e) {
  auto it = where_.find(key);
  // Leaving a tier from S unused is an eviction from that tier's point of view.
  Leave(key, it != where_.end() && !it->second.main && it->second.freq == 0);
  Enter(key, e.tier);
}

void S3FifoPolicy::OnRemove(const PageKey& key, const PageEntry&) {
  auto it = where_.find(key);
  Leave(key, it != where_.end() && !it->second.main && it->second.freq == 0);
}

void S3FifoPolicy::LeastValuable(Tier tier, size_t count,
                                 absl::FunctionRef<bool(const PageKey&)> eligible,
                                 std::vector<PageKey>& out) {
  TierState& t = tiers_[TierIndex(tier)];
  const double small_target = std::max(1.0, kSmallShare * static_cast<double>(t.capacity));
  size_t small_left = t.small.size();
  absl::flat_hash_set<PageKey> chosen;
  auto s = t.small.begin();
  auto m = t.main.begin();
  // Every page is visited a bounded number of times (its counter only goes down).
  size_t steps = 4 * (t.small.size() + t.main.size()) + 16;
  while (chosen.size() < count && steps-- > 0) {
    const bool from_small =
        s != t.small.end() && (static_cast<double>(small_left) > small_target || t.main.empty());
    if (from_small) {
      const PageKey key = *s++;
      Where& w = where_[key];
      --small_left;
      if (w.freq > 0) {  // accessed while in S: promoted to M, not a victim
        w.freq = 0;
        ToMainBack(t, w, key);
        continue;
      }
      if (eligible(key) && chosen.insert(key).second) out.push_back(key);
      continue;
    }
    if (m == t.main.end()) {
      if (t.main.empty() && s == t.small.end()) break;
      if (t.main.empty()) {
        small_left = static_cast<size_t>(small_target) + 1;  // only S is left: take from it
        continue;
      }
      m = t.main.begin();  // second lap over M's reinserted pages
    }
    const PageKey key = *m++;
    Where& w = where_[key];
    if (w.freq > 0) {  // CLOCK: a second chance, one access spent
      --w.freq;
      const bool at_end = m == t.main.end();
      ToMainBack(t, w, key);
      if (at_end) m = t.main.end();
      continue;
    }
    if (eligible(key) && chosen.insert(key).second) out.push_back(key);
  }
}

void S3FifoPolicy::MostValuable(Tier tier, size_t count,
                                absl::FunctionRef<bool(const PageKey&)> eligible,
                                std::vector<PageKey>& out) {
  const TierState& t = tiers_[TierIndex(tier)];
  size_t added = 0;
  for (const std::list<PageKey>* l : {&t.main, &t.small}) {
    for (auto it = l->rbegin(); it != l->rend() && added < count; ++it) {
      if (eligible(*it)) {
        out.push_back(*it);
        ++added;
      }
    }
  }
}

double S3FifoPolicy::Value(const PageKey& key) const {
  auto it = where_.find(key);
  if (it == where_.end()) return 0.0;
  return (it->second.main ? 1e15 : 0.0) + static_cast<double>(it->second.seq);
}

bool S3FifoPolicy::InMain(const PageKey& key) const {
  auto it = where_.find(key);
  return it != where_.end() && it->second.main;
}

// --- W-TinyLFU ---------------------------------------------------------------------------------

size_t WTinyLfuPolicy::WindowCap(const TierState& t) const {
  return std::max<size_t>(1, static_cast<size_t>(window_fraction_ * t.capacity));
}

size_t WTinyLfuPolicy::ProtectedCap(const TierState& t) const {
  const size_t main = t.capacity > WindowCap(t) ? t.capacity - WindowCap(t) : 0;
  return static_cast<size_t>(options_.protected_fraction * main);
}

void WTinyLfuPolicy::Enter(const PageKey& key, Tier tier, Segment segment) {
  TierState& t = tiers_[TierIndex(tier)];
  auto& list = t.lists[segment];
  where_[key] = Where{tier, segment, ++seq_, list.insert(list.end(), key)};
  t.capacity = std::max(t.capacity, t.lists[0].size() + t.lists[1].size() + t.lists[2].size());
}

void WTinyLfuPolicy::Leave(const PageKey& key) {
  auto it = where_.find(key);
  if (it == where_.end()) return;
  tiers_[TierIndex(it->second.tier)].lists[it->second.segment].erase(it->second.it);
  where_.erase(it);
}

void WTinyLfuPolicy::MoveTo(const PageKey& key, Where& w, Segment segment) {
  TierState& t = tiers_[TierIndex(w.tier)];
  t.lists[w.segment].erase(w.it);
  w.segment = segment;
  w.it = t.lists[segment].insert(t.lists[segment].end(), key);
}

void WTinyLfuPolicy::Rebalance(Tier tier) {
  TierState& t = tiers_[TierIndex(tier)];
  while (t.lists[kWindow].size() > WindowCap(t)) {
    const PageKey k = t.lists[kWindow].front();
    Where& w = where_[k];
    MoveTo(k, w, kProbation);
    w.candidate = true;
  }
}

void WTinyLfuPolicy::Climb(bool hit) {
  if (options_.climb_period == 0) return;
  period_hits_ += hit ? 1 : 0;
  if (++period_events_ < options_.climb_period) return;
  const double rate = static_cast<double>(period_hits_) / period_events_;
  if (last_hit_rate_ >= 0 && rate < last_hit_rate_) climb_step_ = -climb_step_;
  window_fraction_ = std::clamp(window_fraction_ + climb_step_, 0.0, 0.8);
  climb_step_ *= 0.98;
  last_hit_rate_ = rate;
  period_hits_ = period_events_ = 0;
}

void WTinyLfuPolicy::OnInsert(const PageKey& key, const PageEntry& e) {
  Climb(/*hit=*/false);
  sketch_.Increment(key);
  Enter(key, e.tier, kWindow);
  Rebalance(e.tier);
}

void WTinyLfuPolicy::OnAccess(const PageKey& key, const PageEntry& e) {
  Climb(/*hit=*/true);
  sketch_.Increment(key);
  auto it = where_.find(key);
  if (it == where_.end()) {
    Enter(key, e.tier, kWindow);
    return Rebalance(e.tier);
  }
  Where& w = it->second;
  w.last = ++seq_;
  if (w.segment == kProbation) {
    w.candidate = false;
    MoveTo(key, w, kProtected);
    TierState& t = tiers_[TierIndex(w.tier)];
    // Protected over its share: its least recent page goes back to probation.
    while (t.lists[kProtected].size() > std::max<size_t>(1, ProtectedCap(t))) {
      const PageKey demoted = t.lists[kProtected].front();
      MoveTo(demoted, where_[demoted], kProbation);
    }
  } else {
    MoveTo(key, w, w.segment);
  }
}

void WTinyLfuPolicy::OnMove(const PageKey& key, Tier, const PageEntry& e) {
  Leave(key);
  Enter(key, e.tier, kWindow);
  Rebalance(e.tier);
}

void WTinyLfuPolicy::OnRemove(const PageKey& key, const PageEntry&) { Leave(key); }

void WTinyLfuPolicy::LeastValuable(Tier tier, size_t count,
                                   absl::FunctionRef<bool(const PageKey&)> eligible,
                                   std::vector<PageKey>& out) {
  TierState& t = tiers_[TierIndex(tier)];
  absl::flat_hash_set<PageKey> chosen;
  auto usable = [&](const PageKey& k) { return !chosen.contains(k) && eligible(k); };
  auto first = [&](Segment s) -> const PageKey* {
    for (const PageKey& k : t.lists[s]) {
      if (usable(k)) return &k;
    }
    return nullptr;
  };
  // The newest candidate still in probation (the window's latest leaver).
  auto newest_candidate = [&]() -> const PageKey* {
    const auto& p = t.lists[kProbation];
    for (auto it = p.rbegin(); it != p.rend(); ++it) {
      if (where_[*it].candidate && usable(*it)) return &*it;
    }
    return nullptr;
  };
  while (chosen.size() < count) {
    const PageKey* pick = nullptr;
    const PageKey* victim = first(kProbation);
    const PageKey* candidate = newest_candidate();
    if (victim != nullptr && candidate != nullptr && !(*victim == *candidate)) {
      // TinyLFU's admission: the candidate stays only if it is asked for more often than the
      // page it would displace.
      if (sketch_.Estimate(*candidate) > sketch_.Estimate(*victim)) {
        where_[*candidate].candidate = false;
        pick = victim;
      } else {
        pick = candidate;
      }
    } else {
      pick = victim;
    }
    if (pick == nullptr) pick = first(kProtected);
    if (pick == nullptr) pick = first(kWindow);
    if (pick == nullptr) break;
    out.push_back(*pick);
    chosen.insert(*pick);
  }
}

void WTinyLfuPolicy::MostValuable(Tier tier, size_t count,
                                  absl::FunctionRef<bool(const PageKey&)> eligible,
                                  std::vector<PageKey>& out) {
  const TierState& t = tiers_[TierIndex(tier)];
  size_t added = 0;
  for (Segment s : {kProtected, kProbation, kWindow}) {
    for (auto it = t.lists[s].rbegin(); it != t.lists[s].rend() && added < count; ++it) {
      if (eligible(*it)) {
        out.push_back(*it);
        ++added;
      }
    }
  }
}

double WTinyLfuPolicy::Value(const PageKey& key) const {
  auto it = where_.find(key);
  if (it == where_.end()) return 0.0;
  return sketch_.Estimate(key) + 1e-12 * static_cast<double>(it->second.last);
}

// --- Belady ------------------------------------------------------------------------------------

void NextUseOracle::Add(const PageKey& key, uint64_t when) {
  std::vector<uint64_t>& u = uses_[key];
  if (u.empty() || u.back() != when) u.push_back(when);
}

uint64_t NextUseOracle::NextUse(const PageKey& key) const {
  auto it = uses_.find(key);
  if (it == uses_.end()) return kNever;
  auto next = std::upper_bound(it->second.begin(), it->second.end(), now_);
  return next == it->second.end() ? kNever : *next;
}

double BeladyPolicy::Rank(const PageKey& key, const PageEntry& e) const {
  // Sooner next use ranks higher; among equal next uses the deeper page ranks lower. Exact in a
  // double for next uses below 2^36.
  const uint64_t next = oracle_->NextUse(key);
  return -static_cast<double>(next * 65'536 + std::min<uint32_t>(e.position, 65'535));
}

}  // namespace kvtier
