// kvtierd integration tests: a real daemon, real worker processes, a real socket. Covers prefix
// sharing between workers, leases (kill -9 leaves nothing behind), SO_PEERCRED refusal, bad
// input, config validation and clean shutdown.
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "base/seqpacket.h"
#include "client/client.h"
#include "client/kvtier_c.h"
#include "daemon/workload.h"
#include "gtest/gtest.h"
#include "tests/integration/daemon_harness.h"

namespace kvtier::testing {
namespace {

constexpr char kBaseConfig[] = R"(http_address: ""
store:
  page_bytes: 32768
  hbm_pages: 8
  dram_pages: 128
limits:
  max_pinned_pages: 64
  max_batch_pages: 128
  max_message_bytes: 65536
  max_consecutive_errors: 4
namespaces:
  - name: "test/*"
    sink_slots: 2
)";

// The worker's layout (tests/integration/test_worker.cc): 32 KiB pages.
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

wire::StatsReply Stats(const DaemonProcess& d) {
  absl::StatusOr<std::unique_ptr<Client>> c = Client::Connect(d.socket_path());
  EXPECT_TRUE(c.ok()) << c.status();
  if (!c.ok()) return {};
  absl::StatusOr<wire::StatsReply> s = (*c)->Stats();
  EXPECT_TRUE(s.ok()) << s.status();
  return s.ok() ? *s : wire::StatsReply();
}

// Polls until the daemon holds nothing for any session; returns how long that took.
absl::StatusOr<double> WaitForQuiescence(const DaemonProcess& d, double timeout_s) {
  const auto start = std::chrono::steady_clock::now();
  while (true) {
    const wire::StatsReply s = Stats(d);
    // The polling connection itself is the one live session.
    if (s.sessions() == 1 && s.pinned_pages() == 0 && s.inflight_ops() == 0 &&
        s.registered_buffers() == 0) {
      return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    }
    if (std::chrono::steady_clock::now() - start > std::chrono::duration<double>(timeout_s)) {
      return absl::DeadlineExceededError(
          absl::StrCat("sessions ", s.sessions(), " pinned ", s.pinned_pages(), " inflight ",
                       s.inflight_ops(), " buffers ", s.registered_buffers()));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
}

TEST(DaemonIntegration, TwoWorkersShareAPrefixBitIdentically) {
  const uint64_t seed = TestSeed();
  absl::StatusOr<DaemonProcess> d = DaemonProcess::Start(kBaseConfig);
  ASSERT_TRUE(d.ok()) << d.status();
  const std::string s = absl::StrCat(seed);
  WorkerResult stored = RunWorker({"store", d->socket_path(), "test/model-a", s, "40"});
  ASSERT_EQ(stored.exit_code, 0) << stored.output;
  EXPECT_NE(stored.output.find("stored 40"), std::string::npos);
  // A second process, its own buffers and blocks: every byte must match through Load (8 HBM
  // slots, so most of the 40 pages sit in DRAM, whose pool is never shared with a worker).
  WorkerResult loaded = RunWorker({"load", d->socket_path(), "test/model-a", s, "40"});
  ASSERT_EQ(loaded.exit_code, 0) << loaded.output;
  EXPECT_NE(loaded.output.find("verified 40 pages"), std::string::npos) << loaded.output;
  EXPECT_NE(loaded.output.find("DRAM pool not shared"), std::string::npos) << loaded.output;
  // The same tokens in another namespace are different keys: nothing is found.
  WorkerResult other = RunWorker({"load", d->socket_path(), "test/model-b", s, "40"});
  EXPECT_EQ(other.exit_code, 1) << other.output;
  const wire::StatsReply st = Stats(*d);
  EXPECT_EQ(st.pinned_pages(), 0u);
  EXPECT_GE(st.pages(), 40u);
  EXPECT_EQ(d->Stop(), 0);
}

TEST(DaemonIntegration, Kill9OfAWorker100TimesLeaksNothing) {
  const uint64_t seed = TestSeed();
  absl::StatusOr<DaemonProcess> d = DaemonProcess::Start(kBaseConfig);
  ASSERT_TRUE(d.ok()) << d.status();
  const std::string s = absl::StrCat(seed + 1);
  // Baseline after one clean round: the same pages exist from then on (a cache keeps them).
  ASSERT_EQ(RunWorker({"store", d->socket_path(), "test/kill", s, "16"}).exit_code, 0);
  ASSERT_TRUE(WaitForQuiescence(*d, 5).ok());
  const wire::StatsReply base = Stats(*d);
  // The last Stats connection may still be closing on the daemon's side: let fds settle.
  auto settled_fds = [&] {
    size_t last = d->OpenFds();
    for (int stable = 0; stable < 10;) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
      const size_t now = d->OpenFds();
      stable = now == last ? stable + 1 : 0;
      last = now;
    }
    return last;
  };
  const size_t base_fds = settled_fds();
  const size_t base_maps = d->MappedAreas();
  double worst_s = 0;
  for (int i = 0; i < 100; ++i) {
    absl::StatusOr<pid_t> w =
        SpawnWorkerUntil({"hold", d->socket_path(), "test/kill", s, "16"}, "ready");
    ASSERT_TRUE(w.ok()) << w.status();
    ASSERT_EQ(::kill(*w, SIGKILL), 0);
    int status;
    ::waitpid(*w, &status, 0);
    absl::StatusOr<double> took = WaitForQuiescence(*d, 5);
    ASSERT_TRUE(took.ok()) << "iteration " << i << ": " << took.status();
    worst_s = std::max(worst_s, *took);
  }
  const wire::StatsReply after = Stats(*d);
  std::printf(
      "100 kill -9: leases released within %.1f ms at worst; %llu leases expired, %llu "
      "ops cancelled\n",
      worst_s * 1e3, static_cast<unsigned long long>(after.leases_expired()),
      static_cast<unsigned long long>(after.ops_cancelled()));
  EXPECT_EQ(after.pinned_pages(), 0u);
  EXPECT_EQ(after.registered_buffers(), 0u);
  EXPECT_EQ(after.pages(), base.pages());
  // The planner may move pages between tiers meanwhile; the pool occupancy over all tiers is
  // what must come back.
  uint32_t base_used = 0, after_used = 0;
  for (const wire::TierStatus& t : base.tiers()) base_used += t.used_slots();
  for (const wire::TierStatus& t : after.tiers()) after_used += t.used_slots();
  EXPECT_EQ(after_used, base_used);
  EXPECT_GE(after.leases_expired(), 100u);
  const size_t after_fds = settled_fds();
  EXPECT_EQ(after_fds, base_fds);
  // No worker buffer is still mapped. (The total count of mappings may grow by glibc's cache of
  // thread stacks, which is not a leak, so it is only reported.)
  EXPECT_EQ(d->MappedAreas("kvtier-worker-kv"), 0u);
  std::printf("daemon fds %zu -> %zu, mappings %zu -> %zu\n", base_fds, after_fds, base_maps,
              d->MappedAreas());
  // Every page is unpinned again: a fresh worker can still load them all.
  EXPECT_EQ(RunWorker({"load", d->socket_path(), "test/kill", s, "16"}).exit_code, 0);
  EXPECT_EQ(d->Stop(), 0);
}

// Forks, drops to `uid`, runs `fn` and returns its exit code.
int AsUser(uid_t uid, const std::function<int()>& fn) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    if (::setgid(uid) != 0 || ::setuid(uid) != 0) ::_exit(90);
    ::_exit(fn());
  }
  int status;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 99;
}

