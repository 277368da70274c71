// Three real kvtierd nodes and a real etcd on loopback, each daemon with its own socket, data
// directory, HTTP port and UCX listener; real worker processes store and load pages through
// them. Nothing is mocked.
//
//   A, B serve every namespace; C serves only "shared/*".
//   - a page stored through A loads bit-identical through C (the worker checks every byte);
//   - a namespace C does not serve ("private/*") is fetched by B, never by C, and A lends C none;
//   - A killed with SIGKILL: B and C keep serving, A's pages are misses, new pages flow B -> C;
//   - etcd stopped: B and C say so (metric, /readyz) and keep serving locally; etcd restarted:
//     both are back in the member list.
//
// Waits poll for a state with a generous deadline; nothing depends on how fast a step is.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "client/client.h"
#include "tests/integration/daemon_harness.h"
#include "transport/etcd_client.h"
#include "transport/membership.h"

namespace kvtier {
namespace {

using testing::DaemonProcess;
using testing::RunWorker;

int FreePort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a));
  socklen_t len = sizeof(a);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(fd);
  return ntohs(a.sin_port);
}

// GET http://host:port/path; the body, or "" when nothing answered.
std::string HttpGet(int port, const std::string& path, const std::string& host = "127.0.0.1") {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  ::inet_pton(AF_INET, host.c_str(), &a.sin_addr);
  a.sin_port = htons(static_cast<uint16_t>(port));
  std::string out;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0) {
    const std::string req = absl::StrCat("GET ", path, " HTTP/1.0\r\nHost: x\r\n\r\n");
    if (::write(fd, req.data(), req.size()) == static_cast<ssize_t>(req.size())) {
      char buf[65536];
      ssize_t n;
      while ((n = ::read(fd, buf, sizeof(buf))) > 0) out.append(buf, n);
    }
  }
  ::close(fd);
  const size_t body = out.find("\r\n\r\n");
  return body == std::string::npos ? "" : out.substr(body + 4);
}

// Value of one sample (`name` with its labels, as exposed) or -1 when absent.
double Metric(int port, const std::string& sample, const std::string& host = "127.0.0.1") {
  for (absl::string_view line : absl::StrSplit(HttpGet(port, "/metrics", host), '\n')) {
    if (absl::StartsWith(line, sample + " ")) {
      double v = 0;
      if (absl::SimpleAtod(line.substr(sample.size() + 1), &v)) return v;
    }
  }
  return -1;
}

bool WaitFor(const std::function<bool()>& done, int seconds = 30) {
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
  while (std::chrono::steady_clock::now() < until) {
    if (done()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return done();
}

class EtcdProcess {
 public:
  explicit EtcdProcess(std::string host = "127.0.0.1") : host_(std::move(host)) {
    char tmpl[] = "/tmp/kvtier-etcd-XXXXXX";
    dir_ = ::mkdtemp(tmpl);
    client_port_ = FreePort();
    peer_port_ = FreePort();
  }
  ~EtcdProcess() {
    Stop();
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  std::string endpoint() const { return absl::StrCat("http://", host_, ":", client_port_); }
  bool Start() {
    const std::string client = endpoint();
    const std::string peer = absl::StrCat("http://", host_, ":", peer_port_);
    std::vector<std::string> args = {"etcd",
                                     "--name=kvtier-test",
                                     "--data-dir=" + dir_ + "/data",
                                     "--listen-client-urls=" + client,
                                     "--advertise-client-urls=" + client,
                                     "--listen-peer-urls=" + peer,
                                     "--initial-advertise-peer-urls=" + peer,
                                     "--initial-cluster=kvtier-test=" + peer,
                                     "--logger=zap",
                                     "--log-level=error"};
    const std::string log = dir_ + "/etcd.log";
    pid_ = ::fork();
    if (pid_ == 0) {
      // etcd's own lines go to its log file, not the test's output.
      if (FILE* f = std::freopen(log.c_str(), "a", stderr); f == nullptr) ::_exit(126);
      std::vector<char*> argv;
      for (std::string& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      ::execvp("etcd", argv.data());
      ::_exit(127);
    }
    auto etcd = EtcdClient::Create({{client}, absl::Seconds(1)});
    return WaitFor([&] { return (*etcd)->GetPrefix("/").ok(); }, 20);
  }
  void Stop() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGTERM);
    int status;
    ::waitpid(pid_, &status, 0);
    pid_ = -1;
  }

 private:
  std::string host_;
  std::string dir_;
  int client_port_, peer_port_;
  pid_t pid_ = -1;
};

struct Node {
  std::string id;
  std::optional<DaemonProcess> daemon;
  int http_port = 0;
};

// Waits until every one of `nodes` is listed under `prefix`members/ in etcd (learning its HTTP
// port there) and each counts all of them in its `kvtier_cluster_members` metric.
bool WaitForMembers(const std::string& etcd_endpoint, const std::string& prefix,
                    std::vector<Node>& nodes) {
  auto client = *EtcdClient::Create({{etcd_endpoint}, absl::Seconds(2)});
  return WaitFor([&] {
    absl::StatusOr<EtcdClient::Range> r = client->GetPrefix(prefix + "members/");
    if (!r.ok() || r->kvs.size() != nodes.size()) return false;
    for (const auto& [k, v] : r->kvs) {
      absl::StatusOr<MemberInfo> m = MemberInfo::FromJson(v);
      if (!m.ok()) return false;
      for (Node& n : nodes) {
        if (n.id == m->node_id) n.http_port = m->http_port;
      }
    }
    for (const Node& n : nodes) {
      if (Metric(n.http_port, "kvtier_cluster_members") != static_cast<double>(nodes.size())) {
        return false;
      }
    }
    return true;
  });
}

std::string NodeYaml(const std::string& id, const std::string& etcd, const std::string& prefix,
                     const std::string& namespaces, int replicate_after,
                     const std::string& host = "127.0.0.1", const std::string& devices = "lo",
                     const std::string& tls = "tcp,sm,self") {
  return absl::StrCat("http_address: ", host, R"(:0
store:
  page_bytes: 32768
  hbm_pages: 64
  dram_pages: 256
namespaces:
  - name: "*"
    sink_slots: 1
cluster:
  enabled: true
  node_id: )",
                      id, "\n  etcd_endpoints: [", etcd, "]\n  etcd_prefix: ", prefix, R"(
  lease_ttl_s: 2
  listen_address: )",
                      host, ":0\n  advertise_host: ", host, "\n  ucx_net_devices: ", devices,
                      "\n  ucx_tls: ", tls, R"(
  request_timeout_ms: 1000
  transfer_timeout_ms: 2000
  fetch_lease_ms: 4000
  replicate_after_remote_reads: )",
                      replicate_after, "\n  namespaces: ", namespaces, "\n");
}

