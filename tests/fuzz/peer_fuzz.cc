// libFuzzer target over the peer protocol decoder: what a node runs on every message another
// node sends it. Any input must either be refused with a status or decode into a message that
// encodes back to the same bytes (the format has one encoding per message).
//
// Short fixed run in CI (scripts/test); longer on demand:
//   build-fuzz/tests/fuzz/kvtier_peer_fuzz -max_total_time=600
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "transport/peer_protocol.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvtier::peer;
  Limits limits;
  limits.max_message_bytes = 1 << 16;
  limits.max_ids = 512;
  const absl::string_view bytes(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<Message> m = Decode(bytes, limits);
  if (!m.ok()) return 0;
  absl::StatusOr<std::string> again = Encode(*m);
  if (!again.ok() || *again != bytes) std::abort();
  return 0;
}
