#include "daemon/connection_limits.h"

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <limits>

#include "absl/strings/str_cat.h"
#include "tiering/clock.h"

namespace kvtier {
namespace {

uint64_t PhysicalMemoryBytes() {
  const long pages = ::sysconf(_SC_PHYS_PAGES);
  const long page = ::sysconf(_SC_PAGESIZE);
  if (pages <= 0 || page <= 0) return uint64_t{64} << 30;  // unknown: assume a small server
  return static_cast<uint64_t>(pages) * static_cast<uint64_t>(page);
}

uint64_t AddressSpaceBytes() {
  rlimit r{};
  if (::getrlimit(RLIMIT_AS, &r) == 0 && r.rlim_cur != RLIM_INFINITY) return r.rlim_cur;
  return uint64_t{1} << 47;  // x86-64 and arm64 user space
}

}  // namespace

EffectiveLimits ResolveLimits(const LimitsConfig& l) {
  EffectiveLimits e;
  const uint64_t ram = PhysicalMemoryBytes();
  // Registered buffers are the workers' memory mapped into the daemon: more than the machine
  // holds is a lie (sparse memfds), and the address space is what it would exhaust.
  e.registered_bytes = l.max_registered_bytes != 0 ? l.max_registered_bytes
                                                   : std::min(2 * ram, AddressSpaceBytes() / 4);
  e.registered_bytes_per_session = l.max_registered_bytes_per_session != 0
                                       ? l.max_registered_bytes_per_session
                                       : std::min(ram, e.registered_bytes);
  e.connections_per_uid = l.max_connections_per_uid != 0
                              ? l.max_connections_per_uid
                              : std::max<uint32_t>(1, l.max_connections / 4);
  return e;
}

absl::Status ChargeRegisteredBytes(const LimitsConfig& limits, DaemonCounters& counters, Session& s,
                                   const wire::RegisterBuffers& r) {
  const EffectiveLimits e = ResolveLimits(limits);
  uint64_t bytes = 0;
  for (uint64_t size : r.sizes()) {
    // Saturates: declared sizes are untrusted and may sum past 2^64.
    bytes = size > std::numeric_limits<uint64_t>::max() - bytes
                ? std::numeric_limits<uint64_t>::max()
                : bytes + size;
  }
  if (bytes > e.registered_bytes_per_session) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "RegisterBuffers declares ", bytes, " bytes; limits.max_registered_bytes_per_session is ",
        e.registered_bytes_per_session));
  }
  // A session holds the most it ever registered: its earlier buffers stay mapped when a new
  // registration fails, and until running operations let go of them when it succeeds.
  const uint64_t held = s.registered_bytes.bytes();
  const uint64_t delta = bytes > held ? bytes - held : 0;
  uint64_t now = counters.registered_bytes.load(std::memory_order_relaxed);
  do {
    if (delta > e.registered_bytes - std::min(now, e.registered_bytes)) {
      return absl::ResourceExhaustedError(
          absl::StrCat("RegisterBuffers declares ", bytes, " bytes while ", now,
                       " are registered by all connections; limits.max_registered_bytes is ",
                       e.registered_bytes));
    }
  } while (!counters.registered_bytes.compare_exchange_weak(now, now + delta,
                                                            std::memory_order_relaxed));
  s.registered_bytes.Grow(&counters.registered_bytes, delta);
  return absl::OkStatus();
}

void FillConnectionStats(const DaemonCounters& c, wire::StatsReply& out) {
  auto r = [](const auto& a) { return a.load(std::memory_order_relaxed); };
  out.set_registered_bytes(r(c.registered_bytes));
  out.set_connections_refused(r(c.connections_refused));
  out.set_connection_failures(r(c.connection_failures));
  out.set_output_overflows(r(c.output_overflows));
  out.set_hello_timeouts(r(c.hello_timeouts));
  out.set_log_lines_suppressed(r(c.log_lines_suppressed));
}

bool LogRateLimiter::Allow(DaemonCounters& counters) {
  const uint64_t now = SteadyClock::Get()->NowNs();
  absl::MutexLock lock(&mu_);
  if (tokens_ < 0) {
    tokens_ = burst_;
  } else {
    tokens_ = std::min(burst_, tokens_ + static_cast<double>(now - last_ns_) * 1e-9 * per_second_);
  }
  last_ns_ = now;
  if (tokens_ >= 1) {
    tokens_ -= 1;
    return true;
  }
  counters.log_lines_suppressed.fetch_add(1, std::memory_order_relaxed);
  return false;
}

bool ClientLogAllowed(DaemonCounters& counters) {
  static LogRateLimiter* const limiter = new LogRateLimiter(/*per_second=*/10, /*burst=*/20);
  return limiter->Allow(counters);
}

}  // namespace kvtier
