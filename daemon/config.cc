#include "daemon/config.h"

#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <functional>
#include <limits>
#include <type_traits>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "tiering/policy/policy_factory.h"
#include "yaml-cpp/yaml.h"

namespace kvtier {
namespace {

constexpr char kDefaultYaml[] =
    R"(# kvtierd embedded default: a non-root user, no GPU, run from any directory.
data_dir: kvtier-data
socket_path: kvtier-data/kvtierd.sock
socket_mode: 0600
store:
  page_bytes: 65536
  hbm_pages: 256
  dram_pages: 1024
  hbm_backend: auto
namespaces:
  - name: "*"
    sink_slots: 16
)";

// Config strings are names, paths and addresses: printable UTF-8. A control character or a
// broken byte sequence there is a mistake (and could not be printed back by --print_config).
absl::Status CheckText(const std::string& key, const std::string& s) {
  for (size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x20 || c == 0x7f) {
      return absl::InvalidArgumentError(absl::StrCat(
          key, ": control character 0x", absl::Hex(c, absl::kZeroPad2), " at byte ", i));
    }
    // UTF-8: the lead byte gives the sequence length; continuation bytes are 10xxxxxx, and the
    // shortest form and the Unicode range are checked through the lead byte's bounds.
    size_t n = c < 0x80                 ? 1
               : c >= 0xc2 && c <= 0xdf ? 2
               : c >= 0xe0 && c <= 0xef ? 3
               : c >= 0xf0 && c <= 0xf4 ? 4
                                        : 0;
    bool ok = n != 0 && i + n <= s.size();
    for (size_t k = 1; ok && k < n; ++k) ok = (static_cast<unsigned char>(s[i + k]) & 0xc0) == 0x80;
    if (ok && n >= 3) {
      const auto c1 = static_cast<unsigned char>(s[i + 1]);
      ok = !(c == 0xe0 && c1 < 0xa0) && !(c == 0xed && c1 > 0x9f) && !(c == 0xf0 && c1 < 0x90) &&
           !(c == 0xf4 && c1 > 0x8f);
    }
    if (!ok) return absl::InvalidArgumentError(absl::StrCat(key, ": not UTF-8 at byte ", i));
    i += n;
  }
  return absl::OkStatus();
}

template <typename T>
absl::Status Read(const YAML::Node& node, const std::string& key, T& out) {
  // yaml-cpp reads an empty value ("data_dir:") as the string "null"; read it as empty, so the
  // checks that a value is given see it.
  if constexpr (std::is_same_v<T, std::string>) {
    if (node.IsNull()) {
      out.clear();
      return absl::OkStatus();
    }
  }
  try {
    out = node.as<T>();
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(key, ": ", e.what()));
  }
  if constexpr (std::is_same_v<T, std::string>) return CheckText(key, out);
  if constexpr (std::is_same_v<T, std::vector<std::string>>) {
    for (size_t i = 0; i < out.size(); ++i) {
      if (absl::Status s = CheckText(absl::StrCat(key, "[", i, "]"), out[i]); !s.ok()) return s;
    }
  }
  return absl::OkStatus();
}

// Visits every key of a map, failing on keys the callback does not know.
template <typename Fn>
absl::Status ForEachKey(const YAML::Node& map, const std::string& path, Fn fn) {
  if (!map.IsMap()) return absl::InvalidArgumentError(absl::StrCat(path, ": expected a map"));
  std::vector<std::string> seen;  // a handful of keys per map
  for (const auto& kv : map) {
    // A key that is itself a list or map ("[1]: 2") has no string form: as<> would throw.
    if (!kv.first.IsScalar()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path.empty() ? "config" : path, ": a key must be a plain name"));
    }
    const std::string key = kv.first.as<std::string>();
    const std::string full = path.empty() ? key : absl::StrCat(path, ".", key);
    // YAML says keys are unique; yaml-cpp keeps both and the last would silently win.
    if (std::find(seen.begin(), seen.end(), key) != seen.end()) {
      return absl::InvalidArgumentError(absl::StrCat(full, ": duplicate key"));
    }
    seen.push_back(key);
    absl::StatusOr<bool> known = fn(key, kv.second, full);
    if (!known.ok()) return known.status();
    if (!*known) return absl::InvalidArgumentError(absl::StrCat(full, ": unknown key"));
  }
  return absl::OkStatus();
}

