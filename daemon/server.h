// Server: kvtierd's Unix-socket front end. Binds the SOCK_SEQPACKET socket (under a directory and
// mode that restrict who may connect), reads each connection's SO_PEERCRED, and runs one thread
// per connection that feeds datagrams to the Dispatcher. Load/Store copies run on a small I/O
// pool; a planner thread keeps the tiers within their watermarks.
//
// Shutdown (Serve returns after `stop_fd` is readable): stop accepting, shut every connection
// down so its thread ends its session, let the I/O pool finish what is queued (operations of
// ended sessions are cancelled, not copied), stop the planner, and remove the socket.
#pragma once

#include <sys/types.h>

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
#include "client/unique_fd.h"
#include "daemon/config.h"
#include "daemon/dispatcher.h"
#include "daemon/session.h"
#include "tiering/tiered_store.h"

namespace kvtier {

// Fixed threads draining one FIFO of tasks. Destruction runs everything queued, then joins.
class WorkerPool {
 public:
  explicit WorkerPool(uint32_t threads);
  ~WorkerPool();
  void Submit(std::function<void()> task);

 private:
  void Loop();
  absl::Mutex mu_;
  std::deque<std::function<void()>> queue_ ABSL_GUARDED_BY(mu_);
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
  void ServeConnection(std::shared_ptr<Session> session, int fd);

  const DaemonConfig& config_;
  TieredStore& store_;
  UniqueFd listener_;
  DaemonCounters counters_;
  DaemonMetrics* const metrics_;
  std::unique_ptr<WorkerPool> pool_;
  Dispatcher dispatcher_;

  absl::Mutex mu_;
  absl::flat_hash_map<uint64_t, int> live_fds_ ABSL_GUARDED_BY(mu_);
  uint32_t connection_threads_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t next_session_id_ ABSL_GUARDED_BY(mu_) = 1;
};

// Creates `dir` (mode 0700) if missing.
absl::Status EnsureDataDir(const std::string& dir);

}  // namespace kvtier
