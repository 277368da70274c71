// kvtierd against hostile clients on the same node: no connection may take the daemon down, stall
// the others, squat every slot, cost memory while idle, flood the log, or starve /healthz. Each
// test is one attack from the hardening review, run against a real daemon; each failed before
// the daemon defended against it.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <optional>
#include <random>
#include <sstream>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "base/seqpacket.h"
#include "client/client.h"
#include "client/defaults.h"
#include "gtest/gtest.h"
#include "tests/integration/daemon_harness.h"

namespace kvtier::testing {
namespace {

using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

// A small daemon config; each argument is extra lines of its section (indented two spaces).
// limits.max_batch_pages is 128 unless `limits` sets it (a key may appear only once).
std::string Config(const std::string& limits = "", const std::string& store = "",
                   const std::string& http_address = "\"\"") {
  const std::string batch = absl::StrContains(limits, "max_batch_pages:")
                                ? std::string()
                                : std::string("  max_batch_pages: 128\n");
  return absl::StrCat("http_address: ", http_address, R"(
store:
  page_bytes: 32768
  hbm_pages: 8
  dram_pages: 128
)",
                      store, "limits:\n", batch, limits, R"(namespaces:
  - name: "test/*"
    sink_slots: 2
)");
}

// The worker layout of tests/integration/test_worker.cc: 32 KiB pages, 64 blocks.
LayoutSpec WorkerLayout() {
  LayoutSpec s;
  s.layers = 4;
  s.kv_heads = 2;
  s.head_dim = 64;
  s.tokens_per_page = 16;
  s.tensor_layout = TensorLayout::kVllmPerLayer;
  s.num_blocks = 64;
  return s;
}

// A handshaken client with its KV buffers registered.
struct Worker {
  std::unique_ptr<Client> client;
  std::optional<WorkerBuffers> buffers;
};

absl::StatusOr<Worker> Connect(const std::string& path, const std::string& ns) {
  Worker w;
  absl::StatusOr<std::unique_ptr<Client>> c = Client::Connect(path);
  if (!c.ok()) return c.status();
  w.client = *std::move(c);
  if (absl::StatusOr<HelloInfo> h = w.client->Hello(ns, WorkerLayout()); !h.ok()) return h.status();
  absl::StatusOr<Layout> layout = Layout::Create(WorkerLayout());
  if (!layout.ok()) return layout.status();
  absl::StatusOr<WorkerBuffers> b = WorkerBuffers::Create(*layout);
  if (!b.ok()) return b.status();
  w.buffers = *std::move(b);
  if (absl::Status s = w.client->RegisterBuffers(w.buffers->fds(), w.buffers->sizes()); !s.ok()) {
    return s;
  }
  return w;
}

wire::StatsReply Stats(const DaemonProcess& d) {
  absl::StatusOr<std::unique_ptr<Client>> c = Client::Connect(d.socket_path());
  EXPECT_TRUE(c.ok()) << c.status();
  if (!c.ok()) return {};
  absl::StatusOr<wire::StatsReply> s = (*c)->Stats();
  EXPECT_TRUE(s.ok()) << s.status();
  return s.ok() ? *s : wire::StatsReply();
}

bool Alive(const DaemonProcess& d) {
  int status;
  return ::waitpid(d.pid(), &status, WNOHANG) == 0;
}

std::vector<PageKey> RandomKeys(std::mt19937_64& rng, size_t n) {
  std::vector<PageKey> keys(n);
  for (PageKey& k : keys) k = PageKey{rng() | 1, rng()};
  return keys;
}

void SetReceiveTimeout(int fd, int seconds) {
  timeval tv{seconds, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
}

// The next datagram on `fd` as a Response (waits up to 10 s); EOF and timeouts are errors.
absl::StatusOr<wire::Response> NextReply(int fd) {
  pollfd p{fd, POLLIN, 0};
  if (::poll(&p, 1, 10'000) != 1) return absl::DeadlineExceededError("no reply in 10 s");
  std::string buffer;
  absl::StatusOr<Datagram> d = ReceiveDatagram(fd, buffer, 1 << 20);
  if (!d.ok()) return d.status();
  if (d->eof) return absl::UnavailableError("EOF");
  wire::Response r;
  if (!r.ParseFromArray(buffer.data(), static_cast<int>(d->size))) {
    return absl::DataLossError("reply does not parse");
  }
  return r;
}

bool EofWithin(int fd, int seconds) {
  pollfd p{fd, POLLIN, 0};
  if (::poll(&p, 1, seconds * 1000) != 1) return false;
  std::string buffer;
  absl::StatusOr<Datagram> d = ReceiveDatagram(fd, buffer, 1 << 20);
  return !d.ok() || d->eof;
}

// Starts the daemon with its log (stderr) in a file of its own, returned in *log.
absl::StatusOr<DaemonProcess> StartLogged(const std::string& yaml, std::string* log,
                                          unsigned dir_mode = 0700) {
  char path[] = "/tmp/kvtier-net-log-XXXXXX";
  const int fd = ::mkstemp(path);
  if (fd < 0) return absl::InternalError("mkstemp");
  *log = path;
  std::fflush(stderr);
  const int saved = ::dup(2);
  ::dup2(fd, 2);  // the daemon inherits it
  absl::StatusOr<DaemonProcess> d = DaemonProcess::Start(yaml, dir_mode);
  ::dup2(saved, 2);
  ::close(saved);
  ::close(fd);
  return d;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

size_t CountLines(const std::string& text, const std::string& part) {
  size_t n = 0;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) n += line.find(part) != std::string::npos;
  return n;
}

uint64_t ProcStatusKb(pid_t pid, const std::string& field) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/status"));
  for (std::string line; std::getline(in, line);) {
    if (absl::StartsWith(line, field + ":")) {
      std::istringstream fields(line.substr(field.size() + 1));
      uint64_t kb = 0;
      fields >> kb;
      return kb;
    }
  }
  return 0;
}

// ---- registered bytes, and failures at a connection's boundary ----

TEST(HardeningNet, RegisteredBytesAreBoundedPerSessionAndInTotal) {
  absl::StatusOr<DaemonProcess> d = DaemonProcess::Start(Config());
  ASSERT_TRUE(d.ok()) << d.status();
  absl::StatusOr<Layout> layout = Layout::Create(WorkerLayout());
  ASSERT_TRUE(layout.ok());
  // The attack: sparse sealed memfds that claim 4 TiB each. Mapped as declared, a few sessions
  // exhaust the daemon's address space and its next thread cannot start.
  constexpr uint64_t kClaimed = uint64_t{4} << 40;
  std::vector<std::unique_ptr<Client>> attackers;
  for (int i = 0; i < 8; ++i) {
    absl::StatusOr<std::unique_ptr<Client>> c = Client::Connect(d->socket_path());
    ASSERT_TRUE(c.ok()) << "attacker " << i << ": " << c.status();
    ASSERT_TRUE((*c)->Hello("test/huge", WorkerLayout()).ok());
    std::vector<UniqueFd> memfds;
    std::vector<int> fds;
    std::vector<uint64_t> sizes;
    for (uint32_t b = 0; b < layout->buffer_count(); ++b) {
      memfds.emplace_back(::memfd_create("huge", MFD_CLOEXEC | MFD_ALLOW_SEALING));
      ASSERT_EQ(::ftruncate(memfds.back().get(), static_cast<off_t>(kClaimed)), 0);
      ASSERT_EQ(::fcntl(memfds.back().get(), F_ADD_SEALS, F_SEAL_SHRINK), 0);
      fds.push_back(memfds.back().get());
      sizes.push_back(kClaimed);
    }
    const absl::Status st = (*c)->RegisterBuffers(fds, sizes);
    EXPECT_EQ(st.code(), absl::StatusCode::kResourceExhausted) << "attacker " << i << ": " << st;
    EXPECT_TRUE(absl::StrContains(st.message(), "limits.max_registered_bytes")) << st;
    if (i == 0) std::printf("  refused: %s\n", std::string(st.message()).c_str());
    attackers.push_back(*std::move(c));
  }
  ASSERT_TRUE(Alive(*d));
  EXPECT_EQ(Stats(*d).registered_bytes(), 0u);
  // Every other client is served as before.
  absl::StatusOr<Worker> w = Connect(d->socket_path(), "test/ok");
  ASSERT_TRUE(w.ok()) << w.status();
  attackers.clear();
  w = Worker();
  EXPECT_EQ(d->Stop(), 0);

  // The total over sessions: room for one worker's buffers, not two; what a session registered
  // is given back when it ends.
  absl::StatusOr<WorkerBuffers> probe = WorkerBuffers::Create(*layout);
  ASSERT_TRUE(probe.ok());
  uint64_t one = 0;
  for (uint64_t s : probe->sizes()) one += s;
  absl::StatusOr<DaemonProcess> small =
      DaemonProcess::Start(Config(absl::StrCat("  max_registered_bytes: ", one + one / 2, "\n")));
  ASSERT_TRUE(small.ok()) << small.status();
  absl::StatusOr<Worker> first = Connect(small->socket_path(), "test/a");
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(Stats(*small).registered_bytes(), one);
  absl::StatusOr<Worker> second = Connect(small->socket_path(), "test/a");
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(absl::StrContains(second.status().message(), "limits.max_registered_bytes is"))
      << second.status();
  first = Worker();  // disconnects: its bytes are given back
  absl::StatusOr<Worker> third;
  for (int i = 0; i < 500; ++i) {
    third = Connect(small->socket_path(), "test/a");
    if (third.ok()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));  // the session ends async
  }
  EXPECT_TRUE(third.ok()) << third.status();
  third = Worker();
  EXPECT_EQ(small->Stop(), 0);
}

TEST(HardeningNet, AConnectionThatCannotGetAThreadIsRefusedAndTheDaemonLives) {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  GTEST_SKIP() << "sanitizers reserve terabytes of address space; RLIMIT_AS cannot be used";
#endif
  // The planner stays asleep, so only the accept path meets the address-space limit.
  absl::StatusOr<DaemonProcess> d =
      DaemonProcess::Start(Config("", "  maintain_interval_ms: 600000\n"));
  ASSERT_TRUE(d.ok()) << d.status();
  // A full round trip: the daemon has started every thread of its own (the socket answers
  // connect() before that).
  Stats(*d);
  const uint64_t vm_kb = ProcStatusKb(d->pid(), "VmSize");
  ASSERT_GT(vm_kb, 0u);
  // Room for the daemon as it is, not for many more 8 MiB thread stacks (glibc reuses the
  // stacks of ended threads, so connections are held until one cannot get a thread).
  rlimit old{};
  ASSERT_EQ(::prlimit(d->pid(), RLIMIT_AS, nullptr, &old), 0);
  rlimit tight{(vm_kb + 2048) * 1024, old.rlim_max};
  ASSERT_EQ(::prlimit(d->pid(), RLIMIT_AS, &tight, nullptr), 0);
  std::vector<std::unique_ptr<Client>> held;
  absl::Status refused;
  for (int i = 0; i < 32 && refused.ok(); ++i) {
    absl::StatusOr<std::unique_ptr<Client>> c = Client::Connect(d->socket_path());
    ASSERT_TRUE(c.ok()) << c.status();
    refused = (*c)->Stats().status();
    held.push_back(*std::move(c));
  }
  // Refused at accept (no thread), or closed by its thread (no receive buffer): either way told.
  EXPECT_TRUE(absl::StrContains(refused.message(), "cannot serve another connection") ||
              absl::StrContains(refused.message(), "failed serving this connection"))
      << refused;
  std::printf("  after %zu connections: %s\n", held.size(), refused.ToString().c_str());
  ASSERT_EQ(::prlimit(d->pid(), RLIMIT_AS, &old, nullptr), 0) << std::strerror(errno);
  held.clear();
  ASSERT_TRUE(Alive(*d));
  const wire::StatsReply st = Stats(*d);
  EXPECT_GE(st.connection_failures(), 1u);
  if (absl::StrContains(refused.message(), "cannot serve another connection")) {
    EXPECT_GE(st.connections_refused(), 1u);
  }
  EXPECT_TRUE(Connect(d->socket_path(), "test/after").ok());
  EXPECT_EQ(d->Stop(), 0);
}

// ---- replies never block a shared thread; sessions are served fairly ----

TEST(HardeningNet, AClientThatNeverReadsItsRepliesCannotStallTheOthers) {
  const uint64_t seed = TestSeed();
  std::mt19937_64 rng(seed);
  absl::StatusOr<DaemonProcess> d = DaemonProcess::Start(
      Config("  max_message_bytes: 4096\n  max_output_bytes: 4096\n  max_inflight_ops: 8192\n"
             "  max_consecutive_errors: 100000\n"));
  ASSERT_TRUE(d.ok()) << d.status();
  absl::StatusOr<Worker> attacker = Connect(d->socket_path(), "test/attacker");
  ASSERT_TRUE(attacker.ok()) << attacker.status();
  // Thousands of one-page loads, and not one reply read: the replies pile up in its socket.
  const int fd = attacker->client->socket_fd();
  int sent = 0;
  for (; sent < 5000; ++sent) {
    wire::Request req;
    req.set_id(1000 + sent);
    req.mutable_load()->add_key_words(rng() | 1);
    req.mutable_load()->add_key_words(rng());
    req.mutable_load()->add_block_ids(0);
    // Waits while the daemon has not read what was sent (up to a second: it reads on).
    pollfd p{fd, POLLOUT, 0};
    if (::poll(&p, 1, 1000) != 1 || (p.revents & POLLOUT) == 0) break;
    if (!SendDatagram(fd, req.SerializeAsString(), {}, /*nonblocking=*/true).ok()) break;
  }
  std::printf("  attacker sent %d loads without reading a reply\n", sent);
  // Another worker's store and load complete (a stalled daemon would leave them waiting).
  absl::StatusOr<Worker> victim = Connect(d->socket_path(), "test/victim");
  ASSERT_TRUE(victim.ok()) << victim.status();
  SetReceiveTimeout(victim->client->socket_fd(), 10);
  const std::vector<PageKey> keys = RandomKeys(rng, 8);
  const std::vector<uint32_t> blocks = {0, 1, 2, 3, 4, 5, 6, 7};
  const Clock::time_point start = Clock::now();
  absl::StatusOr<OpHandle> op = victim->client->StoreAsync(keys, blocks);
  ASSERT_TRUE(op.ok()) << op.status();
  absl::StatusOr<PageResults> stored = victim->client->Wait(*op);
  ASSERT_TRUE(stored.ok()) << stored.status();
  op = victim->client->LoadAsync(keys, blocks);
  ASSERT_TRUE(op.ok()) << op.status();
  absl::StatusOr<PageResults> loaded = victim->client->Wait(*op);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->ok_pages, 8u);
  std::printf("  the other worker's store and load took %.3f s\n", SecondsSince(start));
  // The client that does not read is cut off, and told so by EOF once it reads.
  SetReceiveTimeout(fd, 10);
  bool eof = false;
  for (int i = 0; i < 100000 && !eof; ++i) {
    std::string buffer;
    absl::StatusOr<Datagram> dg = ReceiveDatagram(fd, buffer, 1 << 20);
    eof = !dg.ok() ? false : dg->eof;
    if (!dg.ok()) break;
  }
  EXPECT_TRUE(eof) << "the client that never read was not disconnected";
  EXPECT_GE(Stats(*d).output_overflows(), 1u);
  EXPECT_EQ(d->Stop(), 0);
}

TEST(HardeningNet, AFloodOfLargeStoresDoesNotDelayAnotherSessionsSmallLoad) {
  const uint64_t seed = TestSeed();
  std::mt19937_64 rng(seed);
  absl::StatusOr<DaemonProcess> d =
      DaemonProcess::Start(Config("  max_batch_pages: 1024\n  max_message_bytes: 1048576\n"));
  ASSERT_TRUE(d.ok()) << d.status();
  absl::StatusOr<Worker> flood = Connect(d->socket_path(), "test/flood");
  ASSERT_TRUE(flood.ok()) << flood.status();
  absl::StatusOr<Worker> small = Connect(d->socket_path(), "test/small");
  ASSERT_TRUE(small.ok()) << small.status();
  const std::vector<PageKey> mine = RandomKeys(rng, 8);
  const std::vector<uint32_t> mine_blocks = {0, 1, 2, 3, 4, 5, 6, 7};
  absl::StatusOr<OpHandle> op = small->client->StoreAsync(mine, mine_blocks);
  ASSERT_TRUE(op.ok());
  ASSERT_TRUE(small->client->Wait(*op).ok());
  absl::StatusOr<std::unique_ptr<Client>> admin = Client::Connect(d->socket_path());
  ASSERT_TRUE(admin.ok()) << admin.status();
  auto unanswered = [&] {  // Load/Store submitted and not yet answered, over all sessions
    absl::StatusOr<wire::StatsReply> st = (*admin)->Stats();
    EXPECT_TRUE(st.ok()) << st.status();
    return st.ok() ? static_cast<int>(st->inflight_ops()) : -1;
  };

  // 16 stores of 1024 pages (32 MiB each) queued at once by one session...
  constexpr int kFloodOps = 16;
  std::vector<uint32_t> flood_blocks(1024);
  for (size_t i = 0; i < flood_blocks.size(); ++i) flood_blocks[i] = static_cast<uint32_t>(i % 64);
  std::vector<OpHandle> flood_ops;
  for (int i = 0; i < kFloodOps; ++i) {
    absl::StatusOr<OpHandle> h = flood->client->StoreAsync(RandomKeys(rng, 1024), flood_blocks);
    ASSERT_TRUE(h.ok()) << h.status();
    flood_ops.push_back(*h);
  }
  // ...every one of them queued before the other session asks: a connection's requests are
  // handled in order, so the answer to a Lookup sent after them means they are all submitted.
  ASSERT_TRUE(flood->client->Lookup({}).ok());
  const int before = unanswered();
  const Clock::time_point start = Clock::now();
  op = small->client->LoadAsync(mine, mine_blocks);
  ASSERT_TRUE(op.ok());
  absl::StatusOr<PageResults> loaded = small->client->Wait(*op);
  const double load_s = SecondsSince(start);
  ASSERT_TRUE(loaded.ok()) << loaded.status();  // hits or misses: the flood evicts
  const int after = unanswered();
  for (OpHandle h : flood_ops) ASSERT_TRUE(flood->client->Wait(h).ok());
  const double flood_s = SecondsSince(start);
  // Served in turn, the load waits for the store or two already running; served first-come,
  // for every store queued before it.
  std::printf(
      "  8-page load: %.4f s; of the flood's %d 1024-page stores %d were unanswered when it was "
      "sent, %d when it came back (all done in %.3f s)\n",
      load_s, kFloodOps, before, after, flood_s);
  ASSERT_GE(before, kFloodOps / 2) << "the flood was done before the load was sent";
  EXPECT_LT(before - after, before / 2);
  EXPECT_EQ(d->Stop(), 0);
}

// ---- connection slots: per uid, a Hello deadline, refusals that say why ----

TEST(HardeningNet, OneUidsIdleConnectionsCannotLockOutTheOthers) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to run a client as another uid";
  constexpr uid_t kNobody = 65534;
  absl::StatusOr<DaemonProcess> d = DaemonProcess::Start(
      absl::StrCat(Config("  max_connections: 8\n"), "socket_mode: 0666\n"), 0755);
  ASSERT_TRUE(d.ok()) << d.status();
  const std::string path = d->socket_path();
  int ready[2], release[2];
  ASSERT_EQ(::pipe(ready), 0);
  ASSERT_EQ(::pipe(release), 0);
  const pid_t child = ::fork();
  if (child == 0) {
    ::close(release[1]);
    ::close(ready[0]);
    if (::setgid(kNobody) != 0 || ::setuid(kNobody) != 0) ::_exit(90);
    // The attack: every slot held by idle connections that never say Hello.
    std::vector<UniqueFd> idle;
    for (int i = 0; i < 8; ++i) {
      absl::StatusOr<UniqueFd> fd = ConnectSeqpacket(path);
      if (fd.ok()) idle.push_back(*std::move(fd));
    }
    absl::StatusOr<std::unique_ptr<Client>> c = Client::Connect(path);
    int code = 10;
    if (c.ok()) {
      absl::Status s = (*c)->Stats().status();
      std::printf("  uid %u's next connection: %s\n", kNobody, s.ToString().c_str());
      std::fflush(stdout);
      code = absl::StrContains(s.message(), "limits.max_connections_per_uid") ? 0 : 11;
    }
    const char byte = static_cast<char>(code);
    if (::write(ready[1], &byte, 1) != 1) ::_exit(91);
    char ignored;
    (void)::read(release[0], &ignored, 1);  // hold the connections until the parent has checked
    ::_exit(code);
  }
  ::close(release[0]);
  ::close(ready[1]);
  char code = 99;
  ASSERT_EQ(::read(ready[0], &code, 1), 1);
  EXPECT_EQ(code, 0) << "the refusal did not name limits.max_connections_per_uid";
  // The daemon's owner (and any other uid) still gets in.
  absl::StatusOr<std::unique_ptr<Client>> c = Client::Connect(path);
  ASSERT_TRUE(c.ok());
  absl::StatusOr<wire::StatsReply> s = (*c)->Stats();
  EXPECT_TRUE(s.ok()) << s.status();
  if (s.ok()) {
    EXPECT_GE(s->connections_refused(), 7u);
  }
  ::close(release[1]);
  int status;
  ::waitpid(child, &status, 0);
  ::close(ready[0]);
  EXPECT_EQ(d->Stop(), 0);
}