absl::Status ReadMode(const YAML::Node& node, const std::string& key, uint32_t& out) {
  // Modes are written in octal (0600); YAML 1.2 reads "0600" as decimal 600, so parse by hand.
  std::string text;
  if (absl::Status s = Read(node, key, text); !s.ok()) return s;
  try {
    size_t used = 0;
    out = static_cast<uint32_t>(std::stoul(text, &used, 8));
    if (used != text.size()) throw std::invalid_argument("trailing");
  } catch (const std::exception&) {
    return absl::InvalidArgumentError(absl::StrCat(key, ": '", text, "' is not an octal mode"));
  }
  return absl::OkStatus();
}

// Binds the keys of one YAML map to fields: each value is read with its field's type, and a key
// nobody bound is an error that names it. Every section of the config is one FieldMap.
class FieldMap {
 public:
  using Reader = std::function<absl::Status(const YAML::Node&, const std::string&)>;

  template <typename T>
  FieldMap& Add(const char* key, T& field) {
    return AddReader(key, [&field](const YAML::Node& v, const std::string& full) {
      return Read(v, full, field);
    });
  }
  FieldMap& AddReader(const char* key, Reader reader) {
    readers_.emplace_back(key, std::move(reader));
    return *this;
  }
  absl::Status Apply(const YAML::Node& map, const std::string& path) const {
    return ForEachKey(map, path,
                      [&](const std::string& k, const YAML::Node& v,
                          const std::string& full) -> absl::StatusOr<bool> {
                        for (const auto& [key, reader] : readers_) {
                          if (k != key) continue;
                          if (absl::Status s = reader(v, full); !s.ok()) return s;
                          return true;
                        }
                        return false;
                      });
  }

 private:
  std::vector<std::pair<std::string, Reader>> readers_;
};

// A field stored as an enum, written in the config as its number.
template <typename Enum>
FieldMap::Reader EnumReader(Enum& field) {
  return [&field](const YAML::Node& v, const std::string& full) {
    uint32_t x = 0;
    if (absl::Status s = Read(v, full, x); !s.ok()) return s;
    // Checked before the cast: 256 must not become 0 of a one-byte enum.
    if (x > std::numeric_limits<std::underlying_type_t<Enum>>::max()) {
      return absl::InvalidArgumentError(absl::StrCat(full, ": ", x, " is not a valid value"));
    }
    field = static_cast<Enum>(x);
    return absl::OkStatus();
  };
}

absl::Status ReadLayout(const YAML::Node& node, const std::string& path, LayoutSpec& out) {
  return FieldMap()
      .Add("layers", out.layers)
      .Add("kv_heads", out.kv_heads)
      .Add("head_dim", out.head_dim)
      .AddReader("dtype", EnumReader(out.dtype))
      .Add("tokens_per_page", out.tokens_per_page)
      .AddReader("tensor_layout", EnumReader(out.tensor_layout))
      .Apply(node, path);
}

absl::Status ReadNamespaces(const YAML::Node& v, const std::string& full,
                            std::vector<NamespaceRule>& out) {
  if (!v.IsSequence()) return absl::InvalidArgumentError(absl::StrCat(full, ": expected a list"));
  out.clear();
  for (size_t i = 0; i < v.size(); ++i) {
    NamespaceRule rule;
    absl::Status s = FieldMap()
                         .Add("name", rule.name)
                         .Add("uids", rule.uids)
                         .Add("gids", rule.gids)
                         .Add("sink_slots", rule.sink_slots)
                         .AddReader("layout",
                                    [&rule](const YAML::Node& lv, const std::string& lf) {
                                      LayoutSpec spec;
                                      absl::Status r = ReadLayout(lv, lf, spec);
                                      rule.layout = spec;
                                      return r;
                                    })
                         .Apply(v[i], absl::StrCat(full, "[", i, "]"));
    if (!s.ok()) return s;
    out.push_back(std::move(rule));
  }
  return absl::OkStatus();
}

