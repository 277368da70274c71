#include "client/client.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "base/errno_status.h"
#include "base/memfd.h"
#include "base/seqpacket.h"
#include "base/status_macros.h"
#include "client/defaults.h"

namespace kvtier {
namespace {

// Replies are small (a lookup of the largest batch is a few KiB); this bounds a broken daemon.
constexpr size_t kMaxReplyBytes = 4 << 20;

absl::Status FromWire(const wire::Error& e) {
  return absl::Status(static_cast<absl::StatusCode>(e.code()), e.message());
}

// A send that failed because kvtierd closed the connection: the daemon says why before it
// closes (a limit, a timeout), so that reply, still queued, is the error, not "Broken pipe".
absl::Status WhySendFailed(int socket, absl::Status send_error) {
  std::string buffer;
  absl::StatusOr<Datagram> d =
      ReceiveDatagram(socket, buffer, kMaxReplyBytes, /*nonblocking=*/true);
  wire::Response r;
  if (d.ok() && !d->eof && !d->truncated &&
      r.ParseFromArray(buffer.data(), static_cast<int>(d->size)) && r.has_error()) {
    return FromWire(r.error());
  }
  return send_error;
}

Tier TierFromByte(char c) { return static_cast<Tier>(static_cast<uint8_t>(c)); }

void ToWire(const AttentionBatch& s, wire::AttentionStats* out) {
  out->mutable_mass()->Add(s.mass.begin(), s.mass.end());
  out->mutable_breadth()->Add(s.breadth.begin(), s.breadth.end());
  out->mutable_value_norm()->Add(s.value_norm.begin(), s.value_norm.end());
  out->mutable_mass_entropy()->Add(s.mass_entropy.begin(), s.mass_entropy.end());
}

}  // namespace

// ---- WorkerBuffers ----

absl::StatusOr<WorkerBuffers> WorkerBuffers::Create(const Layout& layout) {
  WorkerBuffers b;
  const uint64_t bytes = layout.buffer_bytes();
  for (uint32_t i = 0; i < layout.buffer_count(); ++i) {
    // The daemon maps these; a buffer that shrank under it would fault the daemon.
    ASSIGN_OR_RETURN(UniqueFd fd,
                     CreateMemfd("kvtier-worker-kv", bytes, F_SEAL_SHRINK | F_SEAL_SEAL));
    ASSIGN_OR_RETURN(Mapping m, Mapping::Map(fd.get(), bytes, /*writable=*/true));
    b.fds_.push_back(std::move(fd));
    b.maps_.push_back(std::move(m));
  }
  return b;
}

std::vector<int> WorkerBuffers::fds() const {
  std::vector<int> out;
  for (const UniqueFd& fd : fds_) out.push_back(fd.get());
  return out;
}
std::vector<uint64_t> WorkerBuffers::sizes() const {
  std::vector<uint64_t> out;
  for (const Mapping& m : maps_) out.push_back(m.size());
  return out;
}

absl::Status WorkerBuffers::WriteBlock(const Layout& layout, uint32_t block_id,
                                       absl::Span<const std::byte> page) const {
  if (page.size() != layout.page_bytes()) return absl::InvalidArgumentError("page size");
  std::vector<Piece> pieces;
  RETURN_IF_ERROR(layout.AppendPieces(block_id, pieces));
  for (const Piece& p : pieces) {
    std::memcpy(maps_[p.buffer].data() + p.offset, page.data() + p.page_offset, p.length);
  }
  return absl::OkStatus();
}
absl::Status WorkerBuffers::ReadBlock(const Layout& layout, uint32_t block_id,
                                      absl::Span<std::byte> page) const {
  if (page.size() != layout.page_bytes()) return absl::InvalidArgumentError("page size");
  std::vector<Piece> pieces;
  RETURN_IF_ERROR(layout.AppendPieces(block_id, pieces));
  for (const Piece& p : pieces) {
    std::memcpy(page.data() + p.page_offset, maps_[p.buffer].data() + p.offset, p.length);
  }
  return absl::OkStatus();
}

absl::StatusOr<LayoutSpec> FlatLayoutFor(uint64_t page_bytes, uint32_t num_blocks) {
  // kPageContiguous, 1 layer, 1 KV head, bf16, 16 tokens: a page is 2*16*head_dim*2 bytes.
  if (page_bytes == 0 || page_bytes % 64 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("page_bytes ", page_bytes, " is not a positive multiple of 64"));
  }
  LayoutSpec s;
  s.layers = 1;
  s.kv_heads = 1;
  s.head_dim = static_cast<uint32_t>(page_bytes / 64);
  s.dtype = DType::kBF16;
  s.tokens_per_page = 16;
  s.tensor_layout = TensorLayout::kPageContiguous;
  s.num_blocks = num_blocks;
  return s;
}

