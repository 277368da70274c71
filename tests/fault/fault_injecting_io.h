// FaultInjectingIo: the NVMe tier's fault-injecting I/O layer for tests, after RocksDB's
// FaultInjectionTestFS. Plugged into NvmeTierOptions::fault_injector, it sees every request the
// ring queues and every completion, and
//  - fails reads with EIO (1 in `read_eio_one_in`), writes with EIO or ENOSPC and syncs with EIO;
//  - remembers which written byte ranges no completed sync covers yet, so that after a simulated
//    power cut (PowerCut(), then DropUnsyncedData() once the tier is closed) those ranges hold
//    what a real power cut may leave: the new bytes, zeros or garbage, per 4 KiB block;
//  - counts every fault it caused, so a test can check the tier counted each one.
// The real I/O always happens; only what the tier is told changes (and, at a power cut, the
// unsynced bytes on disk afterwards). Thread model: OnSubmit runs under the ring's submit lock,
// OnComplete on its completion thread, the rest on the test's thread; one mutex guards all.
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "tiering/nvme/nvme_tier.h"

namespace kvtier::testing {

struct FaultInjectionOptions {
  uint32_t read_eio_one_in = 32;       // 0: never
  uint32_t write_eio_one_in = 128;     // 0: never
  uint32_t write_enospc_one_in = 997;  // 0: never
  uint32_t sync_eio_one_in = 251;      // 0: never
  uint64_t seed = 1;
};

struct InjectedFaults {
  uint64_t read_eio = 0, write_eio = 0, write_enospc = 0, sync_eio = 0;
  // Completions after a power cut: every one fails (the device is gone).
  uint64_t cut_reads = 0, cut_writes = 0, cut_syncs = 0;
  uint64_t reads() const { return read_eio + cut_reads; }
  uint64_t writes() const { return write_eio + write_enospc + cut_writes; }
  uint64_t syncs() const { return sync_eio + cut_syncs; }
};

class FaultInjectingIo final : public NvmeFaultInjector {
 public:
  explicit FaultInjectingIo(const FaultInjectionOptions& options)
      : options_(options), rng_(options.seed) {}

  void OnSubmit(Op op, uint32_t file, uint64_t, uint32_t) override {
    if (op != Op::kSync) return;
    absl::MutexLock lock(&mu_);
    // This sync covers every write completed so far on `file`, and nothing later.
    files_[file].sync_snapshots.insert(next_seq_ - 1);
  }

  int OnComplete(Op op, uint32_t file, uint64_t offset, uint32_t /*length*/, int result) override {
    absl::MutexLock lock(&mu_);
    FileState& f = files_[file];
    if (op == Op::kWrite && result > 0) {
      f.unsynced[next_seq_++] = Range{offset, static_cast<uint64_t>(result)};
    }
    if (op == Op::kSync) {
      if (result != 0) return result;  // a real failure: nothing to add
      const bool fail = cut_ || (active_ && Roll(options_.sync_eio_one_in));
      // Which of this file's outstanding syncs finished is unknown (they look alike). A success
      // is taken to be the one that covers most (so nothing a sync made durable is ever dropped),
      // a failure the one that covers least.
      if (!f.sync_snapshots.empty()) {
        auto covered = fail ? f.sync_snapshots.begin() : std::prev(f.sync_snapshots.end());
        if (!fail) f.unsynced.erase(f.unsynced.begin(), f.unsynced.upper_bound(*covered));
        f.sync_snapshots.erase(covered);
      }
      if (!fail) return result;
      ++(cut_ ? counts_.cut_syncs : counts_.sync_eio);
      return -EIO;
    }
    if (!active_ || result <= 0) return result;
    if (cut_) {
      ++(op == Op::kRead ? counts_.cut_reads : counts_.cut_writes);
      return -EIO;
    }
    if (op == Op::kRead && Roll(options_.read_eio_one_in)) {
      ++counts_.read_eio;
      return -EIO;
    }
    if (op == Op::kWrite && Roll(options_.write_eio_one_in)) {
      ++counts_.write_eio;
      return -EIO;
    }
    if (op == Op::kWrite && Roll(options_.write_enospc_one_in)) {
      ++counts_.write_enospc;
      return -ENOSPC;
    }
    return result;
  }

  // Off: completions pass through unchanged (the power-cut bookkeeping goes on).
  void set_active(bool active) {
    absl::MutexLock lock(&mu_);
    active_ = active;
  }
  // The power goes: from now on every completion fails, and nothing more becomes durable.
  void PowerCut() {
    absl::MutexLock lock(&mu_);
    cut_ = true;
  }
  InjectedFaults counts() const {
    absl::MutexLock lock(&mu_);
    return counts_;
  }
  // With the tier closed: rewrites every unsynced range of `paths[file]` block by block with
  // what a power cut may leave (the new bytes, zeros or random bytes), then forgets the cut and
  // every count. Returns the bytes it dropped (zeroed or scrambled).
  uint64_t DropUnsyncedData(const std::vector<std::string>& paths) {
    absl::MutexLock lock(&mu_);
    uint64_t dropped = 0;
    for (auto& [file, f] : files_) {
      const int fd = ::open(paths.at(file).c_str(), O_WRONLY | O_CLOEXEC);
      if (fd < 0) continue;
      for (const auto& [seq, r] : f.unsynced) {
        std::vector<unsigned char> block(4096);
        for (uint64_t at = r.offset; at < r.offset + r.length; at += block.size()) {
          const size_t n =
              static_cast<size_t>(std::min<uint64_t>(block.size(), r.offset + r.length - at));
          const uint64_t fate = rng_() % 3;
          if (fate == 0) continue;  // this block made it to the disk after all
          for (size_t i = 0; i < n; ++i) {
            block[i] = fate == 1 ? 0 : static_cast<unsigned char>(rng_());
          }
          if (::pwrite(fd, block.data(), n, static_cast<off_t>(at)) == static_cast<ssize_t>(n)) {
            dropped += n;
          }
        }
      }
      ::fsync(fd);
      ::close(fd);
    }
    files_.clear();
    cut_ = false;
    counts_ = InjectedFaults{};
    return dropped;
  }

 private:
  struct Range {
    uint64_t offset = 0;
    uint64_t length = 0;
  };
  struct FileState {
    std::map<uint64_t, Range> unsynced;      // by completion sequence number
    std::multiset<uint64_t> sync_snapshots;  // outstanding syncs: last sequence each covers
  };
  bool Roll(uint32_t one_in) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return one_in != 0 && rng_() % one_in == 0;
  }

  const FaultInjectionOptions options_;
  mutable absl::Mutex mu_;
  std::mt19937_64 rng_ ABSL_GUARDED_BY(mu_);
  std::map<uint32_t, FileState> files_ ABSL_GUARDED_BY(mu_);
  uint64_t next_seq_ ABSL_GUARDED_BY(mu_) = 1;
  bool active_ ABSL_GUARDED_BY(mu_) = true;
  bool cut_ ABSL_GUARDED_BY(mu_) = false;
  InjectedFaults counts_ ABSL_GUARDED_BY(mu_);
};

}  // namespace kvtier::testing
