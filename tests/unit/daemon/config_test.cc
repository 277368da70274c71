// kvtierd's config: what --print_config writes reads back to the same config, field for field,
// and every error names the key it is about. The schema's own key list (ConfigSchemaKeys) drives
// the per-key tests, so a key added to the table is covered without being listed here (a checked
// key must be given a bad value below, or the test says which one lacks it).
#include "daemon/config.h"

#include <map>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "gtest/gtest.h"
#include "kernels/copy_batch.h"
#include "tiering/policy/planner.h"
#include "tiering/tiered_store.h"

namespace kvtier {
namespace {

DaemonConfig Parse(const std::string& yaml) {
  DaemonConfig c;
  absl::Status s = ApplyConfigYaml(yaml, c);
  EXPECT_TRUE(s.ok()) << s << "\n" << yaml;
  return c;
}

// print -> read gives an equal config, and printing that gives the same text.
void ExpectRoundTrip(const DaemonConfig& c) {
  const std::string printed = ConfigToYaml(c);
  DaemonConfig again = Parse(printed);
  EXPECT_TRUE(again == c) << printed;
  EXPECT_EQ(ConfigToYaml(again), printed);
}

TEST(Config, EmbeddedDefaultRoundTrips) {
  DaemonConfig c = Parse(std::string(EmbeddedDefaultConfigYaml()));
  ASSERT_TRUE(ValidateConfig(c).ok());
  ExpectRoundTrip(c);
}

TEST(Config, EverySectionRoundTrips) {
  // Each section set away from its defaults, so a printer that drops a key fails here.
  DaemonConfig c = Parse(R"(
data_dir: /tmp/kvtier config
socket_path: "/tmp/kv.sock "
socket_mode: 0660
http_address: 127.0.0.1:0
admin_uids: [0, 1000]
store:
  page_bytes: 131072
  hbm_pages: 64
  dram_pages: 128
  hbm_backend: host-emulated
  sink_tokens: 8
  tokens_per_page: 32
  maintain_interval_ms: 50
  policy: lru
  max_migration_bytes_per_s: 1234567891.25
nvme:
  directories: [/tmp/a, "/tmp/b c"]
  capacity_bytes: 1048576
gpu:
  sm_budget: 8
  device_to_device_sm_budget: 32
limits:
  max_connections: 17
  max_registered_bytes: 1048576
  max_pinned_pages_per_uid: 99
namespaces:
  - name: "tenant-a/*"
    uids: [1000]
    gids: [100, 101]
    sink_slots: 4
    layout: {layers: 2, kv_heads: 2, head_dim: 128, dtype: 0, tokens_per_page: 64, tensor_layout: 0}
  - name: " spaced "
    sink_slots: 0
cluster:
  enabled: false
  node_id: node-7
  etcd_endpoints: [http://127.0.0.1:2379]
  namespaces: ["tenant-a/*"]
  landing_pages: 3
)");
  ASSERT_EQ(c.admin_uids.size(), 2u);
  ASSERT_TRUE(c.namespaces[0].layout.has_value());
  EXPECT_EQ(c.socket_path, "/tmp/kv.sock ");
  EXPECT_EQ(c.namespaces[1].name, " spaced ");
  ExpectRoundTrip(c);
  // Each of these was dropped or changed by --print_config before it was compared field for
  // field: admin_uids, namespace layouts, a disabled cluster's settings, trailing blanks.
  const std::string printed = ConfigToYaml(c);
  EXPECT_NE(printed.find("admin_uids"), std::string::npos);
  EXPECT_NE(printed.find("layout"), std::string::npos);
  EXPECT_NE(printed.find("node-7"), std::string::npos);
}

TEST(Config, StringsAreUtf8WithoutControlCharacters) {
  // The config fuzzer's finds: "kv \r" (yaml-cpp kept the blank and the CR, printed them plain,
  // then read back neither) and a 0x95 byte (printed back as U+FFFD). Both are refused now.
  DaemonConfig c;
  absl::Status s = ApplyConfigYaml("socket_path: /run/kvtier/kv \r", c);
  EXPECT_FALSE(s.ok());
  EXPECT_NE(std::string(s.message()).find("socket_path: control character 0x0d"), std::string::npos)
      << s;
  s = ApplyConfigYaml("data_dir: /var/\x95n\n", c);
  EXPECT_FALSE(s.ok());
  EXPECT_NE(std::string(s.message()).find("data_dir: not UTF-8"), std::string::npos) << s;
  s = ApplyConfigYaml("nvme:\n  directories: [/ok, \"/bad\\x01\"]\n", c);
  EXPECT_FALSE(s.ok());
  EXPECT_NE(std::string(s.message()).find("nvme.directories[1]"), std::string::npos) << s;
  // UTF-8 paths are fine, and round-trip.
  ExpectRoundTrip(Parse("data_dir: /var/lib/café/kvtier\n"));
}

TEST(Config, ErrorsNameTheirKey) {
  struct Case {
    const char* yaml;
    const char* key;
  };
  const Case cases[] = {
      {"store:\n  page_bytes: lots\n", "store.page_bytes"},
      {"store:\n  no_such_key: 1\n", "store.no_such_key"},
      {"limits:\n  max_connections: -1\n", "limits.max_connections"},
      {"namespaces:\n  - name: a\n    layout: {dtype: 256}\n", "namespaces[0].layout.dtype"},
      {"namespaces: {a: 1}\n", "namespaces"},
      {"socket_mode: 9999\n", "socket_mode"},
  };
  for (const Case& k : cases) {
    DaemonConfig c;
    absl::Status s = ApplyConfigYaml(k.yaml, c);
    ASSERT_FALSE(s.ok()) << k.yaml;
    EXPECT_NE(std::string(s.message()).find(k.key), std::string::npos)
        << "error \"" << s.message() << "\" does not name " << k.key;
  }
  DaemonConfig c = Parse("store:\n  hbm_pages: 0\n  dram_pages: 0\n");
  absl::Status s = ValidateConfig(c);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(std::string(s.message()).find("store.dram_pages"), std::string::npos) << s;
}

// YAML that sets one key, in flow style: "store.page_bytes" -> "store: {page_bytes: V}". A list
// element ("namespaces[0].x") is the only element of the list, with a name unless x is the name.
std::string Setting(absl::string_view path, absl::string_view value) {
  const size_t dot = path.find('.');
  if (dot == absl::string_view::npos) return absl::StrCat(path, ": ", value);
  absl::string_view head = path.substr(0, dot);
  const std::string rest = Setting(path.substr(dot + 1), value);
  if (absl::ConsumeSuffix(&head, "[0]")) {
    EXPECT_EQ(head, "namespaces") << "a list this test does not know how to fill";
    const bool named = absl::StartsWith(rest, "name:");
    return absl::StrCat(head, ": [{", named ? "" : "name: \"*\", ", rest, "}]");
  }
  return absl::StrCat(head, ": {", rest, "}");
}

bool IsLeaf(const ConfigKey& k) {
  return k.kind != ConfigKey::Kind::kMap && k.kind != ConfigKey::Kind::kList;
}

// Two different values of each kind (neither need pass validation: reading and printing don't
// validate). Strings carry edge blanks and a non-ASCII letter, which printing must quote.
std::pair<std::string, std::string> TwoValues(ConfigKey::Kind kind) {
  switch (kind) {
    case ConfigKey::Kind::kBool:
      return {"true", "false"};
    case ConfigKey::Kind::kInteger:
      return {"7", "9"};
    case ConfigKey::Kind::kNumber:
      return {"1234.5", "0.25"};
    case ConfigKey::Kind::kText:
      return {"\" kv café \"", "b"};
    case ConfigKey::Kind::kTextList:
      return {"[a, \" b \"]", "[]"};
    case ConfigKey::Kind::kIdList:
      return {"[3, 1000]", "[5]"};
    case ConfigKey::Kind::kOctalMode:
      return {"0751", "0640"};
    case ConfigKey::Kind::kEnum:
      return {"3", "1"};
    case ConfigKey::Kind::kMap:
    case ConfigKey::Kind::kList:
      break;
  }
  ADD_FAILURE() << "no values for a section";
  return {};
}

TEST(ConfigSchema, ListsEveryKeyOnce) {
  const std::vector<ConfigKey> keys = ConfigSchemaKeys();
  std::map<std::string, int> seen;
  for (const ConfigKey& k : keys) ++seen[k.path];
  for (const auto& [path, n] : seen) EXPECT_EQ(n, 1) << path;
  // A sample of what the table must hold, at every depth.
  for (const char* path :
       {"data_dir", "socket_mode", "admin_uids", "store", "store.page_bytes",
        "limits.max_pinned_pages_per_uid", "namespaces", "namespaces[0].layout",
        "namespaces[0].layout.tensor_layout", "cluster.max_migration_bytes_per_s"}) {
    EXPECT_EQ(seen.count(path), 1u) << path;
  }
}

TEST(ConfigSchema, EveryKeyRoundTrips) {
  for (const ConfigKey& k : ConfigSchemaKeys()) {
    if (!IsLeaf(k)) continue;
    SCOPED_TRACE(k.path);
    const auto [v1, v2] = TwoValues(k.kind);
    const DaemonConfig one = Parse(Setting(k.path, v1));
    const DaemonConfig two = Parse(Setting(k.path, v2));
    // The key reaches the struct (two values, two configs) and survives print -> read.
    EXPECT_FALSE(one == two) << Setting(k.path, v1) << " reads as " << Setting(k.path, v2);
    ExpectRoundTrip(one);
    ExpectRoundTrip(two);
  }
}

TEST(ConfigSchema, EveryKeyRefusesAValueOfAnotherTypeNamingItself) {
  for (const ConfigKey& k : ConfigSchemaKeys()) {
    // A map where a scalar or a list is due; a scalar where a map is due.
    const bool map = k.kind == ConfigKey::Kind::kMap;
    const std::string yaml = Setting(k.path, map ? "5" : "{a: 1}");
    DaemonConfig c;
    absl::Status s = ApplyConfigYaml(yaml, c);
    ASSERT_FALSE(s.ok()) << yaml;
    EXPECT_TRUE(absl::StartsWith(s.message(), k.path + ": ")) << yaml << "\n" << s;
  }
}

TEST(ConfigSchema, UnknownKeysAreRefusedWithTheirName) {
  std::vector<std::string> maps = {""};
  for (const ConfigKey& k : ConfigSchemaKeys()) {
    if (k.kind == ConfigKey::Kind::kMap) maps.push_back(k.path + ".");
    if (k.kind == ConfigKey::Kind::kList) maps.push_back(k.path + "[0].");
  }
  for (const std::string& prefix : maps) {
    const std::string key = prefix + "no_such_key";
    DaemonConfig c;
    absl::Status s = ApplyConfigYaml(Setting(key, "1"), c);
    ASSERT_FALSE(s.ok()) << key;
    EXPECT_EQ(s.message(), key + ": unknown key");
  }
}

// A config every rule passes, with the conditional sections on (the cluster is checked only when
// enabled, nvme.capacity_bytes only with directories).
constexpr char kValidBase[] = R"(
namespaces: [{name: "*"}]
nvme: {directories: [/tmp/kvtier-nvme], capacity_bytes: 1048576}
cluster: {enabled: true, etcd_endpoints: ["http://127.0.0.1:2379"]}
)";

TEST(ConfigSchema, EveryCheckedKeyNamesItselfInItsError) {
  // One value each rule refuses, over kValidBase.
  const std::map<std::string, std::string> bad = {
      {"data_dir", "\"\""},
      {"socket_path", std::string(120, 's')},
      {"socket_mode", "01000"},
      {"http_address", "localhost"},
      {"store.page_bytes", "0"},
      {"store.dram_pages", "0"},
      {"store.hbm_backend", "gpu"},
      {"store.hbm_devices", "[0, -1]"},
      {"store.tokens_per_page", "0"},
      {"store.maintain_interval_ms", "0"},
      {"store.policy", "fifo"},
      {"store.max_migration_bytes_per_s", "0"},
      {"nvme.directories", "[]"},
      {"nvme.capacity_bytes", "4096"},
      {"gpu.sm_budget", "-1"},
      {"gpu.device_to_device_sm_budget", "1025"},
      {"limits.max_message_bytes", "1024"},
      {"limits.max_batch_pages", "0"},
      {"limits.max_inflight_ops", "0"},
      {"limits.max_buffers", "0"},
      {"limits.max_consecutive_errors", "0"},
      {"limits.io_threads", "257"},
      {"limits.max_connections", "0"},
      {"limits.max_namespaces", "0"},
      {"limits.max_connections_per_uid", "100000"},
      {"limits.hello_timeout_ms", "0"},
      {"limits.max_output_bytes", "100"},
      {"limits.max_namespaces_per_uid", "0"},
      {"namespaces", "[]"},
      {"namespaces[0].name", "\"a*b\""},
      {"namespaces[0].sink_slots", "100000"},
      {"namespaces[0].layout", "{layers: 0}"},
      {"cluster.node_id", std::string(129, 'n')},
      {"cluster.etcd_endpoints", "[\"127.0.0.1:2379\"]"},
      {"cluster.etcd_prefix", "/kvtier"},
      {"cluster.lease_ttl_s", "1"},
      {"cluster.listen_address", "nocolon"},
      {"cluster.namespaces", "[]"},
      {"cluster.request_timeout_ms", "0"},
      {"cluster.transfer_timeout_ms", "0"},
      {"cluster.landing_pages", "0"},
      {"cluster.staging_pages", "4097"},
      {"cluster.fetch_lease_ms", "10"},
      {"cluster.max_migration_bytes_per_s", "0"},
      {"cluster.busy_poll_us", "20000"},
      {"cluster.push_below_free_fraction", "1.5"},
      {"cluster.max_push_bytes_per_s", "0"},
  };
  {
    DaemonConfig base = Parse(kValidBase);
    ASSERT_TRUE(ValidateConfig(base).ok()) << ValidateConfig(base);
  }
  size_t checked = 0;
  for (const ConfigKey& k : ConfigSchemaKeys()) {
    if (!k.checked) continue;
    ++checked;
    auto it = bad.find(k.path);
    if (it == bad.end()) {
      ADD_FAILURE() << k.path << " has a rule but no bad value in this test";
      continue;
    }
    DaemonConfig c = Parse(kValidBase);
    const std::string yaml = Setting(k.path, it->second);
    ASSERT_TRUE(ApplyConfigYaml(yaml, c).ok()) << yaml;
    absl::Status s = ValidateConfig(c);
    ASSERT_FALSE(s.ok()) << yaml;
    EXPECT_TRUE(absl::StartsWith(s.message(), k.path + ": ")) << yaml << "\n" << s;
  }
  EXPECT_EQ(checked, bad.size()) << "a bad value for a key the schema does not check";
}

TEST(Config, HbmDevicesMakeOnePoolEachOfHbmPages) {
  DaemonConfig c =
      Parse("store: {hbm_pages: 100, hbm_devices: [0, 1, 3]}\nnamespaces: [{name: \"*\"}]\n");
  EXPECT_TRUE(ValidateConfig(c).ok()) << ValidateConfig(c);
  EXPECT_EQ(c.store.hbm_slots(), 300u);
  EXPECT_EQ(Parse("store: {hbm_pages: 100}\n").store.hbm_slots(), 100u);
  // The tier's slot count must fit 32 bits, and a typo must not ask for a thousand pools.
  for (const char* yaml : {"store: {hbm_pages: 3000000000, hbm_devices: [0, 1]}\n",
                           "store: {hbm_devices: [0, 1024]}\n"}) {
    c = Parse(yaml);
    absl::Status s = ValidateConfig(c);
    ASSERT_FALSE(s.ok()) << yaml;
    EXPECT_TRUE(absl::StartsWith(s.message(), "store.hbm_devices: ")) << s;
  }
  std::string many = "store: {hbm_devices: [";
  for (int i = 0; i < 65; ++i) absl::StrAppend(&many, i == 0 ? "" : ", ", i % 8);
  c = Parse(many + "]}\n");
  EXPECT_NE(ValidateConfig(c).message().find("at most 64"), std::string::npos);
}

TEST(ConfigSchema, EmbeddedDefaultAddsOnlyANamespaceRule) {
  // Every other default lives in the structs (and, for options handed to a module, in that
  // module's options struct), so the embedded YAML restates none of them.
  DaemonConfig c = Parse(std::string(EmbeddedDefaultConfigYaml()));
  ASSERT_EQ(c.namespaces.size(), 1u);
  EXPECT_TRUE(c.namespaces[0] == NamespaceRule{.name = "*"});
  c.namespaces.clear();
  EXPECT_TRUE(c == DaemonConfig{}) << ConfigToYaml(c);
}

TEST(ConfigSchema, DefaultsAreTheOwningModulesDefaults) {
  const DaemonConfig c;
  EXPECT_EQ(c.store.sink_tokens, StoreOptions{}.sink_tokens);
  EXPECT_EQ(c.store.tokens_per_page, StoreOptions{}.tokens_per_page);
  EXPECT_EQ(c.store.hbm_backend, HbmBackendName(StoreOptions{}.hbm_backend));
  EXPECT_EQ(c.store.max_migration_bytes_per_s, PlannerOptions{}.max_migration_bytes_per_s);
  EXPECT_EQ(c.gpu.sm_budget, kernels::kDefaultGpuCopySmBudget);
}

}  // namespace
}  // namespace kvtier
