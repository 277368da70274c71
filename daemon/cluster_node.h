// ClusterNode: kvtierd as one node of a cluster (DESIGN.md §5). Composes the transport module's
// pieces — etcd Membership and the UCX PeerTransport — with this node's TieredStore and a
// PageDirectory, and answers the dispatcher's cluster hooks (daemon/cluster_hook.h).
//
// A page's life across nodes:
//  - Stored here: remembered as held, announced (batched, in the background) to its home node,
//    the live member serving its namespace that wins rendezvous hashing.
//  - Missed here (Lookup/Load): a Load's misses go as one batch. Each page's home node is asked
//    who holds it (one query per home); each holder is asked to lend its pages (one FetchBatch
//    per holder), answering with addresses, remote keys, checksums and one lease; the bytes
//    come by RMA get straight into the worker's blocks, all pages in flight together, and each
//    page is verified there against key and checksum while later ones still move. Any failure
//    on the way — the holder died mid-transfer, a timeout, a checksum that does not match — is a
//    miss reported for that page (the block's bytes are then unspecified and never served).
//  - Lent from here: a page in the DRAM pool is pinned and read in place; one elsewhere (HBM,
//    NVMe) is copied into a staging slot first. Staging is allocated by UCX in its shared-memory
//    domain, so a reader on this host maps it: such a reader asks for DRAM pages to be copied
//    there too, and its get is then a memcpy rather than a read through the transport (a batch
//    from such a holder goes as sub-batches on two streams, so the holder's copy of one overlaps
//    the reads of the other). Either is held until the reader releases its lease or
//    `fetch_lease_ms` passes.
//  - Short of space here (free slots under `push_below_free_fraction` of capacity): the coldest
//    non-sink pages held here are offered (Push) to the live peer advertising the most free
//    room, within `max_push_bytes_per_s`; the peer fetches them like any page, verifies them,
//    stores them and announces itself as a holder, so the directory finds them there after this
//    node's own policy drops them. Sinks never leave their node.
//  - Membership changed: every held page is re-announced to its (possibly new) home, and the
//    directory drops holders that left and entries this node is no longer home for.
//
// Isolation: only namespaces in `cluster.namespaces` are announced, looked up, fetched or lent,
// and only members that advertise a namespace are asked about it or given its pages.
//
// Thread model: hook calls come from connection and I/O threads; requests from peers arrive on
// the transport's handler threads; one background thread announces pages, expires leases and
// follows membership changes. Shared state is under mu_ (and the directory's own lock).
#pragma once

#include <sys/mman.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "daemon/cluster_directory.h"
#include "daemon/cluster_hook.h"
#include "daemon/config.h"
#include "daemon/observability/metrics.h"
#include "tiering/tiered_store.h"
#include "transport/membership.h"
#include "transport/peer_transport.h"

namespace kvtier {

class ClusterNode final : public ClusterPages {
 public:
  // `registry` (may be null) gets the kvtier_cluster_* metrics and must outlive the node;
  // `http_port` is advertised so operators (and tests) find each node's /metrics.
  static absl::StatusOr<std::unique_ptr<ClusterNode>> Start(const DaemonConfig& config,
                                                            TieredStore& store,
                                                            metrics::Registry* registry,
                                                            int http_port);
  ~ClusterNode() override;

  size_t RemotePrefix(const std::string& ns_name, NamespaceId ns,
                      absl::Span<const PageKey> keys) override;
  absl::StatusOr<Tier> Fetch(const std::string& ns_name, NamespaceId ns, const PageKey& key,
                             absl::Span<const MutableBuffer> dst) override;
  void FetchBatch(const std::string& ns_name, NamespaceId ns, absl::Span<const PageKey> keys,
                  absl::Span<const absl::Span<const MutableBuffer>> dsts,
                  absl::Span<absl::StatusOr<Tier>> results) override;
  void Stored(const std::string& ns_name, NamespaceId ns, const PageKey& key) override;

