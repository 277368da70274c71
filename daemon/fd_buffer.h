// Worker buffers that kvtierd copies through their file descriptors instead of mapping them.
//
// A memfd that is not sealed against shrinking (SGLang's `shm` host pool is a memfd_create
// without MFD_ALLOW_SEALING: sealed with F_SEAL_SEAL only) can be ftruncate'd by its worker at
// any moment; a mapping of it would then fault (SIGBUS) in the middle of the daemon's copy.
// pread/pwrite on the descriptor reach the same pages without that hazard: past the end of the
// file they come back short, and the page fails with a message naming the buffer and its size.
// Stateless functions; any thread.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "base/unique_fd.h"
#include "tiering/layout.h"
#include "tiering/types.h"

namespace kvtier {

// One registered buffer: the worker's descriptor and the bytes it registered.
struct FdBuffer {
  UniqueFd fd;
  uint64_t size = 0;
};

// Whether `fd` is sealed against shrinking (F_SEAL_SHRINK), which is what lets kvtierd map it.
// InvalidArgument when `fd` cannot carry seals at all (not a memfd or tmpfs file): those are
// refused, since reads of other files can block on devices or network file systems.
absl::StatusOr<bool> SealedAgainstShrinking(int fd);

// Gathers a page's `pieces` (Layout::AppendPieces) from `buffers` into `page`, which holds the
// page's bytes in page order. Fails when a piece lies past the current end of its file.
absl::Status ReadPieces(absl::Span<const FdBuffer> buffers, absl::Span<const Piece> pieces,
                        MutableBuffer page);

// Scatters `page` into the page's `pieces`. Fails, writing nothing, when a piece lies past the
// end of its file now (the worker shrank it). A shrink that races with the write makes pwrite
// extend the worker's file again, inside the bytes it registered: only the worker sees that.
absl::Status WritePieces(absl::Span<const FdBuffer> buffers, absl::Span<const Piece> pieces,
                         ConstBuffer page);

}  // namespace kvtier