void AppendKeyWords(absl::Span<const PageKey> keys,
                    google::protobuf::RepeatedField<uint64_t>* words) {
  words->Reserve(words->size() + static_cast<int>(2 * keys.size()));
  for (const PageKey& k : keys) {
    words->AddAlreadyReserved(k.hi);
    words->AddAlreadyReserved(k.lo);
  }
}

// ---- Client ----

absl::StatusOr<std::unique_ptr<Client>> Client::Connect(absl::string_view socket_path) {
  absl::StatusOr<UniqueFd> fd =
      ConnectSeqpacket(socket_path.empty() ? absl::string_view(kDefaultSocketPath) : socket_path);
  if (!fd.ok()) return fd.status();
  return std::unique_ptr<Client>(new Client(*std::move(fd)));
}

Client::~Client() = default;

absl::StatusOr<OpHandle> Client::Submit(wire::Request& request, absl::Span<const int> fds) {
  const uint64_t id = next_id_.fetch_add(1, std::memory_order_relaxed);
  request.set_id(id);
  absl::MutexLock lock(&send_mu_);
  if (!request.SerializeToString(&send_buffer_)) {
    return absl::InternalError("request does not serialize");
  }
  if (absl::Status s = SendDatagram(socket_.get(), send_buffer_, fds); !s.ok()) {
    return WhySendFailed(socket_.get(), std::move(s));
  }
  return id;
}

namespace {

// The process-wide ration of spinning (see set_spin_wait_us): a waiter spins only while no more
// threads of this process are waiting than half the CPUs. One thread issuing back-to-back calls
// spins and never pays for a wake-up; many concurrent callers sleep, leaving the cores to the
// daemon, which is what serves them.
class WaiterScope {
 public:
  WaiterScope() : waiting_(waiters().fetch_add(1, std::memory_order_acq_rel) + 1) {}
  ~WaiterScope() { waiters().fetch_sub(1, std::memory_order_acq_rel); }
  WaiterScope(const WaiterScope&) = delete;
  WaiterScope& operator=(const WaiterScope&) = delete;
  bool may_spin() const {
    static const int limit = std::max(1, static_cast<int>(std::thread::hardware_concurrency()) / 2);
    return waiting_ <= limit && waiters().load(std::memory_order_acquire) <= limit;
  }

 private:
  static std::atomic<int>& waiters() {
    static std::atomic<int> n{0};
    return n;
  }
  const int waiting_;
};

// The fields a Load request has whether its blocks are in host or GPU memory.
wire::Load* FillLoad(absl::Span<const PageKey> keys, absl::Span<const uint32_t> block_ids,
                     wire::Request& req) {
  wire::Load* l = req.mutable_load();
  AppendKeyWords(keys, l->mutable_key_words());
  l->mutable_block_ids()->Add(block_ids.begin(), block_ids.end());
  return l;
}

// The fields a Store request has whether its blocks are in host or GPU memory.
wire::Store* FillStore(absl::Span<const PageKey> keys, absl::Span<const uint32_t> block_ids,
                       const StoreHints& hints, wire::Request& req) {
  wire::Store* s = req.mutable_store();
  AppendKeyWords(keys, s->mutable_key_words());
  s->mutable_block_ids()->Add(block_ids.begin(), block_ids.end());
  s->set_parent_hi(hints.parent.hi);
  s->set_parent_lo(hints.parent.lo);
  s->set_first_position(hints.first_position);
  if (!hints.class_hints.empty()) {
    std::string* h = s->mutable_class_hints();
    for (PageClass c : hints.class_hints) h->push_back(static_cast<char>(c));
  }
  return s;
}

PageResults FromWire(const wire::PageStatusReply& p) {
  PageResults out;
  for (int32_t c : p.codes()) out.codes.push_back(static_cast<absl::StatusCode>(c));
  for (char c : p.tiers()) out.tiers.push_back(TierFromByte(c));
  out.first_error = p.first_error();
  out.ok_pages = p.ok_pages();
  return out;
}

}  // namespace

void Client::set_call_timeout(absl::Duration timeout) {
  const int64_t ns = timeout == absl::InfiniteDuration() || timeout <= absl::ZeroDuration()
                         ? 0
                         : std::max<int64_t>(1, absl::ToInt64Nanoseconds(timeout));
  call_timeout_ns_.store(ns, std::memory_order_relaxed);
}

