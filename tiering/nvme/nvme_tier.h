// NvmeTier: the NVMe tier of the store (DESIGN.md §3) — page slots in preallocated O_DIRECT files,
// moved by io_uring, indexed in RocksDB, verified on every read.
//
// Layout: `slots` slots striped over one file per configured directory (slot s lives in file
// s % dirs, at index s / dirs), each slot one 4 KiB header block (PageHeader: magic, version,
// key, namespace salt, length, crc32c) followed by the payload rounded up to 4 KiB.
//
// Crash consistency: a batch's payloads are written and made durable (fdatasync through the
// ring) *before* their index entries go to RocksDB (WAL on, synced); Write reports a page stored
// only after both. A crash in between leaves bytes no index entry names: the slot is free at the
// next start. An index entry whose bytes were later overwritten (a Release whose delete was lost)
// fails the header/checksum check on read and is dropped: a page is intact or absent, never wrong.
//
// Zero-copy: host memory registered with RegisterHostMemory (the DRAM pool) joins the ring's
// fixed buffers; a page that is one 4 KiB-aligned piece of it moves between the disk and that
// memory directly (the header block still goes through staging). Other pages pass through a
// registered staging buffer. On a failed read (an error status) the caller's destination may
// hold unverified bytes: it must not use them, and the tier never reports them as a page.
//
// Faults: ENOSPC/EFBIG (at preallocation, on a write or in the index) stop admission — new pages
// are refused and counted, stored ones keep being served — until space is free again (looked at
// every admission_retry_refusals refusals; the index is then reopened read-write); EIO or a failed
// verification on read drops the page (a miss, counted); short transfers are continued when
// block-aligned and fail the page otherwise; a missing or unreadable index means an empty tier
// (logged, the unreadable one kept aside); a data directory that disappears at run time keeps
// working through its open file, and at the next start is recreated empty with its index entries
// dropped (counted).
//
// Thread model: Write/Read/Release may be called from many threads at once for different slots
// (TierBackend's contract). Submissions are serialized by `submit_mu_`; one dedicated thread reaps
// completions and hands them back to the waiting caller, who copies, checksums and resubmits. A
// fixed pool of staging buffers, registered with the ring once, bounds the pages in flight.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "tiering/tier_backend.h"

namespace kvtier {

namespace nvme {
class IoRing;
class StagingPool;
class IndexDb;
struct SlotState;
struct SlotFile;
}  // namespace nvme

// Test seam, in the spirit of RocksDB's FaultInjectionTestFS: sees every completion before the
// tier does and may replace its result (an errno as a negative value, or a short byte count).
// The real I/O has happened; only what the tier is told changes. Called on the completion thread.
class NvmeFaultInjector {
 public:
  enum class Op : uint8_t { kRead = 0, kWrite = 1, kSync = 2 };
  virtual ~NvmeFaultInjector() = default;
  // `result` is what the kernel returned: bytes transferred or -errno.
  virtual int OnComplete(Op op, uint32_t file, uint64_t offset, uint32_t length, int result) = 0;
  // Sees each request as it is queued (under the ring's submit lock), before the kernel can act
  // on it: what a sync covers is what completed before it was submitted, which a simulated power
  // cut needs to know. Default: nothing.
  virtual void OnSubmit(Op /*op*/, uint32_t /*file*/, uint64_t /*offset*/, uint32_t /*length*/) {}
};

struct NvmeTierOptions {
  // Directories holding the slot files, one file each; created when missing. Required.
  std::vector<std::string> dirs;
  // RocksDB index directory. Default (empty): "<dirs[0]>/index".
  std::string index_dir;
  // Bytes of every page. Required.
  uint64_t page_bytes = 0;
  // Page slots over all directories. Required.
  uint32_t slots = 0;
  // Pages in flight at once: ring entries and staging buffers (each one slot big, so memory is
  // queue_depth * (page_bytes + 4 KiB)). Default 32.
  uint32_t queue_depth = 32;
  // Kernel-side submission polling (IORING_SETUP_SQPOLL): lower latency for a busy core. Off by
  // default: on a 2-core host the poller competes with the copy threads.
  bool sqpoll = false;
  uint32_t sqpoll_idle_ms = 100;
  // fdatasync the slot files (through the ring) before indexing a batch. Default on: without it a
  // power loss can leave index entries for bytes that never reached the disk (detected, but lost).
  bool sync_data = true;
  // Sync RocksDB's WAL for each batch of index writes. Default on, for the same reason.
  bool sync_index = true;
  // fallocate the slot files to full size at start. Default on. When the file system cannot hold
  // them, the tier keeps what it could allocate and stops admitting beyond it (ENOSPC handling).
  bool preallocate = true;
  // After the file system filled up, every this many refused pages the free space is looked at
  // again (fstatvfs of each slot file); with room for kResumeSlots slots everywhere, admission
  // resumes (a write that hits ENOSPC again stops it again). Default 64 refusals.
  uint32_t admission_retry_refusals = 64;
  // Where one-off log lines go (open, recovery, ENOSPC, dropped pages). Default: stderr.
  std::function<void(absl::string_view)> log;
  // Sees each Write/Read batch's latency (the daemon's NVMe I/O histograms). Must outlive the tier.
  IoObserver* observer = nullptr;
  // Tests only: rewrites completion results. Must outlive the tier.
  NvmeFaultInjector* fault_injector = nullptr;
};

// Counters: monotonically increasing, readable from any thread.
struct NvmeCounters {
  uint64_t pages_written = 0;
  uint64_t pages_read = 0;
  uint64_t bytes_written = 0;
  uint64_t bytes_read = 0;
  uint64_t write_errors = 0;         // a write, sync or index update failed
  uint64_t read_errors = 0;          // EIO and friends: page dropped
  uint64_t short_ios = 0;            // short transfers seen (resubmitted or failed)
  uint64_t checksum_mismatches = 0;  // header or payload did not verify: page dropped
  uint64_t enospc = 0;               // ENOSPC/EFBIG seen (after which admission stops)
  uint64_t rejected_full = 0;        // writes refused because the tier stopped admitting
  uint64_t recovered_pages = 0;      // index entries handed to the store at start
  uint64_t recovery_dropped = 0;     // index entries dropped at start (bad record, lost file, ...)
  uint64_t zero_copy_pages = 0;      // pages moved straight from/to registered host memory
  uint64_t staged_pages = 0;         // pages copied through a staging buffer (the fallback)
};

class NvmeTier final : public TierBackend {
 public:
  static absl::StatusOr<std::unique_ptr<NvmeTier>> Create(const NvmeTierOptions& options);
  ~NvmeTier() override;
  NvmeTier(const NvmeTier&) = delete;
  NvmeTier& operator=(const NvmeTier&) = delete;

