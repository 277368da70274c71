#include "daemon/reply_channel.h"

#include <fcntl.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>

#include "absl/types/span.h"
#include "base/errno_status.h"
#include "base/seqpacket.h"

namespace kvtier {

absl::StatusOr<std::shared_ptr<ReplyChannel>> ReplyChannel::Create(UniqueFd&& socket,
                                                                   size_t max_pending_bytes) {
  UniqueFd wake(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  if (!wake.valid()) return ErrnoStatus(errno, "eventfd");
  return std::shared_ptr<ReplyChannel>(
      new ReplyChannel(std::move(socket), std::move(wake), max_pending_bytes));
}

void ReplyChannel::Wake() {
  const uint64_t one = 1;
  // A full counter (never, at 2^64-2) or EAGAIN still leaves the eventfd readable.
  [[maybe_unused]] const ssize_t n = ::write(wake_.get(), &one, sizeof(one));
}

void ReplyChannel::ClearWake() {
  uint64_t value;
  [[maybe_unused]] const ssize_t n = ::read(wake_.get(), &value, sizeof(value));
}

bool ReplyChannel::SendHead() {
  const Queued& q = queue_.front();
  const int fd = q.fd.get();
  const absl::Status s = SendDatagram(
      socket_.get(), q.bytes, fd >= 0 ? absl::Span<const int>(&fd, 1) : absl::Span<const int>(),
      /*nonblocking=*/true);
  if (s.ok()) {
    queued_bytes_ -= q.bytes.size();
    queue_.pop_front();
    return true;
  }
  // A client that is gone: what is queued is for nobody, and its connection thread sees EOF.
  if (!IsWouldBlock(s)) {
    queue_.clear();
    queued_bytes_ = 0;
  }
  return false;
}

void ReplyChannel::Send(absl::string_view bytes, int fd) {
  absl::MutexLock lock(&mu_);
  if (overflowed_) return;
  if (queue_.empty()) {
    const absl::Status s = SendDatagram(
        socket_.get(), bytes, fd >= 0 ? absl::Span<const int>(&fd, 1) : absl::Span<const int>(),
        /*nonblocking=*/true);
    if (s.ok() || !IsWouldBlock(s)) return;  // sent, or the client is gone (its thread sees EOF)
  }
  if (queued_bytes_ + bytes.size() > max_pending_bytes_) {
    // The client does not read what it asked for: cut it off instead of holding more for it.
    overflowed_ = true;
    queue_.clear();
    queued_bytes_ = 0;
    Wake();
    return;
  }
  Queued q{std::string(bytes), UniqueFd()};
  if (fd >= 0) q.fd.Reset(::fcntl(fd, F_DUPFD_CLOEXEC, 0));
  const bool was_empty = queue_.empty();
  queued_bytes_ += q.bytes.size();
  queue_.push_back(std::move(q));
  if (was_empty) Wake();  // the connection thread now waits for room (POLLOUT)
}

void ReplyChannel::Flush() {
  absl::MutexLock lock(&mu_);
  while (!queue_.empty() && SendHead()) {
  }
}

bool ReplyChannel::pending() const {
  absl::MutexLock lock(&mu_);
  return !queue_.empty();
}

bool ReplyChannel::overflowed() const {
  absl::MutexLock lock(&mu_);
  return overflowed_;
}

}  // namespace kvtier
