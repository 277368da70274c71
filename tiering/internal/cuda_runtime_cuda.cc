// Build with CUDA: thin wrappers over the runtime that turn error codes into Status.
#include <cuda_runtime_api.h>

#include "absl/strings/str_cat.h"
#include "tiering/internal/cuda_runtime.h"

namespace kvtier::internal {

int CudaDeviceCount() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no device" error
    return 0;
  }
  return n;
}

absl::StatusOr<void*> CudaMalloc(size_t bytes, int device) {
  if (cudaError_t e = cudaSetDevice(device); e != cudaSuccess) {
    return absl::UnavailableError(
        absl::StrCat("cudaSetDevice(", device, "): ", cudaGetErrorString(e)));
  }
  void* p = nullptr;
  if (cudaError_t e = cudaMalloc(&p, bytes); e != cudaSuccess) {
    return absl::ResourceExhaustedError(
        absl::StrCat("cudaMalloc(", bytes, " bytes): ", cudaGetErrorString(e)));
  }
  return p;
}

void CudaFree(void* p) { cudaFree(p); }

absl::Status CudaHostRegister(void* p, size_t bytes) {
  if (cudaError_t e = cudaHostRegister(p, bytes, cudaHostRegisterPortable | cudaHostRegisterMapped);
      e != cudaSuccess) {
    return absl::InternalError(
        absl::StrCat("cudaHostRegister(", bytes, " bytes): ", cudaGetErrorString(e)));
  }
  return absl::OkStatus();
}

void CudaHostUnregister(void* p) { cudaHostUnregister(p); }

}  // namespace kvtier::internal
