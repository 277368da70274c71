// kvtierd: the node-local KV-cache tiering daemon. Loads its options (embedded default, then
// --config, then flags), validates them once, builds the TieredStore and serves workers on a Unix
// socket until SIGTERM or SIGINT, then shuts down cleanly (exit status 0).
#include <signal.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "client/unique_fd.h"
#include "daemon/config.h"
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
  if (absl::Status s = kvtier::ValidateConfig(config); !s.ok()) return s;
  return config;
}

int Run() {
  absl::StatusOr<DaemonConfig> config = LoadConfig();
  if (!config.ok()) {
    std::fprintf(stderr, "kvtierd: config: %s\n", std::string(config.status().message()).c_str());
    return 2;
  }
  if (absl::GetFlag(FLAGS_print_config)) {
    std::printf("%s\n", kvtier::ConfigToYaml(*config).c_str());
    return 0;
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
    std::fprintf(stderr, "kvtierd: %s\n", s.ToString().c_str());
    return 1;
  }
  kvtier::StoreOptions options;
  options.page_bytes = config->store.page_bytes;
  options.hbm.slots = config->store.hbm_pages;
  options.dram.slots = config->store.dram_pages;
  options.hbm_backend = *kvtier::ParseHbmBackend(config->store.hbm_backend);
  options.sink_tokens = config->store.sink_tokens;
  options.tokens_per_page = config->store.tokens_per_page;
  // Metrics outlive the store, the server and the HTTP endpoint that read them (declared first).
  kvtier::metrics::Registry registry;
  kvtier::NvmeIoMetrics nvme_io_metrics(registry);
  kvtier::StoreParts parts;
  // Validated at start (config.cc), so this cannot fail here.
  parts.policy = *kvtier::MakePolicy(config->store.policy);
#if defined(KVTIER_HAVE_CUDA_KERNELS)
  // On a GPU the copy engine is CUDA's (gather/scatter kernels or copy engines, chosen by
  // measurement), which is what lets hbm_backend=auto pick real HBM. Without one, or if it cannot
  // start, the CPU engine serves and HBM is host-emulated: said once here, and on /metrics.
  if (config->store.hbm_backend != "host-emulated" && kvtier::CudaDeviceAvailable()) {
    absl::StatusOr<std::unique_ptr<kvtier::CudaCopyEngine>> engine =
        kvtier::CudaCopyEngine::Create();
    if (engine.ok()) {
      parts.copy_engine = *std::move(engine);
    } else {
      std::fprintf(stderr, "kvtierd: CUDA copy engine unavailable, using the CPU one: %s\n",
                   engine.status().ToString().c_str());
    }
  }
#endif
  if (config->nvme.enabled()) {
    absl::StatusOr<std::unique_ptr<kvtier::TierBackend>> nvme = kvtier::MakeNvmeBackend(
        config->nvme, config->store.page_bytes, &nvme_io_metrics, &registry);
    if (!nvme.ok()) {
      std::fprintf(stderr, "kvtierd: %s\n", std::string(nvme.status().message()).c_str());
      return 2;
    }
    parts.nvme = *std::move(nvme);
  }
  absl::StatusOr<std::unique_ptr<kvtier::TieredStore>> store =
      kvtier::TieredStore::Create(options, std::move(parts));
  if (!store.ok()) {
    std::fprintf(stderr, "kvtierd: store: %s\n", store.status().ToString().c_str());
    return 1;
  }
  kvtier::BindStoreMetrics(registry, **store);
  kvtier::DaemonMetrics daemon_metrics(registry);
  absl::StatusOr<std::unique_ptr<kvtier::Server>> server =
      kvtier::Server::Create(*config, **store, &daemon_metrics);
  if (!server.ok()) {
    std::fprintf(stderr, "kvtierd: %s\n", server.status().ToString().c_str());
    return 1;
  }
  std::unique_ptr<kvtier::AdminHttpServer> http;
  if (!config->http_address.empty()) {
    kvtier::AdminHttpOptions http_options;
    http_options.address = config->http_address;
    absl::StatusOr<std::unique_ptr<kvtier::AdminHttpServer>> started =
        kvtier::AdminHttpServer::Start(http_options, &registry, nullptr);
    if (!started.ok()) {
      std::fprintf(stderr, "kvtierd: http_address: %s\n", started.status().ToString().c_str());
      return 1;
    }
    http = *std::move(started);
    std::fprintf(stderr, "kvtierd: metrics on http://%s/metrics (port %d)\n",
                 config->http_address.c_str(), http->port());
  }
  const kvtier::TieredStore::SharedPool pool = (*store)->dram_pool();
  std::fprintf(stderr,
               "kvtierd: serving %s (pid %d); HBM %u pages on backend %s, DRAM %u pages (memfd "
               "shared with workers), %llu bytes a page, policy %s\n",
               config->socket_path.c_str(), static_cast<int>(::getpid()), config->store.hbm_pages,
               std::string((*store)->hbm_backend()).c_str(), pool.slots,
               static_cast<unsigned long long>(options.page_bytes),
               std::string((*store)->policy_name()).c_str());
  absl::Status served = (*server)->Serve(stop.get());
  http.reset();  // stop scrapes before the store they read goes away
  server->reset();
  store->reset();
  if (!served.ok()) {
    std::fprintf(stderr, "kvtierd: %s\n", served.ToString().c_str());
    return 1;
  }
  std::fprintf(stderr, "kvtierd: shut down cleanly\n");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("kvtierd: node-local KV-cache tiering daemon");
  absl::ParseCommandLine(argc, argv);
  return Run();
}
