// kvtierd: the node-local KV-cache tiering daemon. Loads its options (embedded default, then
// --config, then flags), validates them once, builds the TieredStore and serves workers on a Unix
// socket until SIGTERM or SIGINT, then shuts down cleanly (exit status 0). The body is
// KvtierdMain (kvtierd_main.h), called by kvtierd's main (kvtierd.cc) and by test binaries that
// pass hooks (tests/fault/kvtierd_fault_injection.cc).
#include "daemon/kvtierd_main.h"

#include <glog/logging.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "base/unique_fd.h"
#include "daemon/cluster_node.h"
#include "daemon/config.h"
#include "daemon/data_dir.h"
#include "daemon/nvme_hook.h"
#include "daemon/observability/admin_http.h"
#include "daemon/observability/daemon_metrics.h"
#include "daemon/observability/metrics.h"
#include "daemon/observability/nvme_metrics.h"
#include "daemon/observability/store_metrics.h"
#include "daemon/server.h"
#include "tiering/policy/policy_factory.h"
#include "tiering/tiered_store.h"
#if defined(KVTIER_HAVE_CUDA_KERNELS)
#include "tiering/cuda_copy_engine.h"
#endif

ABSL_FLAG(std::string, config, "", "YAML config file applied over the embedded default");
ABSL_FLAG(std::string, socket_path, "", "overrides the config's socket_path");
ABSL_FLAG(std::string, data_dir, "", "overrides the config's data_dir");
ABSL_FLAG(bool, print_config, false, "print the effective config as YAML and exit");
ABSL_FLAG(std::string, log_level, "info",
          "least severe log lines written to stderr: info, warning or error (one line per event, "
          "never per page)");

namespace {

using kvtier::DaemonConfig;

absl::StatusOr<DaemonConfig> LoadConfig() {
  DaemonConfig config;
  if (absl::Status s = kvtier::ApplyConfigYaml(kvtier::EmbeddedDefaultConfigYaml(), config);
      !s.ok()) {
    return absl::InternalError(absl::StrCat("embedded default config: ", s.message()));
  }
  if (const std::string path = absl::GetFlag(FLAGS_config); !path.empty()) {
    std::ifstream in(path);
    if (!in) return absl::NotFoundError(absl::StrCat("--config: cannot read '", path, "'"));
    std::stringstream text;
    text << in.rdbuf();
    if (absl::Status s = kvtier::ApplyConfigYaml(text.str(), config); !s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": ", s.message()));
    }
  }
  if (std::string v = absl::GetFlag(FLAGS_socket_path); !v.empty()) config.socket_path = v;
  if (std::string v = absl::GetFlag(FLAGS_data_dir); !v.empty()) config.data_dir = v;
  RETURN_IF_ERROR(kvtier::ValidateConfig(config));
  return config;
}