TEST(DaemonIntegration, AWrongUidIsRefused) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to run a client as another uid";
  constexpr uid_t kNobody = 65534;
  // World-connectable socket, so the refusal under test is SO_PEERCRED's, not the file mode's.
  absl::StatusOr<DaemonProcess> d =
      DaemonProcess::Start(absl::StrCat(kBaseConfig, "socket_mode: 0666\n"), 0755);
  ASSERT_TRUE(d.ok()) << d.status();
  const std::string path = d->socket_path();
  const int code = AsUser(kNobody, [&] {
    absl::StatusOr<std::unique_ptr<Client>> c = Client::Connect(path);
    if (!c.ok()) return 10;
    absl::StatusOr<HelloInfo> h = (*c)->Hello("test/model-a", WorkerLayout());
    if (h.ok()) return 11;
    if (h.status().code() != absl::StatusCode::kPermissionDenied) return 12;
    if (h.status().message().find("uid 65534") == absl::string_view::npos) return 13;
    // Refused credentials end the connection.
    if ((*c)->Lookup({}).ok()) return 14;
    absl::StatusOr<std::unique_ptr<Client>> c2 = Client::Connect(path);
    if (!c2.ok()) return 15;
    if ((*c2)->Stats().status().code() != absl::StatusCode::kPermissionDenied) return 16;
    return 0;
  });
  EXPECT_EQ(code, 0);
  const wire::StatsReply st = Stats(*d);
  EXPECT_GE(st.auth_refused(), 2u);
  // The owner still works.
  absl::StatusOr<std::unique_ptr<Client>> c = Client::Connect(path);
  ASSERT_TRUE(c.ok());
  EXPECT_TRUE((*c)->Hello("test/model-a", WorkerLayout()).ok());
  EXPECT_EQ(d->Stop(), 0);

  // With the default mode (0600 socket in a 0700 directory) another uid cannot even connect.
  absl::StatusOr<DaemonProcess> strict = DaemonProcess::Start(kBaseConfig, 0755);
  ASSERT_TRUE(strict.ok()) << strict.status();
  const std::string strict_path = strict->socket_path();
  EXPECT_EQ(AsUser(kNobody, [&] { return Client::Connect(strict_path).ok() ? 1 : 0; }), 0);
  EXPECT_EQ(strict->Stop(), 0);
}

