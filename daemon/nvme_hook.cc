#include "daemon/nvme_hook.h"

#include <glog/logging.h>

#include "absl/strings/str_cat.h"
#include "daemon/observability/nvme_metrics.h"
#include "tiering/nvme/nvme_tier.h"

namespace kvtier {

absl::StatusOr<std::unique_ptr<TierBackend>> MakeNvmeBackend(const NvmeConfig& nvme,
                                                             uint64_t page_bytes,
                                                             IoObserver* observer,
                                                             metrics::Registry* registry,
                                                             NvmeFaultInjector* fault_injector) {
  // On disk a slot is a 4 KiB header block plus the payload rounded up to 4 KiB
  // (tiering/nvme/nvme_tier.h), so capacity_bytes buys this many pages.
  constexpr uint64_t kBlock = 4096;
  const uint64_t slot_bytes = kBlock + (page_bytes + kBlock - 1) / kBlock * kBlock;
  const uint64_t slots = nvme.capacity_bytes / slot_bytes;
  if (slots == 0 || slots > UINT32_MAX) {
    return absl::InvalidArgumentError(absl::StrCat("nvme.capacity_bytes: ", nvme.capacity_bytes,
                                                   " bytes make ", slots, " slots of ", slot_bytes,
                                                   " bytes on disk"));
  }
  NvmeTierOptions options;
  options.dirs = nvme.directories;
  options.page_bytes = page_bytes;
  options.slots = static_cast<uint32_t>(slots);
  options.observer = observer;
  options.fault_injector = fault_injector;
  options.log = [](absl::string_view line) { LOG(WARNING) << "event=nvme " << line; };
  absl::StatusOr<std::unique_ptr<NvmeTier>> tier = NvmeTier::Create(options);
  if (!tier.ok()) {
    return absl::Status(tier.status().code(), absl::StrCat("nvme: ", tier.status().message()));
  }
  if (registry != nullptr) BindNvmeMetrics(*registry, **tier);
  return std::unique_ptr<TierBackend>(*std::move(tier));
}

}  // namespace kvtier
