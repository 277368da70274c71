#include "daemon/dispatcher.h"

#include <fcntl.h>
#include <glog/logging.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "client/defaults.h"
#include "daemon/cluster_hook.h"
#include "daemon/connection_limits.h"
#include "tiering/clock.h"

namespace kvtier {
namespace {

constexpr size_t kMaxNamespaceNameBytes = 256;

std::string SpecString(const LayoutSpec& s) {
  return absl::StrCat("{layers ", s.layers, ", kv_heads ", s.kv_heads, ", head_dim ", s.head_dim,
                      ", dtype ", static_cast<int>(s.dtype), ", tokens_per_page ",
                      s.tokens_per_page, ", tensor_layout ", static_cast<int>(s.tensor_layout),
                      "}");
}

bool SameShape(LayoutSpec a, LayoutSpec b) {
  a.num_blocks = b.num_blocks = 0;  // each worker has its own block count
  return a == b;
}

void SetError(wire::Response& resp, const absl::Status& s) {
  resp.clear_body();
  resp.mutable_error()->set_code(static_cast<int32_t>(s.code()));
  resp.mutable_error()->set_message(std::string(s.message()));
}

void FillTier(const TieredStore& store, Tier t, wire::TierStatus& out) {
  const TierUsage u = store.Usage(t);
  const StoreCounters c = store.Counters();
  out.set_tier(std::string(TierName(t)));
  out.set_backend(u.backend);
  out.set_capacity_slots(u.capacity_slots);
  out.set_used_slots(u.used_slots);
  out.set_sink_reserved_slots(u.sink_reserved_slots);
  out.set_sink_used_slots(u.sink_used_slots);
  out.set_hits(c.hits[TierIndex(t)]);
  uint64_t ev = 0;
  for (uint64_t e : c.evictions[TierIndex(t)]) ev += e;
  out.set_evictions(ev);
  for (const PoolUsage& p : u.pools) {
    wire::TierPoolStatus& pool = *out.add_pools();
    pool.set_device(p.device);
    pool.set_capacity_slots(p.capacity_slots);
    pool.set_used_slots(p.used_slots);
  }
}

// Checks the per-page attention arrays: absent, or one value per key.
absl::Status CheckStats(const wire::AttentionStats& st, size_t n) {
  for (int size :
       {st.mass_size(), st.breadth_size(), st.value_norm_size(), st.mass_entropy_size()}) {
    if (size != 0 && static_cast<size_t>(size) != n) {
      return absl::InvalidArgumentError(
          absl::StrCat("attention stats hold ", size, " values for ", n, " pages"));
    }
  }
  return absl::OkStatus();
}

AttentionSample SampleAt(const wire::AttentionStats& st, int i) {
  AttentionSample a;
  if (st.mass_size() > i) a.mass = st.mass(i);
  if (st.breadth_size() > i) a.breadth = st.breadth(i);
  if (st.value_norm_size() > i) a.value_norm = st.value_norm(i);
  if (st.mass_entropy_size() > i) a.mass_entropy = st.mass_entropy(i);
  return a;
}

bool HasStats(const wire::AttentionStats& st) {
  return st.mass_size() + st.breadth_size() + st.value_norm_size() + st.mass_entropy_size() > 0;
}

// A namespace name: 1..kMaxNamespaceNameBytes printable ASCII bytes (names reach logs verbatim).
absl::Status CheckNamespaceName(const std::string& name) {
  if (name.empty() || name.size() > kMaxNamespaceNameBytes) {
    return absl::InvalidArgumentError(absl::StrCat("namespace name of ", name.size(),
                                                   " bytes; must be 1..", kMaxNamespaceNameBytes));
  }
  for (char ch : name) {
    if (ch < 0x20 || ch > 0x7e) {
      return absl::InvalidArgumentError(absl::StrCat("namespace name has byte 0x",
                                                     absl::Hex(static_cast<uint8_t>(ch)),
                                                     "; names are printable ASCII"));
    }
  }
  return absl::OkStatus();
}

// The wire's enums are the C++ ones, number for number (client/proto/kvtier.proto): tiers and
// classes travel as one byte each, cast from and to these.
static_assert(wire::VERSION_1 == kProtocolVersion);
static_assert(wire::TIER_HBM == TierIndex(Tier::kHbm) &&
              wire::TIER_DRAM == TierIndex(Tier::kDram) &&
              wire::TIER_NVME == TierIndex(Tier::kNvme) && wire::TierCode_ARRAYSIZE == kNumTiers);
static_assert(wire::CLASS_UNKNOWN == PageClassIndex(PageClass::kUnknown) &&
              wire::CLASS_SINK == PageClassIndex(PageClass::kSink) &&
              wire::CLASS_SEMANTIC == PageClassIndex(PageClass::kSemantic) &&
              wire::PageClassCode_ARRAYSIZE == kNumPageClasses);

// Who may send a request type.
enum class Access {
  kAnyone,   // the handshake itself
  kAdmin,    // daemon-wide status: the daemon's owner or admin_uids
  kSession,  // everything else: only after a Hello on this connection
};

TenantLimits TenantLimitsFor(const DaemonConfig& config, const TieredStore& store) {
  TenantLimits t;
  t.max_namespaces = config.limits.max_namespaces;
  t.max_namespaces_per_uid = config.limits.max_namespaces_per_uid;
  uint32_t pins = config.limits.max_pinned_pages_per_uid;
  if (pins == 0) {
    // Half of every slot the store has: what one tenant pins, the others can still use.
    uint64_t slots = 0;
    for (Tier tier : kAllTiers) {
      slots += store.Usage(tier).capacity_slots;
    }
    pins = static_cast<uint32_t>(std::max<uint64_t>(1, slots / 2));
  }
  t.max_pinned_per_uid = t.max_pinned_per_namespace = pins;
  return t;
}

double SecondsSince(uint64_t start_ns) {
  return static_cast<double>(SteadyClock::Get()->NowNs() - start_ns) * 1e-9;
}

}  // namespace

Dispatcher::Dispatcher(const DaemonConfig& config, TieredStore& store, DaemonCounters& counters,
                       Executor executor, uid_t owner_uid, uint64_t start_ns,
                       DaemonMetrics* metrics)
    : config_(config),
      store_(store),
      counters_(counters),
      executor_(std::move(executor)),
      owner_uid_(owner_uid),
      start_ns_(start_ns),
      metrics_(metrics),
      gpu_(std::make_unique<GpuWorkers>(config.gpu, store)),
      ledger_(TenantLimitsFor(config, store)) {}

absl::Status Dispatcher::QuotaExceeded(QuotaKind kind, absl::string_view message) {
  if (metrics_ != nullptr) metrics_->QuotaRejected(kind);
  return absl::ResourceExhaustedError(message);
}

// ---- The request table ----

struct Dispatcher::RequestKind {
  wire::Request::BodyCase body;
  const char* name;  // in errors and logs
  RpcOp op;          // the metrics' label
  Access access;
  Outcome (*handle)(Dispatcher& d, Call& call);
};

const Dispatcher::RequestKind* Dispatcher::KindOf(wire::Request::BodyCase body) {
  using R = wire::Request;
  static constexpr RequestKind kKinds[] = {
      {R::kHello, "Hello", RpcOp::kHello, Access::kAnyone,
       [](Dispatcher& d, Call& c) {
         return d.HandleHello(*c.session, c.req.hello(), *c.resp.mutable_hello());
       }},
      {R::kRegisterBuffers, "RegisterBuffers", RpcOp::kRegisterBuffers, Access::kSession,
       [](Dispatcher& d, Call& c) -> Outcome {
         return d.HandleRegister(*c.session, c.req.register_buffers(), c.fds,
                                 *c.resp.mutable_register_buffers());
       }},
      {R::kLookup, "Lookup", RpcOp::kLookup, Access::kSession,
       [](Dispatcher& d, Call& c) -> Outcome {
         return d.HandleLookup(*c.session, c.req.lookup(), *c.resp.mutable_lookup());
       }},
      {R::kLoad, "Load", RpcOp::kLoad, Access::kSession,
       [](Dispatcher& d, Call& c) -> Outcome {
         RETURN_IF_ERROR(d.SubmitLoadStore(c.session, c.req));
         return {absl::OkStatus(), false, ReplyKind::kLater};
       }},
      {R::kStore, "Store", RpcOp::kStore, Access::kSession,
       [](Dispatcher& d, Call& c) -> Outcome {
         RETURN_IF_ERROR(d.SubmitLoadStore(c.session, c.req));
         return {absl::OkStatus(), false, ReplyKind::kLater};
       }},
      {R::kReport, "Report", RpcOp::kReport, Access::kSession,
       [](Dispatcher& d, Call& c) -> Outcome {
         return d.HandleReport(*c.session, c.req.report(), *c.resp.mutable_count());
       }},
      {R::kPin, "Pin", RpcOp::kPin, Access::kSession,
       [](Dispatcher& d, Call& c) -> Outcome {
         absl::Status st = d.HandlePin(*c.session, c.req.pin());
         c.resp.mutable_count()->set_pages(static_cast<uint32_t>(c.req.pin().key_words_size() / 2));
         return st;
       }},
      {R::kUnpin, "Unpin", RpcOp::kUnpin, Access::kSession,
       [](Dispatcher& d, Call& c) -> Outcome {
         absl::Status st = d.HandleUnpin(*c.session, c.req.unpin());
         c.resp.mutable_count()->set_pages(
             static_cast<uint32_t>(c.req.unpin().key_words_size() / 2));
         return st;
       }},
      {R::kRelease, "Release", RpcOp::kRelease, Access::kSession,
       [](Dispatcher& d, Call& c) -> Outcome {
         return d.HandleRelease(*c.session, c.req.release(), *c.resp.mutable_count());
       }},
      {R::kStatus, "Status", RpcOp::kStats, Access::kAdmin,
       [](Dispatcher& d, Call& c) -> Outcome {
         d.FillStatus(*c.resp.mutable_status());
         return {};
       }},
      {R::kStats, "Stats", RpcOp::kStats, Access::kAdmin,
       [](Dispatcher& d, Call& c) -> Outcome {
         d.FillStats(*c.resp.mutable_stats());
         return {};
       }},
  };
  for (const RequestKind& kind : kKinds) {
    if (kind.body == body) return &kind;
  }
  return nullptr;  // BODY_NOT_SET, or a body this build does not know
}

// ---- Handling one datagram ----

Dispatcher::Verdict Dispatcher::Handle(const std::shared_ptr<Session>& session, Incoming in) {
  Session& s = *session;
  // Reused per connection thread: parsing into a cleared message keeps its allocations.
  thread_local wire::Request req;
  thread_local wire::Response resp;
  resp.Clear();
  const uint64_t t0 = metrics_ != nullptr ? SteadyClock::Get()->NowNs() : 0;
  auto reject = [&](const absl::Status& status, bool close) {
    counters_.bad_requests.fetch_add(1, std::memory_order_relaxed);
    if (metrics_ != nullptr) {
      metrics_->BadRequest();
      if (const RequestKind* kind = KindOf(req.body_case()); kind != nullptr && !in.truncated) {
        metrics_->Request(kind->op, SecondsSince(t0), false);
      }
    }
    // One line per rejected message, up to a process-wide rate (counters count every one).
    if (ClientLogAllowed(counters_))
      LOG(WARNING) << "event=bad_request session=" << s.id() << " uid=" << s.peer().uid
                   << " code=" << absl::StatusCodeToString(status.code()) << " close=" << close
                   << " error=\"" << status.message() << "\"";
    SetError(resp, status);
    s.Send(resp);
    if (close || ++s.consecutive_errors >= config_.limits.max_consecutive_errors) {
      counters_.closed_untrusted.fetch_add(1, std::memory_order_relaxed);
      return Verdict::kClose;
    }
    return Verdict::kKeep;
  };
  if (in.fds_truncated) {
    // Descriptors were dropped in transit: what the peer thinks it registered is unknowable.
    return reject(absl::DataLossError("file descriptors were truncated in transit (more than "
                                      "253 in one message?); closing the connection"),
                  true);
  }
  if (in.truncated) {
    return reject(QuotaExceeded(QuotaKind::kMessageBytes,
                                absl::StrCat("message of ", in.size,
                                             " bytes exceeds limits.max_message_bytes (",
                                             config_.limits.max_message_bytes, ")")),
                  false);
  }
  req.Clear();
  if (!req.ParseFromArray(in.bytes.data(), static_cast<int>(in.bytes.size()))) {
    return reject(absl::InvalidArgumentError(absl::StrCat("message of ", in.bytes.size(),
                                                          " bytes does not parse as a kvtier.wire "
                                                          "Request")),
                  false);
  }
  resp.set_id(req.id());
  const RequestKind* kind = KindOf(req.body_case());
  if (!in.fds.empty() && req.body_case() != wire::Request::kRegisterBuffers) {
    return reject(absl::InvalidArgumentError(
                      absl::StrCat(in.fds.size(), " file descriptors attached to a ",
                                   kind != nullptr ? kind->name : "(none)",
                                   " request; only RegisterBuffers carries descriptors")),
                  false);
  }
  UniqueFd attach;
  Call call{session, req, in.fds, resp, attach};
  Outcome out = Dispatch(call);
  if (!out.status.ok()) return reject(out.status, out.close);
  s.consecutive_errors = 0;
  switch (out.reply) {
    case ReplyKind::kLater:  // the executor answers (and times the operation there)
      return Verdict::kKeep;
    case ReplyKind::kNow:
      if (metrics_ != nullptr) metrics_->Request(kind->op, SecondsSince(t0), true);
      s.Send(resp, attach.get());
      return Verdict::kKeep;
  }
  return Verdict::kKeep;
}

Dispatcher::Outcome Dispatcher::Dispatch(Call& call) {
  const RequestKind* kind = KindOf(call.req.body_case());
  if (kind == nullptr) {
    return absl::InvalidArgumentError("request carries no operation (missing or unknown body)");
  }
  const Session& s = *call.session;
  switch (kind->access) {
    case Access::kAnyone:
      break;
    case Access::kAdmin:
      if (!IsAdmin(s)) {
        counters_.auth_refused.fetch_add(1, std::memory_order_relaxed);
        return absl::PermissionDeniedError(
            absl::StrCat("uid ", s.peer().uid, " may not read daemon status (admin_uids)"));
      }
      break;
    case Access::kSession:
      if (!s.hello_done) {
        return absl::FailedPreconditionError(
            absl::StrCat(kind->name, " before Hello: the first request must be the handshake"));
      }
      break;
  }
  return kind->handle(*this, call);
}

bool Dispatcher::IsAdmin(const Session& s) const {
  if (config_.admin_uids.empty()) return s.peer().uid == owner_uid_;
  return std::find(config_.admin_uids.begin(), config_.admin_uids.end(), s.peer().uid) !=
         config_.admin_uids.end();
}

// ---- Hello ----

Dispatcher::Outcome Dispatcher::HandleHello(Session& s, const wire::Hello& h,
                                            wire::HelloReply& out) {
  if (Outcome refused = CheckVersion(s, h); !refused.status.ok()) return refused;
  if (s.hello_done) {
    return absl::FailedPreconditionError(
        absl::StrCat("Hello already done on this connection (namespace '", s.namespace_name,
                     "'); open another connection for another namespace"));
  }
  const std::string& name = h.namespace_name();
  RETURN_IF_ERROR(CheckNamespaceName(name));
  absl::StatusOr<const NamespaceRule*> rule = Authorize(s, name);
  if (!rule.ok()) return {rule.status(), /*close_connection=*/true};
  ASSIGN_OR_RETURN(Layout layout, CheckHelloLayout(h.layout(), **rule, name));
  ASSIGN_OR_RETURN(const JoinedNamespace joined, JoinNamespace(s, name, layout.spec(), **rule));
  // want_dram_pool is ignored: the DRAM pool holds every namespace's pages, so no worker is
  // given a descriptor of it (a read-only fd can be reopened read-write through /proc). Pages
  // reach a worker only by Load, copied into its own registered buffers.
  s.hello_done = true;
  s.ns = joined.ns;
  s.namespace_name = name;
  LOG(INFO) << "event=session_hello session=" << s.id() << " uid=" << s.peer().uid
            << " namespace=\"" << name << "\"";
  s.layout = layout;
  FillHelloReply(joined.salt, out);
  return {};
}

Dispatcher::Outcome Dispatcher::CheckVersion(const Session& s, const wire::Hello& h) {
  if (h.protocol_version() == kProtocolVersion) return {};
  if (metrics_ != nullptr) metrics_->Refused(RefusalReason::kVersion);
  LOG(WARNING) << "event=connection_refused reason=version session=" << s.id()
               << " uid=" << s.peer().uid << " version=" << h.protocol_version();
  return {absl::FailedPreconditionError(absl::StrCat("protocol version ", h.protocol_version(),
                                                     " is not supported; this kvtierd speaks "
                                                     "version ",
                                                     kProtocolVersion)),
          /*close_connection=*/true};
}

absl::StatusOr<const NamespaceRule*> Dispatcher::Authorize(const Session& s,
                                                           const std::string& name) {
  const NamespaceRule* rule = FindRule(config_, name);
  if (rule != nullptr && Allowed(*rule, s.peer().uid, s.peer().gid, owner_uid_)) return rule;
  counters_.auth_refused.fetch_add(1, std::memory_order_relaxed);
  if (metrics_ != nullptr) {
    metrics_->Refused(rule == nullptr ? RefusalReason::kNamespace : RefusalReason::kCredentials);
  }
  LOG(WARNING) << "event=connection_refused reason="
               << (rule == nullptr ? "namespace" : "credentials") << " session=" << s.id()
               << " pid=" << s.peer().pid << " uid=" << s.peer().uid << " gid=" << s.peer().gid
               << " namespace=\"" << name << "\"";
  return absl::PermissionDeniedError(
      absl::StrCat("uid ", s.peer().uid, " gid ", s.peer().gid, " may not use namespace '", name,
                   "'", rule == nullptr ? " (no namespace rule matches it)" : ""));
}

absl::StatusOr<Layout> Dispatcher::CheckHelloLayout(const wire::Layout& wire_layout,
                                                    const NamespaceRule& rule,
                                                    const std::string& name) const {
  LayoutSpec spec;
  spec.layers = wire_layout.layers();
  spec.kv_heads = wire_layout.kv_heads();
  spec.head_dim = wire_layout.head_dim();
  if (wire_layout.dtype() > static_cast<uint32_t>(DType::kFP8) ||
      wire_layout.tensor_layout() > static_cast<uint32_t>(kLastTensorLayout)) {
    return absl::InvalidArgumentError(absl::StrCat("layout dtype ", wire_layout.dtype(),
                                                   " or tensor_layout ",
                                                   wire_layout.tensor_layout(), " is unknown"));
  }
  spec.dtype = static_cast<DType>(wire_layout.dtype());
  spec.tokens_per_page = wire_layout.tokens_per_page();
  spec.tensor_layout = static_cast<TensorLayout>(wire_layout.tensor_layout());
  spec.num_blocks = wire_layout.num_blocks();
  absl::StatusOr<Layout> layout = Layout::Create(spec);
  if (!layout.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("layout: ", layout.status().message()));
  }
  if (layout->page_bytes() != store_.page_bytes()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "layout ", SpecString(spec), " makes pages of ", layout->page_bytes(),
        " bytes; this kvtierd stores pages of ", store_.page_bytes(), " (store.page_bytes)"));
  }
  if (rule.layout.has_value() && !SameShape(*rule.layout, spec)) {
    return absl::InvalidArgumentError(absl::StrCat("layout ", SpecString(spec),
                                                   " does not match namespace '", name, "' layout ",
                                                   SpecString(*rule.layout)));
  }
  return layout;
}

