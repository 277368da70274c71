// Build without CUDA: there is no device, and asking for one says so.
#include "tiering/internal/cuda_runtime.h"

namespace kvtier::internal {

int CudaDeviceCount() { return 0; }
absl::StatusOr<void*> CudaMalloc(size_t, int) {
  return absl::UnavailableError("kvtier was built without CUDA (-DKVTIER_CUDA=OFF or no nvcc)");
}
void CudaFree(void*) {}
absl::Status CudaHostRegister(void*, size_t) {
  return absl::UnavailableError("kvtier was built without CUDA");
}
void CudaHostUnregister(void*) {}

}  // namespace kvtier::internal
