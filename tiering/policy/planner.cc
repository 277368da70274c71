#include "tiering/policy/planner.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace kvtier {

absl::StatusOr<Planner> Planner::Create(TieredStore* store, const Clock* clock,
                                        const PlannerOptions& options) {
  if (store == nullptr || clock == nullptr) {
    return absl::InvalidArgumentError("planner needs a store and a clock");
  }
  if (!(options.max_migration_bytes_per_s > 0)) {
    return absl::InvalidArgumentError(absl::StrCat("max_migration_bytes_per_s must be > 0, not ",
                                                   options.max_migration_bytes_per_s));
  }
  if (options.burst_bytes < store->page_bytes()) {
    return absl::InvalidArgumentError(absl::StrCat("burst_bytes (", options.burst_bytes,
                                                   ") is smaller than one page (",
                                                   store->page_bytes(), ")"));
  }
  return Planner(store, clock, options);
}

PlannerReport Planner::RunOnce() {
  const uint64_t now = clock_->NowNs();
  if (now > last_ns_) {
    bucket_bytes_ += options_.max_migration_bytes_per_s * static_cast<double>(now - last_ns_) / 1e9;
    bucket_bytes_ = std::min(bucket_bytes_, static_cast<double>(options_.burst_bytes));
    last_ns_ = now;
  }
  const auto allowance = static_cast<uint64_t>(bucket_bytes_);
  if (allowance < store_->page_bytes()) return {};
  // Maintain treats 0 as "unlimited"; the allowance is at least one page here, so never 0.
  const PlannerReport report = store_->Maintain(MaintainOptions{.max_migration_bytes = allowance,
                                                                .promote = options_.promote,
                                                                .displace = options_.displace});
  bucket_bytes_ -= static_cast<double>(std::min(report.bytes_moved, allowance));
  return report;
}

}  // namespace kvtier