absl::StatusOr<Dispatcher::JoinedNamespace> Dispatcher::JoinNamespace(const Session& s,
                                                                      const std::string& name,
                                                                      const LayoutSpec& spec,
                                                                      const NamespaceRule& rule) {
  // Joining, registering and (in EndSession) retiring a namespace happen under mu_, so a
  // retirement never lands on a namespace a new session just joined.
  absl::MutexLock lock(&mu_);
  if (auto it = namespace_layouts_.find(name);
      it != namespace_layouts_.end() && !SameShape(it->second, spec)) {
    return absl::InvalidArgumentError(
        absl::StrCat("layout ", SpecString(spec), " does not match namespace '", name, "' layout ",
                     SpecString(it->second), " presented by its first worker"));
  }
  if (absl::Status joined = ledger_.Join(s.peer().uid, name); !joined.ok()) {
    LOG(WARNING) << "event=connection_refused reason=namespace_limit session=" << s.id()
                 << " uid=" << s.peer().uid << " namespace=\"" << name << "\"";
    return joined;
  }
  absl::StatusOr<NamespaceId> ns = store_.AddNamespace(name, rule.sink_slots);
  absl::StatusOr<PageKey> salt;
  if (ns.ok()) salt = store_.NamespaceSaltOf(*ns);
  if (!ns.ok() || !salt.ok()) {
    ledger_.Leave(s.peer().uid, name);
    return !ns.ok() ? ns.status() : salt.status();
  }
  namespace_layouts_.try_emplace(name, spec);
  return JoinedNamespace{*ns, *salt};
}