absl::StatusOr<Datagram> Client::ReadDatagram(absl::Time deadline) {
  absl::StatusOr<Datagram> d = absl::UnavailableError("would block");
  const WaiterScope waiting;  // counts this thread as waiting until the reply is in
  if (const uint32_t spin_us = spin_wait_us_.load(std::memory_order_relaxed); spin_us > 0) {
    if (waiting.may_spin()) {
      const absl::Time until = std::min(deadline, absl::Now() + absl::Microseconds(spin_us));
      do {
        d = ReceiveDatagram(socket_.get(), recv_buffer_, kMaxReplyBytes, /*nonblocking=*/true);
      } while (!d.ok() && IsWouldBlock(d.status()) && absl::Now() < until);
    }
  }
  if (d.ok() || !IsWouldBlock(d.status())) return d;
  if (deadline == absl::InfiniteFuture()) {
    return ReceiveDatagram(socket_.get(), recv_buffer_, kMaxReplyBytes);
  }
  while (true) {
    const absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) return absl::DeadlineExceededError("");
    pollfd p{socket_.get(), POLLIN, 0};
    // Rounded up to a whole millisecond so a sub-millisecond rest does not spin.
    const int ms =
        static_cast<int>(std::min<int64_t>(absl::ToInt64Milliseconds(left) + 1, 1 << 30));
    const int n = ::poll(&p, 1, ms);
    if (n < 0 && errno != EINTR) return ErrnoStatus(errno, "poll on the kvtierd socket");
    if (n <= 0) continue;
    d = ReceiveDatagram(socket_.get(), recv_buffer_, kMaxReplyBytes, /*nonblocking=*/true);
    if (d.ok() || !IsWouldBlock(d.status())) return d;
  }
}

absl::StatusOr<Client::Received> Client::Await(OpHandle id, bool abandon_on_timeout) {
  const int64_t timeout_ns = call_timeout_ns_.load(std::memory_order_relaxed);
  const absl::Time deadline =
      timeout_ns == 0 ? absl::InfiniteFuture() : absl::Now() + absl::Nanoseconds(timeout_ns);
  auto timed_out = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(recv_mu_) {
    if (abandon_on_timeout) abandoned_.insert(id);
    return absl::DeadlineExceededError(absl::StrCat(
        "no reply from kvtierd within ", absl::FormatDuration(absl::Nanoseconds(timeout_ns)),
        abandon_on_timeout ? "" : "; the operation is still in flight: wait for it again"));
  };
  absl::MutexLock lock(&recv_mu_);
  while (true) {
    if (auto it = parked_.find(id); it != parked_.end()) {
      Received r = std::move(it->second);
      parked_.erase(it);
      return r;
    }
    if (!broken_.ok()) return broken_;
    if (reading_) {
      // Another thread reads: it parks this reply and wakes us, or leaves the socket to us.
      auto wake = [this, id]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(recv_mu_) {
        return !reading_ || !broken_.ok() || parked_.contains(id);
      };
      if (!recv_mu_.AwaitWithDeadline(absl::Condition(&wake), deadline)) return timed_out();
      continue;
    }
    reading_ = true;
    recv_mu_.Unlock();
    absl::StatusOr<Datagram> d = ReadDatagram(deadline);
    Received r;
    absl::Status bad;
    if (d.ok()) {
      if (d->eof) {
        bad = absl::UnavailableError("kvtierd closed the connection");
      } else if (d->truncated) {
        bad = absl::DataLossError("reply larger than the client's limit");
      } else if (!r.response.ParseFromArray(recv_buffer_.data(), static_cast<int>(d->size))) {
        bad = absl::DataLossError("reply does not parse");
      } else if (r.response.id() == 0 && r.response.has_error()) {
        // An unsolicited error (id 0) is the daemon explaining why it closes the connection.
        bad = FromWire(r.response.error());
      }
      r.fds = std::move(d->fds);
    }
    recv_mu_.Lock();
    reading_ = false;
    if (!d.ok()) {
      if (absl::IsDeadlineExceeded(d.status())) return timed_out();
      broken_ = d.status();
      return broken_;
    }
    if (!bad.ok()) {
      broken_ = bad;
      return broken_;
    }
    const uint64_t got = r.response.id();
    if (got == id) return r;
    if (abandoned_.erase(got) == 0) parked_.emplace(got, std::move(r));
  }
}

