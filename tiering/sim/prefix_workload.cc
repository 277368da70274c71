#include "tiering/sim/prefix_workload.h"

#include <algorithm>
#include <cmath>
#include <queue>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace kvtier {
namespace {

// A context: its full blocks' ids and how many tokens sit in the partial block after them.
struct Context {
  std::vector<uint64_t> full;
  uint32_t partial_tokens = 0;
};

class Generator {
 public:
  explicit Generator(const PrefixWorkloadOptions& o) : o_(o), rng_(o.seed) {}

  uint64_t FreshId() { return next_id_++; }

  // Appends `tokens` to a context: the partial block fills and becomes a full block with a
  // fresh id (new content), more full blocks follow, the rest stays partial.
  void Append(Context& c, uint64_t tokens) {
    uint64_t total = c.partial_tokens + tokens;
    while (total >= o_.block_tokens) {
      c.full.push_back(FreshId());
      total -= o_.block_tokens;
    }
    c.partial_tokens = static_cast<uint32_t>(total);
  }

  MooncakeRequest Request(uint64_t at_ms, const Context& c, uint32_t output_tokens) {
    MooncakeRequest r;
    r.timestamp_ms = at_ms;
    r.hash_ids = c.full;
    r.input_length = static_cast<uint32_t>(c.full.size() * o_.block_tokens + c.partial_tokens);
    if (c.partial_tokens > 0) r.hash_ids.push_back(FreshId());
    r.output_length = output_tokens;
    return r;
  }

  uint64_t LogNormal(double median, double sigma) {
    std::lognormal_distribution<double> d(std::log(median), sigma);
    return std::max<uint64_t>(1, static_cast<uint64_t>(d(rng_)));
  }

  size_t Zipf(const std::vector<double>& cdf) {
    const double u = std::uniform_real_distribution<double>(0, cdf.back())(rng_);
    return static_cast<size_t>(std::lower_bound(cdf.begin(), cdf.end(), u) - cdf.begin());
  }

  std::vector<double> ZipfCdf(uint32_t n, double s) {
    std::vector<double> cdf(n);
    double acc = 0;
    for (uint32_t i = 0; i < n; ++i) cdf[i] = acc += 1.0 / std::pow(i + 1.0, s);
    return cdf;
  }

  Context Prompt(uint32_t tokens) {
    Context c;
    Append(c, tokens);
    return c;
  }

  std::mt19937_64& rng() { return rng_; }

 private:
  const PrefixWorkloadOptions& o_;
  std::mt19937_64 rng_;
  uint64_t next_id_ = 0;
};

}  // namespace

absl::StatusOr<std::vector<MooncakeRequest>> GeneratePrefixWorkload(
    const PrefixWorkloadOptions& o) {
  if (o.block_tokens == 0 || !(o.duration_s > 0) || o.system_prompts == 0 || o.api_templates == 0 ||
      o.system_min_tokens > o.system_max_tokens ||
      !(o.continue_probability >= 0 && o.continue_probability < 1)) {
    return absl::InvalidArgumentError(
        "prefix workload needs block_tokens, duration, prompts and templates > 0, "
        "system_min_tokens <= system_max_tokens and continue_probability in [0, 1)");
  }
  Generator g(o);
  std::uniform_int_distribution<uint32_t> prompt_len(o.system_min_tokens, o.system_max_tokens);
  std::vector<Context> prompts, templates;
  for (uint32_t i = 0; i < o.system_prompts; ++i) prompts.push_back(g.Prompt(prompt_len(g.rng())));
  for (uint32_t i = 0; i < o.api_templates; ++i) {
    templates.push_back(g.Prompt(prompt_len(g.rng())));
  }
  const std::vector<double> prompt_cdf = g.ZipfCdf(o.system_prompts, o.prompt_zipf);
  const std::vector<double> template_cdf = g.ZipfCdf(o.api_templates, o.prompt_zipf);
  const auto end_ms = static_cast<uint64_t>(o.duration_s * 1000);
  std::uniform_real_distribution<double> unit(0, 1);

  // Sessions: pending turns ordered by time (earliest first).
  struct Turn {
    uint64_t at_ms;
    size_t session;
    bool operator>(const Turn& t) const { return at_ms > t.at_ms; }
  };
  std::vector<Context> sessions;
  std::priority_queue<Turn, std::vector<Turn>, std::greater<>> turns;
  std::vector<MooncakeRequest> out;
  if (o.session_rate_per_s > 0) {
    std::exponential_distribution<double> gap(o.session_rate_per_s / 1000);
    for (double t = gap(g.rng()); t < static_cast<double>(end_ms); t += gap(g.rng())) {
      sessions.push_back(prompts[g.Zipf(prompt_cdf)]);
      turns.push({static_cast<uint64_t>(t), sessions.size() - 1});
    }
  }
  while (!turns.empty()) {
    const Turn turn = turns.top();
    turns.pop();
    Context& c = sessions[turn.session];
    g.Append(c, g.LogNormal(o.user_median_tokens, o.token_sigma));
    const auto output = static_cast<uint32_t>(g.LogNormal(o.output_median_tokens, o.token_sigma));
    out.push_back(g.Request(turn.at_ms, c, output));
    g.Append(c, output);  // the answer is part of the next turn's context
    if (unit(g.rng()) < o.continue_probability) {
      const uint64_t next = turn.at_ms + g.LogNormal(o.think_median_ms, o.think_sigma);
      if (next < end_ms) turns.push({next, turn.session});
    }
  }
  if (o.api_rate_per_s > 0) {
    std::exponential_distribution<double> gap(o.api_rate_per_s / 1000);
    for (double t = gap(g.rng()); t < static_cast<double>(end_ms); t += gap(g.rng())) {
      Context c =
          unit(g.rng()) < o.api_template_share ? templates[g.Zipf(template_cdf)] : Context{};
      g.Append(c, g.LogNormal(o.api_median_tokens, o.token_sigma));
      out.push_back(g.Request(static_cast<uint64_t>(t), c,
                              static_cast<uint32_t>(g.LogNormal(o.output_median_tokens, 0.5))));
    }
  }
  std::stable_sort(out.begin(), out.end(), [](const MooncakeRequest& a, const MooncakeRequest& b) {
    return a.timestamp_ms < b.timestamp_ms;
  });
  return out;
}

absl::Status WriteMooncakeTrace(const std::vector<MooncakeRequest>& requests, std::ostream& out) {
  for (const MooncakeRequest& r : requests) {
    out << "{\"timestamp\": " << r.timestamp_ms << ", \"input_length\": " << r.input_length
        << ", \"output_length\": " << r.output_length << ", \"hash_ids\": ["
        << absl::StrJoin(r.hash_ids, ", ") << "]}\n";
  }
  if (!out) return absl::DataLossError("writing the trace failed");
  return absl::OkStatus();
}

}  // namespace kvtier
