// libFuzzer target over kvtierd's config parser (daemon/config.cc): any bytes as the --config
// file must give a config or an error that names a key, never a crash or an exception. A config
// that parses and validates must print (ConfigToYaml, what --print_config shows) as YAML that
// reads back to the same config (field for field, not only to the same text).
//
// Short fixed run in CI (scripts/test); longer on demand (scripts/fuzz):
//   build-fuzz/tests/fuzz/kvtier_config_fuzz -max_total_time=600 tests/fuzz/config_corpus
#include <cstddef>
#include <cstdint>
#include <string>

#include "daemon/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string yaml(reinterpret_cast<const char*>(data), size);
  kvtier::DaemonConfig config;
  if (!kvtier::ApplyConfigYaml(yaml, config).ok()) return 0;
  if (!kvtier::ValidateConfig(config).ok()) return 0;
  const std::string printed = kvtier::ConfigToYaml(config);
  kvtier::DaemonConfig again;
  if (!kvtier::ApplyConfigYaml(printed, again).ok()) __builtin_trap();
  if (kvtier::ConfigToYaml(again) != printed) __builtin_trap();
  // Nothing is dropped or changed on the way: the config read back equals the one printed.
  if (!(again == config)) __builtin_trap();
  return 0;
}
