// Small vocabulary types shared by every part of the tiering core.
#pragma once

#include <cstddef>
#include <cstdint>

#include "absl/strings/string_view.h"

namespace kvtier {

// Storage tiers, fastest first. The numeric order is the demotion order.
enum class Tier : uint8_t { kHbm = 0, kDram = 1, kNvme = 2 };
inline constexpr int kNumTiers = 3;
inline constexpr int TierIndex(Tier t) { return static_cast<int>(t); }
absl::string_view TierName(Tier t);

// What a page is worth keeping for (DESIGN.md §4).
enum class PageClass : uint8_t { kUnknown = 0, kSink = 1, kSemantic = 2 };
absl::string_view PageClassName(PageClass c);

// Who decided the class, in decreasing order of trust.
enum class ClassSource : uint8_t { kNone = 0, kHint = 1, kPosition = 2, kMeasured = 3 };
absl::string_view ClassSourceName(ClassSource s);

// Index of the namespace a page belongs to (model fingerprint + tenant), assigned by the store.
using NamespaceId = uint32_t;

// StreamingLLM's sinks (Xiao et al., ICLR'24): pages covering the first 4 tokens of a sequence
// are sinks by position. The default of every option that applies the rule (the store, the sink
// classifier, the streaming policy, kvtierd's store.sink_tokens).
inline constexpr uint32_t kDefaultSinkTokens = 4;
// Tokens per page where nothing says otherwise: vLLM's block size.
inline constexpr uint32_t kDefaultTokensPerPage = 16;

// A borrowed, read-only byte range (a piece of a worker buffer, a slot, a staging area).
struct ConstBuffer {
  const std::byte* data = nullptr;
  size_t size = 0;
};
// A borrowed, writable byte range.
struct MutableBuffer {
  std::byte* data = nullptr;
  size_t size = 0;
};

}  // namespace kvtier
