#include "daemon/cluster_node.h"

#include <glog/logging.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/status_macros.h"

namespace kvtier {
namespace {

std::string HostName() {
  char name[256] = {};
  if (::gethostname(name, sizeof(name) - 1) != 0) return "localhost";
  return name;
}

// "$VAR" -> the environment's VAR (empty when unset); anything else as written.
std::string Expand(const std::string& v) {
  if (v.size() < 2 || v[0] != '$') return v;
  const char* e = std::getenv(v.c_str() + 1);
  return e != nullptr ? e : "";
}

peer::ObjectId IdOf(const PageKey& k) { return {k.hi, k.lo}; }
PageKey KeyOf(const peer::ObjectId& id) { return {id.hi, id.lo}; }

peer::Message Reply(peer::MsgType type, peer::Body body) {
  peer::Message m;
  m.type = type;
  m.body = std::move(body);
  return m;
}

peer::Message FetchError(absl::StatusCode code, const peer::ObjectId& id, std::string why) {
  peer::FetchReply r;
  r.code = static_cast<int32_t>(code);
  r.id = id;
  r.error = std::move(why);
  return Reply(peer::MsgType::kFetchReply, std::move(r));
}

}  // namespace

absl::StatusOr<std::unique_ptr<ClusterNode>> ClusterNode::Start(const DaemonConfig& config,
                                                                TieredStore& store,
                                                                metrics::Registry* registry,
                                                                int http_port) {
  std::unique_ptr<ClusterNode> node(new ClusterNode(config, store));
  RETURN_IF_ERROR(node->Init(registry, http_port));
  return node;
}

ClusterNode::ClusterNode(const DaemonConfig& config, TieredStore& store)
    : cc_(config.cluster), store_(store), page_bytes_(store.page_bytes()) {}

absl::Status ClusterNode::Init(metrics::Registry* registry, int http_port) {
  http_port_ = http_port;
  node_id_ = Expand(cc_.node_id);
  if (node_id_.empty()) node_id_ = HostName();
  std::string advertise = Expand(cc_.advertise_host);
  if (advertise.empty()) advertise = HostName();
  PeerTransportOptions topt;
  topt.listen_address = cc_.listen_address;
  topt.ucx.tls = cc_.ucx_tls;
  topt.ucx.net_devices = cc_.ucx_net_devices;
  absl::StatusOr<std::unique_ptr<PeerTransport>> t =
      PeerTransport::Create(topt, [this](const peer::Message& m) { return OnRequest(m); });
  if (!t.ok()) return t.status();
  transport_ = *std::move(t);
  // An IPv6 literal needs brackets to stay host:port.
  if (advertise.find(':') != std::string::npos) advertise = absl::StrCat("[", advertise, "]");
  peer_address_ = absl::StrCat(advertise, ":", transport_->listen_port());

  // The DRAM pool, mapped read-only and registered once: pages in it are lent in place.
  const TieredStore::SharedPool pool = store_.dram_pool();
  if (pool.fd >= 0 && pool.slots > 0) {
    dram_map_.length = static_cast<size_t>(pool.slots) * pool.slot_bytes;
    dram_map_.base = ::mmap(nullptr, dram_map_.length, PROT_READ, MAP_SHARED, pool.fd, 0);
    if (dram_map_.base == MAP_FAILED) {
      return absl::ErrnoToStatus(errno, "mapping the DRAM pool for peers");
    }
    absl::StatusOr<std::unique_ptr<ucx::Memory>> r =
        transport_->Register(dram_map_.base, dram_map_.length);
    if (!r.ok()) return r.status();
    dram_region_ = *std::move(r);
  }
  staging_buf_.resize(static_cast<size_t>(cc_.staging_pages) * page_bytes_);
  landing_buf_.resize(static_cast<size_t>(cc_.landing_pages) * page_bytes_);
  absl::StatusOr<std::unique_ptr<ucx::Memory>> s =
      transport_->Register(staging_buf_.data(), staging_buf_.size());
  if (!s.ok()) return s.status();
  staging_region_ = *std::move(s);
  absl::StatusOr<std::unique_ptr<ucx::Memory>> l =
      transport_->Register(landing_buf_.data(), landing_buf_.size());
  if (!l.ok()) return l.status();
  landing_region_ = *std::move(l);
  {
    absl::MutexLock lock(&mu_);
    for (uint32_t i = 0; i < cc_.staging_pages; ++i) free_staging_.push_back(static_cast<int>(i));
    for (uint32_t i = 0; i < cc_.landing_pages; ++i) free_landing_.push_back(static_cast<int>(i));
    members_.push_back(Self());  // until etcd answers, the cluster is this node
  }
  MembershipOptions mopt;
  mopt.etcd.endpoints = cc_.etcd_endpoints;
  mopt.prefix = cc_.etcd_prefix;
  mopt.lease_ttl_s = cc_.lease_ttl_s;
  absl::StatusOr<std::unique_ptr<Membership>> m = Membership::Start(
      mopt, [this] { return Self(); },
      [this](const std::vector<MemberInfo>& live) { OnMembershipChanged(live); });
  if (!m.ok()) return m.status();
  membership_ = *std::move(m);
  if (registry != nullptr) BindMetrics(*registry);
  background_ = std::thread([this] { BackgroundLoop(); });
  LOG(INFO) << "event=cluster_started node=" << node_id_ << " peer_address=" << peer_address_
            << " ucx_tls=" << cc_.ucx_tls << " namespaces=" << absl::StrJoin(cc_.namespaces, ",")
            << " etcd=" << absl::StrJoin(cc_.etcd_endpoints, ",");
  return absl::OkStatus();
}

ClusterNode::~ClusterNode() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  if (background_.joinable()) background_.join();
  membership_.reset();  // leave etcd first: peers stop asking
  {
    absl::MutexLock lock(&mu_);
    for (auto& [id, lease] : leases_) {
      if (lease.pinned) store_.Unpin(lease.ns, {&lease.key, 1}).IgnoreError();  // shutting down
    }
    leases_.clear();
  }
  // Regions before the transport that registered them; the transport's destructor completes
  // every transfer still in flight first.
  transport_.reset();
  dram_region_.reset();
  staging_region_.reset();
  landing_region_.reset();
}

