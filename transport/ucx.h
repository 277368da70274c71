// RAII owners of UCP handles (context, worker, listener, memory registration, remote key) and the
// one way kvtier builds a context: the transports named by UCX_TLS-style lists, not environment
// variables, so each daemon's config decides (tests run three daemons with different settings).
//
// Thread model: a context is created with shared-worker thread safety, so memory registration
// (UcpMemory) may happen on any thread; everything that touches the worker (endpoints, remote
// keys, listener) runs on the transport's progress thread (transport/peer_transport.h).
#pragma once

#include <ucp/api/ucp.h>

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace kvtier::ucx {

// UCS status -> absl::Status, naming the operation.
absl::Status ToStatus(ucs_status_t s, absl::string_view what);

struct ContextOptions {
  // UCX_TLS: which transports UCP may use. Default "tcp,sm,self": TCP between hosts,
  // shared memory (posix/sysv/cma) between processes of one host.
  std::string tls = "tcp,sm,self";
  // UCX_NET_DEVICES: network devices for TCP. Default "all"; tests on loopback name "lo", which
  // UCX does not pick by itself.
  std::string net_devices = "all";
};

class Context {
 public:
  // Features: active messages, RMA and wakeup (the progress thread sleeps on an fd when idle).
  static absl::StatusOr<Context> Create(const ContextOptions& options);
  Context(Context&& o) noexcept : h_(o.h_) { o.h_ = nullptr; }
  Context& operator=(Context&&) = delete;
  ~Context();
  ucp_context_h get() const { return h_; }

 private:
  explicit Context(ucp_context_h h) : h_(h) {}
  ucp_context_h h_ = nullptr;
};

class Worker {
 public:
  // Single-threaded worker: only the progress thread calls it (ucp_worker_signal aside).
  static absl::StatusOr<Worker> Create(const Context& context);
  Worker(Worker&& o) noexcept : h_(o.h_) { o.h_ = nullptr; }
  Worker& operator=(Worker&&) = delete;
  ~Worker();
  ucp_worker_h get() const { return h_; }

 private:
  explicit Worker(ucp_worker_h h) : h_(h) {}
  ucp_worker_h h_ = nullptr;
};

class Listener {
 public:
  Listener() = default;
  explicit Listener(ucp_listener_h h) : h_(h) {}
  Listener(Listener&& o) noexcept : h_(o.h_) { o.h_ = nullptr; }
  Listener& operator=(Listener&& o) noexcept {
    Reset();
    h_ = o.h_;
    o.h_ = nullptr;
    return *this;
  }
  ~Listener() { Reset(); }
  ucp_listener_h get() const { return h_; }
  void Reset();

 private:
  ucp_listener_h h_ = nullptr;
};

// A registered memory region and its packed remote key (what a peer needs to read it).
class Memory {
 public:
  // The region keeps its context alive: it may outlive the worker and transport that used it.
  static absl::StatusOr<std::unique_ptr<Memory>> Register(std::shared_ptr<const Context> context,
                                                          void* base, size_t length);
  // Allocates `length` bytes through UCX (UCP_MEM_MAP_ALLOCATE) and registers them. UCX takes
  // them from its shared-memory domains first (sysv, then posix: UCX_ALLOC_PRIO), which are the
  // only memory a peer process on this host can map: its gets from such a region are a memcpy
  // (UCX's sysv/posix transports); from registered memory, such an endpoint emulates it with
  // active messages.
  static absl::StatusOr<std::unique_ptr<Memory>> Allocate(std::shared_ptr<const Context> context,
                                                          size_t length);
  ~Memory();
  Memory(const Memory&) = delete;
  Memory& operator=(const Memory&) = delete;
  ucp_mem_h memh() const { return memh_; }
  std::byte* base() const { return base_; }
  size_t length() const { return length_; }
  const std::string& packed_rkey() const { return rkey_; }

 private:
  Memory(std::shared_ptr<const Context> c, ucp_mem_h m, std::byte* base, size_t length,
         std::string rkey)
      : context_(std::move(c)), memh_(m), base_(base), length_(length), rkey_(std::move(rkey)) {}
  std::shared_ptr<const Context> context_;
  ucp_mem_h memh_;
  std::byte* base_;
  size_t length_;
  std::string rkey_;
};

// An unpacked remote key, bound to the endpoint it was unpacked on.
class RemoteKey {
 public:
  static absl::StatusOr<RemoteKey> Unpack(ucp_ep_h ep, absl::string_view packed);
  RemoteKey(RemoteKey&& o) noexcept : h_(o.h_) { o.h_ = nullptr; }
  RemoteKey& operator=(RemoteKey&&) = delete;
  ~RemoteKey() {
    if (h_ != nullptr) ucp_rkey_destroy(h_);
  }
  ucp_rkey_h get() const { return h_; }

 private:
  explicit RemoteKey(ucp_rkey_h h) : h_(h) {}
  ucp_rkey_h h_ = nullptr;
};

}  // namespace kvtier::ucx
