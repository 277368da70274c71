// Concurrent consistency checker (CacheLib cachebench's consistency mode): many client threads,
// one connection each, store and load random versions of a shared key space through kvtierd
// while its tiers are far too small for it (HBM, DRAM and NVMe all evict, the planner migrates
// every few milliseconds). Pages are self-describing (key + version + a pattern derived from
// them), so every page served is checked: a miss is allowed, a page that is not one of the
// versions stored under its key never is.
//
// KVTIER_CONSISTENCY_OPS sets the page operations (default 60000, the CI run; the full run is
// bench/reliability/consistency.sh with 5 M).
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/integration/daemon_harness.h"
#include "tests/reliability/reliability_figures.h"

namespace kvtier::testing {
namespace {

uint64_t Ops() {
  if (const char* s = std::getenv("KVTIER_CONSISTENCY_OPS"); s != nullptr) {
    return std::strtoull(s, nullptr, 10);
  }
  return 60000;
}

TEST(Reliability, ConcurrentConsistencyUnderEvictionAndMigration) {
  const uint64_t seed = TestSeed();
  // The NVMe tier on tmpfs where there is one: this test is about concurrency, not durability,
  // and a disk's fdatasync per batch would make it 20x slower (the crash test covers the disk).
  char shm_tmpl[] = "/dev/shm/kvtier-consistency-XXXXXX";
  char tmp_tmpl[] = "/tmp/kvtier-consistency-XXXXXX";
  char* tmpl = ::mkdtemp(shm_tmpl);
  if (tmpl == nullptr) tmpl = ::mkdtemp(tmp_tmpl);
  ASSERT_NE(tmpl, nullptr);
  const std::string root = tmpl;
  // 16 HBM + 32 DRAM + 64 NVMe slots for 512 keys of 4 KiB.
  const std::string config = absl::StrCat(
      "http_address: \"\"\nstore:\n  page_bytes: 4096\n  hbm_pages: 16\n  dram_pages: 32\n"
      "  maintain_interval_ms: 5\nnvme:\n  directories: [",
      root, "/nvme]\n  capacity_bytes: ", 64 * (4096 + 4096),
      "\nnamespaces:\n  - name: \"reliability/*\"\n    sink_slots: 2\n");
  absl::StatusOr<DaemonProcess> d = DaemonProcess::Start(config);
  ASSERT_TRUE(d.ok()) << d.status();
  WorkerResult r =
      RunWorker({"consistency", "--socket=" + d->socket_path(), "--ns=reliability/consistency",
                 "--page_bytes=4096", absl::StrCat("--seed=", seed), "--threads=8", "--keys=512",
                 "--versions=4", "--batch=8", absl::StrCat("--ops=", Ops())});
  std::printf("%s", r.output.c_str());
  EXPECT_EQ(r.exit_code, 0) << r.output;
  bool found = false;
  EXPECT_EQ(FigureOf(r.output, "consistency ", "inconsistencies", &found), 0u);
  EXPECT_TRUE(found) << r.output;
  EXPECT_GE(FigureOf(r.output, "consistency ", "ops"), Ops());
  // The run must have exercised what it claims: hits from every tier, and misses (evictions).
  EXPECT_GT(FigureOf(r.output, "consistency ", "hits_hbm"), 0u);
  EXPECT_GT(FigureOf(r.output, "consistency ", "hits_dram"), 0u);
  EXPECT_GT(FigureOf(r.output, "consistency ", "hits_nvme"), 0u);
  EXPECT_GT(FigureOf(r.output, "consistency ", "misses"), 0u);
  EXPECT_EQ(d->Stop(), 0);
  std::error_code ec;
  std::filesystem::remove_all(root, ec);
}

}  // namespace
}  // namespace kvtier::testing
