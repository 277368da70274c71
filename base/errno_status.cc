#include "base/errno_status.h"

#include "absl/strings/str_cat.h"

namespace kvtier {

absl::Status ErrnoStatus(int errno_value, absl::string_view what) {
  if (errno_value == 0) {
    return absl::InternalError(absl::StrCat(what, ": failed without setting errno"));
  }
  return absl::ErrnoToStatus(errno_value, what);
}

}  // namespace kvtier