absl::StatusOr<wire::Response> Client::Call(wire::Request& request, absl::Span<const int> fds) {
  absl::StatusOr<OpHandle> id = Submit(request, fds);
  if (!id.ok()) return id.status();
  absl::StatusOr<Received> r = Await(*id, /*abandon_on_timeout=*/true);
  if (!r.ok()) return r.status();
  if (r->response.has_error() && r->response.error().code() != 0) {
    return FromWire(r->response.error());
  }
  return std::move(r->response);
}

absl::StatusOr<HelloInfo> Client::Hello(absl::string_view namespace_name, const LayoutSpec& layout,
                                        bool want_dram_pool, absl::string_view client_name) {
  wire::Request req;
  wire::Hello* h = req.mutable_hello();
  h->set_protocol_version(kProtocolVersion);
  h->set_namespace_name(std::string(namespace_name));
  h->set_want_dram_pool(want_dram_pool);
  h->set_client_name(std::string(client_name));
  wire::Layout* l = h->mutable_layout();
  l->set_layers(layout.layers);
  l->set_kv_heads(layout.kv_heads);
  l->set_head_dim(layout.head_dim);
  l->set_dtype(static_cast<uint32_t>(layout.dtype));
  l->set_tokens_per_page(layout.tokens_per_page);
  l->set_tensor_layout(static_cast<uint32_t>(layout.tensor_layout));
  l->set_num_blocks(layout.num_blocks);
  absl::StatusOr<OpHandle> id = Submit(req, {});
  if (!id.ok()) return id.status();
  absl::StatusOr<Received> r = Await(*id, /*abandon_on_timeout=*/true);
  if (!r.ok()) return r.status();
  if (r->response.has_error()) return FromWire(r->response.error());
  const wire::HelloReply& hr = r->response.hello();
  HelloInfo info;
  info.salt = PageKey{hr.salt_hi(), hr.salt_lo()};
  info.page_bytes = hr.page_bytes();
  info.hbm_backend = hr.hbm_backend();
  info.max_inflight_ops = hr.max_inflight_ops();
  info.max_pinned_pages = hr.max_pinned_pages();
  info.max_batch_pages = hr.max_batch_pages();
  if (want_dram_pool && hr.dram_pool_slots() > 0) {
    if (r->fds.size() != 1) return absl::DataLossError("hello reply lacks the DRAM pool fd");
    absl::StatusOr<Mapping> m =
        Mapping::Map(r->fds[0].get(), hr.dram_pool_slots() * hr.dram_slot_bytes(), false);
    if (!m.ok()) return m.status();
    dram_pool_ = *std::move(m);
    dram_slots_ = hr.dram_pool_slots();
    dram_slot_bytes_ = hr.dram_slot_bytes();
  }
  return info;
}

absl::Status Client::RegisterBuffers(absl::Span<const int> fds, absl::Span<const uint64_t> sizes) {
  wire::Request req;
  req.mutable_register_buffers()->mutable_sizes()->Add(sizes.begin(), sizes.end());
  return Call(req, fds).status();
}

absl::StatusOr<LookupReply> Client::Lookup(absl::Span<const PageKey> keys, bool with_dram_slots) {
  wire::Request req;
  AppendKeyWords(keys, req.mutable_lookup()->mutable_key_words());
  req.mutable_lookup()->set_with_dram_slots(with_dram_slots);
  absl::StatusOr<wire::Response> r = Call(req);
  if (!r.ok()) return r.status();
  const wire::LookupReply& lr = r->lookup();
  LookupReply out;
  out.prefix_pages = lr.prefix_pages();
  out.tiers.reserve(lr.tiers().size());
  for (char c : lr.tiers()) out.tiers.push_back(TierFromByte(c));
  out.dram_slots.assign(lr.dram_slots().begin(), lr.dram_slots().end());
  return out;
}

absl::StatusOr<OpHandle> Client::LoadAsync(absl::Span<const PageKey> keys,
                                           absl::Span<const uint32_t> block_ids) {
  wire::Request req;
  FillLoad(keys, block_ids, req);
  return Submit(req, {});
}

absl::StatusOr<OpHandle> Client::StoreAsync(absl::Span<const PageKey> keys,
                                            absl::Span<const uint32_t> block_ids,
                                            const StoreHints& hints, const AttentionBatch* stats) {
  wire::Request req;
  wire::Store* s = FillStore(keys, block_ids, hints, req);
  if (stats != nullptr) ToWire(*stats, s->mutable_stats());
  return Submit(req, {});
}

