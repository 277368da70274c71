// status, stats and `bench rpc`: kvtierctl commands that talk to a running kvtierd.
#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/client.h"
#include "client/kvtierctl/commands.h"
#include "client/kvtierctl/nvme_bench.h"
#include "client/kvtierctl/redis_baseline.h"

namespace kvtier::ctl {
namespace {

struct Args {
  std::string socket;
  bool json = false;
  uint32_t iterations = 5000;
  uint64_t seed = 0;
  std::string redis = "redis-server";
  uint32_t spin_us = 50;  // the client library's default
  // status / stats give up on a daemon that does not answer within this (0: wait forever).
  uint32_t timeout_ms = 10000;
  std::vector<std::string> positional;
};

bool ParseArgs(int argc, char** argv, Args& a) {
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&](std::string& out) {
      if (i + 1 >= argc) return false;
      out = argv[++i];
      return true;
    };
    std::string v;
    if (arg == "--socket") {
      if (!value(a.socket)) return false;
    } else if (arg == "--json") {
      a.json = true;
    } else if (arg == "--iterations") {
      if (!value(v) || !absl::SimpleAtoi(v, &a.iterations) || a.iterations == 0) return false;
    } else if (arg == "--seed") {
      if (!value(v) || !absl::SimpleAtoi(v, &a.seed)) return false;
    } else if (arg == "--spin_us") {
      if (!value(v) || !absl::SimpleAtoi(v, &a.spin_us)) return false;
    } else if (arg == "--timeout_ms") {
      if (!value(v) || !absl::SimpleAtoi(v, &a.timeout_ms)) return false;
    } else if (arg == "--redis_server") {
      if (!value(a.redis)) return false;
    } else if (!arg.empty() && arg[0] == '-') {
      std::fprintf(stderr, "kvtierctl: unknown option %s\n", arg.c_str());
      return false;
    } else {
      a.positional.push_back(arg);
    }
  }
  return true;
}

// A client for status / stats: connected, with the command's deadline on every call.
absl::StatusOr<std::unique_ptr<Client>> ConnectForQuery(const Args& a) {
  absl::StatusOr<std::unique_ptr<Client>> c = Client::Connect(a.socket);
  if (c.ok() && a.timeout_ms > 0) (*c)->set_call_timeout(absl::Milliseconds(a.timeout_ms));
  return c;
}

int Fail(const absl::Status& s) {
  std::fprintf(stderr, "kvtierctl: %s\n", s.ToString().c_str());
  return 1;
}

void PrintTiers(const google::protobuf::RepeatedPtrField<wire::TierStatus>& tiers) {
  std::printf("%-5s %-14s %9s %9s %11s %10s %10s\n", "tier", "backend", "capacity", "used",
              "sink slots", "hits", "evictions");
  for (const wire::TierStatus& t : tiers) {
    std::printf("%-5s %-14s %9u %9u %5u/%-5u %10llu %10llu\n", t.tier().c_str(),
                t.backend().c_str(), t.capacity_slots(), t.used_slots(), t.sink_used_slots(),
                t.sink_reserved_slots(), static_cast<unsigned long long>(t.hits()),
                static_cast<unsigned long long>(t.evictions()));
    if (t.pools_size() < 2) continue;
    for (int p = 0; p < t.pools_size(); ++p) {
      std::printf("  pool %d on GPU %d: %u of %u slots used\n", p, t.pools(p).device(),
                  t.pools(p).used_slots(), t.pools(p).capacity_slots());
    }
  }
}

}  // namespace

