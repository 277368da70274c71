// Memory regions that back the page-slot pools of the HBM and DRAM tiers.
//
// DRAM is a memfd (so the daemon can share it with workers by fd passing), mmap'd page-aligned
// and pinned with cudaHostRegister when CUDA is live. HBM is one cudaMalloc'd region on a GPU, or
// a host-emulated device region on a machine without one: the same interface, chosen once at start
// and reported (every metric and log line says which backend is live). Regions are immutable after
// creation; any thread may read their fields.
#pragma once

#include <cstddef>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace kvtier {

enum class MemoryKind : uint8_t {
  kHost = 0,    // addressable by the CPU
  kDevice = 1,  // GPU memory: only a copy engine that speaks CUDA can touch it
};

class MemoryRegion {
 public:
  virtual ~MemoryRegion() = default;
  virtual std::byte* data() const = 0;
  virtual size_t size() const = 0;
  virtual MemoryKind kind() const = 0;
  // Names the backend in logs and metrics: "memfd", "host-emulated", "cuda".
  virtual absl::string_view backend() const = 0;
  // A descriptor other processes can map (memfd), or -1.
  virtual int fd() const { return -1; }
  // True when the region is registered with CUDA as pinned host memory.
  virtual bool pinned() const { return false; }
};

// A memfd of `bytes` (rounded up to the OS page size), sealed against shrinking, mmap'd shared.
// With `pin_for_cuda` and a CUDA build with a device, also cudaHostRegister'd; a failed pin is
// logged once and reported by pinned(), not fatal.
absl::StatusOr<std::unique_ptr<MemoryRegion>> CreateMemfdRegion(absl::string_view name,
                                                                size_t bytes, bool pin_for_cuda);

// Host memory standing in for a GPU on machines without one.
absl::StatusOr<std::unique_ptr<MemoryRegion>> CreateHostEmulatedDeviceRegion(size_t bytes);

// One cudaMalloc'd region on `device`. Unavailable in builds without CUDA or without a GPU.
absl::StatusOr<std::unique_ptr<MemoryRegion>> CreateCudaDeviceRegion(size_t bytes, int device);

// Whether this build has CUDA and the machine has at least one usable GPU.
bool CudaDeviceAvailable();

enum class HbmBackend : uint8_t { kAuto = 0, kCuda = 1, kHostEmulated = 2 };
absl::string_view HbmBackendName(HbmBackend b);
absl::StatusOr<HbmBackend> ParseHbmBackend(absl::string_view name);

}  // namespace kvtier