MemberInfo ClusterNode::Self() const {
  MemberInfo m;
  m.node_id = node_id_;
  m.peer_address = peer_address_;
  m.namespaces = cc_.namespaces;
  m.page_bytes = page_bytes_;
  m.http_port = http_port_;
  for (Tier t : kAllTiers) {
    if (!store_.has_tier(t)) continue;
    const TierUsage u = store_.Usage(t);
    m.tiers.emplace_back(TierName(t));
    m.free_slots += u.capacity_slots > u.used_slots ? u.capacity_slots - u.used_slots : 0;
  }
  return m;
}

bool ClusterNode::Serves(const std::string& ns) const {
  MemberInfo self;
  self.namespaces = cc_.namespaces;
  return self.Serves(ns);
}

std::vector<MemberInfo> ClusterNode::ServingMembers(const std::string& ns) const {
  std::vector<MemberInfo> out;
  absl::MutexLock lock(&mu_);
  for (const MemberInfo& m : members_) {
    // Pages of one size only: a member with another page size cannot hold ours.
    if (m.Serves(ns) && m.page_bytes == page_bytes_) out.push_back(m);
  }
  return out;
}

void ClusterNode::OnMembershipChanged(std::vector<MemberInfo> live) {
  absl::MutexLock lock(&mu_);
  if (std::none_of(live.begin(), live.end(),
                   [&](const MemberInfo& m) { return m.node_id == node_id_; })) {
    live.push_back(Self());  // our own record may lag (just rejoined); we are alive regardless
  }
  // Peers that left: close their endpoints so nothing waits on them.
  for (const MemberInfo& old : members_) {
    if (std::none_of(live.begin(), live.end(),
                     [&](const MemberInfo& m) { return m.peer_address == old.peer_address; })) {
      transport_->Disconnect(old.peer_address);
    }
  }
  members_ = std::move(live);
  members_changed_ = true;
}