TEST(HardeningNet, AConnectionWithoutHelloIsClosedWithAReason) {
  absl::StatusOr<DaemonProcess> d = DaemonProcess::Start(Config("  hello_timeout_ms: 300\n"));
  ASSERT_TRUE(d.ok()) << d.status();
  absl::StatusOr<Worker> worker = Connect(d->socket_path(), "test/stays");
  ASSERT_TRUE(worker.ok()) << worker.status();
  absl::StatusOr<UniqueFd> idle = ConnectSeqpacket(d->socket_path());
  ASSERT_TRUE(idle.ok());
  const Clock::time_point start = Clock::now();
  absl::StatusOr<wire::Response> why = NextReply(idle->get());
  ASSERT_TRUE(why.ok()) << why.status();
  ASSERT_TRUE(why->has_error());
  EXPECT_EQ(why->error().code(), static_cast<int>(absl::StatusCode::kDeadlineExceeded));
  EXPECT_TRUE(absl::StrContains(why->error().message(), "limits.hello_timeout_ms"))
      << why->error().message();
  EXPECT_TRUE(EofWithin(idle->get(), 10));
  std::printf("  closed after %.3f s: %s\n", SecondsSince(start), why->error().message().c_str());
  // A worker that said Hello is not idle-closed.
  EXPECT_TRUE(worker->client->Lookup({}).ok());
  EXPECT_GE(Stats(*d).hello_timeouts(), 1u);
  EXPECT_EQ(d->Stop(), 0);
}