int RunStatus(int argc, char** argv) {
  Args a;
  if (!ParseArgs(argc, argv, a)) return 2;
  absl::StatusOr<std::unique_ptr<Client>> c = ConnectForQuery(a);
  if (!c.ok()) return Fail(c.status());
  absl::StatusOr<wire::StatusReply> s = (*c)->Status();
  if (!s.ok()) return Fail(s.status());
  std::printf("%s (protocol %u), pid %u, up %.1f s, socket %s\n", s->version().c_str(),
              s->protocol_version(), s->pid(), s->uptime_ms() / 1000.0, s->socket_path().c_str());
  std::printf("HBM backend %s, policy %s, page %llu bytes, %u namespaces\n",
              s->hbm_backend().c_str(), s->policy().c_str(),
              static_cast<unsigned long long>(s->page_bytes()), s->namespaces());
  PrintTiers(s->tiers());
  return 0;
}

int RunStats(int argc, char** argv) {
  Args a;
  if (!ParseArgs(argc, argv, a)) return 2;
  absl::StatusOr<std::unique_ptr<Client>> c = ConnectForQuery(a);
  if (!c.ok()) return Fail(c.status());
  absl::StatusOr<wire::StatsReply> s = (*c)->Stats();
  if (!s.ok()) return Fail(s.status());
  if (a.json) {
    std::string json;
    // A flat machine-readable line for scripts (tests poll it for leaks).
    absl::StrAppend(
        &json, "{\"pages\":", s->pages(), ",\"sessions\":", s->sessions(),
        ",\"pinned_pages\":", s->pinned_pages(), ",\"inflight_ops\":", s->inflight_ops(),
        ",\"registered_buffers\":", s->registered_buffers(),
        ",\"connections_total\":", s->connections_total(), ",\"auth_refused\":", s->auth_refused(),
        ",\"bad_requests\":", s->bad_requests(), ",\"leases_expired\":", s->leases_expired(),
        ",\"ops_cancelled\":", s->ops_cancelled(), ",\"lookups\":", s->lookups(),
        ",\"loads\":", s->loads(), ",\"stores\":", s->stores(),
        ",\"registered_bytes\":", s->registered_bytes(),
        ",\"connections_refused\":", s->connections_refused(),
        ",\"connection_failures\":", s->connection_failures(),
        ",\"output_overflows\":", s->output_overflows(),
        ",\"hello_timeouts\":", s->hello_timeouts(),
        ",\"log_lines_suppressed\":", s->log_lines_suppressed(), "}");
    std::printf("%s\n", json.c_str());
    return 0;
  }
  std::printf("pages %llu, puts %llu (duplicates %llu), misses %llu\n",
              static_cast<unsigned long long>(s->pages()),
              static_cast<unsigned long long>(s->puts()),
              static_cast<unsigned long long>(s->put_duplicates()),
              static_cast<unsigned long long>(s->misses()));
  std::printf("sessions %u, pinned pages %u, in-flight ops %u, registered buffers %u\n",
              s->sessions(), s->pinned_pages(), s->inflight_ops(), s->registered_buffers());
  std::printf(
      "connections %llu, auth refused %llu, bad requests %llu, closed untrusted %llu, "
      "leases expired %llu, ops cancelled %llu\n",
      static_cast<unsigned long long>(s->connections_total()),
      static_cast<unsigned long long>(s->auth_refused()),
      static_cast<unsigned long long>(s->bad_requests()),
      static_cast<unsigned long long>(s->connections_closed_untrusted()),
      static_cast<unsigned long long>(s->leases_expired()),
      static_cast<unsigned long long>(s->ops_cancelled()));
  std::printf(
      "lookups %llu, loads %llu, stores %llu\n", static_cast<unsigned long long>(s->lookups()),
      static_cast<unsigned long long>(s->loads()), static_cast<unsigned long long>(s->stores()));
  std::printf(
      "registered bytes %llu; connections refused %llu, failed %llu, cut off for unread replies "
      "%llu, closed without Hello %llu; log lines suppressed %llu\n",
      static_cast<unsigned long long>(s->registered_bytes()),
      static_cast<unsigned long long>(s->connections_refused()),
      static_cast<unsigned long long>(s->connection_failures()),
      static_cast<unsigned long long>(s->output_overflows()),
      static_cast<unsigned long long>(s->hello_timeouts()),
      static_cast<unsigned long long>(s->log_lines_suppressed()));
  PrintTiers(s->tiers());
  return 0;
}

