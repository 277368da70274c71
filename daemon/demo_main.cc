// kvtier-demo: drives a prefix-reuse workload through kvtier's tiers and prints what landed where.
// With --socket it is a worker of a running kvtierd (the README's first command, scripts/demo);
// without, it runs the store in-process.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "daemon/client_workload.h"
#include "daemon/workload.h"
#include "tiering/tiered_store.h"

ABSL_FLAG(std::string, trace, "",
          "Mooncake-format trace (JSON lines) to replay instead of the "
          "generated workload");
ABSL_FLAG(uint32_t, requests, 2000, "requests in the generated workload");
ABSL_FLAG(uint64_t, page_bytes, uint64_t{64} * 1024,
          "bytes per page (scaled down from 2 MiB for a laptop)");
ABSL_FLAG(uint32_t, hbm_pages, 256, "HBM tier slots (host-emulated without a GPU)");
ABSL_FLAG(uint32_t, dram_pages, 1024, "DRAM tier slots");
ABSL_FLAG(uint32_t, sink_slots, 16, "reserved HBM sink slots for the demo namespace");
ABSL_FLAG(std::string, hbm_backend, "auto", "auto, cuda or host-emulated");
ABSL_FLAG(std::string, socket, "",
          "drive the workload through the kvtierd serving this socket "
          "instead of an in-process store");
ABSL_FLAG(uint32_t, worker_index, 0, "with --socket: this worker's index among --workers");
ABSL_FLAG(uint32_t, workers, 1, "with --socket: worker processes sharing the workload");

