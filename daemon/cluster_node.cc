#include "daemon/cluster_node.h"

#include <fcntl.h>
#include <glog/logging.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

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

// The shared cluster secret: the file's bytes, trailing whitespace dropped. Refused when empty,
// oversized, or open to group or others (as ssh refuses a private key).
absl::StatusOr<std::string> ReadSecretFile(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    return absl::ErrnoToStatus(errno, absl::StrCat("cluster.secret_file '", path, "'"));
  }
  if ((st.st_mode & 077) != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("cluster.secret_file '", path, "' is open to group or others (mode 0",
                     absl::Hex(st.st_mode & 0777), "); chmod 600 it"));
  }
  constexpr off_t kMaxSecretBytes = 4096;
  if (st.st_size > kMaxSecretBytes) {
    return absl::InvalidArgumentError(absl::StrCat("cluster.secret_file '", path, "' holds ",
                                                   st.st_size, " bytes; at most ",
                                                   kMaxSecretBytes));
  }
  std::ifstream in(path, std::ios::binary);
  std::stringstream buf;
  buf << in.rdbuf();
  std::string secret = buf.str();
  while (!secret.empty() && std::isspace(static_cast<unsigned char>(secret.back()))) {
    secret.pop_back();
  }
  if (!in.good() && !in.eof()) {
    return absl::UnavailableError(absl::StrCat("cluster.secret_file '", path, "': read failed"));
  }
  if (secret.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("cluster.secret_file '", path, "' is empty"));
  }
  return secret;
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
  topt.busy_poll_us = cc_.busy_poll_us;
  // Directory requests are a lookup or update under the directory's own lock: answered on the
  // progress thread. Lending copies pages and takes store locks: it stays on handler threads.
  topt.inline_types = {peer::MsgType::kDirQuery, peer::MsgType::kDirAdd, peer::MsgType::kDirRemove};
  if (std::getenv("KVTIER_TEST_CORRUPT_LENDS") != nullptr) {
    corrupt_lends_for_test_ = true;
    LOG(WARNING) << "event=test_fault_injection what=corrupt_lent_checksums "
                    "(KVTIER_TEST_CORRUPT_LENDS is set: peers will refuse every page lent)";
  }
  if (!cc_.secret_file.empty()) {
    absl::StatusOr<std::string> secret = ReadSecretFile(cc_.secret_file);
    if (!secret.ok()) return secret.status();
    topt.secret = *std::move(secret);
  }
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
  // Staging slots, allocated by UCX: from its shared-memory domains when it has them, so a peer
  // on this host maps the slots and its gets from them are a memcpy. Such a peer asks for its
  // pages to be copied here (kFetchLendShared): read in place, over a shared-memory endpoint, a
  // page would go by UCX's active-message emulation of get, far slower.
  const size_t staging_bytes = static_cast<size_t>(cc_.staging_pages) * page_bytes_;
  absl::StatusOr<std::unique_ptr<ucx::Memory>> s = transport_->Allocate(staging_bytes);
  if (s.ok()) {
    shared_staging_ = true;
  } else {
    LOG(WARNING) << "event=cluster_shared_staging_unavailable error=\"" << s.status().message()
                 << "\" fallback=registered_heap (peers on this host read pages in place: slow)";
    staging_buf_.resize(staging_bytes);
    s = transport_->Register(staging_buf_.data(), staging_buf_.size());
  }
  if (!s.ok()) return s.status();
  staging_region_ = *std::move(s);
  {
    absl::MutexLock lock(&mu_);
    for (uint32_t i = 0; i < cc_.staging_pages; ++i) free_staging_.push_back(static_cast<int>(i));
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
            << " etcd=" << absl::StrJoin(cc_.etcd_endpoints, ",")
            << " peer_auth=" << (cc_.secret_file.empty() ? "off" : "secret_file");
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
    for (auto& [id, lease] : leases_) ReleaseLeaseLocked(lease);
    leases_.clear();
  }
  // Regions before the transport that registered them; the transport's destructor completes
  // every transfer still in flight first.
  transport_.reset();
  dram_region_.reset();
  staging_region_.reset();
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
  maps_staging_.clear();
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

absl::StatusOr<Tier> ClusterNode::Fetch(const std::string& ns_name, NamespaceId ns,
                                        const PageKey& key, absl::Span<const MutableBuffer> dst) {
  absl::StatusOr<Tier> result;
  FetchBatch(ns_name, ns, {&key, 1}, {&dst, 1}, {&result, 1});
  return result;
}