int Run(const kvtier::KvtierdHooks& hooks) {
  absl::StatusOr<DaemonConfig> config = LoadConfig();
  if (!config.ok()) {
    LOG(ERROR) << "event=config_invalid error=\"" << config.status().message() << "\"";
    return 2;
  }
  if (absl::GetFlag(FLAGS_print_config)) {
    std::printf("%s\n", kvtier::ConfigToYaml(*config).c_str());
    return 0;
  }
  if (absl::Status s = kvtier::CheckPoolsFitTheMachine(config->store); !s.ok()) {
    LOG(ERROR) << "event=config_invalid error=\"" << s.message() << "\"";
    return 2;
  }
  // Signals arrive through a signalfd the accept loop polls; blocked before any thread starts so
  // every thread inherits the mask.
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGTERM);
  sigaddset(&mask, SIGINT);
  pthread_sigmask(SIG_BLOCK, &mask, nullptr);
  kvtier::UniqueFd stop(::signalfd(-1, &mask, SFD_CLOEXEC));
  if (!stop.valid()) {
    std::perror("kvtierd: signalfd");
    return 1;
  }
  if (absl::Status s = kvtier::EnsureDataDir(config->data_dir); !s.ok()) {
    LOG(ERROR) << "event=data_dir_failed error=\"" << s.ToString() << "\"";
    return 1;
  }
  // Before anything else is opened: a second kvtierd on the same data stops here, never reaching
  // the first one's NVMe index or socket. The locks last as long as the process.
  std::vector<kvtier::UniqueFd> locks;
  uint64_t index_secret = 0;
  if (absl::Status s = kvtier::LockDaemonData(*config, locks, index_secret); !s.ok()) {
    LOG(ERROR) << "event=data_dir_failed error=\"" << s.message() << "\"";
    return 1;
  }
  kvtier::StoreOptions options;
  options.page_bytes = config->store.page_bytes;
  // Checked at start (config.cc): the product fits 32 bits.
  options.hbm.slots = static_cast<uint32_t>(config->store.hbm_slots());
  options.hbm_devices.assign(config->store.hbm_devices.begin(), config->store.hbm_devices.end());
  if (!options.hbm_devices.empty()) options.cuda_device = options.hbm_devices.front();
  options.dram.slots = config->store.dram_pages;
  options.hbm_backend = *kvtier::ParseHbmBackend(config->store.hbm_backend);
  options.sink_tokens = config->store.sink_tokens;
  options.tokens_per_page = config->store.tokens_per_page;
  options.index_key_secret = index_secret;
  // Metrics outlive the store, the server and the HTTP endpoint that read them (declared first).
  kvtier::metrics::Registry registry;
  kvtier::NvmeIoMetrics nvme_io_metrics(registry);
  kvtier::StoreParts parts;
  // Validated at start (config.cc), so this cannot fail here. StreamingLLM's sink pages are the
  // store's: the same token counts.
  kvtier::PolicyConfig policy_config;
  policy_config.streaming.sink_tokens = config->store.sink_tokens;
  policy_config.streaming.tokens_per_page = config->store.tokens_per_page;
  parts.policy = *kvtier::MakePolicy(config->store.policy, policy_config);
#if defined(KVTIER_HAVE_CUDA_KERNELS)
  // On a GPU the copy engine is CUDA's (gather/scatter kernels or copy engines, chosen by
  // measurement), which is what lets hbm_backend=auto pick real HBM. Without one, or if it cannot
  // start, the CPU engine serves and HBM is host-emulated: said once here, and on /metrics.
  if (config->store.hbm_backend != "host-emulated" && kvtier::CudaDeviceAvailable()) {
    kvtier::CudaCopyEngineOptions engine_options;
    engine_options.device = options.cuda_device;
    engine_options.kernel.sm_budget = config->gpu.sm_budget;
    engine_options.device_to_device_sm_budget = config->gpu.device_to_device_sm_budget;
    absl::StatusOr<std::unique_ptr<kvtier::CudaCopyEngine>> engine =
        kvtier::CudaCopyEngine::Create(engine_options);
    if (engine.ok()) {
      parts.copy_engine = *std::move(engine);
      // Each other GPU with an HBM pool gets an engine of its own: its kernels run there.
      for (int device : options.hbm_devices) {
        if (device == options.cuda_device || parts.hbm_engines.contains(device)) continue;
        engine_options.device = device;
        engine = kvtier::CudaCopyEngine::Create(engine_options);
        if (!engine.ok()) {
          LOG(ERROR) << "event=cuda_copy_engine_failed device=" << device << " error=\""
                     << engine.status().ToString() << "\"";
          return 1;
        }
        parts.hbm_engines[device] = *std::move(engine);
      }
    } else {
      LOG(WARNING) << "event=cuda_copy_engine_unavailable fallback=cpu error=\""
                   << engine.status().ToString() << "\"";
    }
  }