namespace {

std::vector<kvtier::MooncakeRequest> LoadRequests(std::string& source) {
  using namespace kvtier;
  if (const std::string path = absl::GetFlag(FLAGS_trace); !path.empty()) {
    absl::StatusOr<std::vector<MooncakeRequest>> trace = ReadMooncakeTraceFile(path);
    if (!trace.ok()) {
      std::fprintf(stderr, "error: %s\n", trace.status().ToString().c_str());
      std::exit(1);
    }
    source = path;
    return *std::move(trace);
  }
  GeneratedWorkloadOptions gen;
  gen.requests = absl::GetFlag(FLAGS_requests);
  source = "generated";
  return GenerateWorkload(gen);
}

int RunThroughDaemon() {
  using namespace kvtier;
  std::string source;
  const std::vector<MooncakeRequest> requests = LoadRequests(source);
  ClientReplayOptions o;
  o.socket_path = absl::GetFlag(FLAGS_socket);
  o.worker_index = absl::GetFlag(FLAGS_worker_index);
  o.workers = std::max(1u, absl::GetFlag(FLAGS_workers));
  absl::StatusOr<ReplayStats> stats = ReplayThroughDaemon(o, requests);
  if (!stats.ok()) {
    std::fprintf(stderr, "worker %u: error: %s\n", o.worker_index,
                 stats.status().ToString().c_str());
    return 1;
  }
  std::printf(
      "worker %u/%u via kvtierd: %llu requests from %s, blocks %llu, prefix hits %llu "
      "(%.1f%%), stored %llu, verified %.1f MiB, mismatches %llu\n",
      o.worker_index, o.workers, static_cast<unsigned long long>(stats->requests), source.c_str(),
      static_cast<unsigned long long>(stats->blocks),
      static_cast<unsigned long long>(stats->hit_blocks),
      stats->blocks ? 100.0 * stats->hit_blocks / stats->blocks : 0.0,
      static_cast<unsigned long long>(stats->stored_blocks), stats->verified_bytes / 1048576.0,
      static_cast<unsigned long long>(stats->mismatches));
  return stats->mismatches == 0 ? 0 : 3;
}

int Run() {
  using namespace kvtier;
  if (!absl::GetFlag(FLAGS_socket).empty()) return RunThroughDaemon();
  absl::StatusOr<HbmBackend> backend = ParseHbmBackend(absl::GetFlag(FLAGS_hbm_backend));
  if (!backend.ok()) {
    std::fprintf(stderr, "error: %s\n", backend.status().ToString().c_str());
    return 2;
  }
  StoreOptions options;
  options.page_bytes = absl::GetFlag(FLAGS_page_bytes);
  options.hbm.slots = absl::GetFlag(FLAGS_hbm_pages);
  options.dram.slots = absl::GetFlag(FLAGS_dram_pages);
  options.hbm_backend = *backend;
  // Trace blocks are 512 tokens: the first page of every sequence holds the attention sinks.
  options.tokens_per_page = 512;
  absl::StatusOr<std::unique_ptr<TieredStore>> store = TieredStore::Create(options);
  if (!store.ok()) {
    std::fprintf(stderr, "error: %s\n", store.status().ToString().c_str());
    return 1;
  }
  absl::StatusOr<NamespaceId> ns =
      (*store)->AddNamespace("demo-model/demo-tenant", absl::GetFlag(FLAGS_sink_slots));
  if (!ns.ok()) {
    std::fprintf(stderr, "error: %s\n", ns.status().ToString().c_str());
    return 1;
  }
  std::vector<MooncakeRequest> requests;
  std::string source = "generated";
  if (const std::string path = absl::GetFlag(FLAGS_trace); !path.empty()) {
    absl::StatusOr<std::vector<MooncakeRequest>> trace = ReadMooncakeTraceFile(path);
    if (!trace.ok()) {
      std::fprintf(stderr, "error: %s\n", trace.status().ToString().c_str());
      return 1;
    }
    requests = *std::move(trace);
    source = path;
  } else {
    GeneratedWorkloadOptions gen;
    gen.requests = absl::GetFlag(FLAGS_requests);
    requests = GenerateWorkload(gen);
  }
  std::printf("kvtier demo: %zu requests from %s; HBM backend %s; policy %s; page %llu bytes\n",
              requests.size(), source.c_str(), std::string((*store)->hbm_backend()).c_str(),
              std::string((*store)->policy_name()).c_str(),
              static_cast<unsigned long long>(options.page_bytes));
  absl::StatusOr<ReplayStats> stats = ReplayPrefixWorkload(**store, *ns, requests, 16);
  if (!stats.ok()) {
    std::fprintf(stderr, "error: %s\n", stats.status().ToString().c_str());
    return 1;
  }
  const StoreCounters c = (*store)->Counters();
  std::printf(
      "blocks %llu, prefix hits %llu (%.1f%%), stored %llu, verified %.1f MiB, "
      "mismatches %llu\n",
      static_cast<unsigned long long>(stats->blocks),
      static_cast<unsigned long long>(stats->hit_blocks),
      stats->blocks ? 100.0 * stats->hit_blocks / stats->blocks : 0.0,
      static_cast<unsigned long long>(stats->stored_blocks), stats->verified_bytes / 1048576.0,
      static_cast<unsigned long long>(stats->mismatches));
  std::printf("%-5s %-14s %9s %9s %7s %9s %9s %9s %9s\n", "tier", "backend", "capacity", "pages",
              "sinks", "semantic", "unknown", "hits", "evicted");
  for (Tier t : kAllTiers) {
    const TierUsage u = (*store)->Usage(t);
    if (!u.present) continue;
    uint64_t evicted = 0;
    for (uint64_t e : c.evictions[TierIndex(t)]) evicted += e;
    std::printf("%-5s %-14s %9u %9u %7u %9u %9u %9llu %9llu\n", std::string(TierName(t)).c_str(),
                u.backend.c_str(), u.capacity_slots, u.used_slots,
                u.pages_by_class[static_cast<int>(PageClass::kSink)],
                u.pages_by_class[static_cast<int>(PageClass::kSemantic)],
                u.pages_by_class[static_cast<int>(PageClass::kUnknown)],
                static_cast<unsigned long long>(c.hits[TierIndex(t)]),
                static_cast<unsigned long long>(evicted));
  }
  std::printf("migrations hbm->dram %llu, dram->hbm %llu; sink slots %u/%u used\n",
              static_cast<unsigned long long>(c.migrations[0][1]),
              static_cast<unsigned long long>(c.migrations[1][0]),
              (*store)->Usage(Tier::kHbm).sink_used_slots,
              (*store)->Usage(Tier::kHbm).sink_reserved_slots);
  return stats->mismatches == 0 ? 0 : 3;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("Drives a prefix-reuse workload through kvtier's tiers.");
  absl::ParseCommandLine(argc, argv);
  return Run();
}
