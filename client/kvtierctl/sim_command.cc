// `kvtierctl sim` and `kvtierctl gen-attention`: the policy simulator's command line (the contract
// bench/sim/ and other tools rely on) and the decode-attention trace generator.
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "client/kvtierctl/commands.h"
#include "tiering/sim/attention_trace.h"
#include "tiering/sim/prefix_workload.h"
#include "tiering/sim/simulator.h"
#include "tiering/trace/mooncake_trace.h"

namespace kvtier::ctl {
namespace {

// --name value, --name=value, and bare --name for booleans. Returns false (and says why) on a
// flag that is not in `known`.
bool ParseFlags(int argc, char** argv, const std::map<std::string, bool>& known,
                std::map<std::string, std::string>& out) {
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg.rfind("--", 0) != 0) {
      std::fprintf(stderr, "unexpected argument '%s'\n", arg.c_str());
      return false;
    }
    arg = arg.substr(2);
    std::string value;
    const size_t eq = arg.find('=');
    if (eq != std::string::npos) {
      value = arg.substr(eq + 1);
      arg = arg.substr(0, eq);
    }
    auto it = known.find(arg);
    if (it == known.end()) {
      std::fprintf(stderr, "unknown flag --%s\n", arg.c_str());
      return false;
    }
    const bool boolean = it->second;
    if (eq == std::string::npos) {
      if (boolean) {
        value = "true";
      } else if (i + 1 < argc) {
        value = argv[++i];
      } else {
        std::fprintf(stderr, "flag --%s needs a value\n", arg.c_str());
        return false;
      }
    }
    out[arg] = value;
  }
  return true;
}

template <typename T>
bool Get(const std::map<std::string, std::string>& flags, const std::string& name, T& out) {
  auto it = flags.find(name);
  if (it == flags.end()) return true;
  bool ok;
  if constexpr (std::is_floating_point_v<T>) {
    ok = absl::SimpleAtod(it->second, &out);
  } else {
    ok = absl::SimpleAtoi(it->second, &out);
  }
  if (!ok) std::fprintf(stderr, "--%s: '%s' is not a number\n", name.c_str(), it->second.c_str());
  return ok;
}

constexpr char kSimUsage[] =
    "usage: kvtierctl sim --trace PATH [--format mooncake|attention]\n"
    "         [--policies kvtier,lru,lfu,arc,s3fifo,wtinylfu,streaming,h2o,belady]\n"
    "         --hbm-fraction F --dram-fraction F [--nvme-fraction F] [--block-tokens N] [--json]\n"
    "  fractions are of the trace's distinct pages; the NVMe tier is a memory stand-in;\n"
    "  --dram-fraction 0 simulates one tier (HBM only). belady: the offline optimum (prefix\n"
    "  traces), told every page's next use.\n"
    "  planner: --migration-gbps G (12.5 modeled GB/s on average, 0 = no cap),\n"
    "           --max-migration-pages N (64 in one pass), --sink-slots N (1),\n"
    "           --sink-tokens N (4: pages holding the first N tokens are sinks by position),\n"
    "           --half-life-ms MS (600000, prefix), --attention-half-life-ms MS (250),\n"
    "           --step-ms MS (25 per decode step), --attention-alpha A (0.2, EWMA weight)\n"
    "  kvtier score: --w-frequency W (1), --w-utility W (1), --hysteresis H (2);\n"
    "           --priced-swaps 0|1 (1: the planner swaps prefix pages when the hits gained pay\n"
    "           for the two moves; 0: when the rank, with the hysteresis, is higher)\n"
    "           prefix pages: --reuse-horizon-taus H (4), --reuse-initial-tau-ms MS (60000),\n"
    "           --reuse-tau-step S (0.02 per reuse; 0 keeps tau at its initial value)\n"
    "  cost model (Llama-3-8B bf16 on one H100): --hbm-gbps (3350) --dram-gbps (50)\n"
    "           --nvme-gbps (6) --prefill-tokens-per-s (20000) --bytes-per-token (131072)\n";

}  // namespace

