// KvtierPolicy: sink-aware frequency x utility ranking (DESIGN.md §4).
//
// Every page that is not a sink is ranked by
//
//   rank = w_f * F + w_u * U + hysteresis * (tiers above the bottom the page sits in)
//
// F is the decayed access frequency in log form. A frequency decaying with half-life H, last
// reported as f at time t, is f * 2^-(now - t)/H at `now`; its log2 is log2(f) + t/H - now/H. The
// last term is the same for every page, so ranking by F = log2(f) + t/H orders pages exactly as
// their decayed frequencies at any instant, and F only changes when the page is accessed — which
// is what RankedPolicy needs (a rank must change only on a reported event).
//
// U is the page's utility, normalised and in log2 form, from whichever source the workload gives:
// - attention (decode): u = (mass / reference_mass) * (0.5 + 0.5 * breadth) *
//   min(1, value_norm / reference_value_norm). Value norm multiplies: a page whose values are near
//   zero changes the output little however much mass it receives (value-state drain).
// - prefix reuse: u = (tokens / reference_tokens) * (1 + cached_children). A page is worth the
//   recompute it saves, and a parent is worth more than any one child (a child is useless
//   without it), so chains are evicted leaf first as in SGLang's radix cache.
// U = log2(max(u, utility_floor)). Summing weighted logs makes the score a weighted geometric
// mean of the normalised signals: scale-free, and the only combination that stays time-invariant
// under exponential decay.
//
// Prefix pages (no attention report, in a namespace that never reported attention) are ranked by
// what they are predicted to save instead (tiering/policy/reuse_estimator.h):
//
//   rank = beta * log2(P(reuse within horizon | class)) + log2(saved(tier) / saved_ref)
//          + V(last access)
//
// beta weighs the learned reuse probability (the frequency side) against recency (V); it is
// learned online by racing shadow caches on a sample of the chains (score_duel.h), as ARC and
// S3-FIFO adapt their recency/frequency split.
//
// P is learned online per class (asked-for count, depth, fork, partial block); V is virtual time
// in units of the learned inter-reuse gap tau, so the estimate decays as p * 2^-(age / tau);
// saved(tier) = recompute time - load time from that tier (the prefill the page saves if it is
// served from there). A tier whose load costs as much as recomputing the page saves nothing:
// Admits() refuses it, for new pages and demotions alike, and the rank uses the same estimate,
// so admission, eviction and promotion agree. Decode namespaces keep the attention ranking below
// for pages not yet reported, as before.
//
// Two refinements (issue 14, session 13), both measured in bench/RESULTS.md:
// - When beta moves, every cached prefix page is re-ranked with the new beta (O(n log n), at most
//   once per duel period; it runs under the store's lock, about as long as one access per page,
//   so a very large store pauses for it: not measured beyond the simulator's 44 K pages). Ranks
//   placed under different betas are not comparable: a cache that kept them mixed ranked old
//   pages by one score and new pages by another, which cost more than either beta alone (public
//   trace, one tier, 5 % HBM: 16.45 % hit share with the duel against 17.06 % at a fixed beta 2
//   and 16.79 % at a fixed 4; 16.98 % re-ranked).
// - The lowest tier of a hierarchy (the one a page leaves for good) orders its prefix pages by
//   a drop key instead: V + drop_reuse_weight x (beta x log2(P) + ...) + drop_proven_bonus if the
//   page has been asked for at least twice (its time-invariant part on the same 1/16 grid, so
//   the drop tier keeps the levels below). A page dropped there is lost, and by the time it gets
//   there it has outlived several inter-reuse gaps, so whether it was ever reused says more
//   than its recency; upper tiers keep the score above (their victims are only demoted). The
//   drop tier is the lowest tier that has held a page: HBM in a one-tier cache, where it is
//   worth as much (17.17 % against 16.98 % at 5 % HBM, 28.58 against 27.72 % at 10 %). Value()
//   undoes the drop key, so the planner compares the same rank across tiers (without priced
//   swaps; with them, Value is the swap's worth, see below).
//   Under priced swaps the top tier (HBM) orders by the drop key as well: a page demoted from it
//   seldom comes back (a swap up must pay two moves; public trace, tiered, 20 % HBM: 817 of
//   37,378 pages that left HBM), so HBM's victim order alone decides what HBM serves, as the drop
//   tier's decides what the cache serves (bench/RESULTS.md, Session 15: public tiered 1,674.3 ->
//   1,658.0 modeled s at 20 %, generated 554.0 -> 550.8 at 2 %, hit share equal or higher in
//   every tiered cell). DRAM keeps the plain rank: the drop key there too gains seconds but costs
//   0.01 point of hit share at 5 % HBM on the public trace.
//
// Sinks (class kSink, from any source) rank above every other page: outside the reserved slots
// (when the reserve is full or not configured) they still should not be the first victims.
// Hysteresis is a bonus per tier of height, so a lower-tier page must beat the page it would
// displace by `hysteresis` before the planner swaps them (no bouncing on noise).
//
// Priced swaps (issue 14, session 15; `priced_swaps`, default on). The planner swaps a page X of a
// lower tier with the upper tier's victim Y when Value(X) > Value(Y). For prefix pages Value is not
// the rank but what the swap is worth, in the cost model the rank already uses: X served from the
// upper tier saves (load_lower - load_upper) on each of its hits there, Y loses as much on each of
// its, and the swap costs two page moves over the link, each as long as one load from the lower
// tier. So the swap pays when
//
//   (hits_X - hits_Y) x (load_lower - load_upper) > 2 x load_lower,
//
// with hits = the page's reuse rate times its expected residency in the upper tier. The rate comes
// from the estimate the rank uses: the page's P(reuse within the horizon H) decayed by its age,
// p x 2^-(age / tau), read as a Poisson process (P = 1 - e^(-rate x H)), so rate x H = -ln(1 - p),
// capped at horizon_taus (one reuse per tau: the estimate cannot resolve faster). The residency
// comes from Little's law: pages in the tier x the mean gap between its departures, averaged over
// the last turnover (one gap weighs 1 / pages). Hence Value = -ln(1 - p) + the price of every
// boundary below the page's tier, price = 2 x load_lower / (load_lower - load_upper) x H /
// residency(upper): comparing two adjacent tiers' pages is exactly the inequality above.
// A move costs as much as one load over the same link, so a swap pays only for a page that will
// be read about twice more from the upper tier than its victim: the rank's fixed hysteresis let
// through swaps that never paid back (generated trace, 2 % HBM: 7,995 DRAM->HBM swaps bought 0.4
// extra HBM hits each), and held back ones that did where the upper tier keeps pages long.
// Decode-ranked pages and sinks keep Value = rank.
//
// Data structure (cost per access, measured by kvtier-bench-core's PolicyAccess): one hash map
// holds each page's record and its current rank, so an access costs one probe; per tier, pages
// sit in ordered sets by level of their rank's time-invariant part (see TierSets), so an access
// appends at a level's end, and victims come from a merge of the levels' fronts. In the top
// tier a hit that raises the page's rank (nearly every hit: V only grows) does not move its
// entry at all: the entry stays below the page's rank, a lower bound, and the page is marked;
// when a marked entry comes up first in LeastValuable's merge it is moved to its rank then
// (once, however many hits it had), and the merge goes on. Victims come out in exactly the
// order an eager update gives (the simulator's tables are identical to the digit), and a hit
// costs the record's probe and the rank's arithmetic, no ordered-set update: less than LRU's
// (bench/RESULTS.md, Session 14). The store asks MostValuable only of lower tiers; asked of
// the top one it settles every marked page first.
//
// Thread model: as every PlacementPolicy, called only under the store's lock.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <optional>
#include <utility>