std::vector<std::vector<MemberInfo>> ClusterNode::QueryHolders(const std::string& ns,
                                                               absl::Span<const PageKey> keys) {
  std::vector<std::vector<MemberInfo>> out(keys.size());
  const std::vector<MemberInfo> serving = ServingMembers(ns);
  if (serving.empty()) return out;
  std::vector<std::string> names;
  names.reserve(serving.size());
  for (const MemberInfo& m : serving) names.push_back(m.node_id);
  // Keys grouped by home; one query per home.
  absl::flat_hash_map<size_t, std::vector<size_t>> by_home;
  for (size_t i = 0; i < keys.size(); ++i) by_home[HomeOf(names, ns, keys[i])].push_back(i);
  auto resolve = [&](size_t key_index, const std::vector<std::string>& holders) {
    for (const std::string& h : holders) {
      if (h == node_id_) continue;
      for (const MemberInfo& m : serving) {
        if (m.node_id == h) out[key_index].push_back(m);
      }
    }
  };
  for (const auto& [home, idx] : by_home) {
    if (serving[home].node_id == node_id_) {
      for (size_t i : idx) resolve(i, directory_.Holders(ns, keys[i]));
      continue;
    }
    peer::DirQuery q;
    q.ns = ns;
    for (size_t i : idx) q.ids.push_back(IdOf(keys[i]));
    peer::Message req;
    req.type = peer::MsgType::kDirQuery;
    req.body = std::move(q);
    absl::StatusOr<peer::Message> r = transport_->Call(serving[home].peer_address, std::move(req),
                                                       absl::Milliseconds(cc_.request_timeout_ms));
    const auto* reply = r.ok() ? std::get_if<peer::DirQueryReply>(&r->body) : nullptr;
    if (reply == nullptr || reply->holders.size() != idx.size()) {
      // The home is gone or confused: these keys are misses this time.
      LOG_EVERY_N(WARNING, 100) << "event=directory_query_failed home=" << serving[home].node_id
                                << " error=\"" << (r.ok() ? "bad reply" : r.status().message())
                                << "\"";
      continue;
    }
    for (size_t j = 0; j < idx.size(); ++j) resolve(idx[j], reply->holders[j]);
  }
  return out;
}

size_t ClusterNode::RemotePrefix(const std::string& ns_name, NamespaceId ns,
                                 absl::Span<const PageKey> keys) {
  if (!Serves(ns_name)) return 0;
  {
    absl::MutexLock lock(&mu_);
    ns_ids_.try_emplace(ns_name, ns);
  }
  const std::vector<std::vector<MemberInfo>> holders = QueryHolders(ns_name, keys);
  size_t n = 0;
  while (n < holders.size() && !holders[n].empty()) ++n;
  counters_.lookups_found.fetch_add(n, std::memory_order_relaxed);
  counters_.lookups_missing.fetch_add(keys.size() - n, std::memory_order_relaxed);
  return n;
}

int ClusterNode::AcquireLanding() {
  absl::MutexLock lock(&mu_);
  const bool got =
      mu_.AwaitWithTimeout(absl::Condition(
                               +[](ClusterNode* c) ABSL_EXCLUSIVE_LOCKS_REQUIRED(c->mu_) {
                                 return !c->free_landing_.empty() || c->stop_;
                               },
                               this),
                           absl::Milliseconds(cc_.transfer_timeout_ms));
  if (!got || free_landing_.empty()) return -1;
  const int slot = free_landing_.back();
  free_landing_.pop_back();
  return slot;
}

void ClusterNode::ReleaseLanding(int slot) {
  absl::MutexLock lock(&mu_);
  free_landing_.push_back(slot);
}

