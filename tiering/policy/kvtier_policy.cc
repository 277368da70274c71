#include "tiering/policy/kvtier_policy.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <queue>
#include <utility>
#include <vector>

#include "absl/container/inlined_vector.h"

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

bool KvtierPolicy::Admits(Tier tier, const PageEntry& e) const {
  if (e.cls == PageClass::kSink || !RanksByReuse(e)) return true;
  return SavedSeconds(tier, e.stats.tokens) > 0;
}

double KvtierPolicy::ReuseTerm(const Node& p, const PageEntry& e) const {
  const double saved = SavedSeconds(e.tier, e.stats.tokens);
  if (!(saved > 0)) return kWorthlessRank;
  const double reference = options_.reference_tokens / options_.prefill_tokens_per_s;
  // Among equals (one request's pages share their last use), the page more cached pages hang
  // from stays longest and the deeper one goes first: chains are cut leaf first.
  return beta() * std::log2(p.p_chain) + std::log2(saved / reference) + p.virtual_last +
         1e-9 * static_cast<double>(TieUnits(e));
}

double KvtierPolicy::ReuseTerm(const PageKey& key, const PageEntry& e) const {
  auto it = nodes_.find(key);
  if (it != nodes_.end()) return ReuseTerm(it->second, e);
  Node fresh;
  fresh.virtual_last = reuse_.VirtualTime(0);
  fresh.p_chain = reuse_.Probability(0);
  return ReuseTerm(fresh, e);
}

double KvtierPolicy::ChainProbability(const PageEntry& e, int cls) const {
  double p = reuse_.Probability(cls);
  if (!e.parent.is_null()) {
    if (auto it = nodes_.find(e.parent); it != nodes_.end()) p = std::min(p, it->second.p_chain);
  }
  return p;
}

double KvtierPolicy::Level(double beta, double p_chain, int tier) const {
  const double height = static_cast<double>(kNumTiers - 1 - tier);
  const double c =
      beta * std::log2(p_chain) + log_saved_[tier].second + options_.hysteresis * height;
  return std::floor(c / kLevelWidth);
}

double KvtierPolicy::UndoDrop(const Node& node) const {
  // Both ranks are V + level + tie: swap the drop level for the plain one.
  const int plain = LevelIndex(Level(beta(), node.p_chain, TierIndex(node.tier())), false, 0);
  return TrueRank(node) + (plain - static_cast<int>(node.level)) * kLevelWidth;
}

void KvtierPolicy::Rerank(int only_tier) {
  std::vector<std::pair<double, PageKey>> moved;
  for (int ti = 0; ti < kNumTiers; ++ti) {
    if (only_tier >= 0 && ti != only_tier) continue;
    TierSets& t = tiers_[ti];
    moved.clear();
    for (int l = 0; l < kPrefixLevels; ++l) {
      if (t.levels[l].empty()) continue;
      t.heads.erase({t.levels[l].begin()->first, static_cast<uint16_t>(l)});
      moved.insert(moved.end(), t.levels[l].begin(), t.levels[l].end());
      t.levels[l].clear();
    }
    for (const auto& [rank, key] : moved) {
      Node& node = nodes_.find(key)->second;
      const int level = LevelIndex(Level(beta(), node.p_chain, ti), DropOrdered(ti), node.count);
      // V and the tie-break (leaf first) stay; only the level moves.
      node.set_rank = (node.dirty ? TrueRank(node) : rank) +
                      (level - static_cast<int>(node.level)) * kLevelWidth;
      node.dirty = false;
      node.level = node.set_level = static_cast<uint32_t>(level);
      Insert(static_cast<Tier>(ti), level, node.set_rank, key);
    }
  }
}

