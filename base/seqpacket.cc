#include "base/seqpacket.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "base/errno_status.h"

namespace kvtier {

absl::Status SendDatagram(int socket, absl::string_view bytes, absl::Span<const int> fds,
                          bool nonblocking) {
  if (fds.size() > kMaxFdsPerMessage) {
    return absl::InvalidArgumentError(
        absl::StrCat(fds.size(), " descriptors in one message, at most ", kMaxFdsPerMessage));
  }
  iovec iov{const_cast<char*>(bytes.data()), bytes.size()};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFdsPerMessage)];
  if (!fds.empty()) {
    msg.msg_control = control;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
    cmsghdr* cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    std::memcpy(CMSG_DATA(cmsg), fds.data(), sizeof(int) * fds.size());
  }
  while (true) {
    const ssize_t n = ::sendmsg(socket, &msg, MSG_NOSIGNAL | (nonblocking ? MSG_DONTWAIT : 0));
    if (n >= 0) return absl::OkStatus();
    if (errno == EINTR) continue;
    if (nonblocking && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      return absl::UnavailableError("would block");
    }
    return absl::UnavailableError(
        absl::StrCat("sendmsg of ", bytes.size(), " bytes: ", std::strerror(errno)));
  }
}

namespace {
bool PeerClosed(int socket) {
  pollfd p{socket, POLLRDHUP, 0};
  return ::poll(&p, 1, 0) == 1 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0;
}
}  // namespace

bool IsWouldBlock(const absl::Status& s) {
  return s.code() == absl::StatusCode::kUnavailable && s.message() == "would block";
}

absl::StatusOr<Datagram> ReceiveDatagram(int socket, std::string& buffer, size_t max_bytes,
                                         bool nonblocking) {
  // One byte more than the limit, so an oversized datagram is told apart from one that fits.
  if (buffer.size() < max_bytes + 1) buffer.resize(max_bytes + 1);
  return ReceiveDatagram(socket, absl::Span<char>(buffer.data(), max_bytes + 1), nonblocking);
}

absl::StatusOr<Datagram> ReceiveDatagram(int socket, absl::Span<char> buffer, bool nonblocking) {
  const size_t max_bytes = buffer.empty() ? 0 : buffer.size() - 1;
  iovec iov{buffer.data(), buffer.size()};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFdsPerMessage)];
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  ssize_t n;
  bool reset_seen = false;
  while (true) {
    // MSG_TRUNC makes the kernel report the datagram's real length even when it did not fit.
    n = ::recvmsg(socket, &msg, MSG_CMSG_CLOEXEC | MSG_TRUNC | (nonblocking ? MSG_DONTWAIT : 0));
    if (n >= 0) break;
    if (errno == EINTR) continue;
    // A peer that closed with our datagrams unread resets the connection, but what it sent
    // before (a daemon's reason for closing) is still queued: the reset is reported only once,
    // so look again (the peer is gone: this never waits).
    if (errno == ECONNRESET && !reset_seen) {
      reset_seen = true;
      continue;
    }
    if (nonblocking && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      return absl::UnavailableError("would block");
    }
    return absl::UnavailableError(absl::StrCat("recvmsg: ", std::strerror(errno)));
  }
  Datagram d;
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    const size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < count; ++i) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
      d.fds.emplace_back(fd);
    }
  }
  d.fds_truncated = (msg.msg_flags & MSG_CTRUNC) != 0;
  // recvmsg returns 0 both at EOF and for an empty datagram; only a shut-down peer is EOF.
  if (n == 0 && d.fds.empty() && PeerClosed(socket)) {
    d.eof = true;
    return d;
  }
  d.size = static_cast<size_t>(n);
  d.truncated = d.size > max_bytes || (msg.msg_flags & MSG_TRUNC) != 0;
  return d;
}

absl::StatusOr<UniqueFd> ConnectSeqpacket(absl::string_view path) {
  sockaddr_un addr{};
  if (path.size() >= sizeof(addr.sun_path)) {
    return absl::InvalidArgumentError(absl::StrCat("socket path '", path, "' is longer than ",
                                                   sizeof(addr.sun_path) - 1, " bytes"));
  }
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.data(), path.size());
  UniqueFd fd(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return ErrnoStatus(errno, "socket");
  if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) {
    const int err = errno;
    return absl::UnavailableError(
        absl::StrCat("connect to kvtierd at '", path, "': ", std::strerror(err),
                     err == ENOENT || err == ECONNREFUSED ? " (is kvtierd running?)" : ""));
  }
  return fd;
}

}  // namespace kvtier
