// ReplyChannel: the daemon's sending half of one client connection. Replies come from the
// connection's own thread and from the shared I/O pool; a client that stops reading must never
// block either, so a send that would block queues the datagram instead, and the connection
// thread writes the queue out when the socket has room again. A client whose queue passes
// limits.max_output_bytes is cut off (Redis's client-output-buffer-limit) — only that client.
//
// Thread model: Send() from any thread; Flush(), wake_fd() and the socket's reads belong to the
// connection thread. The channel owns the socket: it closes when the last holder (the session's
// send function, an operation still running) lets go, so a reply never lands on a reused fd.
#pragma once

#include <cstddef>
#include <deque>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "base/unique_fd.h"

namespace kvtier {

class ReplyChannel {
 public:
  // Takes `socket` only on success.
  static absl::StatusOr<std::shared_ptr<ReplyChannel>> Create(UniqueFd&& socket,
                                                              size_t max_pending_bytes);

  int socket() const { return socket_.get(); }
  // Readable when the connection thread has something to do: output was queued (so it should
  // wait for the socket to take it) or the client overflowed.
  int wake_fd() const { return wake_.get(); }

  // Sends one datagram (with `fd` attached when >= 0) without ever waiting for the client.
  void Send(absl::string_view bytes, int fd);
  // Writes queued datagrams while the socket takes them. Connection thread.
  void Flush();
  // Consumes the wake-up (connection thread).
  void ClearWake();
  bool pending() const;
  bool overflowed() const;

 private:
  ReplyChannel(UniqueFd socket, UniqueFd wake, size_t max_pending_bytes)
      : socket_(std::move(socket)), wake_(std::move(wake)), max_pending_bytes_(max_pending_bytes) {}
  void Wake();
  // Sends the queue's head; false when the socket is full or the client is gone.
  bool SendHead() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  struct Queued {
    std::string bytes;
    UniqueFd fd;  // a duplicate, attached when the datagram finally goes
  };
  const UniqueFd socket_;
  const UniqueFd wake_;  // eventfd
  const size_t max_pending_bytes_;
  mutable absl::Mutex mu_;
  std::deque<Queued> queue_ ABSL_GUARDED_BY(mu_);
  size_t queued_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  bool overflowed_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace kvtier
