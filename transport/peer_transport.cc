#include "transport/peer_transport.h"

#include <arpa/inet.h>
#include <glog/logging.h>
#include <netdb.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <future>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"

namespace kvtier {

// Shared by the caller's GetBatch and the progress thread's pending reads.
struct GetBatch::State {
  explicit State(uint32_t n) : groups(n), remaining(new std::atomic<uint32_t>[n]), status(n) {
    for (uint32_t i = 0; i < n; ++i) remaining[i].store(0, std::memory_order_relaxed);
  }
  // Progress thread: one read of `group` finished.
  void Complete(uint32_t group, const absl::Status& s) {
    absl::MutexLock lock(&mu);
    if (!s.ok() && status[group].ok()) status[group] = s;
    remaining[group].fetch_sub(1, std::memory_order_release);
  }
  const uint32_t groups;
  absl::Mutex mu;
  // Reads of each group not yet finished; the waiter spins on it before taking mu.
  std::unique_ptr<std::atomic<uint32_t>[]> remaining;
  std::vector<absl::Status> status ABSL_GUARDED_BY(mu);  // first failure of each group
  // ---- progress thread only ----
  size_t in_flight = 0;
  std::vector<std::shared_ptr<const ucx::RemoteKey>> rkeys;
};

GetBatch::~GetBatch() {
  for (uint32_t g = 0; g < state_->groups; ++g) Wait(g).IgnoreError();  // draining only
}

absl::Status GetBatch::Wait(uint32_t group) {
  std::atomic<uint32_t>& left = state_->remaining[group];
  if (left.load(std::memory_order_acquire) != 0 && spin_us_ > 0) {
    const absl::Time until = absl::Now() + absl::Microseconds(spin_us_);
    while (left.load(std::memory_order_acquire) != 0 && absl::Now() < until) {
    }
  }
  absl::MutexLock lock(&state_->mu);
  state_->mu.Await(absl::Condition(
      +[](std::atomic<uint32_t>* l) { return l->load(std::memory_order_acquire) == 0; }, &left));
  return state_->status[group];
}

namespace {

constexpr uint16_t kAmId = 0x4b56;  // every peer message travels on this active-message id

// host:port -> sockaddr (IPv4 or IPv6; names resolved once, at connect time).
absl::StatusOr<sockaddr_storage> Resolve(const std::string& address, socklen_t* len) {
  const size_t colon = address.rfind(':');
  int port = 0;
  if (colon == std::string::npos || !absl::SimpleAtoi(address.substr(colon + 1), &port) ||
      port < 0 || port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("peer address '", address, "' is not host:port"));
  }
  std::string host = address.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  addrinfo* res = nullptr;
  const int rc = ::getaddrinfo(host.empty() ? nullptr : host.c_str(), std::to_string(port).c_str(),
                               &hints, &res);
  if (rc != 0 || res == nullptr) {
    return absl::UnavailableError(
        absl::StrCat("cannot resolve '", address, "': ", ::gai_strerror(rc)));
  }
  sockaddr_storage out{};
  std::memcpy(&out, res->ai_addr, res->ai_addrlen);
  *len = res->ai_addrlen;
  ::freeaddrinfo(res);
  return out;
}

std::string AddressString(const sockaddr_storage& a) {
  char host[INET6_ADDRSTRLEN] = "?";
  int port = 0;
  if (a.ss_family == AF_INET) {
    const auto* in = reinterpret_cast<const sockaddr_in*>(&a);
    ::inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
    port = ntohs(in->sin_port);
  } else if (a.ss_family == AF_INET6) {
    const auto* in6 = reinterpret_cast<const sockaddr_in6*>(&a);
    ::inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
    port = ntohs(in6->sin6_port);
  }
  return absl::StrCat(host, ":", port);
}

}  // namespace

class PeerTransport::Impl {
 public:
  Impl(const PeerTransportOptions& options, Handler handler)
      : options_(options), handler_(std::move(handler)) {}

  absl::StatusOr<int> Start() {
    absl::StatusOr<ucx::Context> ctx = ucx::Context::Create(options_.ucx);
    if (!ctx.ok()) return ctx.status();
    context_ = std::make_shared<const ucx::Context>(*std::move(ctx));
    absl::StatusOr<ucx::Worker> w = ucx::Worker::Create(*context_);
    if (!w.ok()) return w.status();
    worker_.emplace(*std::move(w));
    wake_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (wake_fd_ < 0) return absl::ErrnoToStatus(errno, "eventfd");
    if (ucp_worker_get_efd(worker_->get(), &ucx_fd_) != UCS_OK) {
      // Without wakeup support the loop polls every millisecond instead of sleeping.
      LOG(WARNING) << "event=ucx_no_wakeup_fd fallback=poll_1ms";
      ucx_fd_ = -1;
    }
    ucp_am_handler_param_t am{};
    am.field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID | UCP_AM_HANDLER_PARAM_FIELD_CB |
                    UCP_AM_HANDLER_PARAM_FIELD_ARG | UCP_AM_HANDLER_PARAM_FIELD_FLAGS;
    am.id = kAmId;
    am.flags = UCP_AM_FLAG_WHOLE_MSG;
    am.cb = &Impl::OnAm;
    am.arg = this;
    if (ucs_status_t s = ucp_worker_set_am_recv_handler(worker_->get(), &am); s != UCS_OK) {
      return ucx::ToStatus(s, "ucp_worker_set_am_recv_handler");
    }
    socklen_t len = 0;
    absl::StatusOr<sockaddr_storage> addr = Resolve(options_.listen_address, &len);
    if (!addr.ok()) return addr.status();
    ucp_listener_params_t lp{};
    lp.field_mask = UCP_LISTENER_PARAM_FIELD_SOCK_ADDR | UCP_LISTENER_PARAM_FIELD_CONN_HANDLER;
    lp.sockaddr.addr = reinterpret_cast<const sockaddr*>(&*addr);
    lp.sockaddr.addrlen = len;
    lp.conn_handler.cb = &Impl::OnConnRequest;
    lp.conn_handler.arg = this;
    ucp_listener_h lh = nullptr;
    if (ucs_status_t s = ucp_listener_create(worker_->get(), &lp, &lh); s != UCS_OK) {
      return ucx::ToStatus(s, absl::StrCat("UCP listener on '", options_.listen_address, "'"));
    }
    listener_ = ucx::Listener(lh);
    ucp_listener_attr_t attr{};
    attr.field_mask = UCP_LISTENER_ATTR_FIELD_SOCKADDR;
    if (ucs_status_t s = ucp_listener_query(lh, &attr); s != UCS_OK) {
      return ucx::ToStatus(s, "ucp_listener_query");
    }
    const int port = attr.sockaddr.ss_family == AF_INET6
                         ? ntohs(reinterpret_cast<sockaddr_in6*>(&attr.sockaddr)->sin6_port)
                         : ntohs(reinterpret_cast<sockaddr_in*>(&attr.sockaddr)->sin_port);
    progress_ = std::thread([this] { ProgressLoop(); });
    for (uint32_t i = 0; i < std::max<uint32_t>(1, options_.handler_threads); ++i) {
      handlers_.emplace_back([this] { HandlerLoop(); });
    }
    return port;
  }