// "verified N of M" from a probe worker, or -1.
int ProbeAt(const std::string& socket, const std::string& ns, uint64_t seed, int pages) {
  testing::WorkerResult r =
      RunWorker({"probe", socket, ns, std::to_string(seed), std::to_string(pages)});
  int verified = -1;
  if (r.exit_code != 0 || std::sscanf(r.output.c_str(), "verified %d", &verified) != 1) {
    ADD_FAILURE() << "probe on " << socket << " exited " << r.exit_code << ": " << r.output;
    return -1;
  }
  return verified;
}
int Probe(const Node& n, const std::string& ns, uint64_t seed, int pages) {
  return ProbeAt(n.daemon->socket_path(), ns, seed, pages);
}

void StoreAt(const std::string& socket, const std::string& ns, uint64_t seed, int pages) {
  testing::WorkerResult r =
      RunWorker({"store", socket, ns, std::to_string(seed), std::to_string(pages)});
  ASSERT_EQ(r.exit_code, 0) << r.output;
}
void Store(const Node& n, const std::string& ns, uint64_t seed, int pages) {
  StoreAt(n.daemon->socket_path(), ns, seed, pages);
}

TEST(Cluster, ThreeNodesOnLoopback) {
  const uint64_t seed = testing::TestSeed();
  EtcdProcess etcd;
  ASSERT_TRUE(etcd.Start()) << "etcd did not answer on " << etcd.endpoint();
  const std::string prefix = absl::StrCat("/kvtier-test-", seed, "/");
  std::vector<Node> nodes(3);
  const char* serves[] = {"[\"*\"]", "[\"*\"]", "[\"shared/*\"]"};
  const int replicate_after[] = {0, 2, 0};  // only B keeps copies of pages it reads twice
  for (int i = 0; i < 3; ++i) {
    nodes[i].id = std::string("node-") + static_cast<char>('a' + i);
    absl::StatusOr<DaemonProcess> d = DaemonProcess::Start(
        NodeYaml(nodes[i].id, etcd.endpoint(), prefix, serves[i], replicate_after[i]));
    ASSERT_TRUE(d.ok()) << d.status();
    nodes[i].daemon.emplace(*std::move(d));
  }
  Node& a = nodes[0];
  Node& b = nodes[1];
  Node& c = nodes[2];
  // Every node advertises its HTTP port in etcd; wait until all three are listed.
  auto client = *EtcdClient::Create({{etcd.endpoint()}, absl::Seconds(2)});
  auto members = [&] {
    std::map<std::string, MemberInfo> out;
    absl::StatusOr<EtcdClient::Range> r = client->GetPrefix(prefix + "members/");
    if (!r.ok()) return out;
    for (const auto& [k, v] : r->kvs) {
      if (absl::StatusOr<MemberInfo> m = MemberInfo::FromJson(v); m.ok()) out[m->node_id] = *m;
    }
    return out;
  };
  ASSERT_TRUE(WaitFor([&] { return members().size() == 3; })) << "members: " << members().size();
  for (Node& n : nodes) n.http_port = members()[n.id].http_port;
  ASSERT_TRUE(WaitFor([&] {
    for (const Node& n : nodes) {
      if (Metric(n.http_port, "kvtier_cluster_members") != 3) return false;
    }
    return true;
  })) << "nodes did not all see three members";
  EXPECT_NE(HttpGet(a.http_port, "/readyz").find("etcd reachable"), std::string::npos);

  // 1. Stored through A, loaded bit-identical through C (the probe worker compares every byte).
  constexpr int kPages = 16;
  Store(a, "shared/model", seed, kPages);
  EXPECT_TRUE(WaitFor([&] { return Probe(c, "shared/model", seed, kPages) == kPages; }))
      << "C never loaded all of A's pages";
  EXPECT_GE(Metric(c.http_port, "kvtier_cluster_remote_fetches_total{result=\"ok\"}"), kPages);
  EXPECT_EQ(Metric(c.http_port, "kvtier_cluster_remote_fetches_total{result=\"verify_failed\"}"),
            0);
  // Three processes of one host: A lends through the staging slots UCX allocated in shared
  // memory, which C maps (its gets are a memcpy over UCX's sysv/posix lane).
  EXPECT_GE(Metric(a.http_port, "kvtier_cluster_pages_lent_shared_total"), 1);

  // 2. Isolation: private/* is served by A and B only.
  Store(a, "private/model", seed + 1, kPages);
  EXPECT_TRUE(WaitFor([&] { return Probe(b, "private/model", seed + 1, kPages) == kPages; }))
      << "B (which serves private/*) never fetched A's private pages";
  const double lent_before = Metric(a.http_port, "kvtier_cluster_pages_lent_total");
  EXPECT_EQ(Probe(c, "private/model", seed + 1, kPages), 0) << "C fetched a namespace it does "
                                                               "not serve";
  EXPECT_EQ(Metric(a.http_port, "kvtier_cluster_pages_lent_total"), lent_before);

  // 3. Placement: B reads A's pages twice and keeps copies (C, set not to, keeps none).
  Store(a, "shared/model", seed + 5, kPages);
  EXPECT_TRUE(WaitFor([&] { return Probe(b, "shared/model", seed + 5, kPages) == kPages; }));
  EXPECT_EQ(Probe(b, "shared/model", seed + 5, kPages), kPages);
  EXPECT_GE(Metric(b.http_port, "kvtier_cluster_replication_pages_total{result=\"replicated\"}"),
            kPages - 1);  // the first page is a sink by position: never copied off its node

  // 4. A dies mid-life (SIGKILL). Pages only A held become misses; B and C keep serving.
  Store(a, "shared/model", seed + 2, kPages);
  EXPECT_TRUE(WaitFor([&] { return Probe(c, "shared/model", seed + 2, kPages) == kPages; }));
  ASSERT_EQ(::kill(a.daemon->pid(), SIGKILL), 0);
  EXPECT_EQ(Probe(b, "shared/model", seed + 2, kPages), 0);
  EXPECT_EQ(Probe(c, "shared/model", seed + 2, kPages), 0);
  EXPECT_EQ(Probe(c, "shared/model", seed, kPages), 0);
  EXPECT_TRUE(WaitFor([&] {
    return Metric(b.http_port, "kvtier_cluster_members") == 2 &&
           Metric(c.http_port, "kvtier_cluster_members") == 2;
  })) << "A's lease did not expire from B's and C's view";
  EXPECT_GE(Metric(b.http_port, "kvtier_cluster_remote_fetches_total{result=\"miss\"}") +
                Metric(b.http_port, "kvtier_cluster_remote_fetches_total{result=\"failed\"}"),
            1);
  Store(b, "shared/model", seed + 3, kPages);
  EXPECT_TRUE(WaitFor([&] { return Probe(c, "shared/model", seed + 3, kPages) == kPages; }))
      << "B's pages did not reach C after A died";
  // B's replicas of A's pages outlived A (all but the sink).
  EXPECT_TRUE(WaitFor([&] { return Probe(c, "shared/model", seed + 5, kPages) >= kPages - 1; }))
      << "B's replicas were not found from C";

  // 5. etcd goes away: both keep serving locally and say so; etcd returns: both rejoin.
  etcd.Stop();
  EXPECT_TRUE(WaitFor([&] {
    return Metric(b.http_port, "kvtier_cluster_etcd_reachable") == 0 &&
           Metric(c.http_port, "kvtier_cluster_etcd_reachable") == 0;
  }));
  EXPECT_NE(HttpGet(b.http_port, "/readyz").find("UNREACHABLE"), std::string::npos);
  EXPECT_EQ(Probe(b, "shared/model", seed + 3, kPages), kPages);  // local pages, no etcd needed
  ASSERT_TRUE(etcd.Start());
  EXPECT_TRUE(WaitFor([&] {
    return Metric(b.http_port, "kvtier_cluster_etcd_reachable") == 1 &&
           Metric(c.http_port, "kvtier_cluster_etcd_reachable") == 1;
  }));
  EXPECT_TRUE(WaitFor([&] {
    auto m = members();
    return m.size() == 2 && m.contains("node-b") && m.contains("node-c");
  })) << "B and C did not both rejoin";
  Store(b, "shared/model", seed + 4, kPages);
  EXPECT_TRUE(WaitFor([&] { return Probe(c, "shared/model", seed + 4, kPages) == kPages; }));
  EXPECT_EQ(b.daemon->Stop(), 0);
  EXPECT_EQ(c.daemon->Stop(), 0);
}