// ---- memory, malformed input and the log ----

TEST(HardeningNet, AnIdleConnectionCostsNoReceiveBufferOfTheMessageLimit) {
  absl::StatusOr<DaemonProcess> d =
      DaemonProcess::Start(Config("  max_message_bytes: 67108864\n"));  // 64 MiB
  ASSERT_TRUE(d.ok()) << d.status();
  ASSERT_TRUE(Connect(d->socket_path(), "test/warm").ok());
  const uint64_t before_kb = ProcStatusKb(d->pid(), "VmRSS");
  std::vector<Worker> idle;
  for (int i = 0; i < 8; ++i) {
    absl::StatusOr<Worker> w = Connect(d->socket_path(), "test/idle");
    ASSERT_TRUE(w.ok()) << w.status();
    idle.push_back(*std::move(w));
  }
  // One large message: its buffer is given back once it is handled.
  std::string big(160 << 10, 'x');
  big[0] = 0;  // never parses
  ASSERT_TRUE(SendDatagram(idle[0].client->socket_fd(), big).ok());
  absl::StatusOr<wire::Response> r = NextReply(idle[0].client->socket_fd());
  ASSERT_TRUE(r.ok() && r->has_error()) << r.status();
  const uint64_t after_kb = ProcStatusKb(d->pid(), "VmRSS");
  std::printf("  RSS %llu -> %llu KiB with 8 idle connections (64 MiB message limit)\n",
              static_cast<unsigned long long>(before_kb),
              static_cast<unsigned long long>(after_kb));
  EXPECT_LT(after_kb, before_kb + 32 * 1024);  // 8 x 64 MiB if each held a full buffer
  idle.clear();
  EXPECT_EQ(d->Stop(), 0);
}