  ~Impl() {
    {
      absl::MutexLock lock(&handler_mu_);
      handler_stop_ = true;
    }
    for (std::thread& t : handlers_) t.join();
    if (progress_.joinable()) {
      stop_.store(true, std::memory_order_release);
      Wake();
      progress_.join();
    }
    listener_.Reset();
    if (wake_fd_ >= 0) ::close(wake_fd_);
    worker_.reset();  // before the context it came from
  }

  // ---- any thread ----
  absl::StatusOr<peer::Message> Call(const std::string& peer_addr, peer::Message request,
                                     absl::Duration timeout) {
    request.request_id = next_request_.fetch_add(1, std::memory_order_relaxed);
    absl::StatusOr<std::string> bytes = peer::Encode(request);
    if (!bytes.ok()) return bytes.status();
    return CallBytes(peer_addr, request.request_id, *std::move(bytes), timeout);
  }

  // Sends encoded bytes and waits for the reply that carries `id`.
  absl::StatusOr<peer::Message> CallBytes(const std::string& peer_addr, uint64_t id,
                                          std::string bytes, absl::Duration timeout) {
    auto promise = std::make_shared<std::promise<absl::StatusOr<peer::Message>>>();
    std::future<absl::StatusOr<peer::Message>> done = promise->get_future();
    const absl::Time deadline = absl::Now() + timeout;
    Post([this, peer_addr, id, deadline, promise, b = std::move(bytes)]() mutable {
      absl::StatusOr<ucp_ep_h> ep = Connect(peer_addr);
      if (!ep.ok()) {
        promise->set_value(ep.status());
        return;
      }
      calls_.emplace(id, PendingCall{std::move(*promise), deadline, *ep, peer_addr});
      if (absl::Status s = SendOn(*ep, std::move(b)); !s.ok()) FailCall(id, s);
    });
    return done.get();
  }

  absl::StatusOr<peer::Message> CallRaw(const std::string& peer_addr, std::string bytes,
                                        absl::Duration timeout) {
    const uint64_t id = next_request_.fetch_add(1, std::memory_order_relaxed);
    if (bytes.size() >= 16) std::memcpy(bytes.data() + 8, &id, sizeof(id));
    return CallBytes(peer_addr, id, std::move(bytes), timeout);
  }

  void Send(const std::string& peer_addr, const peer::Message& m) {
    absl::StatusOr<std::string> bytes = peer::Encode(m);
    if (!bytes.ok()) return;
    Post([this, peer_addr, b = *std::move(bytes)]() mutable {
      absl::StatusOr<ucp_ep_h> ep = Connect(peer_addr);
      if (ep.ok()) SendOn(*ep, std::move(b)).IgnoreError();  // best effort by contract
    });
  }

  absl::Status Get(const std::string& peer_addr, uint64_t remote_addr, absl::string_view rkey,
                   const ucx::Memory& local, size_t offset, size_t length, absl::Duration timeout) {
    if (offset > local.length() || length > local.length() - offset) {
      return absl::OutOfRangeError(absl::StrCat("get of ", length, " bytes at ", offset,
                                                " overruns a registered region of ",
                                                local.length()));
    }
    RemoteRead read;
    read.remote_addr = remote_addr;
    read.local = local.base() + offset;
    read.length = length;
    read.local_region = &local;
    absl::StatusOr<std::unique_ptr<GetBatch>> b =
        StartGets(peer_addr, {std::string(rkey)}, {read}, 1, timeout);
    if (!b.ok()) return b.status();
    return (*b)->Wait(0);
  }

  absl::StatusOr<std::unique_ptr<GetBatch>> StartGets(const std::string& peer_addr,
                                                      std::vector<std::string> rkeys,
                                                      std::vector<RemoteRead> reads,
                                                      uint32_t groups, absl::Duration timeout) {
    for (const RemoteRead& r : reads) {
      if (r.group >= groups || r.rkey_index >= rkeys.size()) {
        return absl::InvalidArgumentError(
            absl::StrCat("read of group ", r.group, " with remote key ", r.rkey_index,
                         " in a batch of ", groups, " groups and ", rkeys.size(), " keys"));
      }
    }
    auto state = std::make_shared<GetBatch::State>(groups);
    for (const RemoteRead& r : reads) state->remaining[r.group].fetch_add(1);
    state->in_flight = reads.size();
    const absl::Time deadline = absl::Now() + timeout;
    Post([this, peer_addr, state, deadline, keys = std::move(rkeys),
          rs = std::move(reads)]() mutable { IssueGets(peer_addr, state, keys, rs, deadline); });
    return std::make_unique<GetBatch>(std::move(state), options_.busy_poll_us);
  }

