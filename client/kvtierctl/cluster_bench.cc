// `kvtierctl bench cluster`: remote page fetch between two real kvtierd nodes (a real etcd on
// loopback, the UCX transport the flags name), beside ucx_perftest's RMA get of the same size
// on the same transport, in one run. Two kvtier figures: a worker's Load of one 2 MiB page that
// only the other node holds (lookup at its home, fetch lease, RMA get into the worker's block,
// checksum), and Loads of --batch such pages at once (one lookup per home and one lease per
// holder for the batch, the gets in flight together, each page verified as the next moves).
// Over shared memory (--tls sm) a holder copies each page into staging slots UCX allocated in
// its shared-memory domain, and the reader's get is a memcpy from there (UCX's sysv/posix lane),
// as ucx_perftest's is from the buffer it allocates the same way. The contenders run in
// alternating rounds (--rounds), and medians are reported, with the median of per-round ratios.
//
//   kvtierctl bench cluster [--json] [--pages N] [--iterations N] [--rounds N] [--batch N]
//                           [--tls tcp|sm] [--kvtierd BIN] [--mooncake_python PY]
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "client/client.h"
#include "client/kvtierctl/commands.h"

namespace kvtier::ctl {
namespace {

struct ClusterArgs {
  bool json = false;
  uint32_t pages = 32;
  uint32_t iterations = 200;
  uint32_t batch = 16;  // pages per Load in the batch figure
  uint32_t rounds = 5;  // alternating rounds of every contender; medians are reported
  uint64_t page_bytes = 2 << 20;
  std::string tls = "tcp";
  std::string kvtierd;
  // Python with PyPI mooncake-transfer-engine-non-cuda installed: runs
  // bench/cluster/mooncake_bench.py in the same run. Empty: Mooncake is left out.
  std::string mooncake_python;
  std::string mooncake_script = std::string(KVTIER_SOURCE_DIR) + "/bench/cluster/mooncake_bench.py";
};

struct MooncakeFigures {
  bool ok = false;
  double gb_s = 0, p50_us = 0, p99_us = 0;
};

double JsonNumber(const std::string& json, const std::string& key) {
  const size_t at = json.find("\"" + key + "\": ");
  double v = 0;
  if (at == std::string::npos) return 0;
  const size_t start = at + key.size() + 4;
  const size_t end = json.find_first_of(",}", start);
  return absl::SimpleAtod(json.substr(start, end - start), &v) ? v : 0;
}

int FreePort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(a);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    ::close(fd);
    return 0;
  }
  ::close(fd);
  return ntohs(a.sin_port);
}

// A child process, killed and reaped when this goes out of scope.
class Child {
 public:
  Child(std::vector<std::string> args, const std::string& log) {
    pid_ = ::fork();
    if (pid_ == 0) {
      if (std::freopen(log.c_str(), "w", stdout) == nullptr) ::_exit(126);
      if (std::freopen(log.c_str(), "a", stderr) == nullptr) ::_exit(126);
      std::vector<char*> argv;
      argv.reserve(args.size() + 1);
      for (std::string& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      ::execvp(argv[0], argv.data());
      ::_exit(127);
    }
  }
  ~Child() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGTERM);
    int status;
    ::waitpid(pid_, &status, 0);
  }
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;

 private:
  pid_t pid_ = -1;
};

std::string RunCapture(const std::string& cmd) {
  std::string out;
  FILE* p = ::popen(cmd.c_str(), "r");
  if (p == nullptr) return out;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
  ::pclose(p);
  return out;
}

double Percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(q * static_cast<double>(v.size())))];
}

struct Figures {
  double gb_s = 0, p50_us = 0, p99_us = 0;
};

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 == 1 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

// Each figure's median over rounds, taken separately.
Figures MedianFigures(const std::vector<Figures>& v) {
  std::vector<double> g, p50, p99;
  for (const Figures& f : v) {
    g.push_back(f.gb_s);
    p50.push_back(f.p50_us);
    p99.push_back(f.p99_us);
  }
  return {Median(g), Median(p50), Median(p99)};
}