void Dispatcher::FillHelloReply(const PageKey& salt, wire::HelloReply& out) const {
  out.set_protocol_version(kProtocolVersion);
  out.set_salt_hi(salt.hi);
  out.set_salt_lo(salt.lo);
  out.set_page_bytes(store_.page_bytes());
  out.set_hbm_backend(std::string(store_.hbm_backend()));
  const LimitsConfig& l = config_.limits;
  out.set_max_message_bytes(l.max_message_bytes);
  out.set_max_inflight_ops(l.max_inflight_ops);
  out.set_max_pinned_pages(l.max_pinned_pages);
  out.set_max_batch_pages(l.max_batch_pages);
}

// ---- RegisterBuffers, Lookup ----

absl::Status Dispatcher::HandleRegister(Session& s, const wire::RegisterBuffers& r,
                                        std::vector<UniqueFd>& fds,
                                        wire::RegisterBuffersReply& out) {
  // Bounds the address space workers' declared buffer sizes can take (connection_limits.h).
  RETURN_IF_ERROR(ChargeRegisteredBytes(config_.limits, counters_, s, r));
  if (r.cuda_ipc_handles_size() > 0 || r.vmm_fds()) return RegisterGpu(s, r, fds, out);
  const Layout& layout = *s.layout;
  const size_t want = layout.buffer_count();
  if (fds.size() != want || static_cast<size_t>(r.sizes_size()) != want) {
    return absl::InvalidArgumentError(absl::StrCat("RegisterBuffers carries ", fds.size(),
                                                   " descriptors and ", r.sizes_size(),
                                                   " sizes; the layout needs ", want, " buffers"));
  }
  if (want > config_.limits.max_buffers) {
    return absl::ResourceExhaustedError(absl::StrCat(want, " buffers exceed limits.max_buffers (",
                                                     config_.limits.max_buffers, ")"));
  }
  bool all_sealed = true;
  for (size_t i = 0; i < want; ++i) {
    const uint64_t size = r.sizes(static_cast<int>(i));
    if (size < layout.buffer_bytes()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "buffer ", i, " of ", size, " bytes; the layout needs ", layout.buffer_bytes()));
    }
    struct stat st {};
    if (::fstat(fds[i].get(), &st) != 0 || !S_ISREG(st.st_mode)) {
      return absl::InvalidArgumentError(absl::StrCat("buffer ", i, " is not a memfd"));
    }
    if (static_cast<uint64_t>(st.st_size) < size) {
      return absl::InvalidArgumentError(
          absl::StrCat("buffer ", i, " claims ", size, " bytes but its memfd holds ", st.st_size));
    }
    // A mapped buffer that shrank would fault the daemon (SIGBUS) in the middle of a copy: only
    // buffers sealed against shrinking are mapped, the others are copied through their fds.
    absl::StatusOr<bool> sealed = SealedAgainstShrinking(fds[i].get());
    if (!sealed.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("buffer ", i, ": ", sealed.status().message()));
    }
    all_sealed = all_sealed && *sealed;
  }
  if (!all_sealed) {
    std::vector<FdBuffer> by_fd;
    by_fd.reserve(want);
    for (size_t i = 0; i < want; ++i) {
      by_fd.push_back(FdBuffer{std::move(fds[i]), r.sizes(static_cast<int>(i))});
    }
    s.buffers = std::make_shared<const BufferSet>(std::move(by_fd), &counters_);
    out.set_buffers(static_cast<uint32_t>(want));
    return absl::OkStatus();
  }
  std::vector<Mapping> maps;
  maps.reserve(want);
  for (size_t i = 0; i < want; ++i) {
    ASSIGN_OR_RETURN(Mapping m,
                     Mapping::Map(fds[i].get(), r.sizes(static_cast<int>(i)), /*writable=*/true));
    maps.push_back(std::move(m));
  }
  s.buffers = std::make_shared<const BufferSet>(std::move(maps), &counters_);
  out.set_buffers(static_cast<uint32_t>(want));
  return absl::OkStatus();
}