// Placement across nodes: A (16 slots) is set to push when under half its room is free; B has
// plenty. A's cold pages go to B before A's own policy drops them, and A's later misses find
// them there, bit-identical. Page 0 of every stored sequence is a sink: it never leaves A.
TEST(Cluster, PushesColdPagesToAPeerWithRoom) {
  const uint64_t seed = testing::TestSeed();
  EtcdProcess etcd;
  ASSERT_TRUE(etcd.Start()) << "etcd did not answer on " << etcd.endpoint();
  const std::string prefix = absl::StrCat("/kvtier-push-", seed, "/");
  auto yaml = [&](const std::string& id, int hbm, int dram, double push_below) {
    return absl::StrCat("http_address: 127.0.0.1:0\nstore:\n  page_bytes: 32768\n  hbm_pages: ",
                        hbm, "\n  dram_pages: ", dram,
                        "\nnamespaces:\n  - name: \"*\"\n    sink_slots: 1\ncluster:\n"
                        "  enabled: true\n  node_id: ",
                        id, "\n  etcd_endpoints: [", etcd.endpoint(), "]\n  etcd_prefix: ", prefix,
                        "\n  lease_ttl_s: 2\n  listen_address: 127.0.0.1:0\n"
                        "  advertise_host: 127.0.0.1\n  ucx_net_devices: lo\n"
                        "  ucx_tls: tcp,sm,self\n  replicate_after_remote_reads: 0\n"
                        "  push_below_free_fraction: ",
                        push_below, "\n  max_push_bytes_per_s: 1e9\n");
  };
  std::vector<Node> nodes(2);
  nodes[0].id = "push-a";
  nodes[1].id = "push-b";
  const int hbm[] = {4, 64}, dram[] = {12, 256};
  const double push_below[] = {0.5, 0};
  for (int i = 0; i < 2; ++i) {
    absl::StatusOr<DaemonProcess> d =
        DaemonProcess::Start(yaml(nodes[i].id, hbm[i], dram[i], push_below[i]));
    ASSERT_TRUE(d.ok()) << d.status();
    nodes[i].daemon.emplace(*std::move(d));
  }
  Node& a = nodes[0];
  Node& b = nodes[1];
  ASSERT_TRUE(WaitForMembers(etcd.endpoint(), prefix, nodes));
  const std::string ns = "shared/model";
  // B takes pushes only for namespaces a worker opened there: a probe opens it.
  EXPECT_EQ(Probe(b, ns, seed + 100, 1), 0);

  // 12 of A's 16 slots used: under half free, so A pushes its 11 non-sink pages to B.
  constexpr int kPages = 12;
  Store(a, ns, seed, kPages);
  const std::string pushed = "kvtier_cluster_push_pages_total{result=\"pushed\"}";
  const std::string received = "kvtier_cluster_push_pages_total{result=\"received\"}";
  EXPECT_TRUE(WaitFor([&] { return Metric(a.http_port, pushed) >= kPages - 1; }))
      << "A pushed " << Metric(a.http_port, pushed) << " pages";
  EXPECT_GE(Metric(b.http_port, received), kPages - 1);
  EXPECT_GE(Metric(a.http_port, "kvtier_cluster_push_bytes_total"), (kPages - 1) * 32768.0);
  // Then A fills past its capacity: its policy drops the first sequence's pages.
  Store(a, ns, seed + 1, kPages);
  Store(a, ns, seed + 2, kPages);
  EXPECT_GE(Metric(a.http_port, "kvtier_evictions_total{class=\"unknown\",tier=\"dram\"}") +
                Metric(a.http_port, "kvtier_evictions_total{class=\"semantic\",tier=\"dram\"}"),
            1)
      << "A never dropped a page; the test did not fill it";
  // The pushed pages load bit-identical from B itself, and through A's miss path.
  EXPECT_TRUE(WaitFor([&] { return Probe(b, ns, seed, kPages) >= kPages - 1; }))
      << "B does not hold A's pushed pages";
  const double fetched_before =
      Metric(a.http_port, "kvtier_cluster_remote_fetches_total{result=\"ok\"}");
  EXPECT_TRUE(WaitFor([&] { return Probe(a, ns, seed, kPages) >= kPages - 1; }))
      << "A's misses did not find its pushed pages on B";
  EXPECT_GT(Metric(a.http_port, "kvtier_cluster_remote_fetches_total{result=\"ok\"}"),
            fetched_before)
      << "A served every page locally: its miss path was not exercised";
  EXPECT_EQ(Metric(a.http_port, "kvtier_cluster_remote_fetches_total{result=\"verify_failed\"}"),
            0);
  // Sinks never left A: B holds none in any tier.
  for (const char* tier : {"hbm", "dram"}) {
    EXPECT_EQ(
        Metric(b.http_port, absl::StrCat("kvtier_tier_pages{class=\"sink\",tier=\"", tier, "\"}")),
        0)
        << tier;
  }
  EXPECT_EQ(a.daemon->Stop(), 0);
  EXPECT_EQ(b.daemon->Stop(), 0);
}

