// Exports a TieredStore's occupancy and counters as kvtier_* metrics. The store keeps its own
// lock-free counters; a collector copies them into the registry at scrape time, so the data path
// pays nothing for being observed.
#pragma once

#include "daemon/observability/metrics.h"
#include "tiering/tiered_store.h"

namespace kvtier {

// Registers the store's metric families on `registry` and a collector that refreshes them.
// `store` must outlive the registry's last Serialize().
void BindStoreMetrics(metrics::Registry& registry, const TieredStore& store);

}  // namespace kvtier
