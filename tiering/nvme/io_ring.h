// IoRing: one io_uring instance with its slot files and staging buffers registered once, and a
// dedicated thread that reaps completions. StagingPool: the O_DIRECT-aligned buffers pages pass
// through on their way to and from the disk. Internal to the NVMe tier.
//
// Thread model: Submit may be called from any thread (serialized by submit_mu_); the completion
// thread is the only one that touches the completion queue and calls IoWaiter::Complete.
#pragma once

#include <liburing.h>
#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "tiering/nvme/nvme_tier.h"

namespace kvtier::nvme {

class IoWaiter;

// One operation in flight. Owned by the caller (in a per-batch array), borrowed by the ring until
// its completion has been delivered to `waiter`.
struct IoRequest {
  NvmeFaultInjector::Op op = NvmeFaultInjector::Op::kRead;
  uint32_t file = 0;  // index of the registered file
  int buffer = -1;    // index of the registered buffer `data` lies in, -1 for none
  std::byte* data = nullptr;
  uint32_t length = 0;
  uint64_t offset = 0;
  IoWaiter* waiter = nullptr;
  uint32_t id = 0;  // the caller's name for this request
  int result = 0;   // bytes transferred or -errno, set on completion
};

// Moves `r` past `n` transferred bytes (a short transfer about to be continued).
inline void Advance(IoRequest& r, uint32_t n) {
  r.data += n;
  r.offset += n;
  r.length -= n;
}

// Collects the completions of one caller's batch.
class IoWaiter {
 public:
  explicit IoWaiter(size_t capacity) { done_.reserve(capacity); }
  void Complete(uint32_t id) {
    absl::MutexLock lock(&mu_);
    done_.push_back(id);
  }
  // Blocks until at least one request has completed, then moves their ids into `out`.
  void Take(std::vector<uint32_t>& out) {
    out.clear();
    mu_.LockWhen(absl::Condition(
        +[](std::vector<uint32_t>* d) { return !d->empty(); }, &done_));
    out.swap(done_);
    mu_.Unlock();
  }

 private:
  absl::Mutex mu_;
  std::vector<uint32_t> done_ ABSL_GUARDED_BY(mu_);
};

// Fixed pool of equally sized, 4 KiB-aligned buffers carved from one anonymous mapping.
class StagingPool {
 public:
  static absl::StatusOr<std::unique_ptr<StagingPool>> Create(uint32_t count, size_t buffer_bytes);
  ~StagingPool();
  StagingPool(const StagingPool&) = delete;
  StagingPool& operator=(const StagingPool&) = delete;

  // A free buffer's index, or -1 when none is free and `wait` is false.
  int Acquire(bool wait);
  void Release(int index);
  std::byte* data(int index) const { return base_ + static_cast<size_t>(index) * buffer_bytes_; }
  size_t buffer_bytes() const { return buffer_bytes_; }
  uint32_t count() const { return count_; }

 private:
  StagingPool(std::byte* base, size_t map_bytes, uint32_t count, size_t buffer_bytes);
  std::byte* const base_;
  const size_t map_bytes_;
  const uint32_t count_;
  const size_t buffer_bytes_;
  absl::Mutex mu_;
  std::vector<int> free_ ABSL_GUARDED_BY(mu_);
};

class IoRing {
 public:
  struct Options {
    uint32_t entries = 64;
    bool sqpoll = false;
    uint32_t sqpoll_idle_ms = 100;
    NvmeFaultInjector* fault_injector = nullptr;
  };
  // Registers `fds` and the pool's buffers. A registration the kernel refuses (e.g. locked-memory
  // limit) falls back to unregistered I/O; `describe()` says which is live.
  static absl::StatusOr<std::unique_ptr<IoRing>> Create(const Options& options,
                                                        absl::Span<const int> fds,
                                                        const StagingPool& pool);
  ~IoRing();
  IoRing(const IoRing&) = delete;
  IoRing& operator=(const IoRing&) = delete;

  // Queues and submits `requests`; each later completes through its waiter. On error nothing of
  // the failed remainder was queued: those requests are completed with the error right away.
  void Submit(absl::Span<IoRequest* const> requests);
  // Registers `extra` after the staging buffers (indices count.. of the pool onward), replacing
  // any earlier extra set. Only while no I/O is in flight.
  absl::Status RegisterExtraBuffers(absl::Span<const iovec> extra);
  const std::string& describe() const { return describe_; }

 private:
  IoRing(const Options& options, std::vector<int> fds);
  std::vector<iovec> staging_iovs_;
  void ReapLoop();
  void Prep(io_uring_sqe* sqe, IoRequest* r) ABSL_EXCLUSIVE_LOCKS_REQUIRED(submit_mu_);

  const Options options_;
  const std::vector<int> fds_;
  io_uring ring_{};
  bool ring_live_ = false;
  bool fixed_files_ = false;
  bool fixed_buffers_ = false;
  std::string describe_;
  absl::Mutex submit_mu_;
  std::thread reaper_;
};

}  // namespace kvtier::nvme
