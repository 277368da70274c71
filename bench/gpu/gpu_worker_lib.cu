#include <cuda.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "bench/gpu/gpu_worker_lib.h"
#include "kernels/cuda/driver_entry.h"
#include "tiering/page_key.h"

namespace kvtier::gpuw {
namespace {

absl::Status Cuda(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(what, ": ", cudaGetErrorString(e)));
}

__host__ __device__ inline uint64_t SplitMix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

__host__ __device__ inline uint64_t Word(uint64_t seed, uint32_t layer, uint32_t kv, uint64_t page,
                                         uint64_t w) {
  return SplitMix64(seed ^ (uint64_t{layer} << 56) ^ (uint64_t{kv} << 55) ^ (page << 20) ^ w);
}

// One layer's tensor [2, num_blocks, words_per_half]: fills blocks [first, first + count) with
// pages of the same index.
__global__ void FillKernel(uint64_t* t, uint64_t seed, uint32_t layer, uint32_t num_blocks,
                           uint32_t words_per_half, uint32_t first, uint32_t count) {
  const uint64_t per_kv = uint64_t{count} * words_per_half;
  for (uint64_t x = blockIdx.x * uint64_t{blockDim.x} + threadIdx.x; x < 2 * per_kv;
       x += uint64_t{gridDim.x} * blockDim.x) {
    const uint32_t kv = static_cast<uint32_t>(x / per_kv);
    const uint64_t r = x % per_kv;
    const uint32_t block = first + static_cast<uint32_t>(r / words_per_half);
    const uint64_t w = r % words_per_half;
    t[(uint64_t{kv} * num_blocks + block) * words_per_half + w] = Word(seed, layer, kv, block, w);
  }
}

__global__ void VerifyKernel(const uint64_t* t, uint64_t seed, uint32_t layer, uint32_t num_blocks,
                             uint32_t words_per_half, uint32_t pages, uint32_t shift,
                             unsigned long long* mismatches) {
  const uint64_t per_kv = uint64_t{pages} * words_per_half;
  unsigned long long bad = 0;
  for (uint64_t x = blockIdx.x * uint64_t{blockDim.x} + threadIdx.x; x < 2 * per_kv;
       x += uint64_t{gridDim.x} * blockDim.x) {
    const uint32_t kv = static_cast<uint32_t>(x / per_kv);
    const uint64_t r = x % per_kv;
    const uint32_t page = static_cast<uint32_t>(r / words_per_half);
    const uint64_t w = r % words_per_half;
    const uint32_t block = (page + shift) % num_blocks;
    bad += t[(uint64_t{kv} * num_blocks + block) * words_per_half + w] !=
           Word(seed, layer, kv, page, w);
  }
  if (bad != 0) atomicAdd(mismatches, bad);
}

}  // namespace

LayoutSpec Llama3_8B(uint32_t num_blocks) {
  LayoutSpec s;
  s.layers = 32;
  s.kv_heads = 8;
  s.head_dim = 128;
  s.dtype = DType::kBF16;
  s.tokens_per_page = 16;
  s.tensor_layout = TensorLayout::kVllmPerLayer;
  s.num_blocks = num_blocks;
  return s;
}

std::vector<PageKey> SequenceKeys(const PageKey& salt, uint64_t seed, uint32_t pages) {
  std::vector<int32_t> tokens(size_t{pages} * 16);
  for (size_t i = 0; i < tokens.size(); ++i) {
    tokens[i] = static_cast<int32_t>((seed * 2654435761u + i * 40503u) % 128000);
  }
  return ChainKeys(salt, tokens, 16);
}

absl::StatusOr<std::vector<Tier>> StoreSequence(Client& client, absl::Span<const PageKey> keys,
                                                uint32_t batch) {
  const uint32_t pages = static_cast<uint32_t>(keys.size());
  std::vector<uint32_t> ids(pages);
  for (uint32_t i = 0; i < pages; ++i) ids[i] = i;
  std::vector<Tier> tiers;
  for (uint32_t at = 0; at < pages; at += batch) {
    const uint32_t n = std::min(batch, pages - at);
    StoreHints hints;
    hints.parent = at == 0 ? PageKey{} : keys[at - 1];
    hints.first_position = at;
    absl::StatusOr<OpHandle> op =
        client.StoreGpuAsync(keys.subspan(at, n), absl::MakeConstSpan(ids).subspan(at, n), hints);
    if (!op.ok()) return op.status();
    absl::StatusOr<GpuPageResults> r = client.WaitGpu(*op);
    if (!r.ok()) return r.status();
    if (r->pages.ok_pages != n) {
      return absl::InternalError(
          absl::StrCat(r->pages.ok_pages, " of ", n, " pages stored: ", r->pages.first_error));
    }
    tiers.insert(tiers.end(), r->pages.tiers.begin(), r->pages.tiers.end());
  }
  return tiers;
}

double NowSeconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

absl::StatusOr<std::unique_ptr<WorkerCache>> WorkerCache::Create(const Layout& layout, bool vmm,
                                                                 int device) {
  std::unique_ptr<WorkerCache> c(new WorkerCache(layout, device));
  if (absl::Status s = Cuda(cudaSetDevice(device), "cudaSetDevice"); !s.ok()) return s;
  cudaDeviceProp prop{};
  if (absl::Status s = Cuda(cudaGetDeviceProperties(&prop, device), "props"); !s.ok()) return s;
  c->uuid_.assign(reinterpret_cast<const char*>(&prop.uuid), sizeof(prop.uuid));
  if (absl::Status s =
          Cuda(cudaStreamCreateWithFlags(&c->stream_, cudaStreamNonBlocking), "stream");
      !s.ok()) {
    return s;
  }
  if (absl::Status s = Cuda(cudaMalloc(&c->mismatches_, sizeof(uint64_t)), "cudaMalloc"); !s.ok()) {
    return s;
  }
  const uint64_t layer_bytes = layout.buffer_bytes();
  const uint64_t lead = 4096;  // every layer is a slice at an offset inside the allocation
  const uint64_t want = lead + layer_bytes * layout.buffer_count();
  if (!vmm) {
    if (absl::Status s = Cuda(cudaMalloc(&c->base_, want), "cudaMalloc(cache)"); !s.ok()) return s;
    c->bytes_ = want;
  } else {
    auto create = CudaDriverEntry<decltype(&cuMemCreate)>("cuMemCreate");
    auto granularity =
        CudaDriverEntry<decltype(&cuMemGetAllocationGranularity)>("cuMemGetAllocationGranularity");
    auto reserve = CudaDriverEntry<decltype(&cuMemAddressReserve)>("cuMemAddressReserve");
    auto map = CudaDriverEntry<decltype(&cuMemMap)>("cuMemMap");
    auto access = CudaDriverEntry<decltype(&cuMemSetAccess)>("cuMemSetAccess");
    auto exporter =
        CudaDriverEntry<decltype(&cuMemExportToShareableHandle)>("cuMemExportToShareableHandle");
    if (!create || !granularity || !reserve || !map || !access || !exporter) {
      return absl::FailedPreconditionError("the driver lacks the VMM entry points");
    }
    CUmemAllocationProp p{};
    p.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    p.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    p.location.id = device;
    p.requestedHandleTypes = CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;
    size_t g = 0;
    if (granularity(&g, &p, CU_MEM_ALLOC_GRANULARITY_MINIMUM) != CUDA_SUCCESS) {
      return absl::InternalError("cuMemGetAllocationGranularity");
    }
    const size_t bytes = (want + g - 1) / g * g;
    CUmemGenericAllocationHandle h = 0;
    if (CUresult r = create(&h, bytes, &p, 0); r != CUDA_SUCCESS) {
      return absl::InternalError(absl::StrCat("cuMemCreate: ", static_cast<int>(r)));
    }
    c->vmm_ = h;
    CUdeviceptr ptr = 0;
    if (reserve(&ptr, bytes, 0, 0, 0) != CUDA_SUCCESS || map(ptr, bytes, 0, h, 0) != CUDA_SUCCESS) {
      return absl::InternalError("cuMemAddressReserve/cuMemMap");
    }
    CUmemAccessDesc a{};
    a.location = p.location;
    a.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
    if (access(ptr, bytes, &a, 1) != CUDA_SUCCESS) return absl::InternalError("cuMemSetAccess");
    int fd = -1;
    if (CUresult r = exporter(&fd, h, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, 0);
        r != CUDA_SUCCESS) {
      return absl::InternalError(
          absl::StrCat("cuMemExportToShareableHandle: ", static_cast<int>(r)));
    }
    c->vmm_fd_ = fd;
    c->base_ = reinterpret_cast<void*>(ptr);
    c->bytes_ = bytes;
  }
  for (uint32_t l = 0; l < layout.buffer_count(); ++l) {
    c->offsets_.push_back(lead + l * layer_bytes);
    c->layers_.push_back(static_cast<std::byte*>(c->base_) + c->offsets_.back());
  }
  if (absl::Status s = c->Clear(); !s.ok()) return s;
  return c;
}