std::pair<double, int> KvtierPolicy::RankAndLevel(const Node& node, const PageEntry& e,
                                                  double log_p) const {
  const double height = static_cast<double>(kNumTiers - 1 - TierIndex(e.tier));
  if (RanksByReuse(e) && e.cls != PageClass::kSink) {
    // log2(saved / reference) per tier, for the last page size seen there (nearly all pages of
    // a deployment are full blocks of one size).
    auto& [tokens, log_saved] = log_saved_[TierIndex(e.tier)];
    if (tokens != e.stats.tokens) {
      const double reference = options_.reference_tokens / options_.prefill_tokens_per_s;
      const double saved = SavedSeconds(e.tier, e.stats.tokens);
      tokens = e.stats.tokens;
      log_saved = saved > 0 ? std::log2(saved / reference) : -HUGE_VAL;
    }
    if (log_saved > -HUGE_VAL) {
      if (std::isnan(log_p)) log_p = std::log2(node.p_chain);
      const double c = beta() * log_p + log_saved + options_.hysteresis * height;
      const int level =
          LevelIndex(std::floor(c / kLevelWidth), DropOrdered(TierIndex(e.tier)), node.count);
      // Among equals (one request's pages share their last use), the page more cached pages
      // hang from stays longest and the deeper one goes first: chains are cut leaf first.
      const double tie = 1e-9 * static_cast<double>(TieUnits(e));
      const int centred = level - kPrefixLevels / 2;  // levels below the middle are negative
      return {centred * kLevelWidth + node.virtual_last + tie, level};
    }
    return {kWorthlessRank + options_.hysteresis * height, kMiscLevel};
  }
  const double base = e.cls == PageClass::kSink ? kSinkRank : 0.0;
  if (RanksByReuse(e))
    return {base + ReuseTerm(node, e) + options_.hysteresis * height, kMiscLevel};
  return {base + options_.frequency_weight * FrequencyTerm(e.stats) +
              options_.utility_weight * UtilityTerm(e) + options_.hysteresis * height,
          kMiscLevel};
}

void KvtierPolicy::Insert(Tier tier, int level, double rank, const PageKey& key) {
  TierSets& t = tiers_[TierIndex(tier)];
  Ordered& set = t.levels[level];
  const std::pair<double, PageKey> entry{rank, key};
  // A page's rank within its level is its last use: it nearly always goes to the level's end,
  // where the hint saves the descent from the root, and the level's head (its first entry, a
  // cache line the access would otherwise touch) stays.
  if (!set.empty() && *std::prev(set.end()) < entry) {
    set.insert(set.end(), entry);
  } else {
    const bool new_head = set.empty() || entry < *set.begin();
    if (new_head && !set.empty()) {
      t.heads.erase({set.begin()->first, static_cast<uint16_t>(level)});
    }
    set.insert(entry);
    if (new_head) t.heads.insert({rank, static_cast<uint16_t>(level)});
  }
  t.lowest = std::min(t.lowest, level);
  t.highest = std::max(t.highest, level);
}

void KvtierPolicy::Erase(Tier tier, int level, double rank, const PageKey& key) {
  TierSets& t = tiers_[TierIndex(tier)];
  Ordered& set = t.levels[level];
  auto it = set.find({rank, key});
  if (it == set.end()) return;
  if (it == set.begin()) {
    t.heads.erase({rank, static_cast<uint16_t>(level)});
    it = set.erase(it);
    if (it != set.end()) t.heads.insert({it->first, static_cast<uint16_t>(level)});
  } else {
    set.erase(it);
  }
}

