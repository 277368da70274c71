#include "tiering/nvme/io_ring.h"

#include <sys/mman.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace kvtier::nvme {

StagingPool::StagingPool(std::byte* base, size_t map_bytes, uint32_t count, size_t buffer_bytes)
    : base_(base), map_bytes_(map_bytes), count_(count), buffer_bytes_(buffer_bytes) {
  free_.reserve(count);
  for (int i = static_cast<int>(count) - 1; i >= 0; --i) free_.push_back(i);
}

StagingPool::~StagingPool() { munmap(base_, map_bytes_); }

absl::StatusOr<std::unique_ptr<StagingPool>> StagingPool::Create(uint32_t count,
                                                                 size_t buffer_bytes) {
  if (count == 0 || buffer_bytes == 0 || buffer_bytes % 4096 != 0) {
    return absl::InvalidArgumentError(absl::StrCat("staging pool of ", count, " buffers of ",
                                                   buffer_bytes,
                                                   " bytes (must be 4 KiB multiples)"));
  }
  const size_t bytes = size_t{count} * buffer_bytes;
  // MAP_POPULATE: fault every page in now, not on the first page that passes through.
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE,
                 -1, 0);
  if (p == MAP_FAILED) {
    return absl::ResourceExhaustedError(
        absl::StrCat("mmap of a ", bytes, "-byte staging area: ", std::strerror(errno)));
  }
  return std::unique_ptr<StagingPool>(
      new StagingPool(static_cast<std::byte*>(p), bytes, count, buffer_bytes));
}

int StagingPool::Acquire(bool wait) {
  absl::MutexLock lock(&mu_);
  if (wait) {
    mu_.Await(absl::Condition(
        +[](std::vector<int>* f) { return !f->empty(); }, &free_));
  } else if (free_.empty()) {
    return -1;
  }
  const int i = free_.back();
  free_.pop_back();
  return i;
}

void StagingPool::Release(int index) {
  absl::MutexLock lock(&mu_);
  free_.push_back(index);
}

IoRing::IoRing(const Options& options, std::vector<int> fds)
    : options_(options), fds_(std::move(fds)) {}

absl::StatusOr<std::unique_ptr<IoRing>> IoRing::Create(const Options& options,
                                                       absl::Span<const int> fds,
                                                       const StagingPool& pool) {
  std::unique_ptr<IoRing> ring(new IoRing(options, std::vector<int>(fds.begin(), fds.end())));
  io_uring_params params{};
  if (options.sqpoll) {
    params.flags |= IORING_SETUP_SQPOLL;
    params.sq_thread_idle = options.sqpoll_idle_ms;
  }
  // Twice the entries in the completion queue: fsyncs ride alongside a full set of page I/Os.
  params.flags |= IORING_SETUP_CQSIZE;
  params.cq_entries = options.entries * 2;
  if (int rc = io_uring_queue_init_params(options.entries, &ring->ring_, &params); rc < 0) {
    return absl::UnavailableError(absl::StrCat("io_uring_queue_init(", options.entries,
                                               options.sqpoll ? ", SQPOLL" : "",
                                               "): ", std::strerror(-rc)));
  }
  ring->ring_live_ = true;
  std::vector<std::string> notes;
  if (io_uring_register_files(&ring->ring_, fds.data(), static_cast<unsigned>(fds.size())) == 0) {
    ring->fixed_files_ = true;
    notes.push_back("registered files");
  }
  std::vector<iovec> iovs(pool.count());
  for (uint32_t i = 0; i < pool.count(); ++i) {
    iovs[i] = iovec{pool.data(static_cast<int>(i)), pool.buffer_bytes()};
  }
  ring->staging_iovs_ = iovs;
  if (int rc =
          io_uring_register_buffers(&ring->ring_, iovs.data(), static_cast<unsigned>(iovs.size()));
      rc == 0) {
    ring->fixed_buffers_ = true;
    notes.push_back("registered buffers");
  } else {
    notes.push_back(
        absl::StrCat("unregistered buffers (io_uring_register_buffers: ", std::strerror(-rc), ")"));
  }
  if (options.sqpoll) notes.push_back("sqpoll");
  ring->describe_ =
      absl::StrCat("io_uring, ", options.entries, " entries, ", absl::StrJoin(notes, ", "));
  ring->reaper_ = std::thread([r = ring.get()] { r->ReapLoop(); });
  return ring;
}