WorkerCache::~WorkerCache() {
  cudaSetDevice(device_);
  if (event_ != nullptr) cudaEventDestroy(event_);
  if (stream_ != nullptr) cudaStreamDestroy(stream_);
  if (mismatches_ != nullptr) cudaFree(mismatches_);
  if (vmm_ == 0 && base_ != nullptr) cudaFree(base_);
  if (vmm_ != 0) {
    auto unmap = CudaDriverEntry<decltype(&cuMemUnmap)>("cuMemUnmap");
    auto free_va = CudaDriverEntry<decltype(&cuMemAddressFree)>("cuMemAddressFree");
    auto release = CudaDriverEntry<decltype(&cuMemRelease)>("cuMemRelease");
    unmap(reinterpret_cast<CUdeviceptr>(base_), bytes_);
    free_va(reinterpret_cast<CUdeviceptr>(base_), bytes_);
    release(vmm_);
  }
  if (vmm_fd_ >= 0) ::close(vmm_fd_);
}

std::vector<GpuBufferHandle> WorkerCache::Handles() const {
  std::vector<GpuBufferHandle> out;
  auto range = CudaDriverEntry<decltype(&cuMemGetAddressRange_v2)>("cuMemGetAddressRange");
  for (size_t l = 0; l < layers_.size(); ++l) {
    GpuBufferHandle h;
    h.size = layout_.buffer_bytes();
    if (vmm_ != 0) {
      h.vmm_fd = vmm_fd_;
      h.allocation_bytes = bytes_;
      h.offset = offsets_[l];
    } else {
      // What a PyTorch worker does for tensor.data_ptr(): the handle names the whole
      // allocation, and the offset is the pointer's distance from its base.
      cudaIpcMemHandle_t ipc;
      cudaIpcGetMemHandle(&ipc, layers_[l]);
      h.ipc_handle.assign(reinterpret_cast<const char*>(&ipc), sizeof(ipc));
      CUdeviceptr base = 0;
      size_t size = 0;
      range(&base, &size, reinterpret_cast<CUdeviceptr>(layers_[l]));
      h.offset = reinterpret_cast<uintptr_t>(layers_[l]) - base;
    }
    out.push_back(std::move(h));
  }
  return out;
}

absl::Status WorkerCache::Fill(uint64_t seed, uint32_t first_page, uint32_t count) {
  const uint32_t words = static_cast<uint32_t>(layout_.block_bytes_per_layer() / 8);
  for (uint32_t l = 0; l < layers_.size(); ++l) {
    FillKernel<<<1024, 256, 0, stream_>>>(static_cast<uint64_t*>(layers_[l]), seed, l,
                                          layout_.spec().num_blocks, words, first_page, count);
  }
  return Cuda(cudaStreamSynchronize(stream_), "fill");
}

absl::Status WorkerCache::Clear() {
  for (void* p : layers_) {
    if (absl::Status s = Cuda(cudaMemsetAsync(p, 0, layout_.buffer_bytes(), stream_), "memset");
        !s.ok()) {
      return s;
    }
  }
  return Cuda(cudaStreamSynchronize(stream_), "clear");
}

absl::StatusOr<uint64_t> WorkerCache::Verify(uint64_t seed, uint32_t pages, uint32_t shift) {
  const uint32_t words = static_cast<uint32_t>(layout_.block_bytes_per_layer() / 8);
  cudaMemsetAsync(mismatches_, 0, sizeof(uint64_t), stream_);
  for (uint32_t l = 0; l < layers_.size(); ++l) {
    VerifyKernel<<<1024, 256, 0, stream_>>>(static_cast<const uint64_t*>(layers_[l]), seed, l,
                                            layout_.spec().num_blocks, words, pages, shift,
                                            reinterpret_cast<unsigned long long*>(mismatches_));
  }
  uint64_t bad = 0;
  cudaMemcpyAsync(&bad, mismatches_, sizeof(bad), cudaMemcpyDeviceToHost, stream_);
  if (absl::Status s = Cuda(cudaStreamSynchronize(stream_), "verify"); !s.ok()) return s;
  return bad;
}

absl::Status WorkerCache::WaitOn(const std::string& event_handle) {
  if (event_handle.size() != sizeof(cudaIpcEventHandle_t)) {
    return absl::InvalidArgumentError(
        absl::StrCat("reply carries an event handle of ", event_handle.size(), " bytes"));
  }
  if (event_handle != event_handle_) {
    if (event_ != nullptr) cudaEventDestroy(event_);
    event_ = nullptr;
    cudaIpcEventHandle_t h;
    std::memcpy(&h, event_handle.data(), sizeof(h));
    if (absl::Status s = Cuda(cudaIpcOpenEventHandle(&event_, h), "cudaIpcOpenEventHandle");
        !s.ok()) {
      return s;
    }
    event_handle_ = event_handle;
  }
  return Cuda(cudaStreamWaitEvent(stream_, event_, 0), "cudaStreamWaitEvent");
}

}  // namespace kvtier::gpuw
