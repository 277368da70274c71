#include "tests/integration/daemon_harness.h"

#include <dirent.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "base/seqpacket.h"
#include "base/unique_fd.h"

namespace kvtier::testing {

absl::StatusOr<DaemonProcess> DaemonProcess::Start(const std::string& extra_yaml,
                                                   unsigned dir_mode) {
  DaemonProcess d;
  char tmpl[] = "/tmp/kvtier-it-XXXXXX";
  if (::mkdtemp(tmpl) == nullptr) return absl::InternalError("mkdtemp");
  d.dir_ = tmpl;
  ::chmod(tmpl, dir_mode);
  d.socket_ = d.dir_ + "/kvtierd.sock";
  const std::string config = d.dir_ + "/kvtierd.yaml";
  {
    std::ofstream out(config);
    out << "data_dir: " << d.dir_ << "/data\nsocket_path: " << d.socket_ << "\n" << extra_yaml;
  }
  std::vector<std::string> args = {KVTIERD_BIN, "--config", config};
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  d.pid_ = ::fork();
  if (d.pid_ == 0) {
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  for (int i = 0; i < 2000; ++i) {
    if (ConnectSeqpacket(d.socket_).ok()) return d;
    int status;
    if (::waitpid(d.pid_, &status, WNOHANG) == d.pid_) {
      d.pid_ = -1;
      return absl::UnavailableError(absl::StrCat("kvtierd exited at start, status ", status));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return absl::DeadlineExceededError("kvtierd did not open its socket in 20 s");
}

DaemonProcess::DaemonProcess(DaemonProcess&& o) noexcept
    : pid_(std::exchange(o.pid_, -1)), dir_(std::move(o.dir_)), socket_(std::move(o.socket_)) {}

DaemonProcess::~DaemonProcess() {
  if (pid_ > 0) Stop();
  std::error_code ec;
  if (!dir_.empty()) std::filesystem::remove_all(dir_, ec);
}

int DaemonProcess::Stop() {
  if (pid_ <= 0) return -1;
  ::kill(pid_, SIGTERM);
  int status = 0;
  for (int i = 0; i < 2000; ++i) {
    if (::waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      return WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ::kill(pid_, SIGKILL);
  ::waitpid(pid_, &status, 0);
  pid_ = -1;
  return -1000;  // did not shut down in time
}

size_t DaemonProcess::OpenFds() const {
  size_t n = 0;
  for (const auto& e : std::filesystem::directory_iterator(absl::StrCat("/proc/", pid_, "/fd"))) {
    (void)e;
    ++n;
  }
  return n;
}

size_t DaemonProcess::MappedAreas(const std::string& name) const {
  std::ifstream in(absl::StrCat("/proc/", pid_, "/maps"));
  size_t n = 0;
  for (std::string line; std::getline(in, line);) n += line.find(name) != std::string::npos;
  return n;
}

namespace {
// Starts argv[0] with argv; its stdout (and with `with_stderr` its stderr) into *read_end.
pid_t SpawnWithPipe(std::vector<std::string> argv_strings, UniqueFd& read_end,
                    bool with_stderr = false) {
  int p[2];
  if (::pipe2(p, O_CLOEXEC) != 0) return -1;
  read_end.Reset(p[0]);
  UniqueFd write_end(p[1]);
  std::vector<char*> argv;
  for (std::string& a : argv_strings) argv.push_back(a.data());
  argv.push_back(nullptr);
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::dup2(write_end.get(), 1);
    if (with_stderr) ::dup2(write_end.get(), 2);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  return pid;  // the parent's write end closes here, so EOF follows the child's exit
}

std::vector<std::string> WorkerArgv(const std::vector<std::string>& args) {
  std::vector<std::string> full = {KVTIER_WORKER_BIN};
  full.insert(full.end(), args.begin(), args.end());
  return full;
}

WorkerResult Collect(pid_t pid, const UniqueFd& out) {
  WorkerResult r;
  char buf[4096];
  for (ssize_t n; (n = ::read(out.get(), buf, sizeof(buf))) > 0;) r.output.append(buf, n);
  int status = 0;
  ::waitpid(pid, &status, 0);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
  return r;
}
}  // namespace

WorkerResult RunWorker(const std::vector<std::string>& args) {
  UniqueFd out;
  const pid_t pid = SpawnWithPipe(WorkerArgv(args), out);
  return Collect(pid, out);
}

WorkerResult RunProgram(const std::vector<std::string>& argv) {
  UniqueFd out;
  const pid_t pid = SpawnWithPipe(argv, out, /*with_stderr=*/true);
  return Collect(pid, out);
}

absl::StatusOr<pid_t> SpawnWorkerUntil(const std::vector<std::string>& args,
                                       const std::string& ready_line) {
  UniqueFd out;
  const pid_t pid = SpawnWithPipe(WorkerArgv(args), out);
  std::string text;
  char buf[256];
  for (ssize_t n; text.find(ready_line) == std::string::npos &&
                  (n = ::read(out.get(), buf, sizeof(buf))) > 0;) {
    text.append(buf, n);
  }
  if (text.find(ready_line) == std::string::npos) {
    int status;
    ::waitpid(pid, &status, 0);
    return absl::InternalError(absl::StrCat("worker never printed '", ready_line, "': ", text));
  }
  return pid;
}

uint64_t TestSeed() {
  static const uint64_t seed = [] {
    uint64_t s = 0;
    if (const char* env = std::getenv("KVTIER_TEST_SEED"); env != nullptr) {
      (void)absl::SimpleAtoi(env, &s);
    }
    if (s == 0) s = std::random_device{}() | 1;
    std::printf("test seed %llu (rerun with KVTIER_TEST_SEED=%llu)\n",
                static_cast<unsigned long long>(s), static_cast<unsigned long long>(s));
    return s;
  }();
  return seed;
}

}  // namespace kvtier::testing
