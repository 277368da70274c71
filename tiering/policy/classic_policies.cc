#include "tiering/policy/classic_policies.h"

#include <algorithm>

namespace kvtier {

// --- LFU ---------------------------------------------------------------------------------------

double LfuPolicy::Rank(const PageKey&, const PageEntry& e) const {
  // Count first; recency only breaks ties (ns scaled into [0, 1) for any run shorter than ~11
  // days of store clock, far finer than one access).
  return static_cast<double>(e.stats.access_count) +
         static_cast<double>(e.stats.last_access_ns) * 1e-15;
}

// --- StreamingLLM ------------------------------------------------------------------------------

double StreamingLlmPolicy::Rank(const PageKey&, const PageEntry& e) const {
  const bool sink = options_.sink_tokens > 0 &&
                    uint64_t{e.position} * options_.tokens_per_page < options_.sink_tokens;
  // Sinks above everything; the rest by write time, newest highest (the recent window).
  return (sink ? 1e30 : 0.0) + static_cast<double>(e.stats.insert_ns);
}

// --- H2O ---------------------------------------------------------------------------------------

void H2oPolicy::Observe(const PageKey& key, const PageEntry& e) {
  State& s = state_[key];
  if (e.stats.stat_reports > s.reports) {
    // Invert the store's EWMA step to recover the raw mass of this report.
    const float ewma = e.stats.attention_mass;
    const double sample =
        s.reports == 0 ? ewma : s.last_ewma + (ewma - s.last_ewma) / options_.ewma_alpha;
    s.accumulated += std::max(0.0, sample);
    s.reports = e.stats.stat_reports;
    s.last_ewma = ewma;
  }
  s.last = e;
}

void H2oPolicy::OnInsert(const PageKey& key, const PageEntry& e) {
  Observe(key, e);
  state_[key].recent = true;
  window_.push_back(key);
  ++inserted_;
  Place(key, e);
  while (window_.size() > options_.recent_pages) {
    const PageKey old = window_.front();
    window_.pop_front();
    if (auto it = state_.find(old); it != state_.end()) {
      it->second.recent = false;
      Place(old, it->second.last);  // leaves the window: now ranked by attention alone
    }
  }
}

void H2oPolicy::OnAccess(const PageKey& key, const PageEntry& e) {
  Observe(key, e);
  Place(key, e);
}
void H2oPolicy::OnUpdate(const PageKey& key, const PageEntry& e) {
  Observe(key, e);
  Place(key, e);
}
void H2oPolicy::OnMove(const PageKey& key, Tier, const PageEntry& e) {
  Observe(key, e);
  Place(key, e);
}
void H2oPolicy::OnRemove(const PageKey& key, const PageEntry&) {
  state_.erase(key);
  std::erase(window_, key);
  Forget(key);
}

double H2oPolicy::accumulated(const PageKey& key) const {
  auto it = state_.find(key);
  return it == state_.end() ? 0.0 : it->second.accumulated;
}

double H2oPolicy::Rank(const PageKey& key, const PageEntry& e) const {
  auto it = state_.find(key);
  const bool recent = it != state_.end() && it->second.recent;
  const double acc = it != state_.end() ? it->second.accumulated : 0.0;
  // The window first; then accumulated attention; write time only breaks ties (pages that never
  // received a report, e.g. on a prefix-reuse trace), scaled far below one report's mass.
  return (recent ? 1e12 : 0.0) + acc + static_cast<double>(e.stats.insert_ns) * 1e-20;
}

// --- ARC ---------------------------------------------------------------------------------------

void ArcPolicy::Remember(Ghost& g, const PageKey& key, size_t capacity) {
  const uint64_t seq = g.next++;
  g.keys[key] = seq;
  g.order.push_back({key, seq});
  while (g.keys.size() > std::max<size_t>(capacity, 1) && !g.order.empty()) {
    const auto [old, old_seq] = g.order.front();
    g.order.pop_front();
    if (auto it = g.keys.find(old); it != g.keys.end() && it->second == old_seq) g.keys.erase(it);
  }
  // Stale entries cannot outnumber live ones by much: compact when they would.
  if (g.order.size() > 2 * std::max<size_t>(capacity, 1) + 16) {
    std::erase_if(g.order, [&g](const std::pair<PageKey, uint64_t>& e) {
      auto it = g.keys.find(e.first);
      return it == g.keys.end() || it->second != e.second;
    });
  }
}

void ArcPolicy::Enter(const PageKey& key, const PageEntry& e) {
  TierState& t = tiers_[TierIndex(e.tier)];
  bool frequent = e.stats.access_count >= 2;
  // A ghost hit means the list it was evicted from was too small: move the target towards it.
  const double b1 = static_cast<double>(t.b1.keys.size());
  const double b2 = static_cast<double>(t.b2.keys.size());
  if (t.b1.keys.erase(key) > 0) {
    t.p = std::min<double>(static_cast<double>(t.capacity), t.p + std::max(1.0, b2 / b1));
    frequent = true;
  } else if (t.b2.keys.erase(key) > 0) {
    t.p = std::max(0.0, t.p - std::max(1.0, b1 / b2));
    frequent = true;
  }
  // The erased key stays in the ghost's deque as a stale entry (see Ghost).
  const uint64_t last = e.stats.last_access_ns;
  (frequent ? t.t2 : t.t1).insert({last, key});
  where_[key] = Where{e.tier, frequent, last};
  t.capacity = std::max(t.capacity, t.t1.size() + t.t2.size());
}

void ArcPolicy::Leave(const PageKey& key) {
  auto it = where_.find(key);
  if (it == where_.end()) return;
  TierState& t = tiers_[TierIndex(it->second.tier)];
  if (it->second.frequent) {
    t.t2.erase({it->second.last, key});
    Remember(t.b2, key, t.capacity);
  } else {
    t.t1.erase({it->second.last, key});
    Remember(t.b1, key, t.capacity);
  }
  where_.erase(it);
}

void ArcPolicy::OnInsert(const PageKey& key, const PageEntry& e) { Enter(key, e); }

void ArcPolicy::OnAccess(const PageKey& key, const PageEntry& e) {
  auto it = where_.find(key);
  if (it == where_.end()) return Enter(key, e);
  TierState& t = tiers_[TierIndex(it->second.tier)];
  (it->second.frequent ? t.t2 : t.t1).erase({it->second.last, key});
  // A hit while cached: the page joins (or stays in) the frequency list, at its MRU end.
  it->second = Where{e.tier, true, e.stats.last_access_ns};
  t.t2.insert({e.stats.last_access_ns, key});
}

void ArcPolicy::OnUpdate(const PageKey&, const PageEntry&) {}  // ARC ignores attention

void ArcPolicy::OnMove(const PageKey& key, Tier, const PageEntry& e) {
  Leave(key);
  Enter(key, e);
}

void ArcPolicy::OnRemove(const PageKey& key, const PageEntry&) { Leave(key); }

void ArcPolicy::LeastValuable(Tier tier, size_t count,
                              absl::FunctionRef<bool(const PageKey&)> eligible,
                              std::vector<PageKey>& out) {
  const TierState& t = tiers_[TierIndex(tier)];
  auto i1 = t.t1.begin();
  auto i2 = t.t2.begin();
  // Sizes as they would be after the victims chosen so far left.
  double n1 = static_cast<double>(t.t1.size());
  size_t added = 0;
  while (added < count && (i1 != t.t1.end() || i2 != t.t2.end())) {
    const bool from_t1 = i2 == t.t2.end() || (i1 != t.t1.end() && n1 > t.p);
    const PageKey key = from_t1 ? (i1++)->second : (i2++)->second;
    if (from_t1) n1 -= 1;
    if (!eligible(key)) continue;
    out.push_back(key);
    ++added;
  }
}

void ArcPolicy::MostValuable(Tier tier, size_t count,
                             absl::FunctionRef<bool(const PageKey&)> eligible,
                             std::vector<PageKey>& out) {
  const TierState& t = tiers_[TierIndex(tier)];
  size_t added = 0;
  for (const Ordered* list : {&t.t2, &t.t1}) {
    for (auto it = list->rbegin(); it != list->rend() && added < count; ++it) {
      if (eligible(it->second)) {
        out.push_back(it->second);
        ++added;
      }
    }
  }
}

double ArcPolicy::Value(const PageKey& key) const {
  auto it = where_.find(key);
  return it == where_.end() ? 0.0 : static_cast<double>(it->second.last);
}

}  // namespace kvtier
