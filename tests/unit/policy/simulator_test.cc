// The simulator against a hand computation, and the attention-trace format and generator.
#include "tiering/sim/simulator.h"

#include <filesystem>
#include <random>
#include <sstream>

#include "absl/container/flat_hash_map.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "test_seed.h"
#include "tiering/sim/attention_trace.h"
#include "tiering/sim/prefix_workload.h"

namespace kvtier {
namespace {

MooncakeRequest Req(uint64_t ts, uint32_t input, std::vector<uint64_t> ids) {
  MooncakeRequest r;
  r.timestamp_ms = ts;
  r.input_length = input;
  r.output_length = 1;
  r.hash_ids = std::move(ids);
  return r;
}

// The five requests both hand computations below walk through.
std::vector<MooncakeRequest> TinyTrace() {
  return {Req(1, 8, {1, 2}), Req(2, 8, {1, 3}), Req(3, 8, {1, 2}), Req(4, 8, {1, 4}),
          Req(5, 6, {1, 2})};
}

// Blocks of 4 tokens; distinct chained pages: [1], [1,2], [1,3], [1,4] -> 4; HBM 50 % = 2 slots,
// no other tier, LRU. By hand (pinned prefix never a victim):
//   t1 [1,2] 8 tok: miss 8. HBM {1,12}.
//   t2 [1,3] 8 tok: hit 1 (4). put 13, victim 12 (dropped). miss 4. HBM {1,13}.
//   t3 [1,2] 8 tok: hit 1 (4). put 12, victim 13. miss 4. HBM {1,12}.
//   t4 [1,4] 8 tok: hit 1 (4). put 14, victim 12. miss 4. HBM {1,14}.
//   t5 [1,2] 6 tok: hit 1 (4). put 12 (2 tokens: the last block is partial), victim 14. miss 2.
// Total: hit_tokens_hbm 16, miss_tokens 22, nothing migrated.
TEST(SimulatorTest, LruOnTinyTraceMatchesHandComputation) {
  const std::vector<MooncakeRequest> trace = TinyTrace();
  SimOptions o;
  o.policies = {"lru"};
  o.hbm_fraction = 0.5;
  o.dram_fraction = 0;
  o.block_tokens = 4;
  absl::StatusOr<std::vector<SimResult>> results = SimulatePrefixTrace(trace, o);
  ASSERT_TRUE(results.ok()) << results.status();
  ASSERT_EQ(results->size(), 1u);
  const SimResult& r = results->front();
  EXPECT_EQ(r.distinct_pages, 4u);
  EXPECT_EQ(r.hbm_slots, 2u);
  EXPECT_EQ(r.hit_tokens_hbm, 16u);
  EXPECT_EQ(r.hit_tokens_dram, 0u);
  EXPECT_EQ(r.miss_tokens, 22u);
  EXPECT_EQ(r.pages_migrated, 0u);
  const double expected =
      16 * o.cost.bytes_per_token / (o.cost.hbm_gbps * 1e9) + 22 / o.cost.prefill_tokens_per_s;
  EXPECT_NEAR(r.modeled_prefill_seconds, expected, 1e-12);
}

// Same trace with a DRAM tier of 1 slot under HBM: victims now go down instead of out. A swap
// is two moves through the store, and the promoted page still holds its DRAM slot while the
// displaced one looks for room, so with DRAM full the displaced page is dropped, not swapped.
//   t1: put 1, 12 -> HBM {1,12}.
//   t2: hit 1 (HBM). put 13: 12 -> DRAM (migration 1). miss 4. HBM {1,13} DRAM {12}.
//   t3: hit 1 (HBM), 12 in DRAM: hit (4 tok DRAM). Planner: 12 (t3) is more recent than 13
//       (t2): 12 -> HBM (migration 2), 13 finds DRAM full and is dropped. HBM {1,12} DRAM {}.
//   t4: hit 1. put 14: victim 12 -> DRAM (migration 3). miss 4. HBM {1,14} DRAM {12}.
//   t5: hit 1 (HBM), 12 in DRAM (2 tok). Planner: 12 -> HBM (migration 4), 14 dropped.
// Total: hbm 16, dram 4 + 2 = 6, miss 8 + 4 + 4 = 16, 4 page migrations.
TEST(SimulatorTest, LruWithDramTierMatchesHandComputation) {
  const std::vector<MooncakeRequest> trace = TinyTrace();
  SimOptions o;
  o.policies = {"lru"};
  o.hbm_fraction = 0.5;
  o.dram_fraction = 0.25;
  o.block_tokens = 4;
  absl::StatusOr<std::vector<SimResult>> results = SimulatePrefixTrace(trace, o);
  ASSERT_TRUE(results.ok()) << results.status();
  const SimResult& r = results->front();
  EXPECT_EQ(r.dram_slots, 1u);
  EXPECT_EQ(r.hit_tokens_hbm, 16u);
  EXPECT_EQ(r.hit_tokens_dram, 6u);
  EXPECT_EQ(r.miss_tokens, 16u);
  EXPECT_EQ(r.pages_migrated, 4u);
  EXPECT_EQ(r.bytes_migrated, static_cast<uint64_t>(4 * 4 * o.cost.bytes_per_token));
}

// Every token of every request is either a hit in some tier or a miss, under every policy and
// tier shape; the first 250 requests of the example trace keep the test fast under ASan.
TEST(SimulatorTest, ExampleTraceConservesTokens) {
  const std::string path =
      std::string(KVTIER_TEST_DATA_DIR) + "/traces/mooncake_synthetic_trace.jsonl";
  ASSERT_TRUE(std::filesystem::exists(path)) << "test data missing: " << path;
  absl::StatusOr<std::vector<MooncakeRequest>> trace = ReadMooncakeTraceFile(path);
  ASSERT_TRUE(trace.ok()) << trace.status();
  trace->resize(std::min<size_t>(trace->size(), 250));
  std::mt19937_64 rng = testing::SeededRng();
  uint64_t total = 0;
  for (const MooncakeRequest& r : *trace) {
    for (size_t b = 0; b < r.hash_ids.size(); ++b) {
      const uint64_t begin = b * 512;
      total += r.input_length <= begin ? 1 : std::min<uint64_t>(512, r.input_length - begin);
    }
  }
  SimOptions o;
  o.hbm_fraction = 0.02 + 0.1 * std::uniform_real_distribution<double>(0, 1)(rng);
  o.dram_fraction = 0.1;
  o.nvme_fraction = 0.1;
  absl::StatusOr<std::vector<SimResult>> results = SimulatePrefixTrace(*trace, o);
  ASSERT_TRUE(results.ok()) << results.status();
  for (const SimResult& r : *results) {
    EXPECT_EQ(r.hit_tokens_hbm + r.hit_tokens_dram + r.hit_tokens_nvme + r.miss_tokens, total)
        << r.policy << " hbm fraction " << o.hbm_fraction;
    EXPECT_GT(r.hit_tokens_hbm, 0u) << r.policy;
    EXPECT_GT(r.miss_tokens, 0u) << r.policy;
  }
}

TEST(SimulatorTest, BeladyBoundsEveryPolicyOnOneTier) {
  const std::string path =
      std::string(KVTIER_TEST_DATA_DIR) + "/traces/mooncake_synthetic_trace.jsonl";
  absl::StatusOr<std::vector<MooncakeRequest>> trace = ReadMooncakeTraceFile(path);
  ASSERT_TRUE(trace.ok()) << trace.status();
  trace->resize(std::min<size_t>(trace->size(), 600));
  std::mt19937_64 rng = testing::SeededRng();
  SimOptions o;
  o.policies = {"belady", "kvtier", "lru", "arc", "s3fifo", "wtinylfu"};
  o.hbm_fraction = 0.03 + 0.1 * std::uniform_real_distribution<double>(0, 1)(rng);
  o.dram_fraction = 0;  // one tier
  absl::StatusOr<std::vector<SimResult>> results = SimulatePrefixTrace(*trace, o);
  ASSERT_TRUE(results.ok()) << results.status();
  ASSERT_EQ(results->front().policy, "belady");
  for (const SimResult& r : *results) {
    EXPECT_EQ(r.hit_tokens_dram + r.hit_tokens_nvme, 0u) << r.policy;
    EXPECT_DOUBLE_EQ(r.hit_share, r.hbm_hit_share) << r.policy;
    EXPECT_LE(r.hit_share, results->front().hit_share) << r.policy << " at " << o.hbm_fraction;
  }
  o.policies = {"belady"};
  AttentionTraceOptions g;
  g.steps = 20;
  absl::StatusOr<AttentionTrace> attention = GenerateAttentionTrace(g);
  ASSERT_TRUE(attention.ok());
  EXPECT_FALSE(SimulateAttentionTrace(*attention, o).ok());  // prefix traces only
}

TEST(PrefixWorkloadTest, DeterministicSortedAndSharesOnlyFullPromptBlocks) {
  std::mt19937_64 rng = testing::SeededRng();
  PrefixWorkloadOptions g;
  g.duration_s = 300;
  g.seed = rng();
  absl::StatusOr<std::vector<MooncakeRequest>> a = GeneratePrefixWorkload(g);
  absl::StatusOr<std::vector<MooncakeRequest>> b = GeneratePrefixWorkload(g);
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_GT(a->size(), 100u);
  std::stringstream buf;
  ASSERT_TRUE(WriteMooncakeTrace(*a, buf).ok());
  absl::StatusOr<std::vector<MooncakeRequest>> read = ReadMooncakeTrace(buf);
  ASSERT_TRUE(read.ok()) << read.status();
  ASSERT_EQ(read->size(), a->size());
  absl::flat_hash_map<uint64_t, int> uses;
  for (size_t i = 0; i < a->size(); ++i) {
    const MooncakeRequest& r = (*a)[i];
    EXPECT_EQ(r.hash_ids, (*b)[i].hash_ids);
    EXPECT_EQ(r.hash_ids, (*read)[i].hash_ids);
    EXPECT_EQ(r.timestamp_ms, (*read)[i].timestamp_ms);
    if (i > 0) {
      EXPECT_GE(r.timestamp_ms, (*a)[i - 1].timestamp_ms);
    }
    EXPECT_EQ(r.hash_ids.size(), (r.input_length + g.block_tokens - 1) / g.block_tokens);
    for (uint64_t id : r.hash_ids) ++uses[id];
    // A partial last block is new content every time: never seen before.
    if (r.input_length % g.block_tokens != 0) {
      EXPECT_EQ(uses[r.hash_ids.back()], 1);
    }
  }
  int shared = 0;
  for (const auto& [id, n] : uses) shared += n > 1;
  EXPECT_GT(shared, 0);  // system prompts and conversation contexts are read again
  g.block_tokens = 0;
  EXPECT_FALSE(GeneratePrefixWorkload(g).ok());
}

TEST(AttentionTraceTest, RoundTripsThroughTheFormat) {
  std::mt19937_64 rng = testing::SeededRng();
  AttentionTraceOptions g;
  g.steps = 100 + rng() % 100;
  g.prompt_pages = 16;
  g.sink_pages = {static_cast<uint32_t>(rng() % 16)};
  g.seed = rng();
  absl::StatusOr<AttentionTrace> trace = GenerateAttentionTrace(g);
  ASSERT_TRUE(trace.ok()) << trace.status();
  std::stringstream buf;
  ASSERT_TRUE(WriteAttentionTrace(*trace, buf).ok());
  absl::StatusOr<AttentionTrace> back = ReadAttentionTrace(buf);
  ASSERT_TRUE(back.ok()) << back.status();
  ASSERT_EQ(back->steps.size(), trace->steps.size());
  EXPECT_EQ(back->sink_pages, g.sink_pages);
  EXPECT_EQ(back->page_count(), trace->page_count());
  EXPECT_EQ(back->page_count(), g.prompt_pages + (g.steps - 1) / g.tokens_per_page);
  for (size_t s = 0; s < trace->steps.size(); s += 17) {
    ASSERT_EQ(back->steps[s].pages, trace->steps[s].pages);
    for (size_t i = 0; i < trace->steps[s].mass.size(); ++i) {
      EXPECT_NEAR(back->steps[s].mass[i], trace->steps[s].mass[i], 1e-4);
    }
  }
  // The generator's truth: the sink gets the most mass and the smallest value norm every step.
  for (const AttentionStep& s : trace->steps) {
    const size_t sink = g.sink_pages[0];
    for (size_t i = 0; i < s.pages.size(); ++i) {
      if (i == sink) continue;
      ASSERT_GT(s.mass[sink], s.mass[i]) << "step " << s.step;
      ASSERT_LT(s.value_norm[sink], s.value_norm[i]) << "step " << s.step;
    }
  }
}

TEST(AttentionTraceTest, RejectsBrokenTraces) {
  for (const char* text : {
           "", "{\"kind\": \"other\", \"version\": 1}\n",
           "{\"kind\": \"kvtier-attention\", \"version\": 1}\n{\"step\": 0, \"pages\": [0], "
           "\"mass\": [0.5], \"value_norm\": [1]}\n",  // page used before appended
           "{\"kind\": \"kvtier-attention\", \"version\": 1}\n{\"step\": 0, \"append\": [0], "
           "\"pages\": [0], \"mass\": [0.5, 0.1], \"value_norm\": [1]}\n",  // lengths differ
       }) {
    std::stringstream in(text);
    EXPECT_FALSE(ReadAttentionTrace(in).ok()) << text;
  }
}

TEST(SimulatorTest, AttentionTraceKeepsSinkResidentUnderKvtier) {
  std::mt19937_64 rng = testing::SeededRng();
  AttentionTraceOptions g;
  g.steps = 400;
  g.prompt_pages = 48;
  g.sink_pages = {static_cast<uint32_t>(1 + rng() % 40)};  // not at position 0
  g.seed = rng();
  absl::StatusOr<AttentionTrace> trace = GenerateAttentionTrace(g);
  ASSERT_TRUE(trace.ok());
  SimOptions o;
  o.hbm_fraction = 0.1;
  o.dram_fraction = 1.0;
  absl::StatusOr<std::vector<SimResult>> results = SimulateAttentionTrace(*trace, o);
  ASSERT_TRUE(results.ok()) << results.status();
  ASSERT_EQ(results->size(), o.policies.size());
  for (const SimResult& r : *results) {
    EXPECT_GE(r.attention_recall, 0.0) << r.policy;
    EXPECT_LE(r.attention_recall, 1.0) << r.policy;
    EXPECT_EQ(r.miss_tokens, 0u) << r.policy;  // DRAM holds every page
    const nlohmann::json j = nlohmann::json::parse(SimResultJson(r));
    for (const char* field :
         {"policy", "hit_tokens_hbm", "hit_tokens_dram", "hit_tokens_nvme", "miss_tokens",
          "bytes_migrated", "modeled_prefill_seconds", "attention_recall", "sink_residency"}) {
      EXPECT_TRUE(j.contains(field)) << field;
    }
  }
  const SimResult& kvtier = results->front();
  ASSERT_EQ(kvtier.policy, "kvtier");
  // Measured within min_reports steps and kept resident from then on.
  EXPECT_GT(kvtier.sink_residency, 0.98);
}

}  // namespace
}  // namespace kvtier
