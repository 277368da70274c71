// CudaCopyEngine: the CopyEngine for GPU machines. Moves batches between device memory (HBM pool,
// workers' KV blocks) and pinned host memory (DRAM pool) with one of four mechanisms:
//   kKernel        the gather/scatter kernel of kernels/ (one launch per batch, zero-copy over
//                  mapped pinned memory for host<->device), held to an SM budget;
//   kKernelBulk    the same kernel with the bulk-async (TMA) mover, same SM budget; device->device
//                  only, where the load/store mover is limited by per-SM load/store throughput;
//   kMemcpyBatch   cudaMemcpyBatchAsync: the copy engines, no SMs;
//   kMemcpyPerRun  one cudaMemcpyAsync per run after merging adjacent ops.
// Which one serves a route (host->device, device->host, device->device) is chosen by measurement:
// Create() times each method on scratch buffers at a few piece sizes (the calibration table, which
// the benchmarks print) unless the options pin a method. Host->host ops are plain memcpy.
//
// Pointer classification: regions registered with RegisterRegion are looked up in a sorted table;
// anything else costs a cudaPointerGetAttributes per pointer. Pageable (unregistered) host memory
// cannot be read by the kernel: such ops go through kMemcpyPerRun, counted in fallbacks() and
// logged once. So are ops that break the kernel's 16-byte rule (kernels/copy_batch.h).
//
// Thread model: Copy and RegisterRegion may be called from any thread; batches are serialised on
// one internal stream (a mutex), and Copy returns when the batch's bytes have landed.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "kernels/copy_batch.h"
#include "kernels/cuda/gpu_kernels.h"
#include "tiering/copy_engine.h"

namespace kvtier {

enum class CudaCopyMethod : uint8_t {
  kAuto = 0,
  kKernel = 1,
  kMemcpyBatch = 2,
  kMemcpyPerRun = 3,
  kKernelBulk = 4,  // device->device only
};
// "auto", "kernel", "memcpy-batch", "memcpy-per-run", "kernel-bulk".
absl::string_view CudaCopyMethodName(CudaCopyMethod m);

enum class CopyRoute : uint8_t {
  kHostToDevice = 0,
  kDeviceToHost = 1,
  kDeviceToDevice = 2,
  kHostToHost = 3
};
absl::string_view CopyRouteName(CopyRoute r);

struct CudaCopyEngineOptions {
  // CUDA device the engine's stream and scratch live on. Default 0.
  int device = 0;
  // The copy kernels' SM budget (default at most 16 SMs) and block size; its mover is set per
  // method (kKernel: load/store, kKernelBulk: bulk-async), whatever this field says.
  kernels::GpuCopyOptions kernel;
  // SM budget of device->device kernel copies; 0 (default) means kernel.sm_budget. A separate
  // knob because one SM moves at most ~50 GB/s HBM->HBM whatever the mover (measured on an H100,
  // bench/RESULTS.md), so 16 SMs cap such copies near a third of a device-to-device memcpy, while
  // host<->device copies reach the PCIe limit with far fewer. Measured on an H200
  // (bench/RESULTS.md, issue 18, session 13; 512 MiB of 16-64 KiB scattered pieces, the engine end
  // to end): 64 SMs give 73-77% of a device memcpy, every SM (132) 81-84%; so 132 where HBM->HBM
  // copies must reach 80% of a memcpy, 64 to leave half the SMs to inference at about three
  // quarters of it.
  int device_to_device_sm_budget = 0;
  // Method per route. kAuto (default) takes the calibration table's pick for the batch's mean
  // piece size; another value pins that method and skips calibrating the route. kKernelBulk may
  // only be pinned for device_to_device (Create refuses it elsewhere).
  CudaCopyMethod host_to_device = CudaCopyMethod::kAuto;
  CudaCopyMethod device_to_host = CudaCopyMethod::kAuto;
  CudaCopyMethod device_to_device = CudaCopyMethod::kAuto;
  // Bytes each calibration sample moves. Default 16 MiB: about 0.3 ms over PCIe Gen5, long enough
  // to swamp launch overhead; calibration takes well under a second in all.
  size_t calibration_bytes = size_t{16} << 20;
  // Descriptors staged per kernel launch (24 bytes each, pinned + device). Larger batches are
  // split. Default 65536: a 4 GiB batch of 64 KiB pieces in one launch.
  uint32_t max_ops_per_launch = 65536;
  // A kernel batch goes in chunks of descriptors that start at this many and double: the first
  // kernel starts after a few microseconds of host work, and the host builds each next chunk
  // while the GPU copies the last (the host's ~5 ns a descriptor otherwise comes before the whole
  // copy). Default 1024.
  uint32_t first_launch_ops = 1024;
};

// One row of the calibration table: GB/s of each method for `piece_bytes` pieces on `route`.
struct CopyCalibration {
  CopyRoute route = CopyRoute::kHostToDevice;
  uint64_t piece_bytes = 0;
  double kernel_gbps = 0;
  double kernel_bulk_gbps = 0;  // measured on device->device only; 0 on the other routes
  double batch_gbps = 0;
  double per_run_gbps = 0;
  CudaCopyMethod chosen = CudaCopyMethod::kKernel;
};

class CudaCopyEngine final : public CopyEngine {
 public:
  static absl::StatusOr<std::unique_ptr<CudaCopyEngine>> Create(
      const CudaCopyEngineOptions& options = {});
  ~CudaCopyEngine() override;
  CudaCopyEngine(const CudaCopyEngine&) = delete;
  CudaCopyEngine& operator=(const CudaCopyEngine&) = delete;