absl::Status Dispatcher::RegisterGpu(Session& s, const wire::RegisterBuffers& r,
                                     std::vector<UniqueFd>& fds, wire::RegisterBuffersReply& out) {
  const size_t want = s.layout->buffer_count();
  if (want > config_.limits.max_buffers) {
    return absl::ResourceExhaustedError(absl::StrCat(want, " buffers exceed limits.max_buffers (",
                                                     config_.limits.max_buffers, ")"));
  }
  if (!r.vmm_fds() && !fds.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        fds.size(), " file descriptors attached to a RegisterBuffers of CUDA IPC handles"));
  }
  GpuBufferRequest g;
  g.ipc_handles.assign(r.cuda_ipc_handles().begin(), r.cuda_ipc_handles().end());
  if (r.vmm_fds()) g.vmm_fds = std::move(fds);
  g.offsets.assign(r.offsets().begin(), r.offsets().end());
  g.sizes.assign(r.sizes().begin(), r.sizes().end());
  g.allocation_bytes.assign(r.allocation_bytes().begin(), r.allocation_bytes().end());
  g.device_uuid = r.device_uuid();
  ASSIGN_OR_RETURN(std::shared_ptr<const GpuWorkerBuffers> opened,
                   gpu_->Open(*s.layout, std::move(g)));
  s.buffers = std::make_shared<const BufferSet>(std::move(opened), want, &counters_);
  out.set_buffers(static_cast<uint32_t>(want));
  return absl::OkStatus();
}

