// GPU workers: an inference worker's KV blocks in its own GPU memory, opened inside kvtierd, and
// the copies that move pages between those blocks and every tier.
//
// Registration opens each buffer once per session: a legacy CUDA IPC memory handle
// (cudaIpcGetMemHandle names a whole cudaMalloc allocation, so a tensor of PyTorch's caching
// allocator comes as the handle of its base block plus data_ptr - base, as PyTorch's own
// storage._share_cuda_ sends it), or a CUDA VMM allocation exported as a POSIX fd
// (cuMemExportToShareableHandle) and passed by SCM_RIGHTS. The worker's GPU is named by UUID
// (ordinals differ between processes under CUDA_VISIBLE_DEVICES); every buffer is checked against
// the layout and against the allocation the driver reports, and closed when the session lets go
// (GpuWorkerBuffers' destructor: clean close, kill -9, lease expiry alike).
//
// Copies (one batch per Load or Store, never a launch per page):
//   HBM pool -> blocks   the gather/scatter kernel, device to device,
//   gpu.device_to_device_sm_budget
//                        (one HBM pool per GPU: a page in another GPU's pool is read
//                        through peer access where the GPUs allow it, else staged as NVMe);
//   DRAM pool -> blocks  the same kernel reading pinned, mapped host memory over PCIe,
//                        gpu.sm_budget;
//   NVMe -> blocks       the store's reads (io_uring, verified) into pinned staging by a pool of
//                        reader threads, one half of the staging filling while the kernel empties
//                        the other; an HBM page in a pool this GPU cannot reach takes this path;
//   blocks -> any tier   the store reserves each page's slot (it decides the tier), and the
//                        gather kernel writes the blocks straight into DRAM or HBM slots; pages
//                        bound for NVMe or an unreachable pool go through pinned staging.
// Copies go to the kernel in the paged form (the layout's piece table plus one {slot, block} a
// page); every block id is checked against the layout and the piece table against the registered
// buffers before any launch: an illegal address would kill the daemon's CUDA context and every
// other worker's service.
//
// Ordering: each session has an interprocess event (cudaIpcGetEventHandle) recorded after every
// operation's copies; the worker's stream may wait on it (cudaStreamWaitEvent) instead of the CPU
// waiting for the reply. A Store reads the blocks when it runs: the worker either synchronized the
// kernels that wrote them before sending it, or hands an interprocess event the copy waits on.
//
// Without CUDA (a build without it, or no visible GPU) Open answers FailedPrecondition naming why.
// Thread model: Open from connection threads; Load and Store from the I/O pool, any number at
// once (each GPU's copies are serialized by that GPU's own lock).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "base/unique_fd.h"
#include "daemon/config.h"
#include "tiering/copy_plan.h"
#include "tiering/layout.h"
#include "tiering/page_key.h"
#include "tiering/tiered_store.h"
#include "tiering/types.h"

