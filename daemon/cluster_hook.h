// The dispatcher's window onto the cluster (DESIGN.md §5): three calls on the paths where a node
// meets its peers — a Lookup that missed locally, a Load that missed locally, a Store that
// succeeded. Each is a no-op when kvtierd runs standalone, so the dispatcher calls them
// unconditionally from one line each and knows nothing else about peers.
//
// Pages found on a peer are reported in LookupReply.tiers and PageStatusReply.tiers as
// kRemoteTierByte (3), after the local tiers' codes 0-2.
//
// Thread model: the active ClusterPages is set once by kvtierd's main before it serves and
// cleared after the server stopped; the calls come from connection and I/O threads at once.
#pragma once

#include <string>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "client/proto/kvtier.pb.h"
#include "tiering/page_key.h"
#include "tiering/types.h"

namespace kvtier {

inline constexpr char kRemoteTierByte = 3;

class ClusterPages {
 public:
  virtual ~ClusterPages() = default;
  // How many of `keys` (in order, from the first) a live peer holds.
  virtual size_t RemotePrefix(const std::string& ns_name, NamespaceId ns,
                              absl::Span<const PageKey> keys) = 0;
  // Copies a page held by a peer into `dst`, only once it is whole and verified; NotFound when
  // no peer could serve it (a miss: the worker recomputes the page).
  virtual absl::StatusOr<Tier> Fetch(const std::string& ns_name, NamespaceId ns, const PageKey& key,
                                     absl::Span<const MutableBuffer> dst) = 0;
  // Fetch for many pages, each into its own destination, as one batch (one directory query per
  // home, one lease per holder, the transfers in flight together). results[i] is the remote
  // tier, or an error (a miss) for that page alone.
  virtual void FetchBatch(const std::string& ns_name, NamespaceId ns,
                          absl::Span<const PageKey> keys,
                          absl::Span<const absl::Span<const MutableBuffer>> dsts,
                          absl::Span<absl::StatusOr<Tier>> results) = 0;
  // A page was stored on this node: its home node learns that this node holds it.
  virtual void Stored(const std::string& ns_name, NamespaceId ns, const PageKey& key) = 0;
};

// Sets (or, with nullptr, clears) the cluster the hooks below use.
void SetActiveClusterPages(ClusterPages* pages);

// Extends a Lookup's reply past its local prefix with pages peers hold.
void ExtendLookupFromCluster(const std::string& ns_name, NamespaceId ns,
                             absl::Span<const PageKey> keys, size_t local_prefix,
                             bool with_dram_slots, wire::LookupReply& out);
// A Load's local result, or on a local miss, the page fetched from a peer.
absl::StatusOr<Tier> LoadFromCluster(const std::string& ns_name, NamespaceId ns, const PageKey& key,
                                     absl::Span<const MutableBuffer> dst,
                                     absl::StatusOr<Tier> local);
void AnnounceToCluster(const std::string& ns_name, NamespaceId ns, const PageKey& key);

// A Load's local misses, gathered page by page and then fetched from peers as one batch.
// One per Load operation, on the thread that runs it.
class ClusterLoadBatch {
 public:
  // Keeps page `index` for the batch when `local` is a miss a cluster may serve (the caller
  // then reports it from Finish, and keeps the memory `dst` names valid until then); false
  // when the caller should report `local` itself.
  bool Defer(size_t index, const PageKey& key, absl::Span<const MutableBuffer> dst,
             const absl::StatusOr<Tier>& local);
  // Fetches every deferred page and reports each with record(index, result); a page no peer
  // served is reported with its local miss.
  void Finish(const std::string& ns_name, NamespaceId ns,
              absl::FunctionRef<void(size_t, const absl::StatusOr<Tier>&)> record);

 private:
  std::vector<size_t> index_;
  std::vector<PageKey> keys_;
  std::vector<absl::Status> local_;
  std::vector<std::vector<MutableBuffer>> dst_;
};

}  // namespace kvtier