absl::Status ValidateClusterConfig(const ClusterConfig& c) {
  auto bad = [](absl::string_view key, auto... why) {
    return absl::InvalidArgumentError(absl::StrCat("cluster.", key, ": ", why...));
  };
  if (!c.enabled) return absl::OkStatus();
  if (c.etcd_endpoints.empty()) return bad("etcd_endpoints", "required when cluster.enabled");
  for (const std::string& e : c.etcd_endpoints) {
    if (!absl::StartsWith(e, "http://") && !absl::StartsWith(e, "https://")) {
      return bad("etcd_endpoints", "'", e, "' is not http://host:port");
    }
  }
  if (c.etcd_prefix.empty() || c.etcd_prefix.back() != '/') {
    return bad("etcd_prefix", "'", c.etcd_prefix, "' must end in '/'");
  }
  if (c.lease_ttl_s < 2 || c.lease_ttl_s > 3600) {
    return bad("lease_ttl_s", c.lease_ttl_s, " is outside [2, 3600]");
  }
  if (c.listen_address.rfind(':') == std::string::npos) {
    return bad("listen_address", "'", c.listen_address, "' is not host:port");
  }
  if (c.node_id.size() > 128) return bad("node_id", "longer than 128 bytes");
  if (c.namespaces.empty()) return bad("namespaces", "empty: the node would serve nothing");
  if (c.request_timeout_ms == 0) return bad("request_timeout_ms", "must be > 0");
  if (c.transfer_timeout_ms == 0) return bad("transfer_timeout_ms", "must be > 0");
  if (c.landing_pages == 0 || c.landing_pages > 4096) {
    return bad("landing_pages", c.landing_pages, " is outside [1, 4096]");
  }
  if (c.busy_poll_us > 10'000) return bad("busy_poll_us", c.busy_poll_us, " is above 10000");
  if (!(c.push_below_free_fraction >= 0 && c.push_below_free_fraction < 1)) {
    return bad("push_below_free_fraction", c.push_below_free_fraction, " is outside [0, 1)");
  }
  if (!(c.max_push_bytes_per_s > 0)) {
    return bad("max_push_bytes_per_s", c.max_push_bytes_per_s, " must be > 0");
  }
  if (c.staging_pages == 0 || c.staging_pages > 4096) {
    return bad("staging_pages", c.staging_pages, " is outside [1, 4096]");
  }
  if (c.fetch_lease_ms < c.transfer_timeout_ms) {
    return bad("fetch_lease_ms", c.fetch_lease_ms, " is shorter than transfer_timeout_ms (",
               c.transfer_timeout_ms, "): a slow read would lose its page");
  }
  if (!(c.max_migration_bytes_per_s > 0)) return bad("max_migration_bytes_per_s", "must be > 0");
  return absl::OkStatus();
}

}  // namespace

absl::string_view EmbeddedDefaultConfigYaml() { return kDefaultYaml; }

// The memory pools are allocated whole at start: a size the machine cannot hold would fault
// memory in until the host runs out, so it is refused up front (host-emulated HBM is host memory
// too).
absl::Status CheckPoolsFitTheMachine(const StoreConfig& s) {
  const long pages = ::sysconf(_SC_PHYS_PAGES);
  const long page_size = ::sysconf(_SC_PAGESIZE);
  if (pages <= 0 || page_size <= 0) return absl::OkStatus();  // unknown: nothing to bound by
  const unsigned __int128 machine = static_cast<unsigned __int128>(pages) * page_size;
  unsigned __int128 host = static_cast<unsigned __int128>(s.page_bytes) * s.dram_pages;
  const bool host_hbm = s.hbm_backend == "host-emulated";
  if (host_hbm) host += static_cast<unsigned __int128>(s.page_bytes) * s.hbm_pages;
  if (host <= machine) return absl::OkStatus();
  const auto gib = [](unsigned __int128 b) {
    return absl::StrCat(static_cast<uint64_t>(b >> 30), " GiB");
  };
  return absl::InvalidArgumentError(absl::StrCat(
      "store.page_bytes: ", s.page_bytes, " bytes x store.dram_pages ", s.dram_pages,
      host_hbm ? absl::StrCat(" (+ store.hbm_pages ", s.hbm_pages, ", host-emulated)") : "",
      " make ", gib(host), " of host memory pools, more than this machine's ", gib(machine)));
}

