// The one place kvtierd constructs its NVMe tier backend from the config's `nvme` section; the
// [nvme] issue's TierBackend is wired here and nowhere else.
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "daemon/config.h"
#include "daemon/observability/metrics.h"
#include "tiering/nvme/nvme_tier.h"
#include "tiering/tier_backend.h"

namespace kvtier {

// Called once at start when `nvme.directories` is non-empty. `observer` (may be null) times the
// tier's I/O batches; `registry` (may be null) gets the tier's counters. `fault_injector` (tests
// only, KvtierdHooks; may be null) sees every I/O. All three must outlive it.
absl::StatusOr<std::unique_ptr<TierBackend>> MakeNvmeBackend(
    const NvmeConfig& nvme, uint64_t page_bytes, IoObserver* observer = nullptr,
    metrics::Registry* registry = nullptr, NvmeFaultInjector* fault_injector = nullptr);

}  // namespace kvtier