absl::StatusOr<Tier> ClusterNode::Fetch(const std::string& ns_name, NamespaceId ns,
                                        const PageKey& key, absl::Span<const MutableBuffer> dst) {
  if (!Serves(ns_name)) {
    return absl::NotFoundError(
        absl::StrCat("namespace '", ns_name, "' is not served by the cluster on this node"));
  }
  size_t total = 0;
  for (const MutableBuffer& b : dst) total += b.size;
  if (total != page_bytes_) {
    return absl::InvalidArgumentError(
        absl::StrCat("destination of ", total, " bytes for pages of ", page_bytes_));
  }
  {
    absl::MutexLock lock(&mu_);
    ns_ids_.try_emplace(ns_name, ns);
  }
  const std::vector<MemberInfo> holders = QueryHolders(ns_name, {&key, 1})[0];
  for (const MemberInfo& h : holders) {
    peer::Message req;
    req.type = peer::MsgType::kFetch;
    req.body = peer::Fetch{ns_name, IdOf(key)};
    absl::StatusOr<peer::Message> r = transport_->Call(h.peer_address, std::move(req),
                                                       absl::Milliseconds(cc_.request_timeout_ms));
    const auto* fr = r.ok() ? std::get_if<peer::FetchReply>(&r->body) : nullptr;
    if (fr == nullptr) {
      counters_.fetch_failed.fetch_add(1, std::memory_order_relaxed);
      continue;
    }
    if (fr->code == static_cast<int32_t>(absl::StatusCode::kNotFound)) {
      // The directory was stale: tell the page's home, then try the next holder.
      Announce(ns_name, {&key, 1}, /*add=*/false, h.node_id);
      continue;
    }
    if (fr->code != 0) {
      counters_.fetch_failed.fetch_add(1, std::memory_order_relaxed);
      continue;
    }
    if (!(KeyOf(fr->id) == key) || fr->bytes != page_bytes_) {
      counters_.verify_failed.fetch_add(1, std::memory_order_relaxed);
      LOG_EVERY_N(WARNING, 100) << "event=peer_fetch_reply_mismatch peer=" << h.node_id
                                << " bytes=" << fr->bytes;
      transport_->Send(h.peer_address, Reply(peer::MsgType::kRelease, peer::Release{fr->lease}));
      continue;
    }
    const int slot = AcquireLanding();
    if (slot < 0) {
      transport_->Send(h.peer_address, Reply(peer::MsgType::kRelease, peer::Release{fr->lease}));
      counters_.fetch_failed.fetch_add(1, std::memory_order_relaxed);
      break;  // this node is saturated: a miss, not a queue
    }
    const size_t offset = static_cast<size_t>(slot) * page_bytes_;
    absl::Status got =
        transport_->Get(h.peer_address, fr->remote_addr, fr->rkey, *landing_region_, offset,
                        page_bytes_, absl::Milliseconds(cc_.transfer_timeout_ms));
    transport_->Send(h.peer_address, Reply(peer::MsgType::kRelease, peer::Release{fr->lease}));
    const std::byte* landed = landing_buf_.data() + offset;
    if (!got.ok()) {
      counters_.fetch_failed.fetch_add(1, std::memory_order_relaxed);
      LOG_EVERY_N(WARNING, 100) << "event=peer_fetch_failed peer=" << h.node_id << " error=\""
                                << got.message() << "\"";
      ReleaseLanding(slot);
      continue;
    }
    if (PageChecksum(key, landed, page_bytes_) != fr->checksum) {
      counters_.verify_failed.fetch_add(1, std::memory_order_relaxed);
      LOG_EVERY_N(WARNING, 100) << "event=peer_page_checksum_mismatch peer=" << h.node_id
                                << " key=" << key.ToHex();
      ReleaseLanding(slot);
      continue;
    }
    // Whole and verified: only now does the worker's buffer see a byte of it.
    size_t at = 0;
    for (const MutableBuffer& b : dst) {
      std::memcpy(b.data, landed + at, b.size);
      at += b.size;
    }
    MaybeReplicate(ns_name, ns, key, *fr, landed);
    ReleaseLanding(slot);
    counters_.fetch_ok.fetch_add(1, std::memory_order_relaxed);
    counters_.fetch_bytes.fetch_add(page_bytes_, std::memory_order_relaxed);
    return static_cast<Tier>(kRemoteTierByte);
  }
  counters_.fetch_miss.fetch_add(1, std::memory_order_relaxed);
  return absl::NotFoundError(absl::StrCat("page ", key.ToHex(), " is on no live peer"));
}

