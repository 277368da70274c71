// Test harness: a real kvtierd process on a temp directory's Unix socket, and real worker
// processes (kvtier-test-worker). Nothing is mocked.
#pragma once

#include <signal.h>
#include <sys/types.h>

#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace kvtier::testing {

class DaemonProcess {
 public:
  // Writes `extra_yaml` (appended to a small base config) into a fresh temp dir and starts
  // kvtierd on it; waits until the socket answers.
  static absl::StatusOr<DaemonProcess> Start(const std::string& extra_yaml,
                                             unsigned dir_mode = 0700);
  DaemonProcess(DaemonProcess&& o) noexcept;
  DaemonProcess& operator=(DaemonProcess&&) = delete;
  ~DaemonProcess();

  const std::string& dir() const { return dir_; }
  const std::string& socket_path() const { return socket_; }
  pid_t pid() const { return pid_; }
  // SIGTERM, then waits (up to 20 s); returns the exit status (or -signal).
  int Stop();
  size_t OpenFds() const;  // descriptors the daemon holds now
  // Lines in its /proc/<pid>/maps (containing `name` when not empty).
  size_t MappedAreas(const std::string& name = "") const;

 private:
  DaemonProcess() = default;
  pid_t pid_ = -1;
  std::string dir_;
  std::string socket_;
};

// Runs kvtier-test-worker with `args`; returns its exit status and stdout.
struct WorkerResult {
  int exit_code = -1;
  std::string output;
};
WorkerResult RunWorker(const std::vector<std::string>& args);
// Runs argv[0] (a path) with argv; its exit status and stdout and stderr together.
WorkerResult RunProgram(const std::vector<std::string>& argv);
// Starts a worker and returns its pid once it printed `ready_line`; output in *fd_out.
absl::StatusOr<pid_t> SpawnWorkerUntil(const std::vector<std::string>& args,
                                       const std::string& ready_line);

uint64_t TestSeed();  // from KVTIER_TEST_SEED or random; printed

}  // namespace kvtier::testing
