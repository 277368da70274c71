// PageIndex: key -> PageEntry for every page the store holds, in any tier.
//
// Thread model: sharded by key; each shard is a flat_hash_map behind its own absl::Mutex, so
// lookups from many client threads proceed in parallel with each other and with writers on other
// shards. Readers take the shard lock shared. The TieredStore additionally serializes all
// *mutations* under its own lock (lock order: store lock, then shard lock, never the reverse), so
// multi-step changes (allocate slot + insert) are atomic with respect to each other while pure
// lookups never wait on the store lock.
#pragma once

#include <array>
#include <cstdint>
#include <optional>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/functional/function_ref.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "tiering/page_key.h"
#include "tiering/types.h"

namespace kvtier {

// Signals the scorer reads (DESIGN.md §4). Maintained by the store; interpreted by the policy.
struct PageStats {
  uint64_t last_access_ns = 0;
  uint64_t insert_ns = 0;
  // Exponentially decayed access count as of last_access_ns (half-life is a store option).
  float frequency = 0;
  // EWMA of the attention mass the page receives per decode step (share of the softmax, 0..1).
  float attention_mass = 0;
  // Share of observed queries whose mass on this page exceeds the breadth threshold (0..1).
  float breadth = 0;
  // Mean L2 norm of the page's value vectors (near zero for attention sinks).
  float value_norm = 0;
  // Normalised entropy of how the page's received mass spreads over heads (0..1); low for sinks.
  float mass_entropy = 1;
  uint32_t access_count = 0;
  uint32_t stat_reports = 0;  // how many attention-statistics reports fed the EWMAs
  uint32_t tokens = 0;        // tokens the page covers: its recompute cost
};

enum class PageState : uint8_t {
  kFilling = 0,  // slot reserved, bytes being written; invisible to lookups
  kReady = 1,
};

struct PageEntry {
  PageKey parent;  // previous page of the sequence, null for a first page
  PageStats stats;
  NamespaceId ns = 0;
  uint32_t slot = 0;
  uint32_t pin_count = 0;        // client pins + in-flight reads; pinned pages never move
  uint32_t cached_children = 0;  // pages held whose parent is this page
  uint32_t position = 0;         // page index within its sequence
  Tier tier = Tier::kDram;
  PageClass cls = PageClass::kUnknown;
  ClassSource class_source = ClassSource::kNone;
  PageState state = PageState::kFilling;
  bool in_sink_slot = false;  // occupies one of its namespace's reserved HBM sink slots
};
// The design's memory budget: at most 128 bytes of DRAM per page, key included.
static_assert(sizeof(PageKey) + sizeof(PageEntry) <= 128, "index record exceeds 128 bytes");

class PageIndex {
 public:
  PageIndex() = default;
  PageIndex(const PageIndex&) = delete;
  PageIndex& operator=(const PageIndex&) = delete;

  // False if the key is already present (nothing changes).
  bool Insert(const PageKey& key, const PageEntry& entry);
  std::optional<PageEntry> Find(const PageKey& key) const;
  // Runs `fn` on the entry under its shard's lock. False if the key is absent.
  bool Update(const PageKey& key, absl::FunctionRef<void(PageEntry&)> fn);
  bool Erase(const PageKey& key);
  size_t size() const;

  // Longest prefix of `keys` whose pages are ready and belong to `ns`; fills tiers_out[i] for each
  // page of that prefix (tiers_out must hold keys.size()). Shared locks only.
  size_t LookupPrefix(NamespaceId ns, absl::Span<const PageKey> keys,
                      absl::Span<Tier> tiers_out) const;

  // Batched forms for the thousands of keys of one load or lookup. Keys are grouped by shard; each
  // shard's lock is taken once for all its keys and the probes are prefetched a few keys ahead,
  // so a batch pays one lock and overlapping cache misses a shard instead of a lock and a serial
  // miss a key. `fn(i, entry)` sees keys[i] (entry null when absent), shard by shard rather than
  // in key order; a key listed twice is seen twice.
  void FindEach(absl::Span<const PageKey> keys,
                absl::FunctionRef<void(size_t, const PageEntry*)> fn) const;
  void UpdateEach(absl::Span<const PageKey> keys, absl::FunctionRef<void(size_t, PageEntry*)> fn);

  // Visits every entry, shard by shard, under each shard's shared lock.
  void ForEach(absl::FunctionRef<void(const PageKey&, const PageEntry&)> fn) const;

 private:
  static constexpr size_t kShards = 64;
  struct Shard {
    mutable absl::Mutex mu;
    absl::flat_hash_map<PageKey, PageEntry> map ABSL_GUARDED_BY(mu);
  };
  Shard& ShardFor(const PageKey& key) { return shards_[key.hi % kShards]; }
  const Shard& ShardFor(const PageKey& key) const { return shards_[key.hi % kShards]; }

  // Visits the keys' shards in order: fn(shard, positions in `keys` of that shard's keys).
  static void GroupByShard(absl::Span<const PageKey> keys,
                           absl::FunctionRef<void(size_t, absl::Span<const uint32_t>)> fn);

  std::array<Shard, kShards> shards_;
};

}  // namespace kvtier