void ClusterNode::FetchBatch(const std::string& ns_name, NamespaceId ns,
                             absl::Span<const PageKey> keys,
                             absl::Span<const absl::Span<const MutableBuffer>> dsts,
                             absl::Span<absl::StatusOr<Tier>> results) {
  for (size_t i = 0; i < keys.size(); ++i) {
    results[i] = absl::NotFoundError(absl::StrCat("page ", keys[i].ToHex(), " is on no live peer"));
  }
  if (!Serves(ns_name)) {
    for (size_t i = 0; i < keys.size(); ++i) {
      results[i] = absl::NotFoundError(
          absl::StrCat("namespace '", ns_name, "' is not served by the cluster on this node"));
    }
    return;
  }
  std::vector<bool> sized(keys.size(), true);
  for (size_t i = 0; i < keys.size(); ++i) {
    size_t total = 0;
    for (const MutableBuffer& b : dsts[i]) total += b.size;
    if (total != page_bytes_) {
      sized[i] = false;
      results[i] = absl::InvalidArgumentError(
          absl::StrCat("destination of ", total, " bytes for pages of ", page_bytes_));
    }
  }
  {
    absl::MutexLock lock(&mu_);
    ns_ids_.try_emplace(ns_name, ns);
  }
  const std::vector<std::vector<MemberInfo>> holders = QueryHolders(ns_name, keys);
  // Each page goes to the first holder the directory names; pages a holder failed try the next
  // one in a later round, so a batch costs one call per holder while holders are healthy.
  std::vector<size_t> next(keys.size(), 0);
  std::vector<size_t> pending;
  for (size_t i = 0; i < keys.size(); ++i) {
    if (sized[i] && !holders[i].empty()) pending.push_back(i);
  }
  while (!pending.empty()) {
    std::vector<std::pair<const MemberInfo*, std::vector<size_t>>> by_holder;
    for (size_t i : pending) {
      const MemberInfo& h = holders[i][next[i]];
      auto it = std::find_if(by_holder.begin(), by_holder.end(),
                             [&](const auto& g) { return g.first->node_id == h.node_id; });
      if (it == by_holder.end()) {
        by_holder.emplace_back(&h, std::vector<size_t>{i});
      } else {
        it->second.push_back(i);
      }
    }
    for (const auto& [holder, idx] : by_holder) {
      // At most landing_pages pages under one lease; the rest ask again. A holder on this host
      // copies each page into its shared staging before it answers: the batch then goes as
      // sub-batches over two streams, so its copy of one overlaps our reads of the other.
      bool maps_staging = false;
      {
        absl::MutexLock lock(&mu_);
        auto it = maps_staging_.find(holder->peer_address);
        maps_staging = it != maps_staging_.end() && it->second;
      }
      const size_t step = maps_staging && idx.size() >= 2 * kSharedSubBatchPages
                              ? kSharedSubBatchPages
                              : cc_.landing_pages;
      std::vector<std::vector<size_t>> chunks;
      for (size_t at = 0; at < idx.size(); at += step) {
        const size_t end = std::min<size_t>(idx.size(), at + step);
        chunks.emplace_back(idx.begin() + static_cast<ptrdiff_t>(at),
                            idx.begin() + static_cast<ptrdiff_t>(end));
      }
      absl::Mutex stale_mu;
      std::vector<PageKey> gone;
      std::atomic<size_t> next_chunk{0};
      const MemberInfo& from = *holder;  // a structured binding cannot be captured (Clang 14)
      auto stream = [&] {
        for (size_t c; (c = next_chunk.fetch_add(1, std::memory_order_relaxed)) < chunks.size();) {
          // Each chunk writes only its own pages' results and blocks.
          const std::vector<size_t> stale =
              FetchFrom(from, ns_name, keys, chunks[c], dsts, results,
                        [&](size_t i, const peer::FetchEntry& e) {
                          MaybeReplicate(ns_name, ns, keys[i], e, dsts[i]);
                        });
          absl::MutexLock lock(&stale_mu);
          for (size_t i : stale) gone.push_back(keys[i]);
        }
      };
      std::thread second;
      if (step == kSharedSubBatchPages) second = std::thread(stream);
      stream();
      if (second.joinable()) second.join();
      // The directory was stale: tell the pages' homes.
      if (!gone.empty()) Announce(ns_name, gone, /*add=*/false, holder->node_id);
    }
    std::vector<size_t> again;
    for (size_t i : pending) {
      if (!results[i].ok() && ++next[i] < holders[i].size()) again.push_back(i);
    }
    pending.swap(again);
  }
  for (size_t i = 0; i < keys.size(); ++i) {
    if (results[i].ok()) {
      counters_.fetch_ok.fetch_add(1, std::memory_order_relaxed);
      counters_.fetch_bytes.fetch_add(page_bytes_, std::memory_order_relaxed);
    } else if (sized[i] && holders[i].empty()) {
      counters_.fetch_miss.fetch_add(1, std::memory_order_relaxed);
    }
  }
}