absl::Status Dispatcher::Keys(const google::protobuf::RepeatedField<uint64_t>& words,
                              std::vector<PageKey>& out) const {
  if (words.size() % 2 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("key_words holds ", words.size(), " words; keys are (hi, lo) pairs"));
  }
  const size_t n = static_cast<size_t>(words.size()) / 2;
  if (n > config_.limits.max_batch_pages) {
    return absl::ResourceExhaustedError(
        absl::StrCat(n, " keys in one request exceed limits.max_batch_pages (",
                     config_.limits.max_batch_pages, ")"));
  }
  out.resize(n);
  // words.size() is an int, so every index below it fits one.
  for (int i = 0; i < static_cast<int>(n); ++i) out[i] = PageKey{words[2 * i], words[2 * i + 1]};
  return absl::OkStatus();
}

absl::Status Dispatcher::HandleLookup(Session& s, const wire::Lookup& r, wire::LookupReply& out) {
  thread_local std::vector<PageKey> keys;
  RETURN_IF_ERROR(Keys(r.key_words(), keys));
  counters_.lookups.fetch_add(1, std::memory_order_relaxed);
  const LookupResult found = store_.LookupPrefix(s.ns, keys);
  out.set_prefix_pages(static_cast<uint32_t>(found.prefix_pages));
  std::string* tiers = out.mutable_tiers();
  tiers->resize(found.prefix_pages);
  std::array<uint64_t, kNumTiers> hits{};
  for (size_t i = 0; i < found.prefix_pages; ++i) {
    (*tiers)[i] = static_cast<char>(found.tiers[i]);
    ++hits[TierIndex(found.tiers[i])];
  }
  if (metrics_ != nullptr) {
    const uint64_t tokens = s.layout->spec().tokens_per_page;
    for (Tier t : kAllTiers) {
      if (hits[TierIndex(t)] > 0) metrics_->HitTokens(t, hits[TierIndex(t)] * tokens);
    }
    if (keys.size() > found.prefix_pages) {
      metrics_->MissTokens((keys.size() - found.prefix_pages) * tokens);
    }
  }
  // No DRAM slot is ever named to a worker (the pool is not shared): every page is "not in DRAM".
  if (r.with_dram_slots()) {
    for (size_t i = 0; i < found.prefix_pages; ++i) out.add_dram_slots(0xffffffffu);
  }
  ExtendLookupFromCluster(s.namespace_name, s.ns, keys, found.prefix_pages, r.with_dram_slots(),
                          out);
  return absl::OkStatus();
}

// ---- Load and Store ----

// Everything a Load or Store needs, owned by it (the request is reused once Handle returns), and
// the reply it builds while it runs on the executor.
struct Dispatcher::LoadStoreOp {
  std::shared_ptr<Session> session;
  std::shared_ptr<const BufferSet> buffers;
  Layout layout;
  NamespaceId ns = 0;
  uint64_t id = 0;
  bool is_store = false;
  std::vector<PageKey> keys;
  std::vector<uint32_t> blocks;
  PageKey parent;
  uint32_t first_position = 0;
  std::string class_hints;
  wire::AttentionStats stats;
  uint64_t submitted_ns = 0;
  bool reply_when_enqueued = false;  // GPU buffers: answer before the copies land
  bool prefix_only = false;          // GPU buffers: load the longest cached prefix only
  std::string wait_event;            // GPU buffers: the worker's event a Store waits on
  std::optional<int> hbm_device;     // GPU buffers: the worker's GPU, where its pages go in HBM
  std::string ns_name;               // for the cluster hooks

  // The reply, filled page by page.
  wire::Response resp;
  uint32_t ok = 0;
  bool sent = false;

  wire::PageStatusReply& pages() { return *resp.mutable_pages(); }

  // Page i's outcome: its code and tier, and the first error's message.
  void Record(size_t i, const absl::StatusOr<Tier>& tier) {
    pages().mutable_codes()->Set(static_cast<int>(i), static_cast<int32_t>(tier.status().code()));
    if (tier.ok()) {
      (*pages().mutable_tiers())[i] = static_cast<char>(*tier);
      ++ok;
    } else if (pages().first_error().empty()) {
      pages().set_first_error(absl::StrCat("page ", i, ": ", tier.status().message()));
    }
  }

  PutOptions PutOptionsFor(size_t i) const {
    PutOptions po;
    po.parent = i == 0 ? parent : keys[i - 1];
    po.position = first_position + static_cast<uint32_t>(i);
    if (!class_hints.empty()) {
      po.class_hint = static_cast<PageClass>(static_cast<uint8_t>(class_hints[i]));
    }
    po.hbm_device = hbm_device;
    return po;
  }
};

absl::Status Dispatcher::SubmitLoadStore(const std::shared_ptr<Session>& session,
                                         const wire::Request& req) {
  Session& s = *session;
  const bool is_store = req.body_case() == wire::Request::kStore;
  ASSIGN_OR_RETURN(std::vector<PageKey> keys, CheckLoadStore(s, req));
  RETURN_IF_ERROR(AdmitOp(s, is_store));
  const auto& blocks = is_store ? req.store().block_ids() : req.load().block_ids();
  auto op = std::make_shared<LoadStoreOp>(
      LoadStoreOp{.session = session,
                  .buffers = s.buffers,
                  .layout = *s.layout,
                  .ns = s.ns,
                  .id = req.id(),
                  .is_store = is_store,
                  .keys = std::move(keys),
                  .blocks = std::vector<uint32_t>(blocks.begin(), blocks.end())});
  if (is_store) {
    op->parent = PageKey{req.store().parent_hi(), req.store().parent_lo()};
    op->first_position = req.store().first_position();
    op->class_hints = req.store().class_hints();
    op->stats = req.store().stats();
    op->wait_event = req.store().wait_event_handle();
  } else {
    op->reply_when_enqueued = req.load().reply_when_enqueued();
    op->prefix_only = req.load().prefix_only();
  }
  op->submitted_ns = SteadyClock::Get()->NowNs();
  op->ns_name = s.namespace_name;
  executor_([this, op] { RunLoadStore(*op); });
  return absl::OkStatus();
}

