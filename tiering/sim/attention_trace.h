// Decode-attention traces: what each page of a decoding sequence receives at every step, in a
// format that a capture hook on a real model can write and the simulator can replay.
//
// Format: JSON lines (UTF-8), one object per line.
//   Line 1, the header:
//     {"kind": "kvtier-attention", "version": 1, "tokens_per_page": 16, "sink_pages": [0]}
//     `sink_pages` (optional) is ground truth, used only to report sink residency; a trace
//     captured from a model may leave it out (the simulator then reports sink_residency -1).
//   Every further line is one decode step, in step order:
//     {"step": 7, "append": [64], "pages": [0, 3, 64], "mass": [0.31, 0.02, 0.1],
//      "value_norm": [0.04, 1.1, 0.9], "breadth": [0.97, 0.1, 0.4], "entropy": [0.2, 0.7, 0.6]}
//     - append: pages that come into existence before this step is attended (the prompt's pages
//       at step 0, then one page every tokens_per_page steps). Page ids are positions in the
//       sequence (page i's parent is page i - 1); every id must be appended before it is used.
//     - pages / mass: the pages that received attention and the share of this step's attention
//       mass (over all layers, heads and queries) each received; mass sums to <= 1, pages not
//       listed received (near) nothing.
//     - value_norm: the page's mean value-vector L2 norm, relative to the layer mean (1.0).
//     - breadth, entropy (optional, default 0 and 1): as defined by SummarizeAttention
//       (tiering/policy/sink_classifier.h): share of (query, head) rows that attend the page,
//       and mass-weighted normalised entropy of those rows.
// Floats are written with 5 significant digits; a 2,000-step trace is a few MB.
#pragma once

#include <cstdint>
#include <istream>
#include <ostream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace kvtier {

struct AttentionStep {
  uint32_t step = 0;
  std::vector<uint32_t> append;
  std::vector<uint32_t> pages;
  std::vector<float> mass;
  std::vector<float> value_norm;
  std::vector<float> breadth;
  std::vector<float> entropy;
};

struct AttentionTrace {
  uint32_t tokens_per_page = 16;
  std::vector<uint32_t> sink_pages;  // ground truth when known
  bool sinks_known = false;
  std::vector<AttentionStep> steps;
  // Pages appended over the whole trace (its distinct pages).
  uint32_t page_count() const;
};

absl::StatusOr<AttentionTrace> ReadAttentionTrace(std::istream& in);
absl::StatusOr<AttentionTrace> ReadAttentionTraceFile(const std::string& path);
absl::Status WriteAttentionTrace(const AttentionTrace& trace, std::ostream& out);

// A synthetic decode workload with known truth. Its parts:
// - a prompt of `prompt_pages` pages, then one new page every tokens_per_page steps;
// - sinks at `sink_pages` (any positions, not only 0): every step gives them `sink_mass` in
//   total, from nearly every row (breadth ~0.95, low entropy), with value norm ~0.05;
// - semantic heavy hitters: `topics` topics, each a random set of `pages_per_topic` pages (new
//   pages join topics as they are written). Each phase of `phase_steps` steps a topic is active,
//   drawn with Zipf(`topic_zipf`) popularity, so importance shifts over time and some topics
//   recur; the active topic's pages share `heavy_mass` (breadth ~0.4, large value norms);
// - recency: the newest `recent_pages` pages share `recent_mass`, decaying with age;
// - the rest spreads over all other pages with multiplicative noise.
struct AttentionTraceOptions {
  uint32_t steps = 2000;
  uint32_t prompt_pages = 64;
  uint32_t tokens_per_page = 16;
  std::vector<uint32_t> sink_pages = {0};
  double sink_mass = 0.30;
  uint32_t topics = 12;
  uint32_t pages_per_topic = 6;
  double topic_zipf = 1.0;
  uint32_t phase_steps = 150;
  double heavy_mass = 0.35;
  uint32_t recent_pages = 3;
  double recent_mass = 0.15;
  // Each page's mass is multiplied by a uniform factor in [1 - noise, 1 + noise].
  double noise = 0.3;
  uint64_t seed = 1;
};

absl::StatusOr<AttentionTrace> GenerateAttentionTrace(const AttentionTraceOptions& options);

}  // namespace kvtier
