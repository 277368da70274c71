#include <filesystem>
#include <sstream>

#include "daemon/workload.h"
#include "gtest/gtest.h"
#include "tiering/trace/mooncake_trace.h"

namespace kvtier {
namespace {

TEST(MooncakeTraceTest, ParsesALineOfTheReleasedFormat) {
  absl::StatusOr<MooncakeRequest> r = ParseMooncakeLine(
      R"({"timestamp": 277, "input_length": 1100, "output_length": 92, "hash_ids": [4, 5, 9]})");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->timestamp_ms, 277u);
  EXPECT_EQ(r->input_length, 1100u);
  EXPECT_EQ(r->output_length, 92u);
  EXPECT_EQ(r->hash_ids, (std::vector<uint64_t>{4, 5, 9}));
}

TEST(MooncakeTraceTest, BadLinesNameTheProblemAndTheLine) {
  EXPECT_FALSE(ParseMooncakeLine("not json").ok());
  EXPECT_FALSE(ParseMooncakeLine("[1, 2]").ok());
  absl::Status s =
      ParseMooncakeLine(R"({"timestamp": 1, "output_length": 1, "hash_ids": []})").status();
  EXPECT_NE(s.message().find("input_length"), absl::string_view::npos) << s;
  s = ParseMooncakeLine(R"({"timestamp": -5, "input_length": 1, "output_length": 1,
                            "hash_ids": []})")
          .status();
  EXPECT_NE(s.message().find("timestamp"), absl::string_view::npos) << s;
  EXPECT_FALSE(ParseMooncakeLine(R"({"timestamp": 1, "input_length": 1, "output_length": 1,
                                     "hash_ids": [1, "x"]})")
                   .ok());
  EXPECT_FALSE(ParseMooncakeLine(R"({"timestamp": 1, "input_length": 99999999999,
                                     "output_length": 1, "hash_ids": []})")
                   .ok());
  std::istringstream in(
      "{\"timestamp\": 0, \"input_length\": 1, \"output_length\": 1, \"hash_ids\": [1]}\n\n"
      "{\"timestamp\": 0}\n");
  absl::StatusOr<std::vector<MooncakeRequest>> all = ReadMooncakeTrace(in);
  ASSERT_FALSE(all.ok());
  EXPECT_NE(all.status().message().find("line 3"), absl::string_view::npos) << all.status();
}

TEST(MooncakeTraceTest, ReadsThePublicExampleTrace) {
  const std::string path =
      std::string(KVTIER_TEST_DATA_DIR) + "/traces/mooncake_synthetic_trace.jsonl";
  ASSERT_TRUE(std::filesystem::exists(path)) << "test data missing: " << path;
  absl::StatusOr<std::vector<MooncakeRequest>> trace = ReadMooncakeTraceFile(path);
  ASSERT_TRUE(trace.ok()) << trace.status();
  EXPECT_EQ(trace->size(), 3993u);
  for (const MooncakeRequest& r : *trace) {
    // One id per 512-token block, the last one possibly partial.
    ASSERT_EQ(r.hash_ids.size(), (r.input_length + 511) / 512);
  }
}

TEST(WorkloadReplayTest, GeneratedPrefixWorkloadHitsAndNeverServesAWrongPage) {
  StoreOptions o;
  o.page_bytes = 8192;
  o.hbm.slots = 64;
  o.dram.slots = 256;
  o.hbm_backend = HbmBackend::kHostEmulated;
  o.tokens_per_page = 512;
  auto store = TieredStore::Create(o);
  ASSERT_TRUE(store.ok());
  auto ns = (*store)->AddNamespace("demo", 8);
  ASSERT_TRUE(ns.ok());
  GeneratedWorkloadOptions gen;
  gen.requests = 500;
  const std::vector<MooncakeRequest> requests = GenerateWorkload(gen);
  absl::StatusOr<ReplayStats> stats = ReplayPrefixWorkload(**store, *ns, requests, 16);
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(stats->requests, 500u);
  EXPECT_EQ(stats->mismatches, 0u);
  EXPECT_GT(stats->hit_blocks, stats->blocks / 4) << "popular documents must be reused";
  EXPECT_EQ(stats->hit_blocks + stats->stored_blocks, stats->blocks);
  const TierUsage hbm = (*store)->Usage(Tier::kHbm);
  EXPECT_EQ(hbm.used_slots, hbm.capacity_slots) << "the fast tier fills first";
  EXPECT_GT(hbm.sink_used_slots, 0u) << "first pages are sinks by position";
}

}  // namespace
}  // namespace kvtier