// ucx_perftest ucp_get of `bytes` on `tls` over loopback: overall MB/s and p50 latency (us).
bool UcxPerftest(const ClusterArgs& a, const std::string& tls, double* mb_s, double* p50_us) {
  const int port = FreePort();
  const std::string env = absl::StrCat("UCX_TLS=", tls, ",self UCX_NET_DEVICES=lo ");
  const std::string server =
      absl::StrCat(env, "timeout 120 ucx_perftest -p ", port, " >/dev/null 2>&1 &");
  if (std::system(server.c_str()) != 0) return false;
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  const std::string out = RunCapture(absl::StrCat(env, "timeout 120 ucx_perftest 127.0.0.1 -p ",
                                                  port, " -t ucp_get -s ", a.page_bytes, " -n ",
                                                  a.iterations, " -w 10 2>&1"));
  for (absl::string_view line : absl::StrSplit(out, '\n')) {
    if (!absl::StartsWith(line, "Final:")) continue;
    std::vector<absl::string_view> f = absl::StrSplit(line, ' ', absl::SkipEmpty());
    // Final: iters p50 lat_avg lat_overall bw_avg bw_overall rate_avg rate_overall
    if (f.size() >= 7 && absl::SimpleAtod(f[2], p50_us) && absl::SimpleAtod(f[6], mb_s)) {
      return true;
    }
  }
  std::fprintf(stderr, "bench cluster: ucx_perftest gave no Final line:\n%s\n", out.c_str());
  return false;
}

// Mooncake Store's get_into between two processes over TCP (bench/cluster/mooncake_bench.py).
MooncakeFigures Mooncake(const ClusterArgs& a) {
  MooncakeFigures m;
  if (a.mooncake_python.empty()) return m;
  const std::string bin = std::filesystem::path(a.mooncake_python).parent_path().string();
  const std::string out = RunCapture(
      absl::StrCat("PATH=", bin, ":$PATH timeout 300 ", a.mooncake_python, " ", a.mooncake_script,
                   " --iterations ", a.iterations, " --page-bytes ", a.page_bytes, " 2>/dev/null"));
  const size_t line = out.find("{\"bench\": \"mooncake_get_into\"");
  if (line == std::string::npos) {
    std::fprintf(stderr, "bench cluster: the Mooncake run printed no result:\n%s\n", out.c_str());
    return m;
  }
  const std::string j = out.substr(line, out.find('\n', line) - line);
  m.gb_s = JsonNumber(j, "gb_s");
  m.p50_us = JsonNumber(j, "p50_us");
  m.p99_us = JsonNumber(j, "p99_us");
  m.ok = m.gb_s > 0;
  return m;
}

