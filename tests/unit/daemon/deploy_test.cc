// Checks the operator-facing files in deploy/ against what the daemon really exports: every
// kvtier_* series a dashboard panel or alert rule names must exist, and promtool must accept the
// rules and the scrape configuration.
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <sstream>

#include "daemon/config.h"
#include "daemon/observability/daemon_metrics.h"
#include "daemon/observability/nvme_metrics.h"
#include "daemon/observability/store_metrics.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "yaml-cpp/yaml.h"

namespace kvtier {
namespace {

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// Series names a scrape of a daemon would show: each family, plus _bucket/_sum/_count for
// histograms.
std::set<std::string> ExportedSeries() {
  StoreOptions o;
  o.page_bytes = 4096;
  o.hbm.slots = 4;
  o.dram.slots = 4;
  o.hbm_backend = HbmBackend::kHostEmulated;
  auto store = *TieredStore::Create(o);
  metrics::Registry r;
  BindStoreMetrics(r, *store);
  DaemonMetrics daemon(r);
  NvmeIoMetrics nvme_io(r);
  const std::string dir = ::testing::TempDir() + "/kvtier-deploy-test-nvme";
  std::filesystem::remove_all(dir);
  NvmeTierOptions nvme_options;
  nvme_options.dirs = {dir};
  nvme_options.page_bytes = 4096;
  nvme_options.slots = 4;
  nvme_options.observer = &nvme_io;
  auto nvme = NvmeTier::Create(nvme_options);
  EXPECT_TRUE(nvme.ok()) << nvme.status();
  if (nvme.ok()) BindNvmeMetrics(r, **nvme);
  std::set<std::string> names;
  std::istringstream text(r.Serialize());
  for (std::string line; std::getline(text, line);) {
    std::smatch m;
    if (std::regex_match(line, m, std::regex("# TYPE (\\S+) (\\S+)"))) {
      names.insert(m[1]);
      if (m[2] == "histogram") {
        for (const char* suffix : {"_bucket", "_sum", "_count"}) names.insert(m[1].str() + suffix);
      }
    }
  }
  return names;
}

std::set<std::string> NamedSeries(const std::string& promql) {
  std::set<std::string> out;
  const std::regex name("kvtier_[a-zA-Z0-9_]+");
  for (auto it = std::sregex_iterator(promql.begin(), promql.end(), name);
       it != std::sregex_iterator(); ++it) {
    out.insert(it->str());
  }
  return out;
}

TEST(DeployTest, EveryDashboardPanelQueriesOnlyExportedMetrics) {
  const std::set<std::string> exported = ExportedSeries();
  ASSERT_GT(exported.size(), 20u);
  const nlohmann::json dash = nlohmann::json::parse(
      ReadFile(std::string(KVTIER_SOURCE_DIR) + "/deploy/grafana/kvtier-dashboard.json"));
  ASSERT_TRUE(dash.contains("panels"));
  int queries = 0;
  for (const auto& panel : dash["panels"]) {
    EXPECT_FALSE(panel.value("description", "").empty()) << panel["title"];
    for (const auto& target : panel["targets"]) {
      const std::string expr = target["expr"];
      const std::set<std::string> named = NamedSeries(expr);
      EXPECT_FALSE(named.empty()) << "panel '" << panel["title"] << "' names no kvtier metric";
      for (const std::string& series : named) {
        EXPECT_TRUE(exported.count(series))
            << "panel '" << panel["title"] << "' queries " << series << ", which is not exported";
      }
      ++queries;
    }
  }
  EXPECT_GE(queries, 19);
}

TEST(DeployTest, AlertRulesPassPromtoolAndNameExportedMetrics) {
  const std::string rules = std::string(KVTIER_SOURCE_DIR) + "/deploy/prometheus/alerts.yml";
  ASSERT_EQ(std::system(("promtool check rules " + rules + " > /dev/null").c_str()), 0);
  const std::string config = std::string(KVTIER_SOURCE_DIR) + "/deploy/prometheus/prometheus.yml";
  ASSERT_EQ(std::system(("promtool check config " + config + " > /dev/null").c_str()), 0);
  const std::set<std::string> exported = ExportedSeries();
  const std::set<std::string> named = NamedSeries(ReadFile(rules));
  EXPECT_GE(named.size(), 6u);
  for (const std::string& series : named) {
    EXPECT_TRUE(exported.count(series)) << "alert rule names " << series << ", not exported";
  }
}

TEST(DeployTest, KubernetesConfigMapIsAValidKvtierdConfig) {
  const YAML::Node cm =
      YAML::LoadFile(std::string(KVTIER_SOURCE_DIR) + "/deploy/kubernetes/base/configmap.yaml");
  ASSERT_EQ(cm["kind"].as<std::string>(), "ConfigMap");
  const std::string yaml = cm["data"]["kvtierd.yaml"].as<std::string>();
  DaemonConfig config;
  ASSERT_TRUE(ApplyConfigYaml(EmbeddedDefaultConfigYaml(), config).ok());
  absl::Status applied = ApplyConfigYaml(yaml, config);
  ASSERT_TRUE(applied.ok()) << applied;
  absl::Status valid = ValidateConfig(config);
  EXPECT_TRUE(valid.ok()) << valid;
  // The DaemonSet mounts the socket directory and scrapes this port.
  EXPECT_EQ(config.socket_path, "/run/kvtier/kvtierd.sock");
  EXPECT_EQ(config.http_address, "0.0.0.0:9400");
  EXPECT_EQ(config.store.page_bytes, 2u << 20);
  EXPECT_TRUE(config.nvme.enabled());
  const YAML::Node ds =
      YAML::LoadFile(std::string(KVTIER_SOURCE_DIR) + "/deploy/kubernetes/base/daemonset.yaml");
  const YAML::Node container = ds["spec"]["template"]["spec"]["containers"][0];
  EXPECT_EQ(container["ports"][0]["containerPort"].as<int>(), 9400);
  // The probes go over the node-local socket: whoever reaches port 9400 (which answers the
  // whole pod network) must not be able to fail them and get kvtierd restarted.
  for (const char* probe : {"livenessProbe", "readinessProbe"}) {
    EXPECT_FALSE(container[probe]["httpGet"]) << probe << " uses the network-reachable port";
    const YAML::Node command = container[probe]["exec"]["command"];
    ASSERT_TRUE(command && command.IsSequence()) << probe;
    EXPECT_EQ(command[0].as<std::string>(), "kvtierctl") << probe;
    EXPECT_EQ(command[command.size() - 1].as<std::string>(), config.socket_path) << probe;
  }
  // And only the monitoring namespace may reach the HTTP port at all.
  const YAML::Node policy =
      YAML::LoadFile(std::string(KVTIER_SOURCE_DIR) + "/deploy/kubernetes/base/networkpolicy.yaml");
  EXPECT_EQ(policy["kind"].as<std::string>(), "NetworkPolicy");
  EXPECT_EQ(
      policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"].as<std::string>(),
      "kvtierd");
  ASSERT_EQ(policy["spec"]["ingress"].size(), 1u);
  EXPECT_EQ(policy["spec"]["ingress"][0]["ports"][0]["port"].as<int>(), 9400);
  EXPECT_TRUE(policy["spec"]["ingress"][0]["from"][0]["namespaceSelector"]);
  const std::string kustomization =
      ReadFile(std::string(KVTIER_SOURCE_DIR) + "/deploy/kubernetes/base/kustomization.yaml");
  EXPECT_NE(kustomization.find("networkpolicy.yaml"), std::string::npos);
}

TEST(DeployTest, PrometheusRuleCarriesTheSameAlertsAsAlertsYml) {
  const YAML::Node plain =
      YAML::LoadFile(std::string(KVTIER_SOURCE_DIR) + "/deploy/prometheus/alerts.yml");
  const YAML::Node rule =
      YAML::LoadFile(std::string(KVTIER_SOURCE_DIR) +
                     "/deploy/kubernetes/prometheus-operator/prometheusrule.yaml");
  auto alerts = [](const YAML::Node& groups) {
    std::map<std::string, std::string> out;
    for (const auto& g : groups) {
      for (const auto& r : g["rules"])
        out[r["alert"].as<std::string>()] = r["expr"].as<std::string>();
    }
    return out;
  };
  const auto a = alerts(plain["groups"]);
  EXPECT_GE(a.size(), 6u);
  EXPECT_EQ(a, alerts(rule["spec"]["groups"]));
}

}  // namespace
}  // namespace kvtier