#include "absl/container/btree_set.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "tiering/policy.h"
#include "tiering/policy/reuse_estimator.h"
#include "tiering/policy/score_duel.h"

namespace kvtier {

struct KvtierPolicyOptions {
  // w_f: weight of the log-frequency term. Default 1.
  double frequency_weight = 1.0;
  // w_u: weight of the log-utility term. Default 1 (equal say for frequency and utility).
  double utility_weight = 1.0;
  // Half-life of the decayed frequency; must equal StoreOptions::frequency_half_life_ms, since
  // the store decays the count and this policy ranks it. Default 30 s, as the store's.
  double frequency_half_life_ms = 30'000;
  // Rank bonus per tier above the bottom (log2 units). Default 2: a candidate must be 4x more
  // valuable than the page it displaces, because a swap costs two page moves over PCIe (or the
  // drive) and has to pay them back; on the example prefix trace 0.5 migrated ~25 % more bytes
  // for no fewer misses (bench/RESULTS.md). With priced_swaps (the default) it decides only the
  // swaps of decode-ranked pages and sinks; prefix pages' swaps are priced instead.
  double hysteresis = 2.0;
  // Prefix pages: the planner's swaps priced in the cost model (see above). false: Value is the
  // rank, as before session 15 (prefix ranks with the hysteresis above).
  bool priced_swaps = true;
  // Normalisers: the mass of a page receiving a uniform share among ~100 pages, the mean value
  // norm, one page's tokens. Only ratios matter for the order; these keep U near 0 for an
  // ordinary page so w_f and w_u weigh comparable magnitudes.
  double reference_mass = 0.01;
  double reference_value_norm = 1.0;
  double reference_tokens = 16;
  // Smallest utility considered, so log2 stays finite (a page with no signal at all). 1e-3.
  double utility_floor = 1e-3;
  // Prefix pages: the reuse estimator's options, and the cost model that prices what a page saves
  // in each tier (defaults: Llama-3-8B bf16 on one H100 SXM, as the simulator's CostModel).
  ReuseEstimatorOptions reuse;
  // How beta, the weight of log2(P) against recency in the prefix rank, is learned
  // (score_duel.h). `adaptive_beta` false keeps beta at duel.initial_beta. Default: learned.
  bool adaptive_beta = true;
  ScoreDuelOptions duel;
  // The lowest tier's drop key (see above): weight of the time-invariant score against recency,
  // and the bonus, in units of tau, of a page asked for at least twice. Defaults 0.5 and 16,
  // picked from a small grid looking at both prefix traces (bench/RESULTS.md, Session 13): 0.75
  // loses a tiered column to ARC, 1 and 0 (the plain order) three; 0.25, and bonuses 8 or 64,
  // also keep every column to the second decimal.
  double drop_reuse_weight = 0.5;
  double drop_proven_bonus = 16;
  // Above this many tracked pages a move of beta re-ranks nothing at once (each page takes the
  // new beta at its next access): the re-rank runs under the store's lock and costs a set
  // insertion a page, so a large store would pause for it. Default 65536 (the simulator's tables,
  // 44K pages, stay under it; a beta move is decided at most once every 4096 sampled accesses).
  size_t max_eager_rerank_pages = 65536;
  double hbm_gbps = 3350;
  double dram_gbps = 50;
  double nvme_gbps = 6;
  double prefill_tokens_per_s = 20'000;
  double bytes_per_token = 131'072;
};

class KvtierPolicy final : public PlacementPolicy {
 public:
  explicit KvtierPolicy(const KvtierPolicyOptions& options = {})
      : options_(options), reuse_(options.reuse), duel_(options.duel) {}
  absl::string_view name() const override { return "kvtier"; }

