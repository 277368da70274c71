// Server: kvtierd's Unix-socket front end. Binds the SOCK_SEQPACKET socket (under a directory and
// mode that restrict who may connect), reads each connection's SO_PEERCRED, and runs one thread
// per connection that feeds datagrams to the Dispatcher. Load/Store copies run on a small I/O
// pool; a planner thread keeps the tiers within their watermarks.
//
// No client can stop the others being served: connections are limited in total and per uid (a
// refusal is a reply that says which limit), one that has not said Hello is closed after
// limits.hello_timeout_ms idle, replies never block a shared thread (daemon/reply_channel.h),
// the I/O pool serves sessions round-robin, and an exception or allocation failure while serving
// one connection ends that connection only (logged and counted).
//
// Shutdown (Serve returns after `stop_fd` is readable): stop accepting, shut every connection
// down so its thread ends its session, let the I/O pool finish what is queued (operations of
// ended sessions are cancelled, not copied), stop the planner, and remove the socket.
#pragma once

#include <sys/socket.h>
#include <sys/types.h>

#include <atomic>
#include <deque>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "base/unique_fd.h"
#include "daemon/config.h"
#include "daemon/connection_limits.h"
#include "daemon/dispatcher.h"
#include "daemon/reply_channel.h"
#include "daemon/session.h"
#include "tiering/tiered_store.h"

namespace kvtier {

// Fixed threads draining one FIFO of tasks per key (a session), taking one task from each key
// in turn: a client with 64 queued 4096-page stores delays another's load by one store, not 64.
// A task that throws is logged and counted in `*failures`; the pool goes on. Destruction runs
// everything queued, then joins.
class WorkerPool {
 public:
  WorkerPool(uint32_t threads, std::atomic<uint64_t>* failures);
  ~WorkerPool();
  void Submit(uint64_t key, std::function<void()> task);

 private:
  void Loop();
  std::atomic<uint64_t>* const failures_;
  absl::Mutex mu_;
  absl::flat_hash_map<uint64_t, std::deque<std::function<void()>>> queues_ ABSL_GUARDED_BY(mu_);
  std::deque<uint64_t> turns_ ABSL_GUARDED_BY(mu_);  // keys with queued tasks, next first
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

class Server {
 public:
  // `metrics` may be null; otherwise it must outlive the server.
  static absl::StatusOr<std::unique_ptr<Server>> Create(const DaemonConfig& config,
                                                        TieredStore& store,
                                                        DaemonMetrics* metrics = nullptr);
  ~Server();
  // Serves until `stop_fd` is readable, then shuts down as described above.
  absl::Status Serve(int stop_fd);

 private:
  Server(const DaemonConfig& config, TieredStore& store, UniqueFd listener, DaemonMetrics* metrics);
  // Admits or refuses one accepted connection; never throws.
  void Accept(UniqueFd conn, const ucred& cred);
  void ServeConnection(std::shared_ptr<Session> session, std::shared_ptr<ReplyChannel> channel);
  // The connection's loop; may throw (ServeConnection catches at the boundary).
  void ConnectionLoop(const std::shared_ptr<Session>& session, ReplyChannel& channel);
  // Gives back a connection's slot (and its uid's).
  void Forget(uint64_t id, uid_t uid);

  const DaemonConfig& config_;
  const EffectiveLimits limits_;
  TieredStore& store_;
  UniqueFd listener_;
  DaemonCounters counters_;
  DaemonMetrics* const metrics_;
  std::unique_ptr<WorkerPool> pool_;
  Dispatcher dispatcher_;

  absl::Mutex mu_;
  absl::flat_hash_map<uint64_t, int> live_fds_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<uid_t, uint32_t> connections_per_uid_ ABSL_GUARDED_BY(mu_);
  uint32_t connection_threads_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t next_session_id_ ABSL_GUARDED_BY(mu_) = 1;
};

// Creates `dir` (mode 0700) if missing.
absl::Status EnsureDataDir(const std::string& dir);

}  // namespace kvtier