  Tier tier() const override { return Tier::kNvme; }
  absl::string_view name() const override { return "io_uring"; }
  uint32_t slot_count() const override { return options_.slots; }
  uint64_t slot_bytes() const override { return options_.page_bytes; }
  std::byte* HostSlot(uint32_t) const override { return nullptr; }

  // Timed (IoObserver) wrappers around WriteBatch/ReadBatch.
  void Write(absl::Span<const SlotWrite> writes, absl::Span<absl::Status> results) override;
  void Read(absl::Span<const SlotRead> reads, absl::Span<absl::Status> results) override;
  void Release(uint32_t slot) override;
  absl::Status Recover(const std::function<void(const RecoveredPage&)>& visit) override;
  // Registers host memory (e.g. the DRAM pool) with the ring once, for zero-copy moves. Call
  // before the first I/O; a refusal is logged and leaves those pages on the copy path.
  absl::Status RegisterHostMemory(absl::Span<const MutableBuffer> regions) override;

  NvmeCounters counters() const;
  // False once the file system filled up, or while the index cannot be written (opened read-only
  // on a full file system, or after a failed write): new pages are refused, stored ones still
  // served. A full file system is looked at again as refusals go on (admission_retry_refusals),
  // and admission resumes once space was freed.
  bool admitting() const;
  // Bytes of one slot on disk (header block + payload rounded to 4 KiB).
  uint64_t slot_disk_bytes() const { return slot_disk_bytes_; }
  // Where slot `slot` lives: file path and byte offset of its header block.
  std::string SlotFilePath(uint32_t slot) const;
  uint64_t SlotFileOffset(uint32_t slot) const;
  // How the ring was set up ("registered buffers", "sqpoll", ...), for logs and benchmarks.
  std::string Describe() const;

 private:
  // Runs one batch, reporting its latency to options_.observer when there is one.
  template <typename Batch>
  void Timed(bool write, size_t pages, Batch&& batch);
  void WriteBatch(absl::Span<const SlotWrite> writes, absl::Span<absl::Status> results);
  void ReadBatch(absl::Span<const SlotRead> reads, absl::Span<absl::Status> results);
  struct Counters_;

  explicit NvmeTier(const NvmeTierOptions& options);
  absl::Status Open();
  absl::Status OpenFile(uint32_t i, uint32_t slots_in_file);
  void Log(absl::string_view line) const;
  void NoteNoSpace(absl::string_view what);
  // Counts one refusal; every options_.admission_retry_refusals-th looks at the free space and
  // resumes admission when there is room. True when admitting again.
  bool RetryAdmission();
  uint32_t FileOf(uint32_t slot) const { return slot % file_count_; }
  // Registered buffer index of a page whose memory is one aligned piece of a registered host
  // region, else -1.
  template <typename Buffer>
  int DirectBuffer(absl::Span<const Buffer> bufs) const;
  // Drops a page whose bytes cannot be trusted: forgets the slot and deletes its index entry.
  void DropSlot(uint32_t slot);

  const NvmeTierOptions options_;
  const uint64_t payload_disk_bytes_;  // payload rounded up to 4 KiB
  const uint64_t slot_disk_bytes_;
  std::vector<nvme::SlotFile> files_;  // fixed after Open
  const uint32_t file_count_;
  std::unique_ptr<nvme::IndexDb> index_;
  std::unique_ptr<nvme::StagingPool> staging_;
  std::unique_ptr<nvme::IoRing> ring_;
  // One entry per slot. Entries of different slots are touched by different threads (the store
  // never hands one slot to two threads), so they need no lock of their own.
  std::unique_ptr<nvme::SlotState[]> slot_state_;
  struct HostRegion {
    uintptr_t begin = 0;
    uintptr_t end = 0;
    int buffer_index = -1;
  };
  std::vector<HostRegion> host_regions_;  // set before I/O starts, read-only after
  std::atomic<bool> admitting_{true};
  std::atomic<bool> logged_no_space_{false};
  std::atomic<uint32_t> refusals_since_retry_{0};
  std::string index_dir_;  // set by Open
  std::unique_ptr<Counters_> counters_;
};

}  // namespace kvtier