absl::StatusOr<PageResults> Client::Wait(OpHandle op) {
  absl::StatusOr<Received> r = Await(op, /*abandon_on_timeout=*/false);
  if (!r.ok()) return r.status();
  if (r->response.has_error()) return FromWire(r->response.error());
  return FromWire(r->response.pages());
}

absl::Status Client::Report(absl::Span<const PageKey> keys, const AttentionBatch& stats) {
  wire::Request req;
  AppendKeyWords(keys, req.mutable_report()->mutable_key_words());
  ToWire(stats, req.mutable_report()->mutable_stats());
  return Call(req).status();
}

absl::Status Client::Pin(absl::Span<const PageKey> keys) {
  wire::Request req;
  AppendKeyWords(keys, req.mutable_pin()->mutable_key_words());
  return Call(req).status();
}

absl::Status Client::Unpin(absl::Span<const PageKey> keys) {
  wire::Request req;
  AppendKeyWords(keys, req.mutable_unpin()->mutable_key_words());
  return Call(req).status();
}

absl::StatusOr<uint32_t> Client::Release(absl::Span<const PageKey> keys) {
  wire::Request req;
  AppendKeyWords(keys, req.mutable_release()->mutable_key_words());
  absl::StatusOr<wire::Response> r = Call(req);
  if (!r.ok()) return r.status();
  return r->count().pages();
}

absl::StatusOr<wire::StatusReply> Client::Status() {
  wire::Request req;
  req.mutable_status();
  absl::StatusOr<wire::Response> r = Call(req);
  if (!r.ok()) return r.status();
  return r->status();
}

absl::StatusOr<wire::StatsReply> Client::Stats() {
  wire::Request req;
  req.mutable_stats();
  absl::StatusOr<wire::Response> r = Call(req);
  if (!r.ok()) return r.status();
  return r->stats();
}

absl::Span<const std::byte> Client::DramSlot(uint32_t slot) const {
  if (dram_pool_.data() == nullptr || slot >= dram_slots_) return {};
  return {dram_pool_.data() + slot * dram_slot_bytes_, dram_slot_bytes_};
}

absl::Status Client::RegisterGpuBuffers(absl::string_view device_uuid,
                                        absl::Span<const GpuBufferHandle> buffers) {
  wire::Request req;
  wire::RegisterBuffers* r = req.mutable_register_buffers();
  r->set_device_uuid(std::string(device_uuid));
  std::vector<int> fds;
  for (const GpuBufferHandle& b : buffers) {
    if (b.vmm_fd >= 0) {
      fds.push_back(b.vmm_fd);
      r->add_allocation_bytes(b.allocation_bytes);
    } else {
      r->add_cuda_ipc_handles(b.ipc_handle);
    }
    r->add_offsets(b.offset);
    r->add_sizes(b.size);
  }
  if (!fds.empty() && fds.size() != buffers.size()) {
    return absl::InvalidArgumentError("GPU buffers mix CUDA IPC handles and VMM fds; use one kind");
  }
  r->set_vmm_fds(!fds.empty());
  return Call(req, fds).status();
}

absl::StatusOr<OpHandle> Client::LoadGpuAsync(absl::Span<const PageKey> keys,
                                              absl::Span<const uint32_t> block_ids,
                                              bool reply_when_enqueued, bool prefix_only) {
  wire::Request req;
  wire::Load* load = FillLoad(keys, block_ids, req);
  load->set_reply_when_enqueued(reply_when_enqueued);
  load->set_prefix_only(prefix_only);
  return Submit(req, {});
}

absl::StatusOr<OpHandle> Client::StoreGpuAsync(absl::Span<const PageKey> keys,
                                               absl::Span<const uint32_t> block_ids,
                                               const StoreHints& hints,
                                               absl::string_view wait_event_handle) {
  wire::Request req;
  FillStore(keys, block_ids, hints, req)->set_wait_event_handle(std::string(wait_event_handle));
  return Submit(req, {});
}

absl::StatusOr<GpuPageResults> Client::WaitGpu(OpHandle op) {
  absl::StatusOr<Received> r = Await(op, /*abandon_on_timeout=*/false);
  if (!r.ok()) return r.status();
  if (r->response.has_error()) return FromWire(r->response.error());
  GpuPageResults out;
  out.pages = FromWire(r->response.pages());
  out.cuda_event_handle = r->response.pages().cuda_event_handle();
  return out;
}

}  // namespace kvtier