void KvtierPolicy::Place(const PageKey& key, Node& node, const PageEntry& e, bool fresh,
                         double log_p) {
  if (const int ti = TierIndex(e.tier); ti > drop_tier_) {
    // A page below the drop tier: that tier is the lowest now; the old one gets the plain order
    // (unless it is the top tier under priced swaps, which keeps the drop key).
    const int old = drop_tier_;
    drop_tier_ = ti;
    if (old >= 0 && !DropOrdered(old)) Rerank(old);
  }
  const auto [rank, level] = RankAndLevel(node, e, log_p);
  if (!fresh) {
    if (node.tier() == e.tier) {
      if (level == static_cast<int>(node.set_level) && rank == node.set_rank) {
        // The entry already stands where the page ranks.
        node.tie = TieUnits(e);
        node.level = node.set_level;
        node.dirty = false;
        return;
      }
      if (TierIndex(e.tier) == kDeferredTier && level != kMiscLevel &&
          node.set_level != kMiscLevel && rank > node.set_rank) {
        // Deferred: the entry stays where it is, below the page's rank, until it comes up as a
        // victim (LeastValuable moves it then). A hit in the top tier costs no set update.
        node.tie = TieUnits(e);
        node.level = static_cast<uint32_t>(level);
        node.dirty = true;
        ++deferred_hits_;
        return;
      }
    }
    Erase(node.tier(), static_cast<int>(node.set_level), node.set_rank, key);
  }
  if (fresh) {
    ++turnover_[TierIndex(e.tier)].pages;
  } else if (node.tier() != e.tier) {
    --turnover_[TierIndex(node.tier())].pages;
    ++turnover_[TierIndex(e.tier)].pages;
  }
  turnover_[TierIndex(e.tier)].held = true;
  node.set_rank = rank;
  node.tie = TieUnits(e);
  node.dirty = false;
  node.level = node.set_level = static_cast<uint32_t>(level);
  node.tier_bits = static_cast<uint32_t>(TierIndex(e.tier));
  Insert(e.tier, level, rank, key);
}

void KvtierPolicy::Observe(const PageKey& key, const PageEntry& e) {
  nodes_.prefetch(key);
  if (e.stats.stat_reports > 0) attention_namespaces_.insert(e.ns);
  const uint64_t now = e.stats.last_access_ns;
  // The parent's chain probability caps the page's. last_observed_ stays valid after the
  // parent is evicted (it often is, by this very request's next Put under a small cache):
  // forgetting it made a child of an evicted parent look more reusable than its chain, so the
  // cache churned on the tails of broken chains (up to 1.6 points of hit share on the public
  // trace at beta 1, and what made a larger beta pay: bench/RESULTS.md).
  double parent_p = 1.0, parent_log_p = 0.0;  // NaN: log2(parent_p) not computed yet
  if (!e.parent.is_null()) {
    if (e.parent == last_observed_) {
      parent_p = last_p_chain_;
      parent_log_p = last_log_p_chain_;
    } else if (auto it = nodes_.find(e.parent); it != nodes_.end()) {
      parent_p = it->second.p_chain;
      parent_log_p = kUnknownLogP;
    }
  }
  auto [it, fresh] = nodes_.try_emplace(key);
  Node& node = it->second;
  FrequencySketch& sketch = reuse_.sketch();
  uint32_t count;
  if (fresh) {
    count = sketch.Increment(key);  // what the sketch remembers of the page, plus this access
  } else {
    sketch.Tick();
    const uint32_t halvings = static_cast<uint8_t>(sketch.epoch() - node.count_epoch);
    count = std::min<uint32_t>((halvings >= 8 ? 0u : node.count >> halvings) + 1, 15);
  }
  node.count = static_cast<uint8_t>(count);
  node.count_in_sketch = fresh;
  node.count_epoch = static_cast<uint8_t>(sketch.epoch());
  const int cls = reuse_.ObserveCounted(key, e, now, count);
  // p = min(P(cls), the parent's), with its log2 taken from whichever side it is (as std::min
  // picks: the parent's only if strictly smaller).
  const auto [p_cls, log_p_cls] = reuse_.ProbabilityAndLog(cls);
  const bool own = !(parent_p < p_cls);
  const double p = own ? p_cls : parent_p;
  const double log_p =
      own ? log_p_cls : (std::isnan(parent_log_p) ? std::log2(parent_p) : parent_log_p);
  node.virtual_last = reuse_.VirtualTime(now);
  virtual_now_ = std::max(virtual_now_, node.virtual_last);
  node.cls = static_cast<uint32_t>(cls);
  node.p_chain = p;
  last_observed_ = key;
  last_p_chain_ = p;
  last_log_p_chain_ = log_p;
  Place(key, node, e, fresh, log_p);
  if (options_.adaptive_beta && RanksByReuse(e) && e.cls != PageClass::kSink) {
    // The duel samples whole chains: a page inherits its root from its parent, which a request
    // observes just before it.
    const bool continues = !e.parent.is_null() && e.parent == duel_last_;
    const uint64_t root = continues ? duel_root_ : key.lo;
    const bool sampled = duel_.Sampled(root);
    duel_.Count(sampled);
    duel_last_ = key;
    duel_root_ = root;
    if (!sampled) return;
    const double reference = options_.reference_tokens / options_.prefill_tokens_per_s;
    const double saved = SavedSeconds(Tier::kHbm, e.stats.tokens);
    if (saved > 0) {
      const double before = beta();
      duel_.Observe(key, root, continues, node.virtual_last, log_p, std::log2(saved / reference),
                    1e-9 * static_cast<double>(TieUnits(e)), e.stats.tokens, nodes_.size());
      if (beta() != before && nodes_.size() <= options_.max_eager_rerank_pages) Rerank(-1);
    }
  }
}