TEST(HardeningNet, AnEmptyDatagramIsAnsweredAndDescriptorsOnAHelloAreRefused) {
  absl::StatusOr<DaemonProcess> d = DaemonProcess::Start(Config());
  ASSERT_TRUE(d.ok()) << d.status();
  absl::StatusOr<Worker> w = Connect(d->socket_path(), "test/empty");
  ASSERT_TRUE(w.ok()) << w.status();
  ASSERT_TRUE(SendDatagram(w->client->socket_fd(), "").ok());
  absl::StatusOr<wire::Response> r = NextReply(w->client->socket_fd());
  ASSERT_TRUE(r.ok()) << "a 0-byte datagram: " << r.status();
  ASSERT_TRUE(r->has_error());
  EXPECT_EQ(r->error().code(), static_cast<int>(absl::StatusCode::kInvalidArgument));
  std::printf("  0-byte datagram -> %s\n", r->error().message().c_str());
  EXPECT_TRUE(w->client->Lookup({}).ok()) << "the connection must stay open";

  absl::StatusOr<UniqueFd> raw = ConnectSeqpacket(d->socket_path());
  ASSERT_TRUE(raw.ok());
  UniqueFd memfd(::memfd_create("stray", MFD_CLOEXEC));
  wire::Request req;
  req.set_id(1);
  req.mutable_hello()->set_protocol_version(kProtocolVersion);
  req.mutable_hello()->set_namespace_name("test/fds");
  const int fds[] = {memfd.get()};
  ASSERT_TRUE(SendDatagram(raw->get(), req.SerializeAsString(), fds).ok());
  r = NextReply(raw->get());
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_TRUE(r->has_error()) << "a Hello with a descriptor attached was accepted";
  EXPECT_EQ(r->error().code(), static_cast<int>(absl::StatusCode::kInvalidArgument));
  EXPECT_TRUE(absl::StrContains(r->error().message(), "descriptors")) << r->error().message();
  EXPECT_EQ(d->Stop(), 0);
}