  const std::string& node_id() const { return node_id_; }
  const std::string& peer_address() const { return peer_address_; }
  bool etcd_reachable() const { return membership_->etcd_reachable(); }
  // One line for /readyz: etcd reachable or not, and the members this node works with.
  std::string ReadinessDetail() const;

 private:
  struct Counters {
    std::atomic<uint64_t> fetch_ok{0}, fetch_miss{0}, fetch_failed{0}, verify_failed{0};
    std::atomic<uint64_t> fetch_bytes{0}, pages_lent{0}, lookups_found{0}, lookups_missing{0};
    std::atomic<uint64_t> pages_lent_shared{0}, shared_staging_full{0};
    std::atomic<uint64_t> announce_failed{0}, directory_full{0};
    std::atomic<uint64_t> replicated{0}, replication_deferred{0};
    std::atomic<uint64_t> pushed{0}, push_bytes{0}, push_refused{0}, push_deferred{0};
    std::atomic<uint64_t> push_no_peer{0}, push_received{0};
  };
  struct Lease {
    NamespaceId ns;
    std::vector<PageKey> pinned;     // in-place DRAM reads: unpinned when done
    std::vector<int> staging_slots;  // pages copied out of HBM/NVMe: slots freed when done
    absl::Time expires;
  };
  struct Mapped {  // the DRAM pool mapped read-only for RMA
    void* base = MAP_FAILED;
    size_t length = 0;
    ~Mapped() {
      if (base != MAP_FAILED) ::munmap(base, length);
    }
  };

  // Pages per sub-batch when a batch comes from a holder that lends through shared staging
  // (two sub-batches in flight: the holder's copy of one overlaps the reads of the other; two
  // of them fit the default cluster.staging_pages).
  static constexpr size_t kSharedSubBatchPages = 4;

