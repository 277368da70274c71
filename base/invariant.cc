#include "base/invariant.h"

#include <atomic>
#include <cstdio>
#include <cstdlib>

namespace kvtier {
namespace {

std::atomic<uint64_t> violations{0};

}  // namespace

bool InvariantFailed(const char* condition, const char* message, const char* file, int line) {
  const uint64_t n = violations.fetch_add(1, std::memory_order_relaxed) + 1;
#ifndef NDEBUG
  (void)n;
  std::fprintf(stderr, "kvtier: invariant violated at %s:%d: %s (%s)\n", file, line, message,
               condition);
  std::abort();
#else
  // Bounded, so that a violation on a hot path cannot flood the log.
  if (n <= 16 || n % 1024 == 0) {
    std::fprintf(stderr,
                 "kvtier: invariant violated at %s:%d: %s (%s); violation %llu of this process, "
                 "the operation fails\n",
                 file, line, message, condition, static_cast<unsigned long long>(n));
  }
  return false;
#endif
}

uint64_t InvariantViolations() { return violations.load(std::memory_order_relaxed); }

}  // namespace kvtier
