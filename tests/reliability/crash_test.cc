// Crash test with an outside record of acknowledgements (RocksDB's crash test): kvtierd with the
// NVMe tier is killed with SIGKILL at random moments while several worker processes store and
// load through it; each worker appends every submission and every acknowledgement to its own log
// file, outside the daemon. After each restart a verifier loads, per logical page, the last
// acknowledged version (intact or absent), the versions submitted after it (intact or absent: the
// kill may fall between the write and the reply) and one version never submitted (must be
// absent); any page that is not bit-identical fails the test. The daemon must be ready (its socket
// answers, so recovery is done) in under 5 s after every restart.
//
// KVTIER_CRASH_KILLS sets the number of kills (default 10, the CI run; the full run is
// bench/reliability/crash.sh with 100).
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "gtest/gtest.h"
#include "tests/integration/daemon_harness.h"
#include "tests/reliability/reliability_figures.h"

namespace kvtier::testing {
namespace {

constexpr int kWorkers = 3;
constexpr uint64_t kPageBytes = 4096;

int Kills() {
  if (const char* s = std::getenv("KVTIER_CRASH_KILLS"); s != nullptr) return std::atoi(s);
  return 10;
}

// A worker running in the background with its stdout in a file.
struct Background {
  pid_t pid = -1;
  std::string out_path;
};

Background Spawn(const std::vector<std::string>& args, const std::string& out_path) {
  Background b;
  b.out_path = out_path;
  std::vector<std::string> full = {KVTIER_WORKER_BIN};
  full.insert(full.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (std::string& a : full) argv.push_back(a.data());
  argv.push_back(nullptr);
  b.pid = ::fork();
  if (b.pid == 0) {
    const int fd = ::open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ::dup2(fd, 1);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  return b;
}

int WaitExit(pid_t pid) {
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

TEST(Reliability, CrashWithOutsideRecordOfAcknowledgements) {
  const uint64_t seed = TestSeed();
  std::mt19937_64 rng(seed);
  char tmpl[] = "/tmp/kvtier-crash-XXXXXX";
  ASSERT_NE(::mkdtemp(tmpl), nullptr);
  const std::string root = tmpl;
  const int kills = Kills();
  // No HBM and a small DRAM tier: pages go on to NVMe soon after they arrive. NVMe is big enough
  // for every store of the run (~300 a kill), so it never evicts: an acknowledged page absent
  // after a restart was still in DRAM at the kill (the figures show how many per restart).
  const uint64_t nvme_slots = std::max(4096, 400 * kills);
  const std::string config =
      absl::StrCat("http_address: \"\"\nstore:\n  page_bytes: ", kPageBytes,
                   "\n  hbm_pages: 0\n  dram_pages: 16\n  maintain_interval_ms: 10\n"
                   "nvme:\n  directories: [",
                   root, "/nvme]\n  capacity_bytes: ", nvme_slots * (4096 + kPageBytes),
                   "\nnamespaces:\n  - name: \"reliability/*\"\n    sink_slots: 0\n");
  std::vector<std::string> logs;
  for (int w = 0; w < kWorkers; ++w) logs.push_back(absl::StrCat(root, "/acks-", w, ".log"));
  const std::string all_logs = absl::StrJoin(logs, ",");

  CrashFigures total;
  auto verify = [&](const DaemonProcess& d, int iteration) {
    WorkerResult v = RunWorker({"verify", "--socket=" + d.socket_path(), "--ns=reliability/crash",
                                absl::StrCat("--page_bytes=", kPageBytes), "--log=" + all_logs});
    EXPECT_EQ(v.exit_code, 0) << "iteration " << iteration << ": " << v.output;
    const VerifyFigures f = ParseVerify(v.output);
    EXPECT_TRUE(f.parsed) << v.output;
    EXPECT_EQ(f.wrong, 0u) << "iteration " << iteration << ": " << v.output;
    EXPECT_EQ(f.never_present, 0u) << "iteration " << iteration << ": " << v.output;
    total.Add(f);
    total.max_acked_absent = std::max(total.max_acked_absent, f.acked - f.acked_intact);
  };
  for (int it = 0; it <= kills; ++it) {
    const auto t0 = std::chrono::steady_clock::now();
    absl::StatusOr<DaemonProcess> d = DaemonProcess::Start(config);
    const double ready_ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    ASSERT_TRUE(d.ok()) << "restart " << it << ": " << d.status();
    total.NoteReady(ready_ms);
    EXPECT_LT(ready_ms, 5000) << "restart " << it;
    verify(*d, it);
    if (HasFailure() || it == kills) break;
    std::vector<Background> workers;
    for (int w = 0; w < kWorkers; ++w) {
      workers.push_back(
          Spawn({"crash", "--socket=" + d->socket_path(), "--ns=reliability/crash",
                 absl::StrCat("--page_bytes=", kPageBytes), absl::StrCat("--worker=", w),
                 absl::StrCat("--seed=", rng()), "--keys=64", "--batch=8", "--log=" + logs[w]},
                absl::StrCat(root, "/worker-", w, ".out")));
    }
    // A random moment: from while the workers connect to well into their stores and loads.
    std::this_thread::sleep_for(std::chrono::milliseconds(30 + rng() % 1200));
    ASSERT_EQ(::kill(d->pid(), SIGKILL), 0);
    ++total.kills;
    for (const Background& b : workers) {
      const int rc = WaitExit(b.pid);
      const std::string out = ReadFile(b.out_path);
      EXPECT_EQ(rc, 0) << "worker after kill " << it << ": " << out;
      total.AddWorker(out);
    }
    d->Stop();  // reaps the killed daemon
  }
  std::printf("%s\n", total.Summary().c_str());
  EXPECT_EQ(total.kills, kills);
  EXPECT_GT(total.acks, 0u);
  EXPECT_GT(total.acked_intact, 0u) << "no acknowledged page was ever found after a restart";
  EXPECT_LT(total.max_ready_ms, 5000);
  std::error_code ec;
  if (!HasFailure()) std::filesystem::remove_all(root, ec);
}

}  // namespace
}  // namespace kvtier::testing
