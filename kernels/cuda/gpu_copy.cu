// The batched gather/scatter kernel. A persistent grid of at most `sm_budget` blocks walks the
// descriptor list; a group of G warps (G chosen so that every warp has work even for short
// batches) moves one descriptor at a time in 16-byte vectors, 8 loads in flight per thread so
// that reads of mapped host memory over PCIe (about a microsecond each) overlap.
#include <algorithm>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/gpu_kernels.h"

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

__global__ void CopyBatchKernel(const CopyDescriptor* __restrict__ descs, uint32_t count,
                                uint32_t warps_per_desc) {
  const uint32_t lane = threadIdx.x & 31u;
  const uint32_t warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  const uint32_t total_warps = (gridDim.x * blockDim.x) >> 5;
  const uint32_t groups = total_warps / warps_per_desc;
  const uint32_t group = warp / warps_per_desc;
  if (group >= groups) return;  // warps beyond the last whole group sit out
  const uint64_t stride = uint64_t{warps_per_desc} * 32;
  const uint64_t first = uint64_t{warp % warps_per_desc} * 32 + lane;
  for (uint32_t d = group; d < count; d += groups) {
    const CopyDescriptor desc = descs[d];
    const uint4* __restrict__ src = static_cast<const uint4*>(desc.src);
    uint4* __restrict__ dst = static_cast<uint4*>(desc.dst);
    const uint64_t n = desc.bytes / 16;
    uint64_t i = first;
    // Full rounds: kUnroll independent loads before the first store.
    for (; i + (kUnroll - 1) * stride < n; i += kUnroll * stride) {
      uint4 r[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) r[u] = src[i + u * stride];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) dst[i + u * stride] = r[u];
    }
    for (; i < n; i += stride) dst[i] = src[i];
  }
}

}  // namespace

absl::Status LaunchCopyBatch(const CopyDescriptor* device_descriptors, uint32_t count,
                             uint64_t max_piece_bytes, const GpuCopyOptions& options,
                             cudaStream_t stream) {
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
  const uint32_t total_warps = static_cast<uint32_t>(budget) * (options.threads_per_block / 32);
  // Spread short batches over every warp; but a warp group never gets more lanes than the largest
  // piece has vectors' worth of full unrolled rounds.
  uint32_t warps_per_desc = std::max<uint32_t>(1, total_warps / count);
  const uint64_t max_useful = std::max<uint64_t>(1, max_piece_bytes / (16 * 32 * kUnroll));
  warps_per_desc = static_cast<uint32_t>(std::min<uint64_t>(warps_per_desc, max_useful));
  warps_per_desc = std::min(warps_per_desc, total_warps);
  CopyBatchKernel<<<budget, options.threads_per_block, 0, stream>>>(device_descriptors, count,
                                                                    warps_per_desc);
  return CudaStatus(cudaGetLastError(), "CopyBatchKernel launch");
}

}  // namespace kvtier::kernels