TEST(HardeningNet, BadRequestLogLinesAreRateLimitedAndEveryOneCounted) {
  const uint64_t seed = TestSeed();
  std::mt19937_64 rng(seed);
  std::string log;
  absl::StatusOr<DaemonProcess> d = StartLogged(Config("  max_consecutive_errors: 100000\n"), &log);
  ASSERT_TRUE(d.ok()) << d.status();
  absl::StatusOr<Worker> w = Connect(d->socket_path(), "test/noisy");
  ASSERT_TRUE(w.ok()) << w.status();
  constexpr int kBad = 500;
  const Clock::time_point start = Clock::now();
  for (int i = 0; i < kBad; ++i) {
    std::string junk(16 + rng() % 64, '\0');
    for (char& c : junk) c = static_cast<char>(rng());
    junk[0] = 0;  // field number 0 never parses
    ASSERT_TRUE(SendDatagram(w->client->socket_fd(), junk).ok());
    absl::StatusOr<wire::Response> r = NextReply(w->client->socket_fd());
    ASSERT_TRUE(r.ok() && r->has_error()) << i;
  }
  const double elapsed = SecondsSince(start);
  const wire::StatsReply st = Stats(*d);
  EXPECT_EQ(d->Stop(), 0);
  const size_t lines = CountLines(ReadFile(log), "event=bad_request");
  ::unlink(log.c_str());
  std::printf("  %d bad requests in %.2f s: %zu log lines, %llu suppressed\n", kBad, elapsed, lines,
              static_cast<unsigned long long>(st.log_lines_suppressed()));
  EXPECT_GE(st.bad_requests(), static_cast<uint64_t>(kBad));
  // A burst of 20, then 10 a second.
  EXPECT_LE(lines, 20 + static_cast<size_t>(10 * elapsed) + 2);
  EXPECT_GE(st.log_lines_suppressed() + lines, static_cast<uint64_t>(kBad));
}