std::vector<size_t> ClusterNode::FetchFrom(
    const MemberInfo& h, const std::string& ns_name, absl::Span<const PageKey> keys,
    const std::vector<size_t>& idx, absl::Span<const absl::Span<const MutableBuffer>> dsts,
    absl::Span<absl::StatusOr<Tier>> results,
    absl::FunctionRef<void(size_t, const peer::FetchEntry&)> verified) {
  std::vector<size_t> stale;
  auto failed = [&](size_t n) { counters_.fetch_failed.fetch_add(n, std::memory_order_relaxed); };
  peer::Message req;
  req.type = peer::MsgType::kFetchBatch;
  peer::FetchBatch fb;
  fb.ns = ns_name;
  fb.ids.reserve(idx.size());
  for (size_t i : idx) fb.ids.push_back(IdOf(keys[i]));
  std::optional<bool> maps_staging;  // unknown: asked for, and found out from the reply
  {
    absl::MutexLock lock(&mu_);
    auto it = maps_staging_.find(h.peer_address);
    if (it != maps_staging_.end()) maps_staging = it->second;
  }
  if (maps_staging.value_or(true)) fb.flags |= peer::kFetchLendShared;
  req.body = std::move(fb);
  absl::StatusOr<peer::Message> r =
      transport_->Call(h.peer_address, std::move(req), absl::Milliseconds(cc_.request_timeout_ms));
  const auto* reply = r.ok() ? std::get_if<peer::FetchBatchReply>(&r->body) : nullptr;
  if (reply == nullptr) {
    failed(idx.size());
    LOG_EVERY_N(WARNING, 100) << "event=peer_fetch_failed peer=" << h.node_id << " error=\""
                              << (r.ok() ? "bad reply" : r.status().message()) << "\"";
    return stale;
  }
  auto release = [&] {
    if (reply->lease != 0) {
      transport_->Send(h.peer_address, Reply(peer::MsgType::kRelease, peer::Release{reply->lease}));
    }
  };
  if (!maps_staging.has_value()) LearnMapsStaging(h, *reply);
  if (reply->entries.size() != idx.size()) {
    counters_.verify_failed.fetch_add(idx.size(), std::memory_order_relaxed);
    LOG_EVERY_N(WARNING, 100) << "event=peer_fetch_reply_mismatch peer=" << h.node_id
                              << " entries=" << reply->entries.size() << " asked=" << idx.size();
    release();
    return stale;
  }
  // Every readable page's pieces, read straight into the destination; group k is page idx[k].
  std::vector<RemoteRead> reads;
  std::vector<bool> readable(idx.size(), false);
  for (size_t k = 0; k < idx.size(); ++k) {
    const peer::FetchEntry& e = reply->entries[k];
    const PageKey& key = keys[idx[k]];
    if (e.code == static_cast<int32_t>(absl::StatusCode::kNotFound)) {
      stale.push_back(idx[k]);
      continue;
    }
    if (e.code != 0) {
      failed(1);
      continue;
    }
    if (!(KeyOf(e.id) == key) || e.bytes != page_bytes_) {
      counters_.verify_failed.fetch_add(1, std::memory_order_relaxed);
      LOG_EVERY_N(WARNING, 100) << "event=peer_fetch_reply_mismatch peer=" << h.node_id
                                << " bytes=" << e.bytes;
      continue;
    }
    readable[k] = true;
    uint64_t off = 0;
    for (const MutableBuffer& b : dsts[idx[k]]) {
      reads.push_back(RemoteRead{e.remote_addr + off, e.rkey_index, b.data, b.size,
                                 static_cast<uint32_t>(k), nullptr});
      off += b.size;
    }
  }
  if (reads.empty()) {
    release();
    return stale;
  }
  absl::StatusOr<std::unique_ptr<GetBatch>> gets = transport_->StartGets(
      h.peer_address, reply->rkeys, std::move(reads), static_cast<uint32_t>(idx.size()),
      absl::Milliseconds(cc_.transfer_timeout_ms));
  if (!gets.ok()) {
    failed(std::count(readable.begin(), readable.end(), true));
    LOG_EVERY_N(WARNING, 100) << "event=peer_fetch_failed peer=" << h.node_id << " error=\""
                              << gets.status().message() << "\"";
    release();
    return stale;
  }
  for (size_t k = 0; k < idx.size(); ++k) {
    if (!readable[k]) continue;
    const size_t i = idx[k];
    // Page k is checked while pages k+1... are still moving.
    if (absl::Status got = (*gets)->Wait(static_cast<uint32_t>(k)); !got.ok()) {
      failed(1);
      LOG_EVERY_N(WARNING, 100) << "event=peer_fetch_failed peer=" << h.node_id << " error=\""
                                << got.message() << "\"";
      results[i] = absl::NotFoundError(absl::StrCat("page ", keys[i].ToHex(), " from peer ",
                                                    h.node_id, " failed: ", got.message()));
      continue;
    }
    if (PageChecksum(keys[i], dsts[i]) != reply->entries[k].checksum) {
      counters_.verify_failed.fetch_add(1, std::memory_order_relaxed);
      LOG_EVERY_N(WARNING, 100) << "event=peer_page_checksum_mismatch peer=" << h.node_id
                                << " key=" << keys[i].ToHex();
      results[i] =
          absl::NotFoundError(absl::StrCat("page ", keys[i].ToHex(), " from peer ", h.node_id,
                                           " does not match its checksum; not served"));
      continue;
    }
    results[i] = static_cast<Tier>(kRemoteTierByte);
  }
  gets->reset();  // every read is over: the holder may take its pages back
  release();
  for (size_t k = 0; k < idx.size(); ++k) {
    if (results[idx[k]].ok()) verified(idx[k], reply->entries[k]);
  }
  return stale;
}

