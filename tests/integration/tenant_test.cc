// Tenant isolation and data safety, against a real kvtierd: a worker of one namespace never sees
// or touches another namespace's pages (through the DRAM pool, through keys, on any tier, after a
// restart), one tenant cannot lock the others out (namespaces, sink reserves, pins), a second
// daemon cannot damage the first one's data, and start-up refuses configs that cannot work.
//
// The hostile worker runs as a second uid (setpriv --reuid=65534), so these tests need root, as
// CI has; without it they are skipped with the reason.
#include <fcntl.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "base/unique_fd.h"
#include "client/client.h"
#include "daemon/workload.h"
#include "gtest/gtest.h"
#include "tests/integration/daemon_harness.h"
#include "tests/unit/daemon/http_get.h"

namespace kvtier::testing {
namespace {

constexpr uid_t kOtherUid = 65534;
constexpr uint64_t kPageBytes = 32768;

// The test worker's and the probe's layout: 32 KiB pages in 8 pieces.
LayoutSpec WorkerLayout() {
  LayoutSpec s;
  s.layers = 4;
  s.kv_heads = 2;
  s.head_dim = 64;
  s.dtype = DType::kBF16;
  s.tokens_per_page = 16;
  s.tensor_layout = TensorLayout::kVllmPerLayer;
  s.num_blocks = 64;
  return s;
}

struct Command {
  int exit_code = -1;  // -1000 when it was still running at the deadline (then killed)
  std::string output;  // stdout and stderr together
};

// Runs `argv` to completion (or kills it after `timeout_s`), stdout and stderr captured.
Command RunCommand(std::vector<std::string> argv, double timeout_s = 20) {
  int p[2];
  if (::pipe2(p, O_CLOEXEC) != 0) return {};
  UniqueFd read_end(p[0]), write_end(p[1]);
  std::vector<char*> args;
  for (std::string& a : argv) args.push_back(a.data());
  args.push_back(nullptr);
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::dup2(write_end.get(), 1);
    ::dup2(write_end.get(), 2);
    ::execv(args[0], args.data());
    ::_exit(127);
  }
  write_end.Reset();
  ::fcntl(read_end.get(), F_SETFL, O_NONBLOCK);
  Command c;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
  int status = 0;
  bool exited = false;
  while (true) {
    char buf[4096];
    for (ssize_t n; (n = ::read(read_end.get(), buf, sizeof(buf))) > 0;) c.output.append(buf, n);
    if (exited) break;
    if (::waitpid(pid, &status, WNOHANG) == pid) {
      exited = true;  // one more read drains what is left
      continue;
    }
    if (std::chrono::steady_clock::now() > deadline) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      c.exit_code = -1000;
      return c;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  c.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
  return c;
}

// `argv` as uid/gid 65534 with no supplementary groups.
std::vector<std::string> AsOtherUid(std::vector<std::string> argv) {
  std::vector<std::string> full = {"/usr/bin/setpriv", "--reuid=65534", "--regid=65534",
                                   "--clear-groups"};
  full.insert(full.end(), argv.begin(), argv.end());
  return full;
}

bool CanSwitchUid() { return ::geteuid() == 0 && ::access("/usr/bin/setpriv", X_OK) == 0; }

std::string MakeTempDir(const char* what) {
  std::string tmpl = absl::StrCat("/tmp/kvtier-", what, "-XXXXXX");
  if (::mkdtemp(tmpl.data()) == nullptr) return "";
  return tmpl;
}

// One in-process worker of a namespace: its own registered buffers, the daemon's Load/Store.
// Page bytes are a function of (tenant tag, key), so a page of the wrong tenant shows.
class Tenant {
 public:
  static std::unique_ptr<Tenant> Open(const std::string& socket, const std::string& ns,
                                      uint64_t tag) {
    auto t = std::unique_ptr<Tenant>(new Tenant());
    t->tag_ = tag;
    absl::StatusOr<std::unique_ptr<Client>> c = Client::Connect(socket);
    EXPECT_TRUE(c.ok()) << c.status();
    if (!c.ok()) return nullptr;
    t->client_ = *std::move(c);
    absl::StatusOr<HelloInfo> hello = t->client_->Hello(ns, WorkerLayout());
    EXPECT_TRUE(hello.ok()) << ns << ": " << hello.status();
    if (!hello.ok()) return nullptr;
    t->salt_ = hello->salt;
    absl::StatusOr<Layout> layout = Layout::Create(WorkerLayout());
    t->layout_.emplace(*layout);
    absl::StatusOr<WorkerBuffers> buffers = WorkerBuffers::Create(*t->layout_);
    EXPECT_TRUE(buffers.ok()) << buffers.status();
    t->buffers_.emplace(*std::move(buffers));
    absl::Status reg = t->client_->RegisterBuffers(t->buffers_->fds(), t->buffers_->sizes());
    EXPECT_TRUE(reg.ok()) << reg;
    if (!reg.ok()) return nullptr;
    return t;
  }