absl::StatusOr<std::vector<PageKey>> Dispatcher::CheckLoadStore(const Session& s,
                                                                const wire::Request& req) const {
  const bool is_store = req.body_case() == wire::Request::kStore;
  const auto& words = is_store ? req.store().key_words() : req.load().key_words();
  const auto& blocks = is_store ? req.store().block_ids() : req.load().block_ids();
  if (s.buffers == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat(is_store ? "Store" : "Load", " before RegisterBuffers"));
  }
  if (!is_store && req.load().prefix_only() && s.buffers->gpu() == nullptr) {
    return absl::InvalidArgumentError(
        "Load prefix_only is for GPU buffers; host workers Lookup, then Load the prefix");
  }
  std::vector<PageKey> keys;
  RETURN_IF_ERROR(Keys(words, keys));
  if (static_cast<size_t>(blocks.size()) != keys.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat(keys.size(), " keys but ", blocks.size(), " block ids"));
  }
  if (is_store) {
    const wire::Store& st = req.store();
    if (!st.class_hints().empty() && st.class_hints().size() != keys.size()) {
      return absl::InvalidArgumentError(
          absl::StrCat(st.class_hints().size(), " class hints for ", keys.size(), " pages"));
    }
    for (char c : st.class_hints()) {
      if (!wire::PageClassCode_IsValid(static_cast<uint8_t>(c))) {
        return absl::InvalidArgumentError(
            absl::StrCat("class hint ", static_cast<int>(c), " is not UNKNOWN, SINK or SEMANTIC"));
      }
    }
    RETURN_IF_ERROR(CheckStats(st.stats(), keys.size()));
  }
  return keys;
}

absl::Status Dispatcher::AdmitOp(Session& s, bool is_store) {
  const uint32_t inflight = s.inflight.load(std::memory_order_relaxed);
  if (inflight >= config_.limits.max_inflight_ops) {
    return QuotaExceeded(QuotaKind::kInflightOps,
                         absl::StrCat(inflight,
                                      " operations in flight on this connection; "
                                      "limits.max_inflight_ops is ",
                                      config_.limits.max_inflight_ops));
  }
  s.inflight.fetch_add(1, std::memory_order_relaxed);
  counters_.inflight_ops.fetch_add(1, std::memory_order_relaxed);
  (is_store ? counters_.stores : counters_.loads).fetch_add(1, std::memory_order_relaxed);
  return absl::OkStatus();
}

void Dispatcher::RunLoadStore(LoadStoreOp& op) {
  Session& s = *op.session;
  if (!s.ended.load(std::memory_order_acquire)) {
    op.resp.set_id(op.id);
    const size_t n = op.keys.size();
    op.pages().mutable_codes()->Resize(static_cast<int>(n), 0);
    op.pages().mutable_tiers()->assign(n, static_cast<char>(0xff));
    if (const GpuWorkerBuffers* gpu = op.buffers->gpu(); gpu != nullptr) {
      CopyGpu(op, *gpu);
    } else if (op.is_store && op.buffers->fd_buffers().empty()) {
      StoreMapped(op);
    } else {
      CopyPerPage(op);
    }
    if (!op.sent) SendPages(op);
  } else {
    // The worker is gone: nobody will read these pages, so the copy is not made.
    counters_.ops_cancelled.fetch_add(1, std::memory_order_relaxed);
  }
  s.inflight.fetch_sub(1, std::memory_order_relaxed);
  counters_.inflight_ops.fetch_sub(1, std::memory_order_relaxed);
}

void Dispatcher::CopyGpu(LoadStoreOp& op, const GpuWorkerBuffers& gpu) {
  op.pages().set_cuda_event_handle(gpu.event_handle());
  const GpuPageBatch batch{op.ns, &op.layout, op.keys, op.blocks, op.prefix_only, op.submitted_ns};
  auto record = [&op](size_t i, const absl::StatusOr<Tier>& tier) { op.Record(i, tier); };
  if (op.is_store) {
    // The pages go to the HBM pool on the worker's own GPU when it has room.
    op.hbm_device = gpu.device();
    const GpuStoreHooks hooks{.options = [&op](size_t i) { return op.PutOptionsFor(i); },
                              .after =
                                  [this, &op](size_t i, absl::StatusOr<Tier> tier) {
                                    return AfterStore(op, i, std::move(tier));
                                  }};
    gpu_->Store(gpu, batch, op.wait_event, hooks, record);
  } else {
    gpu_->Load(gpu, batch, op.reply_when_enqueued, record, [this, &op] { SendPages(op); });
  }
}

void Dispatcher::StoreMapped(LoadStoreOp& op) {
  // Mapped worker buffers: the whole request is one PutBatch, so each tier is written once (an
  // NVMe batch pays one fdatasync and one index sync, not one per page).
  const size_t n = op.keys.size();
  const size_t per_page = op.layout.pieces_per_page();
  std::vector<Piece> pieces;
  std::vector<ConstBuffer> src;
  src.reserve(n * per_page);
  std::vector<std::pair<size_t, size_t>> spans(n);  // (first piece, pieces) of each page
  std::vector<absl::StatusOr<Tier>> outcome(n);
  std::vector<PutRequest> batch;
  std::vector<size_t> batched;  // which page each batch entry is
  for (size_t i = 0; i < n; ++i) {
    pieces.clear();
    if (absl::Status placed = op.layout.AppendPieces(op.blocks[i], pieces); !placed.ok()) {
      outcome[i] = placed;
      continue;
    }
    spans[i] = {src.size(), pieces.size()};
    for (const Piece& p : pieces) {
      src.push_back({op.buffers->base(p.buffer) + p.offset, p.length});
    }
    batched.push_back(i);
  }
  batch.reserve(batched.size());
  for (size_t i : batched) {  // spans into `src` once it no longer grows
    batch.push_back(PutRequest{op.keys[i],
                               absl::MakeConstSpan(src).subspan(spans[i].first, spans[i].second),
                               op.PutOptionsFor(i)});
  }
  std::vector<absl::StatusOr<Tier>> results(batch.size());
  store_.PutBatch(op.ns, batch, absl::MakeSpan(results));
  for (size_t k = 0; k < batched.size(); ++k) {
    outcome[batched[k]] = AfterStore(op, batched[k], std::move(results[k]));
  }
  for (size_t i = 0; i < n; ++i) op.Record(i, outcome[i]);
}