absl::Status ApplyConfigYaml(absl::string_view yaml, DaemonConfig& c) {
  YAML::Node root;
  try {
    root = YAML::Load(std::string(yaml));
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("config: ", e.what()));
  }
  if (root.IsNull()) return absl::OkStatus();
  FieldMap store;
  store.Add("page_bytes", c.store.page_bytes)
      .Add("hbm_pages", c.store.hbm_pages)
      .Add("dram_pages", c.store.dram_pages)
      .Add("hbm_backend", c.store.hbm_backend)
      .Add("sink_tokens", c.store.sink_tokens)
      .Add("tokens_per_page", c.store.tokens_per_page)
      .Add("maintain_interval_ms", c.store.maintain_interval_ms)
      .Add("policy", c.store.policy)
      .Add("max_migration_bytes_per_s", c.store.max_migration_bytes_per_s);
  FieldMap nvme;
  nvme.Add("directories", c.nvme.directories).Add("capacity_bytes", c.nvme.capacity_bytes);
  FieldMap gpu;
  gpu.Add("sm_budget", c.gpu.sm_budget)
      .Add("device_to_device_sm_budget", c.gpu.device_to_device_sm_budget);
  LimitsConfig& l = c.limits;
  FieldMap limits;
  limits.Add("max_message_bytes", l.max_message_bytes)
      .Add("max_batch_pages", l.max_batch_pages)
      .Add("max_inflight_ops", l.max_inflight_ops)
      .Add("max_pinned_pages", l.max_pinned_pages)
      .Add("max_buffers", l.max_buffers)
      .Add("max_consecutive_errors", l.max_consecutive_errors)
      .Add("io_threads", l.io_threads)
      .Add("max_connections", l.max_connections)
      .Add("max_namespaces", l.max_namespaces)
      .Add("max_connections_per_uid", l.max_connections_per_uid)
      .Add("hello_timeout_ms", l.hello_timeout_ms)
      .Add("max_output_bytes", l.max_output_bytes)
      .Add("max_registered_bytes_per_session", l.max_registered_bytes_per_session)
      .Add("max_registered_bytes", l.max_registered_bytes)
      .Add("max_namespaces_per_uid", l.max_namespaces_per_uid)
      .Add("max_pinned_pages_per_uid", l.max_pinned_pages_per_uid);
  ClusterConfig& cl = c.cluster;
  FieldMap cluster;
  cluster.Add("enabled", cl.enabled)
      .Add("node_id", cl.node_id)
      .Add("etcd_endpoints", cl.etcd_endpoints)
      .Add("etcd_prefix", cl.etcd_prefix)
      .Add("lease_ttl_s", cl.lease_ttl_s)
      .Add("listen_address", cl.listen_address)
      .Add("advertise_host", cl.advertise_host)
      .Add("ucx_tls", cl.ucx_tls)
      .Add("ucx_net_devices", cl.ucx_net_devices)
      .Add("namespaces", cl.namespaces)
      .Add("request_timeout_ms", cl.request_timeout_ms)
      .Add("transfer_timeout_ms", cl.transfer_timeout_ms)
      .Add("landing_pages", cl.landing_pages)
      .Add("staging_pages", cl.staging_pages)
      .Add("fetch_lease_ms", cl.fetch_lease_ms)
      .Add("replicate_after_remote_reads", cl.replicate_after_remote_reads)
      .Add("max_migration_bytes_per_s", cl.max_migration_bytes_per_s)
      .Add("busy_poll_us", cl.busy_poll_us)
      .Add("push_below_free_fraction", cl.push_below_free_fraction)
      .Add("max_push_bytes_per_s", cl.max_push_bytes_per_s)
      .Add("secret_file", cl.secret_file);
  auto section = [](const FieldMap& fields) {
    return
        [&fields](const YAML::Node& v, const std::string& full) { return fields.Apply(v, full); };
  };
  return FieldMap()
      .Add("data_dir", c.data_dir)
      .Add("socket_path", c.socket_path)
      .AddReader("socket_mode",
                 [&c](const YAML::Node& v, const std::string& full) {
                   return ReadMode(v, full, c.socket_mode);
                 })
      .Add("http_address", c.http_address)
      .Add("admin_uids", c.admin_uids)
      .AddReader("store", section(store))
      .AddReader("nvme", section(nvme))
      .AddReader("gpu", section(gpu))
      .AddReader("limits", section(limits))
      .AddReader("cluster", section(cluster))
      .AddReader("namespaces",
                 [&c](const YAML::Node& v, const std::string& full) {
                   return ReadNamespaces(v, full, c.namespaces);
                 })
      .Apply(root, "");
}

