// PeerTransport: kvtierd's link to its peers over UCX. Control messages (transport/peer_protocol.h)
// travel as UCP active messages; bulk bytes move by RMA get from memory the holder registered
// (PeerTransport::Register), straight into the requester's destination (registered, or any
// memory: UCX registers or bounces as its transport needs), many at once (StartGets).
//
// Peers are named by their listen address "host:port": each node runs one UCP listener there and
// connects to others through UCX's sockaddr connection manager, so the port is fixed and
// deployable (a DaemonSet port, a firewall rule), and UCX still picks shared memory for data
// when both processes share a host.
//
// Faults: every call has a deadline. An endpoint that fails (the peer died, the link broke) fails
// every operation in flight on it at once; an RMA get that runs past its deadline force-closes
// its endpoint, which is the only way UCX guarantees the get will not land later, so a caller's
// destination is never written after Get returns. A peer whose message does not decode is logged,
// counted and disconnected; the node keeps serving everyone else.
//
// Thread model: one progress thread owns the UCP worker and every endpoint; after work it polls
// for busy_poll_us, then sleeps on the worker's event fd. Public methods are thread-safe: they post
// work to the progress thread and block on the result (Call, Get) or return at once (Send).
// Incoming requests are decoded on the progress thread and handled on `handler_threads` threads, so
// a handler may block (copy a page, call another peer) without stalling the link.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "transport/peer_protocol.h"
#include "transport/ucx.h"

namespace kvtier {

struct PeerTransportOptions {
  // Where the UCP listener binds, "host:port". Port 0 picks a free one (tests); listen_port()
  // says which. Default 0.0.0.0:18515.
  std::string listen_address = "0.0.0.0:18515";
  ucx::ContextOptions ucx;
  // Threads that run incoming requests. Default 2.
  uint32_t handler_threads = 2;
  // Request types the handler answers at once, without blocking (a lookup under a short lock):
  // run on the progress thread itself, which saves a round trip through the handler threads
  // (two thread wakeups) per request. Default none.
  std::vector<peer::MsgType> inline_types;
  // After any work, the progress thread keeps polling UCX this long before it sleeps on the
  // worker's fd, and a thread waiting for a batch's gets spins this long before it blocks: back
  // to back operations then pay no wakeup. Bounded, so an idle node sleeps. Default 50 us.
  uint32_t busy_poll_us = 50;
  // Shared cluster secret. When set, every connection starts with a handshake in which each
  // side proves it knows it (HMAC-SHA256 over both sides' fresh nonces, OpenSSL); a peer that
  // fails it, or sends anything else first, is logged, counted (auth_refused) and
  // disconnected. Empty (default): peers are not authenticated.
  std::string secret;
  peer::Limits limits;
};

// One RMA read of a batch started by PeerTransport::StartGets.
struct RemoteRead {
  uint64_t remote_addr = 0;
  uint32_t rkey_index = 0;  // into the batch's packed remote keys
  std::byte* local = nullptr;
  size_t length = 0;
  uint32_t group = 0;  // reads are waited for by group (e.g. the pieces of one page)
  // The destination's registration, or null: UCX then registers (or bounces) as it needs.
  const ucx::Memory* local_region = nullptr;
};

// Reads in flight from one peer, waited for group by group, so a caller can check group i while
// group i+1 still moves. Destroying it waits for every read: nothing lands in a destination
// after the destructor returns. Wait and the destructor are for the thread that started it.
class GetBatch {
 public:
  struct State;
  explicit GetBatch(std::shared_ptr<State> state, uint32_t spin_us)
      : state_(std::move(state)), spin_us_(spin_us) {}
  ~GetBatch();
  GetBatch(const GetBatch&) = delete;
  GetBatch& operator=(const GetBatch&) = delete;
  // Blocks until every read of `group` is done; OK when all of them succeeded.
  absl::Status Wait(uint32_t group);