  void Disconnect(const std::string& peer_addr) {
    Post([this, peer_addr] {
      auto it = outgoing_.find(peer_addr);
      if (it != outgoing_.end()) CloseEp(it->second, absl::CancelledError("peer left"));
    });
  }

  absl::StatusOr<std::unique_ptr<ucx::Memory>> Register(void* base, size_t length) {
    return ucx::Memory::Register(context_, base, length);
  }
  absl::StatusOr<std::unique_ptr<ucx::Memory>> Allocate(size_t length) {
    return ucx::Memory::Allocate(context_, length);
  }

  absl::StatusOr<std::string> EndpointInfo(const std::string& peer_addr, absl::Duration timeout) {
    auto promise = std::make_shared<std::promise<absl::StatusOr<std::string>>>();
    std::future<absl::StatusOr<std::string>> done = promise->get_future();
    Post([this, peer_addr, promise] {
      absl::StatusOr<ucp_ep_h> ep = Connect(peer_addr);
      if (!ep.ok()) {
        promise->set_value(ep.status());
        return;
      }
      char* text = nullptr;
      size_t size = 0;
      FILE* f = ::open_memstream(&text, &size);
      if (f == nullptr) {
        promise->set_value(absl::ErrnoToStatus(errno, "open_memstream"));
        return;
      }
      ucp_ep_print_info(*ep, f);
      std::fclose(f);
      std::string out(text, size);
      std::free(text);
      promise->set_value(std::move(out));
    });
    if (done.wait_for(std::chrono::microseconds(absl::ToInt64Microseconds(timeout))) !=
        std::future_status::ready) {
      return absl::DeadlineExceededError(
          absl::StrCat("describing the endpoint to '", peer_addr, "'"));
    }
    return done.get();
  }

  absl::StatusOr<bool> Mappable(const std::string& peer_addr, std::string rkey,
                                uint64_t remote_addr, absl::Duration timeout) {
    auto promise = std::make_shared<std::promise<absl::StatusOr<bool>>>();
    std::future<absl::StatusOr<bool>> done = promise->get_future();
    Post([this, peer_addr, promise, remote_addr, k = std::move(rkey)] {
      absl::StatusOr<ucp_ep_h> ep = Connect(peer_addr);
      if (!ep.ok()) {
        promise->set_value(ep.status());
        return;
      }
      // Unpacking keeps only the memory domains this endpoint reaches; a pointer into the
      // region exists here only when one of them mapped the peer's segment (sysv, posix).
      absl::StatusOr<std::shared_ptr<const ucx::RemoteKey>> rk = RemoteKeyFor(*ep, k);
      if (!rk.ok()) {
        promise->set_value(rk.status());
        return;
      }
      void* local = nullptr;
      promise->set_value(ucp_rkey_ptr((*rk)->get(), remote_addr, &local) == UCS_OK);
    });
    if (done.wait_for(std::chrono::microseconds(absl::ToInt64Microseconds(timeout))) !=
        std::future_status::ready) {
      return absl::DeadlineExceededError(
          absl::StrCat("asking whether '", peer_addr, "' memory maps here"));
    }
    return done.get();
  }

  PeerTransportCounters Counters() {
    absl::MutexLock lock(&counters_mu_);
    return published_;
  }

 private:
  struct PendingCall {
    std::promise<absl::StatusOr<peer::Message>> promise;
    absl::Time deadline;
    ucp_ep_h ep;
    std::string peer;
  };
  struct PendingGet {
    std::shared_ptr<GetBatch::State> batch;
    uint32_t group;
    absl::Time deadline;
    ucp_ep_h ep;
    bool timed_out;
    Impl* impl;
    uint64_t id;
    size_t length = 0;
  };
  struct SendBuffer {
    std::string bytes;
  };
  struct Incoming {
    peer::Message message;
    ucp_ep_h from;
  };
  struct Conn {
    std::string peer;  // listen address for outgoing endpoints; client address for accepted
    bool outgoing;
    // Authentication (options_.secret set): messages wait in `queued` on an outgoing endpoint
    // until the acceptor proved it knows the secret; an accepted one takes only the handshake
    // until the connector did.
    bool authed = false;
    peer::ObjectId our_nonce, their_nonce;
    bool challenged = false;  // accepted: a challenge went out
    std::vector<std::string> queued;
    // Remote keys unpacked on this endpoint, by their packed bytes. A peer lends from a few
    // regions registered once, so their keys repeat; unpacking one again would map a shared-
    // memory segment again (and fault in every page of it on first touch). Bounded.
    absl::flat_hash_map<std::string, std::shared_ptr<const ucx::RemoteKey>> rkeys;
  };
  static constexpr size_t kMaxCachedRkeys = 32;

  // The unpacked form of `packed` on `ep`, from the endpoint's cache when it has it.
  absl::StatusOr<std::shared_ptr<const ucx::RemoteKey>> RemoteKeyFor(ucp_ep_h ep,
                                                                     const std::string& packed) {
    auto c = conns_.find(ep);
    if (c != conns_.end()) {
      if (auto it = c->second.rkeys.find(packed); it != c->second.rkeys.end()) return it->second;
    }
    absl::StatusOr<ucx::RemoteKey> rk = ucx::RemoteKey::Unpack(ep, packed);
    if (!rk.ok()) return rk.status();
    auto shared = std::make_shared<const ucx::RemoteKey>(*std::move(rk));
    if (c != conns_.end()) {
      if (c->second.rkeys.size() >= kMaxCachedRkeys) c->second.rkeys.clear();  // a bound
      c->second.rkeys.emplace(packed, shared);
    }
    return shared;
  }

