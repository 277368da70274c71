// The modern policies a cache engineer would pick today, and the offline optimum, behind the same
// PlacementPolicy interface and store mechanics as the classic ones (classic_policies.h).
//
// - S3-FIFO (Yang et al., SOSP'23): per tier, a small FIFO S (10 % of the tier) that new pages
//   enter, a main FIFO M, and a ghost FIFO G of keys that left S unused (as many as M holds). A
//   page accessed while in S moves to M when it reaches S's end; one that was not leaves (its key
//   goes to G); a page whose key is in G enters M directly. M is a CLOCK: a page accessed since it
//   was last at M's end (2-bit counter) is reinserted with its counter decremented.
// - W-TinyLFU (Einziger et al., TOS'17; Caffeine's policy): per tier, a window LRU (1 %) in front
//   of a segmented LRU (probation 20 %, protected 80 % of the rest); a page leaving the window
//   joins probation as a candidate and, when room is needed, stays only if its estimated
//   frequency (a count-min sketch over every access, shared by the tiers) beats that of
//   probation's LRU page, otherwise it is the victim. The window share adapts by hill climbing
//   on the hit rate, as Caffeine's does.
// - Belady (MIN, 1966): evict the page whose next use is furthest in the future, told by an oracle
//   that has read the whole trace (simulator only). Ties (one request's pages share a next use)
//   go deepest page first, so a chain is never cut above a page that is kept. Tiered, every tier
//   ranks by next use, so the hierarchy as a whole keeps the pages needed soonest and the fastest
//   tier the soonest of those: MIN applied to the hierarchy (optimal hit count for the total
//   capacity, page-level, with free bypass-free admission); it optimises hits, not migration
//   bytes or where a hit is served, so it bounds the hit share, not the modeled seconds.
//
// Tier capacities are learned as the most pages each tier ever held (as ArcPolicy does).
// Thread model: as every PlacementPolicy, called only under the store's lock.
#pragma once

#include <array>
#include <cstdint>
#include <list>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "tiering/policy/reuse_estimator.h"
#include "tiering/ranked_policy.h"

namespace kvtier {

class S3FifoPolicy final : public PlacementPolicy {
 public:
  absl::string_view name() const override { return "s3fifo"; }

  void OnInsert(const PageKey& key, const PageEntry& entry) override;
  void OnAccess(const PageKey& key, const PageEntry& entry) override;
  void OnUpdate(const PageKey&, const PageEntry&) override {}
  void OnMove(const PageKey& key, Tier from, const PageEntry& entry) override;
  void OnRemove(const PageKey& key, const PageEntry& entry) override;
  void LeastValuable(Tier tier, size_t count, absl::FunctionRef<bool(const PageKey&)> eligible,
                     std::vector<PageKey>& out) override;
  void MostValuable(Tier tier, size_t count, absl::FunctionRef<bool(const PageKey&)> eligible,
                    std::vector<PageKey>& out) override;
  // M above S; within a queue, later insertion above earlier.
  double Value(const PageKey& key) const override;

  // Whether the page sits in M (for tests).
  bool InMain(const PageKey& key) const;

 private:
  struct TierState {
    std::list<PageKey> small, main;  // front = oldest (the end pages leave from)
    std::list<PageKey> ghost;
    absl::flat_hash_map<PageKey, std::list<PageKey>::iterator> ghost_keys;
    size_t capacity = 0;
  };
  struct Where {
    Tier tier;
    bool main;
    uint8_t freq;
    uint64_t seq;
    std::list<PageKey>::iterator it;
  };
  void Enter(const PageKey& key, Tier tier);
  void Leave(const PageKey& key, bool to_ghost);
  void ToMainBack(TierState& t, Where& w, const PageKey& key);