  void OnInsert(const PageKey& key, const PageEntry& entry) override;
  void OnAccess(const PageKey& key, const PageEntry& entry) override;
  void OnUpdate(const PageKey& key, const PageEntry& entry) override;
  void OnMove(const PageKey& key, Tier from, const PageEntry& entry) override;
  void OnRemove(const PageKey& key, const PageEntry& entry) override;
  void LeastValuable(Tier tier, size_t count, absl::FunctionRef<bool(const PageKey&)> eligible,
                     std::vector<PageKey>& out) override;
  void MostValuable(Tier tier, size_t count, absl::FunctionRef<bool(const PageKey&)> eligible,
                    std::vector<PageKey>& out) override;
  double Value(const PageKey& key) const override;
  bool Admits(Tier tier, const PageEntry& entry) const override;

  // Seconds of prefill a page of `tokens` saves when served from `tier` (negative: loading it
  // costs more than recomputing it).
  double SavedSeconds(Tier tier, uint32_t tokens) const;
  const ReuseEstimator& reuse() const { return reuse_; }
  const ScoreDuel& duel() const { return duel_; }
  // The weight of log2(P) in the prefix rank now.
  double beta() const { return options_.adaptive_beta ? duel_.beta() : options_.duel.initial_beta; }
  size_t tracked() const { return nodes_.size(); }
  // Hits in the top tier that left the page's entry where it stood (see Place); for tests.
  uint64_t deferred_hits() const { return deferred_hits_; }
  // The key the page is ordered by within its tier (its Value, except in the drop tier, where
  // it is the drop key); for tests. 0 for unknown keys.
  double OrderKey(const PageKey& key) const;
  // The tier ordered by the drop key (none before the first page).
  std::optional<Tier> drop_tier() const {
    if (drop_tier_ < 0) return std::nullopt;
    return static_cast<Tier>(drop_tier_);
  }