void ClusterNode::LearnMapsStaging(const MemberInfo& h, const peer::FetchBatchReply& reply) {
  std::optional<bool> maps;
  if (reply.shared_rkey_index == peer::kNoRkey) {
    maps = false;
  } else {
    for (const peer::FetchEntry& e : reply.entries) {
      if (e.code != 0 || e.rkey_index != reply.shared_rkey_index) continue;
      absl::StatusOr<bool> m =
          transport_->Mappable(h.peer_address, reply.rkeys[reply.shared_rkey_index], e.remote_addr,
                               absl::Milliseconds(cc_.request_timeout_ms));
      if (m.ok()) maps = *m;
      break;
    }
  }
  if (!maps.has_value()) return;  // nothing lent from staging this time: ask again next time
  LOG(INFO) << "event=cluster_peer_data_path peer=" << h.node_id << " path="
            << (*maps ? "shared_staging (memcpy from a UCX shared-memory segment)"
                      : "in_place (the transport's RMA get)");
  absl::MutexLock lock(&mu_);
  maps_staging_[h.peer_address] = *maps;
}

void ClusterNode::MaybeReplicate(const std::string& ns_name, NamespaceId ns, const PageKey& key,
                                 const peer::FetchEntry& entry,
                                 absl::Span<const MutableBuffer> page) {
  const PageClass cls = static_cast<PageClass>(entry.object_class);
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
  po.position = entry.object_position;
  std::vector<ConstBuffer> src;
  src.reserve(page.size());
  for (const MutableBuffer& b : page) src.push_back({b.data, b.size});
  // Placed by this node's own policy like any page; a full node may simply not keep it.
  if (store_.Put(ns, key, src, po).ok()) {
    counters_.replicated.fetch_add(1, std::memory_order_relaxed);
    Stored(ns_name, ns, key);
  }
}

void ClusterNode::Stored(const std::string& ns_name, NamespaceId ns, const PageKey& key) {
  if (!Serves(ns_name)) return;
  absl::MutexLock lock(&mu_);
  ns_ids_.try_emplace(ns_name, ns);
  lend_checksums_.erase(std::make_pair(ns, key));  // its bytes may be new
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
    case peer::MsgType::kFetchBatch: {
      const auto& f = std::get<peer::FetchBatch>(m.body);
      return Reply(peer::MsgType::kFetchBatchReply, LendBatch(f.ns, f.ids, f.flags));
    }
    case peer::MsgType::kRelease:
      EndLease(std::get<peer::Release>(m.body).lease);
      return std::nullopt;
    case peer::MsgType::kPush:
      return Reply(peer::MsgType::kAck, AcceptPush(std::get<peer::Push>(m.body)));
    default:
      return std::nullopt;  // replies are routed by the transport, never here
  }
}

peer::Message ClusterNode::Lend(const peer::Fetch& f) {
  // The one-page request: a batch of one, answered in the one-page reply's shape.
  peer::FetchBatchReply b = LendBatch(f.ns, {&f.id, 1}, /*flags=*/0);
  const peer::FetchEntry& e = b.entries[0];
  if (e.code != 0) {
    return FetchError(static_cast<absl::StatusCode>(e.code), f.id,
                      e.code == static_cast<int32_t>(absl::StatusCode::kPermissionDenied)
                          ? absl::StrCat("namespace '", f.ns, "' is not served here")
                          : "page not lent");
  }
  peer::FetchReply r;
  r.id = e.id;
  r.bytes = e.bytes;
  r.checksum = e.checksum;
  r.remote_addr = e.remote_addr;
  r.lease = b.lease;
  r.object_class = e.object_class;
  r.object_position = e.object_position;
  r.rkey = b.rkeys[e.rkey_index];
  return Reply(peer::MsgType::kFetchReply, std::move(r));
}

