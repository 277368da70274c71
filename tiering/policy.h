// PlacementPolicy: ranks pages; the TieredStore moves them (mechanism and policy apart).
//
// The store reports every event that changes a page (insert, access, stats, move, removal) and
// asks the policy for the least valuable pages of a tier (victims to demote or drop) and the most
// valuable pages of a tier (candidates to promote). Thread model: the store calls a policy only
// with its own lock held, so implementations need no locking of their own.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/strings/string_view.h"
#include "tiering/page_index.h"
#include "tiering/page_key.h"
#include "tiering/types.h"

namespace kvtier {

class PlacementPolicy {
 public:
  virtual ~PlacementPolicy() = default;
  virtual absl::string_view name() const = 0;

  virtual void OnInsert(const PageKey& key, const PageEntry& entry) = 0;
  virtual void OnAccess(const PageKey& key, const PageEntry& entry) = 0;
  // Attention statistics, class or descendant count changed.
  virtual void OnUpdate(const PageKey& key, const PageEntry& entry) = 0;
  // The page now lives in entry.tier (it was in `from`).
  virtual void OnMove(const PageKey& key, Tier from, const PageEntry& entry) = 0;
  virtual void OnRemove(const PageKey& key, const PageEntry& entry) = 0;

  // Appends to `out` up to `count` pages of `tier`, least valuable first, skipping those for which
  // `eligible` is false (pinned, being written, in a reserved sink slot).
  virtual void LeastValuable(Tier tier, size_t count,
                             absl::FunctionRef<bool(const PageKey&)> eligible,
                             std::vector<PageKey>& out) = 0;
  // Appends to `out` up to `count` pages of `tier`, most valuable first.
  virtual void MostValuable(Tier tier, size_t count,
                            absl::FunctionRef<bool(const PageKey&)> eligible,
                            std::vector<PageKey>& out) = 0;

  // Whether `entry` is worth a slot in `tier`: asked before a new page takes one and before a
  // victim is demoted into one (refused: the store tries the next tier down, or drops the
  // victim). A policy may refuse a tier whose load costs more than recomputing the page.
  virtual bool Admits(Tier tier, const PageEntry& entry) const {
    (void)tier;
    (void)entry;
    return true;
  }

  // The page's current value; comparable across tiers, so the planner can tell whether a
  // promotion candidate is worth more than the page it would displace. 0 for unknown keys.
  virtual double Value(const PageKey& key) const = 0;
};

}  // namespace kvtier
