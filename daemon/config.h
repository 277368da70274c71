// kvtierd's options: one struct per section, every field with its default and why, loaded from
// YAML (the embedded default, then a --config file over it, then flags) and validated once at
// start. Errors name the key ("store.page_bytes: ..."). Each key is spelled once, in the field
// table of config.cc that the reader, the validator and the printer all walk; an option the
// daemon hands to a module takes its default from that module's options struct.
#pragma once

#include <sys/types.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "kernels/copy_batch.h"
#include "tiering/layout.h"
#include "tiering/memory_region.h"
#include "tiering/policy/planner.h"
#include "tiering/tiered_store.h"

namespace kvtier {

struct StoreConfig {
  // Bytes of every page; each namespace's layout must produce exactly this. Default 64 KiB (a
  // laptop-sized stand-in for Llama-3-8B's 2 MiB).
  uint64_t page_bytes = uint64_t{64} * 1024;
  // HBM slots of each pool (host-emulated without a GPU); 0 leaves HBM out.
  uint32_t hbm_pages = 256;
  // CUDA devices that each hold an HBM pool of hbm_pages slots (a page's HBM copy is on one of
  // them; a worker's stores go to its own GPU's pool when it has room). Empty (default): one
  // pool, on device 0.
  std::vector<int32_t> hbm_devices;
  // Slots of the whole HBM tier: hbm_pages in each pool.
  uint64_t hbm_slots() const {
    return uint64_t{hbm_pages} * std::max<size_t>(1, hbm_devices.size());
  }
  uint32_t dram_pages = 1024;  // DRAM slots (the memfd shared with workers)
  // auto, cuda or host-emulated. Default: the store's (auto).
  std::string hbm_backend = std::string(HbmBackendName(StoreOptions{}.hbm_backend));
  // StreamingLLM sinks: the first tokens of a sequence. Default: the store's (4).
  uint32_t sink_tokens = StoreOptions{}.sink_tokens;
  uint32_t tokens_per_page = StoreOptions{}.tokens_per_page;  // default: the store's (16)
  uint32_t maintain_interval_ms = 100;                        // planner pass period
  // Placement policy: kvtier (sinks in reserved slots, frequency x utility), or a classic one
  // (lru, lfu, arc, streaming, h2o) for comparison. Default kvtier.
  std::string policy = "kvtier";
  // Average bandwidth the planner may spend moving pages between tiers (they compete with the
  // loads inference waits on). Default: the planner's (5 GB/s, a tenth of a PCIe 5.0 x16 link).
  double max_migration_bytes_per_s = PlannerOptions{}.max_migration_bytes_per_s;

  friend bool operator==(const StoreConfig&, const StoreConfig&) = default;
};

// The NVMe tier: preallocated files under `directories`. Absent (no directories) by default.
struct NvmeConfig {
  std::vector<std::string> directories;
  uint64_t capacity_bytes = 0;  // total over all directories
  bool enabled() const { return !directories.empty(); }

  friend bool operator==(const NvmeConfig&, const NvmeConfig&) = default;
};

// The CUDA copy engine (used when the build has CUDA and a GPU is present; ignored otherwise).
struct GpuConfig {
  // SMs the gather/scatter copy kernels may occupy, beside the inference kernels on the same
  // GPU; 0 means every SM. Default: the copy kernels' (16 of an H100's 132, enough for
  // host<->device copies to reach the PCIe limit).
  int32_t sm_budget = kernels::kDefaultGpuCopySmBudget;
  // The same for HBM->HBM copies; 0 (default) means sm_budget. One SM moves at most ~50 GB/s
  // HBM->HBM, so reaching 80% of a device-to-device memcpy on an H100 takes about 32.
  int32_t device_to_device_sm_budget = 0;

