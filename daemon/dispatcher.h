// Dispatcher: decodes one request datagram and runs it against the TieredStore on behalf of a
// session. It is the whole protocol logic without sockets, so the libFuzzer target drives exactly
// what kvtierd runs.
//
// Every bad request gets an error reply naming what was wrong and the limit; a connection is
// closed only when its stream can no longer be trusted (descriptors lost in transit, a protocol
// version we do not speak, refused credentials, or limits.max_consecutive_errors bad requests in
// a row). Load and Store are handed to the executor and answered from there. Each request type
// is one row of a table (dispatcher.cc: name, metric, who may send it, handler).
//
// Thread model: Handle() and EndSession() for one session come from its connection thread; many
// sessions are handled at once. Shared state (namespace layouts) is under mu_.
#pragma once

#include <sys/types.h>

#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
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
  // How a request that succeeded is answered.
  enum class ReplyKind {
    kNow,    // Handle sends the reply the handler filled in, with `attach` when one was set
    kLater,  // the operation runs on the executor, which sends its reply (Load, Store)
  };
  struct Outcome {  // a reply, or the error that replaces it
    Outcome(absl::Status s = absl::OkStatus(), bool close_connection = false,  // NOLINT: implicit
            ReplyKind kind = ReplyKind::kNow)
        : status(std::move(s)), close(close_connection), reply(kind) {}
    absl::Status status;
    bool close = false;  // with an error: the stream can no longer be trusted
    ReplyKind reply = ReplyKind::kNow;
  };
  // One request being handled: what each row of the request table is called with.
  struct Call {
    const std::shared_ptr<Session>& session;
    const wire::Request& req;
    std::vector<UniqueFd>& fds;  // only RegisterBuffers carries any
    wire::Response& resp;
    UniqueFd& attach;  // a descriptor to send with a kNow reply
  };
  // One row of the request table (dispatcher.cc): per request type its name, metric label, who
  // may send it and its handler.
  struct RequestKind;
  static const RequestKind* KindOf(wire::Request::BodyCase body);
  // A Load or Store handed to the executor, owning all it needs (dispatcher.cc).
  struct LoadStoreOp;
  struct JoinedNamespace {
    NamespaceId ns;
    PageKey salt;
  };

  // The error a per-connection quota answers with, counted by quota where it is enforced.
  absl::Status QuotaExceeded(QuotaKind kind, absl::string_view message);
  Outcome Dispatch(Call& call);
  bool IsAdmin(const Session& s) const;

  // Hello, in the order its steps run: a version this daemon speaks, a well-formed namespace
  // name, credentials its rule admits, a layout that fits the store and the namespace, then the
  // namespace joined. Version and credential failures close the connection.
  Outcome HandleHello(Session& s, const wire::Hello& h, wire::HelloReply& out);
  Outcome CheckVersion(const Session& s, const wire::Hello& h);
  absl::StatusOr<const NamespaceRule*> Authorize(const Session& s, const std::string& name);
  absl::StatusOr<Layout> CheckHelloLayout(const wire::Layout& wire_layout,
                                          const NamespaceRule& rule, const std::string& name) const;
  absl::StatusOr<JoinedNamespace> JoinNamespace(const Session& s, const std::string& name,
                                                const LayoutSpec& spec, const NamespaceRule& rule);
  void FillHelloReply(const PageKey& salt, wire::HelloReply& out) const;

  absl::Status HandleRegister(Session& s, const wire::RegisterBuffers& r,
                              std::vector<UniqueFd>& fds, wire::RegisterBuffersReply& out);
  // RegisterBuffers of GPU memory (CUDA IPC handles or VMM fds), opened by gpu_.
  absl::Status RegisterGpu(Session& s, const wire::RegisterBuffers& r, std::vector<UniqueFd>& fds,
                           wire::RegisterBuffersReply& out);
  absl::Status HandleLookup(Session& s, const wire::Lookup& r, wire::LookupReply& out);

  // Load and Store: checked and admitted on the connection thread, run on the executor.
  absl::Status SubmitLoadStore(const std::shared_ptr<Session>& session, const wire::Request& req);
  absl::StatusOr<std::vector<PageKey>> CheckLoadStore(const Session& s,
                                                      const wire::Request& req) const;
  // Counts the operation in flight, or refuses it past limits.max_inflight_ops.
  absl::Status AdmitOp(Session& s, bool is_store);
  void RunLoadStore(LoadStoreOp& op);
  // Worker blocks in GPU memory: one batched copy per operation (daemon/gpu_worker_memory.h).
  void CopyGpu(LoadStoreOp& op, const GpuWorkerBuffers& gpu);
  // A Store from mapped buffers: one PutBatch, so each tier is written once.
  void StoreMapped(LoadStoreOp& op);
  // Loads into mapped buffers, and both directions through fds: page by page.
  void CopyPerPage(LoadStoreOp& op);
  absl::StatusOr<Tier> CopyThroughFds(LoadStoreOp& op, size_t i, absl::Span<const Piece> pieces);
  absl::StatusOr<Tier> PutPage(LoadStoreOp& op, size_t i, absl::Span<const ConstBuffer> src);
  // What follows a stored page: its announcement to the cluster and its attention sample.
  absl::StatusOr<Tier> AfterStore(LoadStoreOp& op, size_t i, absl::StatusOr<Tier> tier);
  void SendPages(LoadStoreOp& op);

  absl::Status HandleReport(Session& s, const wire::Report& r, wire::CountReply& out);
  absl::Status HandlePin(Session& s, const wire::Pin& r);
  absl::Status HandleUnpin(Session& s, const wire::Unpin& r);
  absl::Status HandleRelease(Session& s, const wire::Release& r, wire::CountReply& out);
  void FillStatus(wire::StatusReply& out) const;
  void FillStats(wire::StatsReply& out) const;
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
