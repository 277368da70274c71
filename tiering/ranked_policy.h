// RankedPolicy: a PlacementPolicy whose pages are ordered by one number per page.
//
// Keeps, per tier, an ordered set of (rank, key) so victims and promotion candidates come out in
// O(log n) without scanning. Subclasses say how an entry ranks; a rank must only change on an
// event the store reports (a time-decayed quantity is ranked in a time-invariant form, e.g.
// log2(frequency) + t / half_life). LRU is the simplest instance.
#pragma once

#include <array>
#include <utility>

#include "absl/container/btree_set.h"
#include "absl/container/flat_hash_map.h"
#include "tiering/policy.h"

namespace kvtier {

class RankedPolicy : public PlacementPolicy {
 public:
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

  size_t tracked() const { return where_.size(); }

 protected:
  // Higher is more valuable.
  virtual double Rank(const PageKey& key, const PageEntry& entry) const = 0;
  // Re-rank after any event (subclasses may override single events to keep a rank sticky).
  void Place(const PageKey& key, const PageEntry& entry);
  void Forget(const PageKey& key);

 private:
  using Ordered = absl::btree_set<std::pair<double, PageKey>>;
  std::array<Ordered, kNumTiers> by_tier_;
  absl::flat_hash_map<PageKey, std::pair<Tier, double>> where_;
};

// Least recently used within each tier: the baseline the core ships with.
class LruPolicy final : public RankedPolicy {
 public:
  absl::string_view name() const override { return "lru"; }

 protected:
  double Rank(const PageKey&, const PageEntry& entry) const override {
    return static_cast<double>(entry.stats.last_access_ns);
  }
};

}  // namespace kvtier
