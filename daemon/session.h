// Session: one worker connection's state inside kvtierd (namespace, layout, mapped buffers, pins,
// in-flight operations). Its lease is the connection: when the socket reports EOF (the kernel
// closes a killed worker's socket at once) the dispatcher ends the session, releasing its pins,
// cancelling its queued operations and unmapping its buffers.
//
// Thread model: the connection thread owns everything below "connection thread only". Async
// operations run on the I/O pool holding a shared_ptr to the session and to the BufferSet they
// were submitted against, so an unmapping never races a copy. Send() is thread-safe.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "base/mapping.h"
#include "client/proto/kvtier.pb.h"
#include "daemon/fd_buffer.h"
#include "tiering/layout.h"
#include "tiering/page_key.h"
#include "tiering/types.h"

namespace kvtier {

class GpuWorkerBuffers;  // daemon/gpu_worker_memory.h

struct PeerCredentials {
  pid_t pid = 0;
  uid_t uid = 0;
  gid_t gid = 0;
};

// Daemon-wide counters, read by Stats. Relaxed atomics: each is an independent tally.
struct DaemonCounters {
  std::atomic<uint32_t> sessions{0};
  std::atomic<uint32_t> pinned_pages{0};
  std::atomic<uint32_t> inflight_ops{0};
  std::atomic<uint32_t> registered_buffers{0};
  std::atomic<uint64_t> connections_total{0};
  std::atomic<uint64_t> auth_refused{0};
  std::atomic<uint64_t> bad_requests{0};
  std::atomic<uint64_t> closed_untrusted{0};
  std::atomic<uint64_t> leases_expired{0};
  std::atomic<uint64_t> ops_cancelled{0};
  std::atomic<uint64_t> lookups{0};
  std::atomic<uint64_t> loads{0};
  std::atomic<uint64_t> stores{0};
  // Connection hardening (daemon/connection_limits.h): bytes of worker buffers registered now,
  // connections refused at accept (limits, or no thread for them), failures caught at a
  // connection's boundary (an exception or allocation failure ends that connection only),
  // clients cut off for not reading their replies, connections closed for no Hello in time, and
  // log lines dropped by the rate limit (the counters above still count every event).
  std::atomic<uint64_t> registered_bytes{0};
  std::atomic<uint64_t> connections_refused{0};
  std::atomic<uint64_t> connection_failures{0};
  std::atomic<uint64_t> output_overflows{0};
  std::atomic<uint64_t> hello_timeouts{0};
  std::atomic<uint64_t> log_lines_suppressed{0};
};

// The bytes of worker buffers one session has registered, held in DaemonCounters::registered_bytes
// until the session ends (daemon/connection_limits.h charges it).
class RegisteredBytesCharge {
 public:
  RegisteredBytesCharge() = default;
  ~RegisteredBytesCharge() { Release(); }
  RegisteredBytesCharge(const RegisteredBytesCharge&) = delete;
  RegisteredBytesCharge& operator=(const RegisteredBytesCharge&) = delete;
  // Takes over `delta` more bytes, already added to `*total`.
  void Grow(std::atomic<uint64_t>* total, uint64_t delta) {
    total_ = total;
    bytes_ += delta;
  }
  void Release() {
    if (total_ != nullptr) total_->fetch_sub(bytes_, std::memory_order_relaxed);
    total_ = nullptr;
    bytes_ = 0;
  }
  uint64_t bytes() const { return bytes_; }

 private:
  std::atomic<uint64_t>* total_ = nullptr;
  uint64_t bytes_ = 0;
};

// A worker's registered KV buffers, mapped into the daemon. Unmapped when the last operation
// using them and the session have let go.
class BufferSet {
 public:
  BufferSet(std::vector<Mapping> maps, DaemonCounters* counters);
  // A worker's buffers in its GPU memory, opened in kvtierd: no host mapping, copied by
  // GpuWorkers only (gpu() is then set and base() is a device address).
  BufferSet(std::shared_ptr<const GpuWorkerBuffers> gpu, size_t count, DaemonCounters* counters);
  // Host buffers that may shrink under the daemon: never mapped, copied through their
  // descriptors (fd_buffers() is then non-empty and base() must not be used).
  BufferSet(std::vector<FdBuffer> fd_buffers, DaemonCounters* counters);
  ~BufferSet();
  BufferSet(const BufferSet&) = delete;
  BufferSet& operator=(const BufferSet&) = delete;
  size_t count() const {
    return gpu_ != nullptr ? gpu_count_ : !fd_buffers_.empty() ? fd_buffers_.size() : maps_.size();
  }
  std::byte* base(size_t i) const { return maps_[i].data(); }
  size_t size(size_t i) const { return maps_[i].size(); }
  const GpuWorkerBuffers* gpu() const { return gpu_.get(); }
  absl::Span<const FdBuffer> fd_buffers() const { return fd_buffers_; }

 private:
  std::vector<Mapping> maps_;
  std::vector<FdBuffer> fd_buffers_;
  std::shared_ptr<const GpuWorkerBuffers> gpu_;
  size_t gpu_count_ = 0;
  DaemonCounters* counters_;
};

class Session {
 public:
  // Delivers one encoded datagram, with `fd` attached when >= 0. Thread-safe.
  using SendFn = std::function<void(absl::string_view bytes, int fd)>;
  Session(uint64_t id, PeerCredentials peer, SendFn send)
      : id_(id), peer_(peer), send_(std::move(send)) {}

  uint64_t id() const { return id_; }
  const PeerCredentials& peer() const { return peer_; }
  // Serializes and sends `response`; dropped silently once the session has ended.
  void Send(const wire::Response& response, int fd = -1);

  std::atomic<bool> ended{false};
  std::atomic<uint32_t> inflight{0};

  // ---- connection thread only ----
  bool hello_done = false;
  NamespaceId ns = 0;
  std::string namespace_name;
  std::optional<Layout> layout;
  std::shared_ptr<const BufferSet> buffers;
  absl::flat_hash_map<PageKey, uint32_t> pins;  // key -> pins this session holds on it
  uint32_t pinned = 0;
  uint32_t consecutive_errors = 0;
  RegisteredBytesCharge registered_bytes;

 private:
  const uint64_t id_;
  const PeerCredentials peer_;
  absl::Mutex send_mu_;
  const SendFn send_;
};

}  // namespace kvtier