absl::Status ValidateConfig(const DaemonConfig& c) {
  auto bad = [](absl::string_view key, auto... why) {
    return absl::InvalidArgumentError(absl::StrCat(key, ": ", why...));
  };
  if (c.data_dir.empty()) return bad("data_dir", "must not be empty");
  if (c.socket_path.empty()) return bad("socket_path", "must not be empty");
  if (c.socket_path.size() >= sizeof(sockaddr_un{}.sun_path)) {
    return bad("socket_path", "'", c.socket_path, "' is ", c.socket_path.size(), " bytes, at most ",
               sizeof(sockaddr_un{}.sun_path) - 1);
  }
  if (c.socket_mode > 0777) return bad("socket_mode", "must be a permission mode <= 0777");
  if (!c.http_address.empty() && c.http_address.rfind(':') == std::string::npos) {
    return bad("http_address", "'", c.http_address, "' is not host:port (empty disables it)");
  }
  if (c.store.page_bytes == 0) return bad("store.page_bytes", "must be > 0");
  // A page is one token block of one sequence: even a 405B model's 128-token page is ~64 MiB.
  if (c.store.page_bytes > (uint64_t{1} << 30)) {
    return bad("store.page_bytes", c.store.page_bytes, " is more than 1 GiB");
  }
  if (c.store.hbm_pages == 0 && c.store.dram_pages == 0) {
    return bad("store.dram_pages", "no tier has slots (store.hbm_pages is 0 too)");
  }
  if (c.store.dram_pages == 0) {
    return bad("store.dram_pages", "must be > 0: the DRAM pool is what workers map");
  }
  if (!ParseHbmBackend(c.store.hbm_backend).ok()) {
    return bad("store.hbm_backend", "'", c.store.hbm_backend,
               "' is not auto, cuda or host-emulated");
  }
  if (c.store.tokens_per_page == 0) return bad("store.tokens_per_page", "must be > 0");
  if (c.store.maintain_interval_ms == 0) return bad("store.maintain_interval_ms", "must be > 0");
  if (!MakePolicy(c.store.policy).ok()) {
    return bad("store.policy", "'", c.store.policy, "' is not one of ",
               absl::StrJoin(PolicyNames(), ", "));
  }
  if (!(c.store.max_migration_bytes_per_s > 0)) {
    return bad("store.max_migration_bytes_per_s", "must be > 0");
  }
  // More SMs than any GPU has is almost certainly a typo; the engine clamps to the device's count.
  constexpr int32_t kMaxSmBudget = 1024;
  if (c.gpu.sm_budget < 0 || c.gpu.sm_budget > kMaxSmBudget) {
    return bad("gpu.sm_budget", c.gpu.sm_budget, " is not in [0, ", kMaxSmBudget, "] (0: all)");
  }
  if (c.gpu.device_to_device_sm_budget < 0 || c.gpu.device_to_device_sm_budget > kMaxSmBudget) {
    return bad("gpu.device_to_device_sm_budget", c.gpu.device_to_device_sm_budget,
               " is not in [0, ", kMaxSmBudget, "] (0: gpu.sm_budget)");
  }
  if (c.nvme.enabled() && c.nvme.capacity_bytes < c.store.page_bytes) {
    return bad("nvme.capacity_bytes", c.nvme.capacity_bytes, " holds no page of ",
               c.store.page_bytes, " bytes");
  }
  if (!c.nvme.enabled() && c.nvme.capacity_bytes != 0) {
    return bad("nvme.directories", "empty while nvme.capacity_bytes is set");
  }
  const LimitsConfig& l = c.limits;
  if (l.max_message_bytes < 4096 || l.max_message_bytes > (64u << 20)) {
    return bad("limits.max_message_bytes", l.max_message_bytes, " is outside [4096, 64 MiB]");
  }
  if (l.max_batch_pages == 0) return bad("limits.max_batch_pages", "must be > 0");
  if (l.max_inflight_ops == 0) return bad("limits.max_inflight_ops", "must be > 0");
  if (l.max_buffers == 0) return bad("limits.max_buffers", "must be > 0");
  if (l.max_consecutive_errors == 0) return bad("limits.max_consecutive_errors", "must be > 0");
  if (l.io_threads == 0 || l.io_threads > 256)
    return bad("limits.io_threads", "must be in [1, 256]");
  if (l.max_connections == 0) return bad("limits.max_connections", "must be > 0");
  if (l.max_namespaces == 0) return bad("limits.max_namespaces", "must be > 0");
  if (l.max_connections_per_uid > l.max_connections) {
    return bad("limits.max_connections_per_uid", l.max_connections_per_uid,
               " exceeds limits.max_connections (", l.max_connections, ")");
  }
  if (l.hello_timeout_ms == 0) return bad("limits.hello_timeout_ms", "must be > 0");
  if (l.max_output_bytes < 4096) {
    return bad("limits.max_output_bytes", l.max_output_bytes, " is below 4096");
  }
  if (l.max_namespaces_per_uid == 0) return bad("limits.max_namespaces_per_uid", "must be > 0");
  if (c.namespaces.empty()) return bad("namespaces", "no namespace rule: nobody could connect");
  if (absl::Status s = ValidateClusterConfig(c.cluster); !s.ok()) return s;
  for (size_t i = 0; i < c.namespaces.size(); ++i) {
    const NamespaceRule& r = c.namespaces[i];
    const std::string key = absl::StrCat("namespaces[", i, "]");
    if (r.name.empty()) return bad(key + ".name", "must not be empty");
    // Clients' namespace names are printable ASCII (dispatcher.cc): any other rule matches none.
    if (std::any_of(r.name.begin(), r.name.end(), [](char ch) { return ch < 0x20 || ch > 0x7e; })) {
      return bad(key + ".name", "names are printable ASCII");
    }
    if (r.name.find('*') != std::string::npos && r.name.back() != '*') {
      return bad(key + ".name", "'*' may only end a name");
    }
    if (r.sink_slots > c.store.hbm_pages) {
      // Every Hello of the namespace would be refused (its reserve cannot be made).
      return bad(key + ".sink_slots", r.sink_slots, " exceeds store.hbm_pages (", c.store.hbm_pages,
                 ")", c.store.hbm_pages == 0 ? "; with no HBM tier, sink_slots must be 0" : "");
    }
    if (r.layout.has_value()) {
      LayoutSpec spec = *r.layout;
      spec.num_blocks = 1;
      absl::StatusOr<Layout> layout = Layout::Create(spec);
      if (!layout.ok()) return bad(key + ".layout", layout.status().message());
      if (layout->page_bytes() != c.store.page_bytes) {
        return bad(key + ".layout", "pages of ", layout->page_bytes(),
                   " bytes, but store.page_bytes is ", c.store.page_bytes);
      }
    }
  }
  return absl::OkStatus();
}

