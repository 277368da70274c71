// The batched gather/scatter kernels, two movers behind one launch (GpuCopyMover):
//   load/store: a persistent grid of at most `sm_budget` blocks walks the descriptor list; a group
//     of G warps (G chosen so that every warp has work even for short batches) moves one
//     descriptor at a time in 16-byte vectors, 8 loads in flight per thread so that reads of
//     mapped host memory over PCIe (about a microsecond each) overlap.
//   bulk-async: one single-warp block per SM of the budget; its lane 0 streams chunks through a
//     ring of shared-memory stages with Hopper's bulk copy unit (cp.async.bulk), global -> shared
//     completing on a per-stage mbarrier, shared -> global tracked by bulk async-groups.
#include <algorithm>
#include <cstddef>
#include <type_traits>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/gpu_kernels.h"
#include "kernels/cuda/ptx.cuh"

namespace kvtier::kernels {

absl::Status CudaStatus(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(what, ": ", cudaGetErrorString(e)));
}

absl::StatusOr<DeviceBuffer> DeviceBuffer::Allocate(size_t bytes) {
  DeviceBuffer b;
  if (bytes == 0) return b;
  if (cudaError_t e = cudaMalloc(&b.ptr_, bytes); e != cudaSuccess) {
    return absl::ResourceExhaustedError(
        absl::StrCat("cudaMalloc(", bytes, " bytes): ", cudaGetErrorString(e)));
  }
  b.bytes_ = bytes;
  return b;
}

DeviceBuffer::~DeviceBuffer() {
  if (ptr_ != nullptr) cudaFree(ptr_);
}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& o) noexcept {
  if (this != &o) {
    if (ptr_ != nullptr) cudaFree(ptr_);
    ptr_ = o.ptr_;
    bytes_ = o.bytes_;
    o.ptr_ = nullptr;
    o.bytes_ = 0;
  }
  return *this;
}

namespace {

constexpr int kUnroll = 8;

// Where a kernel's descriptors come from: a list in device memory, or a paged batch whose
// descriptors are computed from its piece table and page list (kernels/copy_batch.h, PagedItem).
struct ListSource {
  const CopyDescriptor* __restrict__ descs;
  __device__ CopyDescriptor operator()(uint64_t d) const { return descs[d]; }
};

// A list in mapped pinned host memory (GpuCopyOptions::host_descriptors): only the load/store
// mover takes it, through CopyBatchHostListKernel, 32 descriptors at a time.
struct HostListSource {
  const CopyDescriptor* descs;
};

struct PagedSource {
  const PagedPiece* __restrict__ pieces;
  const PagedPage* __restrict__ pages;
  uint32_t piece_count;
  uint32_t page_count;
  PagedDirection direction;
  bool piece_major;
  __device__ CopyDescriptor operator()(uint64_t d) const {
    // 32-bit index math: LaunchPagedCopy bounds pages x pieces below 2^32.
    const uint32_t i = static_cast<uint32_t>(d);
    if (piece_major) {
      // Item i is piece i / pages of page i % pages: the same item as page-major's
      // (i % pages) * pieces + i / pages.
      const uint32_t piece = i / page_count;
      return PagedItem(pieces, piece_count, pages, direction,
                       (i - piece * page_count) * piece_count + piece);
    }
    return PagedItem(pieces, piece_count, pages, direction, i);
  }
};

// One warp's share of one descriptor: vectors first, first + stride, ... of it, kUnroll independent
// loads before the first store.
__device__ __forceinline__ void CopyShare(const void* from, void* to, uint64_t bytes,
                                          uint64_t first, uint64_t stride) {
  const uint4* __restrict__ src = static_cast<const uint4*>(from);
  uint4* __restrict__ dst = static_cast<uint4*>(to);
  const uint64_t n = bytes / 16;
  uint64_t i = first;
  for (; i + (kUnroll - 1) * stride < n; i += kUnroll * stride) {
    uint4 r[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) r[u] = src[i + u * stride];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) dst[i + u * stride] = r[u];
  }
  for (; i < n; i += stride) dst[i] = src[i];
}