  friend bool operator==(const GpuConfig&, const GpuConfig&) = default;
};

struct LimitsConfig {
  // Largest datagram accepted; larger ones get an error reply. Default 1 MiB (4096 keys of a
  // Store with hints and stats fit in ~200 KiB).
  uint32_t max_message_bytes = 1 << 20;
  uint32_t max_batch_pages = 4096;    // keys in one request
  uint32_t max_inflight_ops = 64;     // Load/Store submitted but not yet answered, per connection
  uint32_t max_pinned_pages = 65536;  // pins held by one connection
  uint32_t max_buffers = 1024;        // registered KV buffers per connection
  // Consecutive bad requests after which a connection is no longer trusted and is closed.
  uint32_t max_consecutive_errors = 16;
  uint32_t io_threads = 2;  // threads that run Load and Store copies
  uint32_t max_connections = 256;
  // Live namespaces (those with a session); each holds a salt, a layout and reserved sink slots.
  uint32_t max_namespaces = 1024;
  // Connections one uid may hold, so no single tenant fills limits.max_connections. Default 0:
  // a quarter of max_connections (at least 1).
  uint32_t max_connections_per_uid = 0;
  // A connection that has not completed Hello is closed after this long without a request
  // (kvtierctl's Status/Stats count as requests). Default 10 s.
  uint32_t hello_timeout_ms = 10000;
  // Replies queued for a client that does not read them; past this the client is disconnected
  // (Redis's client-output-buffer-limit). Default 8 MiB: 64 in-flight replies of 4096 pages take
  // under 1 MiB.
  uint32_t max_output_bytes = 8u << 20;
  // Bytes of worker buffers one connection may register (they are mapped into the daemon's
  // address space). Default 0: the machine's physical memory.
  uint64_t max_registered_bytes_per_session = 0;
  // The same over all connections. Default 0: twice the physical memory, at most a quarter of
  // the address space (RLIMIT_AS when set).
  uint64_t max_registered_bytes = 0;
  // Live namespaces (those with a session) one uid may hold sessions in, so one uid cannot take
  // every namespace. A namespace is retired when its last session ends. Default 64.
  uint32_t max_namespaces_per_uid = 64;
  // Pins one uid's sessions may hold together, and likewise one namespace's: pinned pages cannot
  // be evicted, so one tenant pinning everything would refuse every other tenant's stores.
  // Default 0: half of the store's slots (HBM + DRAM + NVMe).
  uint32_t max_pinned_pages_per_uid = 0;

  friend bool operator==(const LimitsConfig&, const LimitsConfig&) = default;
};

// Who may use a namespace. `name` is exact, or a prefix ending in '*' ("*" matches all). Empty
// uids and gids mean "the daemon's own uid only".
struct NamespaceRule {
  std::string name;
  std::vector<uid_t> uids;
  std::vector<gid_t> gids;
  uint32_t sink_slots = 16;  // reserved HBM slots for this namespace's sinks
  std::optional<LayoutSpec>
      layout;  // when set, workers must present exactly this (num_blocks aside)

  friend bool operator==(const NamespaceRule&, const NamespaceRule&) = default;
};

// Multi-node operation (DESIGN.md §5): etcd membership, a page directory and UCX page transfer.
// Off unless `enabled`; a node without it is a standalone cache.
struct ClusterConfig {
  bool enabled = false;
  // This node's name in the cluster, unique. Default: empty, meaning the host name. "$VAR"
  // reads environment variable VAR (a DaemonSet passes spec.nodeName that way).
  std::string node_id;
  // etcd members, http://host:port each. Required when enabled.
  std::vector<std::string> etcd_endpoints;
  std::string etcd_prefix = "/kvtier/";  // every key this cluster writes lives under it
  // How long a node that died stays listed (and asked for pages). Default 10 s; minimum 2.
  uint32_t lease_ttl_s = 10;
  // The UCP listener peers connect to, host:port. Port 0 picks a free one. Default
  // 0.0.0.0:18515 (the DaemonSet's UCX port).
  std::string listen_address = "0.0.0.0:18515";
  // Host peers reach this node at (its pod or host IP). Default: empty, the host name. "$VAR"
  // reads environment variable VAR (e.g. $POD_IP from the downward API).
  std::string advertise_host;
  // UCX_TLS for peer traffic. Must list tcp: peers connect through UCX's TCP connection
  // manager; UCX then moves bytes over the fastest transport listed.
  std::string ucx_tls = "tcp,sm,self";
  std::string ucx_net_devices = "all";  // UCX_NET_DEVICES; "lo" for loopback-only tests
  // Namespaces this node serves to and fetches from peers: names, or prefixes ending in '*'. A
  // namespace's pages never go to, or come from, a node that does not list it. Default ["*"].
  std::vector<std::string> namespaces = {"*"};
  uint32_t request_timeout_ms = 1000;   // a directory call or a fetch request to one peer
  uint32_t transfer_timeout_ms = 5000;  // one page's RMA get
  // Pages one fetch asks one holder for under one lease, their RMA gets in flight together
  // (a Load missing more pages asks again for the rest). Default 64.
  uint32_t landing_pages = 64;
  // Pages this node may be serving to peers at once from outside its DRAM pool (HBM, NVMe),
  // or to peers on this host, which read every page through these slots (UCX shared memory;
  // without a free slot a page is read in place, far slower between processes of one host).
  // Default 32.
  uint32_t staging_pages = 32;
  // How long a peer may take to read a page it was granted before the holder takes it back.
  uint32_t fetch_lease_ms = 10000;
  // A non-sink page this node fetched this many times is kept here too (a replica, announced
  // like any stored page). 0 never replicates. Default 2.
  uint32_t replicate_after_remote_reads = 2;
  // Bytes a second replication may copy into this node, beside what workers load. Default 1 GB/s.
  double max_migration_bytes_per_s = 1e9;
  // Placement across nodes: when this node's free page slots (all tiers) fall below this share
  // of its capacity, it pushes its coldest non-sink pages to the live peer advertising the most
  // free room, before its own policy drops them; sinks never leave their node. 0 never pushes.
  // Default 0.1.
  double push_below_free_fraction = 0.1;
  // Bytes a second this node may push to peers, apart from fetches and replication. Default
  // 256 MB/s.
  double max_push_bytes_per_s = 256e6;
  // A file holding the cluster's shared secret (mode 0600). When set, peers authenticate each
  // connection with an HMAC-SHA256 handshake over it, and a peer without it is refused and
  // disconnected (kvtier_cluster_peer_events_total{kind="auth_refused"}). Default: empty, no
  // authentication (any host that reaches listen_address is a peer).
  std::string secret_file;
  // How long the peer transport's progress thread (and a fetch waiting for its gets) keeps
  // polling after work before it sleeps: back-to-back messages then pay no wakeup. 0 always
  // sleeps. Default 50 us.
  uint32_t busy_poll_us = 50;