  std::array<TierState, kNumTiers> tiers_;
  absl::flat_hash_map<PageKey, Where> where_;
  uint64_t seq_ = 0;
};

struct WTinyLfuOptions {
  // Window share of each tier to start with. Default 0.01 (Caffeine's initial 1 %).
  double window_fraction = 0.01;
  // Caffeine's hill climber: every `climb_period` accesses it moves the window share by a step in
  // the direction that last raised the hit rate (reversing when it fell); the step starts at
  // 6.25 % and shrinks by 2 % each period. 0 disables (a static window). Default 4096.
  uint32_t climb_period = 4096;
  // Protected share of the main space. Default 0.8.
  double protected_fraction = 0.8;
  // Sketch columns. Default 2^18.
  uint32_t sketch_width = 1u << 18;
};

class WTinyLfuPolicy final : public PlacementPolicy {
 public:
  explicit WTinyLfuPolicy(const WTinyLfuOptions& options = {})
      : options_(options), sketch_(options.sketch_width) {}
  absl::string_view name() const override { return "wtinylfu"; }

  void OnInsert(const PageKey& key, const PageEntry& entry) override;
  void OnAccess(const PageKey& key, const PageEntry& entry) override;
  void OnUpdate(const PageKey&, const PageEntry&) override {}
  void OnMove(const PageKey& key, Tier from, const PageEntry& entry) override;
  void OnRemove(const PageKey& key, const PageEntry& entry) override;
  void LeastValuable(Tier tier, size_t count, absl::FunctionRef<bool(const PageKey&)> eligible,
                     std::vector<PageKey>& out) override;
  void MostValuable(Tier tier, size_t count, absl::FunctionRef<bool(const PageKey&)> eligible,
                    std::vector<PageKey>& out) override;
  // Estimated frequency, recency breaking ties.
  double Value(const PageKey& key) const override;

 private:
  enum Segment : uint8_t { kWindow = 0, kProbation = 1, kProtected = 2 };
  struct TierState {
    std::array<std::list<PageKey>, 3> lists;  // by Segment; front = least recently used
    size_t capacity = 0;
  };
  struct Where {
    Tier tier;
    Segment segment;
    uint64_t last;
    std::list<PageKey>::iterator it;
    bool candidate = false;  // left the window, not yet admitted over a main-space victim
  };
  void Enter(const PageKey& key, Tier tier, Segment segment);
  // Moves the window's overflow to probation as admission candidates.
  void Rebalance(Tier tier);
  void Leave(const PageKey& key);
  void MoveTo(const PageKey& key, Where& w, Segment segment);
  size_t WindowCap(const TierState& t) const;
  size_t ProtectedCap(const TierState& t) const;

  void Climb(bool hit);

  WTinyLfuOptions options_;
  FrequencySketch sketch_;
  double window_fraction_ = options_.window_fraction;
  double climb_step_ = 0.0625;
  double last_hit_rate_ = -1;
  uint32_t period_hits_ = 0, period_events_ = 0;
  std::array<TierState, kNumTiers> tiers_;
  absl::flat_hash_map<PageKey, Where> where_;
  uint64_t seq_ = 0;
};

// The future, for Belady: every key's uses, in trace order. Built by the simulator.
class NextUseOracle {
 public:
  static constexpr uint64_t kNever = uint64_t{1} << 40;
  // Use number `when` (monotone) touches `key`.
  void Add(const PageKey& key, uint64_t when);
  // Uses up to and including `when` are past.
  void SetNow(uint64_t when) { now_ = when; }
  // First use of `key` after now (kNever if none).
  uint64_t NextUse(const PageKey& key) const;

 private:
  absl::flat_hash_map<PageKey, std::vector<uint64_t>> uses_;
  uint64_t now_ = 0;
};

class BeladyPolicy final : public RankedPolicy {
 public:
  // `oracle` must outlive the policy.
  explicit BeladyPolicy(const NextUseOracle* oracle) : oracle_(oracle) {}
  absl::string_view name() const override { return "belady"; }

 protected:
  double Rank(const PageKey& key, const PageEntry& entry) const override;

 private:
  const NextUseOracle* oracle_;
};

}  // namespace kvtier
