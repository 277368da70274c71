// The few CUDA runtime calls the tiering core needs, behind plain C++ so that only one file
// (cuda_runtime_cuda.cc or cuda_runtime_none.cc, picked by the build) includes CUDA headers.
#pragma once

#include <cstddef>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace kvtier::internal {

// Usable devices; 0 in builds without CUDA or when the driver finds none.
int CudaDeviceCount();
absl::StatusOr<void*> CudaMalloc(size_t bytes, int device);
void CudaFree(void* p);
absl::Status CudaHostRegister(void* p, size_t bytes);
void CudaHostUnregister(void* p);

}  // namespace kvtier::internal
