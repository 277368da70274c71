// Invariants: conditions the code relies on that no input may break, checked in production code.
//
// Two tiers, as Envoy's ENVOY_BUG: a debug build (NDEBUG unset: the ASan/UBSan and Debug builds,
// where the tests run) aborts at the first violation with the condition, message and location,
// so a test that reaches one fails loudly; a release build logs it to stderr (the first 16
// violations of the process, then every 1024th), counts it (InvariantViolations(), exported as
// kvtier_invariant_violations_total) and lets the caller fail the one operation instead of taking
// the daemon down or carrying on with corrupted state:
//
//   if (!KVTIER_INVARIANT(x.pin_count > 0, "unpin of a page that is not pinned")) {
//     return absl::InternalError("...");
//   }
//
// Thread model: free functions, safe from any thread.
#pragma once

#include <cstdint>

#include "absl/base/optimization.h"

namespace kvtier {

// Records (or, in a debug build, aborts on) a violated invariant; returns false.
bool InvariantFailed(const char* condition, const char* message, const char* file, int line);

// Violations recorded by this process so far (release builds; a debug build aborts at the first).
uint64_t InvariantViolations();

}  // namespace kvtier

// True when `condition` holds; otherwise InvariantFailed(...) (false in a release build).
#define KVTIER_INVARIANT(condition, message) \
  (ABSL_PREDICT_TRUE(condition) ||           \
   ::kvtier::InvariantFailed(#condition, message, __FILE__, __LINE__))
