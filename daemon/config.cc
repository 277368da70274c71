#include "daemon/config.h"

#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "daemon/config_schema.h"
#include "tiering/policy/policy_factory.h"
#include "yaml-cpp/yaml.h"

namespace kvtier {
namespace {

using config_schema::FieldTable;
using config_schema::Problem;
using config_schema::Rule;

// The embedded default is the structs' defaults (config.h) and the one thing they lack: a rule
// that lets the daemon's own uid use every namespace.
constexpr char kDefaultYaml[] =
    R"(# kvtierd embedded default: a non-root user, no GPU, run from any directory.
namespaces:
  - name: "*"
)";

// ---- Rules more than one key uses. ----

template <typename T>
Rule<T> Positive() {
  return [](const T& v, const DaemonConfig&) -> Problem { return v > 0 ? "" : "must be > 0"; };
}

template <typename T>
Rule<T> Within(T lo, T hi) {
  return [lo, hi](const T& v, const DaemonConfig&) -> Problem {
    if (v >= lo && v <= hi) return {};
    return absl::StrCat(v, " is outside [", lo, ", ", hi, "]");
  };
}

Rule<std::string> NotEmpty() {
  return [](const std::string& v, const DaemonConfig&) -> Problem {
    return v.empty() ? "must not be empty" : "";
  };
}

// A "host:port" (port 0: a free one). `empty_disables`: the empty string turns the listener off.
Rule<std::string> HostPort(bool empty_disables) {
  return [empty_disables](const std::string& v, const DaemonConfig&) -> Problem {
    if ((v.empty() && empty_disables) || v.rfind(':') != std::string::npos) return {};
    return absl::StrCat("'", v, "' is not host:port", empty_disables ? " (empty disables it)" : "");
  };
}

// More SMs than any GPU has is almost certainly a typo; the engine clamps to the device's count.
Rule<int32_t> SmBudget(absl::string_view zero_means) {
  constexpr int32_t kMaxSmBudget = 1024;
  return [zero_means = std::string(zero_means)](int32_t v, const DaemonConfig&) -> Problem {
    if (v >= 0 && v <= kMaxSmBudget) return {};
    return absl::StrCat(v, " is not in [0, ", kMaxSmBudget, "] (0: ", zero_means, ")");
  };
}

// Bounds of store.hbm_devices: a node has a handful of GPUs; the bounds only keep a typo from
// asking for thousands of pools.
constexpr size_t kMaxHbmPools = 64;
constexpr int32_t kMaxCudaDevice = 1024;

// ---- The tables: every key of the config, once, in --print_config's order. ----

FieldTable<StoreConfig> StoreTable() {
  FieldTable<StoreConfig> t;
  t.Add("page_bytes", &StoreConfig::page_bytes, [](uint64_t v, const DaemonConfig&) -> Problem {
    if (v == 0) return "must be > 0";
    // A page is one token block of one sequence: even a 405B model's 128-token page is ~64 MiB.
    if (v > (uint64_t{1} << 30)) return absl::StrCat(v, " is more than 1 GiB");
    return {};
  });
  t.Add("hbm_pages", &StoreConfig::hbm_pages);
  t.Add("hbm_devices", &StoreConfig::hbm_devices,
        [](const std::vector<int32_t>& v, const DaemonConfig& c) -> Problem {
          if (v.size() > kMaxHbmPools) {
            return absl::StrCat(v.size(), " pools; at most ", kMaxHbmPools);
          }
          for (size_t i = 0; i < v.size(); ++i) {
            if (v[i] < 0 || v[i] >= kMaxCudaDevice) {
              return absl::StrCat("[", i, "] = ", v[i], " is not a CUDA device ordinal in [0, ",
                                  kMaxCudaDevice, ")");
            }
          }
          if (c.store.hbm_slots() > UINT32_MAX) {
            return absl::StrCat("store.hbm_pages ", c.store.hbm_pages, " in each of ", v.size(),
                                " pools is more than 2^32 slots");
          }
          return {};
        })
      .OmitWhenEmpty();
  t.Add("dram_pages", &StoreConfig::dram_pages, [](uint32_t v, const DaemonConfig& c) -> Problem {
    if (v != 0) return {};
    return c.store.hbm_pages == 0 ? "no tier has slots (store.hbm_pages is 0 too)"
                                  : "must be > 0: the DRAM pool is what workers map";
  });
  t.Add("hbm_backend", &StoreConfig::hbm_backend,
        [](const std::string& v, const DaemonConfig&) -> Problem {
          if (ParseHbmBackend(v).ok()) return {};
          return absl::StrCat("'", v, "' is not auto, cuda or host-emulated");
        });
  t.Add("sink_tokens", &StoreConfig::sink_tokens);
  t.Add("tokens_per_page", &StoreConfig::tokens_per_page, Positive<uint32_t>());
  t.Add("maintain_interval_ms", &StoreConfig::maintain_interval_ms, Positive<uint32_t>());
  t.Add("policy", &StoreConfig::policy, [](const std::string& v, const DaemonConfig&) -> Problem {
    if (MakePolicy(v).ok()) return {};
    return absl::StrCat("'", v, "' is not one of ", absl::StrJoin(PolicyNames(), ", "));
  });
  t.Add("max_migration_bytes_per_s", &StoreConfig::max_migration_bytes_per_s, Positive<double>());
  return t;
}

FieldTable<NvmeConfig> NvmeTable() {
  FieldTable<NvmeConfig> t;
  t.Add("directories", &NvmeConfig::directories,
        [](const std::vector<std::string>& v, const DaemonConfig& c) -> Problem {
          if (!v.empty() || c.nvme.capacity_bytes == 0) return {};
          return "empty while nvme.capacity_bytes is set";
        });
  t.Add("capacity_bytes", &NvmeConfig::capacity_bytes,
        [](uint64_t v, const DaemonConfig& c) -> Problem {
          if (!c.nvme.enabled() || v >= c.store.page_bytes) return {};
          return absl::StrCat(v, " holds no page of ", c.store.page_bytes, " bytes");
        });
  return t;
}

FieldTable<GpuConfig> GpuTable() {
  FieldTable<GpuConfig> t;
  t.Add("sm_budget", &GpuConfig::sm_budget, SmBudget("all"));
  t.Add("device_to_device_sm_budget", &GpuConfig::device_to_device_sm_budget,
        SmBudget("gpu.sm_budget"));
  return t;
}

FieldTable<LimitsConfig> LimitsTable() {
  using L = LimitsConfig;
  FieldTable<L> t;
  t.Add("max_message_bytes", &L::max_message_bytes, [](uint32_t v, const DaemonConfig&) -> Problem {
    if (v >= 4096 && v <= (64u << 20)) return {};
    return absl::StrCat(v, " is outside [4096, 64 MiB]");
  });
  t.Add("max_batch_pages", &L::max_batch_pages, Positive<uint32_t>());
  t.Add("max_inflight_ops", &L::max_inflight_ops, Positive<uint32_t>());
  t.Add("max_pinned_pages", &L::max_pinned_pages);
  t.Add("max_buffers", &L::max_buffers, Positive<uint32_t>());
  t.Add("max_consecutive_errors", &L::max_consecutive_errors, Positive<uint32_t>());
  t.Add("io_threads", &L::io_threads, [](uint32_t v, const DaemonConfig&) -> Problem {
    return v >= 1 && v <= 256 ? "" : "must be in [1, 256]";
  });
  t.Add("max_connections", &L::max_connections, Positive<uint32_t>());
  t.Add("max_namespaces", &L::max_namespaces, Positive<uint32_t>());
  t.Add("max_connections_per_uid", &L::max_connections_per_uid,
        [](uint32_t v, const DaemonConfig& c) -> Problem {
          if (v <= c.limits.max_connections) return {};
          return absl::StrCat(v, " exceeds limits.max_connections (", c.limits.max_connections,
                              ")");
        });
  t.Add("hello_timeout_ms", &L::hello_timeout_ms, Positive<uint32_t>());
  t.Add("max_output_bytes", &L::max_output_bytes, [](uint32_t v, const DaemonConfig&) -> Problem {
    return v >= 4096 ? "" : absl::StrCat(v, " is below 4096");
  });
  t.Add("max_registered_bytes_per_session", &L::max_registered_bytes_per_session);
  t.Add("max_registered_bytes", &L::max_registered_bytes);
  t.Add("max_namespaces_per_uid", &L::max_namespaces_per_uid, Positive<uint32_t>());
  t.Add("max_pinned_pages_per_uid", &L::max_pinned_pages_per_uid);
  return t;
}

FieldTable<LayoutSpec> LayoutTable() {
  FieldTable<LayoutSpec> t;
  t.Add("layers", &LayoutSpec::layers);
  t.Add("kv_heads", &LayoutSpec::kv_heads);
  t.Add("head_dim", &LayoutSpec::head_dim);
  t.Add("dtype", &LayoutSpec::dtype);
  t.Add("tokens_per_page", &LayoutSpec::tokens_per_page);
  t.Add("tensor_layout", &LayoutSpec::tensor_layout);
  return t;
}

FieldTable<NamespaceRule> NamespaceRuleTable() {
  FieldTable<NamespaceRule> t;
  t.Add("name", &NamespaceRule::name, [](const std::string& v, const DaemonConfig&) -> Problem {
    if (v.empty()) return "must not be empty";
    // Clients' namespace names are printable ASCII (dispatcher.cc): any other rule matches none.
    if (std::any_of(v.begin(), v.end(), [](char ch) { return ch < 0x20 || ch > 0x7e; })) {
      return "names are printable ASCII";
    }
    if (v.find('*') != std::string::npos && v.back() != '*') return "'*' may only end a name";
    return {};
  });
  t.Add("sink_slots", &NamespaceRule::sink_slots, [](uint32_t v, const DaemonConfig& c) -> Problem {
    // Every Hello of the namespace would be refused (its reserve cannot be made).
    if (v <= c.store.hbm_pages) return {};
    return absl::StrCat(v, " exceeds store.hbm_pages (", c.store.hbm_pages, ")",
                        c.store.hbm_pages == 0 ? "; with no HBM tier, sink_slots must be 0" : "");
  });
  t.Add("uids", &NamespaceRule::uids).OmitWhenEmpty();
  t.Add("gids", &NamespaceRule::gids).OmitWhenEmpty();
  t.AddOptional("layout", &NamespaceRule::layout, LayoutTable(),
                [](const std::optional<LayoutSpec>& v, const DaemonConfig& c) -> Problem {
                  if (!v.has_value()) return {};
                  LayoutSpec spec = *v;
                  spec.num_blocks = 1;
                  absl::StatusOr<Layout> layout = Layout::Create(spec);
                  if (!layout.ok()) return std::string(layout.status().message());
                  if (layout->page_bytes() == c.store.page_bytes) return {};
                  return absl::StrCat("pages of ", layout->page_bytes(),
                                      " bytes, but store.page_bytes is ", c.store.page_bytes);
                });
  return t;
}

// Checked only when the cluster is enabled: a standalone node ignores these keys.
FieldTable<ClusterConfig> ClusterTable() {
  using C = ClusterConfig;
  FieldTable<C> t;
  t.ValidateOnlyWhen(&C::enabled);
  t.Add("enabled", &C::enabled);
  t.Add("node_id", &C::node_id, [](const std::string& v, const DaemonConfig&) -> Problem {
    return v.size() > 128 ? "longer than 128 bytes" : "";
  });
  t.Add("etcd_endpoints", &C::etcd_endpoints,
        [](const std::vector<std::string>& v, const DaemonConfig&) -> Problem {
          if (v.empty()) return "required when cluster.enabled";
          for (const std::string& e : v) {
            if (!absl::StartsWith(e, "http://") && !absl::StartsWith(e, "https://")) {
              return absl::StrCat("'", e, "' is not http://host:port");
            }
          }
          return {};
        });
  t.Add("etcd_prefix", &C::etcd_prefix, [](const std::string& v, const DaemonConfig&) -> Problem {
    if (!v.empty() && v.back() == '/') return {};
    return absl::StrCat("'", v, "' must end in '/'");
  });
  t.Add("lease_ttl_s", &C::lease_ttl_s, Within<uint32_t>(2, 3600));
  t.Add("listen_address", &C::listen_address, HostPort(/*empty_disables=*/false));
  t.Add("advertise_host", &C::advertise_host);
  t.Add("ucx_tls", &C::ucx_tls);
  t.Add("ucx_net_devices", &C::ucx_net_devices);
  t.Add("namespaces", &C::namespaces,
        [](const std::vector<std::string>& v, const DaemonConfig&) -> Problem {
          return v.empty() ? "empty: the node would serve nothing" : "";
        });
  t.Add("request_timeout_ms", &C::request_timeout_ms, Positive<uint32_t>());
  t.Add("transfer_timeout_ms", &C::transfer_timeout_ms, Positive<uint32_t>());
  t.Add("landing_pages", &C::landing_pages, Within<uint32_t>(1, 4096));
  t.Add("staging_pages", &C::staging_pages, Within<uint32_t>(1, 4096));
  t.Add("fetch_lease_ms", &C::fetch_lease_ms, [](uint32_t v, const DaemonConfig& c) -> Problem {
    if (v >= c.cluster.transfer_timeout_ms) return {};
    return absl::StrCat(v, " is shorter than transfer_timeout_ms (", c.cluster.transfer_timeout_ms,
                        "): a slow read would lose its page");
  });
  t.Add("replicate_after_remote_reads", &C::replicate_after_remote_reads);
  t.Add("max_migration_bytes_per_s", &C::max_migration_bytes_per_s, Positive<double>());
  t.Add("busy_poll_us", &C::busy_poll_us, Within<uint32_t>(0, 10'000));
  t.Add("push_below_free_fraction", &C::push_below_free_fraction,
        [](double v, const DaemonConfig&) -> Problem {
          if (v >= 0 && v < 1) return {};
          return absl::StrCat(v, " is outside [0, 1)");
        });
  t.Add("max_push_bytes_per_s", &C::max_push_bytes_per_s, Positive<double>());
  t.Add("secret_file", &C::secret_file);
  return t;
}

FieldTable<DaemonConfig> DaemonTable() {
  using D = DaemonConfig;
  FieldTable<D> t;
  t.Add("data_dir", &D::data_dir, NotEmpty());
  t.Add("socket_path", &D::socket_path, [](const std::string& v, const DaemonConfig&) -> Problem {
    if (v.empty()) return "must not be empty";
    constexpr size_t kMax = sizeof(sockaddr_un{}.sun_path) - 1;
    if (v.size() <= kMax) return {};
    return absl::StrCat("'", v, "' is ", v.size(), " bytes, at most ", kMax);
  });
  t.AddMode("socket_mode", &D::socket_mode, [](uint32_t v, const DaemonConfig&) -> Problem {
    return v <= 0777 ? "" : "must be a permission mode <= 0777";
  });
  t.Add("http_address", &D::http_address, HostPort(/*empty_disables=*/true));
  t.Add("admin_uids", &D::admin_uids).OmitWhenEmpty();
  t.AddSection("store", &D::store, StoreTable());
  t.AddSection("nvme", &D::nvme, NvmeTable()).OmitWhenDefault();
  t.AddSection("gpu", &D::gpu, GpuTable());
  t.AddSection("limits", &D::limits, LimitsTable());
  t.AddList("namespaces", &D::namespaces, NamespaceRuleTable(),
            [](const std::vector<NamespaceRule>& v, const DaemonConfig&) -> Problem {
              return v.empty() ? "no namespace rule: nobody could connect" : "";
            });
  t.AddSection("cluster", &D::cluster, ClusterTable()).OmitWhenDefault();
  return t;
}

// Built once; only read afterwards (from any thread).
const FieldTable<DaemonConfig>& Schema() {
  static const FieldTable<DaemonConfig> table = DaemonTable();
  return table;
}

}  // namespace

absl::string_view EmbeddedDefaultConfigYaml() { return kDefaultYaml; }

std::vector<ConfigKey> ConfigSchemaKeys() {
  std::vector<ConfigKey> keys;
  Schema().Describe("", keys);
  return keys;
}

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
  if (host_hbm) host += static_cast<unsigned __int128>(s.page_bytes) * s.hbm_slots();
  if (host <= machine) return absl::OkStatus();
  const auto gib = [](unsigned __int128 b) {
    return absl::StrCat(static_cast<uint64_t>(b >> 30), " GiB");
  };
  return absl::InvalidArgumentError(absl::StrCat(
      "store.page_bytes: ", s.page_bytes, " bytes x store.dram_pages ", s.dram_pages,
      host_hbm ? absl::StrCat(" (+ store.hbm_pages ", s.hbm_pages, " x ",
                              std::max<size_t>(1, s.hbm_devices.size()), " pools, host-emulated)")
               : "",
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
  return Schema().Read(root, "", c);
}

absl::Status ValidateConfig(const DaemonConfig& c) { return Schema().Validate(c, c, ""); }

std::string ConfigToYaml(const DaemonConfig& c) {
  YAML::Emitter out;
  Schema().Print(out, c);
  return out.c_str();
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

}  // namespace kvtier
