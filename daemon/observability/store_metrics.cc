#include "daemon/observability/store_metrics.h"

#include <string>
#include <utility>
#include <vector>

#include "base/invariant.h"

namespace kvtier {
namespace {

std::string S(absl::string_view v) { return std::string(v); }

}  // namespace

void BindStoreMetrics(metrics::Registry& r, const TieredStore& store) {
  auto& backend =
      r.AddGauge("kvtier_hbm_backend_info",
                 "Which HBM backend is live (cuda or host-emulated); always 1.", {"backend"});
  backend.Get({S(store.hbm_backend())}).Set(1);
  auto& policy =
      r.AddGauge("kvtier_policy_info", "The placement policy ranking pages; always 1.", {"policy"});
  policy.Get({S(store.policy_name())}).Set(1);
  auto& capacity =
      r.AddGauge("kvtier_tier_capacity_bytes",
                 "Bytes of page slots in the tier (HBM includes sink slots).", {"tier"});
  auto& used = r.AddGauge("kvtier_tier_used_bytes", "Bytes of pages held in the tier, by class.",
                          {"tier", "class"});
  auto& pages =
      r.AddGauge("kvtier_tier_pages", "Pages held in the tier, by class.", {"tier", "class"});
  auto& sink_slots = r.AddGauge(
      "kvtier_sink_slots", "Reserved HBM sink slots over all namespaces, used or free.", {"state"});
  auto& pool_slots =
      r.AddGauge("kvtier_hbm_pool_slots",
                 "HBM page slots of each pool (one per GPU; `pool` is its index, `device` its CUDA "
                 "ordinal), used or capacity.",
                 {"pool", "device", "state"});
  auto& hits =
      r.AddCounter("kvtier_hits_total", "Page reads served, by the tier that served.", {"tier"});
  auto& misses = r.AddCounter("kvtier_misses_total", "Page reads that found no page.");
  auto& puts = r.AddCounter("kvtier_pages_stored_total", "Pages written into the cache.");
  auto& dup = r.AddCounter("kvtier_pages_stored_duplicate_total",
                           "Stores of a page the cache already held (not rewritten).");
  auto& evictions = r.AddCounter("kvtier_evictions_total",
                                 "Pages dropped from the cache, by the tier they left and class.",
                                 {"tier", "class"});
  auto& migrations =
      r.AddCounter("kvtier_migrations_total", "Pages moved between tiers.", {"from", "to"});
  auto& migrated =
      r.AddCounter("kvtier_migrated_bytes_total", "Bytes moved between tiers.", {"from", "to"});
  auto& io_errors =
      r.AddCounter("kvtier_tier_io_errors_total",
                   "Failed page reads or writes, by tier; the page is dropped.", {"tier"});
  auto& overflows = r.AddCounter(
      "kvtier_sink_overflows_total",
      "Sinks that found their namespace's reserved slots full of pinned sinks and competed "
      "as ordinary pages.");
  auto& replacements =
      r.AddCounter("kvtier_sink_replacements_total",
                   "Unpinned sinks moved out of a full reserve to make room for a newer sink.");
  auto& invariants = r.AddCounter(
      "kvtier_invariant_violations_total",
      "Broken internal invariants caught in a release build (each failed its operation; "
      "base/invariant.h). Should stay 0: any other value is a bug to report.");

  // Label values and metric pointers are resolved once; the collector only copies numbers.
  struct TierMetrics {
    metrics::Gauge* capacity;
    std::array<metrics::Gauge*, kNumPageClasses> used, pages;
    metrics::Counter* hits;
    metrics::Counter* io_errors;
    std::array<metrics::Counter*, kNumPageClasses> evictions;
    std::array<metrics::Counter*, kNumTiers> migrations, migrated;
  };
  auto per_tier = std::make_shared<std::array<TierMetrics, kNumTiers>>();
  for (Tier t : kAllTiers) {
    if (!store.has_tier(t)) continue;
    TierMetrics& m = (*per_tier)[TierIndex(t)];
    const std::string tier = S(TierName(t));
    m.capacity = &capacity.Get({tier});
    m.hits = &hits.Get({tier});
    m.io_errors = &io_errors.Get({tier});
    for (PageClass c : kAllPageClasses) {
      const int ci = PageClassIndex(c);
      m.used[ci] = &used.Get({tier, S(PageClassName(c))});
      m.pages[ci] = &pages.Get({tier, S(PageClassName(c))});
      m.evictions[ci] = &evictions.Get({tier, S(PageClassName(c))});
    }
    for (Tier to : kAllTiers) {
      if (to == t || !store.has_tier(to)) continue;
      m.migrations[TierIndex(to)] = &migrations.Get({tier, S(TierName(to))});
      m.migrated[TierIndex(to)] = &migrated.Get({tier, S(TierName(to))});
    }
  }
  // Per HBM pool: {used, capacity}.
  auto per_pool = std::make_shared<std::vector<std::pair<metrics::Gauge*, metrics::Gauge*>>>();
  for (size_t p = 0; p < store.hbm_pools().size(); ++p) {
    const std::string pool = std::to_string(p);
    const std::string device = std::to_string(store.hbm_pools()[p].device);
    per_pool->emplace_back(&pool_slots.Get({pool, device, "used"}),
                           &pool_slots.Get({pool, device, "capacity"}));
  }
  metrics::Gauge* sinks_used = &sink_slots.Get({"used"});
  metrics::Gauge* sinks_free = &sink_slots.Get({"free"});
  metrics::Counter* misses_c = &misses.Get({});
  metrics::Counter* puts_c = &puts.Get({});
  metrics::Counter* dup_c = &dup.Get({});
  metrics::Counter* overflows_c = &overflows.Get({});
  metrics::Counter* replacements_c = &replacements.Get({});
  metrics::Counter* invariants_c = &invariants.Get({});

  r.AddCollector([&store, per_tier, per_pool, sinks_used, sinks_free, misses_c, puts_c, dup_c,
                  overflows_c, replacements_c, invariants_c] {
    const StoreCounters c = store.Counters();
    const double page = static_cast<double>(store.page_bytes());
    for (Tier t : kAllTiers) {
      if (!store.has_tier(t)) continue;
      TierMetrics& m = (*per_tier)[TierIndex(t)];
      const TierUsage u = store.Usage(t);
      m.capacity->Set(u.capacity_slots * page);
      for (PageClass cls : kAllPageClasses) {
        const int ci = PageClassIndex(cls);
        m.used[ci]->Set(u.pages_by_class[ci] * page);
        m.pages[ci]->Set(u.pages_by_class[ci]);
        m.evictions[ci]->Set(static_cast<double>(c.evictions[TierIndex(t)][ci]));
      }
      m.hits->Set(static_cast<double>(c.hits[TierIndex(t)]));
      m.io_errors->Set(static_cast<double>(c.io_errors[TierIndex(t)]));
      for (Tier to : kAllTiers) {
        if (m.migrations[TierIndex(to)] == nullptr) continue;
        m.migrations[TierIndex(to)]->Set(
            static_cast<double>(c.migrations[TierIndex(t)][TierIndex(to)]));
        m.migrated[TierIndex(to)]->Set(
            static_cast<double>(c.migrated_bytes[TierIndex(t)][TierIndex(to)]));
      }
      if (t == Tier::kHbm) {
        for (size_t p = 0; p < u.pools.size() && p < per_pool->size(); ++p) {
          (*per_pool)[p].first->Set(u.pools[p].used_slots);
          (*per_pool)[p].second->Set(u.pools[p].capacity_slots);
        }
        sinks_used->Set(u.sink_used_slots);
        sinks_free->Set(u.sink_reserved_slots - u.sink_used_slots);
      }
    }
    misses_c->Set(static_cast<double>(c.misses));
    puts_c->Set(static_cast<double>(c.puts));
    dup_c->Set(static_cast<double>(c.put_duplicates));
    overflows_c->Set(static_cast<double>(c.sink_overflows));
    replacements_c->Set(static_cast<double>(c.sink_replacements));
    invariants_c->Set(static_cast<double>(InvariantViolations()));
  });
}

}  // namespace kvtier