void KvtierPolicy::OnInsert(const PageKey& key, const PageEntry& e) {
  // A new page reads its count from the sketch: start that miss before the node's.
  reuse_.Prefetch(key);
  Observe(key, e);
}

void KvtierPolicy::OnAccess(const PageKey& key, const PageEntry& e) { Observe(key, e); }

void KvtierPolicy::OnUpdate(const PageKey& key, const PageEntry& e) {
  if (e.stats.stat_reports > 0) attention_namespaces_.insert(e.ns);
  auto it = nodes_.find(key);
  if (it == nodes_.end()) {
    // Not seen before (a store reports an insertion first; kept for robustness).
    Node fresh;
    fresh.virtual_last = reuse_.VirtualTime(0);
    fresh.p_chain = reuse_.Probability(0);
    it = nodes_.emplace(key, fresh).first;
    Place(key, it->second, e, /*fresh=*/true);
    return;
  }
  // A fork (a new cached child) changes the page's class, not its last use.
  const int cls = reuse_.ClassOf(it->second.count, e);
  it->second.cls = static_cast<uint32_t>(cls);
  it->second.p_chain = ChainProbability(e, cls);
  if (key == last_observed_) {
    last_p_chain_ = it->second.p_chain;
    last_log_p_chain_ = std::log2(last_p_chain_);
  }
  Place(key, it->second, e, /*fresh=*/false);
}

void KvtierPolicy::Departed(Tier tier) {
  Turnover& t = turnover_[TierIndex(tier)];
  const double gap = virtual_now_ - t.last_departure;
  t.last_departure = virtual_now_;
  if (!t.departed) {
    t.departed = true;  // the first departure only starts the clock
    return;
  }
  if (t.gap < 0) {
    t.gap = gap;
    return;
  }
  // The mean over about the last turnover: one gap weighs 1 / (pages in the tier).
  const double a = 1.0 / std::max<double>(static_cast<double>(t.pages), 1.0);
  t.gap += a * (gap - t.gap);
}

double KvtierPolicy::Residency(Tier tier) const {
  const Turnover& t = turnover_[TierIndex(tier)];
  if (t.gap < 0) return HUGE_VAL;
  // Little's law: pages in the tier x the mean time between departures.
  return static_cast<double>(t.pages) * t.gap;
}