  void Post(std::function<void()> fn) {
    {
      absl::MutexLock lock(&post_mu_);
      posted_.push_back(std::move(fn));
      has_posted_.store(true, std::memory_order_seq_cst);
    }
    // Paired with ProgressLoop: it announces it sleeps, then looks for work; we announce work,
    // then look whether it sleeps. One of the two sees the other (seq_cst), so no post is lost,
    // and a progress thread that is polling costs no syscall.
    if (sleeping_.load(std::memory_order_seq_cst)) Wake();
  }
  void Wake() {
    const uint64_t one = 1;
    [[maybe_unused]] ssize_t n = ::write(wake_fd_, &one, sizeof(one));
  }

  // ---- progress thread ----
  // One read of `batch` is over: the remote keys go with its last read (they belong to this
  // thread's worker), then its group learns the outcome.
  static void FinishRead(GetBatch::State& batch, uint32_t group, const absl::Status& s) {
    if (--batch.in_flight == 0) batch.rkeys.clear();
    batch.Complete(group, s);
  }

  void IssueGets(const std::string& peer_addr, const std::shared_ptr<GetBatch::State>& state,
                 const std::vector<std::string>& keys, const std::vector<RemoteRead>& reads,
                 absl::Time deadline) {
    absl::StatusOr<ucp_ep_h> ep = Connect(peer_addr);
    absl::Status failed = ep.status();
    if (failed.ok()) {
      for (const std::string& k : keys) {
        absl::StatusOr<std::shared_ptr<const ucx::RemoteKey>> rk = RemoteKeyFor(*ep, k);
        if (!rk.ok()) {
          failed = rk.status();
          break;
        }
        state->rkeys.push_back(*std::move(rk));
      }
    }
    for (const RemoteRead& r : reads) {
      if (!failed.ok()) {
        FinishRead(*state, r.group, failed);
        continue;
      }
      const uint64_t id = next_get_++;
      auto g = std::make_unique<PendingGet>(
          PendingGet{state, r.group, deadline, *ep, false, this, id, r.length});
      ucp_request_param_t p{};
      p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
      p.cb.send = &Impl::OnGetDone;
      p.user_data = g.get();
      if (r.local_region != nullptr) {
        p.op_attr_mask |= UCP_OP_ATTR_FIELD_MEMH;
        p.memh = r.local_region->memh();
      }
      ucs_status_ptr_t q =
          ucp_get_nbx(*ep, r.local, r.length, r.remote_addr, state->rkeys[r.rkey_index]->get(), &p);
      if (q == nullptr) {
        counters_.gets++;
        counters_.get_bytes += r.length;
        FinishRead(*state, r.group, absl::OkStatus());
      } else if (UCS_PTR_IS_ERR(q)) {
        FinishRead(*state, r.group, ucx::ToStatus(UCS_PTR_STATUS(q), "ucp_get_nbx"));
      } else {
        gets_.emplace(id, std::move(g));
      }
    }
    if (state->in_flight == 0) state->rkeys.clear();  // an empty batch
  }

  void ProgressLoop() {
    const absl::Duration spin = absl::Microseconds(options_.busy_poll_us);
    absl::Time last_work = absl::InfinitePast();
    while (true) {
      std::deque<std::function<void()>> work;
      if (has_posted_.load(std::memory_order_acquire)) {
        absl::MutexLock lock(&post_mu_);
        work.swap(posted_);
        has_posted_.store(false, std::memory_order_relaxed);
      }
      bool busy = !work.empty();
      for (auto& fn : work) fn();
      for (int i = 0; i < 1024 && ucp_worker_progress(worker_->get()) != 0; ++i) busy = true;
      CloseDeferred();
      CheckDeadlines();
      ReapClosing();
      Publish();
      if (stop_.load(std::memory_order_acquire)) break;
      // Busy-poll a short while after any work: the next message of an exchange usually
      // arrives within microseconds, and sleeping on the fd would cost a wakeup for it.
      const absl::Time now = absl::Now();
      if (busy) last_work = now;
      if (busy || now - last_work < spin) continue;
      if (ucx_fd_ >= 0) {
        if (ucp_worker_arm(worker_->get()) == UCS_ERR_BUSY) continue;
      }
      sleeping_.store(true, std::memory_order_seq_cst);
      if (has_posted_.load(std::memory_order_seq_cst)) {
        sleeping_.store(false, std::memory_order_relaxed);
        continue;
      }
      pollfd fds[2] = {{wake_fd_, POLLIN, 0}, {ucx_fd_, POLLIN, 0}};
      const bool waiting = !calls_.empty() || !gets_.empty() || !closing_.empty();
      const int timeout_ms = ucx_fd_ < 0 ? 1 : waiting ? 10 : 200;
      ::poll(fds, ucx_fd_ >= 0 ? 2 : 1, timeout_ms);
      sleeping_.store(false, std::memory_order_relaxed);
      uint64_t drained;
      [[maybe_unused]] ssize_t n = ::read(wake_fd_, &drained, sizeof(drained));
      last_work = absl::Now();  // woken: whatever woke us likely has a follow-up
    }
    Shutdown();
  }

  // Closes every endpoint and fails whatever is in flight; returns once UCX has completed every
  // request (gets included), so no destination is written after the transport is gone.
  void Shutdown() {
    std::deque<std::function<void()>> work;
    {
      absl::MutexLock lock(&post_mu_);
      work.swap(posted_);
    }
    for (auto& fn : work) fn();  // connects fail now (stop_ is set): every promise is answered
    std::vector<ucp_ep_h> all;
    for (const auto& [ep, c] : conns_) all.push_back(ep);
    for (ucp_ep_h ep : all) CloseEp(ep, absl::CancelledError("transport shutting down"));
    for (auto& [id, c] : calls_) c.promise.set_value(absl::CancelledError("transport stopped"));
    calls_.clear();
    const absl::Time give_up = absl::Now() + absl::Seconds(10);
    while ((!closing_.empty() || !gets_.empty()) && absl::Now() < give_up) {
      ucp_worker_progress(worker_->get());
      ReapClosing();
    }
    for (auto& [id, g] : gets_) {
      LOG(ERROR) << "event=ucx_get_not_completed_at_shutdown id=" << id;
      FinishRead(*g->batch, g->group, absl::CancelledError("transport stopped"));
    }
  }

