#include "tiering/memory_region.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <utility>

#include "absl/strings/str_cat.h"
#include "base/errno_status.h"
#include "base/memfd.h"
#include "base/status_macros.h"
#include "base/unique_fd.h"
#include "tiering/internal/cuda_runtime.h"

namespace kvtier {
namespace {

size_t RoundUpToOsPage(size_t bytes) {
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  return (bytes + page - 1) / page * page;
}

// Owns an fd, an mmap of it, and (optionally) its CUDA host registration.
class MemfdRegion final : public MemoryRegion {
 public:
  MemfdRegion(UniqueFd fd, std::byte* data, size_t size)
      : fd_(std::move(fd)), data_(data), size_(size) {}
  ~MemfdRegion() override {
    if (pinned_) internal::CudaHostUnregister(data_);
    munmap(data_, size_);
  }
  std::byte* data() const override { return data_; }
  size_t size() const override { return size_; }
  MemoryKind kind() const override { return MemoryKind::kHost; }
  absl::string_view backend() const override { return "memfd"; }
  int fd() const override { return fd_.get(); }
  bool pinned() const override { return pinned_; }
  void set_pinned(bool p) { pinned_ = p; }

 private:
  UniqueFd fd_;  // closed after the unmapping above
  std::byte* data_;
  size_t size_;
  bool pinned_ = false;
};

class AnonymousRegion final : public MemoryRegion {
 public:
  AnonymousRegion(std::byte* data, size_t size) : data_(data), size_(size) {}
  ~AnonymousRegion() override { munmap(data_, size_); }
  std::byte* data() const override { return data_; }
  size_t size() const override { return size_; }
  // Emulates device memory, but the bytes are host-addressable so the CPU copy engine serves it.
  MemoryKind kind() const override { return MemoryKind::kHost; }
  absl::string_view backend() const override { return "host-emulated"; }

 private:
  std::byte* data_;
  size_t size_;
};

class CudaRegion final : public MemoryRegion {
 public:
  CudaRegion(std::byte* data, size_t size) : data_(data), size_(size) {}
  ~CudaRegion() override { internal::CudaFree(data_); }
  std::byte* data() const override { return data_; }
  size_t size() const override { return size_; }
  MemoryKind kind() const override { return MemoryKind::kDevice; }
  absl::string_view backend() const override { return "cuda"; }

 private:
  std::byte* data_;
  size_t size_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<MemoryRegion>> CreateMemfdRegion(absl::string_view name,
                                                                size_t bytes, bool pin_for_cuda) {
  if (bytes == 0) return absl::InvalidArgumentError("memfd region of 0 bytes");
  const size_t size = RoundUpToOsPage(bytes);
  const std::string fd_name = absl::StrCat("kvtier-", name);
  // Workers map this fd; sealing stops anyone from shrinking it under the daemon's feet.
  ASSIGN_OR_RETURN(UniqueFd fd,
                   CreateMemfd(fd_name, size, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL));
  // MAP_POPULATE: fault every page in now, not on the first page copy of the data path.
  void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd.get(), 0);
  if (p == MAP_FAILED) return ErrnoStatus(errno, absl::StrCat("mmap memfd of ", size, " bytes"));
  auto region = std::make_unique<MemfdRegion>(std::move(fd), static_cast<std::byte*>(p), size);
  if (pin_for_cuda && CudaDeviceAvailable()) {
    region->set_pinned(internal::CudaHostRegister(p, size).ok());
  }
  return region;
}

absl::StatusOr<std::unique_ptr<MemoryRegion>> CreateHostEmulatedDeviceRegion(size_t bytes) {
  if (bytes == 0) return absl::InvalidArgumentError("device region of 0 bytes");
  const size_t size = RoundUpToOsPage(bytes);
  void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE,
                 -1, 0);
  if (p == MAP_FAILED) return ErrnoStatus(errno, absl::StrCat("mmap ", size, " bytes"));
  return std::make_unique<AnonymousRegion>(static_cast<std::byte*>(p), size);
}

absl::StatusOr<std::unique_ptr<MemoryRegion>> CreateCudaDeviceRegion(size_t bytes, int device) {
  if (bytes == 0) return absl::InvalidArgumentError("device region of 0 bytes");
  absl::StatusOr<void*> p = internal::CudaMalloc(bytes, device);
  if (!p.ok()) return p.status();
  return std::make_unique<CudaRegion>(static_cast<std::byte*>(*p), bytes);
}

bool CudaDeviceAvailable() { return internal::CudaDeviceCount() > 0; }

absl::string_view HbmBackendName(HbmBackend b) {
  switch (b) {
    case HbmBackend::kAuto:
      return "auto";
    case HbmBackend::kCuda:
      return "cuda";
    case HbmBackend::kHostEmulated:
      return "host-emulated";
  }
  return "invalid";
}

absl::StatusOr<HbmBackend> ParseHbmBackend(absl::string_view name) {
  if (name == "auto") return HbmBackend::kAuto;
  if (name == "cuda") return HbmBackend::kCuda;
  if (name == "host-emulated") return HbmBackend::kHostEmulated;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown HBM backend '", name, "' (expected auto, cuda or host-emulated)"));
}

}  // namespace kvtier
