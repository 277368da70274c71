// Planner: runs the store's planner pass (TieredStore::Maintain) on a migration-bandwidth budget.
//
// Migrations compete with inference for PCIe and the drive, so the planner spends at most
// `max_migration_bytes_per_s` on average: a token bucket refilled by store-clock time, at most
// `burst_bytes` deep, and each pass may move what the bucket holds (MaintainOptions'
// max_migration_bytes). What each pass does (DESIGN.md §4): every tier back under its high
// watermark (demote the policy's least valuable pages; drop at the bottom), free room above
// filled with the most valuable pages below, then displacement — a page below that the policy
// values above the least valuable page of the tier over it changes places with it (policies put
// their hysteresis in Value, so nothing bounces). Sinks in reserved slots never take part. When a
// namespace's reserve is full, the store replaces its least recently used unpinned sink (which
// goes on as an ordinary page a tier down) and, if every reserved sink is pinned, lets the new
// sink compete as an ordinary page and counts a sink overflow; kvtier still ranks such a sink
// above every ordinary page.
//
// Thread model: one owner thread (the daemon's planner thread, or the simulator) calls RunOnce;
// the store it drives is thread-safe.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "tiering/clock.h"
#include "tiering/tiered_store.h"

namespace kvtier {

struct PlannerOptions {
  // Average migration bandwidth. Default 5 GB/s: a tenth of a PCIe 5.0 x16 link, leaving the
  // rest to the loads inference waits on.
  double max_migration_bytes_per_s = 5e9;
  // Bucket depth: the most one pass may move after an idle spell. Default 256 MiB (128 Llama-3-8B
  // pages of 2 MiB).
  uint64_t burst_bytes = 256ull << 20;
  // Promote into free room and by displacement. Default true.
  bool promote = true;
  bool displace = true;
};

class Planner {
 public:
  // `store` and `clock` must outlive the planner; `clock` is the store's clock.
  static absl::StatusOr<Planner> Create(TieredStore* store, const Clock* clock,
                                        const PlannerOptions& options = {});

  // One pass with what the bucket holds. Never moves more than the bucket allows.
  PlannerReport RunOnce();
  uint64_t available_bytes() const { return static_cast<uint64_t>(bucket_bytes_); }

 private:
  Planner(TieredStore* store, const Clock* clock, const PlannerOptions& options)
      : store_(store), clock_(clock), options_(options), last_ns_(clock->NowNs()) {}

  TieredStore* store_;
  const Clock* clock_;
  PlannerOptions options_;
  uint64_t last_ns_;
  double bucket_bytes_ = 0;
};

}  // namespace kvtier