  absl::StatusOr<ucp_ep_h> Connect(const std::string& peer_addr) {
    if (stop_.load(std::memory_order_acquire)) {
      return absl::CancelledError("transport shutting down");
    }
    if (auto it = outgoing_.find(peer_addr); it != outgoing_.end()) return it->second;
    socklen_t len = 0;
    absl::StatusOr<sockaddr_storage> addr = Resolve(peer_addr, &len);
    if (!addr.ok()) return addr.status();
    ucp_ep_params_t p{};
    p.field_mask = UCP_EP_PARAM_FIELD_FLAGS | UCP_EP_PARAM_FIELD_SOCK_ADDR |
                   UCP_EP_PARAM_FIELD_ERR_HANDLER | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE;
    p.flags = UCP_EP_PARAMS_FLAGS_CLIENT_SERVER;
    p.sockaddr.addr = reinterpret_cast<const sockaddr*>(&*addr);
    p.sockaddr.addrlen = len;
    p.err_mode = UCP_ERR_HANDLING_MODE_PEER;
    p.err_handler.cb = &Impl::OnEpError;
    p.err_handler.arg = this;
    ucp_ep_h ep = nullptr;
    if (ucs_status_t s = ucp_ep_create(worker_->get(), &p, &ep); s != UCS_OK) {
      return ucx::ToStatus(s, absl::StrCat("connecting to peer ", peer_addr));
    }
    Conn& conn = conns_.emplace(ep, Conn{peer_addr, true}).first->second;
    outgoing_.emplace(peer_addr, ep);
    if (!options_.secret.empty()) {
      conn.our_nonce = RandomNonce();
      SendNow(ep, EncodeOrDie(peer::MsgType::kAuthHello, peer::AuthHello{conn.our_nonce}))
          .IgnoreError();  // a failed send shows up as an endpoint error
    } else {
      conn.authed = true;
    }
    return ep;
  }

  // Sends now, or once the endpoint is authenticated.
  absl::Status SendOn(ucp_ep_h ep, std::string bytes) {
    auto c = conns_.find(ep);
    if (c != conns_.end() && !c->second.authed) {
      if (!c->second.outgoing) return absl::PermissionDeniedError("peer not authenticated");
      c->second.queued.push_back(std::move(bytes));
      return absl::OkStatus();
    }
    return SendNow(ep, std::move(bytes));
  }

  absl::Status SendNow(ucp_ep_h ep, std::string bytes) {
    auto buf = std::make_unique<SendBuffer>(SendBuffer{std::move(bytes)});
    ucp_request_param_t p{};
    p.op_attr_mask =
        UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_FLAGS;
    p.cb.send = &Impl::OnSendDone;
    p.user_data = buf.get();
    // REPLY: the receiver learns which of its endpoints the message came in on, so its answer,
    // or its disconnect, goes to the right peer.
    p.flags = UCP_AM_SEND_FLAG_REPLY;
    ucs_status_ptr_t r =
        ucp_am_send_nbx(ep, kAmId, nullptr, 0, buf->bytes.data(), buf->bytes.size(), &p);
    if (r == nullptr) return absl::OkStatus();
    if (UCS_PTR_IS_ERR(r)) return ucx::ToStatus(UCS_PTR_STATUS(r), "ucp_am_send_nbx");
    buf.release();  // NOLINT: owned by the request until OnSendDone
    return absl::OkStatus();
  }

  void FailCall(uint64_t id, const absl::Status& s) {
    auto it = calls_.find(id);
    if (it == calls_.end()) return;
    it->second.promise.set_value(s);
    calls_.erase(it);
  }

  // Removes `ep` from the tables now (nothing new is sent on it) and closes it forcibly: UCX
  // completes its outstanding requests, gets included, with an error.
  void CloseEp(ucp_ep_h ep, const absl::Status& why) {
    auto c = conns_.find(ep);
    if (c == conns_.end()) return;
    if (c->second.outgoing) outgoing_.erase(c->second.peer);
    conns_.erase(c);
    std::vector<uint64_t> failed;
    for (const auto& [id, call] : calls_) {
      if (call.ep == ep) failed.push_back(id);
    }
    for (uint64_t id : failed) FailCall(id, why);
    ucp_request_param_t p{};
    p.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
    p.flags = UCP_EP_CLOSE_FLAG_FORCE;
    ucs_status_ptr_t r = ucp_ep_close_nbx(ep, &p);
    if (r != nullptr && !UCS_PTR_IS_ERR(r)) closing_.push_back(r);
  }

  void CloseDeferred() {
    std::vector<std::pair<ucp_ep_h, absl::Status>> v;
    v.swap(deferred_close_);
    for (auto& [ep, why] : v) CloseEp(ep, why);
  }

  void ReapClosing() {
    for (size_t i = 0; i < closing_.size();) {
      if (ucp_request_check_status(closing_[i]) != UCS_INPROGRESS) {
        ucp_request_free(closing_[i]);
        closing_[i] = closing_.back();
        closing_.pop_back();
      } else {
        ++i;
      }
    }
  }