void Dispatcher::CopyPerPage(LoadStoreOp& op) {
  std::vector<Piece> pieces;
  pieces.reserve(op.layout.pieces_per_page());
  // Loads into mapped buffers are read as one GetBatch (one backend call per tier); the pages of
  // fd buffers go one by one through a staging page.
  std::vector<size_t> mapped;
  std::vector<std::vector<MutableBuffer>> dsts;
  for (size_t i = 0; i < op.keys.size(); ++i) {
    pieces.clear();
    const absl::Status placed = op.layout.AppendPieces(op.blocks[i], pieces);
    if (!placed.ok()) {
      op.Record(i, placed);
    } else if (!op.buffers->fd_buffers().empty()) {
      op.Record(i, CopyThroughFds(op, i, pieces));
    } else {  // a load into mapped buffers (their stores are batched: StoreMapped)
      std::vector<MutableBuffer>& dst = dsts.emplace_back();
      dst.reserve(pieces.size());
      for (const Piece& p : pieces) {
        dst.push_back({op.buffers->base(p.buffer) + p.offset, p.length});
      }
      mapped.push_back(i);
    }
  }
  if (mapped.empty()) return;
  std::vector<PageKey> keys;
  std::vector<absl::Span<const MutableBuffer>> spans;
  for (size_t k = 0; k < mapped.size(); ++k) {
    keys.push_back(op.keys[mapped[k]]);
    spans.emplace_back(dsts[k]);
  }
  std::vector<absl::StatusOr<Tier>> local(mapped.size());
  store_.GetBatch(op.ns, keys, spans, absl::MakeSpan(local));
  ClusterLoadBatch misses;  // local misses, fetched from peers together
  for (size_t k = 0; k < mapped.size(); ++k) {
    if (!misses.Defer(mapped[k], keys[k], spans[k], local[k])) op.Record(mapped[k], local[k]);
  }
  misses.Finish(op.ns_name, op.ns,
                [&op](size_t i, const absl::StatusOr<Tier>& tier) { op.Record(i, tier); });
}

absl::StatusOr<Tier> Dispatcher::CopyThroughFds(LoadStoreOp& op, size_t i,
                                                absl::Span<const Piece> pieces) {
  // Buffers that may shrink (daemon/fd_buffer.h): the page is staged here and its pieces are
  // copied with pread/pwrite, so a shrink fails the page instead of faulting the daemon.
  thread_local std::vector<std::byte> staging;
  staging.resize(op.layout.page_bytes());
  const MutableBuffer page{staging.data(), staging.size()};
  const ConstBuffer page_in{staging.data(), staging.size()};
  const absl::Span<const FdBuffer> buffers = op.buffers->fd_buffers();
  if (op.is_store) {
    RETURN_IF_ERROR(ReadPieces(buffers, pieces, page));
    return PutPage(op, i, {&page_in, 1});
  }
  ASSIGN_OR_RETURN(const Tier tier, LoadFromCluster(op.ns_name, op.ns, op.keys[i], {&page, 1},
                                                    store_.Get(op.ns, op.keys[i], {&page, 1})));
  RETURN_IF_ERROR(WritePieces(buffers, pieces, page_in));
  return tier;
}

absl::StatusOr<Tier> Dispatcher::PutPage(LoadStoreOp& op, size_t i,
                                         absl::Span<const ConstBuffer> src) {
  return AfterStore(op, i, store_.Put(op.ns, op.keys[i], src, op.PutOptionsFor(i)));
}

absl::StatusOr<Tier> Dispatcher::AfterStore(LoadStoreOp& op, size_t i, absl::StatusOr<Tier> tier) {
  if (tier.ok()) AnnounceToCluster(op.ns_name, op.ns, op.keys[i]);
  if (tier.ok() && HasStats(op.stats) &&
      store_.ReportAttention(op.ns, op.keys[i], SampleAt(op.stats, static_cast<int>(i))).ok()) {
    // The page is stored; a racing eviction only loses the sample or its class.
    ClassifyAfterReport(store_, op.ns, op.keys[i], classifier_).IgnoreError();
  }
  return tier;
}

void Dispatcher::SendPages(LoadStoreOp& op) {
  op.pages().set_ok_pages(op.ok);
  if (metrics_ != nullptr) {
    metrics_->Request(op.is_store ? RpcOp::kStore : RpcOp::kLoad, SecondsSince(op.submitted_ns),
                      op.ok == op.keys.size());
  }
  op.session->Send(op.resp);
  op.sent = true;
}

// ---- Report, Pin, Unpin, Release ----

absl::Status Dispatcher::HandleReport(Session& s, const wire::Report& r, wire::CountReply& out) {
  std::vector<PageKey> keys;
  RETURN_IF_ERROR(Keys(r.key_words(), keys));
  RETURN_IF_ERROR(CheckStats(r.stats(), keys.size()));
  uint32_t applied = 0;
  for (size_t i = 0; i < keys.size(); ++i) {
    if (store_.ReportAttention(s.ns, keys[i], SampleAt(r.stats(), static_cast<int>(i))).ok()) {
      ClassifyAfterReport(store_, s.ns, keys[i], classifier_).IgnoreError();
      ++applied;
    }
  }
  out.set_pages(applied);
  return absl::OkStatus();
}

absl::Status Dispatcher::HandlePin(Session& s, const wire::Pin& r) {
  std::vector<PageKey> keys;
  RETURN_IF_ERROR(Keys(r.key_words(), keys));
  if (s.pinned + keys.size() > config_.limits.max_pinned_pages) {
    return QuotaExceeded(
        QuotaKind::kPinnedPages,
        absl::StrCat("pinning ", keys.size(), " more pages would hold ", s.pinned + keys.size(),
                     "; limits.max_pinned_pages is ", config_.limits.max_pinned_pages));
  }
  const auto n = static_cast<uint32_t>(keys.size());
  {
    absl::MutexLock lock(&mu_);
    if (absl::Status st = ledger_.AddPins(s.peer().uid, s.ns, n); !st.ok()) {
      return QuotaExceeded(QuotaKind::kPinnedPages, st.message());
    }
  }
  if (absl::Status st = store_.Pin(s.ns, keys); !st.ok()) {
    absl::MutexLock lock(&mu_);
    ledger_.RemovePins(s.peer().uid, s.ns, n);
    return st;
  }
  for (const PageKey& k : keys) ++s.pins[k];
  s.pinned += static_cast<uint32_t>(keys.size());
  counters_.pinned_pages.fetch_add(static_cast<uint32_t>(keys.size()), std::memory_order_relaxed);
  return absl::OkStatus();
}