#endif
  if (config->nvme.enabled()) {
    kvtier::NvmeFaultInjector* faults =
        hooks.nvme_fault_injector ? hooks.nvme_fault_injector(*config) : nullptr;
    absl::StatusOr<std::unique_ptr<kvtier::TierBackend>> nvme = kvtier::MakeNvmeBackend(
        config->nvme, config->store.page_bytes, &nvme_io_metrics, &registry, faults);
    if (!nvme.ok()) {
      LOG(ERROR) << "event=nvme_failed error=\"" << nvme.status().message() << "\"";
      return 2;
    }
    parts.nvme = *std::move(nvme);
  }
  absl::StatusOr<std::unique_ptr<kvtier::TieredStore>> store =
      kvtier::TieredStore::Create(options, std::move(parts));
  if (!store.ok()) {
    LOG(ERROR) << "event=store_failed error=\"" << store.status().ToString() << "\"";
    return 1;
  }
  kvtier::BindStoreMetrics(registry, **store);
  kvtier::DaemonMetrics daemon_metrics(registry);
  absl::StatusOr<std::unique_ptr<kvtier::Server>> server =
      kvtier::Server::Create(*config, **store, &daemon_metrics);
  if (!server.ok()) {
    LOG(ERROR) << "event=server_failed error=\"" << server.status().ToString() << "\"";
    return 1;
  }
  std::unique_ptr<kvtier::AdminHttpServer> http;
  // The cluster node starts after the HTTP endpoint (it advertises the port); /readyz reads it.
  std::atomic<kvtier::ClusterNode*> cluster_ready{nullptr};
  if (!config->http_address.empty()) {
    kvtier::AdminHttpOptions http_options;
    http_options.address = config->http_address;
    http_options.ready_detail = [&cluster_ready] {
      kvtier::ClusterNode* c = cluster_ready.load(std::memory_order_acquire);
      return c != nullptr ? c->ReadinessDetail() : std::string();
    };
    absl::StatusOr<std::unique_ptr<kvtier::AdminHttpServer>> started =
        kvtier::AdminHttpServer::Start(http_options, &registry, nullptr);
    if (!started.ok()) {
      LOG(ERROR) << "event=http_failed http_address=" << config->http_address << " error=\""
                 << started.status().ToString() << "\"";
      return 1;
    }
    http = *std::move(started);
    LOG(INFO) << "event=http_listening url=http://" << config->http_address
              << "/metrics port=" << http->port();
  }
  std::unique_ptr<kvtier::ClusterNode> cluster;
  if (config->cluster.enabled) {
    absl::StatusOr<std::unique_ptr<kvtier::ClusterNode>> started =
        kvtier::ClusterNode::Start(*config, **store, &registry, http ? http->port() : 0);
    if (!started.ok()) {
      LOG(ERROR) << "event=cluster_failed error=\"" << started.status().ToString() << "\"";
      return 1;
    }
    cluster = *std::move(started);
    cluster_ready.store(cluster.get(), std::memory_order_release);
    kvtier::SetActiveClusterPages(cluster.get());
  }
  const kvtier::TieredStore::SharedPool pool = (*store)->dram_pool();
  LOG(INFO) << "event=serving socket=" << config->socket_path << " pid=" << ::getpid()
            << " hbm_pages=" << config->store.hbm_pages
            << " hbm_pools=" << (*store)->hbm_pools().size()
            << " hbm_backend=" << (*store)->hbm_backend() << " dram_pages=" << pool.slots
            << " page_bytes=" << options.page_bytes << " policy=" << (*store)->policy_name()
            << " nvme=" << ((*store)->has_tier(kvtier::Tier::kNvme) ? 1 : 0);
  absl::Status served = (*server)->Serve(stop.get());
  http.reset();  // stop scrapes before the store they read goes away
  server->reset();
  kvtier::SetActiveClusterPages(nullptr);  // no worker thread is left to call it
  cluster.reset();
  store->reset();
  if (!served.ok()) {
    LOG(ERROR) << "event=serve_failed error=\"" << served.ToString() << "\"";
    return 1;
  }
  LOG(INFO) << "event=shutdown clean=1";
  return 0;
}

}  // namespace

int kvtier::KvtierdMain(int argc, char** argv, const KvtierdHooks& hooks) {
  absl::SetProgramUsageMessage("kvtierd: node-local KV-cache tiering daemon");
  absl::ParseCommandLine(argc, argv);
  // glog: leveled lines ("I1124 16:58:34.123456 407 server.cc:170] event=session_open ...") on
  // stderr, where systemd's journal and `kubectl logs` collect them.
  FLAGS_logtostderr = true;
  const std::string level = absl::GetFlag(FLAGS_log_level);
  if (level == "info") {
    FLAGS_minloglevel = google::GLOG_INFO;
  } else if (level == "warning") {
    FLAGS_minloglevel = google::GLOG_WARNING;
  } else if (level == "error") {
    FLAGS_minloglevel = google::GLOG_ERROR;
  } else {
    std::fprintf(stderr, "kvtierd: --log_level must be info, warning or error, not '%s'\n",
                 level.c_str());
    return 2;
  }
  google::InitGoogleLogging("kvtierd");
  return Run(hooks);
}