  void CheckDeadlines() {
    if (calls_.empty() && gets_.empty()) return;
    const absl::Time now = absl::Now();
    std::vector<uint64_t> late;
    for (const auto& [id, c] : calls_) {
      if (c.deadline < now) late.push_back(id);
    }
    for (uint64_t id : late) {
      counters_.timeouts++;
      FailCall(id, absl::DeadlineExceededError(
                       absl::StrCat("peer ", calls_[id].peer, " did not answer in time")));
    }
    std::vector<ucp_ep_h> stuck;
    for (auto& [id, g] : gets_) {
      if (!g->timed_out && g->deadline < now) {
        g->timed_out = true;
        counters_.timeouts++;
        stuck.push_back(g->ep);
      }
    }
    // The only way to stop a get for sure: close its endpoint; its callback then reports it.
    for (ucp_ep_h ep : stuck) CloseEp(ep, absl::DeadlineExceededError("RMA get timed out"));
  }

  void Publish() {
    absl::MutexLock lock(&counters_mu_);
    published_ = counters_;
  }

  void Deliver(ucp_ep_h from, absl::string_view bytes) {
    absl::StatusOr<peer::Message> m = peer::Decode(bytes, options_.limits);
    if (!m.ok()) {
      counters_.malformed++;
      auto c = from != nullptr ? conns_.find(from) : conns_.end();
      const std::string who = c != conns_.end() ? c->second.peer : "(unknown endpoint)";
      LOG(WARNING) << "event=peer_message_malformed peer=" << who << " bytes=" << bytes.size()
                   << " action=disconnect error=\"" << m.status().message() << "\"";
      if (c != conns_.end()) {
        counters_.disconnects++;
        deferred_close_.emplace_back(
            from, absl::DataLossError("peer sent a malformed message; disconnected"));
      }
      return;
    }
    if (!options_.secret.empty()) {
      auto c = from != nullptr ? conns_.find(from) : conns_.end();
      if (c == conns_.end()) return;  // its endpoint is closing: nothing it says counts
      if (!c->second.authed) {
        Authenticate(from, c->second, *m);
        return;
      }
      if (IsAuth(m->type)) return;  // a handshake is done once
    } else if (IsAuth(m->type)) {
      return;  // this node has no secret: it cannot answer (the connector's calls time out)
    }
    if (peer::IsReply(m->type)) {
      auto it = calls_.find(m->request_id);
      if (it == calls_.end()) return;  // answered too late: the caller has moved on
      it->second.promise.set_value(*std::move(m));
      calls_.erase(it);
      return;
    }
    counters_.requests_in++;
    if (std::find(options_.inline_types.begin(), options_.inline_types.end(), m->type) !=
        options_.inline_types.end()) {
      std::optional<peer::Message> reply = handler_(*m);
      if (!reply.has_value() || from == nullptr) return;
      reply->request_id = m->request_id;
      absl::StatusOr<std::string> encoded = peer::Encode(*reply);
      if (!encoded.ok()) {
        LOG(ERROR) << "event=peer_reply_encode_failed error=\"" << encoded.status().message()
                   << "\"";
        return;
      }
      // The endpoint may be closing (a malformed message from it earlier in this progress pass).
      if (conns_.contains(from)) SendOn(from, *std::move(encoded)).IgnoreError();  // best effort
      return;
    }
    absl::MutexLock lock(&handler_mu_);
    incoming_.push_back(Incoming{*std::move(m), from});
  }

  static bool IsAuth(peer::MsgType t) {
    return t == peer::MsgType::kAuthHello || t == peer::MsgType::kAuthChallenge ||
           t == peer::MsgType::kAuthProof;
  }

  static peer::ObjectId RandomNonce() {
    peer::ObjectId n;
    unsigned char b[16];
    if (RAND_bytes(b, sizeof(b)) != 1) LOG(FATAL) << "event=rand_bytes_failed";  // cannot go on
    std::memcpy(&n.hi, b, 8);
    std::memcpy(&n.lo, b + 8, 8);
    return n;
  }

  static std::string EncodeOrDie(peer::MsgType type, peer::Body body) {
    peer::Message m;
    m.type = type;
    m.body = std::move(body);
    absl::StatusOr<std::string> bytes = peer::Encode(m);
    CHECK(bytes.ok()) << bytes.status();  // our own message always matches its type
    return *std::move(bytes);
  }

