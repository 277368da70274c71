// Prefix-reuse workloads for the demo: a generated one (documents with Zipf popularity, each
// request a document's prefix plus a few private blocks) and Mooncake-format trace replay. Every
// page's bytes are a pure function of its key, so every hit is checked bit for bit.
#pragma once

#include <cstdint>
#include <ostream>
#include <vector>

#include "absl/status/statusor.h"
#include "tiering/tiered_store.h"
#include "tiering/trace/mooncake_trace.h"

namespace kvtier {

struct GeneratedWorkloadOptions {
  uint32_t requests = 2000;
  uint32_t documents = 64;  // distinct shared prefixes
  uint32_t blocks_per_document = 24;
  uint32_t private_blocks = 2;  // unique blocks at the end of each request
  double zipf_s = 1.1;          // popularity skew of documents
  uint64_t seed = 42;
};

std::vector<MooncakeRequest> GenerateWorkload(const GeneratedWorkloadOptions& options);

struct ReplayStats {
  uint64_t requests = 0;
  uint64_t blocks = 0;
  uint64_t hit_blocks = 0;
  uint64_t stored_blocks = 0;
  uint64_t verified_bytes = 0;
  uint64_t mismatches = 0;  // must stay 0: a wrong page is never served
};

// Replays `requests` through `store` in namespace `ns`: look up the prefix, read (and verify) the
// cached pages, store the rest; a planner pass every `maintain_every` requests.
absl::StatusOr<ReplayStats> ReplayPrefixWorkload(TieredStore& store, NamespaceId ns,
                                                 const std::vector<MooncakeRequest>& requests,
                                                 uint32_t maintain_every);

// Deterministic page contents for `key` (also used by tests to check round trips).
void FillPage(const PageKey& key, absl::Span<std::byte> out);

}  // namespace kvtier