uint64_t ClusterNode::LendChecksum(NamespaceId ns, const PageKey& key, const std::byte* at) {
  {
    absl::MutexLock lock(&mu_);
    auto it = lend_checksums_.find(std::make_pair(ns, key));
    if (it != lend_checksums_.end()) return it->second;
  }
  const uint64_t sum = PageChecksum(key, at, page_bytes_);
  absl::MutexLock lock(&mu_);
  if (lend_checksums_.size() >= (1u << 18)) lend_checksums_.clear();  // a bound, not a policy
  lend_checksums_[std::make_pair(ns, key)] = sum;
  return sum;
}

peer::FetchBatchReply ClusterNode::LendBatch(const std::string& ns_name,
                                             absl::Span<const peer::ObjectId> ids, uint32_t flags) {
  peer::FetchBatchReply out;
  out.entries.resize(ids.size());
  for (size_t k = 0; k < ids.size(); ++k) {
    out.entries[k].id = ids[k];
    out.entries[k].code = static_cast<int32_t>(absl::StatusCode::kNotFound);
  }
  if (!Serves(ns_name)) {
    for (peer::FetchEntry& e : out.entries) {
      e.code = static_cast<int32_t>(absl::StatusCode::kPermissionDenied);
    }
    return out;
  }
  NamespaceId ns;
  {
    absl::MutexLock lock(&mu_);
    auto it = ns_ids_.find(ns_name);
    if (it == ns_ids_.end()) return out;
    ns = it->second;
  }
  // Remote keys of the regions pages are lent from: the DRAM pool (in place) and staging.
  uint32_t dram_key = 0, staging_key = 0;
  if (dram_region_ != nullptr) {
    dram_key = static_cast<uint32_t>(out.rkeys.size());
    out.rkeys.push_back(dram_region_->packed_rkey());
  }
  staging_key = static_cast<uint32_t>(out.rkeys.size());
  out.rkeys.push_back(staging_region_->packed_rkey());
  if (shared_staging_) out.shared_rkey_index = staging_key;
  // The requester maps our staging slots: DRAM pages are copied there too (one local memcpy
  // here, one memcpy there) rather than read in place, while slots last.
  const bool copy_dram = shared_staging_ && (flags & peer::kFetchLendShared) != 0;
  size_t lent_shared = 0;
  const TieredStore::SharedPool pool = store_.dram_pool();
  Lease lease;
  lease.ns = ns;
  lease.expires = absl::Now() + absl::Milliseconds(cc_.fetch_lease_ms);
  for (size_t k = 0; k < ids.size(); ++k) {
    peer::FetchEntry& e = out.entries[k];
    const PageKey key = KeyOf(ids[k]);
    if (!store_.Pin(ns, {&key, 1}).ok()) continue;  // not here (NotFound)
    // Pinned: the page cannot move while we look where it is.
    std::optional<PageEntry> pe = store_.Find(ns, key);
    e.object_class = pe.has_value() ? static_cast<uint32_t>(pe->cls) : 0;
    e.object_position = pe.has_value() ? pe->position : 0;
    e.bytes = page_bytes_;
    const bool in_dram = pe.has_value() && pe->tier == Tier::kDram && dram_region_ != nullptr &&
                         pe->slot < pool.slots;
    int slot = -1;
    if (!in_dram || copy_dram) {
      // A DRAM page (which can be lent in place) takes a slot only while enough stay free for
      // every later page of this request, which may need one (HBM, NVMe pages have no other way).
      const size_t later = ids.size() - k - 1;
      absl::MutexLock lock(&mu_);
      if (!free_staging_.empty() && (!in_dram || free_staging_.size() > later)) {
        slot = free_staging_.back();
        free_staging_.pop_back();
      }
    }
    if (in_dram && slot < 0) {
      if (copy_dram) {
        counters_.shared_staging_full.fetch_add(1, std::memory_order_relaxed);
        LOG_FIRST_N(WARNING, 1) << "event=cluster_shared_staging_full staging_pages="
                                << cc_.staging_pages
                                << " (a page for a peer on this host is read in place: slower)";
      }
      const std::byte* at = dram_region_->base() + static_cast<size_t>(pe->slot) * pool.slot_bytes;
      e.checksum = LendChecksum(ns, key, at);
      e.remote_addr = reinterpret_cast<uint64_t>(at);
      e.rkey_index = dram_key;
      e.code = 0;
      store_.Touch(ns, key).IgnoreError();  // remote demand counts as an access; pinned: present
      lease.pinned.push_back(key);
      continue;
    }
    // Elsewhere (HBM, NVMe), or for a peer that maps staging: copied into a staging slot, then
    // unpinned.
    if (slot < 0) {
      store_.Unpin(ns, {&key, 1}).IgnoreError();                      // we hold that pin
      e.code = static_cast<int32_t>(absl::StatusCode::kUnavailable);  // staging_pages all lent
      continue;
    }
    std::byte* at = staging_region_->base() + static_cast<size_t>(slot) * page_bytes_;
    MutableBuffer dst{at, page_bytes_};
    absl::StatusOr<Tier> got = store_.Get(ns, key, {&dst, 1});  // counts as an access
    store_.Unpin(ns, {&key, 1}).IgnoreError();                  // we hold that pin
    if (!got.ok()) {
      absl::MutexLock lock(&mu_);
      free_staging_.push_back(slot);
      continue;
    }
    e.checksum = LendChecksum(ns, key, at);
    e.remote_addr = reinterpret_cast<uint64_t>(at);
    e.rkey_index = staging_key;
    e.code = 0;
    lease.staging_slots.push_back(slot);
    if (copy_dram) ++lent_shared;
  }
  if (corrupt_lends_for_test_) {
    for (peer::FetchEntry& e : out.entries) e.checksum ^= 1;
  }
  const size_t lent = lease.pinned.size() + lease.staging_slots.size();
  if (lent == 0) return out;
  absl::MutexLock lock(&mu_);
  out.lease = next_lease_++;
  leases_.emplace(out.lease, std::move(lease));
  counters_.pages_lent.fetch_add(lent, std::memory_order_relaxed);
  counters_.pages_lent_shared.fetch_add(lent_shared, std::memory_order_relaxed);
  return out;
}

