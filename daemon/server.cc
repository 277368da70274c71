#include "daemon/server.h"

#include <glog/logging.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <stdexcept>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "base/errno_status.h"
#include "base/seqpacket.h"
#include "base/status_macros.h"
#include "daemon/data_dir.h"
#include "tiering/clock.h"
#include "tiering/policy/planner.h"

namespace kvtier {

namespace {

// The session whose request the calling connection thread is handling: the key its Load and
// Store are queued under in the I/O pool (0 when submitted from anywhere else).
thread_local uint64_t current_session_key = 0;

// Refuses a connection with a reply that says why (the client reads it even after EOF), counted
// and logged (rate-limited: refusals are something a client can cause at will).
void Refuse(int fd, const ucred& cred, absl::string_view reason, absl::string_view why,
            DaemonCounters& counters) {
  counters.connections_refused.fetch_add(1, std::memory_order_relaxed);
  if (ClientLogAllowed(counters)) {
    LOG(WARNING) << "event=connection_refused reason=" << reason << " pid=" << cred.pid
                 << " uid=" << cred.uid << " error=\"" << why << "\"";
  }
  wire::Response resp;
  resp.mutable_error()->set_code(static_cast<int>(absl::StatusCode::kResourceExhausted));
  resp.mutable_error()->set_message(std::string(why));
  // A fresh socket's send buffer is empty; never wait for the client either way.
  if (fd >= 0) SendDatagram(fd, resp.SerializeAsString(), {}, /*nonblocking=*/true).IgnoreError();
}

// A connection's receive buffer: address space for the largest datagram allowed, backed by
// memory only where a datagram landed. The kernel faults pages in as recvmsg writes them, and
// those past the first kKeptBytes are given back after a large datagram, so an idle connection
// costs a few pages, not limits.max_message_bytes — while receiving stays one recvmsg.
class ReceiveBuffer {
 public:
  static constexpr size_t kKeptBytes = size_t{64} * 1024;

  explicit ReceiveBuffer(size_t max_message_bytes)
      : size_(max_message_bytes + 1),  // one byte more tells an oversized datagram apart
        mapped_((size_ + kKeptBytes - 1) / kKeptBytes * kKeptBytes) {
    void* p = ::mmap(nullptr, mapped_, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) {
      throw std::runtime_error(std::string(
          ErrnoStatus(errno, absl::StrCat("mmap of a ", mapped_, "-byte receive buffer"))
              .message()));
    }
    data_ = static_cast<char*>(p);
  }
  ~ReceiveBuffer() { ::munmap(data_, mapped_); }
  ReceiveBuffer(const ReceiveBuffer&) = delete;
  ReceiveBuffer& operator=(const ReceiveBuffer&) = delete;

  absl::Span<char> span() { return absl::Span<char>(data_, size_); }
  // After a datagram of `bytes`: pages beyond the kept ones go back to the system.
  void Trim(size_t bytes) {
    if (bytes <= kKeptBytes) return;
    const size_t end = std::min(mapped_, (bytes + kKeptBytes - 1) / kKeptBytes * kKeptBytes);
    ::madvise(data_ + kKeptBytes, end - kKeptBytes, MADV_DONTNEED);
  }

 private:
  const size_t size_;
  const size_t mapped_;  // a multiple of kKeptBytes, hence of the page size
  char* data_ = nullptr;
};

}  // namespace

WorkerPool::WorkerPool(uint32_t threads, std::atomic<uint64_t>* failures) : failures_(failures) {
  for (uint32_t i = 0; i < threads; ++i) threads_.emplace_back([this] { Loop(); });
}

WorkerPool::~WorkerPool() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  for (std::thread& t : threads_) t.join();
}

void WorkerPool::Submit(uint64_t key, std::function<void()> task) {
  absl::MutexLock lock(&mu_);
  std::deque<std::function<void()>>& queue = queues_[key];
  if (queue.empty()) turns_.push_back(key);
  queue.push_back(std::move(task));
}

void WorkerPool::Loop() {
  while (true) {
    std::function<void()> task;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(
          +[](WorkerPool* p)
               ABSL_EXCLUSIVE_LOCKS_REQUIRED(p->mu_) { return p->stopping_ || !p->turns_.empty(); },
          this));
      if (turns_.empty()) return;  // stopping, and everything queued has run
      // One task of the key whose turn it is; the key goes to the back while it has more.
      const uint64_t key = turns_.front();
      turns_.pop_front();
      auto it = queues_.find(key);
      task = std::move(it->second.front());
      it->second.pop_front();
      if (it->second.empty()) {
        queues_.erase(it);
      } else {
        turns_.push_back(key);
      }
    }
    try {
      task();
    } catch (const std::exception& e) {
      // Survivable: the operation is lost (its client waits in vain), the daemon serves on.
      failures_->fetch_add(1, std::memory_order_relaxed);
      LOG(ERROR) << "event=io_task_failed error=\"" << e.what() << "\"";
    }
  }
}