// ---- the admin HTTP port ----

int ConnectTcp(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

TEST(HardeningNet, HealthzAnswersWhileHalfSentRequestsHoldConnections) {
  std::string log;
  absl::StatusOr<DaemonProcess> d = StartLogged(Config("", "", "127.0.0.1:0"), &log);
  ASSERT_TRUE(d.ok()) << d.status();
  int port = 0;
  for (int i = 0; i < 500 && port == 0; ++i) {
    const std::string text = ReadFile(log);
    if (size_t at = text.find("event=http_listening"); at != std::string::npos) {
      const size_t p = text.find(" port=", at);
      const size_t end = text.find('\n', p);
      if (p != std::string::npos) (void)absl::SimpleAtoi(text.substr(p + 6, end - p - 6), &port);
    }
    if (port == 0) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_GT(port, 0) << "no event=http_listening line in " << log;
  // The attack: connections that send half a request and then nothing.
  std::vector<UniqueFd> half;
  for (int i = 0; i < 8; ++i) {
    half.emplace_back(ConnectTcp(port));
    ASSERT_TRUE(half.back().valid());
    const std::string partial = "GET /metrics HTTP/1.1\r\nHost: kvtier\r\n";
    ASSERT_EQ(::send(half.back().get(), partial.data(), partial.size(), MSG_NOSIGNAL),
              static_cast<ssize_t>(partial.size()));
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(100));  // let the server pick them up
  for (int probe = 0; probe < 3; ++probe) {
    UniqueFd fd(ConnectTcp(port));
    ASSERT_TRUE(fd.valid());
    SetReceiveTimeout(fd.get(), 2);  // a Kubernetes probe's patience, roughly
    const std::string request =
        "GET /healthz HTTP/1.1\r\nHost: kvtier\r\nConnection: close\r\n\r\n";
    ASSERT_EQ(::send(fd.get(), request.data(), request.size(), MSG_NOSIGNAL),
              static_cast<ssize_t>(request.size()));
    char reply[256] = {};
    const ssize_t n = ::recv(fd.get(), reply, sizeof(reply) - 1, 0);
    ASSERT_GT(n, 0) << "probe " << probe << " got no answer in 2 s";
    EXPECT_TRUE(absl::StartsWith(reply, "HTTP/1.1 200")) << reply;
  }
  // The half-sent requests time out and their connections are closed.
  const Clock::time_point start = Clock::now();
  for (UniqueFd& fd : half) {
    SetReceiveTimeout(fd.get(), 8);
    char buf[512];
    ssize_t n;
    while ((n = ::recv(fd.get(), buf, sizeof(buf), 0)) > 0) {
    }
    EXPECT_TRUE(n == 0 || errno == ECONNRESET) << "a half-sent request was held over 8 s";
  }
  std::printf("  half-sent requests closed within %.2f s\n", SecondsSince(start));
  EXPECT_EQ(d->Stop(), 0);
  ::unlink(log.c_str());
}

}  // namespace
}  // namespace kvtier::testing
