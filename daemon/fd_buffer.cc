#include "daemon/fd_buffer.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"

namespace kvtier {
namespace {

// Checks that every piece lies inside its registered buffer and inside `page`.
absl::Status CheckPieces(absl::Span<const FdBuffer> buffers, absl::Span<const Piece> pieces,
                         size_t page_bytes) {
  for (const Piece& p : pieces) {
    if (p.buffer >= buffers.size() || p.offset + p.length > buffers[p.buffer].size ||
        p.page_offset + p.length > page_bytes) {
      return absl::InternalError(absl::StrCat("piece [", p.offset, ", ", p.offset + p.length,
                                              ") of buffer ", p.buffer,
                                              " lies outside the registered buffers"));
    }
  }
  return absl::OkStatus();
}

absl::Status Shrunk(uint32_t buffer, uint64_t file_bytes, const Piece& p) {
  return absl::FailedPreconditionError(
      absl::StrCat("buffer ", buffer, " now holds ", file_bytes, " bytes (the worker shrank it); ",
                   "the page needs bytes [", p.offset, ", ", p.offset + p.length, ")"));
}

}  // namespace

absl::StatusOr<bool> SealedAgainstShrinking(int fd) {
  const int seals = ::fcntl(fd, F_GET_SEALS);
  if (seals < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("buffer is not a memfd (F_GET_SEALS: ", std::strerror(errno), ")"));
  }
  return (seals & F_SEAL_SHRINK) != 0;
}

absl::Status ReadPieces(absl::Span<const FdBuffer> buffers, absl::Span<const Piece> pieces,
                        MutableBuffer page) {
  RETURN_IF_ERROR(CheckPieces(buffers, pieces, page.size));
  for (const Piece& p : pieces) {
    const int fd = buffers[p.buffer].fd.get();
    uint64_t done = 0;
    while (done < p.length) {
      const ssize_t n = ::pread(fd, page.data + p.page_offset + done, p.length - done,
                                static_cast<off_t>(p.offset + done));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) {
        return absl::ErrnoToStatus(errno, absl::StrCat("pread of buffer ", p.buffer));
      }
      if (n == 0) {  // end of file: the worker shrank the buffer since it registered it
        struct stat st {};
        const uint64_t now = ::fstat(fd, &st) == 0 ? static_cast<uint64_t>(st.st_size) : 0;
        return Shrunk(p.buffer, now, p);
      }
      done += static_cast<uint64_t>(n);
    }
  }
  return absl::OkStatus();
}

absl::Status WritePieces(absl::Span<const FdBuffer> buffers, absl::Span<const Piece> pieces,
                         ConstBuffer page) {
  RETURN_IF_ERROR(CheckPieces(buffers, pieces, page.size));
  for (const Piece& p : pieces) {
    struct stat st {};
    if (::fstat(buffers[p.buffer].fd.get(), &st) != 0) {
      return absl::ErrnoToStatus(errno, absl::StrCat("fstat of buffer ", p.buffer));
    }
    if (static_cast<uint64_t>(st.st_size) < p.offset + p.length) {
      return Shrunk(p.buffer, static_cast<uint64_t>(st.st_size), p);
    }
  }
  for (const Piece& p : pieces) {
    const int fd = buffers[p.buffer].fd.get();
    uint64_t done = 0;
    while (done < p.length) {
      const ssize_t n = ::pwrite(fd, page.data + p.page_offset + done, p.length - done,
                                 static_cast<off_t>(p.offset + done));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        return absl::ErrnoToStatus(n < 0 ? errno : EIO,
                                   absl::StrCat("pwrite of buffer ", p.buffer));
      }
      done += static_cast<uint64_t>(n);
    }
  }
  return absl::OkStatus();
}

}  // namespace kvtier