void ClusterNode::MaybeReplicate(const std::string& ns_name, NamespaceId ns, const PageKey& key,
                                 const peer::FetchReply& reply, const std::byte* page) {
  const PageClass cls = static_cast<PageClass>(reply.object_class);
  if (cc_.replicate_after_remote_reads == 0 || cls == PageClass::kSink) return;
  {
    absl::MutexLock lock(&mu_);
    if (remote_reads_.size() > (1u << 16)) remote_reads_.clear();  // a bound, not a policy
    uint32_t& reads = remote_reads_[std::make_pair(ns_name, key)];
    if (++reads < cc_.replicate_after_remote_reads) return;
    // The migration budget: a token bucket holding at most one second of bandwidth.
    const absl::Time now = absl::Now();
    migration_tokens_ =
        std::min(cc_.max_migration_bytes_per_s,
                 migration_tokens_ + absl::ToDoubleSeconds(now - migration_refilled_) *
                                         cc_.max_migration_bytes_per_s);
    migration_refilled_ = now;
    if (migration_tokens_ < static_cast<double>(page_bytes_)) {
      counters_.replication_deferred.fetch_add(1, std::memory_order_relaxed);
      return;  // counted; the next read tries again
    }
    migration_tokens_ -= static_cast<double>(page_bytes_);
    remote_reads_.erase(std::make_pair(ns_name, key));
  }
  PutOptions po;
  po.class_hint = cls == PageClass::kSemantic ? PageClass::kSemantic : PageClass::kUnknown;
  po.position = reply.object_position;
  const ConstBuffer src{page, page_bytes_};
  // Placed by this node's own policy like any page; a full node may simply not keep it.
  if (store_.Put(ns, key, {&src, 1}, po).ok()) {
    counters_.replicated.fetch_add(1, std::memory_order_relaxed);
    Stored(ns_name, ns, key);
  }
}

void ClusterNode::Stored(const std::string& ns_name, NamespaceId ns, const PageKey& key) {
  if (!Serves(ns_name)) return;
  absl::MutexLock lock(&mu_);
  ns_ids_.try_emplace(ns_name, ns);
  if (held_[ns_name].insert(key).second) to_announce_.emplace_back(ns_name, key);
}

void ClusterNode::Announce(const std::string& ns, absl::Span<const PageKey> keys, bool add,
                           const std::string& holder) {
  const std::vector<MemberInfo> serving = ServingMembers(ns);
  if (serving.empty()) return;
  std::vector<std::string> names;
  names.reserve(serving.size());
  for (const MemberInfo& m : serving) names.push_back(m.node_id);
  absl::flat_hash_map<size_t, std::vector<peer::ObjectId>> by_home;
  for (const PageKey& k : keys) by_home[HomeOf(names, ns, k)].push_back(IdOf(k));
  for (auto& [home, ids] : by_home) {
    if (serving[home].node_id == node_id_) {
      for (const peer::ObjectId& id : ids) {
        if (add) {
          if (!directory_.Add(ns, KeyOf(id), holder)) {
            counters_.directory_full.fetch_add(1, std::memory_order_relaxed);
          }
        } else {
          directory_.Remove(ns, KeyOf(id), holder);
        }
      }
      continue;
    }
    peer::Message m;
    m.type = add ? peer::MsgType::kDirAdd : peer::MsgType::kDirRemove;
    m.body = peer::DirUpdate{ns, holder, std::move(ids)};
    absl::StatusOr<peer::Message> r = transport_->Call(serving[home].peer_address, std::move(m),
                                                       absl::Milliseconds(cc_.request_timeout_ms));
    if (!r.ok()) counters_.announce_failed.fetch_add(1, std::memory_order_relaxed);
  }
}