int SimCommand(int argc, char** argv) {
  const std::map<std::string, bool> known = {{"trace", false},
                                             {"format", false},
                                             {"policies", false},
                                             {"hbm-fraction", false},
                                             {"dram-fraction", false},
                                             {"nvme-fraction", false},
                                             {"block-tokens", false},
                                             {"json", true},
                                             {"help", true},
                                             {"max-migration-pages", false},
                                             {"sink-slots", false},
                                             {"half-life-ms", false},
                                             {"attention-half-life-ms", false},
                                             {"step-ms", false},
                                             {"attention-alpha", false},
                                             {"sink-tokens", false},
                                             {"migration-gbps", false},
                                             {"w-frequency", false},
                                             {"w-utility", false},
                                             {"hysteresis", false},
                                             {"priced-swaps", false},
                                             {"reuse-horizon-taus", false},
                                             {"reuse-initial-tau-ms", false},
                                             {"reuse-tau-step", false},
                                             {"hbm-gbps", false},
                                             {"dram-gbps", false},
                                             {"nvme-gbps", false},
                                             {"prefill-tokens-per-s", false},
                                             {"bytes-per-token", false}};
  std::map<std::string, std::string> flags;
  if (!ParseFlags(argc, argv, known, flags)) {
    std::fputs(kSimUsage, stderr);
    return 2;
  }
  if (flags.count("help")) {
    std::fputs(kSimUsage, stdout);
    return 0;
  }
  if (!flags.count("trace")) {
    std::fprintf(stderr, "--trace is required\n%s", kSimUsage);
    return 2;
  }
  SimOptions o;
  if (flags.count("policies")) {
    o.policies = absl::StrSplit(flags["policies"], ',', absl::SkipEmpty());
  }
  const bool ok =
      Get(flags, "hbm-fraction", o.hbm_fraction) && Get(flags, "dram-fraction", o.dram_fraction) &&
      Get(flags, "nvme-fraction", o.nvme_fraction) && Get(flags, "block-tokens", o.block_tokens) &&
      Get(flags, "max-migration-pages", o.max_migration_pages) &&
      Get(flags, "migration-gbps", o.migration_gbps) && Get(flags, "sink-slots", o.sink_slots) &&
      Get(flags, "sink-tokens", o.classifier.sink_tokens) &&
      Get(flags, "half-life-ms", o.frequency_half_life_ms) &&
      Get(flags, "attention-half-life-ms", o.attention_half_life_ms) &&
      Get(flags, "step-ms", o.step_ms) && Get(flags, "attention-alpha", o.attention_ewma_alpha) &&
      Get(flags, "w-frequency", o.policy.kvtier.frequency_weight) &&
      Get(flags, "w-utility", o.policy.kvtier.utility_weight) &&
      Get(flags, "hysteresis", o.policy.kvtier.hysteresis) &&
      Get(flags, "reuse-horizon-taus", o.policy.kvtier.reuse.horizon_taus) &&
      Get(flags, "reuse-initial-tau-ms", o.policy.kvtier.reuse.initial_tau_ms) &&
      Get(flags, "reuse-tau-step", o.policy.kvtier.reuse.tau_alpha) &&
      Get(flags, "hbm-gbps", o.cost.hbm_gbps) && Get(flags, "dram-gbps", o.cost.dram_gbps) &&
      Get(flags, "nvme-gbps", o.cost.nvme_gbps) &&
      Get(flags, "prefill-tokens-per-s", o.cost.prefill_tokens_per_s) &&
      Get(flags, "bytes-per-token", o.cost.bytes_per_token);
  if (!ok) return 2;
  int priced_swaps = o.policy.kvtier.priced_swaps ? 1 : 0;
  if (!Get(flags, "priced-swaps", priced_swaps)) return 2;
  if (priced_swaps != 0 && priced_swaps != 1) {
    std::fprintf(stderr, "--priced-swaps: 0 or 1, not %d\n", priced_swaps);
    return 2;
  }
  o.policy.kvtier.priced_swaps = priced_swaps == 1;
  const std::string format = flags.count("format") ? flags["format"] : "mooncake";
  absl::StatusOr<std::vector<SimResult>> results;
  if (format == "mooncake") {
    absl::StatusOr<std::vector<MooncakeRequest>> trace = ReadMooncakeTraceFile(flags["trace"]);
    if (!trace.ok()) {
      std::fprintf(stderr, "kvtierctl sim: %s\n", trace.status().ToString().c_str());
      return 1;
    }
    results = SimulatePrefixTrace(*trace, o);
  } else if (format == "attention") {
    absl::StatusOr<AttentionTrace> trace = ReadAttentionTraceFile(flags["trace"]);
    if (!trace.ok()) {
      std::fprintf(stderr, "kvtierctl sim: %s\n", trace.status().ToString().c_str());
      return 1;
    }
    results = SimulateAttentionTrace(*trace, o);
  } else {
    std::fprintf(stderr, "--format must be mooncake or attention, not '%s'\n", format.c_str());
    return 2;
  }
  if (!results.ok()) {
    std::fprintf(stderr, "kvtierctl sim: %s\n", results.status().ToString().c_str());
    return 1;
  }
  const bool json = flags.count("json") && flags["json"] != "false";
  if (!json) {
    std::printf("%-10s %12s %12s %12s %12s %8s %8s %10s %12s %8s %8s\n", "policy", "hit_hbm_tok",
                "hit_dram_tok", "hit_nvme_tok", "miss_tok", "hit_%", "hbm_hit_%", "migr_GB",
                "prefill_s", "recall", "sinks");
  }
  for (const SimResult& r : *results) {
    if (json) {
      std::printf("%s\n", SimResultJson(r).c_str());
    } else {
      std::printf("%-10s %12llu %12llu %12llu %12llu %8.2f %8.2f %10.2f %12.3f %8.4f %8.4f\n",
                  r.policy.c_str(), static_cast<unsigned long long>(r.hit_tokens_hbm),
                  static_cast<unsigned long long>(r.hit_tokens_dram),
                  static_cast<unsigned long long>(r.hit_tokens_nvme),
                  static_cast<unsigned long long>(r.miss_tokens), 100 * r.hit_share,
                  100 * r.hbm_hit_share, r.bytes_migrated / 1e9, r.modeled_prefill_seconds,
                  r.attention_recall, r.sink_residency);
    }
  }
  return 0;
}

