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
//
// Under a running daemon (tests/fault/kvtierd_fault_injection.cc) two things differ: pages in
// registered memory (the DRAM pool) move as two requests, a header block and the payload, and
// the tier counts a failed page once, so with `slot_disk_bytes` set faults are rolled on the
// first request of a page only and counted per page (a page whose two requests both fail counts
// once); and the process is killed rather than closed, so PowerCutNow drops the unsynced data at
// once, and every write that completes after it too.
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
#include <tuple>
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
  // Bytes of one slot on disk (header block + payload rounded up to 4 KiB; nvme_tier.h). 0
  // (default): every request is a page of its own, as when nothing is in registered memory.
  uint64_t slot_disk_bytes = 0;
};

struct InjectedFaults {
  uint64_t read_eio = 0, write_eio = 0, write_enospc = 0, sync_eio = 0;
  // Completions after a power cut: every one fails (the device is gone).
  uint64_t cut_reads = 0, cut_writes = 0, cut_syncs = 0;
  // Bytes of unsynced ranges zeroed or scrambled by PowerCutNow (and writes completed after it).
  uint64_t dropped_bytes = 0;
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

  int OnComplete(Op op, uint32_t file, uint64_t offset, uint32_t length, int result) override {
    absl::MutexLock lock(&mu_);
    FileState& f = files_[file];
    if (op == Op::kWrite && result > 0) {
      f.unsynced[next_seq_++] = Range{offset, static_cast<uint64_t>(result)};
      // Landed after the power went (PowerCutNow): nothing guarantees what the disk kept.
      if (cut_ && !cut_paths_.empty()) {
        counts_.dropped_bytes +=
            ScrambleLocked(file, {Range{offset, static_cast<uint64_t>(result)}});
      }
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
    uint64_t* fault = nullptr;  // the count this completion's fault goes to
    int out = result;
    if (active_ && result > 0) {
      if (cut_) {
        fault = op == Op::kRead ? &counts_.cut_reads : &counts_.cut_writes;
        out = -EIO;
      } else if (PagePart(offset, length) != Part::kSecond) {
        if (op == Op::kRead && Roll(options_.read_eio_one_in)) {
          fault = &counts_.read_eio;
          out = -EIO;
        } else if (op == Op::kWrite && Roll(options_.write_eio_one_in)) {
          fault = &counts_.write_eio;
          out = -EIO;
        } else if (op == Op::kWrite && Roll(options_.write_enospc_one_in)) {
          fault = &counts_.write_enospc;
          out = -ENOSPC;
        }
      }
    }
    CountPerPageLocked(op, file, offset, length, fault);
    return out;
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
  // The power goes now, with the tier still running (it is killed afterwards, never closed):
  // as PowerCut, and every unsynced range of `paths[file]` is rewritten at once as
  // DropUnsyncedData would, and so is every write that completes from now on. Returns the bytes
  // dropped now.
  uint64_t PowerCutNow(const std::vector<std::string>& paths) {
    absl::MutexLock lock(&mu_);
    cut_ = true;
    cut_paths_ = paths;
    uint64_t dropped = 0;
    for (auto& [file, f] : files_) {
      std::vector<Range> ranges;
      for (const auto& [seq, r] : f.unsynced) ranges.push_back(r);
      dropped += ScrambleLocked(file, ranges);
    }
    counts_.dropped_bytes += dropped;
    return dropped;
  }
  bool active() const {
    absl::MutexLock lock(&mu_);
    return active_;
  }
  bool cut() const {
    absl::MutexLock lock(&mu_);
    return cut_;
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
    cut_paths_ = paths;
    uint64_t dropped = 0;
    for (auto& [file, f] : files_) {
      std::vector<Range> ranges;
      for (const auto& [seq, r] : f.unsynced) ranges.push_back(r);
      dropped += ScrambleLocked(file, ranges);
    }
    files_.clear();
    half_pages_.clear();
    cut_paths_.clear();
    cut_ = false;
    counts_ = InjectedFaults{};
    return dropped;
  }

 private:
  struct Range {
    uint64_t offset = 0;
    uint64_t length = 0;
  };
  using HalfKey = std::tuple<uint8_t, uint32_t, uint64_t>;  // op, file, page offset
  struct FileState {
    std::map<uint64_t, Range> unsynced;      // by completion sequence number
    std::multiset<uint64_t> sync_snapshots;  // outstanding syncs: last sequence each covers
  };
  bool Roll(uint32_t one_in) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return one_in != 0 && rng_() % one_in == 0;
  }

  static constexpr uint64_t kBlock = 4096;
  enum class Part : uint8_t { kWhole, kFirst, kSecond };
  // Which request of a page this is: the whole page (staged), or the header block (first) or the
  // payload (second) of a page in registered memory. Without slot_disk_bytes: always whole.
  Part PagePart(uint64_t offset, uint32_t length) const {
    const uint64_t slot = options_.slot_disk_bytes;
    if (slot <= kBlock) return Part::kWhole;
    if (offset % slot == 0) return length == kBlock ? Part::kFirst : Part::kWhole;
    return offset % slot == kBlock ? Part::kSecond : Part::kWhole;
  }
  // Counts `fault` (null: none) once per page, as the tier does: a two-part page's count waits
  // for both parts and takes the first part's fault to complete (what the tier sees first).
  void CountPerPageLocked(Op op, uint32_t file, uint64_t offset, uint32_t length, uint64_t* fault)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const Part part = PagePart(offset, length);
    if (part != Part::kWhole) {
      const HalfKey key{static_cast<uint8_t>(op), file,
                        part == Part::kFirst ? offset : offset - kBlock};
      auto [it, first_done] = half_pages_.try_emplace(key, fault);
      if (first_done) return;
      if (it->second != nullptr) fault = it->second;
      half_pages_.erase(it);
    }
    if (fault != nullptr) ++*fault;
  }
  // Rewrites `ranges` of file `file` block by block with what a power cut may leave (the new
  // bytes, zeros or random bytes). Returns the bytes zeroed or scrambled.
  uint64_t ScrambleLocked(uint32_t file, const std::vector<Range>& ranges)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (file >= cut_paths_.size() || ranges.empty()) return 0;
    const int fd = ::open(cut_paths_[file].c_str(), O_WRONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    uint64_t dropped = 0;
    std::vector<unsigned char> block(kBlock);
    for (const Range& r : ranges) {
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
    return dropped;
  }

  const FaultInjectionOptions options_;
  mutable absl::Mutex mu_;
  std::mt19937_64 rng_ ABSL_GUARDED_BY(mu_);
  std::map<uint32_t, FileState> files_ ABSL_GUARDED_BY(mu_);
  // Two-part pages one of whose requests has completed: the fault it had (null: none).
  std::map<HalfKey, uint64_t*> half_pages_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> cut_paths_ ABSL_GUARDED_BY(mu_);  // slot files, by file number
  uint64_t next_seq_ ABSL_GUARDED_BY(mu_) = 1;
  bool active_ ABSL_GUARDED_BY(mu_) = true;
  bool cut_ ABSL_GUARDED_BY(mu_) = false;
  InjectedFaults counts_ ABSL_GUARDED_BY(mu_);
};

}  // namespace kvtier::testing
