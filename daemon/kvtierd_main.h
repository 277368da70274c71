// kvtierd's body as a function, so that test binaries can run the real daemon with hooks no
// config key reaches (RocksDB's db_stress links FaultInjectionTestFS the same way: into the test
// tool, never into the product). kvtierd itself (kvtierd.cc) passes no hooks.
#pragma once

#include <functional>

#include "daemon/config.h"
#include "tiering/nvme/nvme_tier.h"

namespace kvtier {

struct KvtierdHooks {
  // Tests only. Called once, with the validated config, before the NVMe tier is built (only when
  // it is enabled); the injector returned (may be null) sees every NVMe I/O and must outlive
  // KvtierdMain. Default: none.
  std::function<NvmeFaultInjector*(const DaemonConfig&)> nvme_fault_injector;
};

// Parses argv (absl flags: kvtierd's and any the calling binary defines), sets up logging, and
// runs the daemon until SIGTERM or SIGINT. Returns the process exit status.
int KvtierdMain(int argc, char** argv, const KvtierdHooks& hooks = {});

}  // namespace kvtier