double KvtierPolicy::SwapPrice(Tier upper) const {
  const int below = TierBelow(TierIndex(upper));
  if (below < 0) return 0.0;
  const double residency = Residency(upper);
  if (!(residency < HUGE_VAL)) return 0.0;
  auto load = [this](int t) {
    return 1.0 / (t == TierIndex(Tier::kHbm)    ? options_.hbm_gbps
                  : t == TierIndex(Tier::kDram) ? options_.dram_gbps
                                                : options_.nvme_gbps);
  };
  const double lower = load(below), gain = lower - load(TierIndex(upper));
  if (!(gain > 0)) return HUGE_VAL;  // the upper tier is no faster: never worth a move
  // Two moves, each a load over the lower link, in hits of (lower - upper) each, and the hits per
  // horizon that the page's residency above turns into hits.
  return 2 * lower / gain * options_.reuse.horizon_taus / std::max(residency, 1e-9);
}

double KvtierPolicy::SwapValue(const Node& node) const {
  const double horizon = options_.reuse.horizon_taus;
  // P(reuse within the horizon) now, capped where it stops resolving the rate (one reuse a tau).
  const double p = std::min(node.p_chain * std::exp2(-(virtual_now_ - node.virtual_last)),
                            1.0 - std::exp(-horizon));
  double value = -std::log1p(-p);  // Poisson: reuses per horizon
  for (int t = TierIndex(node.tier()); t >= 0 && TierBelow(t) >= 0; t = TierBelow(t)) {
    value += SwapPrice(static_cast<Tier>(t));
  }
  return value;
}

void KvtierPolicy::OnMove(const PageKey& key, Tier from, const PageEntry& e) {
  Departed(from);
  auto it = nodes_.find(key);
  if (it == nodes_.end()) return OnUpdate(key, e);
  Place(key, it->second, e, /*fresh=*/false);
}

void KvtierPolicy::OnRemove(const PageKey& key, const PageEntry&) {
  // A page hit while cached writes its count back to the sketch: start that miss before the
  // node's.
  reuse_.Prefetch(key);
  auto it = nodes_.find(key);
  if (it == nodes_.end()) return;
  // The sketch remembers the count of a page that leaves (it may be asked for again).
  const FrequencySketch& sketch = reuse_.sketch();
  const uint32_t halvings = static_cast<uint8_t>(sketch.epoch() - it->second.count_epoch);
  // (Nothing to write for a page never hit while cached: the sketch was raised to its count
  // when it arrived, and only halves since.)
  if (halvings < 8 && !it->second.count_in_sketch) {
    reuse_.sketch().Remember(key, it->second.count >> halvings);
  }
  Erase(it->second.tier(), static_cast<int>(it->second.set_level), it->second.set_rank, key);
  Departed(it->second.tier());
  --turnover_[TierIndex(it->second.tier())].pages;
  nodes_.erase(it);
}

void KvtierPolicy::Settle(const PageKey& key, Node& node) {
  const double rank = TrueRank(node);
  Erase(node.tier(), static_cast<int>(node.set_level), node.set_rank, key);
  node.set_rank = rank;
  node.set_level = node.level;
  node.dirty = false;
  Insert(node.tier(), static_cast<int>(node.level), rank, key);
}

