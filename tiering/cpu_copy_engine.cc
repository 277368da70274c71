#include <cstring>

#include "tiering/copy_engine.h"

namespace kvtier {

// A slice of a batch handed to one helper thread; `done` is counted down under mu_.
struct CpuCopyEngine::Job {
  absl::Span<const CopyOp> ops;
  int* remaining = nullptr;
  absl::CondVar* done = nullptr;
};

namespace {
void CopyAll(absl::Span<const CopyOp> ops) {
  for (const CopyOp& op : ops) std::memcpy(op.dst, op.src, op.bytes);
}
}  // namespace

CpuCopyEngine::CpuCopyEngine(int threads) {
  for (int i = 1; i < threads; ++i) workers_.emplace_back([this] { WorkerLoop(); });
}

CpuCopyEngine::~CpuCopyEngine() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    work_cv_.SignalAll();
  }
  for (std::thread& t : workers_) t.join();
}

void CpuCopyEngine::WorkerLoop() {
  absl::MutexLock lock(&mu_);
  while (true) {
    while (queue_.empty() && !stopping_) work_cv_.Wait(&mu_);
    if (stopping_) return;
    Job* job = queue_.back();
    queue_.pop_back();
    mu_.Unlock();
    CopyAll(job->ops);
    mu_.Lock();
    if (--*job->remaining == 0) job->done->Signal();
  }
}

absl::Status CpuCopyEngine::Copy(absl::Span<const CopyOp> ops) {
  size_t total = 0;
  for (const CopyOp& op : ops) {
    if (op.bytes != 0 && (op.dst == nullptr || op.src == nullptr)) {
      return absl::InvalidArgumentError("copy op with a null pointer");
    }
    total += op.bytes;
  }
  if (workers_.empty() || total < kFanOutBytes || ops.size() < 2) {
    CopyAll(ops);
    return absl::OkStatus();
  }
  absl::MutexLock batch_lock(&copy_mu_);
  // Split the ops into contiguous slices of roughly equal bytes, one per thread.
  const size_t parts = std::min(workers_.size() + 1, ops.size());
  std::vector<Job> jobs(parts);
  size_t begin = 0, acc = 0, part = 0;
  for (size_t i = 0; i < ops.size() && part + 1 < parts; ++i) {
    acc += ops[i].bytes;
    if (acc >= total * (part + 1) / parts) {
      jobs[part].ops = ops.subspan(begin, i + 1 - begin);
      begin = i + 1;
      ++part;
    }
  }
  jobs[part].ops = ops.subspan(begin);
  const size_t helpers = part;  // slices [0, part) go to helpers; the last runs here
  int remaining = static_cast<int>(helpers);
  absl::CondVar done;
  {
    absl::MutexLock lock(&mu_);
    for (size_t i = 0; i < helpers; ++i) {
      jobs[i].remaining = &remaining;
      jobs[i].done = &done;
      queue_.push_back(&jobs[i]);
    }
    work_cv_.SignalAll();
  }
  CopyAll(jobs[part].ops);
  absl::MutexLock lock(&mu_);
  while (remaining > 0) done.Wait(&mu_);
  return absl::OkStatus();
}

}  // namespace kvtier
