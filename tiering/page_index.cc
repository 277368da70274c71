#include "tiering/page_index.h"

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

size_t PageIndex::LookupPrefix(NamespaceId ns, absl::Span<const PageKey> keys,
                               absl::Span<Tier> tiers_out) const {
  size_t n = 0;
  for (const PageKey& key : keys) {
    const Shard& shard = ShardFor(key);
    absl::ReaderMutexLock lock(&shard.mu);
    auto it = shard.map.find(key);
    // A page of another namespace is a miss: keys are salted per namespace, and this check keeps
    // a forged key from reading across the boundary anyway.
    if (it == shard.map.end() || it->second.ns != ns || it->second.state != PageState::kReady) {
      break;
    }
    tiers_out[n++] = it->second.tier;
  }
  return n;
}

void PageIndex::ForEach(absl::FunctionRef<void(const PageKey&, const PageEntry&)> fn) const {
  for (const Shard& shard : shards_) {
    absl::ReaderMutexLock lock(&shard.mu);
    for (const auto& [key, entry] : shard.map) fn(key, entry);
  }
}

}  // namespace kvtier
