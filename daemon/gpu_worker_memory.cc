#include "daemon/gpu_worker_memory.h"

#include <glog/logging.h>
#include <sys/stat.h>

#include <algorithm>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "base/status_macros.h"
#include "kernels/copy_batch.h"
#include "tiering/clock.h"
#include "tiering/copy_plan.h"

#if defined(KVTIER_HAVE_CUDA_KERNELS)
#include <cuda.h>
#include <cuda_runtime_api.h>

#include "kernels/cuda/driver_entry.h"
#include "kernels/cuda/gpu_kernels.h"
#endif

namespace kvtier {

// Checks what every request must satisfy, GPU or not, so a CPU-only daemon reports the same
// mistakes a GPU one would (after saying it cannot serve GPU buffers at all).
absl::Status CheckGpuBufferRequest(const Layout& layout, const GpuBufferRequest& r) {
  const size_t n = layout.buffer_count();
  const bool vmm = !r.vmm_fds.empty();
  if (vmm && !r.ipc_handles.empty()) {
    return absl::InvalidArgumentError(
        "RegisterBuffers carries both CUDA IPC handles and VMM fds; use one kind");
  }
  const size_t handles = vmm ? r.vmm_fds.size() : r.ipc_handles.size();
  if (handles != n || r.sizes.size() != n || r.offsets.size() != n) {
    return absl::InvalidArgumentError(absl::StrCat("RegisterBuffers carries ", handles,
                                                   vmm ? " VMM fds, " : " CUDA IPC handles, ",
                                                   r.sizes.size(), " sizes and ", r.offsets.size(),
                                                   " offsets; the layout needs ", n, " buffers"));
  }
  if (vmm && r.allocation_bytes.size() != n) {
    return absl::InvalidArgumentError(absl::StrCat("RegisterBuffers carries ", n, " VMM fds but ",
                                                   r.allocation_bytes.size(),
                                                   " allocation_bytes; one per fd"));
  }
  if (r.device_uuid.size() != kGpuUuidBytes) {
    return absl::InvalidArgumentError(absl::StrCat("device_uuid of ", r.device_uuid.size(),
                                                   " bytes; a GPU UUID is ", kGpuUuidBytes));
  }
  for (size_t i = 0; i < n; ++i) {
    if (!vmm && r.ipc_handles[i].size() != kCudaIpcHandleBytes) {
      return absl::InvalidArgumentError(absl::StrCat("buffer ", i, ": CUDA IPC handle of ",
                                                     r.ipc_handles[i].size(), " bytes; must be ",
                                                     kCudaIpcHandleBytes));
    }
    if (r.sizes[i] < layout.buffer_bytes()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "buffer ", i, " of ", r.sizes[i], " bytes; the layout needs ", layout.buffer_bytes()));
    }
    if (r.offsets[i] % kernels::kCopyAlignment != 0) {
      return absl::InvalidArgumentError(absl::StrCat("buffer ", i, " at offset ", r.offsets[i],
                                                     "; GPU buffers must be ",
                                                     kernels::kCopyAlignment, "-byte aligned"));
    }
    if (r.offsets[i] > UINT64_MAX - r.sizes[i]) {
      return absl::InvalidArgumentError(absl::StrCat("buffer ", i, ": offset ", r.offsets[i],
                                                     " + size ", r.sizes[i], " overflows"));
    }
    if (vmm && r.offsets[i] + r.sizes[i] > r.allocation_bytes[i]) {
      return absl::InvalidArgumentError(
          absl::StrCat("buffer ", i, ": bytes [", r.offsets[i], ", ", r.offsets[i] + r.sizes[i],
                       ") lie outside its VMM allocation of ", r.allocation_bytes[i], " bytes"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<kernels::PagedPiece>> BindWorkerPieces(const Layout& layout,
                                                                  const GpuWorkerBuffers& b) {
  std::vector<std::byte*> bases(b.count());
  std::vector<uint64_t> sizes(b.count());
  for (size_t i = 0; i < b.count(); ++i) {
    bases[i] = b.base(i);
    sizes[i] = b.size(i);
  }
  return BindPieceTemplates(layout, bases, sizes);
}

#if !defined(KVTIER_HAVE_CUDA_KERNELS)

struct GpuWorkers::Impl {};

GpuWorkers::GpuWorkers(const GpuConfig&, TieredStore&) {}
GpuWorkers::~GpuWorkers() = default;

// `request` is a sink (the CUDA build takes its descriptors); here they close when it goes.
// NOLINTBEGIN(performance-unnecessary-value-param)
absl::StatusOr<std::shared_ptr<const GpuWorkerBuffers>> GpuWorkers::Open(const Layout& layout,
                                                                         GpuBufferRequest request) {
  // NOLINTEND(performance-unnecessary-value-param)
  RETURN_IF_ERROR(CheckGpuBufferRequest(layout, request));
  return absl::FailedPreconditionError(
      "GPU buffers cannot be registered: this kvtierd was built without CUDA "
      "(KVTIER_CUDA=OFF or no nvcc); register memfd buffers");
}

void GpuWorkers::Load(const GpuWorkerBuffers&, const GpuPageBatch& batch, bool,
                      const GpuPageResultFn& result, const std::function<void()>& enqueued) {
  for (size_t i = 0; i < batch.keys.size(); ++i) {
    result(i, absl::FailedPreconditionError("this kvtierd was built without CUDA"));
  }
  enqueued();
}

void GpuWorkers::Store(const GpuWorkerBuffers&, const GpuPageBatch& batch, absl::string_view,
                       const GpuStoreHooks&, const GpuPageResultFn& result) {
  for (size_t i = 0; i < batch.keys.size(); ++i) {
    result(i, absl::FailedPreconditionError("this kvtierd was built without CUDA"));
  }
}

#else  // KVTIER_HAVE_CUDA_KERNELS

namespace {

using kernels::CudaStatus;

// Driver API entry points through the runtime (the runtime is linked statically; libcuda is
// whatever driver the machine has), resolved once.
struct Driver {
  decltype(&cuMemGetAddressRange_v2) mem_get_address_range = nullptr;
  decltype(&cuMemImportFromShareableHandle) import_handle = nullptr;
  decltype(&cuMemAddressReserve) address_reserve = nullptr;
  decltype(&cuMemAddressFree) address_free = nullptr;
  decltype(&cuMemMap) map = nullptr;
  decltype(&cuMemUnmap) unmap = nullptr;
  decltype(&cuMemSetAccess) set_access = nullptr;
  decltype(&cuMemRelease) release = nullptr;
  decltype(&cuMemGetAllocationPropertiesFromHandle) properties = nullptr;
  bool ok = false;
};

const Driver& GetDriver() {
  static const Driver d = [] {
    Driver x;
    x.ok = ResolveCudaDriverEntry("cuMemGetAddressRange", x.mem_get_address_range) &&
           ResolveCudaDriverEntry("cuMemImportFromShareableHandle", x.import_handle) &&
           ResolveCudaDriverEntry("cuMemAddressReserve", x.address_reserve) &&
           ResolveCudaDriverEntry("cuMemAddressFree", x.address_free) &&
           ResolveCudaDriverEntry("cuMemMap", x.map) &&
           ResolveCudaDriverEntry("cuMemUnmap", x.unmap) &&
           ResolveCudaDriverEntry("cuMemSetAccess", x.set_access) &&
           ResolveCudaDriverEntry("cuMemRelease", x.release) &&
           ResolveCudaDriverEntry("cuMemGetAllocationPropertiesFromHandle", x.properties);
    return x;
  }();
  return d;
}

// Driver calls here map what a worker registers: a failure fails that registration.
absl::Status DriverStatus(CUresult r, absl::string_view what) {
  return CudaDriverStatus(r, what, absl::StatusCode::kInvalidArgument);
}

std::string UuidHex(absl::string_view uuid) { return absl::BytesToHexString(uuid); }

// One opened allocation: a legacy IPC mapping (closed with cudaIpcCloseMemHandle) or a VMM
// import (unmapped, its address range freed and its handle released).
class OpenedAllocation {
 public:
  OpenedAllocation() = default;
  OpenedAllocation(const OpenedAllocation&) = delete;
  OpenedAllocation& operator=(const OpenedAllocation&) = delete;
  ~OpenedAllocation() {
    if (base_ == nullptr) return;
    cudaSetDevice(device_);
    if (vmm_handle_ != 0) {
      const Driver& d = GetDriver();
      d.unmap(reinterpret_cast<CUdeviceptr>(base_), bytes_);
      d.address_free(reinterpret_cast<CUdeviceptr>(base_), bytes_);
      d.release(vmm_handle_);
    } else if (cudaError_t e = cudaIpcCloseMemHandle(base_); e != cudaSuccess) {
      LOG(WARNING) << "event=gpu_ipc_close_failed error=\"" << cudaGetErrorString(e) << "\"";
    }
  }

  static absl::StatusOr<std::unique_ptr<OpenedAllocation>> OpenIpc(int device,
                                                                   const std::string& handle) {
    auto a = std::make_unique<OpenedAllocation>();
    a->device_ = device;
    cudaIpcMemHandle_t h;
    std::memcpy(&h, handle.data(), sizeof(h));
    void* p = nullptr;
    if (cudaError_t e = cudaIpcOpenMemHandle(&p, h, cudaIpcMemLazyEnablePeerAccess);
        e != cudaSuccess) {
      cudaGetLastError();  // not sticky: clear it so the next call does not see it
      return absl::InvalidArgumentError(
          absl::StrCat("cudaIpcOpenMemHandle: ", cudaGetErrorString(e),
                       " (a freed allocation, a handle from another machine, or a process that "
                       "already exited?)"));
    }
    a->base_ = static_cast<std::byte*>(p);
    CUdeviceptr base = 0;
    size_t bytes = 0;
    const Driver& d = GetDriver();
    if (CUresult r = d.mem_get_address_range(&base, &bytes, reinterpret_cast<CUdeviceptr>(p));
        r != CUDA_SUCCESS) {
      return DriverStatus(r, "cuMemGetAddressRange of an opened IPC allocation");
    }
    // The handle names the whole allocation, so its mapping starts at the allocation's base.
    a->bytes_ = bytes - (reinterpret_cast<uintptr_t>(p) - static_cast<uintptr_t>(base));
    cudaPointerAttributes attr{};
    if (cudaPointerGetAttributes(&attr, p) != cudaSuccess || attr.device != device) {
      cudaGetLastError();
      return absl::InvalidArgumentError(absl::StrCat(
          "the IPC allocation lives on GPU ordinal ", attr.device,
          ", not on the GPU whose UUID was declared (ordinal ", device, " in kvtierd)"));
    }
    return a;
  }

  static absl::StatusOr<std::unique_ptr<OpenedAllocation>> ImportVmm(int device, int fd,
                                                                     uint64_t bytes) {
    const Driver& d = GetDriver();
    auto a = std::make_unique<OpenedAllocation>();
    a->device_ = device;
    CUmemGenericAllocationHandle h = 0;
    if (CUresult r = d.import_handle(&h, reinterpret_cast<void*>(static_cast<uintptr_t>(fd)),
                                     CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR);
        r != CUDA_SUCCESS) {
      return DriverStatus(r, "cuMemImportFromShareableHandle of a VMM fd");
    }
    a->vmm_handle_ = h;
    CUmemAllocationProp prop{};
    if (CUresult r = d.properties(&prop, h); r != CUDA_SUCCESS) {
      d.release(h);
      a->vmm_handle_ = 0;
      return DriverStatus(r, "cuMemGetAllocationPropertiesFromHandle");
    }
    if (prop.location.type != CU_MEM_LOCATION_TYPE_DEVICE) {
      d.release(h);
      a->vmm_handle_ = 0;
      return absl::InvalidArgumentError("the VMM allocation is not device memory");
    }
    CUdeviceptr p = 0;
    if (CUresult r = d.address_reserve(&p, bytes, 0, 0, 0); r != CUDA_SUCCESS) {
      d.release(h);
      a->vmm_handle_ = 0;
      return DriverStatus(r, absl::StrCat("cuMemAddressReserve(", bytes, ")"));
    }
    // cuMemMap refuses a size beyond the allocation: the declared allocation_bytes is checked
    // by the driver itself.
    if (CUresult r = d.map(p, bytes, 0, h, 0); r != CUDA_SUCCESS) {
      d.address_free(p, bytes);
      d.release(h);
      a->vmm_handle_ = 0;
      return DriverStatus(
          r, absl::StrCat("cuMemMap of ", bytes, " bytes (larger than the exported allocation?)"));
    }
    a->base_ = reinterpret_cast<std::byte*>(p);
    a->bytes_ = bytes;
    CUmemAccessDesc access{};
    access.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    access.location.id = device;
    access.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
    if (CUresult r = d.set_access(p, bytes, &access, 1); r != CUDA_SUCCESS) {
      return DriverStatus(r, "cuMemSetAccess on kvtierd's GPU");
    }
    return a;
  }

  std::byte* base() const { return base_; }
  size_t bytes() const { return bytes_; }

 private:
  int device_ = 0;
  std::byte* base_ = nullptr;
  size_t bytes_ = 0;
  CUmemGenericAllocationHandle vmm_handle_ = 0;
};

class CudaWorkerBuffers final : public GpuWorkerBuffers {
 public:
  ~CudaWorkerBuffers() override {
    cudaSetDevice(device_);
    {
      absl::MutexLock lock(&mu_);
      for (auto& [handle, ev] : wait_events_) cudaEventDestroy(ev);
    }
    if (event_ != nullptr) cudaEventDestroy(event_);
    allocations_.clear();  // closes the IPC mappings and VMM imports
  }
  size_t count() const override { return bases_.size(); }
  std::byte* base(size_t i) const override { return bases_[i]; }
  size_t size(size_t i) const override { return sizes_[i]; }
  int device() const override { return device_; }
  const std::string& event_handle() const override { return event_handle_; }
  cudaEvent_t event() const { return event_; }
  // The worker's interprocess event named by `handle`, opened once per session.
  absl::StatusOr<cudaEvent_t> WaitEvent(absl::string_view handle) const {
    if (handle.size() != kCudaIpcHandleBytes) {
      return absl::InvalidArgumentError(absl::StrCat("wait_event_handle of ", handle.size(),
                                                     " bytes; must be ", kCudaIpcHandleBytes));
    }
    absl::MutexLock lock(&mu_);
    if (auto it = wait_events_.find(handle); it != wait_events_.end()) return it->second;
    if (wait_events_.size() >= kMaxWaitEvents) {
      return absl::ResourceExhaustedError(
          absl::StrCat("more than ", kMaxWaitEvents, " distinct wait events in one session"));
    }
    cudaIpcEventHandle_t h;
    std::memcpy(&h, handle.data(), sizeof(h));
    cudaEvent_t ev = nullptr;
    if (cudaError_t e = cudaIpcOpenEventHandle(&ev, h); e != cudaSuccess) {
      cudaGetLastError();
      return absl::InvalidArgumentError(
          absl::StrCat("cudaIpcOpenEventHandle: ", cudaGetErrorString(e)));
    }
    wait_events_.emplace(std::string(handle), ev);
    return ev;
  }

  int device_ = 0;
  std::vector<std::unique_ptr<OpenedAllocation>> allocations_;
  std::vector<std::byte*> bases_;
  std::vector<size_t> sizes_;
  cudaEvent_t event_ = nullptr;
  std::string event_handle_;

 private:
  static constexpr size_t kMaxWaitEvents = 64;
  mutable absl::Mutex mu_;
  mutable absl::flat_hash_map<std::string, cudaEvent_t> wait_events_ ABSL_GUARDED_BY(mu_);
};

// A fixed set of threads that run one index range at a time (the NVMe reads of a chunk).
class ReaderPool {
 public:
  explicit ReaderPool(int threads) {
    for (int i = 0; i < threads; ++i) threads_.emplace_back([this] { Loop(); });
  }
  ~ReaderPool() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (std::thread& t : threads_) t.join();
  }
  // Runs fn(0..n-1) on the pool and returns when all are done. One caller at a time.
  void Run(size_t n, const std::function<void(size_t)>& fn) {
    std::lock_guard<std::mutex> one_caller(run_mu_);
    std::unique_lock<std::mutex> lock(mu_);
    fn_ = &fn;
    next_ = 0;
    n_ = n;
    pending_ = n;
    cv_.notify_all();
    done_cv_.wait(lock, [&] { return pending_ == 0; });
    fn_ = nullptr;
  }

 private:
  void Loop() {
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      cv_.wait(lock, [&] { return stop_ || (fn_ != nullptr && next_ < n_); });
      if (stop_) return;
      const size_t i = next_++;
      const std::function<void(size_t)>* fn = fn_;
      lock.unlock();
      (*fn)(i);
      lock.lock();
      if (--pending_ == 0) done_cv_.notify_all();
    }
  }
  std::mutex run_mu_;
  std::mutex mu_;
  std::condition_variable cv_, done_cv_;
  const std::function<void(size_t)>* fn_ = nullptr;
  size_t next_ = 0, n_ = 0, pending_ = 0;
  bool stop_ = false;
  std::vector<std::thread> threads_;
};

// Pages of pinned staging per GPU, in two halves (one fills from NVMe while the other drains).
constexpr uint32_t kStagingPages = 64;
// Memory-tier loads go in chunks that start small, so that the kernel starts after a few pages'
// planning, and double up to kMaxChunkPages, so that later launches are few.
constexpr size_t kFirstChunkPages = 128;
constexpr size_t kMaxChunkPages = 1024;

// Descriptor-staging units (24 bytes each) that `launches` paged launches moving `pages` pages in
// all need: a piece table a launch, 16 bytes a page, each launch rounded up to a whole unit.
size_t PagedTableUnits(size_t pages, size_t launches, size_t pieces_per_page) {
  return (pages * sizeof(kernels::PagedPage) +
          launches * pieces_per_page * sizeof(kernels::PagedPiece)) /
             sizeof(kernels::CopyDescriptor) +
         launches + 1;
}
// Threads reading NVMe pages into staging: enough requests in flight to keep an NVMe busy.
constexpr int kReaderThreads = 16;

void DestroyEvent(cudaEvent_t e) {
  if (e != nullptr) cudaEventDestroy(e);
}

}  // namespace

// Everything one GPU needs to serve its workers. Guarded by `mu`: one batch at a time per GPU.
struct GpuDevice {
  int device = 0;
  absl::Mutex mu;
  cudaStream_t stream ABSL_GUARDED_BY(mu) = nullptr;
  // Descriptors: pinned host staging -> device, grown on demand.
  kernels::CopyDescriptor* host_descs ABSL_GUARDED_BY(mu) = nullptr;
  kernels::DeviceBuffer device_descs ABSL_GUARDED_BY(mu);
  size_t desc_capacity ABSL_GUARDED_BY(mu) = 0;
  size_t descs_used ABSL_GUARDED_BY(mu) = 0;  // in this batch, until the stream is synchronized
  std::byte* staging ABSL_GUARDED_BY(mu) = nullptr;  // kStagingPages pages, pinned
  cudaEvent_t half_done[2] ABSL_GUARDED_BY(mu) = {nullptr, nullptr};
  // KVTIER_GPU_TRACE only: one timing event a launch point of a load, made on first use.
  std::vector<cudaEvent_t> trace_events ABSL_GUARDED_BY(mu);
  // The GPUs whose HBM pools this one's kernels reach: itself, and each pool's GPU that allows
  // peer access. A page in a pool on any other GPU is staged through pinned DRAM.
  std::vector<int> reachable_pool_devices;
  bool ReachesPoolOn(int pool_device) const {
    return std::find(reachable_pool_devices.begin(), reachable_pool_devices.end(), pool_device) !=
           reachable_pool_devices.end();
  }

  ~GpuDevice() {
    cudaSetDevice(device);
    absl::MutexLock lock(&mu);
    if (stream != nullptr) cudaStreamSynchronize(stream);
    DestroyEvent(half_done[0]);
    DestroyEvent(half_done[1]);
    for (cudaEvent_t e : trace_events) DestroyEvent(e);
    if (stream != nullptr) cudaStreamDestroy(stream);
    if (host_descs != nullptr) cudaFreeHost(host_descs);
    if (staging != nullptr) cudaFreeHost(staging);
  }
};

struct GpuWorkers::Impl {
  Impl(const GpuConfig& c, TieredStore& s) : config(c), store(s) {}
  const GpuConfig config;
  TieredStore& store;
  absl::Mutex mu;
  bool probed ABSL_GUARDED_BY(mu) = false;
  absl::Status usable ABSL_GUARDED_BY(mu);
  std::vector<std::string> uuids ABSL_GUARDED_BY(mu);  // by ordinal
  absl::flat_hash_map<int, std::unique_ptr<GpuDevice>> devices ABSL_GUARDED_BY(mu);
  std::unique_ptr<ReaderPool> readers;  // made with the first device, then read-only
  const bool trace = std::getenv("KVTIER_GPU_TRACE") != nullptr;

  absl::Status Probe() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);
  absl::StatusOr<GpuDevice*> Device(int ordinal);
  // Makes room for `count` more descriptors of this batch in dev's staging.
  absl::Status ReserveDescriptors(GpuDevice& dev, size_t count)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(dev.mu);
  // Writes the piece table (bound by BindWorkerPieces) and one {slot, block} a page into the
  // pinned descriptor staging, checks every block id, uploads them in one copy and launches the
  // paged kernel on dev's stream.
  absl::Status LaunchPages(GpuDevice& dev, absl::Span<const kernels::PagedPiece> pieces,
                           uint32_t num_blocks, absl::Span<const PageTransfer> pages,
                           PageCopyDirection dir, int sm_budget)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(dev.mu);
  int D2dBudget() const {
    return config.device_to_device_sm_budget > 0 ? config.device_to_device_sm_budget
                                                 : config.sm_budget;
  }
};

absl::Status GpuWorkers::Impl::Probe() {
  if (probed) return usable;
  probed = true;
  int count = 0;
  if (cudaError_t e = cudaGetDeviceCount(&count); e != cudaSuccess || count == 0) {
    cudaGetLastError();
    usable = absl::FailedPreconditionError(absl::StrCat(
        "GPU buffers cannot be registered: kvtierd sees no CUDA device (cudaGetDeviceCount: ",
        e == cudaSuccess ? "0 devices" : cudaGetErrorString(e), "); register memfd buffers"));
    return usable;
  }
  if (!GetDriver().ok) {
    usable = absl::FailedPreconditionError(
        "GPU buffers cannot be registered: the CUDA driver lacks the VMM/address-range entry "
        "points kvtierd needs (driver older than CUDA 12?)");
    return usable;
  }
  if (store.has_tier(Tier::kHbm) && store.hbm_backend() != "cuda") {
    usable = absl::FailedPreconditionError(absl::StrCat(
        "GPU buffers cannot be registered: this kvtierd's HBM pool is '", store.hbm_backend(),
        "', not on a GPU (set store.hbm_backend: cuda, or hbm_pages: 0)"));
    return usable;
  }
  for (int i = 0; i < count; ++i) {
    cudaDeviceProp prop{};
    if (cudaGetDeviceProperties(&prop, i) != cudaSuccess) {
      cudaGetLastError();
      uuids.emplace_back();
      continue;
    }
    uuids.emplace_back(reinterpret_cast<const char*>(&prop.uuid), kGpuUuidBytes);
  }
  return usable;
}

absl::StatusOr<GpuDevice*> GpuWorkers::Impl::Device(int ordinal) {
  absl::MutexLock lock(&mu);
  if (auto it = devices.find(ordinal); it != devices.end()) return it->second.get();
  auto dev = std::make_unique<GpuDevice>();
  dev->device = ordinal;
  if (cudaError_t e = cudaSetDevice(ordinal); e != cudaSuccess)
    return CudaStatus(e, "cudaSetDevice");
  {
    absl::MutexLock dl(&dev->mu);
    if (cudaError_t e = cudaStreamCreateWithFlags(&dev->stream, cudaStreamNonBlocking);
        e != cudaSuccess) {
      return CudaStatus(e, "cudaStreamCreate");
    }
    for (cudaEvent_t& ev : dev->half_done) {
      if (cudaError_t e = cudaEventCreateWithFlags(&ev, cudaEventDisableTiming); e != cudaSuccess) {
        return CudaStatus(e, "cudaEventCreate");
      }
    }
    void* staging = nullptr;
    // Portable: the store's engine of another GPU's HBM pool reads and writes it too (a page
    // staged from, or stored into, a pool this GPU does not own).
    if (cudaError_t e = cudaHostAlloc(&staging, size_t{kStagingPages} * store.page_bytes(),
                                      cudaHostAllocMapped | cudaHostAllocPortable);
        e != cudaSuccess) {
      return CudaStatus(e, "cudaHostAlloc(staging)");
    }
    dev->staging = static_cast<std::byte*>(staging);
  }
  dev->reachable_pool_devices.push_back(ordinal);
  for (const TierPool& pool : store.hbm_pools()) {
    if (dev->ReachesPoolOn(pool.device)) continue;
    int can = 0;
    bool peer = false;
    if (cudaDeviceCanAccessPeer(&can, ordinal, pool.device) == cudaSuccess && can != 0) {
      cudaError_t e = cudaDeviceEnablePeerAccess(pool.device, 0);
      peer = e == cudaSuccess || e == cudaErrorPeerAccessAlreadyEnabled;
    }
    cudaGetLastError();
    if (peer) dev->reachable_pool_devices.push_back(pool.device);
    LOG(INFO) << "event=gpu_worker_device device=" << ordinal << " hbm_pool_device=" << pool.device
              << " path=" << (peer ? "peer" : "staged_through_dram");
  }
  if (readers == nullptr) readers = std::make_unique<ReaderPool>(kReaderThreads);
  GpuDevice* raw = dev.get();
  devices.emplace(ordinal, std::move(dev));
  return raw;
}

absl::Status GpuWorkers::Impl::ReserveDescriptors(GpuDevice& dev, size_t count) {
  // Descriptors of one batch accumulate until the stream is synchronized (earlier launches may
  // still read theirs), so capacity grows only with the stream idle.
  const size_t need = dev.descs_used + count;
  if (need <= dev.desc_capacity) return absl::OkStatus();
  if (dev.descs_used != 0) {
    if (cudaError_t e = cudaStreamSynchronize(dev.stream); e != cudaSuccess) {
      return CudaStatus(e, "cudaStreamSynchronize");
    }
    dev.descs_used = 0;
  }
  const size_t cap = std::max<size_t>(count, 4096) * 2;
  if (dev.host_descs != nullptr) cudaFreeHost(dev.host_descs);
  dev.host_descs = nullptr;
  dev.desc_capacity = 0;
  void* h = nullptr;
  if (cudaError_t e = cudaHostAlloc(&h, cap * sizeof(kernels::CopyDescriptor), 0);
      e != cudaSuccess) {
    return CudaStatus(e, "cudaHostAlloc(descriptors)");
  }
  dev.host_descs = static_cast<kernels::CopyDescriptor*>(h);
  absl::StatusOr<kernels::DeviceBuffer> d =
      kernels::DeviceBuffer::Allocate(cap * sizeof(kernels::CopyDescriptor));
  if (!d.ok()) return d.status();
  dev.device_descs = *std::move(d);
  dev.desc_capacity = cap;
  return absl::OkStatus();
}

absl::Status GpuWorkers::Impl::LaunchPages(GpuDevice& dev,
                                           absl::Span<const kernels::PagedPiece> pieces,
                                           uint32_t num_blocks,
                                           absl::Span<const PageTransfer> pages,
                                           PageCopyDirection dir, int sm_budget) {
  if (pages.empty()) return absl::OkStatus();
  // One upload: the piece table, then one {slot, block} a page, in the descriptor staging
  // (counted in its 24-byte units; both records need only 8-byte alignment).
  const size_t table_bytes =
      pieces.size() * sizeof(kernels::PagedPiece) + pages.size() * sizeof(kernels::PagedPage);
  const size_t units = PagedTableUnits(pages.size(), 1, pieces.size());
  RETURN_IF_ERROR(ReserveDescriptors(dev, units));
  auto* host_pieces = reinterpret_cast<kernels::PagedPiece*>(dev.host_descs + dev.descs_used);
  std::copy(pieces.begin(), pieces.end(), host_pieces);
  auto* host_pages = reinterpret_cast<kernels::PagedPage*>(host_pieces + pieces.size());
  for (size_t k = 0; k < pages.size(); ++k) {
    if (pages[k].block_id >= num_blocks) {  // callers check too; a bad id must never launch
      return absl::OutOfRangeError(
          absl::StrCat("block id ", pages[k].block_id, " out of range [0, ", num_blocks, ")"));
    }
    host_pages[k] = kernels::PagedPage{pages[k].slot, pages[k].block_id};
  }
  if (absl::Status s =
          kernels::ValidatePagedCopy(pieces, absl::MakeConstSpan(host_pages, pages.size()));
      !s.ok()) {
    return s;
  }
  auto* device_pieces = reinterpret_cast<kernels::PagedPiece*>(
      static_cast<kernels::CopyDescriptor*>(dev.device_descs.get()) + dev.descs_used);
  if (cudaError_t e = cudaMemcpyAsync(device_pieces, host_pieces, table_bytes,
                                      cudaMemcpyHostToDevice, dev.stream);
      e != cudaSuccess) {
    return CudaStatus(e, "cudaMemcpyAsync(page table)");
  }
  dev.descs_used += units;
  kernels::GpuCopyOptions options;
  options.sm_budget = sm_budget;
  return kernels::LaunchPagedCopy(
      device_pieces, static_cast<uint32_t>(pieces.size()),
      reinterpret_cast<const kernels::PagedPage*>(device_pieces + pieces.size()),
      static_cast<uint32_t>(pages.size()),
      dir == PageCopyDirection::kScatter ? kernels::PagedDirection::kSlotToWorker
                                         : kernels::PagedDirection::kWorkerToSlot,
      kernels::MaxPagedPieceBytes(pieces), options, dev.stream);
}

GpuWorkers::GpuWorkers(const GpuConfig& config, TieredStore& store)
    : impl_(std::make_unique<Impl>(config, store)) {}

GpuWorkers::~GpuWorkers() = default;

absl::StatusOr<std::shared_ptr<const GpuWorkerBuffers>> GpuWorkers::Open(const Layout& layout,
                                                                         GpuBufferRequest r) {
  int ordinal = -1;
  {
    absl::MutexLock lock(&impl_->mu);
    // The request's own mistakes first, so that a daemon without a GPU reports them too.
    RETURN_IF_ERROR(CheckGpuBufferRequest(layout, r));
    RETURN_IF_ERROR(impl_->Probe());
    for (size_t i = 0; i < impl_->uuids.size(); ++i) {
      if (impl_->uuids[i] == r.device_uuid) ordinal = static_cast<int>(i);
    }
    if (ordinal < 0) {
      std::string seen;
      for (const std::string& u : impl_->uuids)
        absl::StrAppend(&seen, seen.empty() ? "" : ", ", UuidHex(u));
      return absl::InvalidArgumentError(absl::StrCat("no GPU with UUID ", UuidHex(r.device_uuid),
                                                     " is visible to kvtierd (it sees ", seen,
                                                     ")"));
    }
  }
  absl::StatusOr<GpuDevice*> dev = impl_->Device(ordinal);
  if (!dev.ok()) return dev.status();
  cudaSetDevice(ordinal);
  auto out = std::make_shared<CudaWorkerBuffers>();
  out->device_ = ordinal;
  const size_t n = layout.buffer_count();
  // Layer tensors cut from one caching-allocator block share its handle: open it once.
  absl::flat_hash_map<std::string, OpenedAllocation*> by_handle;
  for (size_t i = 0; i < n; ++i) {
    OpenedAllocation* a = nullptr;
    // The same VMM allocation comes as one fd per buffer: its inode names it.
    struct stat st {};
    const std::string vmm_key =
        !r.vmm_fds.empty() && ::fstat(r.vmm_fds[i].get(), &st) == 0
            ? absl::StrCat("vmm:", st.st_dev, ":", st.st_ino, ":", r.allocation_bytes[i])
            : std::string();
    if (auto same = by_handle.find(vmm_key); !vmm_key.empty() && same != by_handle.end()) {
      a = same->second;
    } else if (!r.vmm_fds.empty()) {
      absl::StatusOr<std::unique_ptr<OpenedAllocation>> opened =
          OpenedAllocation::ImportVmm(ordinal, r.vmm_fds[i].get(), r.allocation_bytes[i]);
      if (!opened.ok()) {
        return absl::Status(opened.status().code(),
                            absl::StrCat("buffer ", i, ": ", opened.status().message()));
      }
      a = opened->get();
      if (!vmm_key.empty()) by_handle.emplace(vmm_key, a);
      out->allocations_.push_back(*std::move(opened));
    } else if (auto it = by_handle.find(r.ipc_handles[i]); it != by_handle.end()) {
      a = it->second;
    } else {
      absl::StatusOr<std::unique_ptr<OpenedAllocation>> opened =
          OpenedAllocation::OpenIpc(ordinal, r.ipc_handles[i]);
      if (!opened.ok()) {
        return absl::Status(opened.status().code(),
                            absl::StrCat("buffer ", i, ": ", opened.status().message()));
      }
      a = opened->get();
      by_handle.emplace(r.ipc_handles[i], a);
      out->allocations_.push_back(*std::move(opened));
    }
    if (r.offsets[i] + r.sizes[i] > a->bytes()) {
      return absl::InvalidArgumentError(
          absl::StrCat("buffer ", i, ": bytes [", r.offsets[i], ", ", r.offsets[i] + r.sizes[i],
                       ") lie outside its allocation of ", a->bytes(), " bytes"));
    }
    out->bases_.push_back(a->base() + r.offsets[i]);
    out->sizes_.push_back(r.sizes[i]);
  }
  if (cudaError_t e =
          cudaEventCreateWithFlags(&out->event_, cudaEventDisableTiming | cudaEventInterprocess);
      e != cudaSuccess) {
    return CudaStatus(e, "cudaEventCreate(interprocess)");
  }
  cudaIpcEventHandle_t eh;
  if (cudaError_t e = cudaIpcGetEventHandle(&eh, out->event_); e != cudaSuccess) {
    return CudaStatus(e, "cudaIpcGetEventHandle");
  }
  out->event_handle_.assign(reinterpret_cast<const char*>(&eh), sizeof(eh));
  LOG(INFO) << "event=gpu_buffers_opened device=" << ordinal << " buffers=" << n
            << " allocations=" << out->allocations_.size()
            << " kind=" << (r.vmm_fds.empty() ? "cuda_ipc" : "vmm_fd");
  return std::shared_ptr<const GpuWorkerBuffers>(std::move(out));
}

void GpuWorkers::Load(const GpuWorkerBuffers& buffers, const GpuPageBatch& batch,
                      bool reply_when_enqueued, const GpuPageResultFn& result,
                      const std::function<void()>& enqueued) {
  const auto& b = static_cast<const CudaWorkerBuffers&>(buffers);
  const size_t n = batch.keys.size();
  TieredStore& store = impl_->store;
  const uint64_t t_start = SteadyClock::Get()->NowNs();
  uint64_t t_locked = 0, t_enqueued = 0, t_landed = 0, host_ns = 0;
  std::string trace_points;
  const uint64_t page_bytes = store.page_bytes();
  std::vector<absl::StatusOr<Tier>> outcome(n, absl::InternalError("not copied"));
  absl::StatusOr<GpuDevice*> found = impl_->Device(b.device());
  if (!found.ok()) {
    for (size_t i = 0; i < n; ++i) result(i, found.status());
    enqueued();
    return;
  }
  GpuDevice& dev = **found;
  const uint32_t num_blocks = batch.layout->spec().num_blocks;
  absl::StatusOr<std::vector<kernels::PagedPiece>> pieces = BindWorkerPieces(*batch.layout, b);
  std::vector<PageKey> pinned;
  pinned.reserve(n);
  std::vector<size_t> staged_idx;
  size_t hbm_pages = 0, dram_pages = 0;
  absl::Status gpu_error;
  {
    absl::MutexLock lock(&dev.mu);
    t_locked = SteadyClock::Get()->NowNs();
    cudaSetDevice(dev.device);
    dev.descs_used = 0;
    if (!pieces.ok()) gpu_error = pieces.status();
    // Room for the whole batch up front (a piece table a launch, 16 bytes a page): growing later
    // would wait for the launches in flight. Launches: two a memory-tier chunk (HBM, DRAM), one a
    // staged half.
    const size_t launches =
        2 * ((n + kFirstChunkPages - 1) / kFirstChunkPages) + n / (kStagingPages / 2) + 2;
    if (absl::Status s = impl_->ReserveDescriptors(
            dev, PagedTableUnits(n, launches, batch.layout->pieces_per_page()));
        gpu_error.ok() && !s.ok()) {
      gpu_error = s;
    }
    // Trace: a timing event at the start (the stream is idle, so it completes at once) and after
    // each chunk's launches, with the host time of each, to see whether the GPU kept up.
    std::vector<uint64_t> trace_host_ns;
    auto trace_point = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(dev.mu) {
      if (!impl_->trace) return;
      const size_t k = trace_host_ns.size();
      if (k == dev.trace_events.size()) {
        cudaEvent_t e = nullptr;
        if (cudaEventCreate(&e) != cudaSuccess) return;
        dev.trace_events.push_back(e);
      }
      cudaEventRecord(dev.trace_events[k], dev.stream);
      trace_host_ns.push_back(SteadyClock::Get()->NowNs());
    };
    trace_point();
    auto launch = [&](absl::Span<const PageTransfer> pages, absl::Span<const size_t> idx, Tier t,
                      int budget) ABSL_EXCLUSIVE_LOCKS_REQUIRED(dev.mu) {
      const absl::Status s = gpu_error.ok()
                                 ? impl_->LaunchPages(dev, *pieces, num_blocks, pages,
                                                      PageCopyDirection::kScatter, budget)
                                 : gpu_error;
      for (size_t i : idx) outcome[i] = s.ok() ? absl::StatusOr<Tier>(t) : s;
      if (!s.ok() && gpu_error.ok()) gpu_error = s;
    };
    // Pages in memory tiers go in chunks: the kernel copies one chunk while this thread pins,
    // locates and plans the next. A pinned page keeps its tier and slot while its bytes are read.
    size_t chunk_pages = kFirstChunkPages;
    size_t prefix_end = n;  // prefix_only: the first page not loaded
    std::vector<PageKey> keys;
    std::vector<PageEntry> located;
    std::vector<size_t> idx, hbm_idx, dram_idx;
    std::vector<PageTransfer> hbm, dram;
    for (size_t lo = 0; lo < n && prefix_end == n;
         lo += chunk_pages, chunk_pages = std::min(2 * chunk_pages, kMaxChunkPages)) {
      const uint64_t h0 = SteadyClock::Get()->NowNs();
      const size_t hi = std::min(n, lo + chunk_pages);
      keys.clear();
      idx.clear();
      for (size_t i = lo; i < hi && prefix_end == n; ++i) {
        // Block ids are checked here, so no bad one reaches a copy plan.
        if (batch.blocks[i] >= batch.layout->spec().num_blocks) {
          outcome[i] =
              absl::OutOfRangeError(absl::StrCat("block id ", batch.blocks[i], " out of range [0, ",
                                                 batch.layout->spec().num_blocks, ")"));
          if (batch.prefix_only) prefix_end = i;
          continue;
        }
        keys.push_back(batch.keys[i]);
        idx.push_back(i);
      }
      // One lock and one index probe a page when all are cached; else one by one, so that the
      // missing ones fail alone.
      located.clear();
      if (store.PinAndLocate(batch.ns, keys, located).ok()) {
        pinned.insert(pinned.end(), keys.begin(), keys.end());
      } else {
        std::vector<size_t> kept;
        std::vector<PageEntry> one;
        for (size_t i : idx) {
          if (i > prefix_end) break;  // prefix_only: ended at an earlier page
          if (absl::Status st =
                  store.PinAndLocate(batch.ns, absl::MakeConstSpan(&batch.keys[i], 1), one);
              !st.ok()) {
            outcome[i] = st;
            if (batch.prefix_only) prefix_end = i;
            continue;
          }
          pinned.push_back(batch.keys[i]);
          kept.push_back(i);
          located.push_back(one[0]);
        }
        idx.swap(kept);
      }
      hbm.clear();
      dram.clear();
      hbm_idx.clear();
      dram_idx.clear();
      for (size_t k = 0; k < idx.size(); ++k) {
        const size_t i = idx[k];
        const PageEntry& e = located[k];
        std::byte* slot = e.tier == Tier::kNvme ? nullptr : store.SlotAddress(e.tier, e.slot);
        if (e.tier == Tier::kDram && slot != nullptr) {
          dram.push_back({batch.blocks[i], slot});
          dram_idx.push_back(i);
        } else if (e.tier == Tier::kHbm && slot != nullptr &&
                   dev.ReachesPoolOn(store.HbmDeviceOfSlot(e.slot))) {
          hbm.push_back({batch.blocks[i], slot});
          hbm_idx.push_back(i);
        } else {
          staged_idx.push_back(i);  // NVMe, or an HBM pool this GPU cannot reach
        }
      }
      hbm_pages += hbm.size();
      dram_pages += dram.size();
      launch(hbm, hbm_idx, Tier::kHbm, impl_->D2dBudget());
      launch(dram, dram_idx, Tier::kDram, impl_->config.sm_budget);
      host_ns += SteadyClock::Get()->NowNs() - h0;
      trace_point();
    }
    for (size_t i = prefix_end + 1; i < n; ++i) {
      outcome[i] = absl::NotFoundError(
          absl::StrCat("not loaded: page ", prefix_end, " ends the cached prefix"));
    }
    // Staged pages: the store reads each (verified) into one half of the staging while the
    // kernel drains the other half into the worker's blocks.
    const size_t half = kStagingPages / 2;
    for (size_t chunk = 0, c = 0; chunk < staged_idx.size(); chunk += half, ++c) {
      const size_t count = std::min(half, staged_idx.size() - chunk);
      std::byte* area = dev.staging + (c % 2) * half * page_bytes;
      cudaEventSynchronize(dev.half_done[c % 2]);  // the kernel that last read this half is done
      impl_->readers->Run(count, [&](size_t j) {
        const size_t i = staged_idx[chunk + j];
        const MutableBuffer dst{area + j * page_bytes, page_bytes};
        outcome[i] = store.Get(batch.ns, batch.keys[i], absl::MakeConstSpan(&dst, 1));
      });
      std::vector<PageTransfer> pages;
      std::vector<size_t> staged;
      std::vector<Tier> tiers;
      for (size_t j = 0; j < count; ++j) {
        const size_t i = staged_idx[chunk + j];
        if (!outcome[i].ok()) continue;
        pages.push_back({batch.blocks[i], area + j * page_bytes});
        staged.push_back(i);
        tiers.push_back(*outcome[i]);
      }
      launch(pages, staged, Tier::kNvme, impl_->config.sm_budget);
      for (size_t k = 0; k < staged.size(); ++k) {
        if (outcome[staged[k]].ok()) outcome[staged[k]] = tiers[k];
      }
      cudaEventRecord(dev.half_done[c % 2], dev.stream);
    }
    if (cudaError_t e = cudaEventRecord(b.event(), dev.stream);
        e != cudaSuccess && gpu_error.ok()) {
      gpu_error = CudaStatus(e, "cudaEventRecord(session event)");
    }
    t_enqueued = SteadyClock::Get()->NowNs();
    if (reply_when_enqueued) {
      for (size_t i = 0; i < n; ++i) result(i, outcome[i]);
      enqueued();
    }
    const cudaError_t landed = cudaStreamSynchronize(dev.stream);
    t_landed = SteadyClock::Get()->NowNs();
    // "gpu_ms/host_ms" of each trace point after the first: when the GPU passed it against when
    // the host enqueued it, both from the first point.
    for (size_t k = 1; k < trace_host_ns.size(); ++k) {
      float gpu_ms = 0;
      cudaEventElapsedTime(&gpu_ms, dev.trace_events[0], dev.trace_events[k]);
      absl::StrAppend(&trace_points, k == 1 ? "" : ",", absl::SixDigits(gpu_ms), "/",
                      absl::SixDigits((trace_host_ns[k] - trace_host_ns[0]) * 1e-6));
    }
    if (cudaError_t e = landed; e != cudaSuccess) {
      // Sticky errors mean the context is gone; every later batch will say so too.
      LOG(ERROR) << "event=gpu_copy_failed device=" << dev.device << " error=\""
                 << cudaGetErrorString(e) << "\"";
      if (gpu_error.ok()) gpu_error = CudaStatus(e, "copy into worker blocks");
    }
    dev.descs_used = 0;
  }
  store.UnpinAfterRead(batch.ns, pinned).IgnoreError();  // our own pins: cannot fail
  if (impl_->trace) {
    // One line per batch, only when KVTIER_GPU_TRACE is set (benchmarks): where a load's time goes.
    const uint64_t t_end = SteadyClock::Get()->NowNs();
    auto ms = [](uint64_t a, uint64_t z) { return static_cast<double>(z - a) * 1e-6; };
    LOG(INFO) << "event=gpu_load_trace pages=" << n
              << " queued_ms=" << (batch.submitted_ns != 0 ? ms(batch.submitted_ns, t_start) : 0.0)
              << " hbm=" << hbm_pages << " dram=" << dram_pages << " staged=" << staged_idx.size()
              << " lock_ms=" << ms(t_start, t_locked) << " host_ms=" << host_ns * 1e-6
              << " enqueue_ms=" << ms(t_locked, t_enqueued)
              << " land_ms=" << ms(t_enqueued, t_landed) << " unpin_ms=" << ms(t_landed, t_end)
              << " gpu_vs_host_ms=" << trace_points;
  }
  if (!reply_when_enqueued) {
    for (size_t i = 0; i < n; ++i) {
      result(i, gpu_error.ok() || !outcome[i].ok() ? outcome[i] : absl::StatusOr<Tier>(gpu_error));
    }
    enqueued();
  }
}

void GpuWorkers::Store(const GpuWorkerBuffers& buffers, const GpuPageBatch& batch,
                       absl::string_view wait_event_handle, const GpuStoreHooks& hooks,
                       const GpuPageResultFn& result) {
  const auto& b = static_cast<const CudaWorkerBuffers&>(buffers);
  const size_t n = batch.keys.size();
  const uint64_t page_bytes = impl_->store.page_bytes();
  absl::StatusOr<GpuDevice*> found = impl_->Device(b.device());
  absl::StatusOr<cudaEvent_t> wait = nullptr;
  if (found.ok() && !wait_event_handle.empty()) {
    cudaSetDevice(b.device());
    wait = b.WaitEvent(wait_event_handle);
  }
  if (!found.ok() || !wait.ok()) {
    for (size_t i = 0; i < n; ++i) result(i, found.ok() ? wait.status() : found.status());
    return;
  }
  GpuDevice& dev = **found;
  const uint32_t num_blocks = batch.layout->spec().num_blocks;
  absl::StatusOr<std::vector<kernels::PagedPiece>> pieces = BindWorkerPieces(*batch.layout, b);
  if (!pieces.ok()) {
    for (size_t i = 0; i < n; ++i) result(i, pieces.status());
    return;
  }
  TieredStore& store = impl_->store;
  absl::MutexLock lock(&dev.mu);
  cudaSetDevice(dev.device);
  if (*wait != nullptr) cudaStreamWaitEvent(dev.stream, *wait, 0);
  std::vector<PutRequest> requests;
  std::vector<size_t> idx;
  std::vector<PageTransfer> to_hbm, to_dram, staged;
  std::vector<size_t> staged_k;  // which page of the chunk each staged transfer is
  std::vector<absl::Status> written;
  std::vector<absl::Span<const ConstBuffer>> src;
  std::vector<ConstBuffer> images;
  std::vector<absl::StatusOr<Tier>> stored;
  TieredStore::DirectPutBatch direct;
  for (size_t chunk = 0; chunk < n; chunk += kStagingPages) {
    const size_t count = std::min<size_t>(kStagingPages, n - chunk);
    requests.clear();
    idx.clear();
    for (size_t i = chunk; i < chunk + count; ++i) {
      if (batch.blocks[i] >= num_blocks) {
        result(i, absl::OutOfRangeError(absl::StrCat("block id ", batch.blocks[i],
                                                     " out of range [0, ", num_blocks, ")")));
        continue;
      }
      requests.push_back(PutRequest{batch.keys[i], {}, hooks.options(i)});
      idx.push_back(i);
    }
    // Every slot is reserved (in order, with Put's placement) before the kernel writes into it.
    store.BeginDirectPuts(batch.ns, requests, direct);
    to_hbm.clear();
    to_dram.clear();
    staged.clear();
    staged_k.clear();
    for (size_t k = 0; k < idx.size(); ++k) {
      const TieredStore::DirectPutBatch::Page& page = direct.pages[k];
      const uint32_t block = batch.blocks[idx[k]];
      if (page.done.has_value()) {
        // No room while this chunk's pages hold their slots: put it alone once they are landed.
        if (!page.done->ok() &&
            page.done->status().code() == absl::StatusCode::kResourceExhausted) {
          staged.push_back({block, dev.staging + staged.size() * page_bytes});
          staged_k.push_back(k);
        }
        continue;
      }
      if (page.address != nullptr && page.tier == Tier::kDram) {
        to_dram.push_back({block, page.address});
      } else if (page.address != nullptr && page.tier == Tier::kHbm &&
                 dev.ReachesPoolOn(store.HbmDeviceOfSlot(page.slot))) {
        to_hbm.push_back({block, page.address});
      } else {
        staged.push_back({block, dev.staging + staged.size() * page_bytes});
        staged_k.push_back(k);
      }
    }
    dev.descs_used = 0;
    absl::Status s = impl_->LaunchPages(dev, *pieces, num_blocks, to_hbm,
                                        PageCopyDirection::kGather, impl_->D2dBudget());
    if (s.ok()) {
      s = impl_->LaunchPages(dev, *pieces, num_blocks, to_dram, PageCopyDirection::kGather,
                             impl_->config.sm_budget);
    }
    if (s.ok()) {
      s = impl_->LaunchPages(dev, *pieces, num_blocks, staged, PageCopyDirection::kGather,
                             impl_->config.sm_budget);
    }
    // Synchronized even after a failed launch: an earlier one may still write into the slots.
    if (cudaError_t e = cudaStreamSynchronize(dev.stream); e != cudaSuccess && s.ok()) {
      s = CudaStatus(e, "copy out of worker blocks");
    }
    dev.descs_used = 0;
    written.assign(idx.size(), s);
    src.assign(idx.size(), {});
    images.assign(staged.size(), ConstBuffer{});
    for (size_t j = 0; j < staged.size(); ++j) {
      images[j] = ConstBuffer{staged[j].slot, page_bytes};
      if (!direct.pages[staged_k[j]].done.has_value()) src[staged_k[j]] = {&images[j], 1};
    }
    stored.assign(idx.size(), absl::InternalError("not stored"));
    store.EndDirectPuts(direct, written, src, absl::MakeSpan(stored));
    for (size_t j = 0; j < staged.size(); ++j) {
      const size_t k = staged_k[j];
      if (!stored[k].ok() && stored[k].status().code() == absl::StatusCode::kResourceExhausted) {
        stored[k] =
            s.ok() ? store.Put(batch.ns, batch.keys[idx[k]], {&images[j], 1}, requests[k].options)
                   : absl::StatusOr<Tier>(s);
      }
    }
    for (size_t k = 0; k < idx.size(); ++k) result(idx[k], hooks.after(idx[k], stored[k]));
  }
  cudaEventRecord(b.event(), dev.stream);
}

#endif  // KVTIER_HAVE_CUDA_KERNELS

}  // namespace kvtier
