// CUDA versions of the kernels in kernels/: the batched gather/scatter copy and the attention
// statistics. Built only when KVTIER_HAVE_CUDA; the CPU twins (copy_batch.h, attention_stats.h)
// define what each computes and the tests hold these to them.
//
// Every launch is stream-ordered and returns after enqueueing; errors of the launch itself come
// back as a Status, errors of the kernel surface at the next synchronisation.
// Thread model: free functions; DeviceBuffer and AttentionStatsWorkspace are single-owner objects.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/attention_stats.h"
#include "kernels/copy_batch.h"

namespace kvtier::kernels {

// "cudaMalloc(1024 bytes): out of memory"-style Status from a CUDA error code.
absl::Status CudaStatus(cudaError_t e, const char* what);

// RAII device allocation (cudaMalloc / cudaFree). Move-only.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  static absl::StatusOr<DeviceBuffer> Allocate(size_t bytes);
  ~DeviceBuffer();
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(o.ptr_), bytes_(o.bytes_) {
    o.ptr_ = nullptr;
    o.bytes_ = 0;
  }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void* get() const { return ptr_; }
  size_t bytes() const { return bytes_; }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// How the copy kernel moves bytes.
enum class GpuCopyMover : uint8_t {
  // Every thread loads and stores 16-byte vectors through registers. Works for every route: its
  // many independent loads hide the microsecond latency of mapped host memory over PCIe, where it
  // reaches the link's limit. HBM to HBM it is bounded by what one SM's load/store units can keep
  // in flight (about 49 GB/s per SM on an H100).
  kLoadStore = 0,
  // Hopper's bulk-async copy unit (TMA, cp.async.bulk): one thread per block streams 16 KiB
  // chunks global -> shared -> global through a ring of shared-memory stages, so that what an SM
  // keeps in flight is no longer bounded by its threads' registers and load/store units; it exists
  // to bring HBM -> HBM copies under a small SM budget near device-to-device memcpy speed (the
  // kernel_bulk rows of bench/gpu/gpu_bench.cc measure it). Device memory on both sides only;
  // needs compute capability 9.0 and about 193 KiB of shared memory per block (so one block per
  // SM). threads_per_block does not apply (its blocks are one warp).
  kBulkAsync = 1,
};

// Which items of a paged batch (LaunchPagedCopy) run side by side: page-major walks the pieces of
// one page, then the next page (neighbouring warps read one slot and write every layer's
// tensor); piece-major walks one piece of every page, then the next piece (neighbouring warps
// write neighbouring blocks of one tensor and read many slots).
enum class PagedOrder : uint8_t { kPageMajor = 0, kPieceMajor = 1 };

struct GpuCopyOptions {
  // Streaming multiprocessors the copy may occupy: the kernel launches at most this many blocks
  // (one block runs on one SM), so the inference kernels beside it keep the rest. Default 16 of
  // an H100's 132 (kDefaultGpuCopySmBudget). 0 means every SM of the device.
  int sm_budget = kDefaultGpuCopySmBudget;
  // Threads per block. 1024 keeps a whole SM's worth of loads in flight from one block.
  int threads_per_block = 1024;
  // kLoadStore (default) serves every route; kBulkAsync is for device <-> device batches.
  GpuCopyMover mover = GpuCopyMover::kLoadStore;
  // Paged batches only.
  PagedOrder paged_order = PagedOrder::kPageMajor;
};

// Launches the gather/scatter kernel over `count` descriptors that live in DEVICE memory (or
// mapped pinned host memory). Each descriptor's src and dst may be device memory or mapped pinned
// host memory (zero-copy over PCIe); with GpuCopyMover::kBulkAsync both must be device memory.
// The caller must have validated the batch with ValidateCopyBatch (the kernel trusts the 16-byte
// rule). `max_piece_bytes` bounds the largest descriptor and decides how many warps (load/store
// mover) or blocks (bulk-async mover, whose blocks share a descriptor only in batches shorter than
// the SM budget) cooperate on one descriptor.
// kBulkAsync on a device below compute capability 9.0, or with less shared memory per block than
// its ring needs, is FailedPrecondition.
absl::Status LaunchCopyBatch(const CopyDescriptor* device_descriptors, uint32_t count,
                             uint64_t max_piece_bytes, const GpuCopyOptions& options,
                             cudaStream_t stream);

// The paged form of LaunchCopyBatch (kernels/copy_batch.h): `piece_count` PagedPieces and
// `page_count` PagedPages in DEVICE memory, pages x pieces copies, each computed on the device by
// PagedItem. The caller validated them (ValidatePagedCopy) and bounded every block id and range.
absl::Status LaunchPagedCopy(const PagedPiece* device_pieces, uint32_t piece_count,
                             const PagedPage* device_pages, uint32_t page_count,
                             PagedDirection direction, uint64_t max_piece_bytes,
                             const GpuCopyOptions& options, cudaStream_t stream);

namespace detail {
// Pass 1 of an attention-statistics shape: which kernel, on what grid, with how much work a block
// (kernels/cuda/gpu_attention_stats.cu fills it in).
struct AttentionPass1Plan {
  const void* kernel = nullptr;
  dim3 grid;
  int threads = 0;
  size_t smem_bytes = 0;
  uint32_t rows_per_block = 0;
  uint32_t per_block = 0;  // tiles (tiled pass) or pages (generic pass) of one block
  // Tiled pass whose producer reads K and V through tensor maps (made at each launch, for its
  // pointers, by `encode_tiled`, the driver's cuTensorMapEncodeTiled); `fallback` is the same
  // pass without them, launched where a map cannot be made.
  bool tensor_maps = false;
  const void* fallback = nullptr;
  void* encode_tiled = nullptr;
  int tensor_map_layout = 0;  // padded boxes, or swizzled ones (gpu_attention_stats.cu)
  // Tiled pass launched cooperatively that also does pass 3's work in its tail (no pass 3
  // launch): one row split, and the whole grid resident at once on this device.
  bool fused_tail = false;
  // Keep the tensor maps in the workspace with the pointers they were made for (kOptCacheMaps).
  bool cache_tensor_maps = false;
};

// A tensor map (a CUtensorMap, 128 bytes) of K or V and the pointer it was made for.
struct AttentionTensorMapCache {
  unsigned char map[128] = {};  // copied with memcpy
  const void* base = nullptr;
};
}  // namespace detail

// Scratch memory for one shape of LaunchAttentionStats, and its launch plan (kernel, grid and
// shared memory, worked out once from the device when the workspace is made, so that a launch
// asks the driver nothing); reuse it across launches of that shape on the device it was made on.
class AttentionStatsWorkspace {
 public:
  static absl::StatusOr<AttentionStatsWorkspace> Create(const AttentionStatsShape& shape);
  const AttentionStatsShape& shape() const { return shape_; }