// Sends raw bytes on `fd` and returns the daemon's reply (or EOF as an error).
absl::StatusOr<wire::Response> Raw(int fd, absl::string_view bytes,
                                   absl::Span<const int> fds = {}) {
  if (absl::Status s = SendDatagram(fd, bytes, fds); !s.ok()) return s;
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

bool IsEof(int fd) {
  std::string buffer;
  absl::StatusOr<Datagram> d = ReceiveDatagram(fd, buffer, 1024);
  return !d.ok() || d->eof;
}

struct BadCase {
  std::string name;
  absl::StatusCode code;
  std::string message_part;
  bool closes;
};

TEST(DaemonIntegration, EachBadInputGetsItsErrorAndTheDaemonServesTheNextClient) {
  const uint64_t seed = TestSeed();
  std::mt19937_64 rng(seed);
  absl::StatusOr<DaemonProcess> d = DaemonProcess::Start(kBaseConfig);
  ASSERT_TRUE(d.ok()) << d.status();
  const std::string path = d->socket_path();
  ASSERT_EQ(RunWorker({"store", path, "test/bad", absl::StrCat(seed), "8"}).exit_code, 0);

  // A fresh, handshaken client per case: what one case breaks cannot help or hurt the next.
  auto fresh = [&](bool hello) -> std::unique_ptr<Client> {
    absl::StatusOr<std::unique_ptr<Client>> c = Client::Connect(path);
    EXPECT_TRUE(c.ok()) << c.status();
    if (hello) {
      EXPECT_TRUE((*c)->Hello("test/bad", WorkerLayout()).ok());
    }
    return *std::move(c);
  };
  auto next_client_is_served = [&] {
    std::unique_ptr<Client> c = fresh(true);
    absl::StatusOr<LookupReply> r = c->Lookup({PageKey{rng() | 1, rng()}});
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->prefix_pages, 0u);
  };
  auto expect = [&](const absl::StatusOr<wire::Response>& r, absl::StatusCode code,
                    const std::string& part, const std::string& name) {
    ASSERT_TRUE(r.ok()) << name << ": " << r.status();
    ASSERT_TRUE(r->has_error()) << name;
    EXPECT_EQ(r->error().code(), static_cast<int>(code)) << name << ": " << r->error().message();
    EXPECT_NE(r->error().message().find(part), std::string::npos)
        << name << ": " << r->error().message();
    std::printf("  %-28s -> %s: %s\n", name.c_str(),
                absl::StatusCodeToString(static_cast<absl::StatusCode>(r->error().code())).c_str(),
                r->error().message().c_str());
  };

  {  // random bytes that are not a protobuf Request (a field tag of 0 never parses)
    std::unique_ptr<Client> c = fresh(true);
    std::string junk(64 + rng() % 512, '\0');
    for (char& ch : junk) ch = static_cast<char>(rng());
    junk[0] = 0;
    expect(Raw(c->socket_fd(), junk), absl::StatusCode::kInvalidArgument, "does not parse",
           "malformed");
    EXPECT_TRUE(c->Lookup({}).ok()) << "a malformed datagram must not close the connection";
    next_client_is_served();
  }
  {  // truncated: a valid Lookup cut in the middle of its keys
    std::unique_ptr<Client> c = fresh(true);
    wire::Request req;
    req.set_id(7);
    for (int i = 0; i < 16; ++i) req.mutable_lookup()->add_key_words(rng());
    const std::string full = req.SerializeAsString();
    expect(Raw(c->socket_fd(), full.substr(0, full.size() - 5)), absl::StatusCode::kInvalidArgument,
           "does not parse", "truncated");
    next_client_is_served();
  }
  {  // oversized: beyond limits.max_message_bytes (65536)
    std::unique_ptr<Client> c = fresh(true);
    std::string big(70000, 'x');
    expect(Raw(c->socket_fd(), big), absl::StatusCode::kResourceExhausted,
           "limits.max_message_bytes", "oversized");
    EXPECT_TRUE(c->Lookup({}).ok());
    next_client_is_served();
  }
  {  // an operation before the handshake
    std::unique_ptr<Client> c = fresh(false);
    wire::Request req;
    req.set_id(1);
    req.mutable_lookup()->add_key_words(rng());
    req.mutable_lookup()->add_key_words(rng());
    expect(Raw(c->socket_fd(), req.SerializeAsString()), absl::StatusCode::kFailedPrecondition,
           "before Hello", "before-hello");
    next_client_is_served();
  }
  {  // an unknown protocol version: refused, and the connection is closed
    std::unique_ptr<Client> c = fresh(false);
    wire::Request req;
    req.set_id(1);
    req.mutable_hello()->set_protocol_version(99);
    req.mutable_hello()->set_namespace_name("test/bad");
    expect(Raw(c->socket_fd(), req.SerializeAsString()), absl::StatusCode::kFailedPrecondition,
           "protocol version 99", "unknown-version");
    EXPECT_TRUE(IsEof(c->socket_fd()));
    next_client_is_served();
  }
  {  // a layout whose pages are not the daemon's page size
    std::unique_ptr<Client> c = fresh(false);
    LayoutSpec l = WorkerLayout();
    l.head_dim = 128;
    absl::StatusOr<HelloInfo> h = c->Hello("test/bad", l);
    EXPECT_EQ(h.status().code(), absl::StatusCode::kInvalidArgument) << h.status();
    EXPECT_NE(h.status().message().find("store.page_bytes"), absl::string_view::npos);
    std::printf("  %-28s -> %s\n", "layout-page-size", h.status().ToString().c_str());
    next_client_is_served();
  }
  {  // same page size, different shape than the namespace's first worker
    std::unique_ptr<Client> c = fresh(false);
    LayoutSpec l = WorkerLayout();
    l.layers = 8;
    l.kv_heads = 1;
    absl::StatusOr<HelloInfo> h = c->Hello("test/bad", l);
    EXPECT_EQ(h.status().code(), absl::StatusCode::kInvalidArgument) << h.status();
    EXPECT_NE(h.status().message().find("does not match namespace"), absl::string_view::npos);
    std::printf("  %-28s -> %s\n", "layout-mismatch", h.status().ToString().c_str());
    next_client_is_served();
  }
  {  // block ids beyond the registered buffers: per-page error, the other pages load
    std::unique_ptr<Client> c = fresh(true);
    absl::StatusOr<Layout> layout = Layout::Create(WorkerLayout());
    absl::StatusOr<WorkerBuffers> b = WorkerBuffers::Create(*layout);
    ASSERT_TRUE(b.ok());
    ASSERT_TRUE(c->RegisterBuffers(b->fds(), b->sizes()).ok());
    const PageKey k{rng() | 1, rng()};
    absl::StatusOr<OpHandle> op =
        c->LoadAsync({k, k}, {3, 64 + static_cast<uint32_t>(rng() % 1000)});
    ASSERT_TRUE(op.ok());
    absl::StatusOr<PageResults> r = c->Wait(*op);
    ASSERT_TRUE(r.ok()) << r.status();
    ASSERT_EQ(r->codes.size(), 2u);
    EXPECT_EQ(r->codes[0], absl::StatusCode::kNotFound);
    EXPECT_EQ(r->codes[1], absl::StatusCode::kOutOfRange);
    std::printf("  %-28s -> per page: %s, %s\n", "block-id-out-of-range",
                absl::StatusCodeToString(r->codes[0]).c_str(),
                absl::StatusCodeToString(r->codes[1]).c_str());
    // The per-page message names the block and its range.
    absl::StatusOr<OpHandle> op2 = c->LoadAsync({k}, {70000});
    ASSERT_TRUE(op2.ok());
    absl::StatusOr<PageResults> r2 = c->Wait(*op2);
    ASSERT_TRUE(r2.ok());
    EXPECT_NE(r2->first_error.find("70000"), std::string::npos) << r2->first_error;
    std::printf("  %-28s -> %s\n", "block-id-out-of-range", r2->first_error.c_str());
    next_client_is_served();
  }
  {  // odd number of key words, and too many keys
    std::unique_ptr<Client> c = fresh(true);
    wire::Request req;
    req.set_id(5);
    for (int i = 0; i < 3; ++i) req.mutable_lookup()->add_key_words(rng());
    expect(Raw(c->socket_fd(), req.SerializeAsString()), absl::StatusCode::kInvalidArgument,
           "(hi, lo) pairs", "odd-key-words");
    req.mutable_lookup()->clear_key_words();
    for (int i = 0; i < 2 * 129; ++i) req.mutable_lookup()->add_key_words(rng());
    expect(Raw(c->socket_fd(), req.SerializeAsString()), absl::StatusCode::kResourceExhausted,
           "limits.max_batch_pages", "too-many-keys");
    next_client_is_served();
  }
  {  // buffers: an unsealed memfd (accepted, copied through its fd: fd_buffer_test.cc), and the
     // wrong number of buffers
    std::unique_ptr<Client> c = fresh(true);
    absl::StatusOr<Layout> layout = Layout::Create(WorkerLayout());
    std::vector<UniqueFd> fds;
    std::vector<int> raw;
    std::vector<uint64_t> sizes;
    for (uint32_t i = 0; i < layout->buffer_count(); ++i) {
      fds.emplace_back(::memfd_create("unsealed", MFD_CLOEXEC));
      ASSERT_EQ(::ftruncate(fds.back().get(), layout->buffer_bytes()), 0);
      raw.push_back(fds.back().get());
      sizes.push_back(layout->buffer_bytes());
    }
    absl::Status s = c->RegisterBuffers(raw, sizes);
    EXPECT_TRUE(s.ok()) << s;
    std::printf("  %-28s -> %s\n", "unsealed-buffer", s.ToString().c_str());
    s = c->RegisterBuffers(absl::MakeSpan(raw).subspan(0, 1), absl::MakeSpan(sizes).subspan(0, 1));
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    std::printf("  %-28s -> %s\n", "buffer-count", s.ToString().c_str());
    // Descriptors attached to a request that carries none.
    wire::Request req;
    req.set_id(9);
    req.mutable_lookup();
    expect(Raw(c->socket_fd(), req.SerializeAsString(), raw), absl::StatusCode::kInvalidArgument,
           "only RegisterBuffers", "stray-descriptors");
    next_client_is_served();
  }
  {  // pins: unpinning what is not pinned; exceeding limits.max_pinned_pages
    std::unique_ptr<Client> c = fresh(true);
    const PageKey k{rng() | 1, rng()};
    absl::Status s = c->Unpin({k});
    EXPECT_FALSE(s.ok());
    std::printf("  %-28s -> %s\n", "unpin-unpinned", s.ToString().c_str());
    std::vector<PageKey> many(65, k);
    s = c->Pin(many);
    EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
    std::printf("  %-28s -> %s\n", "pin-quota", s.ToString().c_str());
    next_client_is_served();
  }
  {  // an empty request (no operation), repeated past limits.max_consecutive_errors: closed
    std::unique_ptr<Client> c = fresh(true);
    wire::Request req;
    req.set_id(3);
    for (int i = 0; i < 4; ++i) {
      expect(Raw(c->socket_fd(), req.SerializeAsString()), absl::StatusCode::kInvalidArgument,
             "no operation", "empty-request");
    }
    EXPECT_TRUE(IsEof(c->socket_fd())) << "a stream of bad requests is no longer trusted";
    next_client_is_served();
  }
  const wire::StatsReply st = Stats(*d);
  EXPECT_GE(st.bad_requests(), 12u);
  EXPECT_GE(st.connections_closed_untrusted(), 2u);
  EXPECT_EQ(d->Stop(), 0);
}