  const PageKey& salt() const { return salt_; }
  Client& client() { return *client_; }

  std::vector<std::byte> Bytes(const PageKey& k) const {
    std::vector<std::byte> page(kPageBytes);
    FillPage(PageKey{k.hi ^ tag_, k.lo}, absl::MakeSpan(page));
    return page;
  }

  // Stores keys (one sequence) in one request; returns how many pages were stored.
  uint32_t Store(const std::vector<PageKey>& keys) {
    std::vector<uint32_t> blocks(keys.size());
    for (size_t i = 0; i < keys.size(); ++i) {
      blocks[i] = static_cast<uint32_t>(i % 64);
      EXPECT_TRUE(buffers_->WriteBlock(*layout_, blocks[i], Bytes(keys[i])).ok());
    }
    absl::StatusOr<OpHandle> op = client_->StoreAsync(keys, blocks);
    if (!op.ok()) return 0;
    absl::StatusOr<PageResults> r = client_->Wait(*op);
    EXPECT_TRUE(r.ok()) << r.status();
    if (r.ok() && r->ok_pages != keys.size()) last_error_ = r->first_error;
    return r.ok() ? r->ok_pages : 0;
  }

  // Looks `key` up on its own: its tier, or nullopt on a miss.
  std::optional<Tier> Lookup(const PageKey& key) {
    absl::StatusOr<LookupReply> r = client_->Lookup(absl::MakeConstSpan(&key, 1));
    EXPECT_TRUE(r.ok()) << r.status();
    if (!r.ok() || r->prefix_pages == 0) return std::nullopt;
    return r->tiers[0];
  }

  // Loads `key`: 1 when it came back with this tenant's bytes, 0 on a miss, -1 on wrong bytes.
  int LoadAndCheck(const PageKey& key) {
    const uint32_t block = 63;
    absl::StatusOr<OpHandle> op =
        client_->LoadAsync(absl::MakeConstSpan(&key, 1), absl::MakeConstSpan(&block, 1));
    if (!op.ok()) return 0;
    absl::StatusOr<PageResults> r = client_->Wait(*op);
    if (!r.ok() || r->ok_pages != 1) return 0;
    std::vector<std::byte> got(kPageBytes);
    EXPECT_TRUE(buffers_->ReadBlock(*layout_, block, absl::MakeSpan(got)).ok());
    return got == Bytes(key) ? 1 : -1;
  }

  const std::string& last_error() const { return last_error_; }

