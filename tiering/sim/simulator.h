// Trace-driven policy simulator: replays a trace through the real TieredStore (its slots, index,
// watermarks, reserved sink slots and planner) once per policy, and prices what happened with a
// documented cost model. Nothing of the store's logic is copied here; the simulator only drives
// it and counts.
//
// Two trace kinds:
// - prefix reuse (Mooncake format): each request looks up its blocks in order, stops at the first
//   miss (prefix semantics), reads the hit pages, then stores every block from the first miss on
//   (they were recomputed). The hit prefix is pinned while the request stores, as an engine holds
//   it while it runs. One planner pass (Maintain) after every request.
// - decode attention (tiering/sim/attention_trace.h): every step, attention recall is measured
//   on the placement the step finds; pages receiving more than the uniform share are read
//   (a page that was dropped is recomputed and stored again); every listed page's attention is
//   reported to the store; kvtier's sink classifier runs on the reported pages; one planner pass.
//
// One tier: --dram-fraction 0 (and no NVMe) leaves HBM alone; every miss is recomputed.
//
// Simplifications, stated: pages are `sim_page_bytes` bytes (the mechanics do not depend on page
// size, and memory stays small); the NVMe tier is a memfd MemoryTier standing in for the io_uring
// tier (same TierBackend interface, no device); modeled bytes and times use the real page size
// (tokens x bytes_per_token).
//
// Thread model: single-threaded; one store per policy, built and destroyed inside the call.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "tiering/policy/policy_factory.h"
#include "tiering/policy/sink_classifier.h"
#include "tiering/sim/attention_trace.h"
#include "tiering/trace/mooncake_trace.h"

namespace kvtier {

// The price of what a policy made happen. Defaults: Llama-3-8B (bf16) served on one H100 SXM.
struct CostModel {
  // Reading a page from HBM where it already is. Default 3,350 GB/s (H100 SXM HBM3).
  double hbm_gbps = 3350;
  // Host DRAM -> GPU over PCIe 5.0 x16, achievable. Default 50 GB/s.
  double dram_gbps = 50;
  // NVMe -> host, one PCIe 4.0 drive, large sequential reads. Default 6 GB/s.
  double nvme_gbps = 6;
  // Prefill throughput when a token has to be recomputed. Default 20,000 tokens/s (8 B params x
  // 2 FLOP/token = 16 GFLOP/token at ~330 TFLOP/s, a third of the H100's dense bf16 peak).
  double prefill_tokens_per_s = 20'000;
  // KV bytes per token: 2 (K, V) x 32 layers x 8 KV heads x 128 dims x 2 B = 131,072.
  double bytes_per_token = 131'072;
};

struct SimOptions {
  // `belady` (prefix traces only) is the offline optimum: it is told every page's next use.
  std::vector<std::string> policies = {"kvtier", "lru",      "lfu",       "arc",
                                       "s3fifo", "wtinylfu", "streaming", "h2o"};
  // Tier sizes as fractions of the trace's distinct pages. HBM at least 1 slot; a tier whose
  // fraction is 0 is left out (DRAM and HBM cannot both be 0).
  double hbm_fraction = 0.10;
  double dram_fraction = 0.50;
  double nvme_fraction = 0.0;
  // Prefix traces: tokens per hash id (Mooncake: 512). Attention traces carry their own.
  uint32_t block_tokens = 512;
  // kvtier's reserved HBM sink slots on attention traces, carved out of the same HBM budget the
  // classic policies get whole. Prefix traces reserve none and classify nothing by position (the
  // first block of a shared prefix is its most shared page, not a sink). Default 1: the position
  // sink takes it; a measured sink beyond a full reserve still ranks above every other page.
  uint32_t sink_slots = 1;
  // The planner (tiering/policy/planner.h) spends at most `migration_gbps` of modeled bytes on
  // migrations on average, with at most `max_migration_pages` in one pass. Default 12.5 GB/s, a
  // quarter of the PCIe link the loads themselves use; 0 means no bandwidth cap (only the
  // per-pass page cap).
  double migration_gbps = 12.5;
  uint32_t max_migration_pages = 64;
  // Half-life of decayed frequency, in store-clock ms (store and kvtier policy). Default 10 min:
  // reuse in the example trace (17 min long) spans minutes; chosen on that trace, see
  // bench/RESULTS.md.
  double frequency_half_life_ms = 600'000;
  // Attention traces: store-clock ms per decode step (default 25 ms) and the half-life of decayed
  // frequency there (default 250 ms = 10 steps: attention shifts within a few steps).
  double step_ms = 25;
  double attention_half_life_ms = 250;
  // Weight of a new attention report in the store's EWMAs (StoreOptions::attention_ewma_alpha;
  // H2O is told the same value). Default 0.2, the store's default.
  double attention_ewma_alpha = 0.2;
  uint32_t sim_page_bytes = 64;
  CostModel cost;
  PolicyConfig policy;
  SinkClassifierOptions classifier;
};

struct SimResult {
  std::string policy;
  std::string format;  // "mooncake" or "attention"
  uint64_t distinct_pages = 0;
  uint32_t hbm_slots = 0, dram_slots = 0, nvme_slots = 0;
  uint64_t hit_tokens_hbm = 0, hit_tokens_dram = 0, hit_tokens_nvme = 0;
  uint64_t miss_tokens = 0;
  uint64_t pages_migrated = 0;
  uint64_t bytes_migrated = 0;  // modeled: pages x tokens per page x bytes_per_token
  // Pages moved from tier i to tier j (HBM, DRAM, NVMe), which the migration seconds price.
  std::array<std::array<uint64_t, kNumTiers>, kNumTiers> pages_moved{};
  // New pages the store placed straight into DRAM or NVMe (HBM had no evictable page, or the
  // policy refused them there), per tier. Their bytes still cross the link to that tier, so they
  // are priced as a move from HBM would be (in bytes_migrated and migration_seconds).
  std::array<uint64_t, kNumTiers> pages_put_below{};
  double load_seconds = 0, recompute_seconds = 0;
  double migration_seconds = 0;        // moves between tiers and pages_put_below's writes
  double modeled_prefill_seconds = 0;  // load + recompute + migration
  // Share of the tokens asked for that were served from a tier (any tier; hbm: from HBM).
  double hit_share = 0, hbm_hit_share = 0;
  // Attention traces only (-1 otherwise): share of attention mass on HBM-resident pages; the
  // same weighted by value norm (what reaches the output); share of (step, true sink) pairs
  // with the sink in HBM (-1 when the trace does not know its sinks).
  double attention_recall = -1, output_recall = -1, sink_residency = -1;
  uint64_t sink_overflows = 0;
  double wall_seconds = 0;
};

absl::StatusOr<std::vector<SimResult>> SimulatePrefixTrace(
    const std::vector<MooncakeRequest>& requests, const SimOptions& options);
absl::StatusOr<std::vector<SimResult>> SimulateAttentionTrace(const AttentionTrace& trace,
                                                              const SimOptions& options);

// One JSON object, no newline (the `kvtierctl sim --json` line).
std::string SimResultJson(const SimResult& result);

}  // namespace kvtier
