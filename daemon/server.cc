#include "daemon/server.h"

#include <glog/logging.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "client/seqpacket.h"
#include "daemon/data_dir.h"
#include "tiering/clock.h"
#include "tiering/policy/planner.h"

namespace kvtier {

WorkerPool::WorkerPool(uint32_t threads) {
  for (uint32_t i = 0; i < threads; ++i) threads_.emplace_back([this] { Loop(); });
}

WorkerPool::~WorkerPool() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  for (std::thread& t : threads_) t.join();
}

void WorkerPool::Submit(std::function<void()> task) {
  absl::MutexLock lock(&mu_);
  queue_.push_back(std::move(task));
}

void WorkerPool::Loop() {
  while (true) {
    std::function<void()> task;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(
          +[](WorkerPool* p)
               ABSL_EXCLUSIVE_LOCKS_REQUIRED(p->mu_) { return p->stopping_ || !p->queue_.empty(); },
          this));
      if (queue_.empty()) return;  // stopping, and everything queued has run
      task = std::move(queue_.front());
      queue_.pop_front();
    }
    task();
  }
}

absl::Status EnsureDataDir(const std::string& dir) {
  if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
    return absl::FailedPreconditionError(
        absl::StrCat("data_dir: cannot create '", dir, "': ", std::strerror(errno)));
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
  if (absl::Status s = RemoveStaleSocket(path); !s.ok()) return s;
  UniqueFd fd(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return absl::InternalError(absl::StrCat("socket: ", std::strerror(errno)));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.data(), path.size());
  if (::bind(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("socket_path: bind '", path, "': ", std::strerror(errno)));
  }
  if (::chmod(path.c_str(), config.socket_mode) != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("socket_mode: chmod '", path, "': ", std::strerror(errno)));
  }
  if (::listen(fd.get(), 128) != 0) {
    return absl::InternalError(absl::StrCat("listen: ", std::strerror(errno)));
  }
  return std::unique_ptr<Server>(new Server(config, store, std::move(fd), metrics));
}

Server::Server(const DaemonConfig& config, TieredStore& store, UniqueFd listener,
               DaemonMetrics* metrics)
    : config_(config),
      store_(store),
      listener_(std::move(listener)),
      metrics_(metrics),
      pool_(std::make_unique<WorkerPool>(config.limits.io_threads)),
      dispatcher_(
          config, store, counters_,
          [this](std::function<void()> t) { pool_->Submit(std::move(t)); }, ::geteuid(),
          SteadyClock::Get()->NowNs(), metrics) {}

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
      result = absl::InternalError(absl::StrCat("poll: ", std::strerror(errno)));
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
    absl::MutexLock lock(&mu_);
    if (connection_threads_ >= config_.limits.max_connections) {
      if (metrics_ != nullptr) metrics_->Refused(RefusalReason::kLimit);
      LOG(WARNING) << "event=connection_refused reason=limit pid=" << cred.pid
                   << " uid=" << cred.uid << " max_connections=" << config_.limits.max_connections;
      wire::Response resp;
      resp.mutable_error()->set_code(static_cast<int>(absl::StatusCode::kResourceExhausted));
      resp.mutable_error()->set_message(absl::StrCat("kvtierd serves ",
                                                     config_.limits.max_connections,
                                                     " connections (limits.max_connections)"));
      SendDatagram(conn.get(), resp.SerializeAsString()).IgnoreError();
      continue;
    }
    const uint64_t id = next_session_id_++;
    const int raw = conn.get();
    // The session owns the descriptor: it is closed only when the last operation that might
    // still reply has let go of the session, so a reply never lands on a reused fd number.
    auto owned = std::make_shared<UniqueFd>(std::move(conn));
    auto session = std::make_shared<Session>(
        id, PeerCredentials{cred.pid, cred.uid, cred.gid},
        [owned](absl::string_view bytes, int fd) {
          SendDatagram(owned->get(), bytes,
                       fd >= 0 ? absl::Span<const int>(&fd, 1) : absl::Span<const int>())
              .IgnoreError();  // a peer that vanished is noticed by its connection thread
        });
    live_fds_[id] = raw;
    ++connection_threads_;
    counters_.sessions.fetch_add(1, std::memory_order_relaxed);
    if (metrics_ != nullptr) metrics_->SessionOpened();
    LOG(INFO) << "event=session_open session=" << id << " pid=" << cred.pid << " uid=" << cred.uid
              << " gid=" << cred.gid;
    std::thread([this, session, raw] { ServeConnection(session, raw); }).detach();
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

void Server::ServeConnection(std::shared_ptr<Session> session, int fd) {
  std::string buffer;
  const size_t limit = config_.limits.max_message_bytes;
  while (true) {
    absl::StatusOr<Datagram> d = ReceiveDatagram(fd, buffer, limit);
    if (!d.ok() || d->eof) break;
    Incoming in;
    in.size = d->size;
    in.truncated = d->truncated;
    in.fds_truncated = d->fds_truncated;
    if (!d->truncated) in.bytes = absl::string_view(buffer.data(), d->size);
    in.fds = std::move(d->fds);
    if (dispatcher_.Handle(session, std::move(in)) == Dispatcher::Verdict::kClose) break;
  }
  dispatcher_.EndSession(*session);
  ::shutdown(fd, SHUT_RDWR);  // the fd itself closes with the session's last reference
  {
    // Forget the fd number before the session (and with it the fd) may go away.
    absl::MutexLock lock(&mu_);
    live_fds_.erase(session->id());
  }
  session.reset();
  counters_.sessions.fetch_sub(1, std::memory_order_relaxed);
  if (metrics_ != nullptr) metrics_->SessionClosed();
  absl::MutexLock lock(&mu_);
  --connection_threads_;  // last: Serve may return (and destroy this) once it reaches zero
}

}  // namespace kvtier
