// Creating memfds: the anonymous, shareable files behind worker KV buffers (on a machine without
// a GPU) and the daemon's DRAM pool. Thread model: a free function, safe from any thread.
#pragma once

#include <cstdint>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "base/unique_fd.h"

namespace kvtier {

// A close-on-exec memfd named `name` (as /proc shows it), sized to `bytes`, with `seals`
// (F_SEAL_* bits, 0 for none) added. Whoever maps a memfd another process holds needs at least
// F_SEAL_SHRINK on it: a file that shrinks under a mapping faults (SIGBUS) its reader.
absl::StatusOr<UniqueFd> CreateMemfd(absl::string_view name, uint64_t bytes, int seals);

}  // namespace kvtier