  absl::string_view name() const override { return "cuda"; }
  bool CanAccess(MemoryKind) const override { return true; }
  absl::Status Copy(absl::Span<const CopyOp> ops) override;
  // Copies every op of `ops` (all on `route`) with `method`, bypassing classification and the
  // table. For benchmarks and tests; kAuto means the table's pick. kKernelBulk off the
  // device->device route is InvalidArgument.
  absl::Status CopyWith(CopyRoute route, CudaCopyMethod method, absl::Span<const CopyOp> ops);

  // Declares [base, base + bytes) as memory of `kind` (device, or pinned+mapped host), so that
  // Copy classifies pointers inside it without asking the driver.
  void RegisterRegion(const void* base, size_t bytes, MemoryKind kind);

  // The method Copy uses on `route` for pieces of `piece_bytes`.
  CudaCopyMethod MethodFor(CopyRoute route, uint64_t piece_bytes) const;
  const std::vector<CopyCalibration>& calibration() const { return calibration_; }
  // Ops that could not take their route's method (pageable memory, unaligned) and went per run.
  uint64_t fallbacks() const { return fallbacks_.load(std::memory_order_relaxed); }

 private:
  struct Region {
    uintptr_t begin, end;
    MemoryKind kind;
  };
  enum class PtrKind : uint8_t { kDevice, kPinnedHost, kPageableHost };

  explicit CudaCopyEngine(const CudaCopyEngineOptions& options);
  absl::Status Init();
  absl::Status Calibrate();
  PtrKind Classify(const void* p) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status RunLocked(CopyRoute route, CudaCopyMethod method, absl::Span<const CopyOp> ops)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status RunKernel(CopyRoute route, absl::Span<const CopyOp> ops, kernels::GpuCopyMover mover)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status RunBatch(absl::Span<const CopyOp> ops) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status RunPerRun(absl::Span<const CopyOp> ops) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status Sync() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void CountFallback(size_t ops, const char* why);

  const CudaCopyEngineOptions options_;
  std::vector<CopyCalibration> calibration_;  // written by Create only, then read-only
  std::atomic<uint64_t> fallbacks_{0};
  std::atomic<bool> fallback_logged_{false};

  absl::Mutex mu_;
  cudaStream_t stream_ ABSL_GUARDED_BY(mu_) = nullptr;
  // Descriptor uploads run on their own stream, so that chunk k+1's upload overlaps chunk k's
  // kernel; `uploaded_` orders each kernel after its upload.
  cudaStream_t upload_stream_ ABSL_GUARDED_BY(mu_) = nullptr;
  cudaEvent_t uploaded_ ABSL_GUARDED_BY(mu_) = nullptr;
  std::vector<Region> regions_ ABSL_GUARDED_BY(mu_);  // sorted by begin, non-overlapping
  std::array<size_t, 2> last_hit_ ABSL_GUARDED_BY(mu_) = {~size_t{0}, ~size_t{0}};  // regions_
  // Descriptor staging: pinned host (cudaMallocHost) -> device, max_ops_per_launch each.
  kernels::CopyDescriptor* staging_ ABSL_GUARDED_BY(mu_) = nullptr;
  kernels::DeviceBuffer device_descs_ ABSL_GUARDED_BY(mu_);
  // Per-call scratch kept across calls so that a warm engine does not allocate.
  std::array<std::vector<CopyOp>, 4> by_route_ ABSL_GUARDED_BY(mu_);
  std::vector<CopyOp> pageable_ ABSL_GUARDED_BY(mu_);
  std::vector<CopyOp> unaligned_ ABSL_GUARDED_BY(mu_);
  std::vector<CopyOp> scratch_ ABSL_GUARDED_BY(mu_);  // RunPerRun's merged runs
  std::vector<void*> batch_dsts_ ABSL_GUARDED_BY(mu_);
  std::vector<const void*> batch_srcs_ ABSL_GUARDED_BY(mu_);
  std::vector<size_t> batch_sizes_ ABSL_GUARDED_BY(mu_);
};

}  // namespace kvtier
