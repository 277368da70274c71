#include "tiering/page_key.h"

// Static-linking-only API: lets the hash state live on the stack (no malloc per key).
#define XXH_STATIC_LINKING_ONLY
#include <xxhash.h>

#include <cstdio>

namespace kvtier {
namespace {

PageKey FromHash(XXH128_hash_t h) { return PageKey{h.high64, h.low64}; }

void UpdateKey(XXH3_state_t* state, const PageKey& k) {
  const uint64_t words[2] = {k.hi, k.lo};
  XXH3_128bits_update(state, words, sizeof(words));
}

// Domain tags keep token blocks and id blocks from ever hashing to the same key.
constexpr uint8_t kTokenBlockTag = 1;
constexpr uint8_t kIdBlockTag = 2;

PageKey Chain(const PageKey& salt, const PageKey& parent, uint8_t tag, const void* data,
              size_t size) {
  XXH3_state_t state;
  XXH3_128bits_reset(&state);
  UpdateKey(&state, salt);
  UpdateKey(&state, parent);
  XXH3_128bits_update(&state, &tag, 1);
  XXH3_128bits_update(&state, data, size);
  PageKey key = FromHash(XXH3_128bits_digest(&state));
  // The null key means "no parent"; a real key must never be null.
  if (key.is_null()) key.lo = 1;
  return key;
}

}  // namespace

std::string PageKey::ToHex() const {
  char buf[33];
  std::snprintf(buf, sizeof(buf), "%016llx%016llx", static_cast<unsigned long long>(hi),
                static_cast<unsigned long long>(lo));
  return std::string(buf, 32);
}

PageKey NamespaceSalt(absl::string_view namespace_name) {
  return FromHash(XXH3_128bits(namespace_name.data(), namespace_name.size()));
}

PageKey ChainKey(const PageKey& salt, const PageKey& parent, absl::Span<const int32_t> tokens) {
  return Chain(salt, parent, kTokenBlockTag, tokens.data(), tokens.size() * sizeof(int32_t));
}

std::vector<PageKey> ChainKeys(const PageKey& salt, absl::Span<const int32_t> tokens,
                               size_t tokens_per_page) {
  std::vector<PageKey> keys;
  if (tokens_per_page == 0) return keys;
  keys.reserve(tokens.size() / tokens_per_page);
  PageKey parent;
  for (size_t begin = 0; begin + tokens_per_page <= tokens.size(); begin += tokens_per_page) {
    parent = ChainKey(salt, parent, tokens.subspan(begin, tokens_per_page));
    keys.push_back(parent);
  }
  return keys;
}

PageKey ChainKeyFromId(const PageKey& salt, const PageKey& parent, uint64_t block_id) {
  return Chain(salt, parent, kIdBlockTag, &block_id, sizeof(block_id));
}

}  // namespace kvtier