std::optional<peer::Message> ClusterNode::OnRequest(const peer::Message& m) {
  switch (m.type) {
    case peer::MsgType::kDirAdd:
    case peer::MsgType::kDirRemove: {
      const auto& u = std::get<peer::DirUpdate>(m.body);
      if (!Serves(u.ns)) {
        return Reply(peer::MsgType::kAck,
                     peer::Ack{static_cast<int32_t>(absl::StatusCode::kPermissionDenied),
                               absl::StrCat("namespace '", u.ns, "' is not served here")});
      }
      int32_t code = 0;
      for (const peer::ObjectId& id : u.ids) {
        if (m.type == peer::MsgType::kDirRemove) {
          directory_.Remove(u.ns, KeyOf(id), u.holder);
        } else if (!directory_.Add(u.ns, KeyOf(id), u.holder)) {
          counters_.directory_full.fetch_add(1, std::memory_order_relaxed);
          code = static_cast<int32_t>(absl::StatusCode::kResourceExhausted);
        }
      }
      return Reply(peer::MsgType::kAck, peer::Ack{code, ""});
    }
    case peer::MsgType::kDirQuery: {
      const auto& q = std::get<peer::DirQuery>(m.body);
      peer::DirQueryReply r;
      r.holders.resize(q.ids.size());
      if (Serves(q.ns)) {
        for (size_t i = 0; i < q.ids.size(); ++i) {
          r.holders[i] = directory_.Holders(q.ns, KeyOf(q.ids[i]));
        }
      }
      return Reply(peer::MsgType::kDirQueryReply, std::move(r));
    }
    case peer::MsgType::kFetch:
      return Lend(std::get<peer::Fetch>(m.body));
    case peer::MsgType::kRelease:
      EndLease(std::get<peer::Release>(m.body).lease);
      return std::nullopt;
    default:
      return std::nullopt;  // replies are routed by the transport, never here
  }
}

peer::Message ClusterNode::Lend(const peer::Fetch& f) {
  if (!Serves(f.ns)) {
    return FetchError(absl::StatusCode::kPermissionDenied, f.id,
                      absl::StrCat("namespace '", f.ns, "' is not served here"));
  }
  NamespaceId ns;
  {
    absl::MutexLock lock(&mu_);
    auto it = ns_ids_.find(f.ns);
    if (it == ns_ids_.end()) return FetchError(absl::StatusCode::kNotFound, f.id, "no such page");
    ns = it->second;
  }
  const PageKey key = KeyOf(f.id);
  const absl::Time expires = absl::Now() + absl::Milliseconds(cc_.fetch_lease_ms);
  if (!store_.Pin(ns, {&key, 1}).ok()) {
    return FetchError(absl::StatusCode::kNotFound, f.id, "no such page");
  }
  // Pinned: the page cannot move while we look where it is.
  std::optional<PageEntry> e = store_.Find(ns, key);
  const TieredStore::SharedPool pool = store_.dram_pool();
  const uint32_t cls = e.has_value() ? static_cast<uint32_t>(e->cls) : 0;
  const uint32_t position = e.has_value() ? e->position : 0;
  if (e.has_value() && e->tier == Tier::kDram && dram_region_ != nullptr && e->slot < pool.slots) {
    const std::byte* at = dram_region_->base() + static_cast<size_t>(e->slot) * pool.slot_bytes;
    peer::FetchReply r;
    r.id = f.id;
    r.bytes = page_bytes_;
    r.checksum = PageChecksum(key, at, page_bytes_);
    r.remote_addr = reinterpret_cast<uint64_t>(at);
    r.rkey = dram_region_->packed_rkey();
    r.object_class = cls;
    r.object_position = position;
    store_.Touch(ns, key).IgnoreError();  // remote demand counts as an access; pinned, so present
    absl::MutexLock lock(&mu_);
    r.lease = next_lease_++;
    leases_.emplace(r.lease, Lease{ns, key, true, -1, expires});
    counters_.pages_lent.fetch_add(1, std::memory_order_relaxed);
    return Reply(peer::MsgType::kFetchReply, std::move(r));
  }
  // Elsewhere (HBM, NVMe): copied into a staging slot, then unpinned.
  int slot = -1;
  {
    absl::MutexLock lock(&mu_);
    if (!free_staging_.empty()) {
      slot = free_staging_.back();
      free_staging_.pop_back();
    }
  }
  if (slot < 0) {
    store_.Unpin(ns, {&key, 1}).IgnoreError();  // we hold that pin
    return FetchError(absl::StatusCode::kUnavailable, f.id,
                      "every staging slot is lent (cluster.staging_pages)");
  }
  std::byte* at = staging_buf_.data() + static_cast<size_t>(slot) * page_bytes_;
  MutableBuffer dst{at, page_bytes_};
  absl::StatusOr<Tier> got = store_.Get(ns, key, {&dst, 1});  // counts as an access
  store_.Unpin(ns, {&key, 1}).IgnoreError();                  // we hold that pin
  absl::MutexLock lock(&mu_);
  if (!got.ok()) {
    free_staging_.push_back(slot);
    return FetchError(absl::StatusCode::kNotFound, f.id, std::string(got.status().message()));
  }
  peer::FetchReply r;
  r.id = f.id;
  r.bytes = page_bytes_;
  r.checksum = PageChecksum(key, at, page_bytes_);
  r.remote_addr = reinterpret_cast<uint64_t>(at);
  r.rkey = staging_region_->packed_rkey();
  r.object_class = cls;
  r.object_position = position;
  r.lease = next_lease_++;
  leases_.emplace(r.lease, Lease{ns, key, false, slot, expires});
  counters_.pages_lent.fetch_add(1, std::memory_order_relaxed);
  return Reply(peer::MsgType::kFetchReply, std::move(r));
}