// Descriptors in mapped pinned host memory (GpuCopyOptions::host_descriptors): every read crosses
// PCIe (a microsecond or two), which the device-list kernel would pay once a descriptor. Here group
// g takes a contiguous run of descriptors, and each of its warps fetches the run 32 at a time, one
// per lane (one coalesced read), a batch before it copies them. Its first lines repeat
// CopyBatchKernel's warp-group split on purpose: with the split in a shared helper, ptxas compiled
// CopyBatchKernel<ListSource> differently (32 registers instead of 56), a change not measured.
__global__ void __launch_bounds__(1024)
    CopyBatchHostListKernel(const CopyDescriptor* __restrict__ descs, uint32_t count,
                            uint32_t warps_per_desc) {
  const uint32_t lane = threadIdx.x & 31u;
  const uint32_t warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  const uint32_t total_warps = (gridDim.x * blockDim.x) >> 5;
  const uint32_t groups = total_warps / warps_per_desc;
  const uint32_t group = warp / warps_per_desc;
  if (group >= groups) return;  // warps beyond the last whole group sit out
  const uint64_t per_group = (uint64_t{count} + groups - 1) / groups;
  const uint64_t begin = min(uint64_t{count}, group * per_group);
  const uint64_t end = min(uint64_t{count}, begin + per_group);
  const uint64_t stride = uint64_t{warps_per_desc} * 32;
  const uint64_t first = uint64_t{warp % warps_per_desc} * 32 + lane;
  auto fetch = [&](uint64_t at) { return at + lane < end ? descs[at + lane] : CopyDescriptor{}; };
  CopyDescriptor next = fetch(begin);
  for (uint64_t base = begin; base < end; base += 32) {
    const CopyDescriptor cur = next;
    next = fetch(base + 32);
    const uint32_t in_batch = end - base < 32 ? static_cast<uint32_t>(end - base) : 32u;
    for (uint32_t j = 0; j < in_batch; ++j) {
      const auto* src = reinterpret_cast<const void*>(
          __shfl_sync(0xffffffffu, reinterpret_cast<unsigned long long>(cur.src), j));
      auto* dst = reinterpret_cast<void*>(
          __shfl_sync(0xffffffffu, reinterpret_cast<unsigned long long>(cur.dst), j));
      const uint64_t bytes =
          __shfl_sync(0xffffffffu, static_cast<unsigned long long>(cur.bytes), j);
      CopyShare(src, dst, bytes, first, stride);
    }
  }
}

template <typename Source>
__global__ void CopyBatchKernel(Source source, uint32_t count, uint32_t warps_per_desc) {
  const uint32_t lane = threadIdx.x & 31u;
  const uint32_t warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  const uint32_t total_warps = (gridDim.x * blockDim.x) >> 5;
  const uint32_t groups = total_warps / warps_per_desc;
  const uint32_t group = warp / warps_per_desc;
  if (group >= groups) return;  // warps beyond the last whole group sit out
  const uint64_t stride = uint64_t{warps_per_desc} * 32;
  const uint64_t first = uint64_t{warp % warps_per_desc} * 32 + lane;
  for (uint32_t d = group; d < count; d += groups) {
    const CopyDescriptor desc = source(d);
    CopyShare(desc.src, desc.dst, desc.bytes, first, stride);
  }
}

// --- bulk-async mover ---
// 12 stages of 16 KiB: up to 11 chunk loads (176 KiB) stay in flight while a 12th stage drains to
// global; over 1-2 us of loaded HBM latency that is 90-180 GB/s per SM, above the ~74 GB/s per SM
// that 80% of an H100's device-to-device memcpy asks of 16 SMs. And 193 KiB of shared memory
// admits one block per SM (227 KiB opt-in on sm_90), so N blocks are spread over N SMs rather
// than doubled up on some.
constexpr uint32_t kBulkChunk = 16 << 10;
constexpr uint32_t kBulkStages = 12;

// What the store half needs of a loaded stage. In shared memory because the stage index is only
// known at run time and a register array indexed that way would go to local memory.
struct alignas(16) BulkStage {
  unsigned char* dst;
  uint32_t bytes;
};