// A page whose bytes do not match the checksum its holder sent is reported failed, never
// served: A (started with KVTIER_TEST_CORRUPT_LENDS) lends every page with a wrong checksum.
TEST(Cluster, PagesFailingTheirChecksumAreNeverServed) {
  const uint64_t seed = testing::TestSeed();
  EtcdProcess etcd;
  ASSERT_TRUE(etcd.Start()) << "etcd did not answer on " << etcd.endpoint();
  const std::string prefix = absl::StrCat("/kvtier-verify-", seed, "/");
  std::vector<Node> nodes(2);
  for (int i = 0; i < 2; ++i) {
    nodes[i].id = std::string("verify-") + static_cast<char>('a' + i);
    if (i == 0) ::setenv("KVTIER_TEST_CORRUPT_LENDS", "1", 1);  // inherited by A alone
    absl::StatusOr<DaemonProcess> d =
        DaemonProcess::Start(NodeYaml(nodes[i].id, etcd.endpoint(), prefix, "[\"*\"]", 0));
    ::unsetenv("KVTIER_TEST_CORRUPT_LENDS");
    ASSERT_TRUE(d.ok()) << d.status();
    nodes[i].daemon.emplace(*std::move(d));
  }
  ASSERT_TRUE(WaitForMembers(etcd.endpoint(), prefix, nodes));
  Node& a = nodes[0];
  Node& b = nodes[1];
  constexpr int kPages = 8;
  Store(a, "shared/model", seed, kPages);
  const std::string verify_failed = "kvtier_cluster_remote_fetches_total{result=\"verify_failed\"}";
  // B finds A's pages (Lookup), but every Load of one is refused after the transfer. Probed
  // until the directory has them all (announcements are asynchronous); no probe may verify any.
  int served = 0;
  EXPECT_TRUE(WaitFor([&] {
    served += std::max(0, Probe(b, "shared/model", seed, kPages));
    return Metric(b.http_port, verify_failed) >= kPages;
  })) << "B refused "
      << Metric(b.http_port, verify_failed) << " pages";
  EXPECT_EQ(served, 0) << "B served a page that failed its check";
  EXPECT_EQ(Metric(b.http_port, "kvtier_cluster_remote_fetches_total{result=\"ok\"}"), 0);
  EXPECT_EQ(Probe(a, "shared/model", seed, kPages), kPages);  // A's own copies are intact
  EXPECT_EQ(a.daemon->Stop(), 0);
  EXPECT_EQ(b.daemon->Stop(), 0);
}