void ClusterNode::EndLease(uint64_t id) {
  absl::MutexLock lock(&mu_);
  auto it = leases_.find(id);
  if (it == leases_.end()) return;  // expired already, or never ours
  if (it->second.pinned) {
    store_.Unpin(it->second.ns, {&it->second.key, 1}).IgnoreError();  // the lease held it
  } else if (it->second.staging_slot >= 0) {
    free_staging_.push_back(it->second.staging_slot);
  }
  leases_.erase(it);
}

void ClusterNode::BackgroundLoop() {
  while (true) {
    std::vector<std::pair<std::string, PageKey>> batch;
    bool changed = false;
    {
      absl::MutexLock lock(&mu_);
      mu_.AwaitWithTimeout(absl::Condition(
                               +[](ClusterNode* c) ABSL_EXCLUSIVE_LOCKS_REQUIRED(c->mu_) {
                                 return c->stop_ || !c->to_announce_.empty() || c->members_changed_;
                               },
                               this),
                           absl::Milliseconds(250));
      if (stop_) return;
      batch.swap(to_announce_);
      changed = std::exchange(members_changed_, false);
      // Leases whose reader never came back: the page goes back to the store.
      const absl::Time now = absl::Now();
      for (auto it = leases_.begin(); it != leases_.end();) {
        if (it->second.expires < now) {
          if (it->second.pinned) {
            store_.Unpin(it->second.ns, {&it->second.key, 1}).IgnoreError();  // held by lease
          } else if (it->second.staging_slot >= 0) {
            free_staging_.push_back(it->second.staging_slot);
          }
          leases_.erase(it++);
        } else {
          ++it;
        }
      }
      if (changed) {
        // Membership moved homes: every page still held is announced again, to its new home.
        batch.clear();
        for (auto& [ns, keys] : held_) {
          auto id = ns_ids_.find(ns);
          for (auto k = keys.begin(); k != keys.end();) {
            if (id == ns_ids_.end() || !store_.Find(id->second, *k).has_value()) {
              keys.erase(k++);  // dropped here since: nothing to announce
            } else {
              batch.emplace_back(ns, *k);
              ++k;
            }
          }
        }
      }
    }
    if (changed) {
      // The directory keeps only what this node is still home for, and only live holders.
      std::vector<std::string> live;
      {
        absl::MutexLock lock(&mu_);
        for (const MemberInfo& m : members_) live.push_back(m.node_id);
      }
      directory_.Retain(
          [&](const std::string& ns, const PageKey& key) {
            const std::vector<MemberInfo> serving = ServingMembers(ns);
            if (serving.empty()) return false;
            std::vector<std::string> names;
            names.reserve(serving.size());
            for (const MemberInfo& m : serving) names.push_back(m.node_id);
            return names[HomeOf(names, ns, key)] == node_id_;
          },
          [&](const std::string& holder) {
            return std::find(live.begin(), live.end(), holder) != live.end();
          });
    }
    // Grouped by namespace, then sent one message per home.
    absl::flat_hash_map<std::string, std::vector<PageKey>> by_ns;
    for (auto& [ns, key] : batch) by_ns[ns].push_back(key);
    for (auto& [ns, keys] : by_ns) {
      for (size_t at = 0; at < keys.size(); at += 1024) {
        const size_t n = std::min<size_t>(1024, keys.size() - at);
        Announce(ns, absl::MakeConstSpan(keys).subspan(at, n), /*add=*/true, node_id_);
      }
    }
  }
}

