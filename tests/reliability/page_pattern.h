// Self-describing page contents for the reliability tests: a page names its key and a tag (who
// wrote which version of what) in its first 32 bytes, and every byte after them is a pure function
// of those, so a torn page, a page of another key or a version nobody wrote is recognised from its
// bytes alone. Header-only: the reliability worker and the fault-injection test both use it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "absl/types/span.h"
#include "tiering/page_key.h"

namespace kvtier::reliability {

inline constexpr uint64_t kPatternMagic = 0x4b56545252454c59ull;  // "KVTRRELY"
inline constexpr size_t kPatternHeaderBytes = 32;

inline uint64_t SplitMix64(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// Writes the page of (key, tag) into `out` (at least kPatternHeaderBytes, a multiple of 8).
inline void FillPattern(const PageKey& key, uint64_t tag, absl::Span<std::byte> out) {
  const uint64_t head[4] = {kPatternMagic, key.hi, key.lo, tag};
  std::memcpy(out.data(), head, sizeof(head));
  uint64_t state = key.hi ^ (key.lo * 0x9e3779b97f4a7c15ull) ^ (tag * 0xd1b54a32d192ed03ull);
  for (size_t at = kPatternHeaderBytes; at + 8 <= out.size(); at += 8) {
    const uint64_t word = SplitMix64(state);
    std::memcpy(out.data() + at, &word, 8);
  }
}

enum class PatternVerdict {
  kIntact,    // the page of (key, tag) for the key asked for
  kWrongKey,  // a well-formed page, but of another key
  kCorrupt,   // header or body does not match any page this pattern produces
};

// Checks `page` was produced by FillPattern(`want`, tag) for some tag, returned in *tag.
inline PatternVerdict CheckPattern(const PageKey& want, absl::Span<const std::byte> page,
                                   uint64_t* tag) {
  uint64_t head[4];
  std::memcpy(head, page.data(), sizeof(head));
  if (head[0] != kPatternMagic) return PatternVerdict::kCorrupt;
  *tag = head[3];
  uint64_t state = head[1] ^ (head[2] * 0x9e3779b97f4a7c15ull) ^ (head[3] * 0xd1b54a32d192ed03ull);
  for (size_t at = kPatternHeaderBytes; at + 8 <= page.size(); at += 8) {
    const uint64_t word = SplitMix64(state);
    if (std::memcmp(page.data() + at, &word, 8) != 0) return PatternVerdict::kCorrupt;
  }
  if (head[1] != want.hi || head[2] != want.lo) return PatternVerdict::kWrongKey;
  return PatternVerdict::kIntact;
}

}  // namespace kvtier::reliability
