// The demo's workload driven through kvtierd with the client library, as an inference worker
// would: per request, look up the cached prefix, pin it, load it into the worker's own KV blocks
// (checked bit for bit), store the blocks it had to compute, release the sequence's pins.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "daemon/workload.h"

namespace kvtier {

struct ClientReplayOptions {
  std::string socket_path;  // empty: the default socket
  std::string namespace_name = "demo-model/demo-tenant";
  // This worker replays requests worker_index, worker_index + workers, ... so several worker
  // processes share one workload (and its prefixes) without repeating a request.
  uint32_t worker_index = 0;
  uint32_t workers = 1;
};

absl::StatusOr<ReplayStats> ReplayThroughDaemon(const ClientReplayOptions& options,
                                                const std::vector<MooncakeRequest>& requests);

}  // namespace kvtier