constexpr size_t kBulkSmemBytes =
    size_t{kBulkStages} * (kBulkChunk + sizeof(uint64_t) + sizeof(BulkStage));

using ptx::SmemAddress;

// The ring, driven by one thread. A stage is reloaded only once the store that last read it has
// finished reading shared memory; at most kBulkStages - 1 loads are outstanding, so the stage to
// reload is never the one whose store was issued last and `wait_group.read 1` lets that newest
// store keep running while older ones are retired.
class BulkRing {
 public:
  __device__ explicit BulkRing(unsigned char* smem)
      : data_(smem),
        bars_(reinterpret_cast<uint64_t*>(smem + size_t{kBulkStages} * kBulkChunk)),
        meta_(reinterpret_cast<BulkStage*>(bars_ + kBulkStages)) {}

  // Called once, by the driving thread only, before the first Push.
  __device__ void Init() {
    for (uint32_t s = 0; s < kBulkStages; ++s) {
      ptx::MbarrierInit(SmemAddress(&bars_[s]), 1);
    }
    // The barriers are armed by the async proxy (complete_tx); make their initialisation visible
    // to it before the first copy names them.
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
  }

  // Queues one chunk (bytes a non-zero multiple of 16, at most kBulkChunk).
  __device__ void Push(const unsigned char* src, unsigned char* dst, uint32_t bytes) {
    if (pending_ == kBulkStages - 1) StoreOldest();
    asm volatile("cp.async.bulk.wait_group.read 1;" ::: "memory");
    meta_[load_] = BulkStage{dst, bytes};
    const uint32_t bar = SmemAddress(&bars_[load_]);
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(bytes)
                 : "memory");
    asm volatile(
        "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::
            "r"(SmemAddress(data_ + size_t{load_} * kBulkChunk)),
        "l"(src), "r"(bytes), "r"(bar)
        : "memory");
    load_ = load_ + 1 == kBulkStages ? 0 : load_ + 1;
    ++pending_;
  }

  // Stores every queued chunk and waits until their writes are done, so that nothing is in flight
  // when the block exits (the kernel's completion then orders them before later stream work).
  __device__ void Finish() {
    while (pending_ > 0) StoreOldest();
    asm volatile("cp.async.bulk.wait_group 0;" ::: "memory");
  }

 private:
  __device__ void StoreOldest() {
    const uint32_t bar = SmemAddress(&bars_[store_]);
    const uint32_t parity = (parities_ >> store_) & 1u;
    ptx::MbarrierWait(bar, parity);
    parities_ ^= 1u << store_;
    const BulkStage stage = meta_[store_];
    asm volatile("cp.async.bulk.global.shared::cta.bulk_group [%0], [%1], %2;" ::"l"(stage.dst),
                 "r"(SmemAddress(data_ + size_t{store_} * kBulkChunk)), "r"(stage.bytes)
                 : "memory");
    asm volatile("cp.async.bulk.commit_group;" ::: "memory");
    store_ = store_ + 1 == kBulkStages ? 0 : store_ + 1;
    --pending_;
  }

  unsigned char* const data_;
  uint64_t* const bars_;
  BulkStage* const meta_;
  uint32_t load_ = 0;      // next stage to load into
  uint32_t store_ = 0;     // oldest loaded stage, next to store
  uint32_t pending_ = 0;   // stages loaded or loading, not yet stored
  uint32_t parities_ = 0;  // bit s: the mbarrier phase parity stage s completes next
};

// The grid is G groups of `blocks_per_desc` blocks (more than one only when the batch has fewer
// descriptors than the budget has SMs, so that a short batch of large pieces still spreads).
// Group g takes descriptors g, g + G, g + 2G, ...; member m of a group takes chunks m, m + M, ...
// of each (M = blocks_per_desc). The warp fetches descriptors 32 at a time, one per lane, a batch
// ahead of use, so that lane 0 never waits on a descriptor read between chunks; lane 0 alone
// drives the ring.
template <typename Source>
__global__ void __launch_bounds__(32, 1)
    CopyBatchBulkKernel(Source source, uint32_t count, uint32_t blocks_per_desc) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
  __trap();  // LaunchCopyBatch refuses such devices; this arch only has to compile
