// Dispatcher: decodes one request datagram and runs it against the TieredStore on behalf of a
// session. It is the whole protocol logic without sockets, so the libFuzzer target drives exactly
// what kvtierd runs.
//
// Every bad request gets an error reply naming what was wrong and the limit; a connection is
// closed only when its stream can no longer be trusted (descriptors lost in transit, a protocol
// version we do not speak, refused credentials, or limits.max_consecutive_errors bad requests in
// a row). Load and Store are handed to the executor and answered from there.
//
// Thread model: Handle() and EndSession() for one session come from its connection thread; many
// sessions are handled at once. Shared state (namespace layouts) is under mu_.
#pragma once

#include <sys/types.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "base/unique_fd.h"
#include "daemon/config.h"
#include "daemon/gpu_worker_memory.h"
#include "daemon/observability/daemon_metrics.h"
#include "daemon/session.h"
#include "daemon/tenant_ledger.h"
#include "tiering/policy/sink_classifier.h"
#include "tiering/tiered_store.h"

namespace kvtier {

// Runs a task later, on another thread (the I/O pool) or inline (the fuzz target).
using Executor = std::function<void(std::function<void()>)>;

struct Incoming {
  absl::string_view bytes;  // the datagram's bytes (only when !truncated)
  size_t size = 0;          // its real size
  bool truncated = false;   // larger than limits.max_message_bytes
  bool fds_truncated = false;
  std::vector<UniqueFd> fds;
};

class Dispatcher {
 public:
  // `metrics` may be null (the fuzz target); otherwise it must outlive the dispatcher.
  Dispatcher(const DaemonConfig& config, TieredStore& store, DaemonCounters& counters,
             Executor executor, uid_t owner_uid, uint64_t start_ns,
             DaemonMetrics* metrics = nullptr);

  enum class Verdict { kKeep, kClose };
  Verdict Handle(const std::shared_ptr<Session>& session, Incoming in);
  // The session's lease ends: pins released, queued operations cancelled, buffers dropped.
  void EndSession(Session& session);

 private:
  struct Outcome {  // a synchronous reply, or the error that replaces it
    absl::Status status;
    bool close = false;
    int fd = -1;  // attached to the reply
  };
  // The error a per-connection quota answers with, counted by quota where it is enforced.
  absl::Status QuotaExceeded(QuotaKind kind, absl::string_view message);
  Outcome Dispatch(const std::shared_ptr<Session>& s, const wire::Request& req,
                   std::vector<UniqueFd>& fds, wire::Response& resp, UniqueFd& attach);
  Outcome HandleHello(Session& s, const wire::Hello& h, wire::HelloReply& out, UniqueFd& attach);
  absl::Status HandleRegister(Session& s, const wire::RegisterBuffers& r,
                              std::vector<UniqueFd>& fds, wire::RegisterBuffersReply& out);
  // RegisterBuffers of GPU memory (CUDA IPC handles or VMM fds), opened by gpu_.
  absl::Status RegisterGpu(Session& s, const wire::RegisterBuffers& r, std::vector<UniqueFd>& fds,
                           wire::RegisterBuffersReply& out);
  absl::Status HandleLookup(Session& s, const wire::Lookup& r, wire::LookupReply& out);
  absl::Status SubmitLoadStore(const std::shared_ptr<Session>& s, const wire::Request& req);
  absl::Status HandleReport(Session& s, const wire::Report& r, wire::CountReply& out);
  absl::Status HandlePin(Session& s, const wire::Pin& r);
  absl::Status HandleUnpin(Session& s, const wire::Unpin& r);
  absl::Status HandleRelease(Session& s, const wire::Release& r, wire::CountReply& out);
  void FillStatus(wire::StatusReply& out) const;
  void FillStats(wire::StatsReply& out) const;
  bool IsAdmin(const Session& s) const;
  absl::Status Keys(const google::protobuf::RepeatedField<uint64_t>& words,
                    std::vector<PageKey>& out) const;

  const DaemonConfig& config_;
  TieredStore& store_;
  // Turns attention reports into SINK/SEMANTIC classes (a new sink moves into a reserved slot).
  const SinkClassifier classifier_;
  DaemonCounters& counters_;
  const Executor executor_;
  const uid_t owner_uid_;
  const uint64_t start_ns_;
  DaemonMetrics* const metrics_;
  // Workers' GPU buffers and the copies into and out of them.
  const std::unique_ptr<GpuWorkers> gpu_;

  mutable absl::Mutex mu_;
  // The layout each namespace's first worker presented (num_blocks aside): later workers must
  // match it, since they share pages byte for byte.
  absl::flat_hash_map<std::string, LayoutSpec> namespace_layouts_ ABSL_GUARDED_BY(mu_);
  // Live namespaces and pins per uid and per namespace (limits per tenant, not only in total).
  TenantLedger ledger_ ABSL_GUARDED_BY(mu_);
};

}  // namespace kvtier
