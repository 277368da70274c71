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
  // host<->device copies reach the PCIe limit with far fewer. Measured on an H200 (512 MiB of
  // 16-64 KiB scattered pieces, the engine end to end, three processes:
  // bench/gpu/results/h200-run12.md): 64 SMs give 80.8-88.0% of a device memcpy (97-104% of the
  // raw kernel at 64 SMs), all 132 SMs 82.6-88.1%. So 64 is the recommendation: half the SMs left
  // to inference for as much as the whole device gives.
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
  // A kernel batch goes in chunks of descriptors that start at this many and grow by
  // `launch_growth` each: the first kernel starts after a few microseconds of host work, and the
  // host builds each next chunk while the GPU copies the last (the host's ~4 ns a descriptor
  // otherwise comes before the whole copy). Default 768: with growth 1.5 the best of the
  // schedules measured on an H200 for 16 KiB pieces at 64 and 132 SMs, and level with the others
  // at 32 and 64 KiB (bench/gpu/results/h200-run8.md); the host builds chunk k+1 (~4-5 ns a
  // descriptor) while chunk k copies (~10 ns a 16 KiB piece at 64 SMs).
  uint32_t first_launch_ops = 768;
  // Each chunk holds this many times the descriptors of the one before (>= 1; default 1.5).
  double launch_growth = 1.5;
  // Consecutive chunk kernels of a batch go alternately on two streams, each ordered only after
  // its own chunk's upload, so that chunk k+1's blocks take the SMs that chunk k's blocks leave
  // (no SM idles through a kernel's tail and the next launch). Below every SM of the device the
  // two streams belong to a green context that holds exactly the budget's SMs, so two kernels in
  // flight still occupy at most the budget. Where no such context can be made (a driver before
  // CUDA 12.5, MPS, a budget the device cannot partition exactly, KVTIER_COPY_GREEN=0 in the
  // environment), chunks of that budget go on one stream as with false, logged once. Default true.
  bool overlap_launches = true;
  // With two streams: each chunk's descriptor upload goes on the stream of its own kernel (which
  // then needs no event), behind the kernel two chunks back, instead of on the upload stream.
  // Saves two API calls a chunk. Default false.
  bool upload_on_launch_stream = false;
  // Load/store kernel method only: a batch whose pieces are under this many bytes on average
  // (judged by its first 64 pieces; a batch is mostly one layout's pages) goes in chunk kernels
  // that read their descriptors straight from the pinned staging buffer over PCIe
  // (GpuCopyOptions::host_descriptors, 32 at a time a batch ahead) instead of from a device copy:
  // a chunk then costs one launch (4 CUDA calls instead of 7), no upload and no event, so the
  // first kernel starts sooner (5-8 us after the call instead of 11-16 at 16 KiB, H200) and the
  // GPU waits less on the host between the early, short chunks. Larger batches upload. Default
  // 32 KiB, measured on an H200 against uploads in one process
  // (bench/gpu/results/h200-run11-engine7.md): 16 KiB pieces HBM->HBM 102.5-104.2 % of the upload
  // path's GB/s at 64 and 132 SMs, 32 KiB 99.8-100.9 %, 64 KiB 97.0-98.4 %; HBM<->DRAM at 16 SMs
  // level. 0: always upload; UINT64_MAX: never upload.
  uint64_t staging_descriptors_below_bytes = uint64_t{32} << 10;
  // The first chunk of a batch whose descriptors come from staging (its chunks still grow by
  // launch_growth). Smaller than first_launch_ops because such a chunk costs the host less: at
  // 64 SMs, 16 KiB pieces, 384 gave 2-3 % more than 768 (h200-run11-engine7.md). Default 384.
  uint32_t first_launch_ops_from_staging = 384;
};

// The host's side of the last kernel-method batch (Copy or CopyWith), for the benchmarks: where
// the wall time of a batch goes when the GPU copies faster than the host stages.
struct KernelRunTrace {
  uint32_t chunks = 0;     // kernel launches
  uint32_t api_calls = 0;  // CUDA calls the chunks made (uploads, events, launches, context pushes)
  double first_launch_us = 0;  // from entering the batch to the first launch returning
  double enqueued_us = 0;      // ... to the last launch returning
  double done_us = 0;          // ... to the streams drained
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
  // How the kernel methods launch a batch's chunks on `route` (host->host: none):
  // "two_stream_green" (two streams of a green context of the route's budget), "two_stream"
  // (two streams, the budget is every SM) or "one_stream".
  absl::string_view LaunchMode(CopyRoute route) const;
  // SMs the kernel methods may occupy on `route`: its budget, capped at the device's SM count.
  int LaunchSms(CopyRoute route) const;
  KernelRunTrace LastKernelRun() {
    absl::MutexLock lock(&mu_);
    return last_kernel_run_;
  }

 private:
  struct Region {
    uintptr_t begin, end;
    MemoryKind kind;
  };
  enum class PtrKind : uint8_t { kDevice, kPinnedHost, kPageableHost };
  // Where the chunk kernels of one SM budget run: two streams (overlap_launches) of a green
  // context holding the budget's SMs, or of the primary context when the budget is every SM; or,
  // with streams[1] null, the engine's stream_. Made by Init, then fixed.
  struct Lane {
    int sms = 0;            // the budget, capped at the device's SM count
    void* green = nullptr;  // CUgreenCtx, or null
    bool push_ctx = false;  // launches need the green context current (Init's probe decides)
    std::array<cudaStream_t, 2> streams = {nullptr, nullptr};
    absl::string_view mode() const {
      return streams[1] == nullptr ? "one_stream"
             : green != nullptr    ? "two_stream_green"
                                   : "two_stream";
    }
  };

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
  absl::Status InitLane(int budget, int device_sms, Lane& lane) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Copies 16 bytes with the copy kernel on each of `lane`'s streams and checks them: whether
  // kernels launched there run.
  absl::Status ProbeLane(const Lane& lane) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void DestroyLane(Lane& lane);
  const Lane& LaneFor(CopyRoute route) const {
    return lanes_[route == CopyRoute::kDeviceToDevice ? d2d_lane_ : 0];
  }
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
  // [0]: host<->device (kernel.sm_budget); [d2d_lane_]: device->device (1 when its budget
  // differs, else 0). Written by Init only.
  std::array<Lane, 2> lanes_;
  int d2d_lane_ = 0;
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
  KernelRunTrace last_kernel_run_ ABSL_GUARDED_BY(mu_);
};

}  // namespace kvtier
