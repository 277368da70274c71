// Builds a PlacementPolicy by name, so tools (the simulator, the daemon's config) can pick one
// from a string. Names: kvtier, lru, lfu, arc, streaming, h2o.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "tiering/policy.h"
#include "tiering/policy/classic_policies.h"
#include "tiering/policy/kvtier_policy.h"

namespace kvtier {

struct PolicyConfig {
  KvtierPolicyOptions kvtier;
  StreamingLlmOptions streaming;
  H2oOptions h2o;
};

absl::StatusOr<std::unique_ptr<PlacementPolicy>> MakePolicy(absl::string_view name,
                                                            const PolicyConfig& config = {});
// Every name MakePolicy accepts, kvtier first.
const std::vector<std::string>& PolicyNames();

}  // namespace kvtier