IoRing::~IoRing() {
  if (reaper_.joinable()) {
    // A NOP with no request behind it tells the reaper to stop; every caller has already
    // collected its own completions, so nothing else is in flight.
    {
      absl::MutexLock lock(&submit_mu_);
      io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
      while (sqe == nullptr) {
        io_uring_submit(&ring_);
        sqe = io_uring_get_sqe(&ring_);
      }
      io_uring_prep_nop(sqe);
      io_uring_sqe_set_data(sqe, nullptr);
      io_uring_submit(&ring_);
    }
    reaper_.join();
  }
  if (ring_live_) {
    // Unregister synchronously: ring teardown is deferred in the kernel, and until it runs the
    // registered files stay referenced (their space is not freed, a restart's files differ).
    if (fixed_files_) io_uring_unregister_files(&ring_);
    if (fixed_buffers_) io_uring_unregister_buffers(&ring_);
    io_uring_queue_exit(&ring_);
  }
}

absl::Status IoRing::RegisterExtraBuffers(absl::Span<const iovec> extra) {
  absl::MutexLock lock(&submit_mu_);
  if (!fixed_buffers_) {
    return absl::FailedPreconditionError("the ring runs without registered buffers");
  }
  std::vector<iovec> all = staging_iovs_;
  all.insert(all.end(), extra.begin(), extra.end());
  io_uring_unregister_buffers(&ring_);
  int rc = io_uring_register_buffers(&ring_, all.data(), static_cast<unsigned>(all.size()));
  if (rc == 0) return absl::OkStatus();
  // Put the staging buffers back so the copy path keeps its fixed buffers.
  absl::Status err =
      absl::UnavailableError(absl::StrCat("io_uring_register_buffers: ", std::strerror(-rc)));
  if (io_uring_register_buffers(&ring_, staging_iovs_.data(),
                                static_cast<unsigned>(staging_iovs_.size())) != 0) {
    fixed_buffers_ = false;
  }
  return err;
}

void IoRing::Prep(io_uring_sqe* sqe, IoRequest* r) {
  const int fd = fixed_files_ ? static_cast<int>(r->file) : fds_[r->file];
  switch (r->op) {
    case NvmeFaultInjector::Op::kRead:
      if (fixed_buffers_ && r->buffer >= 0) {
        io_uring_prep_read_fixed(sqe, fd, r->data, r->length, r->offset, r->buffer);
      } else {
        io_uring_prep_read(sqe, fd, r->data, r->length, r->offset);
      }
      break;
    case NvmeFaultInjector::Op::kWrite:
      if (fixed_buffers_ && r->buffer >= 0) {
        io_uring_prep_write_fixed(sqe, fd, r->data, r->length, r->offset, r->buffer);
      } else {
        io_uring_prep_write(sqe, fd, r->data, r->length, r->offset);
      }
      break;
    case NvmeFaultInjector::Op::kSync:
      io_uring_prep_fsync(sqe, fd, IORING_FSYNC_DATASYNC);
      break;
  }
  if (fixed_files_) sqe->flags |= IOSQE_FIXED_FILE;
  io_uring_sqe_set_data(sqe, r);
  if (options_.fault_injector != nullptr) {
    options_.fault_injector->OnSubmit(r->op, r->file, r->offset, r->length);
  }
}

void IoRing::Submit(absl::Span<IoRequest* const> requests) {
  if (requests.empty()) return;
  absl::MutexLock lock(&submit_mu_);
  size_t queued = 0;
  while (queued < requests.size()) {
    io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
    if (sqe == nullptr) {
      // Submission queue full: hand what is queued to the kernel, then (SQPOLL) wait for room.
      int rc = io_uring_submit(&ring_);
      if (rc < 0 && rc != -EBUSY && rc != -EAGAIN && rc != -EINTR) break;
      if (options_.sqpoll) io_uring_sqring_wait(&ring_);
      continue;
    }
    Prep(sqe, requests[queued]);
    ++queued;
  }
  int rc = 0;
  do {
    rc = io_uring_submit(&ring_);
  } while (rc == -EINTR || rc == -EAGAIN || rc == -EBUSY);
  if (queued < requests.size()) {
    for (size_t i = queued; i < requests.size(); ++i) {
      requests[i]->result = rc < 0 ? rc : -EIO;
      requests[i]->waiter->Complete(requests[i]->id);
    }
  }
}

void IoRing::ReapLoop() {
  for (;;) {
    io_uring_cqe* cqe = nullptr;
    int rc = io_uring_wait_cqe(&ring_, &cqe);
    if (rc == -EINTR || rc == -EAGAIN) continue;
    if (rc < 0) continue;  // transient; the next wait will see the completion
    auto* r = static_cast<IoRequest*>(io_uring_cqe_get_data(cqe));
    int result = cqe->res;
    io_uring_cqe_seen(&ring_, cqe);
    if (r == nullptr) return;
    if (options_.fault_injector != nullptr) {
      result = options_.fault_injector->OnComplete(r->op, r->file, r->offset, r->length, result);
    }
    r->result = result;
    r->waiter->Complete(r->id);
  }
}

}  // namespace kvtier::nvme