 private:
  std::shared_ptr<State> state_;
  uint32_t spin_us_;
};

struct PeerTransportCounters {
  uint64_t requests_in = 0;
  uint64_t malformed = 0;        // messages that did not decode
  uint64_t disconnects = 0;      // peers disconnected for a malformed message
  uint64_t endpoint_errors = 0;  // endpoints that failed (peer died, link broke)
  uint64_t timeouts = 0;
  uint64_t gets = 0;
  uint64_t get_bytes = 0;
  uint64_t auth_refused = 0;  // peers disconnected for failing authentication
};

class PeerTransport {
 public:
  // Answers one request; the reply (if any) goes back on the endpoint the request came in on.
  // Called on a handler thread. A request type with no reply (Release) returns nullopt.
  using Handler = std::function<std::optional<peer::Message>(const peer::Message& request)>;

  static absl::StatusOr<std::unique_ptr<PeerTransport>> Create(const PeerTransportOptions& options,
                                                               Handler handler);
  // Stops the handler threads and the progress thread; operations still in flight fail
  // (Cancelled) before it returns.
  ~PeerTransport();
  PeerTransport(const PeerTransport&) = delete;
  PeerTransport& operator=(const PeerTransport&) = delete;

  int listen_port() const { return listen_port_; }

  // Sends `request` (its request_id is assigned here) and waits for the reply, at most `timeout`.
  absl::StatusOr<peer::Message> Call(const std::string& peer, peer::Message request,
                                     absl::Duration timeout);
  // Call with bytes sent as they are (request id patched in): how tests play a broken peer.
  absl::StatusOr<peer::Message> CallRawForTest(const std::string& peer, std::string bytes,
                                               absl::Duration timeout);
  // Sends a one-way message; delivery is best effort.
  void Send(const std::string& peer, const peer::Message& message);

  // Registers [base, base + length) for RMA: peers may read it with the returned region's key.
  // The region may outlive the transport (it holds the UCP context).
  absl::StatusOr<std::unique_ptr<ucx::Memory>> Register(void* base, size_t length);
  // Allocates and registers `length` bytes through UCX (ucx::Memory::Allocate): a region peers
  // on this host map, so their gets from it are a memcpy.
  absl::StatusOr<std::unique_ptr<ucx::Memory>> Allocate(size_t length);

  // Whether memory under `rkey` on `peer` is mapped into this process by UCX (a shared-memory
  // transport reaches it: the peer is on this host and the region is one UCX allocated there),
  // so gets from it are a memcpy. False for a peer on another host or registered memory.
  absl::StatusOr<bool> Mappable(const std::string& peer, std::string rkey, uint64_t remote_addr,
                                absl::Duration timeout);
  // UCX's description of the endpoint to `peer` (ucp_ep_print_info: its lanes, the transport of
  // each, which carry active messages and which RMA), for logs and tests.
  absl::StatusOr<std::string> EndpointInfo(const std::string& peer, absl::Duration timeout);

  // Reads `length` bytes at `remote_addr` (under `rkey`) on `peer` into `local` at `offset`. On
  // any error the bytes at the destination are unspecified, and nothing is written there after
  // Get returns.
  absl::Status Get(const std::string& peer, uint64_t remote_addr, absl::string_view rkey,
                   const ucx::Memory& local, size_t offset, size_t length, absl::Duration timeout);

  // Starts `reads` from `peer` at once (UCX pipelines them) and returns without waiting;
  // `rkeys` are packed remote keys, unpacked once for the batch. Every read of a group that
  // fails fails its group; a read past `timeout` closes the endpoint, as Get does.
  absl::StatusOr<std::unique_ptr<GetBatch>> StartGets(const std::string& peer,
                                                      std::vector<std::string> rkeys,
                                                      std::vector<RemoteRead> reads,
                                                      uint32_t groups, absl::Duration timeout);

  // Closes the endpoint to `peer` (it left the cluster); its operations in flight fail.
  void Disconnect(const std::string& peer);

  PeerTransportCounters Counters() const;

 private:
  class Impl;
  explicit PeerTransport(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
  int listen_port_ = 0;
};

}  // namespace kvtier
