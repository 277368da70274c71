// Driver API functions reached through the CUDA runtime's entry-point query, so that nothing links
// libcuda: the runtime is linked statically and the driver is whatever the machine has.
#pragma once

#include <cuda.h>
#include <cuda_runtime_api.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

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

// A driver call's result: OK, or an error of `code` naming the call and the CUresult.
inline absl::Status CudaDriverStatus(CUresult result, absl::string_view what,
                                     absl::StatusCode code) {
  if (result == CUDA_SUCCESS) return absl::OkStatus();
  return absl::Status(code, absl::StrCat(what, ": CUDA driver error ", static_cast<int>(result)));
}

}  // namespace kvtier
