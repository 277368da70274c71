#include "tiering/page_index.h"

#include <algorithm>
#include <vector>

#include "absl/cleanup/cleanup.h"

namespace kvtier {

bool PageIndex::Insert(const PageKey& key, const PageEntry& entry) {
  Shard& shard = ShardFor(key);
  absl::MutexLock lock(&shard.mu);
  return shard.map.try_emplace(key, entry).second;
}

std::optional<PageEntry> PageIndex::Find(const PageKey& key) const {
  const Shard& shard = ShardFor(key);
  absl::ReaderMutexLock lock(&shard.mu);
  auto it = shard.map.find(key);
  if (it == shard.map.end()) return std::nullopt;
  return it->second;
}

bool PageIndex::Update(const PageKey& key, absl::FunctionRef<void(PageEntry&)> fn) {
  Shard& shard = ShardFor(key);
  absl::MutexLock lock(&shard.mu);
  auto it = shard.map.find(key);
  if (it == shard.map.end()) return false;
  fn(it->second);
  return true;
}

bool PageIndex::Erase(const PageKey& key) {
  Shard& shard = ShardFor(key);
  absl::MutexLock lock(&shard.mu);
  return shard.map.erase(key) > 0;
}

size_t PageIndex::size() const {
  size_t n = 0;
  for (const Shard& shard : shards_) {
    absl::ReaderMutexLock lock(&shard.mu);
    n += shard.map.size();
  }
  return n;
}

void PageIndex::GroupByShard(absl::Span<const PageKey> keys,
                             absl::FunctionRef<void(size_t, absl::Span<const uint32_t>)> fn) {
  // A counting sort of the positions by shard, into a buffer the thread reuses (every load and
  // lookup comes here; a fresh buffer each time is an allocation on that path); a callback that
  // probes the index again gets a buffer of its own.
  thread_local std::vector<uint32_t> reused;
  thread_local bool reused_busy = false;
  std::vector<uint32_t> nested;
  std::vector<uint32_t>& order = reused_busy ? nested : reused;
  const bool owns_reused = !reused_busy;
  reused_busy = true;
  absl::Cleanup release = [owns_reused] {
    if (owns_reused) reused_busy = false;
  };
  std::array<uint32_t, kShards + 1> start{};
  for (const PageKey& key : keys) ++start[key.hi % kShards + 1];
  for (size_t s = 0; s < kShards; ++s) start[s + 1] += start[s];
  order.resize(keys.size());
  std::array<uint32_t, kShards> next;
  std::copy(start.begin(), start.end() - 1, next.begin());
  for (size_t i = 0; i < keys.size(); ++i) {
    order[next[keys[i].hi % kShards]++] = static_cast<uint32_t>(i);
  }
  for (size_t s = 0; s < kShards; ++s) {
    if (start[s + 1] > start[s]) {
      fn(s, absl::MakeConstSpan(order).subspan(start[s], start[s + 1] - start[s]));
    }
  }
}

namespace {

// How many keys ahead a batched probe prefetches: enough misses in flight to cover DRAM latency.
constexpr size_t kPrefetchAhead = 8;

// Probes the keys at positions `at` of one shard's map (its lock held by the caller), prefetching
// ahead; `fn(i, entry)` with a null entry for an absent key. Map is const for FindEach.
template <typename Map, typename Fn>
void ProbeRun(Map& map, absl::Span<const PageKey> keys, absl::Span<const uint32_t> at, Fn& fn) {
  for (size_t j = 0; j < std::min(kPrefetchAhead, at.size()); ++j) map.prefetch(keys[at[j]]);
  for (size_t j = 0; j < at.size(); ++j) {
    if (j + kPrefetchAhead < at.size()) map.prefetch(keys[at[j + kPrefetchAhead]]);
    auto it = map.find(keys[at[j]]);
    fn(at[j], it == map.end() ? nullptr : &it->second);
  }
}

}  // namespace

void PageIndex::FindEach(absl::Span<const PageKey> keys,
                         absl::FunctionRef<void(size_t, const PageEntry*)> fn) const {
  GroupByShard(keys, [&](size_t s, absl::Span<const uint32_t> at) {
    const Shard& shard = shards_[s];
    absl::ReaderMutexLock lock(&shard.mu);
    ProbeRun(shard.map, keys, at, fn);
  });
}

void PageIndex::UpdateEach(absl::Span<const PageKey> keys,
                           absl::FunctionRef<void(size_t, PageEntry*)> fn) {
  GroupByShard(keys, [&](size_t s, absl::Span<const uint32_t> at) {
    Shard& shard = shards_[s];
    absl::MutexLock lock(&shard.mu);
    ProbeRun(shard.map, keys, at, fn);
  });
}

size_t PageIndex::LookupPrefix(NamespaceId ns, absl::Span<const PageKey> keys,
                               absl::Span<Tier> tiers_out) const {
  if (keys.size() == 1) {  // the common single-page case: no grouping
    const Shard& shard = ShardFor(keys[0]);
    absl::ReaderMutexLock lock(&shard.mu);
    auto it = shard.map.find(keys[0]);
    if (it == shard.map.end() || it->second.ns != ns || it->second.state != PageState::kReady) {
      return 0;
    }
    tiers_out[0] = it->second.tier;
    return 1;
  }
  // Every key is probed (each shard once), then the prefix is the run of hits from the start. A
  // page of another namespace is a miss: keys are salted per namespace, and this check keeps a
  // forged key from reading across the boundary anyway.
  size_t first_miss = keys.size();
  FindEach(keys, [&](size_t i, const PageEntry* e) {
    if (e == nullptr || e->ns != ns || e->state != PageState::kReady) {
      first_miss = std::min(first_miss, i);
      return;
    }
    tiers_out[i] = e->tier;
  });
  return first_miss;
}

void PageIndex::ForEach(absl::FunctionRef<void(const PageKey&, const PageEntry&)> fn) const {
  for (const Shard& shard : shards_) {
    absl::ReaderMutexLock lock(&shard.mu);
    for (const auto& [key, entry] : shard.map) fn(key, entry);
  }
}

}  // namespace kvtier
