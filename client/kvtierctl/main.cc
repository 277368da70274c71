// kvtierctl: the operator's tool. A table of subcommands; each lives in its own file.
#include <cstdio>
#include <cstring>

#include "client/kvtierctl/commands.h"

namespace {

struct Command {
  const char* name;
  const char* summary;
  int (*run)(int argc, char** argv);
};

// One line per command.
constexpr Command kCommands[] = {
    {"status",
     "daemon version, backends and tier occupancy (--socket PATH, --timeout_ms N: default 10000)",
     kvtier::ctl::RunStatus},
    {"stats",
     "daemon counters: sessions, pins, errors, hits (--socket PATH, --json, --timeout_ms N)",
     kvtier::ctl::RunStats},
    {"bench",
     "bench rpc [--json]: lookup latency and throughput against Redis; "
     "bench nvme --dir D [--json]: NVMe tier throughput and read latency",
     kvtier::ctl::RunBench},
    {"sim", "replay a trace through the tiered store under each placement policy",
     kvtier::ctl::SimCommand},
    {"gen-attention", "write a synthetic decode-attention trace for `sim --format attention`",
     kvtier::ctl::GenAttentionCommand},
    {"gen-prefix", "write a generated prefix-reuse trace (sessions, system prompts, API calls)",
     kvtier::ctl::GenPrefixCommand},
};

int Usage(FILE* out) {
  std::fprintf(out, "usage: kvtierctl <command> [flags]   (kvtierctl <command> --help)\n\n");
  for (const Command& c : kCommands) std::fprintf(out, "  %-12s %s\n", c.name, c.summary);
  return out == stdout ? 0 : 2;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) return Usage(stderr);
  if (std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "help") == 0) {
    return Usage(stdout);
  }
  for (const Command& c : kCommands) {
    if (std::strcmp(argv[1], c.name) == 0) return c.run(argc - 1, argv + 1);
  }
  std::fprintf(stderr, "kvtierctl: unknown command '%s'\n", argv[1]);
  return Usage(stderr);
}
