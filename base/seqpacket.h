// One-datagram-at-a-time I/O on a Unix SOCK_SEQPACKET socket, with SCM_RIGHTS fds beside it.
// Used by both ends of the wire protocol. Functions are stateless; a socket may be used by one
// sender and one receiver thread at a time.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "base/unique_fd.h"

namespace kvtier {

// Most descriptors one message may carry (a worker with more KV buffers registers in batches).
inline constexpr size_t kMaxFdsPerMessage = 253;

// Sends `bytes` as one datagram with `fds` attached (borrowed, not closed). Never raises SIGPIPE.
// With `nonblocking`, returns kUnavailable "would block" (IsWouldBlock) at once when the socket's
// send buffer is full instead of waiting for the peer to read.
absl::Status SendDatagram(int socket, absl::string_view bytes, absl::Span<const int> fds = {},
                          bool nonblocking = false);

struct Datagram {
  size_t size = 0;             // bytes the sender sent (may exceed the buffer when truncated)
  bool truncated = false;      // larger than the receive buffer: the rest was discarded
  bool fds_truncated = false;  // descriptors were dropped by the kernel (MSG_CTRUNC)
  bool eof = false;            // the peer closed the connection (a 0-byte datagram is not EOF)
  std::vector<UniqueFd> fds;
};

// Receives one datagram into `buffer` (its size is the limit plus one byte that detects overrun).
// Blocks; EINTR is retried. With `nonblocking`, returns kUnavailable "would block" at once when
// nothing is queued (see IsWouldBlock).
absl::StatusOr<Datagram> ReceiveDatagram(int socket, absl::Span<char> buffer,
                                         bool nonblocking = false);
// The same into a string, sized to `max_bytes` + 1 on first use.
absl::StatusOr<Datagram> ReceiveDatagram(int socket, std::string& buffer, size_t max_bytes,
                                         bool nonblocking = false);
bool IsWouldBlock(const absl::Status& s);

// Connects a SOCK_SEQPACKET socket to `path`.
absl::StatusOr<UniqueFd> ConnectSeqpacket(absl::string_view path);

}  // namespace kvtier