void ClusterNode::ReleaseLeaseLocked(Lease& lease) {
  if (!lease.pinned.empty()) store_.Unpin(lease.ns, lease.pinned).IgnoreError();  // lease held
  for (int slot : lease.staging_slots) free_staging_.push_back(slot);
  lease.pinned.clear();
  lease.staging_slots.clear();
}

void ClusterNode::EndLease(uint64_t id) {
  absl::MutexLock lock(&mu_);
  auto it = leases_.find(id);
  if (it == leases_.end()) return;  // expired already, or never ours
  ReleaseLeaseLocked(it->second);
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
          ReleaseLeaseLocked(it->second);
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
    MaybePush();
  }
}

std::pair<uint64_t, uint64_t> ClusterNode::FreeAndCapacity() const {
  uint64_t free = 0, capacity = 0;
  for (Tier t : {Tier::kHbm, Tier::kDram, Tier::kNvme}) {
    if (!store_.has_tier(t)) continue;
    const TierUsage u = store_.Usage(t);
    capacity += u.capacity_slots;
    free += u.capacity_slots > u.used_slots ? u.capacity_slots - u.used_slots : 0;
  }
  return {free, capacity};
}

void ClusterNode::MaybePush() {
  if (cc_.push_below_free_fraction <= 0) return;
  const auto [free, capacity] = FreeAndCapacity();
  if (capacity == 0 ||
      static_cast<double>(free) >= cc_.push_below_free_fraction * static_cast<double>(capacity)) {
    return;
  }
  // The coldest pages held here that are not sinks and were not pushed yet. A bounded scan:
  // pressure persists, so the next turn sees the pages this one did not reach.
  struct Candidate {
    uint64_t last_access_ns;
    std::string ns;
    PageKey key;
  };
  constexpr size_t kMaxScan = 16384;
  std::vector<Candidate> cold;
  {
    absl::MutexLock lock(&mu_);
    size_t scanned = 0;
    for (const auto& [ns, keys] : held_) {
      auto id = ns_ids_.find(ns);
      if (id == ns_ids_.end()) continue;
      for (const PageKey& k : keys) {
        if (++scanned > kMaxScan) break;
        if (pushed_.contains(std::make_pair(ns, k))) continue;
        std::optional<PageEntry> e = store_.Find(id->second, k);
        if (!e.has_value() || e->cls == PageClass::kSink || e->in_sink_slot) continue;
        cold.push_back(Candidate{e->stats.last_access_ns, ns, k});
      }
    }
  }
  if (cold.empty()) return;
  const size_t n = std::min<size_t>(cold.size(), cc_.landing_pages);
  std::partial_sort(
      cold.begin(), cold.begin() + static_cast<ptrdiff_t>(n), cold.end(),
      [](const Candidate& a, const Candidate& b) { return a.last_access_ns < b.last_access_ns; });
  cold.resize(n);
  // One Push per namespace, to the live peer that serves it and advertises the most room.
  absl::flat_hash_map<std::string, std::vector<PageKey>> by_ns;
  for (const Candidate& c : cold) by_ns[c.ns].push_back(c.key);
  const std::vector<MemberInfo> live = membership_->Members();
  for (auto& [ns, keys] : by_ns) {
    const MemberInfo* target = nullptr;
    for (const MemberInfo& m : live) {
      if (m.node_id == node_id_ || !m.Serves(ns) || m.page_bytes != page_bytes_ ||
          m.free_slots < keys.size()) {
        continue;
      }
      if (target == nullptr || m.free_slots > target->free_slots) target = &m;
    }
    if (target == nullptr) {
      counters_.push_no_peer.fetch_add(keys.size(), std::memory_order_relaxed);
      continue;
    }
    {
      // The push budget: a token bucket holding at most one second of bandwidth.
      absl::MutexLock lock(&mu_);
      const absl::Time now = absl::Now();
      push_tokens_ = std::min(
          cc_.max_push_bytes_per_s,
          push_tokens_ + absl::ToDoubleSeconds(now - push_refilled_) * cc_.max_push_bytes_per_s);
      push_refilled_ = now;
      const auto affordable = static_cast<size_t>(push_tokens_ / static_cast<double>(page_bytes_));
      if (affordable < keys.size()) {
        counters_.push_deferred.fetch_add(keys.size() - affordable, std::memory_order_relaxed);
        keys.resize(affordable);
      }
      push_tokens_ -= static_cast<double>(keys.size() * page_bytes_);
    }
    if (keys.empty()) continue;
    peer::Push push;
    push.ns = ns;
    push.holder = node_id_;
    for (const PageKey& k : keys) push.ids.push_back(IdOf(k));
    peer::Message m;
    m.type = peer::MsgType::kPush;
    m.body = std::move(push);
    // The peer fetches the pages before it answers: a transfer's time, not a request's.
    absl::StatusOr<peer::Message> r =
        transport_->Call(target->peer_address, std::move(m),
                         absl::Milliseconds(cc_.request_timeout_ms + cc_.transfer_timeout_ms));
    const auto* ack = r.ok() ? std::get_if<peer::Ack>(&r->body) : nullptr;
    if (ack == nullptr || ack->code != 0) {
      counters_.push_refused.fetch_add(keys.size(), std::memory_order_relaxed);
      LOG_EVERY_N(WARNING, 100) << "event=cluster_push_refused peer=" << target->node_id
                                << " pages=" << keys.size() << " error=\""
                                << (!r.ok()          ? r.status().message()
                                    : ack == nullptr ? "bad reply"
                                                     : absl::string_view(ack->error))
                                << "\"";
      continue;
    }
    counters_.pushed.fetch_add(keys.size(), std::memory_order_relaxed);
    counters_.push_bytes.fetch_add(keys.size() * page_bytes_, std::memory_order_relaxed);
    absl::MutexLock lock(&mu_);
    if (pushed_.size() > (1u << 18)) pushed_.clear();  // a bound, not a policy
    for (const PageKey& k : keys) pushed_.insert(std::make_pair(ns, k));
  }
}

