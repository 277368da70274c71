// kvtierd's config: what --print_config writes reads back to the same config, field for field,
// and every error names the key it is about.
#include "daemon/config.h"

#include <string>

#include "gtest/gtest.h"

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

}  // namespace
}  // namespace kvtier