#else
  extern __shared__ __align__(128) unsigned char bulk_smem[];
  const uint32_t lane = threadIdx.x;
  const uint64_t stride = gridDim.x / blocks_per_desc;
  const uint64_t batch_stride = stride * 32;
  const uint64_t first_chunk = uint64_t{blockIdx.x % blocks_per_desc} * kBulkChunk;
  const uint64_t chunk_stride = uint64_t{blocks_per_desc} * kBulkChunk;
  uint64_t base = blockIdx.x / blocks_per_desc;
  if (base >= stride || base >= count) return;
  BulkRing ring(bulk_smem);
  if (lane == 0) ring.Init();
  auto fetch = [&](uint64_t first) {
    const uint64_t d = first + lane * stride;
    return d < count ? source(d) : CopyDescriptor{};
  };
  CopyDescriptor next = fetch(base);
  for (; base < count; base += batch_stride) {
    const CopyDescriptor cur = next;
    next = fetch(base + batch_stride);
    const uint64_t left = (count - base + stride - 1) / stride;
    const uint32_t in_batch = left < 32 ? static_cast<uint32_t>(left) : 32u;
    for (uint32_t j = 0; j < in_batch; ++j) {
      const auto* src = reinterpret_cast<const unsigned char*>(
          __shfl_sync(0xffffffffu, reinterpret_cast<unsigned long long>(cur.src), j));
      auto* dst = reinterpret_cast<unsigned char*>(
          __shfl_sync(0xffffffffu, reinterpret_cast<unsigned long long>(cur.dst), j));
      const uint64_t bytes =
          __shfl_sync(0xffffffffu, static_cast<unsigned long long>(cur.bytes), j);
      if (lane == 0) {
        for (uint64_t off = first_chunk; off < bytes; off += chunk_stride) {
          const uint64_t left_bytes = bytes - off;
          ring.Push(src + off, dst + off,
                    left_bytes < kBulkChunk ? static_cast<uint32_t>(left_bytes) : kBulkChunk);
        }
      }
      __syncwarp();
    }
  }
  if (lane == 0) ring.Finish();
#endif
}

template <typename Source>
absl::Status LaunchCopyBatchBulk(int device, Source source, uint32_t count,
                                 uint64_t max_piece_bytes, int budget, cudaStream_t stream) {
  int major = 0, smem_optin = 0;
  if (absl::Status s = CudaStatus(
          cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device), "CC major");
      !s.ok()) {
    return s;
  }
  if (absl::Status s = CudaStatus(
          cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device),
          "shared memory per block");
      !s.ok()) {
    return s;
  }
  if (major < 9 || static_cast<size_t>(smem_optin) < kBulkSmemBytes) {
    return absl::FailedPreconditionError(
        absl::StrCat("bulk-async copy needs compute capability 9.0 and ", kBulkSmemBytes,
                     " bytes of shared memory per block; device ", device, " has ", major,
                     ".x and ", smem_optin));
  }
  // A per-device function attribute; setting it on every launch keeps launches on any device
  // correct without a cache to guard.
  if (absl::Status s = CudaStatus(cudaFuncSetAttribute(CopyBatchBulkKernel<Source>,
                                                       cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                       static_cast<int>(kBulkSmemBytes)),
                                  "cudaFuncSetAttribute(bulk copy)");
      !s.ok()) {
    return s;
  }
  // Short batches share each descriptor among several blocks, but never more blocks than the
  // largest piece has chunks; the grid is a whole number of such groups, at most the budget.
  const uint64_t max_chunks =
      std::max<uint64_t>(1, (max_piece_bytes + kBulkChunk - 1) / kBulkChunk);
  const uint32_t blocks_per_desc = static_cast<uint32_t>(
      std::min<uint64_t>(std::max<uint32_t>(1, static_cast<uint32_t>(budget) / count), max_chunks));
  const uint32_t groups = std::min(static_cast<uint32_t>(budget) / blocks_per_desc, count);
  CopyBatchBulkKernel<Source>
      <<<groups * blocks_per_desc, 32, kBulkSmemBytes, stream>>>(source, count, blocks_per_desc);
  return CudaStatus(cudaGetLastError(), "CopyBatchBulkKernel launch");
}

