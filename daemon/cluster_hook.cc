#include "daemon/cluster_hook.h"

#include <atomic>

namespace kvtier {
namespace {

std::atomic<ClusterPages*> active{nullptr};

}  // namespace

void SetActiveClusterPages(ClusterPages* pages) { active.store(pages, std::memory_order_release); }

void ExtendLookupFromCluster(const std::string& ns_name, NamespaceId ns,
                             absl::Span<const PageKey> keys, size_t local_prefix,
                             bool with_dram_slots, wire::LookupReply& out) {
  ClusterPages* c = active.load(std::memory_order_acquire);
  if (c == nullptr || local_prefix >= keys.size()) return;
  const size_t remote = c->RemotePrefix(ns_name, ns, keys.subspan(local_prefix));
  if (remote == 0) return;
  out.set_prefix_pages(static_cast<uint32_t>(local_prefix + remote));
  out.mutable_tiers()->append(remote, kRemoteTierByte);
  if (with_dram_slots) {
    for (size_t i = 0; i < remote; ++i) out.add_dram_slots(0xffffffffu);  // not in our pool
  }
}

absl::StatusOr<Tier> LoadFromCluster(const std::string& ns_name, NamespaceId ns, const PageKey& key,
                                     absl::Span<const MutableBuffer> dst,
                                     absl::StatusOr<Tier> local) {
  ClusterPages* c = active.load(std::memory_order_acquire);
  if (c == nullptr || !absl::IsNotFound(local.status())) return local;
  absl::StatusOr<Tier> remote = c->Fetch(ns_name, ns, key, dst);
  return remote.ok() ? remote : local;  // a failed fetch is the local miss it started as
}

void AnnounceToCluster(const std::string& ns_name, NamespaceId ns, const PageKey& key) {
  if (ClusterPages* c = active.load(std::memory_order_acquire); c != nullptr) {
    c->Stored(ns_name, ns, key);
  }
}

bool ClusterLoadBatch::Defer(size_t index, const PageKey& key, absl::Span<const MutableBuffer> dst,
                             const absl::StatusOr<Tier>& local) {
  if (active.load(std::memory_order_acquire) == nullptr || !absl::IsNotFound(local.status())) {
    return false;
  }
  index_.push_back(index);
  keys_.push_back(key);
  local_.push_back(local.status());
  dst_.emplace_back(dst.begin(), dst.end());
  return true;
}

void ClusterLoadBatch::Finish(const std::string& ns_name, NamespaceId ns,
                              absl::FunctionRef<void(size_t, const absl::StatusOr<Tier>&)> record) {
  if (index_.empty()) return;
  std::vector<absl::StatusOr<Tier>> results(index_.size());
  if (ClusterPages* c = active.load(std::memory_order_acquire); c != nullptr) {
    std::vector<absl::Span<const MutableBuffer>> dsts(dst_.begin(), dst_.end());
    c->FetchBatch(ns_name, ns, keys_, dsts, absl::MakeSpan(results));
  }
  for (size_t k = 0; k < index_.size(); ++k) {
    // A failed fetch is the local miss it started as.
    record(index_[k], results[k].ok() ? results[k] : absl::StatusOr<Tier>(local_[k]));
  }
}

}  // namespace kvtier
