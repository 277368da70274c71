// The classic policies kvtier is measured against, behind the same PlacementPolicy interface and
// the same store mechanics: only the ranking differs (LRU is RankedPolicy's LruPolicy).
//
// - LFU: access count, ties by recency. No decay: the textbook policy, pollution included.
// - ARC (Megiddo & Modha, FAST'03): per tier, a recency list T1 (seen once) and a frequency list
//   T2 (seen again), ghost lists B1/B2 of keys that recently left the tier, and a target size p
//   for T1 that a ghost hit moves: the victim comes from T1 while |T1| > p, else from T2.
// - StreamingLLM (Xiao et al., ICLR'24): the first `sink_tokens` tokens of a sequence (by
//   position, no measurement) plus a window of the most recently written pages; older pages go
//   first, oldest first.
// - H2O (Zhang et al., NeurIPS'23): a recent window plus heavy hitters by *accumulated* attention
//   (sum of every mass the page received; never decays). The store keeps only EWMAs, so H2O
//   recovers each raw sample by inverting the EWMA step (it is told the store's alpha): exact up
//   to float rounding.
//
// Thread model: as every PlacementPolicy, called only under the store's lock.
#pragma once

#include <array>
#include <cstdint>
#include <deque>

#include "absl/container/btree_set.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "tiering/ranked_policy.h"
#include "tiering/types.h"

namespace kvtier {

class LfuPolicy final : public RankedPolicy {
 public:
  absl::string_view name() const override { return "lfu"; }

 protected:
  double Rank(const PageKey& key, const PageEntry& entry) const override;
};

struct StreamingLlmOptions {
  // Pages covering the first `sink_tokens` tokens are kept above everything. Default 4 tokens.
  uint32_t sink_tokens = kDefaultSinkTokens;
  uint32_t tokens_per_page = kDefaultTokensPerPage;
};

class StreamingLlmPolicy final : public RankedPolicy {
 public:
  explicit StreamingLlmPolicy(const StreamingLlmOptions& options = {}) : options_(options) {}
  absl::string_view name() const override { return "streaming"; }

 protected:
  double Rank(const PageKey& key, const PageEntry& entry) const override;

 private:
  StreamingLlmOptions options_;
};

struct H2oOptions {
  // Pages most recently written that are kept regardless of attention. Default 4 pages (64
  // tokens), a small fraction of the budget, as in H2O's 50/50 split at small caches.
  uint32_t recent_pages = 4;
  // Must equal StoreOptions::attention_ewma_alpha (H2O inverts the store's EWMA step).
  double ewma_alpha = 0.2;
};

class H2oPolicy final : public RankedPolicy {
 public:
  explicit H2oPolicy(const H2oOptions& options = {}) : options_(options) {}
  absl::string_view name() const override { return "h2o"; }

  void OnInsert(const PageKey& key, const PageEntry& entry) override;
  void OnAccess(const PageKey& key, const PageEntry& entry) override;
  void OnUpdate(const PageKey& key, const PageEntry& entry) override;
  void OnMove(const PageKey& key, Tier from, const PageEntry& entry) override;
  void OnRemove(const PageKey& key, const PageEntry& entry) override;

  // Accumulated attention of a page (0 if unknown); for tests.
  double accumulated(const PageKey& key) const;

 protected:
  double Rank(const PageKey& key, const PageEntry& entry) const override;

 private:
  struct State {
    PageEntry last;  // the latest entry seen, to re-rank when the page leaves the window
    double accumulated = 0;
    float last_ewma = 0;
    uint32_t reports = 0;
    bool recent = false;
  };
  void Observe(const PageKey& key, const PageEntry& entry);

  H2oOptions options_;
  absl::flat_hash_map<PageKey, State> state_;
  std::deque<PageKey> window_;  // most recent last; bounded by recent_pages
  uint64_t inserted_ = 0;
};

class ArcPolicy final : public PlacementPolicy {
 public:
  absl::string_view name() const override { return "arc"; }

  void OnInsert(const PageKey& key, const PageEntry& entry) override;
  void OnAccess(const PageKey& key, const PageEntry& entry) override;
  void OnUpdate(const PageKey& key, const PageEntry& entry) override;
  void OnMove(const PageKey& key, Tier from, const PageEntry& entry) override;
  void OnRemove(const PageKey& key, const PageEntry& entry) override;
  void LeastValuable(Tier tier, size_t count, absl::FunctionRef<bool(const PageKey&)> eligible,
                     std::vector<PageKey>& out) override;
  void MostValuable(Tier tier, size_t count, absl::FunctionRef<bool(const PageKey&)> eligible,
                    std::vector<PageKey>& out) override;
  // Recency (last access): what ARC orders by within each list.
  double Value(const PageKey& key) const override;

  // T1's target size in `tier`; for tests.
  double target_recent(Tier tier) const { return tiers_[TierIndex(tier)].p; }

 private:
  using Ordered = absl::btree_set<std::pair<uint64_t, PageKey>>;
  // Keys that recently left a list, oldest first. A key leaving the ghost list early (a ghost
  // hit) leaves a stale entry in `order`; the sequence number tells stale from live.
  struct Ghost {
    std::deque<std::pair<PageKey, uint64_t>> order;
    absl::flat_hash_map<PageKey, uint64_t> keys;  // key -> sequence number of its live entry
    uint64_t next = 0;
  };
  struct TierState {
    Ordered t1, t2;
    Ghost b1, b2;
    double p = 0;
    size_t capacity = 0;  // most pages ever held: ARC's c
  };
  struct Where {
    Tier tier;
    bool frequent;
    uint64_t last;
  };
  void Enter(const PageKey& key, const PageEntry& entry);
  void Leave(const PageKey& key);
  static void Remember(Ghost& g, const PageKey& key, size_t capacity);

  std::array<TierState, kNumTiers> tiers_;
  absl::flat_hash_map<PageKey, Where> where_;
};

}  // namespace kvtier
