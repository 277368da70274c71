#include "daemon/observability/metrics.h"

#include <algorithm>
#include <cstdio>
#include <thread>

#include "absl/strings/str_split.h"
#include "daemon/observability/admin_http.h"
#include "daemon/observability/store_metrics.h"
#include "daemon/workload.h"
#include "gtest/gtest.h"
#include "tests/unit/daemon/http_get.h"

namespace kvtier {
namespace {

std::string Promtool(const std::string& exposition);

// Every line the exposition must hold, in any order of series within a family (prometheus-cpp
// orders them by label set), and nothing else: HELP escaped, label values escaped, `le`
// inclusive, _sum and _count beside the buckets. promtool checks the same text below.
TEST(MetricsRegistryTest, SerializesTheTextFormat) {
  metrics::Registry r;
  auto& c = r.AddCounter("kvtier_test_requests_total", "Requests.\nSecond line.", {"op"});
  c.Get({"lookup"}).Increment(3);
  c.Get({"we\"ird\\"}).Increment();
  r.AddGauge("kvtier_test_bytes", "Bytes.").Get({}).Set(1.5);
  auto& h = r.AddHistogram("kvtier_test_seconds", "Latency.", {}, {0.1, 1});
  h.Get({}).Observe(0.1);  // le is inclusive: lands in the 0.1 bucket
  h.Get({}).Observe(0.5);
  h.Get({}).Observe(7);
  const std::string text = r.Serialize();
  std::vector<std::string> lines = absl::StrSplit(text, '\n', absl::SkipEmpty());
  std::sort(lines.begin(), lines.end());
  std::vector<std::string> want = {
      "# HELP kvtier_test_requests_total Requests.\\nSecond line.",
      "# TYPE kvtier_test_requests_total counter",
      "kvtier_test_requests_total{op=\"lookup\"} 3",
      "kvtier_test_requests_total{op=\"we\\\"ird\\\\\"} 1",
      "# HELP kvtier_test_bytes Bytes.",
      "# TYPE kvtier_test_bytes gauge",
      "kvtier_test_bytes 1.5",
      "# HELP kvtier_test_seconds Latency.",
      "# TYPE kvtier_test_seconds histogram",
      "kvtier_test_seconds_bucket{le=\"0.1\"} 1",
      "kvtier_test_seconds_bucket{le=\"1\"} 2",
      "kvtier_test_seconds_bucket{le=\"+Inf\"} 3",
      "kvtier_test_seconds_sum 7.6",
      "kvtier_test_seconds_count 3",
  };
  std::sort(want.begin(), want.end());
  EXPECT_EQ(lines, want) << text;
  EXPECT_EQ(Promtool(text), "") << text;
}

TEST(MetricsRegistryTest, ConcurrentIncrementsAreNeverLost) {
  metrics::Registry r;
  metrics::Counter& c = r.AddCounter("kvtier_test_total", "t").Get({});
  metrics::Histogram& h =
      r.AddHistogram("kvtier_test_latency_seconds", "t", {}, metrics::LatencyBuckets()).Get({});
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 50'000; ++i) {
        c.Increment();
        h.Observe(1e-4 * (i % 7));
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(c.value(), 200'000);
  EXPECT_EQ(h.count(), 200'000u);
  EXPECT_EQ(h.CumulativeCounts().back(), 200'000u);
}

TEST(MetricsRegistryTest, WrongLabelCountIsAnError) {
  metrics::Registry r;
  auto& g = r.AddGauge("kvtier_test_gauge", "g", {"tier", "class"});
  EXPECT_FALSE(g.Add({"hbm"}).ok());
  EXPECT_TRUE(g.Add({"hbm", "sink"}).ok());
  EXPECT_EQ(*g.Add({"hbm", "sink"}), *g.Add({"hbm", "sink"})) << "one metric per label set";
}

std::unique_ptr<TieredStore> StoreWithTraffic() {
  StoreOptions o;
  o.page_bytes = 4096;
  o.hbm.slots = 32;
  o.dram.slots = 64;
  o.hbm_backend = HbmBackend::kHostEmulated;
  o.hbm_devices = {0, 1};  // two pools of 16, as on a two-GPU node
  o.tokens_per_page = 512;
  auto store = *TieredStore::Create(o);
  const NamespaceId ns = *store->AddNamespace("metrics-test", 4);
  GeneratedWorkloadOptions gen;
  gen.requests = 300;
  EXPECT_TRUE(ReplayPrefixWorkload(*store, ns, GenerateWorkload(gen), 8).ok());
  return store;
}

// Runs Debian's promtool over an exposition and returns its output; "" when it is clean.
std::string Promtool(const std::string& exposition) {
  char path[] = "/tmp/kvtier-metrics-XXXXXX";
  const int fd = mkstemp(path);
  if (fd < 0) return "mkstemp failed";
  const bool written =
      write(fd, exposition.data(), exposition.size()) == static_cast<ssize_t>(exposition.size());
  close(fd);
  if (!written) return "write failed";
  const std::string cmd = std::string("promtool check metrics < ") + path + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  std::string out;
  char buf[512];
  while (p != nullptr && fgets(buf, sizeof(buf), p) != nullptr) out += buf;
  const int rc = p != nullptr ? pclose(p) : -1;
  unlink(path);
  return rc == 0 ? out : "promtool exit " + std::to_string(rc) + ": " + out;
}

TEST(StoreMetricsTest, LiveStoreMetricsPassPromtoolAndAddUp) {
  auto store = StoreWithTraffic();
  metrics::Registry r;
  BindStoreMetrics(r, *store);
  const std::string text = r.Serialize();
  EXPECT_EQ(Promtool(text), "") << text;
  EXPECT_NE(text.find("kvtier_hbm_backend_info{backend=\"host-emulated\"} 1"), std::string::npos);
  EXPECT_NE(text.find("kvtier_tier_capacity_bytes{tier=\"hbm\"} 131072"), std::string::npos);
  const StoreCounters c = store->Counters();
  EXPECT_NE(text.find("kvtier_hits_total{tier=\"dram\"} " +
                      std::to_string(c.hits[TierIndex(Tier::kDram)])),
            std::string::npos);
  EXPECT_GT(c.hits[TierIndex(Tier::kDram)], 0u);
  EXPECT_NE(text.find("kvtier_sink_slots{state=\"used\"} 4"), std::string::npos) << text;
  const TierUsage hbm = store->Usage(Tier::kHbm);
  ASSERT_EQ(hbm.pools.size(), 2u);
  EXPECT_EQ(hbm.pools[0].used_slots + hbm.pools[1].used_slots, hbm.used_slots);
  for (int p = 0; p < 2; ++p) {
    // Labels print in name order.
    const std::string labels = "device=\"" + std::to_string(p) + "\",pool=\"" + std::to_string(p);
    EXPECT_NE(text.find("kvtier_hbm_pool_slots{" + labels + "\",state=\"capacity\"} 16"),
              std::string::npos)
        << text;
    EXPECT_NE(text.find("kvtier_hbm_pool_slots{" + labels + "\",state=\"used\"} " +
                        std::to_string(hbm.pools[p].used_slots)),
              std::string::npos)
        << text;
  }
  EXPECT_GT(hbm.pools[1].used_slots, 0u);  // the traffic used both pools
}

TEST(AdminHttpTest, ServesMetricsHealthAndReadiness) {
  auto store = StoreWithTraffic();
  metrics::Registry r;
  BindStoreMetrics(r, *store);
  std::atomic<bool> ready{false};
  auto server =
      AdminHttpServer::Start({.address = "127.0.0.1:0"}, &r, [&] { return ready.load(); });
  ASSERT_TRUE(server.ok()) << server.status();
  const int port = (*server)->port();
  ASSERT_GT(port, 0);
  testing::HttpResponse m = testing::HttpRequest(port, "GET", "/metrics");
  EXPECT_EQ(m.status, 200);
  EXPECT_NE(m.headers.find("text/plain; version=0.0.4"), std::string::npos) << m.headers;
  EXPECT_NE(m.body.find("# TYPE kvtier_hits_total counter"), std::string::npos);
  EXPECT_EQ(testing::HttpRequest(port, "GET", "/healthz").status, 200);
  EXPECT_EQ(testing::HttpRequest(port, "GET", "/readyz").status, 503);
  ready = true;
  EXPECT_EQ(testing::HttpRequest(port, "GET", "/readyz").status, 200);
  EXPECT_EQ(testing::HttpRequest(port, "POST", "/metrics").status, 404);
  EXPECT_EQ(testing::HttpRequest(port, "GET", "/nope").status, 404);
  // A second server on the same port is refused with the address in the error.
  auto clash =
      AdminHttpServer::Start({.address = "127.0.0.1:" + std::to_string(port)}, &r, nullptr);
  ASSERT_FALSE(clash.ok());
  EXPECT_NE(clash.status().message().find(std::to_string(port)), absl::string_view::npos);
}

}  // namespace
}  // namespace kvtier