namespace {

// The flags every trace generator shares: parses them, answers --help, and requires --out.
// Returns the exit status when the command is done before generating anything.
std::optional<int> ParseGeneratorFlags(int argc, char** argv,
                                       const std::map<std::string, bool>& known, const char* usage,
                                       std::map<std::string, std::string>& flags) {
  if (!ParseFlags(argc, argv, known, flags)) {
    std::fputs(usage, stderr);
    return 2;
  }
  if (flags.count("help")) {
    std::fputs(usage, stdout);
    return 0;
  }
  if (!flags.count("out")) {
    std::fprintf(stderr, "--out is required\n%s", usage);
    return 2;
  }
  return std::nullopt;
}

}  // namespace

int GenAttentionCommand(int argc, char** argv) {
  static constexpr char kUsage[] =
      "usage: kvtierctl gen-attention --out PATH [--steps N (2000)] [--prompt-pages N (64)]\n"
      "         [--sink-pages 0,9 (0)] [--topics N (12)] [--pages-per-topic N (6)]\n"
      "         [--phase-steps N (150)] [--topic-zipf S (1.0)] [--seed N (1)]\n"
      "  writes a decode-attention trace (format: tiering/sim/attention_trace.h)\n";
  const std::map<std::string, bool> known = {{"out", false},          {"steps", false},
                                             {"prompt-pages", false}, {"sink-pages", false},
                                             {"topics", false},       {"pages-per-topic", false},
                                             {"phase-steps", false},  {"topic-zipf", false},
                                             {"seed", false},         {"help", true}};
  std::map<std::string, std::string> flags;
  if (std::optional<int> done = ParseGeneratorFlags(argc, argv, known, kUsage, flags)) {
    return *done;
  }
  AttentionTraceOptions o;
  if (flags.count("sink-pages")) {
    o.sink_pages.clear();
    for (absl::string_view s : absl::StrSplit(flags["sink-pages"], ',', absl::SkipEmpty())) {
      uint32_t p;
      if (!absl::SimpleAtoi(s, &p)) {
        std::fprintf(stderr, "--sink-pages: '%s' is not a page id\n", std::string(s).c_str());
        return 2;
      }
      o.sink_pages.push_back(p);
    }
  }
  const bool ok = Get(flags, "steps", o.steps) && Get(flags, "prompt-pages", o.prompt_pages) &&
                  Get(flags, "topics", o.topics) &&
                  Get(flags, "pages-per-topic", o.pages_per_topic) &&
                  Get(flags, "phase-steps", o.phase_steps) &&
                  Get(flags, "topic-zipf", o.topic_zipf) && Get(flags, "seed", o.seed);
  if (!ok) return 2;
  absl::StatusOr<AttentionTrace> trace = GenerateAttentionTrace(o);
  if (!trace.ok()) {
    std::fprintf(stderr, "kvtierctl gen-attention: %s\n", trace.status().ToString().c_str());
    return 1;
  }
  std::ofstream out(flags["out"]);
  if (absl::Status s = WriteAttentionTrace(*trace, out); !s.ok() || !out) {
    std::fprintf(stderr, "kvtierctl gen-attention: cannot write '%s'\n", flags["out"].c_str());
    return 1;
  }
  return 0;
}

}  // namespace kvtier::ctl