 private:
  Tenant() = default;
  uint64_t tag_ = 0;
  PageKey salt_;
  std::unique_ptr<Client> client_;
  std::optional<Layout> layout_;
  std::optional<WorkerBuffers> buffers_;
  std::string last_error_;
};

std::vector<PageKey> Sequence(const PageKey& salt, uint64_t seed, size_t pages) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> tokens(pages * 16);
  for (int32_t& t : tokens) t = static_cast<int32_t>(rng() % 128000);
  return ChainKeys(salt, tokens, 16);
}

wire::StatusReply DaemonStatus(const std::string& socket) {
  absl::StatusOr<std::unique_ptr<Client>> c = Client::Connect(socket);
  EXPECT_TRUE(c.ok()) << c.status();
  if (!c.ok()) return {};
  absl::StatusOr<wire::StatusReply> s = (*c)->Status();
  EXPECT_TRUE(s.ok()) << s.status();
  return s.ok() ? *s : wire::StatusReply();
}

// Polls Status until `done` holds (the daemon ends a session when it sees the socket close).
bool WaitForStatus(const std::string& socket,
                   const std::function<bool(const wire::StatusReply&)>& done) {
  for (int i = 0; i < 1000; ++i) {
    if (done(DaemonStatus(socket))) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return false;
}

// ---- Defect: the DRAM pool fd let any tenant read and overwrite every tenant's pages. ----

TEST(TenantIsolation, DramPoolIsNeverSharedWithAnotherUid) {
  if (!CanSwitchUid()) GTEST_SKIP() << "needs root and setpriv to run a worker as uid 65534";
  const uint64_t seed = TestSeed();
  absl::StatusOr<DaemonProcess> d = DaemonProcess::Start(
      "http_address: \"\"\nsocket_mode: 0666\nstore:\n  page_bytes: 32768\n  hbm_pages: 4\n"
      "  dram_pages: 128\nnamespaces:\n  - name: \"victim/*\"\n    sink_slots: 0\n"
      "  - name: \"tenant/*\"\n    uids: [65534]\n    sink_slots: 0\n",
      0711);
  ASSERT_TRUE(d.ok()) << d.status();
  const std::string s = absl::StrCat(seed);
  // The victim's 40 pages: 4 in HBM, the rest in the DRAM pool (132 slots, so the victim may pin
  // its 40: limits.max_pinned_pages_per_uid defaults to half of all slots).
  WorkerResult stored = RunWorker({"store", d->socket_path(), "victim/a", s, "40"});
  ASSERT_EQ(stored.exit_code, 0) << stored.output;
  // Another uid, allowed only its own namespace, asks for the pool and attacks what it gets.
  Command probe =
      RunCommand(AsOtherUid({KVTIER_PROBE_BIN, "pool", d->socket_path(), "tenant/evil"}), 30);
  std::printf("probe as uid %u: exit %d\n%s", kOtherUid, probe.exit_code, probe.output.c_str());
  EXPECT_EQ(probe.exit_code, 0) << probe.output;
  EXPECT_NE(probe.output.find("fds=0 "), std::string::npos) << probe.output;
  EXPECT_EQ(probe.output.find("read_nonzero"), std::string::npos) << "it read the pool";
  EXPECT_EQ(probe.output.find("reopen_rw=1"), std::string::npos) << "it reopened it writable";
  // The victim's pages are intact, byte for byte.
  WorkerResult loaded = RunWorker({"load", d->socket_path(), "victim/a", s, "40"});
  EXPECT_EQ(loaded.exit_code, 0) << loaded.output;
  EXPECT_NE(loaded.output.find("verified 40 pages"), std::string::npos) << loaded.output;
  EXPECT_EQ(d->Stop(), 0);
}

// ---- Defect: a global index keyed by computable keys (oracle and squatting). ----

TEST(TenantIsolation, StoringAnotherTenantsKeysNeitherFailsDifferentlyNorSquats) {
  const uint64_t seed = TestSeed();
  absl::StatusOr<DaemonProcess> d = DaemonProcess::Start(
      "http_address: \"\"\nstore:\n  page_bytes: 32768\n  hbm_pages: 16\n  dram_pages: 64\n"
      "namespaces:\n  - name: \"tenant/*\"\n    sink_slots: 0\n");
  ASSERT_TRUE(d.ok()) << d.status();
  std::unique_ptr<Tenant> a = Tenant::Open(d->socket_path(), "tenant/a", 0xa);
  std::unique_ptr<Tenant> b = Tenant::Open(d->socket_path(), "tenant/b", 0xb);
  ASSERT_TRUE(a && b);
  // B can compute A's keys (the salt is a public hash of A's name); the test hands them over.
  const std::vector<PageKey> cached = Sequence(a->salt(), seed, 8);          // A holds these
  const std::vector<PageKey> not_cached = Sequence(a->salt(), seed + 1, 8);  // nobody yet
  ASSERT_EQ(a->Store(cached), 8u) << a->last_error();
  for (const PageKey& k : cached) EXPECT_FALSE(b->Lookup(k).has_value()) << "B sees A's page";
  // B's stores of A's keys answer the same whether A has them cached or not...
  EXPECT_EQ(b->Store(cached), 8u) << "an oracle: " << b->last_error();
  EXPECT_EQ(b->Store(not_cached), 8u) << b->last_error();
  // ...and B having stored them first does not keep A from caching them.
  EXPECT_EQ(a->Store(not_cached), 8u) << "squatted: " << a->last_error();
  for (const auto* keys : {&cached, &not_cached}) {
    for (const PageKey& k : *keys) {
      EXPECT_EQ(a->LoadAndCheck(k), 1) << "A's page " << k.ToHex();
      EXPECT_EQ(b->LoadAndCheck(k), 1) << "B's page " << k.ToHex();
    }
  }
  EXPECT_EQ(d->Stop(), 0);
}

// ---- The paired isolation test on every tier (vLLM PR #53347's lesson). ----

TEST(TenantIsolation, SamePrefixTwoTenantsZeroCrossHitsOnEveryTierAndAfterRestart) {
  const uint64_t seed = TestSeed();
  const std::string nvme_dir = MakeTempDir("tenant-nvme");
  ASSERT_FALSE(nvme_dir.empty());
  // 4 HBM + 4 DRAM slots and an NVMe tier: 12 pages of one tenant span all three tiers. The
  // planner is kept out of the way so the placement is what the stores made.
  const std::string config = absl::StrCat(
      "http_address: \"\"\nstore:\n  page_bytes: 32768\n  hbm_pages: 4\n  dram_pages: 4\n"
      "  maintain_interval_ms: 600000\nnvme:\n  directories: [",
      nvme_dir, "]\n  capacity_bytes: ", 64 * (4096 + kPageBytes),
      "\nnamespaces:\n  - name: \"tenant/*\"\n    sink_slots: 0\n");
  std::vector<PageKey> prefix;
  {
    absl::StatusOr<DaemonProcess> d = DaemonProcess::Start(config);
    ASSERT_TRUE(d.ok()) << d.status();
    std::unique_ptr<Tenant> a = Tenant::Open(d->socket_path(), "tenant/a", 0xa);
    std::unique_ptr<Tenant> b = Tenant::Open(d->socket_path(), "tenant/b", 0xb);
    ASSERT_TRUE(a && b);
    prefix = Sequence(a->salt(), seed, 12);  // the same raw keys for both tenants
    ASSERT_EQ(a->Store(prefix), 12u) << a->last_error();
    // Positive control: A hits its own pages, on every tier.
    std::array<int, kNumTiers> a_tiers{};
    for (const PageKey& k : prefix) {
      std::optional<Tier> t = a->Lookup(k);
      ASSERT_TRUE(t.has_value()) << "A misses its own page: caching is off?";
      ++a_tiers[TierIndex(*t)];
    }
    std::printf("A's 12 pages: %d HBM, %d DRAM, %d NVMe\n", a_tiers[0], a_tiers[1], a_tiers[2]);
    for (int t = 0; t < kNumTiers; ++t) EXPECT_GT(a_tiers[t], 0) << "no page of A in tier " << t;
    // B, the same prefix: not one cross hit, whatever tier A's page is in.
    int cross = 0;
    for (const PageKey& k : prefix) cross += b->Lookup(k).has_value() ? 1 : 0;
    EXPECT_EQ(cross, 0) << "B hit A's pages";
    for (const PageKey& k : prefix) EXPECT_EQ(b->LoadAndCheck(k), 0) << "B loaded A's page";
    // B stores the same prefix; each tenant then reads its own bytes.
    ASSERT_EQ(b->Store(prefix), 12u) << b->last_error();
    for (const PageKey& k : prefix) {
      EXPECT_EQ(a->LoadAndCheck(k), 1) << "A's page " << k.ToHex();
      EXPECT_EQ(b->LoadAndCheck(k), 1) << "B's page " << k.ToHex();
    }
    a.reset();
    b.reset();
    EXPECT_EQ(d->Stop(), 0);
  }
  // After a restart only the NVMe tier's pages remain: each tenant finds its own, never the
  // other's.
  absl::StatusOr<DaemonProcess> d = DaemonProcess::Start(config);
  ASSERT_TRUE(d.ok()) << d.status();
  std::unique_ptr<Tenant> a = Tenant::Open(d->socket_path(), "tenant/a", 0xa);
  std::unique_ptr<Tenant> b = Tenant::Open(d->socket_path(), "tenant/b", 0xb);
  ASSERT_TRUE(a && b);
  std::array<int, 2> found{}, wrong{};
  for (const PageKey& k : prefix) {
    int i = 0;
    for (Tenant* t : {a.get(), b.get()}) {
      const int r = t->LoadAndCheck(k);
      found[i] += r == 1;
      wrong[i] += r == -1;
      ++i;
    }
  }
  std::printf("after restart: A found %d, B found %d of 12 on NVMe\n", found[0], found[1]);
  EXPECT_GT(found[0], 0) << "A recovered nothing: the restart half proves nothing";
  EXPECT_GT(found[1], 0) << "B recovered nothing: the restart half proves nothing";
  EXPECT_EQ(wrong[0] + wrong[1], 0) << "a tenant loaded the other's page after the restart";
  a.reset();
  b.reset();
  EXPECT_EQ(d->Stop(), 0);
  std::filesystem::remove_all(nvme_dir);
}

// ---- Defect: namespaces and sink reserves were never released; no per-uid limits. ----

TEST(TenantLimits, NamespacesAndSinkReservesAreReleasedWithTheirLastSession) {
  absl::StatusOr<DaemonProcess> d = DaemonProcess::Start(
      "http_address: \"\"\nstore:\n  page_bytes: 32768\n  hbm_pages: 8\n  dram_pages: 64\n"
      "limits:\n  max_namespaces: 2\nnamespaces:\n  - name: \"tenant/*\"\n    sink_slots: 8\n");
  ASSERT_TRUE(d.ok()) << d.status();
  const std::string& sock = d->socket_path();
  std::unique_ptr<Tenant> a = Tenant::Open(sock, "tenant/a", 1);
  ASSERT_TRUE(a);
  // A took every reservable HBM slot; B still gets in (its sinks compete as ordinary pages).
  std::unique_ptr<Tenant> b = Tenant::Open(sock, "tenant/b", 2);
  ASSERT_TRUE(b) << "one tenant's sink reserve locked the next one out";
  EXPECT_EQ(DaemonStatus(sock).tiers(0).sink_reserved_slots(), 8u);
  // Two live namespaces is the limit: a third is refused with the reason...
  absl::StatusOr<std::unique_ptr<Client>> c = Client::Connect(sock);
  ASSERT_TRUE(c.ok());
  absl::StatusOr<HelloInfo> refused = (*c)->Hello("tenant/c", WorkerLayout());
  ASSERT_FALSE(refused.ok());
  EXPECT_TRUE(absl::StrContains(refused.status().message(), "limits.max_namespaces"))
      << refused.status();
  // ...until A's last session ends: its namespace and its reserve are released.
  a.reset();
  ASSERT_TRUE(WaitForStatus(sock,
                            [](const wire::StatusReply& s) {
                              return s.namespaces() == 1 && s.tiers(0).sink_reserved_slots() == 0;
                            }))
      << "namespace or reserve not released: " << DaemonStatus(sock).ShortDebugString();
  std::unique_ptr<Tenant> c2 = Tenant::Open(sock, "tenant/c", 3);
  ASSERT_TRUE(c2);
  EXPECT_EQ(DaemonStatus(sock).tiers(0).sink_reserved_slots(), 8u) << "C reserves again";
  // A comes back: its retired namespace is live again.
  c2.reset();
  ASSERT_TRUE(WaitForStatus(sock, [](const wire::StatusReply& s) { return s.namespaces() == 1; }));
  EXPECT_TRUE(Tenant::Open(sock, "tenant/a", 1) != nullptr);
  EXPECT_EQ(d->Stop(), 0);
}

TEST(TenantLimits, OneUidCannotTakeEveryNamespace) {
  if (!CanSwitchUid()) GTEST_SKIP() << "needs root and setpriv to run a worker as uid 65534";
  absl::StatusOr<DaemonProcess> d = DaemonProcess::Start(
      "http_address: \"\"\nsocket_mode: 0666\nstore:\n  page_bytes: 32768\n  hbm_pages: 8\n"
      "  dram_pages: 64\nlimits:\n  max_namespaces: 4\n  max_namespaces_per_uid: 2\n"
      "namespaces:\n  - name: \"tenant/*\"\n    uids: [0, 65534]\n    sink_slots: 0\n",
      0711);
  ASSERT_TRUE(d.ok()) << d.status();
  // The probe holds its connections open; its output up to "ready" says what each Hello got.
  int p[2];
  ASSERT_EQ(::pipe2(p, O_CLOEXEC), 0);
  UniqueFd out(p[0]), in(p[1]);
  std::vector<std::string> argv = AsOtherUid({KVTIER_PROBE_BIN, "hold", d->socket_path(),
                                              "tenant/x1", "tenant/x2", "tenant/x3", "tenant/x4"});
  std::vector<char*> args;
  for (std::string& a : argv) args.push_back(a.data());
  args.push_back(nullptr);
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::dup2(in.get(), 1);
    ::execv(args[0], args.data());
    ::_exit(127);
  }
  in.Reset();
  std::string text;
  char buf[256];
  for (ssize_t n;
       text.find("ready") == std::string::npos && (n = ::read(out.get(), buf, sizeof(buf))) > 0;) {
    text.append(buf, n);
  }
  std::printf("%s", text.c_str());
  EXPECT_NE(text.find("hello tenant/x1 ok"), std::string::npos) << text;
  EXPECT_NE(text.find("hello tenant/x2 ok"), std::string::npos) << text;
  EXPECT_NE(text.find("hello tenant/x3 refused"), std::string::npos) << text;
  EXPECT_NE(text.find("limits.max_namespaces_per_uid"), std::string::npos) << text;
  // While it holds its share, another tenant still gets in.
  EXPECT_TRUE(Tenant::Open(d->socket_path(), "tenant/root", 1) != nullptr);
  ::kill(pid, SIGKILL);
  int status;
  ::waitpid(pid, &status, 0);
  EXPECT_EQ(d->Stop(), 0);
}

// ---- Defect: one tenant's pins blocked every other tenant's stores. ----

TEST(TenantLimits, OneTenantsPinsCannotBlockAnothersStores) {
  const uint64_t seed = TestSeed();
  // 12 slots in all: a tenant may pin half of them (limits.max_pinned_pages_per_uid: 0).
  absl::StatusOr<DaemonProcess> d = DaemonProcess::Start(
      "http_address: \"\"\nstore:\n  page_bytes: 32768\n  hbm_pages: 4\n  dram_pages: 8\n"
      "  maintain_interval_ms: 600000\nnamespaces:\n  - name: \"tenant/*\"\n"
      "    uids: [0]\n    sink_slots: 0\n");
  ASSERT_TRUE(d.ok()) << d.status();
  std::unique_ptr<Tenant> a = Tenant::Open(d->socket_path(), "tenant/a", 0xa);
  std::unique_ptr<Tenant> b = Tenant::Open(d->socket_path(), "tenant/b", 0xb);
  ASSERT_TRUE(a && b);
  const std::vector<PageKey> mine = Sequence(a->salt(), seed, 12);
  ASSERT_EQ(a->Store(mine), 12u) << a->last_error();
  absl::Status all = a->client().Pin(mine);
  EXPECT_FALSE(all.ok()) << "A pinned every page of the store";
  EXPECT_TRUE(absl::StrContains(all.message(), "limits.max_pinned_pages_per_uid")) << all;
  EXPECT_TRUE(a->client().Pin(absl::MakeConstSpan(mine).subspan(0, 6)).ok());
  const std::vector<PageKey> theirs = Sequence(b->salt(), seed + 1, 4);
  EXPECT_EQ(b->Store(theirs), 4u) << b->last_error();
  for (const PageKey& k : theirs) EXPECT_EQ(b->LoadAndCheck(k), 1);
  EXPECT_EQ(d->Stop(), 0);
}

// ---- Defect: a second kvtierd with the same config destroyed the first one's NVMe tier. ----

TEST(DataSafety, ASecondDaemonStopsBeforeTouchingTheFirstsData) {
  const uint64_t seed = TestSeed();
  const std::string nvme_dir = MakeTempDir("second-nvme");
  ASSERT_FALSE(nvme_dir.empty());
  const std::string config = absl::StrCat(
      "http_address: \"\"\nstore:\n  page_bytes: 32768\n  hbm_pages: 4\n  dram_pages: 8\n"
      "nvme:\n  directories: [",
      nvme_dir, "]\n  capacity_bytes: ", 128 * (4096 + kPageBytes),
      "\nnamespaces:\n  - name: \"test/*\"\n    sink_slots: 0\n");
  const std::string s = absl::StrCat(seed);
  {
    absl::StatusOr<DaemonProcess> d = DaemonProcess::Start(config);
    ASSERT_TRUE(d.ok()) << d.status();
    ASSERT_EQ(RunWorker({"store", d->socket_path(), "test/nvme", s, "40"}).exit_code, 0);
    // The very same config file, then the same NVMe directory under another data_dir/socket.
    const std::string yaml = d->dir() + "/kvtierd.yaml";
    Command same = RunCommand({KVTIERD_BIN, "--config", yaml}, 20);
    EXPECT_NE(same.exit_code, 0) << same.output;
    EXPECT_NE(same.exit_code, -1000) << "the second daemon kept running";
    EXPECT_TRUE(absl::StrContains(same.output, "another kvtierd")) << same.output;
    Command other = RunCommand({KVTIERD_BIN, "--config", yaml, "--data_dir", d->dir() + "/data2",
                                "--socket_path", d->dir() + "/other.sock"},
                               20);
    EXPECT_NE(other.exit_code, 0) << other.output;
    EXPECT_NE(other.exit_code, -1000) << "the second daemon kept running";
    EXPECT_TRUE(absl::StrContains(other.output, "nvme.directories[0]")) << other.output;
    EXPECT_FALSE(absl::StrContains(other.output, "unreadable")) << other.output;
    // The first daemon still serves every page.
    WorkerResult loaded = RunWorker({"load", d->socket_path(), "test/nvme", s, "40"});
    EXPECT_EQ(loaded.exit_code, 0) << loaded.output;
    EXPECT_EQ(d->Stop(), 0);
  }
  // And its NVMe tier survives its own restart.
  absl::StatusOr<DaemonProcess> d = DaemonProcess::Start(config);
  ASSERT_TRUE(d.ok()) << d.status();
  WorkerResult probe = RunWorker({"probe", d->socket_path(), "test/nvme", s, "40"});
  ASSERT_EQ(probe.exit_code, 0) << probe.output;
  uint32_t recovered = 0;
  ASSERT_EQ(std::sscanf(probe.output.c_str(), "verified %u of 40", &recovered), 1) << probe.output;
  std::printf("after restart: %u of 40 pages recovered\n", recovered);
  EXPECT_GE(recovered, 28u) << "the NVMe tier lost its index";  // 40 - (4 HBM + 8 DRAM)
  EXPECT_EQ(d->Stop(), 0);
  std::filesystem::remove_all(nvme_dir);
}

TEST(DataSafety, OnlyAStaleSocketIsEverRemovedAtSocketPath) {
  const std::string dir = MakeTempDir("sockpath");
  ASSERT_FALSE(dir.empty());
  const std::string file = dir + "/precious";
  { std::ofstream(file) << "not a socket\n"; }
  const std::string yaml = dir + "/kvtierd.yaml";
  std::ofstream(yaml) << "data_dir: " << dir << "/data\nsocket_path: " << file
                      << "\nhttp_address: \"\"\nstore:\n  page_bytes: 32768\n  hbm_pages: 4\n"
                      << "  dram_pages: 8\nnamespaces:\n  - name: \"*\"\n    sink_slots: 0\n";
  Command c = RunCommand({KVTIERD_BIN, "--config", yaml}, 10);
  EXPECT_NE(c.exit_code, 0) << c.output;
  EXPECT_NE(c.exit_code, -1000) << "kvtierd replaced the file with its socket and served";
  EXPECT_TRUE(absl::StrContains(c.output, "is not a socket")) << c.output;
  std::ifstream in(file);
  std::string line;
  std::getline(in, line);
  EXPECT_EQ(line, "not a socket") << "the regular file at socket_path was removed";
  std::filesystem::remove_all(dir);
}

// ---- Defect: after a restart on a full disk NVMe writes were refused while
// kvtier_nvme_admitting stayed 1, and a disk filled at run time never admitted again. ----

// The TCP port `pid` listens on (its admin HTTP endpoint, bound to port 0), from /proc; -1 when
// none (yet).
int ListeningPortNow(pid_t pid) {
  std::vector<std::string> inodes;
  for (const auto& e : std::filesystem::directory_iterator(absl::StrCat("/proc/", pid, "/fd"))) {
    std::error_code ec;
    const std::string target = std::filesystem::read_symlink(e.path(), ec).string();
    if (absl::StartsWith(target, "socket:[")) inodes.push_back(target.substr(8, target.size() - 9));
  }
  std::ifstream tcp("/proc/net/tcp");
  std::string line;
  std::getline(tcp, line);  // header
  while (std::getline(tcp, line)) {
    std::istringstream f(line);
    std::string sl, local, remote, state, queues, timer, retr, uid, timeout, inode;
    f >> sl >> local >> remote >> state >> queues >> timer >> retr >> uid >> timeout >> inode;
    if (state != "0A") continue;  // LISTEN
    if (std::find(inodes.begin(), inodes.end(), inode) == inodes.end()) continue;
    return static_cast<int>(std::stoul(local.substr(local.find(':') + 1), nullptr, 16));
  }
  return -1;
}

// kvtierd opens its socket before its HTTP endpoint: waits for the endpoint (up to ~10 s).
int ListeningPort(pid_t pid) {
  for (int i = 0; i < 2000; ++i) {
    if (const int port = ListeningPortNow(pid); port > 0) return port;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return -1;
}

// kvtier_nvme_admitting as /metrics says it, or -1.
int Admitting(int port) {
  const HttpResponse r = HttpRequest(port, "GET", "/metrics");
  const size_t at = r.body.find("\nkvtier_nvme_admitting ");
  if (at == std::string::npos) return -1;
  return std::atoi(r.body.c_str() + at + std::strlen("\nkvtier_nvme_admitting "));
}

// Writes filler into `dir` until its file system is full.
void Fill(const std::string& dir) {
  UniqueFd fd(::open((dir + "/filler").c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600));
  std::vector<char> chunk(4096, 'f');
  while (::write(fd.get(), chunk.data(), chunk.size()) > 0) {
  }
}

TEST(DataSafety, NvmeAdmissionFollowsTheDiskAfterRestartAndAtRunTime) {
  const uint64_t seed = TestSeed();
  const std::string mnt = MakeTempDir("fulldisk");
  ASSERT_FALSE(mnt.empty());
  if (::mount("tmpfs", mnt.c_str(), "tmpfs", 0, "size=4m") != 0) {
    const int err = errno;
    std::filesystem::remove_all(mnt);
    GTEST_SKIP() << "cannot mount a small tmpfs to fill up: " << std::strerror(err);
  }
  // 24 NVMe slots (~0.9 MB) preallocated on a 4 MiB file system; 8 pages of memory above it.
  const std::string config = absl::StrCat(
      "http_address: \"127.0.0.1:0\"\nstore:\n  page_bytes: 32768\n  hbm_pages: 4\n"
      "  dram_pages: 4\nnvme:\n  directories: [",
      mnt, "/nvme]\n  capacity_bytes: ", 24 * (4096 + kPageBytes),
      "\nnamespaces:\n  - name: \"test/*\"\n    sink_slots: 0\n");
  uint64_t round = 0;
  // Stores 40 new pages: about 32 of them are demoted to NVMe (admitted or refused).
  auto push = [&](const DaemonProcess& d) {
    return RunWorker({"store", d.socket_path(), "test/full", absl::StrCat(seed + ++round), "40"})
               .exit_code == 0;
  };
  // Waits (by storing more pages, at most `max` times) until the gauge reads `want`.
  auto push_until = [&](const DaemonProcess& d, int port, int want, int max) {
    int pushes = 0;
    while (Admitting(port) != want && pushes < max) {
      if (!push(d)) return -1;
      ++pushes;
    }
    return pushes;
  };
  {
    absl::StatusOr<DaemonProcess> d = DaemonProcess::Start(config);
    ASSERT_TRUE(d.ok()) << d.status();
    const int port = ListeningPort(d->pid());
    ASSERT_GT(port, 0);
    ASSERT_TRUE(push(*d));
    EXPECT_EQ(Admitting(port), 1);
    // The disk fills at run time: admission stops...
    Fill(mnt);
    const int stopped = push_until(*d, port, 0, 20);
    std::printf("disk filled at run time: admission stopped after %d stores of 40 pages\n",
                stopped);
    EXPECT_EQ(Admitting(port), 0);
    // ...and resumes once space is freed (after a few refused pages, with no restart).
    ASSERT_EQ(::unlink((mnt + "/filler").c_str()), 0);
    const int resumed = push_until(*d, port, 1, 6);
    std::printf("space freed: admitting again after %d stores\n", resumed);
    EXPECT_EQ(Admitting(port), 1) << "admission never resumed after space was freed";
    EXPECT_EQ(d->Stop(), 0);
  }
  Fill(mnt);
  absl::StatusOr<DaemonProcess> d = DaemonProcess::Start(config);
  ASSERT_TRUE(d.ok()) << d.status();
  const int port = ListeningPort(d->pid());
  ASSERT_GT(port, 0);
  // Restarted on a full disk: the index is read-only, nothing is admitted, and the gauge says so.
  EXPECT_EQ(Admitting(port), 0) << "kvtier_nvme_admitting says 1 while NVMe writes are refused";
  ASSERT_TRUE(push(*d));
  EXPECT_EQ(Admitting(port), 0);
  ASSERT_EQ(::unlink((mnt + "/filler").c_str()), 0);
  const int resumed = push_until(*d, port, 1, 6);
  std::printf("restarted on a full disk, space freed: admitting after %d stores\n", resumed);
  EXPECT_EQ(Admitting(port), 1);
  EXPECT_EQ(d->Stop(), 0);
  ::umount2(mnt.c_str(), MNT_DETACH);
  std::filesystem::remove_all(mnt);
}

// ---- Start-up refuses configs that cannot work, naming the key. ----

TEST(ConfigAtStart, ImpossibleConfigsAreRefusedNamingTheKey) {
  const std::string dir = MakeTempDir("badconfig");
  ASSERT_FALSE(dir.empty());
  { std::ofstream(dir + "/file") << "x"; }
  struct Case {
    const char* what;
    std::string yaml;
    std::vector<std::string> expect;
  };
  const std::string base = absl::StrCat("socket_path: ", dir, "/s.sock\nhttp_address: \"\"\n");
  const std::vector<Case> cases = {
      {"no HBM but a sink reserve",
       "data_dir: D\nstore:\n  hbm_pages: 0\n  dram_pages: 8\nnamespaces:\n  - name: \"*\"\n"
       "    sink_slots: 16\n",
       {"namespaces[0].sink_slots", "store.hbm_pages (0)"}},
      {"sink reserve larger than HBM",
       "data_dir: D\nstore:\n  hbm_pages: 8\nnamespaces:\n  - name: \"*\"\n    sink_slots: 9\n",
       {"namespaces[0].sink_slots", "9 exceeds store.hbm_pages (8)"}},
      {"duplicate key",
       "data_dir: D\nstore:\n  page_bytes: 32768\n  page_bytes: 65536\n",
       {"store.page_bytes: duplicate key"}},
      {"duplicate top-level key", "data_dir: D\ndata_dir: D\n", {"data_dir: duplicate key"}},
      {"a regular file as data_dir",
       absl::StrCat("data_dir: ", dir, "/file\n"),
       {"data_dir", "not a directory"}},
      {"a 1 TiB page",
       "data_dir: D\nstore:\n  page_bytes: 1099511627776\n  dram_pages: 1\n",
       {"store.page_bytes"}},
      {"a DRAM pool larger than the machine",
       "data_dir: D\nstore:\n  page_bytes: 1073741824\n  dram_pages: 1048576\n",
       {"store.page_bytes", "more than this machine"}},
  };
  for (const Case& c : cases) {
    std::string yaml = base + c.yaml;
    if (size_t at = yaml.find("data_dir: D\n"); at != std::string::npos) {
      yaml.replace(at, 12, absl::StrCat("data_dir: ", dir, "/data\n"));
    }
    const std::string path = dir + "/kvtierd.yaml";
    std::ofstream(path) << yaml;
    Command r = RunCommand({KVTIERD_BIN, "--config", path}, 10);
    EXPECT_NE(r.exit_code, 0) << c.what << ": started\n" << r.output;
    EXPECT_NE(r.exit_code, -1000) << c.what << ": still running at the deadline";
    for (const std::string& e : c.expect) {
      EXPECT_TRUE(absl::StrContains(r.output, e)) << c.what << ": no '" << e << "' in\n"
                                                  << r.output;
    }
  }
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace kvtier::testing