TEST(DaemonIntegration, SigtermWithAWorkerHoldingPinsAndQueuedLoadsExitsCleanly) {
  const uint64_t seed = TestSeed();
  absl::StatusOr<DaemonProcess> d = DaemonProcess::Start(kBaseConfig);
  ASSERT_TRUE(d.ok()) << d.status();
  absl::StatusOr<pid_t> w = SpawnWorkerUntil(
      {"hold", d->socket_path(), "test/sigterm", absl::StrCat(seed + 2), "32"}, "ready");
  ASSERT_TRUE(w.ok()) << w.status();
  const std::string socket = d->socket_path();
  // In-flight operations finish or are cancelled, the lease ends, the socket is removed, exit 0.
  EXPECT_EQ(d->Stop(), 0);
  EXPECT_FALSE(std::filesystem::exists(socket));
  ::kill(*w, SIGKILL);
  int status;
  ::waitpid(*w, &status, 0);
}

TEST(DaemonIntegration, TheCAbiStoresLooksUpAndLoads) {
  const uint64_t seed = TestSeed();
  std::mt19937_64 rng(seed);
  absl::StatusOr<DaemonProcess> d = DaemonProcess::Start(kBaseConfig);
  ASSERT_TRUE(d.ok()) << d.status();
  int err = -1;
  kvtier_client* c = kvtier_connect(d->socket_path().c_str(), &err);
  ASSERT_NE(c, nullptr) << err;
  const LayoutSpec s = WorkerLayout();
  const kvtier_layout l{s.layers, s.kv_heads, s.head_dim, 0, s.tokens_per_page, 0, s.num_blocks};
  kvtier_key salt{};
  ASSERT_EQ(kvtier_hello(c, "test/c-abi", &l, &salt), 0) << kvtier_last_error(c);
  absl::StatusOr<Layout> layout = Layout::Create(s);
  absl::StatusOr<WorkerBuffers> b = WorkerBuffers::Create(*layout);
  ASSERT_TRUE(b.ok());
  const std::vector<int> fds = b->fds();
  const std::vector<uint64_t> sizes = b->sizes();
  ASSERT_EQ(kvtier_register_buffers(c, fds.data(), sizes.data(), fds.size()), 0)
      << kvtier_last_error(c);
  constexpr size_t kPages = 6;
  std::vector<int32_t> tokens(kPages * s.tokens_per_page);
  for (int32_t& t : tokens) t = static_cast<int32_t>(rng() % 50000);
  kvtier_key keys[kPages];
  ASSERT_EQ(kvtier_chain_keys(salt, tokens.data(), tokens.size(), s.tokens_per_page, keys, kPages),
            kPages);
  std::vector<std::byte> page(layout->page_bytes()), got(layout->page_bytes());
  uint32_t store_blocks[kPages], load_blocks[kPages];
  for (uint32_t i = 0; i < kPages; ++i) {
    store_blocks[i] = i;
    load_blocks[i] = 40 + i;
    FillPage(PageKey{keys[i].hi, keys[i].lo}, absl::MakeSpan(page));
    ASSERT_TRUE(b->WriteBlock(*layout, i, page).ok());
  }
  uint64_t op = 0;
  ASSERT_EQ(kvtier_store_submit(c, keys, store_blocks, kPages, nullptr, 0, nullptr, &op), 0);
  int32_t codes[kPages];
  uint32_t ok_pages = 0;
  ASSERT_EQ(kvtier_wait(c, op, codes, kPages, &ok_pages), 0);
  EXPECT_EQ(ok_pages, kPages) << kvtier_last_error(c);
  size_t prefix = 0;
  uint8_t tiers[kPages];
  ASSERT_EQ(kvtier_lookup(c, keys, kPages, &prefix, tiers), 0);
  EXPECT_EQ(prefix, kPages);
  ASSERT_EQ(kvtier_pin(c, keys, kPages), 0);
  ASSERT_EQ(kvtier_load_submit(c, keys, load_blocks, kPages, &op), 0);
  ASSERT_EQ(kvtier_wait(c, op, codes, kPages, &ok_pages), 0);
  EXPECT_EQ(ok_pages, kPages) << kvtier_last_error(c);
  for (uint32_t i = 0; i < kPages; ++i) {
    FillPage(PageKey{keys[i].hi, keys[i].lo}, absl::MakeSpan(page));
    ASSERT_TRUE(b->ReadBlock(*layout, load_blocks[i], absl::MakeSpan(got)).ok());
    EXPECT_EQ(std::memcmp(page.data(), got.data(), page.size()), 0) << "page " << i;
  }
  // Errors come back as status codes with a message.
  EXPECT_EQ(kvtier_unpin(c, keys, kPages), 0);
  EXPECT_EQ(kvtier_unpin(c, keys, 1), static_cast<int>(absl::StatusCode::kFailedPrecondition));
  EXPECT_NE(std::string(kvtier_last_error(c)).find("not pinned"), std::string::npos);
  kvtier_close(c);
  EXPECT_EQ(d->Stop(), 0);
}

