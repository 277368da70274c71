// kvtierd_fault_injection: kvtierd (KvtierdMain, the real daemon) with the fault-injecting I/O
// layer (fault_injecting_io.h) under its NVMe tier — RocksDB's db_stress with
// FaultInjectionTestFS, for kvtierd. Built under tests/ only, never installed; kvtierd itself has
// no way to load an injector. Takes every kvtierd flag plus the --fault_* flags below.
//
// The injector starts inactive (completions pass through) so a test can check recovery first. It
// is driven through --fault_control_dir: the test writes "SEQ VERB" into <dir>/command and sends
// SIGUSR1; a thread here runs the verb and then writes the injector's counts to <dir>/report
// (written whole, then renamed), a line "faults seq=SEQ active=... cut=... read_eio=... ...".
// Verbs:
//   activate    faults from now on (EIO, ENOSPC at the --fault_* rates)
//   deactivate  no more faults
//   cut         a power cut: every completion fails from now on, and every byte range no
//               completed sync covered is rewritten now (kept, zeros or garbage per 4 KiB block),
//               as is every write completing later; the test then kills the process with SIGKILL
//   report      nothing: only the counts
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "daemon/kvtierd_main.h"
#include "tests/fault/fault_injecting_io.h"

ABSL_FLAG(uint32_t, fault_read_eio_one_in, 32, "fail 1 in N page reads with EIO (0: never)");
ABSL_FLAG(uint32_t, fault_write_eio_one_in, 128, "fail 1 in N page writes with EIO (0: never)");
ABSL_FLAG(uint32_t, fault_write_enospc_one_in, 997,
          "fail 1 in N page writes with ENOSPC (0: never)");
ABSL_FLAG(uint32_t, fault_sync_eio_one_in, 251, "fail 1 in N fdatasyncs with EIO (0: never)");
ABSL_FLAG(uint64_t, fault_seed, 1, "the injector's random seed");
ABSL_FLAG(std::string, fault_control_dir, "",
          "directory of the command and report files (required)");

namespace kvtier::testing {
namespace {

// The injector and the thread that runs the test's commands; lives as long as the process.
class FaultControl {
 public:
  FaultControl(const DaemonConfig& config, std::string dir) : dir_(std::move(dir)) {
    FaultInjectionOptions o;
    o.read_eio_one_in = absl::GetFlag(FLAGS_fault_read_eio_one_in);
    o.write_eio_one_in = absl::GetFlag(FLAGS_fault_write_eio_one_in);
    o.write_enospc_one_in = absl::GetFlag(FLAGS_fault_write_enospc_one_in);
    o.sync_eio_one_in = absl::GetFlag(FLAGS_fault_sync_eio_one_in);
    o.seed = absl::GetFlag(FLAGS_fault_seed);
    // As MakeNvmeBackend lays slots out: a 4 KiB header block, the payload rounded up to 4 KiB.
    o.slot_disk_bytes = 4096 + (config.store.page_bytes + 4095) / 4096 * 4096;
    io_ = std::make_unique<FaultInjectingIo>(o);
    io_->set_active(false);
    // The slot files, by file number (NvmeTier: one "kvtier-nvme.slots" per directory, in order).
    for (const std::string& d : config.nvme.directories) {
      paths_.push_back((std::filesystem::path(d) / "kvtier-nvme.slots").string());
    }
    thread_ = std::thread([this] { Loop(); });
  }
  ~FaultControl() {
    stopping_.store(true);
    ::pthread_kill(thread_.native_handle(), SIGUSR1);
    thread_.join();
  }
  FaultInjectingIo* io() { return io_.get(); }

 private:
  void Loop() {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    for (;;) {
      int sig = 0;
      if (::sigwait(&set, &sig) != 0) continue;
      if (stopping_.load()) return;
      std::ifstream in(dir_ + "/command");
      uint64_t seq = 0;
      std::string verb;
      if (!(in >> seq >> verb)) continue;
      if (verb == "activate") {
        io_->set_active(true);
      } else if (verb == "deactivate") {
        io_->set_active(false);
      } else if (verb == "cut") {
        for (const std::string& p : paths_) {
          if (!std::filesystem::exists(p)) {
            std::fprintf(stderr, "kvtierd_fault_injection: no slot file %s\n", p.c_str());
          }
        }
        io_->PowerCutNow(paths_);
      } else if (verb != "report") {
        std::fprintf(stderr, "kvtierd_fault_injection: unknown command '%s'\n", verb.c_str());
        continue;
      }
      WriteReport(seq);
    }
  }

  void WriteReport(uint64_t seq) {
    const InjectedFaults c = io_->counts();
    const std::string line = absl::StrCat(
        "faults seq=", seq, " active=", io_->active() ? 1 : 0, " cut=", io_->cut() ? 1 : 0,
        " read_eio=", c.read_eio, " write_eio=", c.write_eio, " write_enospc=", c.write_enospc,
        " sync_eio=", c.sync_eio, " cut_reads=", c.cut_reads, " cut_writes=", c.cut_writes,
        " cut_syncs=", c.cut_syncs, " dropped_bytes=", c.dropped_bytes, "\n");
    const std::string tmp = dir_ + "/report.tmp";
    {
      std::ofstream out(tmp, std::ios::trunc);
      out << line;
    }
    std::filesystem::rename(tmp, dir_ + "/report");
  }

  const std::string dir_;
  std::unique_ptr<FaultInjectingIo> io_;
  std::vector<std::string> paths_;
  std::atomic<bool> stopping_{false};
  std::thread thread_;
};

}  // namespace
}  // namespace kvtier::testing

int main(int argc, char** argv) {
  // SIGUSR1 is the command bell: blocked in every thread (all start after this) and taken by the
  // control thread's sigwait, so it never reaches its default action.
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGUSR1);
  pthread_sigmask(SIG_BLOCK, &mask, nullptr);
  std::unique_ptr<kvtier::testing::FaultControl> control;
  kvtier::KvtierdHooks hooks;
  hooks.nvme_fault_injector = [&control](const kvtier::DaemonConfig& config) {
    const std::string dir = absl::GetFlag(FLAGS_fault_control_dir);
    if (dir.empty()) {
      std::fprintf(stderr, "kvtierd_fault_injection: --fault_control_dir is required\n");
      std::exit(2);
    }
    control = std::make_unique<kvtier::testing::FaultControl>(config, dir);
    return control->io();
  };
  return kvtier::KvtierdMain(argc, argv, hooks);
}
