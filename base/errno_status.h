// Turning a failed system call's errno into an absl::Status, the one way the project does it.
// Thread model: a free function, safe from any thread.
#pragma once

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace kvtier {

// absl::ErrnoToStatus(errno_value, what): the code follows the errno (ENOENT is NotFound, EACCES
// PermissionDenied, ENOMEM ResourceExhausted, ...) and the message is "what: strerror". Pass
// errno itself, read right after the failed call (before anything else can overwrite it). An
// errno of 0 is a failure without a reason, reported as Internal: ErrnoToStatus would make it OK.
absl::Status ErrnoStatus(int errno_value, absl::string_view what);

}  // namespace kvtier
