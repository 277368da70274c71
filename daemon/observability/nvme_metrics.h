// Exports the NVMe tier's own counters and the latency of its I/O batches as kvtier_nvme_*
// metrics. NvmeIoMetrics is the IoObserver handed to the tier at creation (so it must exist
// first); BindNvmeMetrics mirrors the tier's counters at scrape time.
#pragma once

#include <array>

#include "daemon/observability/metrics.h"
#include "tiering/nvme/nvme_tier.h"

namespace kvtier {

class NvmeIoMetrics final : public IoObserver {
 public:
  explicit NvmeIoMetrics(metrics::Registry& registry);
  void OnBatch(Tier tier, bool write, size_t pages, uint64_t nanos) override;

 private:
  std::array<metrics::Histogram*, 2> batch_seconds_;  // [read, write]
};

// `tier` must outlive the registry's last Serialize().
void BindNvmeMetrics(metrics::Registry& registry, const NvmeTier& tier);

}  // namespace kvtier