// Peers on one host read through the holder's shared staging slots; when the slots run out a
// page is lent in place (UCX then emulates the get with active messages over shared memory):
// slower, counted, and still bit-identical. A holds its pages in DRAM and has one slot.
TEST(Cluster, SameHostReadsFallBackInPlaceWhenStagingIsFull) {
  const uint64_t seed = testing::TestSeed();
  EtcdProcess etcd;
  ASSERT_TRUE(etcd.Start()) << "etcd did not answer on " << etcd.endpoint();
  const std::string prefix = absl::StrCat("/kvtier-staging-", seed, "/");
  std::vector<Node> nodes(2);
  for (int i = 0; i < 2; ++i) {
    nodes[i].id = std::string("staging-") + static_cast<char>('a' + i);
    std::string yaml = NodeYaml(nodes[i].id, etcd.endpoint(), prefix, "[\"*\"]", 0);
    if (i == 0) {
      yaml = absl::StrReplaceAll(
          yaml, {{"hbm_pages: 64", "hbm_pages: 0"}, {"sink_slots: 1", "sink_slots: 0"}});
      yaml += "  staging_pages: 1\n";
    }
    absl::StatusOr<DaemonProcess> d = DaemonProcess::Start(yaml);
    ASSERT_TRUE(d.ok()) << d.status();
    nodes[i].daemon.emplace(*std::move(d));
  }
  ASSERT_TRUE(WaitForMembers(etcd.endpoint(), prefix, nodes));
  Node& a = nodes[0];
  Node& b = nodes[1];
  // Pages stored through A, then loaded through B in one Load of them all, so the lend needs
  // more slots than A has.
  constexpr uint32_t kPages = 12;
  constexpr uint64_t kPageBytes = 32768;
  absl::StatusOr<LayoutSpec> spec = FlatLayoutFor(kPageBytes, kPages);
  ASSERT_TRUE(spec.ok()) << spec.status();
  absl::StatusOr<Layout> layout = Layout::Create(*spec);
  ASSERT_TRUE(layout.ok()) << layout.status();
  auto open = [&](const Node& n) {
    absl::StatusOr<std::unique_ptr<Client>> c = Client::Connect(n.daemon->socket_path());
    EXPECT_TRUE(c.ok()) << c.status();
    if (!c.ok()) return std::pair<std::unique_ptr<Client>, std::optional<WorkerBuffers>>();
    absl::StatusOr<WorkerBuffers> buf = WorkerBuffers::Create(*layout);
    EXPECT_TRUE(buf.ok() && (*c)->Hello("shared/model", *spec).ok() &&
                (*c)->RegisterBuffers(buf->fds(), buf->sizes()).ok());
    return std::make_pair(*std::move(c), buf.ok() ? std::make_optional(*std::move(buf))
                                                  : std::optional<WorkerBuffers>());
  };
  // Not structured bindings: Clang 14 cannot capture those in the lambdas below.
  auto opened_a = open(a);
  auto opened_b = open(b);
  std::unique_ptr<Client>& ca = opened_a.first;
  std::unique_ptr<Client>& cb = opened_b.first;
  std::optional<WorkerBuffers>& ba = opened_a.second;
  std::optional<WorkerBuffers>& bb = opened_b.second;
  ASSERT_TRUE(ca && cb && ba && bb);
  std::mt19937_64 rng(seed);
  std::vector<PageKey> keys(kPages);
  std::vector<uint32_t> blocks(kPages);
  std::vector<std::vector<std::byte>> images(kPages, std::vector<std::byte>(kPageBytes));
  for (uint32_t i = 0; i < kPages; ++i) {
    keys[i] = PageKey{rng(), rng()};
    blocks[i] = i;
    for (auto& x : images[i]) x = static_cast<std::byte>(rng());
    ASSERT_TRUE(ba->WriteBlock(*layout, i, images[i]).ok());
  }
  StoreHints hints;
  hints.first_position = 1000;  // no sinks by position
  absl::StatusOr<OpHandle> stored = ca->StoreAsync(keys, blocks, hints);
  ASSERT_TRUE(stored.ok() && ca->Wait(*stored).ok());
  ASSERT_TRUE(WaitFor([&] {
    absl::StatusOr<LookupReply> r = cb->Lookup(keys);
    return r.ok() && r->prefix_pages == kPages;
  })) << "B never saw A's pages";
  std::vector<std::byte> got(kPageBytes);
  for (int round = 0; round < 2; ++round) {  // the second with the data path known
    absl::StatusOr<OpHandle> op = cb->LoadAsync(keys, blocks);
    ASSERT_TRUE(op.ok()) << op.status();
    absl::StatusOr<PageResults> r = cb->Wait(*op);
    ASSERT_TRUE(r.ok()) << r.status();
    ASSERT_EQ(r->ok_pages, kPages) << "round " << round << ": " << r->first_error;
    for (uint32_t i = 0; i < kPages; ++i) {
      ASSERT_TRUE(bb->ReadBlock(*layout, i, absl::MakeSpan(got)).ok());
      EXPECT_EQ(std::memcmp(got.data(), images[i].data(), kPageBytes), 0)
          << "round " << round << " page " << i;
    }
  }
  EXPECT_GE(Metric(a.http_port, "kvtier_cluster_pages_lent_shared_total"), 1);
  EXPECT_GE(Metric(a.http_port, "kvtier_cluster_shared_staging_full_total"), 1);
  EXPECT_EQ(Metric(b.http_port, "kvtier_cluster_remote_fetches_total{result=\"verify_failed\"}"),
            0);
  ca.reset();
  cb.reset();
  EXPECT_EQ(a.daemon->Stop(), 0);
  EXPECT_EQ(b.daemon->Stop(), 0);
}