  // The priced-swap parts (see above), for tests: the expected residency of a page in `tier`
  // (virtual time, units of tau; infinite before the tier's second departure) and the price of
  // a swap across the boundary below `tier` (0 when nothing lies below or nothing has left `tier`).
  double Residency(Tier tier) const;
  double SwapPrice(Tier upper) const;

  // The parts of the rank, exposed for tests and for the simulator's explanations.
  double FrequencyTerm(const PageStats& stats) const;
  double UtilityTerm(const PageEntry& entry) const;
  // The prefix rank without the sink and hysteresis parts.
  double ReuseTerm(const PageKey& key, const PageEntry& entry) const;

 private:
  // Everything kvtier keeps per page, in the one map that also says where the page is ranked:
  // one probe finds both (48 bytes a slot with the key).
  struct Node {
    // The page's entry is (set_rank, key) in level set_level of its tier. It is the page's rank
    // and level, except in the deferred tier while `dirty` (see TrueRank).
    double set_rank = 0;
    double virtual_last = 0;  // V at the page's last access
    // min(P(reuse | cls), the parent's): a page is served only behind its whole prefix, so it
    // is never predicted more reusable than its parent, and chains are evicted leaf first.
    double p_chain = 0;
    int16_t tie = 0;  // TieUnits at the last placement
    // Times asked for (0..15), kept here while the page is cached so a hit needs no sketch
    // access; read from the sketch when the page arrives, written back when it leaves, halved
    // whenever the sketch is (count_epoch: the sketch's epoch it is current for).
    uint8_t count_epoch = 0;
    uint8_t count : 4 = 0;
    bool count_in_sketch : 1 = false;  // the sketch already holds `count` (no hit since)
    bool dirty : 1 = false;            // ranked above its entry (deferred tier only)
    uint32_t level : 11 = 0;           // the page's level (kMiscLevel included)
    uint32_t set_level : 11 = 0;       // its entry's
    uint32_t tier_bits : 2 = 0;        // the tier it is ranked in
    uint32_t cls : 8 = 0;              // its reuse class at that access
    Tier tier() const { return static_cast<Tier>(tier_bits); }
  };
  static_assert(sizeof(PageKey) + sizeof(Node) <= 48, "kvtier's per-page record grew");
  // The tier whose hits may leave a page's entry where it stands: the top one, which the store
  // never asks MostValuable of (nothing above it to promote into).
  static constexpr int kDeferredTier = TierIndex(Tier::kHbm);
  // The tie-break among equal ranks, in units of 1e-9: more cached children first, deeper
  // pages first (chains are cut leaf first). Clamped to 16 bits (beyond, pages tie exactly).
  static int16_t TieUnits(const PageEntry& e) {
    return static_cast<int16_t>(std::clamp<int64_t>(
        static_cast<int64_t>(e.cached_children) - static_cast<int64_t>(e.position), -32768, 32767));
  }
  // The page's rank: its entry's, or, for a deferred hit, V + level + tie recomputed exactly
  // as RankAndLevel computed it.
  static double TrueRank(const Node& node) {
    if (!node.dirty) return node.set_rank;
    const int centred = static_cast<int>(node.level) - kPrefixLevels / 2;
    return centred * kLevelWidth + node.virtual_last + 1e-9 * static_cast<double>(node.tie);
  }
  using Ordered = absl::btree_set<std::pair<double, PageKey>>;
  // Prefix ranks are V + c with c = beta x log2(p) + log2(saved / reference) + hysteresis x
  // height. c is rounded down to 1/16 (4 % in p x saved, below the estimator's noise) and each
  // value of it has its own ordered set, a level: within a level pages order by V, which only
  // grows, so an access inserts at the level's end (the cached rightmost path) instead of at a
  // random place in one large set; the old entry's erase is the one random step, as LRU's. c beyond
  // +-32 is clamped. The last level holds every other page (sinks, decode-ranked, worthless)
  // exactly.
  static constexpr double kLevelWidth = 1.0 / 16;
  static constexpr int kPrefixLevels = 1024;
  static constexpr int kMiscLevel = kPrefixLevels;
  struct TierSets {
    std::array<Ordered, kPrefixLevels + 1> levels;
    // (smallest rank, level) of every non-empty level: the global order's merge front.
    absl::btree_set<std::pair<double, uint16_t>> heads;
    int lowest = kPrefixLevels + 1, highest = -1;  // non-empty levels lie within
  };