const NamespaceRule* FindRule(const DaemonConfig& c, absl::string_view name) {
  for (const NamespaceRule& r : c.namespaces) {
    if (r.name.back() == '*') {
      if (absl::StartsWith(name, absl::string_view(r.name).substr(0, r.name.size() - 1))) return &r;
    } else if (r.name == name) {
      return &r;
    }
  }
  return nullptr;
}

bool Allowed(const NamespaceRule& rule, uid_t uid, gid_t gid, uid_t owner_uid) {
  if (rule.uids.empty() && rule.gids.empty()) return uid == owner_uid;
  return std::find(rule.uids.begin(), rule.uids.end(), uid) != rule.uids.end() ||
         std::find(rule.gids.begin(), rule.gids.end(), gid) != rule.gids.end();
}

namespace {

// yaml-cpp writes a string with leading or trailing blanks unquoted and reads it back without
// them (the config fuzzer's find): such strings are written double-quoted, so that --print_config
// reads back to the same config. (Control characters and broken UTF-8 are refused on reading.)
struct YamlString {
  const std::string& value;
};

YAML::Emitter& operator<<(YAML::Emitter& out, YamlString s) {
  const std::string& v = s.value;
  // (Tabs never get here: CheckText refuses control characters.)
  if (!v.empty() && (v.front() == ' ' || v.back() == ' ')) out << YAML::DoubleQuoted;
  return out << v;
}

struct YamlStrings {
  const std::vector<std::string>& values;
};

YAML::Emitter& operator<<(YAML::Emitter& out, YamlStrings s) {
  out << YAML::Flow << YAML::BeginSeq;
  for (const std::string& v : s.values) out << YamlString{v};
  return out << YAML::EndSeq;
}

}  // namespace