absl::Status Dispatcher::HandleUnpin(Session& s, const wire::Unpin& r) {
  std::vector<PageKey> keys;
  RETURN_IF_ERROR(Keys(r.key_words(), keys));
  absl::flat_hash_map<PageKey, uint32_t> want;
  for (const PageKey& k : keys) ++want[k];
  for (const auto& [k, n] : want) {
    auto it = s.pins.find(k);
    if (it == s.pins.end() || it->second < n) {
      return absl::FailedPreconditionError(
          absl::StrCat("page ", k.ToHex(), " is not pinned ", n, " times by this connection"));
    }
  }
  RETURN_IF_ERROR(store_.Unpin(s.ns, keys));
  for (const auto& [k, n] : want) {
    auto it = s.pins.find(k);
    if ((it->second -= n) == 0) s.pins.erase(it);
  }
  s.pinned -= static_cast<uint32_t>(keys.size());
  counters_.pinned_pages.fetch_sub(static_cast<uint32_t>(keys.size()), std::memory_order_relaxed);
  absl::MutexLock lock(&mu_);
  ledger_.RemovePins(s.peer().uid, s.ns, static_cast<uint32_t>(keys.size()));
  return absl::OkStatus();
}

absl::Status Dispatcher::HandleRelease(Session& s, const wire::Release& r, wire::CountReply& out) {
  std::vector<PageKey> keys;
  RETURN_IF_ERROR(Keys(r.key_words(), keys));
  std::vector<PageKey> unpin;
  if (keys.empty()) {
    for (const auto& [k, n] : s.pins) unpin.insert(unpin.end(), n, k);
    s.pins.clear();
  } else {
    for (const PageKey& k : keys) {
      if (auto it = s.pins.find(k); it != s.pins.end()) {
        unpin.insert(unpin.end(), it->second, k);
        s.pins.erase(it);
      }
    }
  }
  // Pins held by a session are store pins on pages that cannot be evicted, so Unpin succeeds.
  RETURN_IF_ERROR(store_.Unpin(s.ns, unpin));
  s.pinned -= static_cast<uint32_t>(unpin.size());
  counters_.pinned_pages.fetch_sub(static_cast<uint32_t>(unpin.size()), std::memory_order_relaxed);
  {
    absl::MutexLock lock(&mu_);
    ledger_.RemovePins(s.peer().uid, s.ns, static_cast<uint32_t>(unpin.size()));
  }
  out.set_pages(static_cast<uint32_t>(unpin.size()));
  return absl::OkStatus();
}

void Dispatcher::EndSession(Session& s) {
  s.ended.store(true, std::memory_order_release);
  const bool held = s.pinned > 0 || s.inflight.load(std::memory_order_relaxed) > 0;
  if (s.pinned > 0) {
    wire::Release all;
    wire::CountReply ignored;
    if (absl::Status st = HandleRelease(s, all, ignored); !st.ok()) {
      LOG(ERROR) << "event=lease_release_failed session=" << s.id() << " error=\"" << st.ToString()
                 << "\"";
    }
  }
  if (held) counters_.leases_expired.fetch_add(1, std::memory_order_relaxed);
  if (s.hello_done) {
    // The namespace's last session: its sink reserve goes back (its pages stay cached), and it
    // no longer counts against limits.max_namespaces or its uids' share.
    absl::MutexLock lock(&mu_);
    if (ledger_.Leave(s.peer().uid, s.namespace_name)) store_.RetireNamespace(s.ns);
  }
  LOG(INFO) << "event=session_close session=" << s.id() << " uid=" << s.peer().uid
            << " namespace=\"" << s.namespace_name << "\" lease_held=" << (held ? 1 : 0);
  // Queued operations see `ended` and are cancelled; running ones keep their own reference.
  s.buffers.reset();
}

void Dispatcher::FillStatus(wire::StatusReply& out) const {
  out.set_version("kvtier 0.1.0");
  out.set_protocol_version(kProtocolVersion);
  out.set_pid(static_cast<uint32_t>(::getpid()));
  out.set_uptime_ms((SteadyClock::Get()->NowNs() - start_ns_) / 1'000'000);
  out.set_socket_path(config_.socket_path);
  out.set_hbm_backend(std::string(store_.hbm_backend()));
  out.set_policy(std::string(store_.policy_name()));
  out.set_page_bytes(store_.page_bytes());
  for (Tier t : kAllTiers) {
    if (store_.has_tier(t)) FillTier(store_, t, *out.add_tiers());
  }
  absl::MutexLock lock(&mu_);
  out.set_namespaces(static_cast<uint32_t>(ledger_.live_namespaces()));
}

void Dispatcher::FillStats(wire::StatsReply& out) const {
  for (Tier t : kAllTiers) {
    if (store_.has_tier(t)) FillTier(store_, t, *out.add_tiers());
  }
  const StoreCounters c = store_.Counters();
  out.set_pages(store_.page_count());
  out.set_misses(c.misses);
  out.set_puts(c.puts);
  out.set_put_duplicates(c.put_duplicates);
  auto r = [](const auto& a) { return a.load(std::memory_order_relaxed); };
  out.set_sessions(r(counters_.sessions));
  out.set_pinned_pages(r(counters_.pinned_pages));
  out.set_inflight_ops(r(counters_.inflight_ops));
  out.set_registered_buffers(r(counters_.registered_buffers));
  out.set_connections_total(r(counters_.connections_total));
  out.set_auth_refused(r(counters_.auth_refused));
  out.set_bad_requests(r(counters_.bad_requests));
  out.set_connections_closed_untrusted(r(counters_.closed_untrusted));
  out.set_leases_expired(r(counters_.leases_expired));
  out.set_ops_cancelled(r(counters_.ops_cancelled));
  out.set_lookups(r(counters_.lookups));
  out.set_loads(r(counters_.loads));
  out.set_stores(r(counters_.stores));
  FillConnectionStats(counters_, out);
}

}  // namespace kvtier