  ClusterNode(const DaemonConfig& config, TieredStore& store);
  absl::Status Init(metrics::Registry* registry, int http_port);
  MemberInfo Self() const;
  bool Serves(const std::string& ns) const;
  // Live members serving `ns` (this node included when it serves it).
  std::vector<MemberInfo> ServingMembers(const std::string& ns) const;
  // Holders (live, serving ns, not this node) of each key, asking each key's home.
  std::vector<std::vector<MemberInfo>> QueryHolders(const std::string& ns,
                                                    absl::Span<const PageKey> keys);
  void Announce(const std::string& ns, absl::Span<const PageKey> keys, bool add,
                const std::string& holder);
  std::optional<peer::Message> OnRequest(const peer::Message& m);
  peer::Message Lend(const peer::Fetch& f);
  // Lends many pages under one lease: DRAM pages in place, others through staging slots.
  // With peer::kFetchLendShared in `flags` (a requester on this host), DRAM pages are copied
  // into staging too, while slots last.
  peer::FetchBatchReply LendBatch(const std::string& ns_name, absl::Span<const peer::ObjectId> ids,
                                  uint32_t flags);
  // Fetches pages [idx] of a batch from one holder: one FetchBatch call, the gets of every page
  // in flight together, each page verified in its destination while later ones still move.
  // Fills results[i] with the remote tier for every verified page; returns the pages the
  // holder no longer had (stale directory entries).
  // `verified(i, entry)` runs for each verified page once the holder's lease is released.
  std::vector<size_t> FetchFrom(const MemberInfo& holder, const std::string& ns_name,
                                absl::Span<const PageKey> keys, const std::vector<size_t>& idx,
                                absl::Span<const absl::Span<const MutableBuffer>> dsts,
                                absl::Span<absl::StatusOr<Tier>> results,
                                absl::FunctionRef<void(size_t, const peer::FetchEntry&)> verified);
  // From a FetchBatch reply: whether `h`'s staging slots map here (then later requests ask for
  // peer::kFetchLendShared), remembered per peer.
  void LearnMapsStaging(const MemberInfo& h, const peer::FetchBatchReply& reply);
  // Free page slots over all tiers, and their capacity.
  std::pair<uint64_t, uint64_t> FreeAndCapacity() const;
  // Background: pushes cold non-sink pages to a peer with room when this node is short of it.
  void MaybePush();
  // A peer's Push: fetch its pages, verify, store, announce. Runs on a handler thread.
  peer::Ack AcceptPush(const peer::Push& p);
  void EndLease(uint64_t lease);
  void ReleaseLeaseLocked(Lease& lease) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The checksum peers verify `key` against: cached per page (bytes under a key do not change
  // while it is cached here; Stored() forgets it when the key is stored again).
  uint64_t LendChecksum(NamespaceId ns, const PageKey& key, const std::byte* at);
  void BackgroundLoop();
  void OnMembershipChanged(std::vector<MemberInfo> live);
  void BindMetrics(metrics::Registry& registry);
  // After a verified fetch: keeps a local copy of a page read often from peers, within the
  // migration budget. Sinks are never copied off their node.
  void MaybeReplicate(const std::string& ns_name, NamespaceId ns, const PageKey& key,
                      const peer::FetchEntry& entry, absl::Span<const MutableBuffer> page);

  const ClusterConfig& cc_;
  TieredStore& store_;
  const uint64_t page_bytes_;
  std::string node_id_;
  std::string peer_address_;
  int http_port_ = 0;
  Counters counters_;
  PageDirectory directory_;

  std::unique_ptr<PeerTransport> transport_;
  std::unique_ptr<Membership> membership_;
  Mapped dram_map_;
  std::vector<std::byte> staging_buf_;
  std::unique_ptr<ucx::Memory> dram_region_, staging_region_;
  // Staging was allocated by UCX (its shared-memory domains first), so peers on this host may
  // map it; false when only the registered heap fallback (staging_buf_) was had.
  bool shared_staging_ = false;
  // Fault injection for the cluster tests (environment KVTIER_TEST_CORRUPT_LENDS set): every
  // checksum this node lends is wrong, so its peers must refuse every page it sends.
  bool corrupt_lends_for_test_ = false;

  mutable absl::Mutex mu_;
  std::vector<MemberInfo> members_ ABSL_GUARDED_BY(mu_);  // live, from etcd (self included)
  absl::flat_hash_map<std::string, NamespaceId> ns_ids_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, absl::flat_hash_set<PageKey>> held_ ABSL_GUARDED_BY(mu_);
  std::vector<std::pair<std::string, PageKey>> to_announce_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<uint64_t, Lease> leases_ ABSL_GUARDED_BY(mu_);
  uint64_t next_lease_ ABSL_GUARDED_BY(mu_) = 1;
  std::vector<int> free_staging_ ABSL_GUARDED_BY(mu_);
  // Checksums of pages lent before (bounded: cleared when it grows large).
  absl::flat_hash_map<std::pair<NamespaceId, PageKey>, uint64_t> lend_checksums_
      ABSL_GUARDED_BY(mu_);
  bool members_changed_ ABSL_GUARDED_BY(mu_) = false;
  // Per peer address: whether that holder's staging slots map here (peer::kFetchLendShared is
  // then asked for). Absent: not known yet, asked for optimistically. Cleared on membership
  // changes (an address may now be another process).
  absl::flat_hash_map<std::string, bool> maps_staging_ ABSL_GUARDED_BY(mu_);
  // Remote reads per page since it was last replicated (bounded: cleared when it grows large).
  absl::flat_hash_map<std::pair<std::string, PageKey>, uint32_t> remote_reads_ ABSL_GUARDED_BY(mu_);
  double migration_tokens_ ABSL_GUARDED_BY(mu_) = 0;  // bytes replication may copy now
  // Pages pushed to a peer already (bounded: cleared when it grows large).
  absl::flat_hash_set<std::pair<std::string, PageKey>> pushed_ ABSL_GUARDED_BY(mu_);
  double push_tokens_ ABSL_GUARDED_BY(mu_) = 0;  // bytes pushes may send now
  absl::Time push_refilled_ ABSL_GUARDED_BY(mu_) = absl::Now();
  absl::Time migration_refilled_ ABSL_GUARDED_BY(mu_) = absl::Now();
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread background_;
};

}  // namespace kvtier