  // The rank and level of the page; `node` holds its last use and chain probability.
  // `log_p`: log2(node.p_chain) if the caller has it, kUnknownLogP if not.
  static constexpr double kUnknownLogP = std::numeric_limits<double>::quiet_NaN();
  std::pair<double, int> RankAndLevel(const Node& node, const PageEntry& entry,
                                      double log_p = kUnknownLogP) const;
  double ReuseTerm(const Node& node, const PageEntry& entry) const;
  double ChainProbability(const PageEntry& entry, int cls) const;
  void Observe(const PageKey& key, const PageEntry& entry);
  // The time-invariant part of a prefix page's rank in `tier` under `beta`, in level widths
  // (rounded down), and the level it puts the page in (`drop`: in the drop tier, where the level
  // is that of the drop key, see above; `count`: the page's asked-for count).
  double Level(double beta, double p_chain, int tier) const;
  // Whether the tier orders its prefix pages by the drop key: the drop tier, and the top tier
  // under priced swaps (see above).
  bool DropOrdered(int tier) const {
    return tier == drop_tier_ || (options_.priced_swaps && tier == kDeferredTier);
  }
  int LevelIndex(double q, bool drop, uint8_t count) const {
    if (drop) {
      // The drop key's time-invariant part, on the same grid.
      const double bonus = count >= 2 ? options_.drop_proven_bonus : 0.0;
      q = std::floor((options_.drop_reuse_weight * q * kLevelWidth + bonus) / kLevelWidth);
    }
    return static_cast<int>(std::clamp(q, -kPrefixLevels / 2.0, kPrefixLevels / 2.0 - 1)) +
           kPrefixLevels / 2;
  }
  // A drop-tier page's rank as the other tiers would hold it: the plain level for the drop one.
  double UndoDrop(const Node& node) const;
  // A page left `tier` (moved or removed): one more gap for its residency.
  void Departed(Tier tier);
  // The value of a priced swap for a prefix page (see above).
  double SwapValue(const Node& node) const;
  // The next lower tier that has held a page (none: -1).
  int TierBelow(int tier) const {
    for (int t = tier + 1; t < kNumTiers; ++t) {
      if (turnover_[t].held) return t;
    }
    return -1;
  }
  // Moves a deferred page's entry to its rank.
  void Settle(const PageKey& key, Node& node);
  // Re-ranks every prefix page of the tier (tier < 0: of every tier) after beta or the drop tier
  // moved.
  void Rerank(int tier);
  // (Re-)ranks the page in its current tier.
  void Place(const PageKey& key, Node& node, const PageEntry& entry, bool fresh,
             double log_p = kUnknownLogP);
  void Insert(Tier tier, int level, double rank, const PageKey& key);
  void Erase(Tier tier, int level, double rank, const PageKey& key);
  bool RanksByReuse(const PageEntry& entry) const {
    return entry.stats.stat_reports == 0 &&
           (attention_namespaces_.empty() || !attention_namespaces_.contains(entry.ns));
  }

  KvtierPolicyOptions options_;
  ReuseEstimator reuse_;
  ScoreDuel duel_;
  PageKey duel_last_;       // the prefix page observed last, and
  uint64_t duel_root_ = 0;  // its chain's root (low word), which the duel samples by
  absl::flat_hash_map<PageKey, Node> nodes_;
  std::array<TierSets, kNumTiers> tiers_;
  // The page observed last and its chain probability: a request reads its prefix in order, so a
  // page's parent is nearly always the page just before it (no lookup needed).
  PageKey last_observed_;
  double last_p_chain_ = 0;
  double last_log_p_chain_ = -HUGE_VAL;  // log2(last_p_chain_)
  // (tokens, log2(saved / reference)) last computed per tier, cached: the rank's one logarithm
  // that does not depend on the page.
  mutable std::array<std::pair<uint32_t, double>, kNumTiers> log_saved_{};
  // Namespaces whose workers report attention (decode): their unreported pages keep the
  // frequency x utility ranking.
  absl::flat_hash_set<NamespaceId> attention_namespaces_;
  // The tier whose prefix pages are ordered by the drop key: the lowest that has held a page.
  int drop_tier_ = -1;
  // For priced swaps: the latest virtual time observed, and each tier's turnover.
  struct Turnover {
    bool held = false;  // the tier ever held a page
    uint64_t pages = 0;
    bool departed = false;      // a page has left it (the clock of departures runs)
    double last_departure = 0;  // virtual time
    double gap = -1.0;          // mean virtual time between departures (< 0: none yet)
  };
  double virtual_now_ = 0;
  std::array<Turnover, kNumTiers> turnover_{};
  uint64_t deferred_hits_ = 0;
};

}  // namespace kvtier
