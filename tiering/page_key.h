// PageKey: the 128-bit name of one KV page (one token block across all layers).
//
// Keys are chained (DESIGN.md §2): key_i = XXH3_128(ns_salt, key_{i-1}, tokens of block i), so two
// requests that share a token prefix share its pages, and pages of different namespaces can never
// collide or be looked up across (the salt differs). Pure functions; callable from any thread.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/hash/hash.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace kvtier {

struct PageKey {
  uint64_t hi = 0;
  uint64_t lo = 0;

  friend bool operator==(const PageKey&, const PageKey&) = default;
  // NOLINTNEXTLINE(modernize-use-nullptr): clang-tidy 14 misreads a defaulted <=>'s 0
  friend auto operator<=>(const PageKey&, const PageKey&) = default;
  template <typename H>
  friend H AbslHashValue(H h, const PageKey& k) {
    // Already a uniform hash: one word is enough entropy for the table.
    return H::combine(std::move(h), k.lo);
  }
  bool is_null() const { return hi == 0 && lo == 0; }
  std::string ToHex() const;  // 32 lowercase hex digits, hi first.
};

// The per-namespace salt: a hash of the namespace's name (model fingerprint + tenant).
PageKey NamespaceSalt(absl::string_view namespace_name);

// Key of one block given its parent's key (a null key for the first block of a sequence).
PageKey ChainKey(const PageKey& salt, const PageKey& parent, absl::Span<const int32_t> tokens);

// Keys of every *full* block of `tokens` (a trailing partial block has no key: it is not
// shareable).
std::vector<PageKey> ChainKeys(const PageKey& salt, absl::Span<const int32_t> tokens,
                               size_t tokens_per_page);

// Key of a block named by an opaque id, e.g. a Mooncake trace's hash id: the id stands in for
// the block's tokens so traces replay through the same chained keys as real requests.
PageKey ChainKeyFromId(const PageKey& salt, const PageKey& parent, uint64_t block_id);

}  // namespace kvtier
