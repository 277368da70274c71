// A GPU worker's KV cache for the GPU tests and the GPU-worker benchmark: one device allocation
// holding every layer's tensor (as a caching allocator hands out slices of one large block), or a
// CUDA VMM allocation exported as a POSIX fd, registered with kvtierd through the client, plus the
// kernels that fill blocks with a page's known bytes and check what a load brought.
//
// Page i of a test sequence has, in layer l, K/V half kv and 8-byte word w, the value
// splitmix64(seed ^ l << 56 ^ kv << 55 ^ i << 20 ^ w): every word of every page differs.
// Thread model: one thread per WorkerCache.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "client/client.h"
#include "tiering/layout.h"

namespace kvtier::gpuw {

// Llama-3-8B's KV shape: 32 layers, 8 KV heads, head_dim 128, bf16, 16-token pages, vLLM's
// per-layer [2, num_blocks, 16, 8, 128] tensors: 2 MiB pages in 64 pieces of 32 KiB.
LayoutSpec Llama3_8B(uint32_t num_blocks);

class WorkerCache {
 public:
  // Allocates the layout's buffers on `device`: one cudaMalloc with a 4 KiB lead-in (so that every
  // layer is a slice at an offset, as PyTorch's tensors are), or a VMM allocation when `vmm`.
  static absl::StatusOr<std::unique_ptr<WorkerCache>> Create(const Layout& layout, bool vmm,
                                                             int device = 0);
  ~WorkerCache();
  WorkerCache(const WorkerCache&) = delete;
  WorkerCache& operator=(const WorkerCache&) = delete;

  // What RegisterGpuBuffers sends: per layer the allocation's IPC handle (or VMM fd) and offset.
  std::vector<GpuBufferHandle> Handles() const;
  const std::string& uuid() const { return uuid_; }
  cudaStream_t stream() const { return stream_; }
  void* layer(uint32_t l) const { return layers_[l]; }

  // Writes page `first_page + j` of sequence `seed` into block `first_page + j` (j < count).
  absl::Status Fill(uint64_t seed, uint32_t first_page, uint32_t count);
  // Zeroes every block.
  absl::Status Clear();
  // Counts words that differ from page i of `seed` in block (i + shift) % num_blocks, i < pages.
  absl::StatusOr<uint64_t> Verify(uint64_t seed, uint32_t pages, uint32_t shift);
  // Makes the worker's stream wait on the daemon's interprocess event (opened once per handle).
  absl::Status WaitOn(const std::string& event_handle);

 private:
  WorkerCache(const Layout& layout, int device) : layout_(layout), device_(device) {}
  const Layout layout_;
  const int device_;
  std::string uuid_;
  cudaStream_t stream_ = nullptr;
  void* base_ = nullptr;        // cudaMalloc'd, or the VMM mapping
  size_t bytes_ = 0;            // of the allocation
  unsigned long long vmm_ = 0;  // CUmemGenericAllocationHandle when VMM
  int vmm_fd_ = -1;             // exported
  std::vector<void*> layers_;
  std::vector<uint64_t> offsets_;
  uint64_t* mismatches_ = nullptr;  // device counter
  std::string event_handle_;
  cudaEvent_t event_ = nullptr;
};

// Page keys of test sequence `seed` (16-token pages, tokens a function of seed and position).
std::vector<PageKey> SequenceKeys(const PageKey& salt, uint64_t seed, uint32_t pages);
// Stores pages [0, keys.size()) from blocks of the same index, `batch` pages a request; returns
// the tier of each page, or the first failure.
absl::StatusOr<std::vector<Tier>> StoreSequence(Client& client, absl::Span<const PageKey> keys,
                                                uint32_t batch);

// Seconds on a monotonic clock.
double NowSeconds();

}  // namespace kvtier::gpuw
