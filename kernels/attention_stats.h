// Attention statistics per KV page: the inputs of the sink classifier and the utility score
// (tiering/tiered_store.h, AttentionSample).
//
// Inputs, for one sequence of `tokens` tokens:
//   Q: the observation window, the last `window` queries, [window, q_heads, head_dim];
//   K, V: the sequence's keys and values, [tokens, kv_heads, head_dim];
// all bf16 or fp16 (one dtype for the three). Grouped-query attention: q head h reads kv head
// h / (q_heads / kv_heads). Query i sits at position tokens - window + i and attends causally to
// tokens [0, position] with softmax(q.k / sqrt(head_dim)) over all of them.
//
// Output, per page p (tokens [p * tokens_per_page, (p + 1) * tokens_per_page), the last one may be
// short):
//   mass         mean over the window's (query, q head) pairs of the attention mass on the page;
//                the masses of all pages sum to 1.
//   breadth      share of (query, q head) pairs whose mass on the page exceeds
//                `breadth_threshold`.
//   value_norm   mean L2 norm of the page's value vectors over its tokens and kv heads.
//   mass_entropy entropy of the page's received mass split over q heads (summed over queries),
//                divided by log(q_heads): 1 = every head gives it the same, 0 = one head only.
//                1 when q_heads is 1 or the page received nothing.
//
// Accumulation is fp32 (the CPU twin and the GPU kernel); ComputeAttentionStatsReference does the
// same in float64 for tests. Error bound of the fp32 paths against the reference, documented for
// tests and callers: |mass - ref| <= 1e-3 * max(ref, 1 / pages) + 1e-6; value_norm relative 1e-4;
// breadth exact except pairs within 1e-4 relative of the threshold.
//
// Thread model: free functions without state.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "absl/types/span.h"

namespace kvtier::kernels {

enum class KvDType : uint8_t { kBF16 = 0, kFP16 = 1 };

struct AttentionStatsShape {
  uint32_t tokens = 0;
  uint32_t q_heads = 0;
  uint32_t kv_heads = 0;  // must divide q_heads
  uint32_t head_dim = 0;  // the GPU kernel needs a multiple of 16, at most 256
  uint32_t window = 0;    // 1..tokens queries
  uint32_t tokens_per_page = 16;
  KvDType dtype = KvDType::kBF16;

  friend bool operator==(const AttentionStatsShape&, const AttentionStatsShape&) = default;
};

struct AttentionStatsOptions {
  // A (query, head) pair counts towards a page's breadth when it puts more than this share of its
  // attention on the page. Default 0.01: a sink takes far more than 1% from nearly every pair, an
  // ordinary page of a long sequence far less.
  float breadth_threshold = 0.01f;
};

struct PageAttentionStats {
  float mass = 0;
  float breadth = 0;
  float value_norm = 0;
  float mass_entropy = 1;
};

// Rejects zero sizes, kv_heads not dividing q_heads, window > tokens, and sizes whose element
// counts overflow 32 bits per tensor row index.
absl::Status ValidateAttentionStatsShape(const AttentionStatsShape& shape);

inline uint32_t AttentionStatsPageCount(const AttentionStatsShape& s) {
  return s.tokens_per_page == 0 ? 0 : (s.tokens + s.tokens_per_page - 1) / s.tokens_per_page;
}

// CPU twin, fp32 accumulation. `q`, `k`, `v` point at 16-bit elements in the shape's dtype;
// `out` must hold AttentionStatsPageCount(shape) entries.
absl::Status ComputeAttentionStatsCpu(const AttentionStatsShape& shape,
                                      const AttentionStatsOptions& options, const uint16_t* q,
                                      const uint16_t* k, const uint16_t* v,
                                      absl::Span<PageAttentionStats> out);

// The same statistics in float64, for tests of the twin and the GPU kernel.
absl::Status ComputeAttentionStatsReference(const AttentionStatsShape& shape,
                                            const AttentionStatsOptions& options, const uint16_t* q,
                                            const uint16_t* k, const uint16_t* v,
                                            absl::Span<PageAttentionStats> out);

}  // namespace kvtier::kernels
