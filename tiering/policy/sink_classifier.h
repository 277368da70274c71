// SinkClassifier: decides whether a page is an attention sink (DESIGN.md §4).
//
// Three sources, in decreasing order of trust: the worker's memory-intent hint, the page's
// position (the first `sink_tokens` tokens of a sequence, StreamingLLM), and measurement (the page
// receives attention from nearly every query, that attention is concentrated — low entropy of the
// rows that give it mass — and its value vectors are near zero, "value-state drain"). A heavy
// hitter is also hot and concentrated, but its value norm is large: value norm is what tells the
// two apart. The classifier never overrides a more trusted source with a less trusted one.
//
// SummarizeAttention turns raw attention probabilities into the per-page AttentionSample the store
// keeps EWMAs of, with the exact definitions of breadth and entropy the classifier relies on.
//
// Pure functions and an immutable options struct: callable from any thread.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "tiering/page_index.h"
#include "tiering/tiered_store.h"
#include "tiering/types.h"

namespace kvtier {

struct SinkClassifierOptions {
  // Position rule: pages covering the first `sink_tokens` tokens are sinks. Default 4
  // (StreamingLLM); 0 disables the rule (prefix-reuse workloads, where "first block" means "most
  // shared", not "sink").
  uint32_t sink_tokens = kDefaultSinkTokens;
  uint32_t tokens_per_page = kDefaultTokensPerPage;
  // Measurement rule. A page is a measured sink when all three hold:
  // breadth >= min_breadth: share of queries whose mass on it exceeds the breadth threshold.
  // Default 0.85: sinks are attended by nearly every query; heavy hitters by a topic's queries.
  float min_breadth = 0.85f;
  // mass_entropy <= max_entropy: mass-weighted mean normalised entropy of the attention rows
  // that give the page mass. Default 0.5: rows that dump mass on a sink are peaked.
  float max_entropy = 0.5f;
  // value_norm <= max_value_norm: value norms are relative to the layer's mean value norm (1.0).
  // Default 0.25: sinks measured in Llama-class models sit around 0.05-0.1 of the mean.
  float max_value_norm = 0.25f;
  // Attention reports needed before a measurement is trusted. Default 3: one step is noise.
  uint32_t min_reports = 3;
  // Breadth threshold used by SummarizeAttention: a query "attends" to a page when the page gets
  // more than this multiple of the uniform share 1/pages. Default 2.
  float breadth_uniform_multiple = 2.0f;
};

struct ClassDecision {
  PageClass cls = PageClass::kUnknown;
  ClassSource source = ClassSource::kNone;
};

class SinkClassifier {
 public:
  explicit SinkClassifier(const SinkClassifierOptions& options = {}) : options_(options) {}

  // Class from what is known when a page is stored: hint first, then position.
  ClassDecision OnPut(PageClass hint, uint32_t position) const;
  // Class after attention statistics changed. Hint and position decisions stand; otherwise the
  // measurement rule decides SINK or SEMANTIC once min_reports reports are in (kUnknown before).
  ClassDecision OnStats(const PageEntry& entry) const;
  // The measurement rule alone, on one set of signals.
  bool LooksLikeSink(const PageStats& stats) const;

  const SinkClassifierOptions& options() const { return options_; }

 private:
  SinkClassifierOptions options_;
};

// Raw attention of one decode window: probs[(row * pages) + page] for rows = (query, head) pairs,
// each row a softmax over `pages` pages (sums to 1); value_norms[page] per page. Returns one
// sample per page: mass = mean share received per row; breadth = share of rows giving it more
// than breadth_uniform_multiple / pages; mass_entropy = mass-weighted mean of the normalised
// entropy of the rows that give it mass; value_norm copied.
absl::StatusOr<std::vector<AttentionSample>> SummarizeAttention(
    absl::Span<const float> probs, size_t rows, size_t pages, absl::Span<const float> value_norms,
    const SinkClassifierOptions& options = {});

// Applies the classifier to a page after its statistics changed: reads the entry, and when the
// decision differs from the stored class, calls SetClass (which moves a new sink into a reserved
// slot when one is free). The store is not changed otherwise.
absl::Status ClassifyAfterReport(TieredStore& store, NamespaceId ns, const PageKey& key,
                                 const SinkClassifier& classifier);

}  // namespace kvtier