int Run(const ClusterArgs& a) {
  char tmpl[] = "/tmp/kvtier-bench-cluster-XXXXXX";
  if (::mkdtemp(tmpl) == nullptr) return 1;
  const std::string dir = tmpl;
  const int client_port = FreePort(), peer_port = FreePort();
  const std::string etcd_url = absl::StrCat("http://127.0.0.1:", client_port);
  const std::string etcd_peer = absl::StrCat("http://127.0.0.1:", peer_port);
  int rc = 1;
  {
    Child etcd({"etcd", "--name=bench", "--data-dir=" + dir + "/etcd",
                "--listen-client-urls=" + etcd_url, "--advertise-client-urls=" + etcd_url,
                "--listen-peer-urls=" + etcd_peer, "--initial-advertise-peer-urls=" + etcd_peer,
                "--initial-cluster=bench=" + etcd_peer, "--logger=zap", "--log-level=error"},
               dir + "/etcd.log");
    std::vector<std::unique_ptr<Child>> nodes;
    std::vector<std::string> sockets;
    const uint32_t dram_pages = a.pages + 16;
    for (const char* id : {"a", "b"}) {
      const std::string d = absl::StrCat(dir, "/", id);
      std::filesystem::create_directories(d);
      const std::string yaml = absl::StrCat(
          "data_dir: ", d, "\nsocket_path: ", d,
          "/sock\nhttp_address: ''\nstore:\n  page_bytes: ", a.page_bytes,
          "\n  hbm_pages: 0\n  dram_pages: ", dram_pages,
          "\nnamespaces:\n  - name: \"*\"\n    sink_slots: 0\ncluster:\n  enabled: true\n"
          "  node_id: bench-",
          id, "\n  etcd_endpoints: [", etcd_url,
          "]\n  lease_ttl_s: 5\n  listen_address: 127.0.0.1:0\n  advertise_host: 127.0.0.1\n"
          "  ucx_net_devices: lo\n  ucx_tls: ",
          // Peers connect through UCX's TCP connection manager, so tcp stays listed; UCX then
          // moves page bytes over the fastest transport listed (sm: CMA on one host).
          a.tls == "tcp" ? "tcp" : a.tls + ",tcp",
          ",self\n  replicate_after_remote_reads: 0\n  push_below_free_fraction: 0\n");
      std::ofstream(d + "/kvtierd.yaml") << yaml;
      nodes.push_back(std::make_unique<Child>(
          std::vector<std::string>{a.kvtierd, "--config", d + "/kvtierd.yaml"},
          d + "/kvtierd.log"));
      sockets.push_back(d + "/sock");
    }
    auto connect = [&](const std::string& sock) -> std::unique_ptr<Client> {
      for (int i = 0; i < 300; ++i) {
        if (auto c = Client::Connect(sock); c.ok()) return *std::move(c);
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      }
      return nullptr;
    };
    std::unique_ptr<Client> ca = connect(sockets[0]), cb = connect(sockets[1]);
    absl::StatusOr<LayoutSpec> spec = FlatLayoutFor(a.page_bytes, std::max(8u, a.batch + 1));
    absl::StatusOr<Layout> layout = spec.ok() ? Layout::Create(*spec) : spec.status();
    if (ca == nullptr || cb == nullptr || !layout.ok()) {
      std::fprintf(stderr, "bench cluster: daemons did not start (logs in %s)\n", dir.c_str());
      return 1;
    }
    const std::string ns = "bench/cluster";
    absl::StatusOr<HelloInfo> ha = ca->Hello(ns, *spec), hb = cb->Hello(ns, *spec);
    absl::StatusOr<WorkerBuffers> ba = WorkerBuffers::Create(*layout),
                                  bb = WorkerBuffers::Create(*layout);
    if (!ha.ok() || !hb.ok() || !ba.ok() || !bb.ok() ||
        !ca->RegisterBuffers(ba->fds(), ba->sizes()).ok() ||
        !cb->RegisterBuffers(bb->fds(), bb->sizes()).ok()) {
      std::fprintf(stderr, "bench cluster: handshake failed\n");
      return 1;
    }
    const uint64_t seed = std::random_device{}();
    std::mt19937_64 rng(seed);
    std::vector<PageKey> keys(a.pages);
    std::vector<std::vector<std::byte>> images(a.pages, std::vector<std::byte>(a.page_bytes));
    for (uint32_t i = 0; i < a.pages; ++i) {
      keys[i] = PageKey{rng(), rng()};
      for (auto& b : images[i]) b = static_cast<std::byte>(rng());
      if (!ba->WriteBlock(*layout, 0, images[i]).ok()) return 1;
      StoreHints hints;
      hints.first_position = 1000;  // not sinks by position
      absl::StatusOr<OpHandle> op = ca->StoreAsync({&keys[i], 1}, {0u}, hints);
      if (!op.ok() || !ca->Wait(*op).ok()) return 1;
    }
    // Until B's lookups see every page at a peer (membership and directory settle).
    bool visible = false;
    for (int i = 0; i < 300 && !visible; ++i) {
      absl::StatusOr<LookupReply> r = cb->Lookup(keys);
      visible = r.ok() && r->prefix_pages == a.pages;
      if (!visible) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    if (!visible) {
      std::fprintf(stderr, "bench cluster: B never saw A's pages (logs in %s)\n", dir.c_str());
      return 1;
    }
    if (!a.json) {
      std::printf(
          "bench cluster: %u rounds of %u remote loads of %llu-byte pages over UCX %s (seed "
          "%llu)\n",
          a.rounds, a.iterations, static_cast<unsigned long long>(a.page_bytes), a.tls.c_str(),
          static_cast<unsigned long long>(seed));
      std::fflush(stdout);
    }
    // Loads of `batch` pages each (keys in order, wrapping), into blocks 1..batch, until
    // `iterations` pages moved; every page is compared byte for byte once (that check is not
    // timed). Returns GB/s and the per-Load latencies.
    std::vector<std::byte> got(a.page_bytes);
    auto measure = [&](uint32_t batch) -> std::optional<Figures> {
      const uint32_t loads = std::max(1u, a.iterations / batch), warmup = 10;
      std::vector<double> lat_us;
      std::vector<PageKey> k(batch);
      std::vector<uint32_t> blocks(batch);
      for (uint32_t j = 0; j < batch; ++j) blocks[j] = 1 + j;
      auto t0 = std::chrono::steady_clock::now();
      double check_secs = 0;
      for (uint32_t i = 0; i < warmup + loads; ++i) {
        if (i == warmup) t0 = std::chrono::steady_clock::now();
        for (uint32_t j = 0; j < batch; ++j) k[j] = keys[(i * batch + j) % a.pages];
        const auto s = std::chrono::steady_clock::now();
        absl::StatusOr<OpHandle> op = cb->LoadAsync(k, blocks);
        absl::StatusOr<PageResults> r = op.ok() ? cb->Wait(*op) : op.status();
        const auto e = std::chrono::steady_clock::now();
        if (!r.ok() || r->ok_pages != batch) {
          std::fprintf(stderr, "bench cluster: remote load %u of %u pages failed (%u ok)\n", i,
                       batch, r.ok() ? r->ok_pages : 0);
          return std::nullopt;
        }
        for (uint32_t j = 0; j < batch; ++j) {
          if (r->tiers[j] != static_cast<Tier>(3)) {
            std::fprintf(stderr, "bench cluster: page %u of load %u was not remote\n", j, i);
            return std::nullopt;
          }
          const uint32_t p = (i * batch + j) % a.pages;
          if (i * batch + j < a.pages) {  // every page checked once, byte for byte
            if (!bb->ReadBlock(*layout, blocks[j], absl::MakeSpan(got)).ok() ||
                std::memcmp(got.data(), images[p].data(), a.page_bytes) != 0) {
              std::fprintf(stderr, "bench cluster: page %u differs after a remote load\n", p);
              return std::nullopt;
            }
          }
        }
        if (i >= warmup) {
          lat_us.push_back(std::chrono::duration<double, std::micro>(e - s).count());
          check_secs += std::chrono::duration<double>(std::chrono::steady_clock::now() - e).count();
        }
      }
      const double secs =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() - check_secs;
      Figures f;
      f.gb_s = static_cast<double>(a.page_bytes) * batch * loads / secs / 1e9;
      f.p50_us = Percentile(lat_us, 0.5);
      f.p99_us = Percentile(lat_us, 0.99);
      return f;
    };
    // Rounds alternate the contenders (kvtier 1 page, kvtier a batch, ucx_perftest, Mooncake),
    // so a noisy moment on a shared machine lands in one round of each, not on one contender;
    // medians and the median of per-round ratios are reported.
    std::vector<Figures> one, many, perf, mc;
    std::vector<double> r_one_perf, r_many_perf, r_one_mc, r_many_mc;
    for (uint32_t round = 0; round < a.rounds; ++round) {
      const std::optional<Figures> o = measure(1);
      const std::optional<Figures> m = o.has_value() ? measure(a.batch) : std::nullopt;
      if (!o.has_value() || !m.has_value()) return 1;
      one.push_back(*o);
      many.push_back(*m);
      double perf_mb_s = 0, perf_p50 = 0;
      if (UcxPerftest(a, a.tls, &perf_mb_s, &perf_p50)) {
        perf.push_back({perf_mb_s * 1024 * 1024 / 1e9, perf_p50, 0});  // its MB is MiB
        r_one_perf.push_back(o->gb_s / perf.back().gb_s);
        r_many_perf.push_back(m->gb_s / perf.back().gb_s);
      }
      const MooncakeFigures f = Mooncake(a);
      if (f.ok) {
        mc.push_back({f.gb_s, f.p50_us, f.p99_us});
        r_one_mc.push_back(o->gb_s / f.gb_s);
        r_many_mc.push_back(m->gb_s / f.gb_s);
      }
      if (!a.json) {
        std::printf(
            "  round %u: kvtier %.3f GB/s (1 page), %.3f GB/s (%u pages); ucx_perftest %s;"
            " Mooncake %s\n",
            round + 1, o->gb_s, m->gb_s, a.batch,
            perf.size() == round + 1 ? absl::StrFormat("%.3f GB/s", perf.back().gb_s).c_str()
                                     : "did not run",
            mc.size() == round + 1 ? absl::StrFormat("%.3f GB/s", mc.back().gb_s).c_str()
                                   : "not run");
        std::fflush(stdout);
      }
    }
    const Figures one_m = MedianFigures(one), many_m = MedianFigures(many),
                  perf_m = MedianFigures(perf), mc_m = MedianFigures(mc);
    const double ratio_one_perf = Median(r_one_perf), ratio_many_perf = Median(r_many_perf);
    const double ratio_one_mc = Median(r_one_mc), ratio_many_mc = Median(r_many_mc);
    utsname u{};
    ::uname(&u);
    if (a.json) {
      auto rounds = [](const std::vector<Figures>& v) {
        std::string out = "[";
        for (size_t i = 0; i < v.size(); ++i) {
          absl::StrAppend(&out, i ? "," : "", absl::StrFormat("%.4f", v[i].gb_s));
        }
        return out + "]";
      };
      const std::string mc_json =
          mc.empty() ? "null"
                     : absl::StrFormat(
                           "{\"protocol\":\"tcp\",\"gb_s\":%.4f,\"p50_us\":%.1f,\"p99_us\":%.1f,"
                           "\"rounds_gb_s\":%s}",
                           mc_m.gb_s, mc_m.p50_us, mc_m.p99_us, rounds(mc));
      std::printf(
          "{\"bench\":\"cluster\",\"machine\":\"%s %s\",\"cpus\":%u,\"tls\":\"%s\","
          "\"page_bytes\":%llu,\"iterations\":%u,\"rounds\":%u,\"seed\":%llu,"
          "\"kvtier_remote_fetch\":{\"gb_s\":%.4f,\"p50_us\":%.1f,\"p99_us\":%.1f,"
          "\"rounds_gb_s\":%s},"
          "\"kvtier_remote_fetch_batch\":{\"pages_per_load\":%u,\"gb_s\":%.4f,"
          "\"p50_us_per_load\":%.1f,\"p99_us_per_load\":%.1f,\"rounds_gb_s\":%s},"
          "\"ucx_perftest_get\":{\"ok\":%s,\"gb_s\":%.4f,\"p50_us\":%.1f,\"rounds_gb_s\":%s},"
          "\"ratio_kvtier_over_ucx_perftest\":%.3f,\"ratio_kvtier_batch_over_ucx_perftest\":%.3f,"
          "\"mooncake_get_into\":%s,"
          "\"ratio_kvtier_over_mooncake\":%.3f,\"ratio_kvtier_batch_over_mooncake\":%.3f}\n",
          u.nodename, u.release, std::thread::hardware_concurrency(), a.tls.c_str(),
          static_cast<unsigned long long>(a.page_bytes), a.iterations, a.rounds,
          static_cast<unsigned long long>(seed), one_m.gb_s, one_m.p50_us, one_m.p99_us,
          rounds(one).c_str(), a.batch, many_m.gb_s, many_m.p50_us, many_m.p99_us,
          rounds(many).c_str(), perf.empty() ? "false" : "true", perf_m.gb_s, perf_m.p50_us,
          rounds(perf).c_str(), ratio_one_perf, ratio_many_perf, mc_json.c_str(), ratio_one_mc,
          ratio_many_mc);
    } else {
      std::printf("  medians of %u rounds:\n", a.rounds);
      std::printf("  kvtier remote fetch : %.3f GB/s, p50 %.0f us, p99 %.0f us (1 page a Load)\n",
                  one_m.gb_s, one_m.p50_us, one_m.p99_us);
      std::printf(
          "  kvtier remote fetch : %.3f GB/s, p50 %.0f us, p99 %.0f us a Load (%u pages a "
          "Load)\n",
          many_m.gb_s, many_m.p50_us, many_m.p99_us, a.batch);
      std::printf("  ucx_perftest ucp_get: %.3f GB/s, p50 %.0f us%s\n", perf_m.gb_s, perf_m.p50_us,
                  perf.empty() ? " (did not run)" : "");
      if (!perf.empty()) {
        std::printf(
            "  ratio kvtier / ucx_perftest (median of rounds): %.3f (1 page), %.3f (%u "
            "pages)\n",
            ratio_one_perf, ratio_many_perf, a.batch);
      }
      if (!mc.empty()) {
        std::printf("  Mooncake get_into   : %.3f GB/s, p50 %.0f us, p99 %.0f us (TCP)\n",
                    mc_m.gb_s, mc_m.p50_us, mc_m.p99_us);
        std::printf(
            "  ratio kvtier / Mooncake (median of rounds): %.2f (1 page), %.2f (%u "
            "pages)\n",
            ratio_one_mc, ratio_many_mc, a.batch);
      } else {
        std::printf("  Mooncake get_into   : not run (--mooncake_python PYTHON)\n");
      }
    }
    rc = 0;
  }
  std::error_code ec;
  if (std::getenv("KVTIER_BENCH_KEEP") == nullptr) std::filesystem::remove_all(dir, ec);
  return rc;
}

}  // namespace

