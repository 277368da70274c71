// Driver API functions reached through the CUDA runtime's entry-point query, so that nothing links
// libcuda: the runtime is linked statically and the driver is whatever the machine has.
#pragma once

#include <cuda_runtime_api.h>

namespace kvtier {

// The driver's `name` as `Fn` (e.g. decltype(&cuMemMap)), as of CUDA `version` (12000 for 12.0),
// or null where this driver lacks it. A failed query leaves no error behind for the next
// cudaGetLastError.
template <typename Fn>
Fn CudaDriverEntry(const char* name, int version = 12000) {
  void* fn = nullptr;
  cudaDriverEntryPointQueryResult found{};
  if (cudaGetDriverEntryPointByVersion(name, &fn, version, cudaEnableDefault, &found) !=
          cudaSuccess ||
      found != cudaDriverEntryPointSuccess || fn == nullptr) {
    cudaGetLastError();
    return nullptr;
  }
  return reinterpret_cast<Fn>(fn);
}

// The same into `out`; false where the driver lacks it.
template <typename Fn>
bool ResolveCudaDriverEntry(const char* name, Fn& out, int version = 12000) {
  out = CudaDriverEntry<Fn>(name, version);
  return out != nullptr;
}

}  // namespace kvtier