// Peer authentication: A and B share a secret file and serve each other; C, started without
// it, is refused by both (a metric and a log line on theirs) and fetches nothing.
TEST(Cluster, PeersWithoutTheSecretAreRefused) {
  const uint64_t seed = testing::TestSeed();
  EtcdProcess etcd;
  ASSERT_TRUE(etcd.Start()) << "etcd did not answer on " << etcd.endpoint();
  const std::string prefix = absl::StrCat("/kvtier-auth-", seed, "/");
  char tmpl[] = "/tmp/kvtier-secret-XXXXXX";
  const std::string dir = ::mkdtemp(tmpl);
  const std::string secret = dir + "/cluster.secret";
  std::ofstream(secret) << "kvtier-test-secret-" << seed << "\n";
  ASSERT_EQ(::chmod(secret.c_str(), 0600), 0);
  auto yaml = [&](const std::string& id, const std::string& secret_file) {
    std::string y = NodeYaml(id, etcd.endpoint(), prefix, "[\"*\"]", 0);
    if (!secret_file.empty()) absl::StrAppend(&y, "  secret_file: ", secret_file, "\n");
    return y;
  };
  std::vector<Node> nodes(3);
  const std::string secrets[] = {secret, secret, ""};
  for (int i = 0; i < 3; ++i) {
    nodes[i].id = std::string("auth-") + static_cast<char>('a' + i);
    if (i == 2) {
      // C joins only after A and B have shown they work together.
      Store(nodes[0], "shared/model", seed, 16);
      EXPECT_TRUE(WaitFor([&] { return Probe(nodes[1], "shared/model", seed, 16) == 16; }))
          << "B (with the secret) did not load A's pages";
    }
    absl::StatusOr<DaemonProcess> d = DaemonProcess::Start(yaml(nodes[i].id, secrets[i]));
    ASSERT_TRUE(d.ok()) << d.status();
    nodes[i].daemon.emplace(*std::move(d));
    if (i >= 1) {
      ASSERT_TRUE(WaitFor([&] {
        int seen = 0;
        auto client = *EtcdClient::Create({{etcd.endpoint()}, absl::Seconds(2)});
        absl::StatusOr<EtcdClient::Range> r = client->GetPrefix(prefix + "members/");
        if (!r.ok()) return false;
        for (const auto& [k, v] : r->kvs) {
          if (absl::StatusOr<MemberInfo> m = MemberInfo::FromJson(v); m.ok()) {
            for (Node& n : nodes) {
              if (n.id == m->node_id) n.http_port = m->http_port;
            }
            ++seen;
          }
        }
        // Every running node sees all of them (C's lookups then go to A and B).
        for (int j = 0; j <= i; ++j) {
          if (Metric(nodes[j].http_port, "kvtier_cluster_members") != i + 1) return false;
        }
        return seen == i + 1;
      }));
    }
  }
  Node& a = nodes[0];
  Node& b = nodes[1];
  Node& c = nodes[2];
  // C is in etcd (membership is not behind the secret) but no peer talks to it.
  EXPECT_EQ(Probe(c, "shared/model", seed, 16), 0) << "C fetched pages without the secret";
  const std::string refused = "kvtier_cluster_peer_events_total{kind=\"auth_refused\"}";
  EXPECT_TRUE(WaitFor([&] {
    return Metric(a.http_port, refused) + Metric(b.http_port, refused) >= 1;
  })) << "neither A nor B counted C's refusal";
  EXPECT_GE(Metric(a.http_port, "kvtier_cluster_pages_lent_total"), 16);
  EXPECT_EQ(a.daemon->Stop(), 0);
  EXPECT_EQ(b.daemon->Stop(), 0);
  EXPECT_EQ(c.daemon->Stop(), 0);
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
}

