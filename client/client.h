// kvtier::Client: the C++ library an inference worker links to talk to kvtierd.
//
// One Client is one connection (one session, one namespace). Every call is batched. Load and
// Store are asynchronous: *Async submits and returns an OpHandle at once; Wait(handle) returns the
// per-page outcome. Several operations may be in flight (up to the daemon's max_inflight_ops).
//
// Thread model: every method may be called from any thread. Sends are serialized by a mutex.
// Replies are read by one waiting thread at a time, the reader (no background thread, so a
// synchronous call is one send and one receive on the caller's thread); it reads without holding
// the lock, parks replies for the other waiters and wakes them, so a slow operation never holds
// back another thread's reply. When the reader leaves, a waiting thread takes its place.
//
// Deadlines: set_call_timeout bounds how long any call waits for its reply. A synchronous call
// that runs out returns DeadlineExceeded and its late reply is dropped; Wait/WaitGpu that run out
// return DeadlineExceeded and leave the operation in flight: Wait for it again (a Load's blocks
// are the daemon's to write until a Wait returns its result).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "base/mapping.h"
#include "base/seqpacket.h"
#include "base/unique_fd.h"
#include "client/proto/kvtier.pb.h"
#include "tiering/layout.h"
#include "tiering/page_key.h"
#include "tiering/types.h"

namespace kvtier {

// The worker's KV buffers on a machine without a GPU: one memfd per layout buffer, sealed
// against shrinking (the daemon refuses buffers that could shrink under its mapping) and mapped
// here read-write.
class WorkerBuffers {
 public:
  static absl::StatusOr<WorkerBuffers> Create(const Layout& layout);
  size_t count() const { return fds_.size(); }
  std::vector<int> fds() const;
  std::vector<uint64_t> sizes() const;
  std::byte* buffer(size_t i) const { return maps_[i].data(); }
  // Copies a contiguous page image into / out of block `block_id`'s pieces.
  absl::Status WriteBlock(const Layout& layout, uint32_t block_id,
                          absl::Span<const std::byte> page) const;
  absl::Status ReadBlock(const Layout& layout, uint32_t block_id, absl::Span<std::byte> page) const;

 private:
  std::vector<UniqueFd> fds_;
  std::vector<Mapping> maps_;
};

// A flat (kPageContiguous) layout whose page is exactly `page_bytes` (a multiple of 64): what
// tools and tests use when they only need pages of the daemon's size.
absl::StatusOr<LayoutSpec> FlatLayoutFor(uint64_t page_bytes, uint32_t num_blocks);

struct HelloInfo {
  PageKey salt;  // chain keys from this (ChainKeys in tiering/page_key.h)
  uint64_t page_bytes = 0;
  std::string hbm_backend;
  uint32_t max_inflight_ops = 0;
  uint32_t max_pinned_pages = 0;
  uint32_t max_batch_pages = 0;
};

struct LookupReply {
  size_t prefix_pages = 0;
  std::vector<Tier> tiers;           // per prefix page
  std::vector<uint32_t> dram_slots;  // when requested: per prefix page, kNoSlot if not in DRAM
  static constexpr uint32_t kNoSlot = 0xffffffffu;
};

// Per-page outcome of a Load or Store.
struct PageResults {
  std::vector<absl::StatusCode> codes;
  std::vector<Tier> tiers;
  std::string first_error;
  uint32_t ok_pages = 0;
};

struct StoreHints {
  PageKey parent;                      // parent of keys[0]; null at a sequence start
  uint32_t first_position = 0;         // position of keys[0] within its sequence
  std::vector<PageClass> class_hints;  // empty, or one per key: memory intent
};

struct AttentionBatch {  // empty, or one entry per key in each vector
  std::vector<float> mass, breadth, value_norm, mass_entropy;
};

using OpHandle = uint64_t;

// One of a worker's KV buffers in GPU memory, as RegisterGpuBuffers sends it (README "GPU
// workers"). A tensor of PyTorch's caching allocator is a slice of a larger cudaMalloc: name the
// allocation (cudaIpcGetMemHandle of the tensor's pointer names the whole of it) and give
// offset = data_ptr - allocation base (cuMemGetAddressRange), as PyTorch's own IPC does.
struct GpuBufferHandle {
  std::string ipc_handle;         // cudaIpcMemHandle_t bytes (64); empty when vmm_fd is used
  int vmm_fd = -1;                // or a VMM allocation (cuMemExportToShareableHandle, POSIX fd)
  uint64_t allocation_bytes = 0;  // with vmm_fd: bytes of that allocation
  uint64_t offset = 0;            // where the buffer starts inside the allocation
  uint64_t size = 0;              // bytes of the buffer (at least the layout's buffer bytes)
};

// A GPU Load's or Store's outcome: the per-page results and the session's interprocess event
// (cudaIpcEventHandle_t bytes), recorded after this operation's copies on the daemon's stream.
struct GpuPageResults {
  PageResults pages;
  std::string cuda_event_handle;
};

class Client {
 public:
  // Connects to kvtierd; `socket_path` empty means kDefaultSocketPath.
  static absl::StatusOr<std::unique_ptr<Client>> Connect(absl::string_view socket_path = "");
  ~Client();