namespace kvtier::ctl {

int GenPrefixCommand(int argc, char** argv) {
  static constexpr char kUsage[] =
      "usage: kvtierctl gen-prefix --out PATH [--duration-s S (1800)] [--seed N (1)]\n"
      "         [--session-rate R (0.4/s)] [--continue P (0.75)] [--think-median-ms MS (40000)]\n"
      "         [--api-rate R (1.0/s)] [--system-prompts N (24)] [--prompt-zipf S (1.0)]\n"
      "  writes a generated prefix-reuse trace in Mooncake's format (model:\n"
      "  tiering/sim/prefix_workload.h): multi-turn sessions with think times over shared system\n"
      "  prompts, and single-shot API calls. For testing policies, never for choosing defaults.\n";
  const std::map<std::string, bool> known = {{"out", false},         {"duration-s", false},
                                             {"seed", false},        {"session-rate", false},
                                             {"continue", false},    {"think-median-ms", false},
                                             {"api-rate", false},    {"system-prompts", false},
                                             {"prompt-zipf", false}, {"help", true}};
  std::map<std::string, std::string> flags;
  if (std::optional<int> done = ParseGeneratorFlags(argc, argv, known, kUsage, flags)) {
    return *done;
  }
  PrefixWorkloadOptions o;
  const bool ok = Get(flags, "duration-s", o.duration_s) && Get(flags, "seed", o.seed) &&
                  Get(flags, "session-rate", o.session_rate_per_s) &&
                  Get(flags, "continue", o.continue_probability) &&
                  Get(flags, "think-median-ms", o.think_median_ms) &&
                  Get(flags, "api-rate", o.api_rate_per_s) &&
                  Get(flags, "system-prompts", o.system_prompts) &&
                  Get(flags, "prompt-zipf", o.prompt_zipf);
  if (!ok) return 2;
  absl::StatusOr<std::vector<MooncakeRequest>> trace = GeneratePrefixWorkload(o);
  if (!trace.ok()) {
    std::fprintf(stderr, "kvtierctl gen-prefix: %s\n", trace.status().ToString().c_str());
    return 1;
  }
  std::ofstream out(flags["out"]);
  if (absl::Status s = WriteMooncakeTrace(*trace, out); !s.ok() || !out) {
    std::fprintf(stderr, "kvtierctl gen-prefix: cannot write '%s'\n", flags["out"].c_str());
    return 1;
  }
  return 0;
}

}  // namespace kvtier::ctl
