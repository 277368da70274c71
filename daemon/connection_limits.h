// The limits that keep one client from taking kvtierd down or starving the others: the bytes of
// worker buffers a session (and all of them) may map, connections per uid, and a rate limit on
// log lines a client can cause. Defaults that depend on the machine are resolved here, once.
//
// Thread model: everything here is thread-safe; callers are connection threads and the I/O pool.
#pragma once

#include <sys/types.h>

#include <cstdint>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "client/proto/kvtier.pb.h"
#include "daemon/config.h"
#include "daemon/session.h"

namespace kvtier {

// `limits` with every "0: derived from the machine" default replaced by its value.
struct EffectiveLimits {
  uint64_t registered_bytes_per_session = 0;
  uint64_t registered_bytes = 0;
  uint32_t connections_per_uid = 0;
};
EffectiveLimits ResolveLimits(const LimitsConfig& limits);

// Charges a RegisterBuffers' declared sizes to `s` (which holds the most it ever registered) and
// to the daemon's total, or refuses with an error naming the key and the limit. Called before
// anything is mapped: the declared size is what the mapping will take from the address space.
absl::Status ChargeRegisteredBytes(const LimitsConfig& limits, DaemonCounters& counters, Session& s,
                                   const wire::RegisterBuffers& r);

// Fills the StatsReply fields of the counters above (registered bytes, refusals, failures, ...).
void FillConnectionStats(const DaemonCounters& counters, wire::StatsReply& out);

// At most `burst` lines, then `per_second` lines a second; the rest are dropped and counted.
class LogRateLimiter {
 public:
  LogRateLimiter(double per_second, double burst) : per_second_(per_second), burst_(burst) {}
  // Whether to write this line; a dropped one is counted in counters.log_lines_suppressed.
  bool Allow(DaemonCounters& counters);

 private:
  const double per_second_;
  const double burst_;
  absl::Mutex mu_;
  double tokens_ ABSL_GUARDED_BY(mu_) = -1;  // -1: full, on first use
  uint64_t last_ns_ ABSL_GUARDED_BY(mu_) = 0;
};

// The limiter for lines about bad requests and refused or dropped clients: 20 lines, then 10 a
// second, over the whole process (what a client can write into the daemon's log is bounded).
bool ClientLogAllowed(DaemonCounters& counters);

}  // namespace kvtier