// ---- The same cluster with every daemon in its own network namespace ----
//
// Three namespaces joined by veth pairs to a bridge in the test's namespace, where etcd listens;
// each kvtierd runs under `ip netns exec`, so peer traffic really crosses interfaces. Needs root
// (CI runs as root); skipped with a message otherwise.

class NetnsWorld {
 public:
  // Creates the bridge and `n` namespaces; ok() says whether it worked.
  explicit NetnsWorld(int n) : id_(std::to_string(::getpid() % 100000)) {
    subnet_ = absl::StrCat("10.211.", 20 + ::getpid() % 200, ".");
    ok_ = Sh(absl::StrCat("ip link add ", Bridge(), " type bridge && ip addr add ", subnet_,
                          "1/24 dev ", Bridge(), " && ip link set ", Bridge(), " up"));
    for (int i = 0; ok_ && i < n; ++i) {
      const std::string ns = Ns(i), v = absl::StrCat("kvt", id_, "v", i),
                        p = absl::StrCat("kvt", id_, "p", i);
      ok_ = Sh(absl::StrCat("ip netns add ", ns, " && ip link add ", v, " type veth peer name ", p,
                            " && ip link set ", p, " netns ", ns, " && ip link set ", v, " master ",
                            Bridge(), " up && ip -n ", ns, " addr add ", Host(i), "/24 dev ", p,
                            " && ip -n ", ns, " link set ", p, " up && ip -n ", ns,
                            " link set lo up"));
      made_ = i + 1;
    }
  }
  ~NetnsWorld() {
    for (int i = 0; i < made_; ++i) Sh("ip netns del " + Ns(i));
    Sh("ip link del " + Bridge());
  }
  bool ok() const { return ok_; }
  std::string Ns(int i) const { return absl::StrCat("kvt", id_, "n", i); }
  std::string Host(int i) const { return absl::StrCat(subnet_, 10 + i); }
  std::string BridgeHost() const { return subnet_ + "1"; }
  std::string Device(int i) const { return absl::StrCat("kvt", id_, "p", i); }