  friend bool operator==(const ClusterConfig&, const ClusterConfig&) = default;
};

struct DaemonConfig {
  std::string data_dir = "kvtier-data";  // created 0700 when missing
  std::string socket_path = "kvtier-data/kvtierd.sock";
  uint32_t socket_mode = 0600;  // who may connect at all; SO_PEERCRED rules decide the rest
  // Admin HTTP endpoint (GET /metrics, /healthz, /readyz), host:port; port 0 picks a free one.
  // Empty disables it. Default 127.0.0.1:9400, reachable from this node only.
  std::string http_address = "127.0.0.1:9400";
  std::vector<uid_t> admin_uids;  // may call Status/Stats; empty: the daemon's own uid
  StoreConfig store;
  NvmeConfig nvme;
  GpuConfig gpu;
  LimitsConfig limits;
  std::vector<NamespaceRule> namespaces;
  ClusterConfig cluster;

  friend bool operator==(const DaemonConfig&, const DaemonConfig&) = default;
};

// The embedded default: works for a non-root user with no GPU, from the current directory.
// It is the structs' defaults plus the one namespace rule a daemon needs to be usable.
absl::string_view EmbeddedDefaultConfigYaml();

// One key of the config schema, as tests and tools see it.
struct ConfigKey {
  enum class Kind : uint8_t {
    kBool,
    kInteger,
    kNumber,
    kText,
    kTextList,
    kIdList,     // a list of integers (uids, gids)
    kOctalMode,  // an integer written in octal (0600)
    kEnum,       // written as its number
    kMap,        // a section or a nested struct: its keys follow
    kList,       // a list of structs: its element's keys follow, as "key[0].field"
  };
  std::string path;  // the full key, as errors name it: "store.page_bytes"
  Kind kind;
  bool checked = false;  // ValidateConfig checks more than the type
};
// Every key of the config, sections and nested keys included, in --print_config's order.
std::vector<ConfigKey> ConfigSchemaKeys();

// Applies `yaml` over `config` (keys absent in yaml keep their value). Unknown keys are errors.
absl::Status ApplyConfigYaml(absl::string_view yaml, DaemonConfig& config);
// Checks every value; the error names the key.
absl::Status ValidateConfig(const DaemonConfig& config);
// Checks the memory pools against this machine's memory (a config may be meant for another
// machine, so this is kvtierd's start-up check, not ValidateConfig's).
absl::Status CheckPoolsFitTheMachine(const StoreConfig& store);
// Which rule governs `name`, if any (the first match in file order).
const NamespaceRule* FindRule(const DaemonConfig& config, absl::string_view name);
// Whether `uid`/`gid` may use `rule` (owner_uid: the daemon's uid).
bool Allowed(const NamespaceRule& rule, uid_t uid, gid_t gid, uid_t owner_uid);
std::string ConfigToYaml(const DaemonConfig& config);

}  // namespace kvtier