absl::Status EnsureDataDir(const std::string& dir) {
  if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
    return ErrnoStatus(errno, absl::StrCat("data_dir: cannot create '", dir, "'"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Server>> Server::Create(const DaemonConfig& config,
                                                       TieredStore& store, DaemonMetrics* metrics) {
  const std::string& path = config.socket_path;
  // A socket file left by a daemon that died: remove it, but never one a live daemon serves.
  if (absl::StatusOr<UniqueFd> probe = ConnectSeqpacket(path); probe.ok()) {
    return absl::FailedPreconditionError(
        absl::StrCat("socket_path: another kvtierd is serving '", path, "'"));
  }
  RETURN_IF_ERROR(RemoveStaleSocket(path));
  UniqueFd fd(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return ErrnoStatus(errno, "socket");
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.data(), path.size());
  if (::bind(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) {
    return ErrnoStatus(errno, absl::StrCat("socket_path: bind '", path, "'"));
  }
  if (::chmod(path.c_str(), config.socket_mode) != 0) {
    return ErrnoStatus(errno, absl::StrCat("socket_mode: chmod '", path, "'"));
  }
  if (::listen(fd.get(), 128) != 0) return ErrnoStatus(errno, "listen");
  return std::unique_ptr<Server>(new Server(config, store, std::move(fd), metrics));
}

Server::Server(const DaemonConfig& config, TieredStore& store, UniqueFd listener,
               DaemonMetrics* metrics)
    : config_(config),
      limits_(ResolveLimits(config.limits)),
      store_(store),
      listener_(std::move(listener)),
      metrics_(metrics),
      pool_(std::make_unique<WorkerPool>(config.limits.io_threads, &counters_.connection_failures)),
      dispatcher_(
          config, store, counters_,
          [this](std::function<void()> t) { pool_->Submit(current_session_key, std::move(t)); },
          ::geteuid(), SteadyClock::Get()->NowNs(), metrics) {
  LOG(INFO) << "event=limits max_connections=" << config.limits.max_connections
            << " max_connections_per_uid=" << limits_.connections_per_uid
            << " hello_timeout_ms=" << config.limits.hello_timeout_ms
            << " max_output_bytes=" << config.limits.max_output_bytes
            << " max_registered_bytes_per_session=" << limits_.registered_bytes_per_session
            << " max_registered_bytes=" << limits_.registered_bytes;
}

Server::~Server() { RemoveStaleSocket(config_.socket_path).IgnoreError(); }  // ours, or none

absl::Status Server::Serve(int stop_fd) {
  absl::Notification stop_planner;
  std::thread planner([&] {
    const absl::Duration period = absl::Milliseconds(config_.store.maintain_interval_ms);
    PlannerOptions planner_options;
    planner_options.max_migration_bytes_per_s = config_.store.max_migration_bytes_per_s;
    // Validated with the config; a failure here is a bug, and the daemon runs unplanned rather
    // than not at all (logged once).
    absl::StatusOr<Planner> tiers = Planner::Create(&store_, SteadyClock::Get(), planner_options);
    if (!tiers.ok()) {
      LOG(ERROR) << "event=planner_disabled error=\"" << tiers.status().ToString() << "\"";
      return;
    }
    while (!stop_planner.WaitForNotificationWithTimeout(period)) {
      const uint64_t start = SteadyClock::Get()->NowNs();
      tiers->RunOnce();
      if (metrics_ != nullptr) {
        metrics_->PlannerRun(static_cast<double>(SteadyClock::Get()->NowNs() - start) * 1e-9);
      }
    }
  });
  absl::Status result;
  while (true) {
    pollfd fds[2] = {{listener_.get(), POLLIN, 0}, {stop_fd, POLLIN, 0}};
    if (::poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      result = ErrnoStatus(errno, "poll");
      break;
    }
    if (fds[1].revents != 0) break;
    if ((fds[0].revents & POLLIN) == 0) continue;
    UniqueFd conn(::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (!conn.valid()) continue;  // the peer gave up before we accepted: nothing to serve
    ucred cred{};
    socklen_t len = sizeof(cred);
    if (::getsockopt(conn.get(), SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) continue;
    counters_.connections_total.fetch_add(1, std::memory_order_relaxed);
    try {
      Accept(std::move(conn), cred);
    } catch (const std::exception& e) {
      // Out of memory while admitting it: this connection is dropped, the daemon serves on.
      counters_.connection_failures.fetch_add(1, std::memory_order_relaxed);
      LOG(ERROR) << "event=connection_failed uid=" << cred.uid << " error=\"" << e.what() << "\"";
    }
  }
  // Shut every connection down: each thread sees EOF and ends its session's lease.
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [id, fd] : live_fds_) ::shutdown(fd, SHUT_RDWR);
    mu_.Await(absl::Condition(
        +[](uint32_t* n) { return *n == 0; }, &connection_threads_));
  }
  pool_.reset();  // runs what is queued (cancelled: every session has ended), then joins
  stop_planner.Notify();
  planner.join();
  return result;
}

void Server::Accept(UniqueFd conn, const ucred& cred) {
  uint64_t id;
  {
    absl::MutexLock lock(&mu_);
    if (connection_threads_ >= config_.limits.max_connections) {
      if (metrics_ != nullptr) metrics_->Refused(RefusalReason::kLimit);
      Refuse(conn.get(), cred, "limit",
             absl::StrCat("kvtierd serves ", config_.limits.max_connections,
                          " connections (limits.max_connections)"),
             counters_);
      return;
    }
    uint32_t& mine = connections_per_uid_[cred.uid];
    if (mine >= limits_.connections_per_uid) {
      if (metrics_ != nullptr) metrics_->Refused(RefusalReason::kLimit);
      Refuse(conn.get(), cred, "uid_limit",
             absl::StrCat("uid ", cred.uid, " holds ", mine,
                          " connections to kvtierd (limits.max_connections_per_uid is ",
                          limits_.connections_per_uid, ")"),
             counters_);
      return;
    }
    id = next_session_id_++;
    live_fds_[id] = conn.get();  // may throw: before anything is counted
    ++mine;
    ++connection_threads_;
  }
  // Everything below may fail for want of memory, descriptors or threads: that refuses this
  // connection, never the daemon.
  std::shared_ptr<ReplyChannel> channel;
  // The descriptor a refusal goes to while no channel owns it yet; -1 once Create took it (a
  // failed Create has closed it, and there is nobody left to tell).
  int unowned_fd = conn.get();
  try {
    absl::StatusOr<std::shared_ptr<ReplyChannel>> created =
        ReplyChannel::Create(std::move(conn), config_.limits.max_output_bytes);
    unowned_fd = -1;
    if (!created.ok()) throw std::runtime_error(std::string(created.status().message()));
    channel = *std::move(created);
    // The session's send function holds the channel, and with it the descriptor: it is closed
    // only when the last operation that might still reply has let go of the session, so a reply
    // never lands on a reused fd number.
    auto session = std::make_shared<Session>(
        id, PeerCredentials{cred.pid, cred.uid, cred.gid},
        [c = channel](absl::string_view bytes, int fd) { c->Send(bytes, fd); });
    std::thread([this, session, c = channel]() mutable {
      ServeConnection(std::move(session), std::move(c));
    }).detach();
  } catch (const std::exception& e) {
    counters_.connection_failures.fetch_add(1, std::memory_order_relaxed);
    Refuse(channel != nullptr ? channel->socket() : unowned_fd, cred, "no_resources",
           absl::StrCat("kvtierd cannot serve another connection now (", e.what(), ")"), counters_);
    Forget(id, cred.uid);  // before `channel` (and the descriptor) goes
    return;
  }
  counters_.sessions.fetch_add(1, std::memory_order_relaxed);
  if (metrics_ != nullptr) metrics_->SessionOpened();
  LOG(INFO) << "event=session_open session=" << id << " pid=" << cred.pid << " uid=" << cred.uid
            << " gid=" << cred.gid;
}

void Server::Forget(uint64_t id, uid_t uid) {
  absl::MutexLock lock(&mu_);
  live_fds_.erase(id);
  if (auto it = connections_per_uid_.find(uid);
      it != connections_per_uid_.end() && --it->second == 0) {
    connections_per_uid_.erase(it);
  }
  --connection_threads_;  // last: Serve may return (and destroy this) once it reaches zero
}

void Server::ServeConnection(std::shared_ptr<Session> session,
                             std::shared_ptr<ReplyChannel> channel) {
  try {
    ConnectionLoop(session, *channel);
  } catch (const std::exception& e) {
    // An allocation failure or a bug while serving this client: it loses its connection (told
    // why, if its socket has room), everyone else is served on.
    counters_.connection_failures.fetch_add(1, std::memory_order_relaxed);
    LOG(ERROR) << "event=connection_failed session=" << session->id()
               << " uid=" << session->peer().uid << " error=\"" << e.what() << "\"";
    wire::Response resp;
    resp.mutable_error()->set_code(static_cast<int>(absl::StatusCode::kInternal));
    resp.mutable_error()->set_message(
        absl::StrCat("kvtierd failed serving this connection (", e.what(), "); closing it"));
    session->Send(resp);
  }
  const uid_t uid = session->peer().uid;
  const uint64_t id = session->id();
  dispatcher_.EndSession(*session);
  ::shutdown(channel->socket(), SHUT_RDWR);  // the fd itself closes with its last holder
  {
    // Forget the fd number before the channel (and with it the fd) may go away.
    absl::MutexLock lock(&mu_);
    live_fds_.erase(id);
  }
  channel.reset();
  session.reset();
  counters_.sessions.fetch_sub(1, std::memory_order_relaxed);
  if (metrics_ != nullptr) metrics_->SessionClosed();
  Forget(id, uid);
}

void Server::ConnectionLoop(const std::shared_ptr<Session>& session, ReplyChannel& channel) {
  ReceiveBuffer buffer(config_.limits.max_message_bytes);
  const int fd = channel.socket();
  const absl::Duration hello_timeout = absl::Milliseconds(config_.limits.hello_timeout_ms);
  absl::Time last_request = absl::Now();
  while (true) {
    if (channel.overflowed()) {
      counters_.output_overflows.fetch_add(1, std::memory_order_relaxed);
      if (ClientLogAllowed(counters_)) {
        LOG(WARNING) << "event=client_output_overflow session=" << session->id()
                     << " uid=" << session->peer().uid
                     << " max_output_bytes=" << config_.limits.max_output_bytes;
      }
      return;
    }
    int timeout_ms = -1;
    if (!session->hello_done) {
      const absl::Duration left = last_request + hello_timeout - absl::Now();
      if (left <= absl::ZeroDuration()) {
        counters_.hello_timeouts.fetch_add(1, std::memory_order_relaxed);
        if (ClientLogAllowed(counters_)) {
          LOG(WARNING) << "event=hello_timeout session=" << session->id()
                       << " uid=" << session->peer().uid;
        }
        wire::Response resp;
        resp.mutable_error()->set_code(static_cast<int>(absl::StatusCode::kDeadlineExceeded));
        resp.mutable_error()->set_message(absl::StrCat(
            "no Hello within limits.hello_timeout_ms (", config_.limits.hello_timeout_ms,
            " ms) of the last request; closing the connection"));
        session->Send(resp);
        return;
      }
      timeout_ms = static_cast<int>(absl::ToInt64Milliseconds(left)) + 1;
    }
    pollfd fds[2] = {{fd, static_cast<short>(POLLIN | (channel.pending() ? POLLOUT : 0)), 0},
                     {channel.wake_fd(), POLLIN, 0}};
    const int ready = ::poll(fds, 2, timeout_ms);
    if (ready < 0 && errno != EINTR) {
      throw std::runtime_error(std::string(ErrnoStatus(errno, "poll").message()));
    }
    if (ready <= 0) continue;
    if (fds[1].revents != 0) channel.ClearWake();
    if ((fds[0].revents & POLLOUT) != 0) channel.Flush();
    if ((fds[0].revents & (POLLIN | POLLHUP | POLLERR)) == 0) continue;
    absl::StatusOr<Datagram> d = ReceiveDatagram(fd, buffer.span(), /*nonblocking=*/true);
    if (!d.ok() && IsWouldBlock(d.status())) continue;
    if (!d.ok() || d->eof) return;
    last_request = absl::Now();
    Incoming in;
    in.size = d->size;
    in.truncated = d->truncated;
    in.fds_truncated = d->fds_truncated;
    if (!d->truncated) in.bytes = absl::string_view(buffer.span().data(), d->size);
    in.fds = std::move(d->fds);
    current_session_key = session->id();
    const Dispatcher::Verdict verdict = dispatcher_.Handle(session, std::move(in));
    current_session_key = 0;
    if (verdict == Dispatcher::Verdict::kClose) return;
    buffer.Trim(d->size);
  }
}

}  // namespace kvtier