peer::Ack ClusterNode::AcceptPush(const peer::Push& p) {
  auto refuse = [](absl::StatusCode code, std::string why) {
    return peer::Ack{static_cast<int32_t>(code), std::move(why)};
  };
  if (!Serves(p.ns)) {
    return refuse(absl::StatusCode::kPermissionDenied,
                  absl::StrCat("namespace '", p.ns, "' is not served here"));
  }
  if (p.ids.size() > cc_.landing_pages) {
    return refuse(absl::StatusCode::kInvalidArgument,
                  absl::StrCat("push of ", p.ids.size(), " pages exceeds cluster.landing_pages (",
                               cc_.landing_pages, ")"));
  }
  NamespaceId ns;
  {
    absl::MutexLock lock(&mu_);
    auto it = ns_ids_.find(p.ns);
    if (it == ns_ids_.end()) {
      return refuse(absl::StatusCode::kFailedPrecondition,
                    absl::StrCat("namespace '", p.ns, "' has not been opened on this node"));
    }
    ns = it->second;
  }
  const std::vector<MemberInfo> serving = ServingMembers(p.ns);
  auto from = std::find_if(serving.begin(), serving.end(),
                           [&](const MemberInfo& m) { return m.node_id == p.holder; });
  if (from == serving.end() || p.holder == node_id_) {
    return refuse(absl::StatusCode::kFailedPrecondition,
                  absl::StrCat("'", p.holder, "' is not a live member serving '", p.ns, "'"));
  }
  if (FreeAndCapacity().first < p.ids.size()) {
    return refuse(absl::StatusCode::kResourceExhausted,
                  absl::StrCat("no room here for ", p.ids.size(), " pages"));
  }
  // Landed in a buffer of our own, verified, then stored like any page.
  std::vector<std::byte> buf(p.ids.size() * page_bytes_);
  std::vector<PageKey> keys;
  std::vector<MutableBuffer> pages;
  std::vector<absl::Span<const MutableBuffer>> dsts;
  std::vector<size_t> idx;
  keys.reserve(p.ids.size());
  pages.reserve(p.ids.size());
  for (size_t i = 0; i < p.ids.size(); ++i) {
    keys.push_back(KeyOf(p.ids[i]));
    pages.push_back({buf.data() + i * page_bytes_, page_bytes_});
    idx.push_back(i);
  }
  dsts.reserve(pages.size());
  for (const MutableBuffer& b : pages) dsts.emplace_back(&b, 1);
  std::vector<absl::StatusOr<Tier>> results(p.ids.size(), absl::UnavailableError("not fetched"));
  size_t kept = 0;
  FetchFrom(*from, p.ns, keys, idx, dsts, absl::MakeSpan(results),
            [&](size_t i, const peer::FetchEntry& e) {
              const auto cls = static_cast<PageClass>(e.object_class);
              if (cls == PageClass::kSink) return;  // sinks never leave their node
              PutOptions po;
              po.class_hint = cls == PageClass::kSemantic ? cls : PageClass::kUnknown;
              po.position = e.object_position;
              const ConstBuffer src{pages[i].data, pages[i].size};
              if (store_.Put(ns, keys[i], {&src, 1}, po).ok()) {
                Stored(p.ns, ns, keys[i]);
                ++kept;
              }
            });
  counters_.push_received.fetch_add(kept, std::memory_order_relaxed);
  if (kept < p.ids.size()) {
    return refuse(absl::StatusCode::kUnavailable,
                  absl::StrCat("kept ", kept, " of ", p.ids.size(), " pushed pages"));
  }
  return peer::Ack{0, ""};
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
  auto& lent_shared =
      registry
          .AddCounter("kvtier_cluster_pages_lent_shared_total",
                      "Pages lent through the shared staging slots to peers on this host that map "
                      "them (their gets are a memcpy, not a transport read)")
          .Get({});
  auto& staging_full =
      registry
          .AddCounter("kvtier_cluster_shared_staging_full_total",
                      "Pages a peer on this host asked to read through shared staging that were "
                      "lent in place instead, all cluster.staging_pages slots being lent")
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
  auto& pushes =
      registry.AddCounter("kvtier_cluster_push_pages_total",
                          "Cold pages this node pushed to a peer with room (pushed, refused, "
                          "deferred_by_bandwidth by cluster.max_push_bytes_per_s, no_peer) or "
                          "took from a peer (received)",
                          {"result"});
  auto& push_bytes = registry
                         .AddCounter("kvtier_cluster_push_bytes_total",
                                     "Page bytes this node pushed to peers and they kept")
                         .Get({});
  registry.AddCollector([this, &etcd_up, &members, &rejoins, &fetches, &fetch_bytes, &lent,
                         &lent_shared, &staging_full, &lookups, &dir, &peer_events, &replicated,
                         &pushes, &push_bytes] {
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
    lent_shared.Set(r(counters_.pages_lent_shared));
    staging_full.Set(r(counters_.shared_staging_full));
    lookups.Get({"found"}).Set(r(counters_.lookups_found));
    lookups.Get({"missing"}).Set(r(counters_.lookups_missing));
    dir.Set(static_cast<double>(directory_.size()));
    const PeerTransportCounters t = transport_->Counters();
    peer_events.Get({"malformed"}).Set(static_cast<double>(t.malformed));
    peer_events.Get({"disconnected"}).Set(static_cast<double>(t.disconnects));
    peer_events.Get({"endpoint_error"}).Set(static_cast<double>(t.endpoint_errors));
    peer_events.Get({"timeout"}).Set(static_cast<double>(t.timeouts));
    peer_events.Get({"auth_refused"}).Set(static_cast<double>(t.auth_refused));
    peer_events.Get({"announce_failed"}).Set(r(counters_.announce_failed));
    peer_events.Get({"directory_full"}).Set(r(counters_.directory_full));
    replicated.Get({"replicated"}).Set(r(counters_.replicated));
    replicated.Get({"deferred_by_bandwidth"}).Set(r(counters_.replication_deferred));
    pushes.Get({"pushed"}).Set(r(counters_.pushed));
    pushes.Get({"refused"}).Set(r(counters_.push_refused));
    pushes.Get({"deferred_by_bandwidth"}).Set(r(counters_.push_deferred));
    pushes.Get({"no_peer"}).Set(r(counters_.push_no_peer));
    pushes.Get({"received"}).Set(r(counters_.push_received));
    push_bytes.Set(r(counters_.push_bytes));
  });
}

}  // namespace kvtier