// ---- bench rpc ----
namespace {

constexpr size_t kBenchPages = 256;
constexpr uint32_t kWarmup = 200;

struct Latency {
  double p50_us = 0, p99_us = 0;
};

Latency Percentiles(std::vector<double>& us) {
  std::sort(us.begin(), us.end());
  return {us[us.size() / 2], us[std::min(us.size() - 1, us.size() * 99 / 100)]};
}

// One system under test: a per-thread connection and one batched lookup of n keys.
struct Target {
  virtual ~Target() = default;
  // Opens a connection for one thread; returns a function that does one lookup of n keys.
  virtual absl::StatusOr<std::function<absl::Status(size_t n)>> Open() = 0;
};

struct KvtierTarget : Target {
  std::string socket;
  std::string ns;
  LayoutSpec layout;
  std::vector<PageKey> keys;
  uint32_t spin_us = 50;
  absl::StatusOr<std::function<absl::Status(size_t)>> Open() override {
    absl::StatusOr<std::unique_ptr<Client>> c = Client::Connect(socket);
    if (!c.ok()) return c.status();
    (*c)->set_spin_wait_us(spin_us);
    if (absl::StatusOr<HelloInfo> h = (*c)->Hello(ns, layout); !h.ok()) return h.status();
    std::shared_ptr<Client> client = *std::move(c);
    return std::function<absl::Status(size_t)>([client, this](size_t n) -> absl::Status {
      absl::StatusOr<LookupReply> r = client->Lookup(absl::MakeConstSpan(keys.data(), n));
      if (!r.ok()) return r.status();
      if (r->prefix_pages != n) {
        return absl::InternalError(absl::StrCat("lookup found ", r->prefix_pages, " of ", n));
      }
      return absl::OkStatus();
    });
  }
};

struct RedisTarget : Target {
  std::string socket;
  std::vector<std::string> keys;
  absl::StatusOr<std::function<absl::Status(size_t)>> Open() override {
    absl::StatusOr<std::unique_ptr<RedisConnection>> c = RedisConnection::Connect(socket);
    if (!c.ok()) return c.status();
    std::shared_ptr<RedisConnection> conn = *std::move(c);
    auto args = std::make_shared<std::vector<absl::string_view>>();
    return std::function<absl::Status(size_t)>([conn, args, this](size_t n) -> absl::Status {
      args->assign(1, "MGET");
      for (size_t i = 0; i < n; ++i) args->push_back(keys[i]);
      absl::StatusOr<size_t> got = conn->Command(*args);
      if (!got.ok()) return got.status();
      if (*got != n) return absl::InternalError(absl::StrCat("MGET found ", *got, " of ", n));
      return absl::OkStatus();
    });
  }
};

absl::StatusOr<Latency> MeasureLatency(Target& t, size_t batch, uint32_t iterations) {
  absl::StatusOr<std::function<absl::Status(size_t)>> op = t.Open();
  if (!op.ok()) return op.status();
  std::vector<double> us;
  us.reserve(iterations);
  for (uint32_t i = 0; i < kWarmup + iterations; ++i) {
    const auto start = std::chrono::steady_clock::now();
    if (absl::Status s = (*op)(batch); !s.ok()) return s;
    const auto end = std::chrono::steady_clock::now();
    if (i >= kWarmup) us.push_back(std::chrono::duration<double, std::micro>(end - start).count());
  }
  return Percentiles(us);
}

// Lookups per second with `threads` connections each doing `per_thread` lookups of `batch` keys.
absl::StatusOr<double> MeasureThroughput(Target& t, size_t batch, uint32_t threads,
                                         uint32_t per_thread) {
  std::vector<std::function<absl::Status(size_t)>> ops;
  for (uint32_t i = 0; i < threads; ++i) {
    absl::StatusOr<std::function<absl::Status(size_t)>> op = t.Open();
    if (!op.ok()) return op.status();
    ops.push_back(*std::move(op));
  }
  std::vector<absl::Status> results(threads);
  std::vector<std::thread> workers;
  const auto start = std::chrono::steady_clock::now();
  for (uint32_t i = 0; i < threads; ++i) {
    workers.emplace_back([&, i] {
      for (uint32_t k = 0; k < per_thread && results[i].ok(); ++k) results[i] = ops[i](batch);
    });
  }
  for (std::thread& w : workers) w.join();
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  for (const absl::Status& s : results) {
    if (!s.ok()) return s;
  }
  return threads * static_cast<double>(per_thread) / secs;
}

struct Figures {
  Latency lat1, lat256;
  double tput1 = 0, tput8 = 0;          // batch-1 lookups/s
  double tput1_256 = 0, tput8_256 = 0;  // batch-256 lookups/s
};

absl::StatusOr<Figures> Measure(Target& t, uint32_t iterations) {
  Figures f;
  absl::StatusOr<Latency> l = MeasureLatency(t, 1, iterations);
  if (!l.ok()) return l.status();
  f.lat1 = *l;
  l = MeasureLatency(t, kBenchPages, iterations);
  if (!l.ok()) return l.status();
  f.lat256 = *l;
  // Throughput runs use the same total count with 1 and 8 threads, long enough (~1 s) that one
  // scheduling hiccup of a shared machine does not decide the figure.
  const uint32_t ops1 = 20 * iterations, ops256 = 4 * iterations;
  absl::StatusOr<double> x = MeasureThroughput(t, 1, 1, ops1);
  if (!x.ok()) return x.status();
  f.tput1 = *x;
  x = MeasureThroughput(t, 1, 8, ops1 / 8);
  if (!x.ok()) return x.status();
  f.tput8 = *x;
  x = MeasureThroughput(t, kBenchPages, 1, ops256);
  if (!x.ok()) return x.status();
  f.tput1_256 = *x;
  x = MeasureThroughput(t, kBenchPages, 8, ops256 / 8);
  if (!x.ok()) return x.status();
  f.tput8_256 = *x;
  return f;
}

std::string FiguresJson(const Figures& f) {
  return absl::StrCat(
      "{\"lookup_batch1_p50_us\":", f.lat1.p50_us, ",\"lookup_batch1_p99_us\":", f.lat1.p99_us,
      ",\"lookup_batch256_p50_us\":", f.lat256.p50_us,
      ",\"lookup_batch256_p99_us\":", f.lat256.p99_us,
      ",\"lookups_per_s_batch1_threads1\":", static_cast<uint64_t>(f.tput1),
      ",\"lookups_per_s_batch1_threads8\":", static_cast<uint64_t>(f.tput8),
      ",\"lookups_per_s_batch256_threads1\":", static_cast<uint64_t>(f.tput1_256),
      ",\"lookups_per_s_batch256_threads8\":", static_cast<uint64_t>(f.tput8_256), "}");
}

int RunBenchRpc(const Args& a) {
  uint64_t seed = a.seed;
  if (seed == 0) seed = std::random_device{}() | 1;
  std::fprintf(stderr, "bench rpc: seed %llu, %u iterations per measurement\n",
               static_cast<unsigned long long>(seed), a.iterations);
  absl::StatusOr<std::unique_ptr<Client>> c = Client::Connect(a.socket);
  if (!c.ok()) return Fail(c.status());
  absl::StatusOr<wire::StatusReply> status = (*c)->Status();
  if (!status.ok()) return Fail(status.status());
  absl::StatusOr<LayoutSpec> spec = FlatLayoutFor(status->page_bytes(), kBenchPages);
  if (!spec.ok()) return Fail(spec.status());
  absl::StatusOr<Layout> layout = Layout::Create(*spec);
  if (!layout.ok()) return Fail(layout.status());
  // One namespace for every run (keys differ by seed): a namespace holds reserved sink slots until
  // the daemon restarts, so a namespace per run would use up HBM's reserve over many runs.
  const std::string ns = "kvtierctl-bench";
  absl::StatusOr<HelloInfo> hello = (*c)->Hello(ns, *spec);
  if (!hello.ok()) return Fail(hello.status());
  absl::StatusOr<WorkerBuffers> buffers = WorkerBuffers::Create(*layout);
  if (!buffers.ok()) return Fail(buffers.status());
  if (absl::Status s = (*c)->RegisterBuffers(buffers->fds(), buffers->sizes()); !s.ok()) {
    return Fail(s);
  }
  // 256 pages of random tokens and random bytes, stored once; every lookup must find all.
  std::mt19937_64 rng(seed);
  std::vector<int32_t> tokens(kBenchPages * spec->tokens_per_page);
  for (int32_t& t : tokens) t = static_cast<int32_t>(rng() % 128000);
  KvtierTarget kv;
  kv.socket = a.socket;
  kv.ns = ns;
  kv.layout = *spec;
  kv.spin_us = a.spin_us;
  kv.keys = ChainKeys(hello->salt, tokens, spec->tokens_per_page);
  std::vector<std::byte> page(layout->page_bytes());
  std::vector<uint32_t> blocks(kBenchPages);
  for (uint32_t b = 0; b < kBenchPages; ++b) {
    for (std::byte& x : page) x = static_cast<std::byte>(rng());
    if (absl::Status s = buffers->WriteBlock(*layout, b, page); !s.ok()) return Fail(s);
    blocks[b] = b;
  }
  absl::StatusOr<OpHandle> op = (*c)->StoreAsync(kv.keys, blocks);
  if (!op.ok()) return Fail(op.status());
  absl::StatusOr<PageResults> stored = (*c)->Wait(*op);
  if (!stored.ok()) return Fail(stored.status());
  if (stored->ok_pages != kBenchPages) {
    return Fail(absl::InternalError(absl::StrCat("stored ", stored->ok_pages, " of ", kBenchPages,
                                                 " pages: ", stored->first_error)));
  }

  absl::StatusOr<std::unique_ptr<RedisServer>> redis = RedisServer::Start(a.redis);
  if (!redis.ok()) return Fail(redis.status());
  RedisTarget rt;
  rt.socket = (*redis)->socket_path();
  {
    absl::StatusOr<std::unique_ptr<RedisConnection>> rc = RedisConnection::Connect(rt.socket);
    if (!rc.ok()) return Fail(rc.status());
    for (size_t i = 0; i < kBenchPages; ++i) {
      rt.keys.push_back(kv.keys[i].ToHex());
      // The value is what a kvtier lookup answers per page: its tier.
      const absl::string_view set[] = {"SET", rt.keys.back(), "1"};
      if (absl::StatusOr<size_t> r = (*rc)->Command(set); !r.ok()) return Fail(r.status());
    }
  }

  absl::StatusOr<Figures> kf = Measure(kv, a.iterations);
  if (!kf.ok()) return Fail(kf.status());
  absl::StatusOr<Figures> rf = Measure(rt, a.iterations);
  if (!rf.ok()) return Fail(rf.status());
  redis->reset();

  utsname u{};
  ::uname(&u);
  const unsigned cpus = std::thread::hardware_concurrency();
  const std::string when = absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", absl::Now(), absl::UTCTimeZone());
  const double r_p99_256 = rf->lat256.p99_us / kf->lat256.p99_us;
  const double r_t1 = kf->tput1 / rf->tput1, r_t8 = kf->tput8 / rf->tput8;
  const double r_t1_256 = kf->tput1_256 / rf->tput1_256, r_t8_256 = kf->tput8_256 / rf->tput8_256;
  if (a.json) {
    std::printf(
        "%s\n",
        absl::StrCat("{\"bench\":\"rpc\",\"date\":\"", when, "\",\"machine\":\"", u.nodename, " ",
                     u.machine, " ", cpus, " cpus\",\"seed\":", seed, ",\"iterations\":",
                     a.iterations, ",\"client_spin_us\":", a.spin_us, ",\"keys_per_batch\":[1,256]",
                     ",\"kvtier\":", FiguresJson(*kf), ",\"redis\":", FiguresJson(*rf),
                     ",\"ratios_kvtier_over_redis\":{\"lookups_per_s_batch1_threads1\":", r_t1,
                     ",\"lookups_per_s_batch1_threads8\":", r_t8,
                     ",\"lookups_per_s_batch256_threads1\":", r_t1_256,
                     ",\"lookups_per_s_batch256_threads8\":", r_t8_256,
                     ",\"batch256_p99_redis_over_kvtier\":", r_p99_256, "}}")
            .c_str());
  } else {
    std::printf("bench rpc on %s (%u cpus), %s, %u iterations, seed %llu, client spin %u us\n",
                u.nodename, cpus, when.c_str(), a.iterations, static_cast<unsigned long long>(seed),
                a.spin_us);
    std::printf("%-34s %12s %12s %8s\n", "", "kvtier", "redis", "ratio");
    auto row = [](const char* name, double k, double r, double ratio) {
      std::printf("%-34s %12.1f %12.1f %8.2f\n", name, k, r, ratio);
    };
    row("lookup 1 key p50 (us)", kf->lat1.p50_us, rf->lat1.p50_us,
        rf->lat1.p50_us / kf->lat1.p50_us);
    row("lookup 1 key p99 (us)", kf->lat1.p99_us, rf->lat1.p99_us,
        rf->lat1.p99_us / kf->lat1.p99_us);
    row("lookup 256 keys p50 (us)", kf->lat256.p50_us, rf->lat256.p50_us,
        rf->lat256.p50_us / kf->lat256.p50_us);
    row("lookup 256 keys p99 (us)", kf->lat256.p99_us, rf->lat256.p99_us, r_p99_256);
    row("lookups/s, 1 key, 1 thread", kf->tput1, rf->tput1, r_t1);
    row("lookups/s, 1 key, 8 threads", kf->tput8, rf->tput8, r_t8);
    row("lookups/s, 256 keys, 1 thread", kf->tput1_256, rf->tput1_256, r_t1_256);
    row("lookups/s, 256 keys, 8 threads", kf->tput8_256, rf->tput8_256, r_t8_256);
    std::printf(
        "(latency ratio: redis/kvtier; throughput ratio: kvtier/redis; > 1 favours "
        "kvtier)\n");
  }
  return 0;
}

}  // namespace

int RunBench(int argc, char** argv) {
  // `bench nvme` has its own flags (client/kvtierctl/nvme_bench.h); argv[0] becomes "nvme".
  if (argc >= 2 && std::strcmp(argv[1], "nvme") == 0) return RunBenchNvme(argc - 1, argv + 1);
  if (argc >= 2 && std::strcmp(argv[1], "cluster") == 0) return RunBenchCluster(argc - 1, argv + 1);
  Args a;
  if (!ParseArgs(argc, argv, a) || a.positional.empty() || a.positional[0] != "rpc") {
    std::fprintf(stderr,
                 "usage: kvtierctl bench rpc [--json] [--iterations N] [--seed S] "
                 "[--socket PATH] [--redis_server BIN] [--spin_us N]\n"
                 "       kvtierctl bench nvme --dir D [--page-bytes N] [--queue-depth N] "
                 "[--seconds S] [--json]\n");
    return 2;
  }
  return RunBenchRpc(a);
}

}  // namespace kvtier::ctl
