// The page directory's two halves that need no network: choosing a page's home node by
// rendezvous hashing, and the home node's record of who holds which page.
//
// Rendezvous (highest-random-weight) hashing: every node scores (node, namespace, key) and the
// highest score is home. A member joining or leaving moves only the keys it wins or held, and
// every node that sees the same member list picks the same home without talking.
//
// The record is soft state: holders are added when they store a page and removed when a fetch
// finds the page gone or the holder leaves; an entry lost with its home costs a miss, never a
// wrong page (pages are verified against key and checksum when fetched).
//
// Thread model: HomeOf is pure; PageDirectory is thread-safe (one mutex).
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/container/inlined_vector.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "tiering/page_key.h"
#include "tiering/types.h"

namespace kvtier {

// Index into `nodes` of the home of (ns, key); `nodes` must be non-empty.
size_t HomeOf(absl::Span<const std::string> nodes, const std::string& ns, const PageKey& key);

// Checksum a holder sends with a page and the fetching node checks: XXH3 seeded by the key, so
// bytes that belong to another key do not verify either.
uint64_t PageChecksum(const PageKey& key, const std::byte* data, size_t size);
// The same checksum over a page held in pieces (in page order), as a worker's blocks hold it.
uint64_t PageChecksum(const PageKey& key, absl::Span<const MutableBuffer> pieces);

class PageDirectory {
 public:
  struct Options {
    // Entries kept at most; past it new pages are not recorded (they are misses for peers).
    // Default 4 Mi entries (about 400 MiB at worst; a node's pages are usually far fewer).
    size_t max_entries = size_t{4} << 20;
    // Holders kept per page. Default 8.
    size_t max_holders = 8;
  };
  PageDirectory() : PageDirectory(Options{}) {}
  explicit PageDirectory(const Options& options) : options_(options) {}

  // Returns false when the directory is full.
  bool Add(const std::string& ns, const PageKey& key, const std::string& holder);
  void Remove(const std::string& ns, const PageKey& key, const std::string& holder);
  std::vector<std::string> Holders(const std::string& ns, const PageKey& key) const;
  // Keeps only entries `keep(ns, key)` accepts and holders `live(holder)` accepts.
  template <typename KeepFn, typename LiveFn>
  void Retain(KeepFn keep, LiveFn live) {
    absl::MutexLock lock(&mu_);
    for (auto it = entries_.begin(); it != entries_.end();) {
      auto& holders = it->second;
      holders.erase(std::remove_if(holders.begin(), holders.end(),
                                   [&](const std::string& h) { return !live(h); }),
                    holders.end());
      if (holders.empty() || !keep(it->first.first, it->first.second)) {
        entries_.erase(it++);
      } else {
        ++it;
      }
    }
  }
  size_t size() const;

 private:
  const Options options_;
  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::pair<std::string, PageKey>, absl::InlinedVector<std::string, 2>> entries_
      ABSL_GUARDED_BY(mu_);
};

}  // namespace kvtier