  // HMAC-SHA256(secret, label | a | b).
  std::string Mac(absl::string_view label, const peer::ObjectId& a, const peer::ObjectId& b) const {
    std::string in(label);
    for (uint64_t w : {a.hi, a.lo, b.hi, b.lo}) in.append(reinterpret_cast<const char*>(&w), 8);
    unsigned char out[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    if (HMAC(EVP_sha256(), options_.secret.data(), static_cast<int>(options_.secret.size()),
             reinterpret_cast<const unsigned char*>(in.data()), in.size(), out, &len) == nullptr) {
      return "";
    }
    return std::string(reinterpret_cast<const char*>(out), len);
  }

  static bool MacEqual(const std::string& want, const std::string& got) {
    return !want.empty() && want.size() == got.size() &&
           CRYPTO_memcmp(want.data(), got.data(), want.size()) == 0;
  }

  // A peer that failed authentication: logged, counted, disconnected; its calls fail.
  void RefusePeer(ucp_ep_h ep, const Conn& c, absl::string_view why) {
    counters_.auth_refused++;
    LOG_EVERY_N(WARNING, 20) << "event=peer_auth_refused peer=" << c.peer << " reason=\"" << why
                             << "\" action=disconnect";
    deferred_close_.emplace_back(
        ep, absl::PermissionDeniedError(absl::StrCat(
                "peer ", c.peer, " failed authentication (cluster.secret_file): ", why)));
  }

  // The handshake, on an endpoint not yet authenticated.
  void Authenticate(ucp_ep_h ep, Conn& c, const peer::Message& m) {
    if (c.outgoing) {
      const auto* ch = std::get_if<peer::AuthChallenge>(&m.body);
      if (ch == nullptr) return;  // nothing else can come before the challenge
      if (!MacEqual(Mac("kvtier-acceptor", c.our_nonce, ch->nonce), ch->mac)) {
        RefusePeer(ep, c, "it does not know the cluster secret");
        return;
      }
      c.their_nonce = ch->nonce;
      SendNow(ep, EncodeOrDie(peer::MsgType::kAuthProof,
                              peer::AuthProof{Mac("kvtier-connector", ch->nonce, c.our_nonce)}))
          .IgnoreError();  // a failed send shows up as an endpoint error
      c.authed = true;
      std::vector<std::string> queued;
      queued.swap(c.queued);
      for (std::string& b : queued) SendNow(ep, std::move(b)).IgnoreError();  // as above
      return;
    }
    if (const auto* h = std::get_if<peer::AuthHello>(&m.body); h != nullptr && !c.challenged) {
      c.their_nonce = h->nonce;
      c.our_nonce = RandomNonce();
      c.challenged = true;
      SendNow(ep, EncodeOrDie(peer::MsgType::kAuthChallenge,
                              peer::AuthChallenge{c.our_nonce,
                                                  Mac("kvtier-acceptor", h->nonce, c.our_nonce)}))
          .IgnoreError();  // a failed send shows up as an endpoint error
      return;
    }
    if (const auto* p = std::get_if<peer::AuthProof>(&m.body); p != nullptr && c.challenged) {
      if (MacEqual(Mac("kvtier-connector", c.our_nonce, c.their_nonce), p->mac)) {
        c.authed = true;
      } else {
        RefusePeer(ep, c, "its proof does not match the cluster secret");
      }
      return;
    }
    RefusePeer(ep, c,
               absl::StrCat("it sent ", peer::MsgTypeName(m.type),
                            " without authenticating; is cluster.secret_file set there?"));
  }

  // ---- UCX callbacks (progress thread) ----
  static ucs_status_t OnAm(void* arg, const void* /*header*/, size_t /*header_length*/, void* data,
                           size_t length, const ucp_am_recv_param_t* param) {
    auto* self = static_cast<Impl*>(arg);
    ucp_ep_h from =
        (param->recv_attr & UCP_AM_RECV_ATTR_FIELD_REPLY_EP) ? param->reply_ep : nullptr;
    if ((param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) != 0 ||
        length > self->options_.limits.max_message_bytes) {
      // Our nodes send control messages eagerly (RNDV_THRESH is off for them) and never above
      // the limit: anything else is refused before a byte of it is received.
      self->Deliver(from, absl::string_view());
      return UCS_OK;
    }
    self->Deliver(from, absl::string_view(static_cast<const char*>(data), length));
    return UCS_OK;
  }

  static void OnConnRequest(ucp_conn_request_h req, void* arg) {
    auto* self = static_cast<Impl*>(arg);
    ucp_conn_request_attr_t attr{};
    attr.field_mask = UCP_CONN_REQUEST_ATTR_FIELD_CLIENT_ADDR;
    std::string who = "(unknown)";
    if (ucp_conn_request_query(req, &attr) == UCS_OK) who = AddressString(attr.client_address);
    if (self->stop_.load(std::memory_order_acquire)) {
      ucp_listener_reject(self->listener_.get(), req);
      return;
    }
    ucp_ep_params_t p{};
    p.field_mask = UCP_EP_PARAM_FIELD_CONN_REQUEST | UCP_EP_PARAM_FIELD_ERR_HANDLER |
                   UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE;
    p.conn_request = req;
    p.err_mode = UCP_ERR_HANDLING_MODE_PEER;
    p.err_handler.cb = &Impl::OnEpError;
    p.err_handler.arg = self;
    ucp_ep_h ep = nullptr;
    if (ucs_status_t s = ucp_ep_create(self->worker_->get(), &p, &ep); s != UCS_OK) {
      LOG(WARNING) << "event=peer_accept_failed peer=" << who << " error=\"" << ucs_status_string(s)
                   << "\"";
      return;
    }
    Conn c{who, false};
    c.authed = self->options_.secret.empty();
    self->conns_.emplace(ep, std::move(c));
  }

  static void OnEpError(void* arg, ucp_ep_h ep, ucs_status_t status) {
    auto* self = static_cast<Impl*>(arg);
    auto c = self->conns_.find(ep);
    if (c == self->conns_.end()) return;  // already closing
    self->counters_.endpoint_errors++;
    // Once per peer a minute: a dead peer is asked again by every lookup until its lease runs
    // out, and each attempt fails the same way (all of them are counted).
    const absl::Time now = absl::Now();
    absl::Time& last = self->last_failure_log_[c->second.peer];
    if (now - last > absl::Minutes(1)) {
      last = now;
      LOG(WARNING) << "event=peer_endpoint_failed peer=" << c->second.peer << " error=\""
                   << ucs_status_string(status) << "\"";
    }
    // Closing from inside UCX's own callback is not allowed: the loop does it next turn.
    self->deferred_close_.emplace_back(
        ep, absl::UnavailableError(
                absl::StrCat("peer ", c->second.peer, " failed: ", ucs_status_string(status))));
  }

  static void OnSendDone(void* request, ucs_status_t /*status*/, void* user_data) {
    // A failed send shows up as an endpoint error (or a call's deadline): nothing to do here.
    std::unique_ptr<SendBuffer> owned(static_cast<SendBuffer*>(user_data));
    ucp_request_free(request);
  }

  static void OnGetDone(void* request, ucs_status_t status, void* user_data) {
    auto* g = static_cast<PendingGet*>(user_data);
    Impl* self = g->impl;
    absl::Status result;
    if (status == UCS_OK && !g->timed_out) {
      self->counters_.gets++;
      self->counters_.get_bytes += g->length;
    } else if (g->timed_out) {
      result = absl::DeadlineExceededError("RMA get timed out; endpoint closed");
    } else {
      result = ucx::ToStatus(status, "RMA get");
    }
    FinishRead(*g->batch, g->group, result);
    ucp_request_free(request);
    self->gets_.erase(g->id);  // destroys g
  }

  // ---- handler threads ----
  void HandlerLoop() {
    while (true) {
      Incoming in;
      {
        absl::MutexLock lock(&handler_mu_);
        handler_mu_.Await(absl::Condition(
            +[](Impl* s) ABSL_EXCLUSIVE_LOCKS_REQUIRED(s->handler_mu_) {
              return s->handler_stop_ || !s->incoming_.empty();
            },
            this));
        if (handler_stop_) return;
        in = std::move(incoming_.front());
        incoming_.pop_front();
      }
      std::optional<peer::Message> reply = handler_(in.message);
      if (!reply.has_value() || in.from == nullptr) continue;
      reply->request_id = in.message.request_id;
      absl::StatusOr<std::string> bytes = peer::Encode(*reply);
      if (!bytes.ok()) {
        LOG(ERROR) << "event=peer_reply_encode_failed error=\"" << bytes.status().message() << "\"";
        continue;
      }
      Post([this, ep = in.from, b = *std::move(bytes)]() mutable {
        // The endpoint may have failed while the handler ran: answer only a live one.
        if (conns_.contains(ep)) SendOn(ep, std::move(b)).IgnoreError();  // best effort
      });
    }
  }

  const PeerTransportOptions options_;
  const Handler handler_;
  std::shared_ptr<const ucx::Context> context_;
  std::optional<ucx::Worker> worker_;
  ucx::Listener listener_;
  int wake_fd_ = -1;
  int ucx_fd_ = -1;
  std::atomic<bool> stop_{false};
  std::atomic<bool> has_posted_{false};  // posted_ is not empty (read without the lock)
  std::atomic<bool> sleeping_{false};    // the progress thread is in poll() or about to be
  std::atomic<uint64_t> next_request_{1};
  std::thread progress_;
  std::vector<std::thread> handlers_;

  absl::Mutex post_mu_;
  std::deque<std::function<void()>> posted_ ABSL_GUARDED_BY(post_mu_);

  // ---- progress thread only ----
  absl::flat_hash_map<ucp_ep_h, Conn> conns_;
  absl::flat_hash_map<std::string, ucp_ep_h> outgoing_;
  absl::flat_hash_map<uint64_t, PendingCall> calls_;
  absl::flat_hash_map<uint64_t, std::unique_ptr<PendingGet>> gets_;
  uint64_t next_get_ = 1;
  std::vector<std::pair<ucp_ep_h, absl::Status>> deferred_close_;
  std::vector<void*> closing_;
  PeerTransportCounters counters_;
  absl::flat_hash_map<std::string, absl::Time> last_failure_log_;

  absl::Mutex counters_mu_;
  PeerTransportCounters published_ ABSL_GUARDED_BY(counters_mu_);

  absl::Mutex handler_mu_;
  std::deque<Incoming> incoming_ ABSL_GUARDED_BY(handler_mu_);
  bool handler_stop_ ABSL_GUARDED_BY(handler_mu_) = false;
};

absl::StatusOr<std::unique_ptr<PeerTransport>> PeerTransport::Create(
    const PeerTransportOptions& options, Handler handler) {
  auto impl = std::make_unique<Impl>(options, std::move(handler));
  absl::StatusOr<int> port = impl->Start();
  if (!port.ok()) return port.status();
  std::unique_ptr<PeerTransport> t(new PeerTransport(std::move(impl)));
  t->listen_port_ = *port;
  return t;
}

PeerTransport::PeerTransport(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
PeerTransport::~PeerTransport() = default;

absl::StatusOr<peer::Message> PeerTransport::Call(const std::string& peer, peer::Message request,
                                                  absl::Duration timeout) {
  return impl_->Call(peer, std::move(request), timeout);
}
absl::StatusOr<peer::Message> PeerTransport::CallRawForTest(const std::string& peer,
                                                            std::string bytes,
                                                            absl::Duration timeout) {
  return impl_->CallRaw(peer, std::move(bytes), timeout);
}
void PeerTransport::Send(const std::string& peer, const peer::Message& message) {
  impl_->Send(peer, message);
}
absl::StatusOr<std::unique_ptr<ucx::Memory>> PeerTransport::Register(void* base, size_t length) {
  return impl_->Register(base, length);
}
absl::Status PeerTransport::Get(const std::string& peer, uint64_t remote_addr,
                                absl::string_view rkey, const ucx::Memory& local, size_t offset,
                                size_t length, absl::Duration timeout) {
  return impl_->Get(peer, remote_addr, rkey, local, offset, length, timeout);
}
absl::StatusOr<std::unique_ptr<GetBatch>> PeerTransport::StartGets(const std::string& peer,
                                                                   std::vector<std::string> rkeys,
                                                                   std::vector<RemoteRead> reads,
                                                                   uint32_t groups,
                                                                   absl::Duration timeout) {
  return impl_->StartGets(peer, std::move(rkeys), std::move(reads), groups, timeout);
}
absl::StatusOr<std::unique_ptr<ucx::Memory>> PeerTransport::Allocate(size_t length) {
  return impl_->Allocate(length);
}
absl::StatusOr<bool> PeerTransport::Mappable(const std::string& peer, std::string rkey,
                                             uint64_t remote_addr, absl::Duration timeout) {
  return impl_->Mappable(peer, std::move(rkey), remote_addr, timeout);
}
absl::StatusOr<std::string> PeerTransport::EndpointInfo(const std::string& peer,
                                                        absl::Duration timeout) {
  return impl_->EndpointInfo(peer, timeout);
}
void PeerTransport::Disconnect(const std::string& peer) { impl_->Disconnect(peer); }
PeerTransportCounters PeerTransport::Counters() const { return impl_->Counters(); }

}  // namespace kvtier
