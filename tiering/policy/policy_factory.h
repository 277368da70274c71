// Builds a PlacementPolicy by name, so tools (the simulator, the daemon's config) can pick one
// from a string. Names: kvtier, lru, lfu, arc, s3fifo, wtinylfu, streaming, h2o, and belady
// (offline: needs the oracle only the simulator has).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "tiering/policy.h"
#include "tiering/policy/classic_policies.h"
#include "tiering/policy/kvtier_policy.h"
#include "tiering/policy/modern_policies.h"

namespace kvtier {

struct PolicyConfig {
  KvtierPolicyOptions kvtier;
  StreamingLlmOptions streaming;
  H2oOptions h2o;
  WTinyLfuOptions wtinylfu;
  // The future, for belady; must outlive the policy. Null outside the simulator.
  const NextUseOracle* oracle = nullptr;
};

absl::StatusOr<std::unique_ptr<PlacementPolicy>> MakePolicy(absl::string_view name,
                                                            const PolicyConfig& config = {});
// Every name MakePolicy accepts, kvtier first.
const std::vector<std::string>& PolicyNames();

}  // namespace kvtier