 private:
  friend absl::Status LaunchAttentionStats(const AttentionStatsShape&, const AttentionStatsOptions&,
                                           const void*, const void*, const void*,
                                           PageAttentionStats*, AttentionStatsWorkspace&,
                                           cudaStream_t);
  AttentionStatsShape shape_;
  absl::Status plan_status_;  // why the shape cannot run here, returned by every launch
  detail::AttentionPass1Plan pass1_;
  DeviceBuffer page_lse_;  // [q_heads * window][pages] log2-sum-exp of each page's logits
  DeviceBuffer row_lse_;   // [q_heads * window] log2-sum-exp over the whole sequence
  DeviceBuffer norm_sum_;  // [pages][kv_heads] sum of value-vector norms
  DeviceBuffer row_part_;  // [q_heads * window][blocks] running (max, sum) of the tiled pass
  DeviceBuffer done_;      // finished-block counters of the last-block merges, then the
                           // dynamic schedule's chunk counters, then the fused tail's; zero at
                           // rest
  DeviceBuffer kv_part_;   // [kv_heads][pages] float4 sums over each kv head's q heads (fused
                           // tail)
  detail::AttentionTensorMapCache tensor_maps_[2];  // K's, V's (plan's cache_tensor_maps)
};

// The attention-statistics kernel: one pass over K (tensor-core Q.K^T per 64-token tile, a
// log-sum-exp per page) and V (norms), then small passes over the per-page partials. Shapes with
// tokens_per_page 8/16/32/64 and head_dim 64/128/256 take a tiled pass whose pages never cross a
// tile; every other shape a generic one.
// q, k, v, out are device pointers; `out` holds AttentionStatsPageCount(shape) entries.
// Needs head_dim % 16 == 0 and head_dim <= 256.
absl::Status LaunchAttentionStats(const AttentionStatsShape& shape,
                                  const AttentionStatsOptions& options, const void* q,
                                  const void* k, const void* v, PageAttentionStats* out,
                                  AttentionStatsWorkspace& workspace, cudaStream_t stream);

}  // namespace kvtier::kernels