TEST(DaemonIntegration, ARestartKeepsTheNvmeTiersPages) {
  const uint64_t seed = TestSeed();
  char tmpl[] = "/tmp/kvtier-nvme-XXXXXX";
  ASSERT_NE(::mkdtemp(tmpl), nullptr);
  const std::string nvme_dir = tmpl;
  // No HBM, 8 DRAM slots: most of 40 pages are demoted to NVMe as they arrive.
  const std::string config = absl::StrCat(
      "http_address: \"\"\nstore:\n  page_bytes: 32768\n  hbm_pages: 0\n  dram_pages: 8\n"
      "nvme:\n  directories: [",
      nvme_dir, "]\n  capacity_bytes: ", 64 * (4096 + 32768),
      "\n"
      "namespaces:\n  - name: \"test/*\"\n    sink_slots: 0\n");
  const std::string s = absl::StrCat(seed + 3);
  {
    absl::StatusOr<DaemonProcess> d = DaemonProcess::Start(config);
    ASSERT_TRUE(d.ok()) << d.status();
    ASSERT_EQ(RunWorker({"store", d->socket_path(), "test/nvme", s, "40"}).exit_code, 0);
    const wire::StatsReply st = Stats(*d);
    ASSERT_EQ(st.tiers_size(), 2);
    std::printf("before restart: %u pages in %s, %u in %s\n", st.tiers(0).used_slots(),
                st.tiers(0).tier().c_str(), st.tiers(1).used_slots(), st.tiers(1).tier().c_str());
    EXPECT_GT(st.tiers(1).used_slots(), 0u);
    EXPECT_EQ(d->Stop(), 0);
  }
  absl::StatusOr<DaemonProcess> d = DaemonProcess::Start(config);
  ASSERT_TRUE(d.ok()) << d.status();
  const wire::StatsReply st = Stats(*d);
  ASSERT_EQ(st.tiers_size(), 2);
  const uint32_t recovered = st.tiers(1).used_slots();
  EXPECT_GT(recovered, 0u);
  WorkerResult probe = RunWorker({"probe", d->socket_path(), "test/nvme", s, "40"});
  ASSERT_EQ(probe.exit_code, 0) << probe.output;
  std::printf("after restart: %u pages recovered on nvme; worker: %s", recovered,
              probe.output.c_str());
  EXPECT_NE(probe.output.find(absl::StrCat("verified ", recovered, " of 40")), std::string::npos)
      << probe.output;
  EXPECT_EQ(d->Stop(), 0);
  std::filesystem::remove_all(nvme_dir);
}

