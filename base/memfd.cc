#include "base/memfd.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <string>

#include "absl/strings/str_cat.h"
#include "base/errno_status.h"

namespace kvtier {

absl::StatusOr<UniqueFd> CreateMemfd(absl::string_view name, uint64_t bytes, int seals) {
  const std::string fd_name(name);
  UniqueFd fd(::memfd_create(fd_name.c_str(), MFD_CLOEXEC | MFD_ALLOW_SEALING));
  if (!fd.valid()) return ErrnoStatus(errno, absl::StrCat("memfd_create '", name, "'"));
  if (::ftruncate(fd.get(), static_cast<off_t>(bytes)) != 0) {
    return ErrnoStatus(errno, absl::StrCat("ftruncate memfd '", name, "' to ", bytes, " bytes"));
  }
  if (seals != 0 && ::fcntl(fd.get(), F_ADD_SEALS, seals) != 0) {
    return ErrnoStatus(errno, absl::StrCat("sealing memfd '", name, "'"));
  }
  return fd;
}

}  // namespace kvtier