std::string ConfigToYaml(const DaemonConfig& c) {
  YAML::Emitter out;
  out << YAML::BeginMap;
  out << YAML::Key << "data_dir" << YAML::Value << YamlString{c.data_dir};
  out << YAML::Key << "socket_path" << YAML::Value << YamlString{c.socket_path};
  char mode[8];
  std::snprintf(mode, sizeof(mode), "0%o", c.socket_mode);
  out << YAML::Key << "socket_mode" << YAML::Value << mode;
  out << YAML::Key << "http_address" << YAML::Value << YamlString{c.http_address};
  if (!c.admin_uids.empty()) {
    out << YAML::Key << "admin_uids" << YAML::Value << YAML::Flow << c.admin_uids;
  }
  out << YAML::Key << "store" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "page_bytes" << YAML::Value << c.store.page_bytes;
  out << YAML::Key << "hbm_pages" << YAML::Value << c.store.hbm_pages;
  out << YAML::Key << "dram_pages" << YAML::Value << c.store.dram_pages;
  out << YAML::Key << "hbm_backend" << YAML::Value << YamlString{c.store.hbm_backend};
  out << YAML::Key << "sink_tokens" << YAML::Value << c.store.sink_tokens;
  out << YAML::Key << "tokens_per_page" << YAML::Value << c.store.tokens_per_page;
  out << YAML::Key << "maintain_interval_ms" << YAML::Value << c.store.maintain_interval_ms;
  out << YAML::Key << "policy" << YAML::Value << YamlString{c.store.policy};
  out << YAML::Key << "max_migration_bytes_per_s" << YAML::Value
      << c.store.max_migration_bytes_per_s;
  out << YAML::EndMap;
  if (!(c.nvme == NvmeConfig{})) {
    out << YAML::Key << "nvme" << YAML::Value << YAML::BeginMap;
    out << YAML::Key << "directories" << YAML::Value << YamlStrings{c.nvme.directories};
    out << YAML::Key << "capacity_bytes" << YAML::Value << c.nvme.capacity_bytes;
    out << YAML::EndMap;
  }
  out << YAML::Key << "gpu" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "sm_budget" << YAML::Value << c.gpu.sm_budget;
  out << YAML::Key << "device_to_device_sm_budget" << YAML::Value
      << c.gpu.device_to_device_sm_budget;
  out << YAML::EndMap;
  const LimitsConfig& l = c.limits;
  out << YAML::Key << "limits" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "max_message_bytes" << YAML::Value << l.max_message_bytes;
  out << YAML::Key << "max_batch_pages" << YAML::Value << l.max_batch_pages;
  out << YAML::Key << "max_inflight_ops" << YAML::Value << l.max_inflight_ops;
  out << YAML::Key << "max_pinned_pages" << YAML::Value << l.max_pinned_pages;
  out << YAML::Key << "max_buffers" << YAML::Value << l.max_buffers;
  out << YAML::Key << "max_consecutive_errors" << YAML::Value << l.max_consecutive_errors;
  out << YAML::Key << "io_threads" << YAML::Value << l.io_threads;
  out << YAML::Key << "max_connections" << YAML::Value << l.max_connections;
  out << YAML::Key << "max_namespaces" << YAML::Value << l.max_namespaces;
  out << YAML::Key << "max_connections_per_uid" << YAML::Value << l.max_connections_per_uid;
  out << YAML::Key << "hello_timeout_ms" << YAML::Value << l.hello_timeout_ms;
  out << YAML::Key << "max_output_bytes" << YAML::Value << l.max_output_bytes;
  out << YAML::Key << "max_registered_bytes_per_session" << YAML::Value
      << l.max_registered_bytes_per_session;
  out << YAML::Key << "max_registered_bytes" << YAML::Value << l.max_registered_bytes;
  out << YAML::Key << "max_namespaces_per_uid" << YAML::Value << l.max_namespaces_per_uid;
  out << YAML::Key << "max_pinned_pages_per_uid" << YAML::Value << l.max_pinned_pages_per_uid;
  out << YAML::EndMap;
  out << YAML::Key << "namespaces" << YAML::Value << YAML::BeginSeq;
  for (const NamespaceRule& r : c.namespaces) {
    out << YAML::BeginMap << YAML::Key << "name" << YAML::Value << YamlString{r.name};
    out << YAML::Key << "sink_slots" << YAML::Value << r.sink_slots;
    if (!r.uids.empty()) out << YAML::Key << "uids" << YAML::Value << YAML::Flow << r.uids;
    if (!r.gids.empty()) out << YAML::Key << "gids" << YAML::Value << YAML::Flow << r.gids;
    if (r.layout.has_value()) {
      const LayoutSpec& spec = *r.layout;
      out << YAML::Key << "layout" << YAML::Value << YAML::BeginMap;
      out << YAML::Key << "layers" << YAML::Value << spec.layers;
      out << YAML::Key << "kv_heads" << YAML::Value << spec.kv_heads;
      out << YAML::Key << "head_dim" << YAML::Value << spec.head_dim;
      out << YAML::Key << "dtype" << YAML::Value << static_cast<uint32_t>(spec.dtype);
      out << YAML::Key << "tokens_per_page" << YAML::Value << spec.tokens_per_page;
      out << YAML::Key << "tensor_layout" << YAML::Value
          << static_cast<uint32_t>(spec.tensor_layout);
      out << YAML::EndMap;
    }
    out << YAML::EndMap;
  }
  out << YAML::EndSeq;
  if (!(c.cluster == ClusterConfig{})) {
    const ClusterConfig& cl = c.cluster;
    out << YAML::Key << "cluster" << YAML::Value << YAML::BeginMap;
    out << YAML::Key << "enabled" << YAML::Value << cl.enabled;
    out << YAML::Key << "node_id" << YAML::Value << YamlString{cl.node_id};
    out << YAML::Key << "etcd_endpoints" << YAML::Value << YamlStrings{cl.etcd_endpoints};
    out << YAML::Key << "etcd_prefix" << YAML::Value << YamlString{cl.etcd_prefix};
    out << YAML::Key << "lease_ttl_s" << YAML::Value << cl.lease_ttl_s;
    out << YAML::Key << "listen_address" << YAML::Value << YamlString{cl.listen_address};
    out << YAML::Key << "advertise_host" << YAML::Value << YamlString{cl.advertise_host};
    out << YAML::Key << "ucx_tls" << YAML::Value << YamlString{cl.ucx_tls};
    out << YAML::Key << "ucx_net_devices" << YAML::Value << YamlString{cl.ucx_net_devices};
    out << YAML::Key << "namespaces" << YAML::Value << YamlStrings{cl.namespaces};
    out << YAML::Key << "request_timeout_ms" << YAML::Value << cl.request_timeout_ms;
    out << YAML::Key << "transfer_timeout_ms" << YAML::Value << cl.transfer_timeout_ms;
    out << YAML::Key << "landing_pages" << YAML::Value << cl.landing_pages;
    out << YAML::Key << "staging_pages" << YAML::Value << cl.staging_pages;
    out << YAML::Key << "fetch_lease_ms" << YAML::Value << cl.fetch_lease_ms;
    out << YAML::Key << "replicate_after_remote_reads" << YAML::Value
        << cl.replicate_after_remote_reads;
    out << YAML::Key << "max_migration_bytes_per_s" << YAML::Value << cl.max_migration_bytes_per_s;
    out << YAML::EndMap;
  }
  out << YAML::EndMap;
  return out.c_str();
}

}  // namespace kvtier