std::string ClusterNode::ReadinessDetail() const {
  size_t members;
  {
    absl::MutexLock lock(&mu_);
    members = members_.size();
  }
  return absl::StrCat("cluster: node ", node_id_, " at ", peer_address_, "; etcd ",
                      etcd_reachable() ? "reachable" : "UNREACHABLE (serving locally)", "; ",
                      members, " members");
}

void ClusterNode::BindMetrics(metrics::Registry& registry) {
  auto& etcd_up = registry
                      .AddGauge("kvtier_cluster_etcd_reachable",
                                "1 when etcd answered this node's last renewal, 0 while it is "
                                "unreachable (the node serves locally meanwhile)")
                      .Get({});
  auto& members = registry.AddGauge("kvtier_cluster_members", "Live cluster members seen").Get({});
  auto& rejoins = registry
                      .AddCounter("kvtier_cluster_etcd_rejoins_total",
                                  "Times this node re-registered after losing its etcd lease")
                      .Get({});
  auto& fetches = registry.AddCounter("kvtier_cluster_remote_fetches_total",
                                      "Pages this node asked peers for, by result", {"result"});
  auto& fetch_bytes = registry
                          .AddCounter("kvtier_cluster_remote_fetch_bytes_total",
                                      "Verified page bytes fetched from peers")
                          .Get({});
  auto& lent = registry
                   .AddCounter("kvtier_cluster_pages_lent_total",
                               "Pages this node lent to peers for reading")
                   .Get({});
  auto& lookups =
      registry.AddCounter("kvtier_cluster_remote_lookup_pages_total",
                          "Pages looked up on peers after a local miss, by result", {"result"});
  auto& dir = registry
                  .AddGauge("kvtier_cluster_directory_entries",
                            "Pages this node is home for in the page directory")
                  .Get({});
  auto& peer_events = registry.AddCounter("kvtier_cluster_peer_events_total",
                                          "Peer transport events, by kind", {"kind"});
  auto& replicated = registry.AddCounter("kvtier_cluster_replication_pages_total",
                                         "Pages read often from peers and copied here, or put off "
                                         "by cluster.max_migration_bytes_per_s",
                                         {"result"});
  registry.AddCollector([this, &etcd_up, &members, &rejoins, &fetches, &fetch_bytes, &lent,
                         &lookups, &dir, &peer_events, &replicated] {
    auto r = [](const std::atomic<uint64_t>& a) {
      return static_cast<double>(a.load(std::memory_order_relaxed));
    };
    etcd_up.Set(membership_ != nullptr && membership_->etcd_reachable() ? 1 : 0);
    {
      absl::MutexLock lock(&mu_);
      members.Set(static_cast<double>(members_.size()));
    }
    if (membership_ != nullptr) rejoins.Set(static_cast<double>(membership_->rejoins()));
    fetches.Get({"ok"}).Set(r(counters_.fetch_ok));
    fetches.Get({"miss"}).Set(r(counters_.fetch_miss));
    fetches.Get({"failed"}).Set(r(counters_.fetch_failed));
    fetches.Get({"verify_failed"}).Set(r(counters_.verify_failed));
    fetch_bytes.Set(r(counters_.fetch_bytes));
    lent.Set(r(counters_.pages_lent));
    lookups.Get({"found"}).Set(r(counters_.lookups_found));
    lookups.Get({"missing"}).Set(r(counters_.lookups_missing));
    dir.Set(static_cast<double>(directory_.size()));
    const PeerTransportCounters t = transport_->Counters();
    peer_events.Get({"malformed"}).Set(static_cast<double>(t.malformed));
    peer_events.Get({"disconnected"}).Set(static_cast<double>(t.disconnects));
    peer_events.Get({"endpoint_error"}).Set(static_cast<double>(t.endpoint_errors));
    peer_events.Get({"timeout"}).Set(static_cast<double>(t.timeouts));
    peer_events.Get({"announce_failed"}).Set(r(counters_.announce_failed));
    peer_events.Get({"directory_full"}).Set(r(counters_.directory_full));
    replicated.Get({"replicated"}).Set(r(counters_.replicated));
    replicated.Get({"deferred_by_bandwidth"}).Set(r(counters_.replication_deferred));
  });
}

}  // namespace kvtier