  // The versioned handshake: names the namespace and the worker's layout. want_dram_pool is
  // deprecated: kvtierd no longer shares its DRAM pool (it holds every tenant's pages), so nothing
  // is mapped and DramSlot() stays empty; pages arrive by Load.
  absl::StatusOr<HelloInfo> Hello(absl::string_view namespace_name, const LayoutSpec& layout,
                                  bool want_dram_pool = false, absl::string_view client_name = "");
  absl::Status RegisterBuffers(absl::Span<const int> fds, absl::Span<const uint64_t> sizes);

  absl::StatusOr<LookupReply> Lookup(absl::Span<const PageKey> keys, bool with_dram_slots = false);
  absl::StatusOr<OpHandle> LoadAsync(absl::Span<const PageKey> keys,
                                     absl::Span<const uint32_t> block_ids);
  absl::StatusOr<OpHandle> StoreAsync(absl::Span<const PageKey> keys,
                                      absl::Span<const uint32_t> block_ids,
                                      const StoreHints& hints = {},
                                      const AttentionBatch* stats = nullptr);
  absl::StatusOr<PageResults> Wait(OpHandle op);
  absl::Status Report(absl::Span<const PageKey> keys, const AttentionBatch& stats);
  absl::Status Pin(absl::Span<const PageKey> keys);
  absl::Status Unpin(absl::Span<const PageKey> keys);
  // This session's pins on `keys` (all of them when empty) are dropped: the sequence is done.
  absl::StatusOr<uint32_t> Release(absl::Span<const PageKey> keys = {});
  absl::StatusOr<wire::StatusReply> Status();
  absl::StatusOr<wire::StatsReply> Stats();

  // The mapped DRAM pool, from a kvtierd old enough to share one: bytes of `slot`, valid while
  // the page is pinned. Empty span when not mapped (always, with a current kvtierd).
  absl::Span<const std::byte> DramSlot(uint32_t slot) const;

  // Low level: sends any request (id assigned here) and waits for its response. For tools and
  // tests that need to send what the typed calls never would.
  absl::StatusOr<wire::Response> Call(wire::Request& request, absl::Span<const int> fds = {});
  int socket_fd() const { return socket_.get(); }

  // Spin-then-block: a waiting call polls the socket for up to `spin_us` microseconds before it
  // sleeps. A reply then lands on a running CPU instead of waking an idle one, which on VMs costs
  // tens of microseconds; the price is a busy CPU while waiting. A thread spins only while no
  // more threads of the process wait than half the CPUs, so many concurrent callers sleep and
  // never starve the daemon (or the inference work) of cores. Default 50 us; 0 always sleeps.
  void set_spin_wait_us(uint32_t spin_us) { spin_wait_us_ = spin_us; }
  // The longest any call waits for its reply (absl::InfiniteDuration(), the default: no limit).
  // A non-positive duration means no limit too. See "Deadlines" above.
  void set_call_timeout(absl::Duration timeout);

