// The directory's pure parts (rendezvous homes, the holder record, the page checksum) and the
// cluster: config section, including the one shipped in deploy/kubernetes.
#include "daemon/cluster_directory.h"

#include <gtest/gtest.h>
#include <yaml-cpp/yaml.h>

#include <map>
#include <random>

#include "absl/strings/str_cat.h"
#include "daemon/config.h"

namespace kvtier {
namespace {

TEST(ClusterDirectory, RendezvousHomesAreStableAndBalanced) {
  const uint64_t seed = std::random_device{}();
  std::printf("seed %llu\n", static_cast<unsigned long long>(seed));
  std::mt19937_64 rng(seed);
  std::vector<std::string> four = {"a", "b", "c", "d"};
  std::vector<std::string> three = {"a", "b", "d"};  // c left
  std::map<std::string, int> load;
  int moved_needlessly = 0;
  for (int i = 0; i < 4000; ++i) {
    const PageKey k{rng(), rng()};
    const std::string& home4 = four[HomeOf(four, "ns", k)];
    const std::string& home3 = three[HomeOf(three, "ns", k)];
    ++load[home4];
    // Only keys whose home left move.
    if (home4 != "c" && home4 != home3) ++moved_needlessly;
    // Order of the member list does not matter.
    std::vector<std::string> shuffled = four;
    std::shuffle(shuffled.begin(), shuffled.end(), rng);
    EXPECT_EQ(shuffled[HomeOf(shuffled, "ns", k)], home4);
  }
  EXPECT_EQ(moved_needlessly, 0);
  for (const auto& [node, n] : load) EXPECT_GT(n, 800) << node;  // ~1000 each
}

TEST(ClusterDirectory, HoldersAreSoftState) {
  PageDirectory::Options o;
  o.max_entries = 2;
  o.max_holders = 2;
  PageDirectory d(o);
  const PageKey k1{1, 2}, k2{3, 4}, k3{5, 6};
  EXPECT_TRUE(d.Add("ns", k1, "a"));
  EXPECT_TRUE(d.Add("ns", k1, "b"));
  EXPECT_TRUE(d.Add("ns", k1, "c"));  // replaces the oldest holder
  EXPECT_EQ(d.Holders("ns", k1), (std::vector<std::string>{"b", "c"}));
  EXPECT_TRUE(d.Holders("other", k1).empty());  // namespaces never mix
  EXPECT_TRUE(d.Add("ns", k2, "a"));
  EXPECT_FALSE(d.Add("ns", k3, "a"));  // full: a miss for peers, never an error for workers
  d.Remove("ns", k1, "b");
  EXPECT_EQ(d.Holders("ns", k1), (std::vector<std::string>{"c"}));
  d.Retain([](const std::string&, const PageKey&) { return true; },
           [](const std::string& h) { return h != "c"; });  // c died
  EXPECT_TRUE(d.Holders("ns", k1).empty());
  EXPECT_EQ(d.size(), 1u);
}

TEST(ClusterDirectory, ChecksumBindsBytesToTheirKey) {
  std::vector<std::byte> page(4096, std::byte{7});
  const uint64_t c = PageChecksum({1, 2}, page.data(), page.size());
  EXPECT_NE(c, PageChecksum({1, 3}, page.data(), page.size()));
  page[4095] = std::byte{8};
  EXPECT_NE(c, PageChecksum({1, 2}, page.data(), page.size()));
}

TEST(ClusterConfig, ValidatesEveryKeyByName) {
  DaemonConfig c;
  ASSERT_TRUE(ApplyConfigYaml(EmbeddedDefaultConfigYaml(), c).ok());
  EXPECT_TRUE(ValidateConfig(c).ok());  // off by default
  ASSERT_TRUE(ApplyConfigYaml("cluster: {enabled: true}", c).ok());
  EXPECT_NE(ValidateConfig(c).message().find("cluster.etcd_endpoints"), std::string::npos);
  ASSERT_TRUE(
      ApplyConfigYaml("cluster: {etcd_endpoints: [http://127.0.0.1:2379], lease_ttl_s: 1}", c)
          .ok());
  EXPECT_NE(ValidateConfig(c).message().find("cluster.lease_ttl_s"), std::string::npos);
  ASSERT_TRUE(ApplyConfigYaml("cluster: {lease_ttl_s: 5, fetch_lease_ms: 10}", c).ok());
  EXPECT_NE(ValidateConfig(c).message().find("cluster.fetch_lease_ms"), std::string::npos);
  ASSERT_TRUE(ApplyConfigYaml("cluster: {fetch_lease_ms: 60000}", c).ok());
  EXPECT_TRUE(ValidateConfig(c).ok()) << ValidateConfig(c);
  for (const char* bad :
       {"push_below_free_fraction: 1.5", "max_push_bytes_per_s: 0", "busy_poll_us: 20000"}) {
    DaemonConfig d = c;
    ASSERT_TRUE(ApplyConfigYaml(absl::StrCat("cluster: {", bad, "}"), d).ok()) << bad;
    const std::string key(absl::string_view(bad).substr(0, absl::string_view(bad).find(':')));
    EXPECT_NE(ValidateConfig(d).message().find("cluster." + key), std::string::npos)
        << ValidateConfig(d);
  }
  EXPECT_FALSE(ApplyConfigYaml("cluster: {bogus: 1}", c).ok());
  EXPECT_NE(ConfigToYaml(c).find("etcd_endpoints"), std::string::npos);
}

TEST(ClusterConfig, KubernetesManifestsAgree) {
  const std::string base = std::string(KVTIER_SOURCE_DIR) + "/deploy/kubernetes/base/";
  const YAML::Node cm = YAML::LoadFile(base + "configmap.yaml");
  DaemonConfig c;
  ASSERT_TRUE(ApplyConfigYaml(EmbeddedDefaultConfigYaml(), c).ok());
  ASSERT_TRUE(ApplyConfigYaml(cm["data"]["kvtierd.yaml"].as<std::string>(), c).ok());
  ASSERT_TRUE(ValidateConfig(c).ok()) << ValidateConfig(c);
  ASSERT_TRUE(c.cluster.enabled);
  EXPECT_FALSE(c.cluster.etcd_endpoints.empty());
  const std::string port = c.cluster.listen_address.substr(c.cluster.listen_address.rfind(':') + 1);
  const YAML::Node ds = YAML::LoadFile(base + "daemonset.yaml");
  const YAML::Node container = ds["spec"]["template"]["spec"]["containers"][0];
  bool ucx_port = false;
  for (const YAML::Node& p : container["ports"]) {
    if (p["name"].as<std::string>() == "ucx")
      ucx_port = p["containerPort"].as<std::string>() == port;
  }
  EXPECT_TRUE(ucx_port) << "the DaemonSet's ucx port is not cluster.listen_address's " << port;
  std::set<std::string> env;
  for (const YAML::Node& e : container["env"]) env.insert(e["name"].as<std::string>());
  EXPECT_TRUE(env.contains(c.cluster.node_id.substr(1))) << c.cluster.node_id;
  EXPECT_TRUE(env.contains(c.cluster.advertise_host.substr(1))) << c.cluster.advertise_host;
}

}  // namespace
}  // namespace kvtier