int RunBenchCluster(int argc, char** argv) {
  ClusterArgs a;
  a.kvtierd = (std::filesystem::path(std::filesystem::read_symlink("/proc/self/exe"))
                   .parent_path()
                   .parent_path() /
               "daemon" / "kvtierd")
                  .string();
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto next = [&]() -> const char* { return i + 1 < argc ? argv[++i] : ""; };
    if (arg == "--json") {
      a.json = true;
    } else if ((arg == "--pages" && absl::SimpleAtoi(next(), &a.pages) && a.pages > 0) ||
               (arg == "--iterations" && absl::SimpleAtoi(next(), &a.iterations) &&
                a.iterations > 0) ||
               (arg == "--rounds" && absl::SimpleAtoi(next(), &a.rounds) && a.rounds > 0 &&
                a.rounds <= 100) ||
               (arg == "--batch" && absl::SimpleAtoi(next(), &a.batch) && a.batch > 0 &&
                a.batch <= 256) ||
               (arg == "--page-bytes" && absl::SimpleAtoi(next(), &a.page_bytes))) {
      // parsed into `a`
    } else if (arg == "--tls") {
      a.tls = next();
    } else if (arg == "--kvtierd") {
      a.kvtierd = next();
    } else if (arg == "--mooncake_python") {
      a.mooncake_python = next();
    } else {
      std::fprintf(
          stderr,
          "usage: kvtierctl bench cluster [--json] [--pages N] [--iterations N] [--rounds N] "
          "[--batch N] [--page-bytes N] [--tls tcp|sm] [--kvtierd BIN] [--mooncake_python PY]\n");
      return 2;
    }
  }
  return Run(a);
}

}  // namespace kvtier::ctl
