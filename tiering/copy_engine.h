// CopyEngine: moves batches of byte ranges between memories (mechanism, not policy).
//
// The CPU engine (threads + memcpy) serves host memory, including the host-emulated HBM; the CUDA
// engine (kernels/) serves device memory with gather/scatter kernels or copy engines. Callers hand
// in a whole batch, so an implementation can use one launch or one fan-out per batch.
#pragma once

#include <cstddef>
#include <memory>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "tiering/memory_region.h"

namespace kvtier {

struct CopyOp {
  void* dst = nullptr;
  const void* src = nullptr;
  size_t bytes = 0;
};

class CopyEngine {
 public:
  virtual ~CopyEngine() = default;
  virtual absl::string_view name() const = 0;
  // Whether this engine can read and write memory of `kind`.
  virtual bool CanAccess(MemoryKind kind) const = 0;
  // Copies every op and returns when all bytes have landed. Ops must not overlap each other.
  // Thread-safe: concurrent calls are allowed.
  virtual absl::Status Copy(absl::Span<const CopyOp> ops) = 0;
};

// memcpy on the calling thread, fanned out to `threads - 1` helper threads for large batches.
class CpuCopyEngine final : public CopyEngine {
 public:
  explicit CpuCopyEngine(int threads = 1);
  ~CpuCopyEngine() override;
  CpuCopyEngine(const CpuCopyEngine&) = delete;
  CpuCopyEngine& operator=(const CpuCopyEngine&) = delete;

  absl::string_view name() const override { return "cpu"; }
  bool CanAccess(MemoryKind kind) const override { return kind == MemoryKind::kHost; }
  absl::Status Copy(absl::Span<const CopyOp> ops) override;

 private:
  struct Job;
  void WorkerLoop();

  // Batches below this many bytes are copied inline: waking threads costs more than it saves.
  static constexpr size_t kFanOutBytes = size_t{4} << 20;

  absl::Mutex mu_;
  absl::CondVar work_cv_;
  std::vector<Job*> queue_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> workers_;
  absl::Mutex copy_mu_;  // one fanned-out batch at a time keeps the split simple
};

}  // namespace kvtier
