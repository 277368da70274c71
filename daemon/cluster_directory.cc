#include "daemon/cluster_directory.h"

#define XXH_STATIC_LINKING_ONLY  // XXH3_state_t on the stack
#include <xxhash.h>

#include <algorithm>

namespace kvtier {

size_t HomeOf(absl::Span<const std::string> nodes, const std::string& ns, const PageKey& key) {
  const uint64_t ns_hash = XXH3_64bits(ns.data(), ns.size());
  size_t best = 0;
  uint64_t best_score = 0;
  for (size_t i = 0; i < nodes.size(); ++i) {
    const uint64_t seed = key.hi ^ (key.lo * 0x9E3779B97F4A7C15ull) ^ ns_hash;
    const uint64_t score = XXH3_64bits_withSeed(nodes[i].data(), nodes[i].size(), seed);
    // Ties (astronomically rare) go to the smaller name, so every node agrees.
    if (i == 0 || score > best_score || (score == best_score && nodes[i] < nodes[best])) {
      best = i;
      best_score = score;
    }
  }
  return best;
}

namespace {
uint64_t ChecksumSeed(const PageKey& key) { return key.hi ^ (key.lo * 0xC2B2AE3D27D4EB4Full); }
}  // namespace

uint64_t PageChecksum(const PageKey& key, const std::byte* data, size_t size) {
  return XXH3_64bits_withSeed(data, size, ChecksumSeed(key));
}

uint64_t PageChecksum(const PageKey& key, absl::Span<const MutableBuffer> pieces) {
  if (pieces.size() == 1) return PageChecksum(key, pieces[0].data, pieces[0].size);
  // XXH3's streaming form gives the one-shot digest of the concatenation.
  XXH3_state_t state;
  XXH3_64bits_reset_withSeed(&state, ChecksumSeed(key));
  for (const MutableBuffer& b : pieces) XXH3_64bits_update(&state, b.data, b.size);
  return XXH3_64bits_digest(&state);
}

bool PageDirectory::Add(const std::string& ns, const PageKey& key, const std::string& holder) {
  absl::MutexLock lock(&mu_);
  auto it = entries_.find(std::make_pair(ns, key));
  if (it == entries_.end()) {
    if (entries_.size() >= options_.max_entries) return false;
    it = entries_.try_emplace(std::make_pair(ns, key)).first;
  }
  auto& holders = it->second;
  if (std::find(holders.begin(), holders.end(), holder) != holders.end()) return true;
  // The newest holder replaces the oldest: a page re-stored recently is the likeliest still there.
  if (holders.size() >= options_.max_holders) holders.erase(holders.begin());
  holders.push_back(holder);
  return true;
}

void PageDirectory::Remove(const std::string& ns, const PageKey& key, const std::string& holder) {
  absl::MutexLock lock(&mu_);
  auto it = entries_.find(std::make_pair(ns, key));
  if (it == entries_.end()) return;
  auto& holders = it->second;
  holders.erase(std::remove(holders.begin(), holders.end(), holder), holders.end());
  if (holders.empty()) entries_.erase(it);
}

std::vector<std::string> PageDirectory::Holders(const std::string& ns, const PageKey& key) const {
  absl::MutexLock lock(&mu_);
  auto it = entries_.find(std::make_pair(ns, key));
  if (it == entries_.end()) return {};
  return std::vector<std::string>(it->second.begin(), it->second.end());
}

size_t PageDirectory::size() const {
  absl::MutexLock lock(&mu_);
  return entries_.size();
}

}  // namespace kvtier