 private:
  static bool Sh(const std::string& cmd) {
    return std::system((cmd + " 2>/dev/null").c_str()) == 0;
  }
  std::string Bridge() const { return absl::StrCat("kvtbr", id_); }
  std::string id_, subnet_;
  bool ok_ = false;
  int made_ = 0;
};

// kvtierd inside a network namespace, on its own temp directory.
class NetnsDaemon {
 public:
  NetnsDaemon(const std::string& netns, const std::string& yaml) {
    char tmpl[] = "/tmp/kvtier-netns-XXXXXX";
    dir_ = ::mkdtemp(tmpl);
    socket_ = dir_ + "/kvtierd.sock";
    const std::string config = dir_ + "/kvtierd.yaml";
    std::ofstream(config) << "data_dir: " << dir_ << "/data\nsocket_path: " << socket_ << "\n"
                          << yaml;
    const std::string log = dir_ + "/kvtierd.log";
    pid_ = ::fork();
    if (pid_ == 0) {
      if (std::freopen(log.c_str(), "w", stderr) == nullptr) ::_exit(126);
      // `ip netns exec` enters the namespace and execs kvtierd in this same process.
      ::execlp("ip", "ip", "netns", "exec", netns.c_str(), KVTIERD_BIN, "--config", config.c_str(),
               nullptr);
      ::_exit(127);
    }
  }
  ~NetnsDaemon() {
    Kill(SIGTERM);
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  void Kill(int sig) {
    if (pid_ <= 0) return;
    ::kill(pid_, sig);
    int status;
    ::waitpid(pid_, &status, 0);
    pid_ = -1;
  }
  const std::string& socket() const { return socket_; }

 private:
  std::string dir_, socket_;
  pid_t pid_ = -1;
};

TEST(Cluster, ThreeNodesInNetworkNamespaces) {
  if (::geteuid() != 0) {
    GTEST_SKIP() << "network namespaces need root (CI runs as root); the loopback test covers "
                    "the same steps";
  }
  NetnsWorld world(3);
  if (!world.ok()) GTEST_SKIP() << "could not create network namespaces and a bridge here";
  const uint64_t seed = testing::TestSeed();
  EtcdProcess etcd(world.BridgeHost());
  ASSERT_TRUE(etcd.Start()) << "etcd did not answer on " << etcd.endpoint();
  const std::string prefix = absl::StrCat("/kvtier-netns-", seed, "/");
  std::vector<std::unique_ptr<NetnsDaemon>> d;
  for (int i = 0; i < 3; ++i) {
    d.push_back(std::make_unique<NetnsDaemon>(
        world.Ns(i), NodeYaml(absl::StrCat("netns-", i), etcd.endpoint(), prefix, "[\"*\"]", 0,
                              world.Host(i), world.Device(i),
                              // TCP only: shared memory would cross namespaces without the wire.
                              "tcp,self")));
  }
  auto client = *EtcdClient::Create({{etcd.endpoint()}, absl::Seconds(2)});
  std::map<std::string, MemberInfo> members;
  ASSERT_TRUE(WaitFor([&] {
    members.clear();
    absl::StatusOr<EtcdClient::Range> r = client->GetPrefix(prefix + "members/");
    if (!r.ok()) return false;
    for (const auto& [k, v] : r->kvs) {
      if (absl::StatusOr<MemberInfo> m = MemberInfo::FromJson(v); m.ok()) members[m->node_id] = *m;
    }
    return members.size() == 3;
  })) << "the three namespaced daemons did not all register";
  auto port = [&](int i) { return members[absl::StrCat("netns-", i)].http_port; };
  ASSERT_TRUE(WaitFor([&] {
    for (int i = 0; i < 3; ++i) {
      if (Metric(port(i), "kvtier_cluster_members", world.Host(i)) != 3) return false;
    }
    return true;
  }));
  constexpr int kPages = 16;
  StoreAt(d[0]->socket(), "shared/model", seed, kPages);
  EXPECT_TRUE(WaitFor([&] {
    return ProbeAt(d[2]->socket(), "shared/model", seed, kPages) == kPages;
  })) << "node 2 never loaded node 0's pages across the bridge";
  EXPECT_GE(Metric(port(2), "kvtier_cluster_remote_fetches_total{result=\"ok\"}", world.Host(2)),
            kPages);
  d[0]->Kill(SIGKILL);
  EXPECT_EQ(ProbeAt(d[1]->socket(), "shared/model", seed, kPages), 0);
  StoreAt(d[1]->socket(), "shared/model", seed + 1, kPages);
  EXPECT_TRUE(WaitFor([&] {
    return ProbeAt(d[2]->socket(), "shared/model", seed + 1, kPages) == kPages;
  })) << "node 1's pages did not reach node 2 after node 0 died";
}

}  // namespace
}  // namespace kvtier