  // GPU workers (README "GPU workers"). Registers the worker's KV buffers in GPU memory, in
  // layout order; `device_uuid` is cudaDeviceProp::uuid (16 bytes) of their GPU. All handles are
  // CUDA IPC handles or all are VMM fds. FailedPrecondition from a daemon that cannot serve GPU
  // buffers (no CUDA, no GPU), naming why.
  absl::Status RegisterGpuBuffers(absl::string_view device_uuid,
                                  absl::Span<const GpuBufferHandle> buffers);
  // Load into GPU blocks. With reply_when_enqueued the reply comes once the copies are queued on
  // the daemon's stream: cudaStreamWaitEvent(stream, event of cuda_event_handle) before using the
  // blocks. Without it the reply means the bytes have landed. With prefix_only the Lookup is
  // folded in: the longest cached prefix of `keys` is loaded, and the first page not cached and
  // all after it come back NotFound unread (ok_pages is the prefix).
  absl::StatusOr<OpHandle> LoadGpuAsync(absl::Span<const PageKey> keys,
                                        absl::Span<const uint32_t> block_ids,
                                        bool reply_when_enqueued, bool prefix_only = false);
  // Store from GPU blocks. The daemon reads them when the Store runs: either the worker has
  // synchronized the kernels that wrote them, or it passes an interprocess event
  // (cudaIpcGetEventHandle, recorded after those kernels) that the daemon's copy waits on.
  absl::StatusOr<OpHandle> StoreGpuAsync(absl::Span<const PageKey> keys,
                                         absl::Span<const uint32_t> block_ids,
                                         const StoreHints& hints = {},
                                         absl::string_view wait_event_handle = "");
  absl::StatusOr<GpuPageResults> WaitGpu(OpHandle op);

 private:
  explicit Client(UniqueFd socket) : socket_(std::move(socket)) {}
  absl::StatusOr<OpHandle> Submit(wire::Request& request, absl::Span<const int> fds);
  struct Received {
    wire::Response response;
    std::vector<UniqueFd> fds;
  };
  // Waits for reply `id` until `deadline`. `abandon_on_timeout`: a synchronous call's; its reply,
  // should it come later, is dropped instead of parked.
  absl::StatusOr<Received> Await(OpHandle id, bool abandon_on_timeout);
  // The reader's step, run without recv_mu_: one datagram from the socket, or DeadlineExceeded.
  absl::StatusOr<Datagram> ReadDatagram(absl::Time deadline);

  UniqueFd socket_;
  std::atomic<uint64_t> next_id_{1};
  absl::Mutex send_mu_;
  std::string send_buffer_ ABSL_GUARDED_BY(send_mu_);
  absl::Mutex recv_mu_ ABSL_ACQUIRED_AFTER(send_mu_);
  bool reading_ ABSL_GUARDED_BY(recv_mu_) = false;  // a thread is the reader
  // The reader's alone while reading_ is set (it is read outside recv_mu_, so not GUARDED_BY).
  std::string recv_buffer_;
  absl::flat_hash_map<uint64_t, Received> parked_ ABSL_GUARDED_BY(recv_mu_);
  absl::flat_hash_set<uint64_t> abandoned_ ABSL_GUARDED_BY(recv_mu_);
  // Set once the connection is unusable (closed by kvtierd, a reply that does not parse): every
  // waiter returns it.
  absl::Status broken_ ABSL_GUARDED_BY(recv_mu_);
  Mapping dram_pool_;
  uint64_t dram_slot_bytes_ = 0;
  uint32_t dram_slots_ = 0;
  std::atomic<uint32_t> spin_wait_us_{50};
  std::atomic<int64_t> call_timeout_ns_{0};  // 0: no limit
};

// Packs keys as the wire's (hi, lo) word pairs.
void AppendKeyWords(absl::Span<const PageKey> keys,
                    google::protobuf::RepeatedField<uint64_t>* words);

}  // namespace kvtier