namespace kvtier {

// Bytes of a legacy CUDA IPC memory or event handle (cudaIpcMemHandle_t, cudaIpcEventHandle_t).
inline constexpr size_t kCudaIpcHandleBytes = 64;
// Bytes of a GPU UUID (cudaDeviceProp::uuid).
inline constexpr size_t kGpuUuidBytes = 16;

// What a RegisterBuffers request says about the worker's GPU buffers, in layout order.
struct GpuBufferRequest {
  std::vector<std::string> ipc_handles;    // one per buffer, or empty when vmm_fds are given
  std::vector<UniqueFd> vmm_fds;           // one per buffer (VMM POSIX fds), or empty
  std::vector<uint64_t> offsets;           // byte offset of each buffer inside its allocation
  std::vector<uint64_t> sizes;             // bytes of each buffer
  std::vector<uint64_t> allocation_bytes;  // VMM: bytes of each exported allocation
  std::string device_uuid;                 // kGpuUuidBytes
};

// A session's opened GPU buffers and its interprocess event; everything is closed in the
// destructor, which runs when the session and the last operation using them have let go.
class GpuWorkerBuffers {
 public:
  virtual ~GpuWorkerBuffers() = default;
  virtual size_t count() const = 0;
  // Device address of buffer i in this process, and its registered size.
  virtual std::byte* base(size_t i) const = 0;
  virtual size_t size(size_t i) const = 0;
  virtual int device() const = 0;
  // The session's interprocess event handle (kCudaIpcHandleBytes).
  virtual const std::string& event_handle() const = 0;
};

// One Load or Store batch of a session.
struct GpuPageBatch {
  NamespaceId ns = 0;
  const Layout* layout = nullptr;
  absl::Span<const PageKey> keys;
  absl::Span<const uint32_t> blocks;
  // Loads only: stop at the first page that is not cached (it and the rest: NotFound, unread).
  bool prefix_only = false;
  uint64_t submitted_ns = 0;  // when the request was parsed (SteadyClock), for the load trace
};

// Per-page outcome, called once for every page of a batch (from the calling thread).
using GpuPageResultFn = std::function<void(size_t page, const absl::StatusOr<Tier>& tier)>;
// Store: what each page is put with, and what follows once it is stored (the dispatcher's cluster
// announcement and attention statistics), returning the page's outcome.
struct GpuStoreHooks {
  std::function<PutOptions(size_t page)> options;
  std::function<absl::StatusOr<Tier>(size_t page, absl::StatusOr<Tier> stored)> after;
};

// Checks a request against the layout before anything is opened: counts, handle and UUID sizes,
// each buffer's size against the layout, 16-byte alignment, overflow, VMM ranges.
absl::Status CheckGpuBufferRequest(const Layout& layout, const GpuBufferRequest& request);
// The layout's pieces bound to the worker's registered buffers (tiering/copy_plan.h,
// BindPieceTemplates): refused when any piece of any block in [0, num_blocks) would fall outside
// its buffer. With every block id checked against the layout, this is the last check before a
// launch: no page of the batch can then reach outside the worker's registered memory.
absl::StatusOr<std::vector<kernels::PagedPiece>> BindWorkerPieces(const Layout& layout,
                                                                  const GpuWorkerBuffers& buffers);

class GpuWorkers {
 public:
  // `store` must outlive this. Nothing touches CUDA until the first Open.
  GpuWorkers(const GpuConfig& config, TieredStore& store);
  ~GpuWorkers();
  GpuWorkers(const GpuWorkers&) = delete;
  GpuWorkers& operator=(const GpuWorkers&) = delete;

  // Checks and opens a worker's buffers for `layout`. FailedPrecondition when this kvtierd cannot
  // serve GPU buffers (no CUDA in the build, no GPU, a host-emulated HBM pool); InvalidArgument
  // for a request that is wrong (counts, sizes, offsets, a handle the driver refuses, a GPU
  // whose UUID this daemon does not see, a buffer outside its allocation).
  absl::StatusOr<std::shared_ptr<const GpuWorkerBuffers>> Open(const Layout& layout,
                                                               GpuBufferRequest request);

  // Copies the batch's cached pages into the worker's blocks; result(i, ...) for every page.
  // With reply_when_enqueued, `enqueued` runs once every result is known and every copy is on the
  // daemon's stream, before the copies land (the worker then waits on the session's event);
  // without it, `enqueued` runs after they landed. The pages stay pinned until they have.
  void Load(const GpuWorkerBuffers& buffers, const GpuPageBatch& batch, bool reply_when_enqueued,
            const GpuPageResultFn& result, const std::function<void()>& enqueued);

  // Stores the batch's blocks (after the worker's interprocess event when `wait_event_handle` is
  // not empty): the store reserves each page's slot, and the gather kernel writes the blocks
  // straight into the reserved DRAM or HBM slots (a page placed on NVMe, or in a pool this GPU
  // cannot reach, goes through pinned staging); result(i, ...) for every page.
  void Store(const GpuWorkerBuffers& buffers, const GpuPageBatch& batch,
             absl::string_view wait_event_handle, const GpuStoreHooks& hooks,
             const GpuPageResultFn& result);

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace kvtier
