// kvtierctl: the operator's and benchmarker's tool. One table of commands; each is a function
// over its own arguments (argv[0] is the command name).
#include <cstdio>
#include <cstring>

#include "client/kvtierctl/rpc_commands.h"

namespace {

struct Command {
  const char* name;
  const char* summary;
  int (*run)(int, char**);
};

constexpr Command kCommands[] = {
    {"status", "daemon version, backends and tier occupancy", kvtier::ctl::RunStatus},
    {"stats", "daemon counters (sessions, pins, errors, hits)", kvtier::ctl::RunStats},
    {"bench", "bench rpc [--json]: lookup latency and throughput vs Redis", kvtier::ctl::RunBench},
};

int Usage() {
  std::fprintf(stderr,
               "usage: kvtierctl <command> [args]   (--socket PATH, default "
               "kvtier-data/kvtierd.sock)\n");
  for (const Command& c : kCommands) std::fprintf(stderr, "  %-8s %s\n", c.name, c.summary);
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) return Usage();
  for (const Command& c : kCommands) {
    if (std::strcmp(argv[1], c.name) == 0) return c.run(argc - 1, argv + 1);
  }
  return Usage();
}