// Every thread of `pid` stopped (SIGSTOP is delivered asynchronously: a thread on another core
// could still answer for a moment).
bool WaitUntilStopped(pid_t pid) {
  for (int i = 0; i < 30000; ++i) {
    bool all = true, any = false;
    for (const auto& task :
         std::filesystem::directory_iterator(absl::StrCat("/proc/", pid, "/task"))) {
      std::ifstream in(task.path() / "stat");
      std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      const size_t paren = stat.rfind(')');
      if (paren == std::string::npos || paren + 2 >= stat.size()) continue;  // a thread that ended
      any = true;
      const char state = stat[paren + 2];
      all = all && (state == 'T' || state == 't');
    }
    if (any && all) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return false;
}

// An operator's `kvtierctl status` against a daemon that does not answer fails with the reason
// instead of hanging the shell; once the daemon runs again it answers.
TEST(DaemonIntegration, KvtierctlGivesUpOnAStalledDaemon) {
  absl::StatusOr<DaemonProcess> d = DaemonProcess::Start("");
  ASSERT_TRUE(d.ok()) << d.status();
  ASSERT_EQ(::kill(d->pid(), SIGSTOP), 0);
  ASSERT_TRUE(WaitUntilStopped(d->pid()));
  const WorkerResult stalled =
      RunProgram({KVTIERCTL_BIN, "status", "--socket", d->socket_path(), "--timeout_ms", "300"});
  ASSERT_EQ(::kill(d->pid(), SIGCONT), 0);
  EXPECT_EQ(stalled.exit_code, 1) << stalled.output;
  EXPECT_NE(stalled.output.find("DEADLINE_EXCEEDED"), std::string::npos) << stalled.output;
  EXPECT_NE(stalled.output.find("no reply from kvtierd within 300ms"), std::string::npos)
      << stalled.output;
  const WorkerResult running = RunProgram({KVTIERCTL_BIN, "status", "--socket", d->socket_path()});
  EXPECT_EQ(running.exit_code, 0) << running.output;
  EXPECT_NE(running.output.find("protocol"), std::string::npos) << running.output;
  EXPECT_EQ(d->Stop(), 0);
}

TEST(DaemonIntegration, ConfigErrorsNameTheKeyAndNvmeIsNotSilentlyDropped) {
  char tmpl[] = "/tmp/kvtier-cfg-XXXXXX";
  ASSERT_NE(::mkdtemp(tmpl), nullptr);
  const std::string dir = tmpl;
  auto run = [&](const std::string& yaml) {
    std::ofstream(dir + "/c.yaml")
        << "data_dir: " << dir << "/d\nsocket_path: " << dir << "/s.sock\n"
        << yaml;
    const std::string cmd =
        absl::StrCat(KVTIERD_BIN, " --config ", dir, "/c.yaml 2>", dir, "/err.txt");
    const int status = std::system(cmd.c_str());
    std::stringstream err;
    err << std::ifstream(dir + "/err.txt").rdbuf();
    return std::make_pair(WEXITSTATUS(status), err.str());
  };
  auto [code, err] = run("store:\n  page_bytes: 0\n");
  EXPECT_EQ(code, 2);
  EXPECT_NE(err.find("store.page_bytes"), std::string::npos) << err;
  std::tie(code, err) = run("limits:\n  max_inflight: 3\n");
  EXPECT_EQ(code, 2);
  EXPECT_NE(err.find("limits.max_inflight: unknown key"), std::string::npos) << err;
  std::tie(code, err) = run("gpu:\n  device_to_device_sm_budget: -1\n");
  EXPECT_EQ(code, 2);
  EXPECT_NE(err.find("gpu.device_to_device_sm_budget"), std::string::npos) << err;
  std::tie(code, err) =
      run(absl::StrCat("nvme:\n  directories: [", dir, "/nvme]\n  capacity_bytes: 4096\n"));
  EXPECT_EQ(code, 2);
  EXPECT_NE(err.find("nvme.capacity_bytes"), std::string::npos) << err;
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace kvtier::testing
