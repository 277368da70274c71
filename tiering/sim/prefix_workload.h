// A generated prefix-reuse workload with a documented model, written in the Mooncake trace
// format (tiering/trace/mooncake_trace.h) so `kvtierctl sim` replays it like a captured trace.
// It exists to test policies on a workload nobody chose defaults on; it is never used to pick
// them.
//
// The model (all times in store-clock ms, all draws from one seeded generator):
// - Shared system prompts: `system_prompts` prompts, lengths uniform in
//   [system_min_tokens, system_max_tokens]; popularity Zipf(`prompt_zipf`).
// - Multi-turn sessions arrive as a Poisson process (`session_rate_per_s`). A session picks a
//   system prompt, then runs turns: each adds a user message (log-normal tokens, median
//   `user_median_tokens`) and, after the model's answer (log-normal, median
//   `output_median_tokens`, appended to the context), waits a think time (log-normal, median
//   `think_median_ms`, sigma `think_sigma`) before the next turn; it continues with probability
//   `continue_probability` after each turn (geometric number of turns), so some conversations
//   are abandoned after one turn and never read again.
// - Single-shot API calls arrive as a Poisson process (`api_rate_per_s`): with probability
//   `api_template_share` they start with one of `api_templates` shared templates (Zipf), then
//   carry unique content (log-normal, median `api_median_tokens`).
// - Block ids: tokens are cut into `block_tokens` blocks; a full block's id is fixed by its
//   content (the prompt's full blocks are shared by every session that uses it; a session's
//   blocks are its own), and a partial last block gets a fresh id every request (its content
//   changes when the context grows), as chained token hashes behave.
#pragma once

#include <cstdint>
#include <ostream>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "tiering/trace/mooncake_trace.h"

namespace kvtier {

struct PrefixWorkloadOptions {
  double duration_s = 1800;
  uint32_t block_tokens = 512;
  uint32_t system_prompts = 24;
  uint32_t system_min_tokens = 512;
  uint32_t system_max_tokens = 6144;
  double prompt_zipf = 1.0;
  double session_rate_per_s = 0.4;
  double continue_probability = 0.75;
  double user_median_tokens = 400;
  double output_median_tokens = 300;
  double token_sigma = 0.8;
  double think_median_ms = 40'000;
  double think_sigma = 1.0;
  double api_rate_per_s = 1.0;
  uint32_t api_templates = 8;
  double api_template_share = 0.6;
  double api_median_tokens = 2'000;
  uint64_t seed = 1;
};

absl::StatusOr<std::vector<MooncakeRequest>> GeneratePrefixWorkload(
    const PrefixWorkloadOptions& options);
// One JSON object per line, as ReadMooncakeTrace reads.
absl::Status WriteMooncakeTrace(const std::vector<MooncakeRequest>& requests, std::ostream& out);

}  // namespace kvtier