// Both launches: checks the options, sizes the grid to the SM budget, and picks the mover.
template <typename Source>
absl::Status LaunchCopy(Source source, uint32_t count, uint64_t max_piece_bytes,
                        const GpuCopyOptions& options, cudaStream_t stream) {
  if (count == 0) return absl::OkStatus();
  if (options.threads_per_block <= 0 || options.threads_per_block % 32 != 0 ||
      options.threads_per_block > 1024 || options.sm_budget < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("copy options: threads_per_block ", options.threads_per_block,
                     " must be a multiple of 32 in [32, 1024] and sm_budget ", options.sm_budget,
                     " must be >= 0"));
  }
  int device = 0, sms = 0;
  if (absl::Status s = CudaStatus(cudaGetDevice(&device), "cudaGetDevice"); !s.ok()) return s;
  if (absl::Status s = CudaStatus(
          cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device), "SM count");
      !s.ok()) {
    return s;
  }
  const int budget = options.sm_budget == 0 ? sms : std::min(options.sm_budget, sms);
  // (A host list is the load/store mover's alone: LaunchCopyBatch refuses it to the other.)
  if constexpr (!std::is_same_v<Source, HostListSource>) {
    if (options.mover == GpuCopyMover::kBulkAsync) {
      return LaunchCopyBatchBulk(device, source, count, max_piece_bytes, budget, stream);
    }
  }
  const uint32_t total_warps = static_cast<uint32_t>(budget) * (options.threads_per_block / 32);
  // Spread short batches over every warp; but a warp group never gets more lanes than the largest
  // piece has vectors' worth of full unrolled rounds.
  uint32_t warps_per_desc = std::max<uint32_t>(1, total_warps / count);
  const uint64_t max_useful = std::max<uint64_t>(1, max_piece_bytes / (16 * 32 * kUnroll));
  warps_per_desc = static_cast<uint32_t>(std::min<uint64_t>(warps_per_desc, max_useful));
  warps_per_desc = std::min(warps_per_desc, total_warps);
  if constexpr (std::is_same_v<Source, HostListSource>) {
    CopyBatchHostListKernel<<<budget, options.threads_per_block, 0, stream>>>(source.descs, count,
                                                                              warps_per_desc);
    return CudaStatus(cudaGetLastError(), "CopyBatchHostListKernel launch");
  } else {
    CopyBatchKernel<Source>
        <<<budget, options.threads_per_block, 0, stream>>>(source, count, warps_per_desc);
    return CudaStatus(cudaGetLastError(), "CopyBatchKernel launch");
  }
}

}  // namespace

absl::Status LaunchCopyBatch(const CopyDescriptor* device_descriptors, uint32_t count,
                             uint64_t max_piece_bytes, const GpuCopyOptions& options,
                             cudaStream_t stream) {
  if (options.host_descriptors && options.mover != GpuCopyMover::kLoadStore) {
    return absl::InvalidArgumentError(
        "copy options: host_descriptors serves the load/store mover only");
  }
  if (options.host_descriptors) {
    return LaunchCopy(HostListSource{device_descriptors}, count, max_piece_bytes, options, stream);
  }
  return LaunchCopy(ListSource{device_descriptors}, count, max_piece_bytes, options, stream);
}

absl::Status LaunchPagedCopy(const PagedPiece* device_pieces, uint32_t piece_count,
                             const PagedPage* device_pages, uint32_t page_count,
                             PagedDirection direction, uint64_t max_piece_bytes,
                             const GpuCopyOptions& options, cudaStream_t stream) {
  const uint64_t items = uint64_t{piece_count} * page_count;
  if (items > UINT32_MAX) {
    return absl::InvalidArgumentError(
        absl::StrCat(page_count, " pages of ", piece_count, " pieces exceed 2^32 - 1 copy items"));
  }
  return LaunchCopy(PagedSource{device_pieces, device_pages, piece_count, page_count, direction,
                                options.paged_order == PagedOrder::kPieceMajor},
                    static_cast<uint32_t>(items), max_piece_bytes, options, stream);
}

}  // namespace kvtier::kernels