void KvtierPolicy::LeastValuable(Tier tier, size_t count,
                                 absl::FunctionRef<bool(const PageKey&)> eligible,
                                 std::vector<PageKey>& out) {
  // A merge of the levels in rank order: a level joins once its head is the smallest rank left.
  // In the deferred tier an entry may stand below its page's rank (never above): an unsettled
  // page met in the merge joins it again at its true rank (a local heap, the sets untouched, so
  // the cursors stay valid and nothing is walked twice, however many pinned pages lie ahead), and
  // every page met that way is moved to its rank once the walk is over.
  using Entry = std::pair<double, PageKey>;
  const int ti = TierIndex(tier);
  const TierSets& t = tiers_[ti];
  struct Cursor {
    Ordered::const_iterator it, end;
  };
  absl::InlinedVector<Cursor, 8> active;
  std::priority_queue<Entry, std::vector<Entry>, std::greater<Entry>> rejoined;
  std::vector<PageKey> unsettled;
  auto head = t.heads.begin();
  size_t added = 0;
  while (added < count) {
    size_t best = active.size();
    for (size_t i = 0; i < active.size(); ++i) {
      if (best == active.size() || *active[i].it < *active[best].it) best = i;
    }
    const Entry* front = best < active.size() ? &*active[best].it : nullptr;
    const Entry* again = rejoined.empty() ? nullptr : &rejoined.top();
    if (head != t.heads.end() && (front == nullptr || head->first <= front->first) &&
        (again == nullptr || head->first <= again->first)) {
      const Ordered& set = t.levels[head->second];
      active.push_back(Cursor{set.begin(), set.end()});
      ++head;
      continue;
    }
    if (front == nullptr && again == nullptr) break;
    if (again != nullptr && (front == nullptr || *again < *front)) {
      const PageKey key = again->second;
      rejoined.pop();
      if (eligible(key)) {
        out.push_back(key);
        ++added;
      }
      continue;
    }
    Cursor& c = active[best];
    const PageKey key = c.it->second;
    bool decided = true;
    if (ti == kDeferredTier) {
      const Node& node = nodes_.find(key)->second;
      if (node.dirty) {
        rejoined.emplace(TrueRank(node), key);
        unsettled.push_back(key);
        decided = false;
      }
    }
    if (decided && eligible(key)) {
      out.push_back(key);
      ++added;
    }
    if (++c.it == c.end) active.erase(active.begin() + static_cast<ptrdiff_t>(best));
  }
  for (const PageKey& key : unsettled) Settle(key, nodes_.find(key)->second);
}

void KvtierPolicy::MostValuable(Tier tier, size_t count,
                                absl::FunctionRef<bool(const PageKey&)> eligible,
                                std::vector<PageKey>& out) {
  // Called once per planning pass, not per access: a merge over every non-empty level's end.
  // The store asks it only of tiers that have one above (never of the deferred one); asked of
  // the deferred tier, it first settles every page there (a pass over the tier).
  if (TierIndex(tier) == kDeferredTier) {
    std::vector<PageKey> unsettled;
    for (const Ordered& level : tiers_[kDeferredTier].levels) {
      for (const auto& [rank, key] : level) {
        if (nodes_.find(key)->second.dirty) unsettled.push_back(key);
      }
    }
    for (const PageKey& key : unsettled) Settle(key, nodes_.find(key)->second);
  }
  const TierSets& t = tiers_[TierIndex(tier)];
  struct Cursor {
    Ordered::const_reverse_iterator it, end;
  };
  std::vector<Cursor> active;
  for (int l = t.lowest; l <= t.highest; ++l) {
    if (!t.levels[l].empty()) active.push_back(Cursor{t.levels[l].rbegin(), t.levels[l].rend()});
  }
  size_t added = 0;
  while (added < count && !active.empty()) {
    size_t best = 0;
    for (size_t i = 1; i < active.size(); ++i) {
      if (*active[best].it < *active[i].it) best = i;
    }
    Cursor& c = active[best];
    if (eligible(c.it->second)) {
      out.push_back(c.it->second);
      ++added;
    }
    if (++c.it == c.end) active.erase(active.begin() + static_cast<ptrdiff_t>(best));
  }
}

double KvtierPolicy::OrderKey(const PageKey& key) const {
  auto it = nodes_.find(key);
  return it == nodes_.end() ? 0.0 : TrueRank(it->second);
}

double KvtierPolicy::Value(const PageKey& key) const {
  auto it = nodes_.find(key);
  if (it == nodes_.end()) return 0.0;
  const Node& node = it->second;
  if (options_.priced_swaps && node.level < kMiscLevel) return SwapValue(node);
  const bool dropped = node.level < kMiscLevel && DropOrdered(TierIndex(node.tier()));
  return dropped ? UndoDrop(node) : TrueRank(node);
}

}  // namespace kvtier
