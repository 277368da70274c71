// kvtierd under the fault-injecting I/O layer, end to end: the real daemon process
// (kvtierd_fault_injection: kvtierd with fault_injecting_io.h under its NVMe tier) serves client
// threads on its real socket while NVMe reads fail with EIO 1 in 32, writes with EIO 1 in 128 and
// ENOSPC 1 in 997, fdatasyncs with EIO 1 in 251. Each epoch ends in a simulated power cut at a
// random operation (every completion fails from then on; unsynced byte ranges are kept, zeroed or
// scrambled per 4 KiB block), a few more batches, then SIGKILL; the next epoch restarts the
// daemon over what is left. Checked:
//  - 0 wrong pages: every page a Load returns is exactly the page stored under that key (pages
//    are self-describing, tests/reliability/page_pattern.h); a miss or an error is allowed;
//  - every injected fault is counted: the daemon's /metrics (kvtier_nvme_errors_total{kind=...},
//    scraped over HTTP on an ephemeral port) equals the injector's own counts, exactly, at the end
//    of every epoch;
//  - every page the daemon holds on NVMe at the kill (Lookup says so; pages only in DRAM are a
//    cache's to lose) is served intact after the restart, and no page never stored appears;
//  - the daemon answers throughout: every client call returns a status (no request fails as a
//    whole, nothing hangs, the process never dies but by the test's SIGKILL).
// DRAM is 16 pages, so stored pages move to NVMe at once (demotions from registered DRAM: two
// requests a page), and NVMe holds 60 % of the keys, so it evicts and stores keep writing. The
// planner is idle (maintain_interval_ms: 1 h): a promotion would take pages off NVMe after the
// Lookup and make "held on NVMe at the kill" unknowable; demotion happens inside Store.
//
// KVTIER_FAULT_INJECTION_OPS sets the page operations (default 16000, the CI run; the full run is
// `bench/reliability/run.sh daemon-faults` with 1 M); KVTIER_FAULT_INJECTION_EPOCHS the number of
// power cuts (default: one per 40 000 operations, at least 3).
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "base/seqpacket.h"
#include "base/unique_fd.h"
#include "client/client.h"
#include "gtest/gtest.h"
#include "tests/reliability/page_pattern.h"
#include "tests/reliability/reliability_figures.h"
#include "tests/unit/nvme/nvme_test_util.h"

namespace kvtier::testing {
namespace {

using reliability::CheckPattern;
using reliability::FillPattern;
using reliability::PatternVerdict;
using Clock = std::chrono::steady_clock;

constexpr uint64_t kPageBytes = 4096;
constexpr uint32_t kWorkers = 4;
constexpr uint32_t kKeysPerWorker = 512;
constexpr uint32_t kProbeKeysPerWorker = 16;  // never stored: must never be found
constexpr uint32_t kBatch = 8;
constexpr uint32_t kNvmeSlots = kWorkers * kKeysPerWorker * 6 / 10;
constexpr uint32_t kBatchesAfterCut = 4;  // per worker: the daemon must answer those too
constexpr uint32_t kVerifyBatch = 64;
const char* const kNamespace = "faults/daemon";

uint64_t TotalOps() {
  if (const char* s = std::getenv("KVTIER_FAULT_INJECTION_OPS"); s != nullptr) {
    return std::strtoull(s, nullptr, 10);
  }
  return 16000;
}

int Epochs(uint64_t ops) {
  if (const char* s = std::getenv("KVTIER_FAULT_INJECTION_EPOCHS"); s != nullptr) {
    return std::max(1, std::atoi(s));
  }
  return static_cast<int>(std::max<uint64_t>(3, ops / 40000));
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// The value of the sample `series` (name{labels}) in a text exposition; -1 when absent.
double Sample(const std::string& text, const std::string& series) {
  const size_t at = ("\n" + text).find("\n" + series + " ");
  if (at == std::string::npos) return -1;
  return std::strtod(text.c_str() + at + series.size() + 1, nullptr);
}

// One report of the daemon's injector (kvtierd_fault_injection.cc writes it).
struct Report {
  uint64_t seq = 0, read_eio = 0, write_eio = 0, write_enospc = 0, sync_eio = 0, cut_reads = 0,
           cut_writes = 0, cut_syncs = 0, dropped_bytes = 0;
  uint64_t reads() const { return read_eio + cut_reads; }
  uint64_t writes() const { return write_eio + write_enospc + cut_writes + sync_eio + cut_syncs; }
  bool operator==(const Report& o) const {
    return read_eio == o.read_eio && write_eio == o.write_eio && write_enospc == o.write_enospc &&
           sync_eio == o.sync_eio && cut_reads == o.cut_reads && cut_writes == o.cut_writes &&
           cut_syncs == o.cut_syncs;
  }
  static Report Parse(const std::string& text) {
    Report r;
    auto f = [&](const char* key) { return FigureOf(text, "faults ", key); };
    r.seq = f("seq");
    r.read_eio = f("read_eio");
    r.write_eio = f("write_eio");
    r.write_enospc = f("write_enospc");
    r.sync_eio = f("sync_eio");
    r.cut_reads = f("cut_reads");
    r.cut_writes = f("cut_writes");
    r.cut_syncs = f("cut_syncs");
    r.dropped_bytes = f("dropped_bytes");
    return r;
  }
};

// The fault-injecting daemon as a real process: its stderr in a file, its HTTP port read back
// from its log, commands through <dir>/command + SIGUSR1.
class FaultDaemon {
 public:
  FaultDaemon(std::string root, std::string config) : root_(std::move(root)), config_(config) {
    ::mkdir((root_ + "/ctl").c_str(), 0700);
  }
  ~FaultDaemon() { Kill(); }
  std::string socket_path() const { return root_ + "/kvtierd.sock"; }
  pid_t pid() const { return pid_; }
  std::string log_path() const { return root_ + "/kvtierd.log"; }

  absl::Status Start(uint64_t fault_seed) {
    ::unlink((root_ + "/ctl/report").c_str());
    seq_ = 0;
    port_ = 0;
    std::vector<std::string> args = {KVTIERD_FAULT_INJECTION_BIN, "--config=" + config_,
                                     "--fault_control_dir=" + root_ + "/ctl",
                                     absl::StrCat("--fault_seed=", fault_seed)};
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    const std::string log = log_path();
    ::unlink(log.c_str());  // never read the last run's port
    pid_ = ::fork();
    if (pid_ == 0) {
      const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
      ::dup2(fd, 1);
      ::dup2(fd, 2);
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
    // Ready: the socket answers (recovery is done) and the log names the HTTP port.
    const Clock::time_point deadline = Clock::now() + std::chrono::seconds(60);
    while (Clock::now() < deadline) {
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return absl::UnavailableError(
            absl::StrCat("the daemon exited at start (status ", status, "): ", ReadFile(log)));
      }
      if (port_ == 0) {
        const std::string text = ReadFile(log);
        if (size_t at = text.find("event=http_listening"); at != std::string::npos) {
          const size_t p = text.find(" port=", at);
          const size_t end = text.find('\n', p);
          if (p != std::string::npos)
            (void)absl::SimpleAtoi(text.substr(p + 6, end - p - 6), &port_);
        }
      }
      if (port_ != 0 && ConnectSeqpacket(socket_path()).ok()) return absl::OkStatus();
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return absl::DeadlineExceededError("the daemon was not ready in 60 s: " + ReadFile(log));
  }

  // SIGKILL (the end of a power cut), then reaps it.
  void Kill() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGKILL);
    int status = 0;
    ::waitpid(pid_, &status, 0);
    pid_ = -1;
  }

  // SIGTERM: the clean shutdown; returns the exit status (-1000: not within 30 s).
  int Stop() {
    if (pid_ <= 0) return -1;
    ::kill(pid_, SIGTERM);
    int status = 0;
    for (int i = 0; i < 3000; ++i) {
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    Kill();
    return -1000;
  }

  // Runs `verb` in the daemon's injector and returns its counts afterwards.
  absl::StatusOr<Report> Command(const std::string& verb) {
    const uint64_t seq = ++seq_;
    const std::string dir = root_ + "/ctl";
    {
      std::ofstream out(dir + "/command.tmp", std::ios::trunc);
      out << seq << " " << verb << "\n";
    }
    std::filesystem::rename(dir + "/command.tmp", dir + "/command");
    if (::kill(pid_, SIGUSR1) != 0) return absl::UnavailableError("the daemon is gone");
    const Clock::time_point deadline = Clock::now() + std::chrono::seconds(60);
    while (Clock::now() < deadline) {
      const Report r = Report::Parse(ReadFile(dir + "/report"));
      if (r.seq == seq) return r;
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return absl::UnavailableError(absl::StrCat("the daemon died (status ", status, ")"));
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    return absl::DeadlineExceededError(absl::StrCat("no report for '", verb, "' in 60 s"));
  }

  // GET /metrics from the daemon's HTTP endpoint.
  absl::StatusOr<std::string> Metrics() const {
    UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port_));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) {
      return absl::UnavailableError(absl::StrCat("connect to port ", port_));
    }
    timeval tv{30, 0};
    ::setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    const std::string request = "GET /metrics HTTP/1.0\r\nHost: kvtier\r\n\r\n";
    if (::send(fd.get(), request.data(), request.size(), MSG_NOSIGNAL) !=
        static_cast<ssize_t>(request.size())) {
      return absl::UnavailableError("send GET /metrics");
    }
    std::string reply;
    char buf[16384];
    for (ssize_t n; (n = ::recv(fd.get(), buf, sizeof(buf), 0)) > 0;) reply.append(buf, n);
    const size_t body = reply.find("\r\n\r\n");
    if (reply.rfind("HTTP/1.", 0) != 0 || reply.find(" 200 ") == std::string::npos ||
        body == std::string::npos) {
      return absl::UnavailableError("GET /metrics: " + reply.substr(0, 200));
    }
    return reply.substr(body + 4);
  }

 private:
  const std::string root_;
  const std::string config_;
  pid_t pid_ = -1;
  int port_ = 0;
  uint64_t seq_ = 0;
};

// One client connection with its registered buffers: blocks [0, kVerifyBatch) to store from,
// the next kVerifyBatch to load into.
struct Conn {
  std::unique_ptr<Client> client;
  std::optional<Layout> layout;
  std::optional<WorkerBuffers> buffers;
  PageKey salt;

  absl::Status Open(const std::string& socket) {
    absl::StatusOr<std::unique_ptr<Client>> c = Client::Connect(socket);
    if (!c.ok()) return c.status();
    client = *std::move(c);
    client->set_spin_wait_us(0);  // two shared cores: never spin
    absl::StatusOr<LayoutSpec> spec = FlatLayoutFor(kPageBytes, 2 * kVerifyBatch);
    if (!spec.ok()) return spec.status();
    absl::StatusOr<Layout> l = Layout::Create(*spec);
    if (!l.ok()) return l.status();
    layout.emplace(*std::move(l));
    absl::StatusOr<HelloInfo> hello = client->Hello(kNamespace, *spec);
    if (!hello.ok()) return hello.status();
    salt = hello->salt;
    absl::StatusOr<WorkerBuffers> b = WorkerBuffers::Create(*layout);
    if (!b.ok()) return b.status();
    buffers.emplace(*std::move(b));
    return client->RegisterBuffers(buffers->fds(), buffers->sizes());
  }
  absl::StatusOr<PageResults> Store(const std::vector<PageKey>& keys,
                                    const std::vector<uint64_t>& tags) {
    std::vector<std::byte> img(kPageBytes);
    std::vector<uint32_t> ids(keys.size());
    for (size_t i = 0; i < keys.size(); ++i) {
      ids[i] = static_cast<uint32_t>(i);
      FillPattern(keys[i], tags[i], absl::MakeSpan(img));
      if (absl::Status s = buffers->WriteBlock(*layout, ids[i], img); !s.ok()) return s;
    }
    absl::StatusOr<OpHandle> op = client->StoreAsync(keys, ids);
    if (!op.ok()) return op.status();
    return client->Wait(*op);
  }
  absl::StatusOr<PageResults> Load(const std::vector<PageKey>& keys) {
    std::vector<uint32_t> ids(keys.size());
    for (size_t i = 0; i < keys.size(); ++i) ids[i] = kVerifyBatch + static_cast<uint32_t>(i);
    absl::StatusOr<OpHandle> op = client->LoadAsync(keys, ids);
    if (!op.ok()) return op.status();
    return client->Wait(*op);
  }
  // Whether loaded page i is exactly the page of (key, tag).
  bool Intact(size_t i, const PageKey& key, uint64_t tag) {
    std::vector<std::byte> img(kPageBytes);
    if (!buffers->ReadBlock(*layout, kVerifyBatch + static_cast<uint32_t>(i), absl::MakeSpan(img))
             .ok()) {
      return false;
    }
    uint64_t got = 0;
    return CheckPattern(key, img, &got) == PatternVerdict::kIntact && got == tag;
  }
};

struct Tally {
  std::atomic<uint64_t> ops{0}, stores{0}, stores_ok{0}, loads{0}, hits{0}, wrong{0},
      request_errors{0};
};

// Key i of the run: worker i / (kKeysPerWorker + kProbeKeysPerWorker); its tag (the page's
// content) is i itself, so every key has exactly one right page.
struct KeySpace {
  std::vector<PageKey> keys;
  static constexpr uint32_t kPerWorker = kKeysPerWorker + kProbeKeysPerWorker;
  explicit KeySpace(const PageKey& salt, uint64_t seed) {
    for (uint64_t i = 0; i < uint64_t{kWorkers} * kPerWorker; ++i) {
      keys.push_back(ChainKeyFromId(salt, PageKey{seed | 1, 0x6661756c74}, i));
    }
  }
  static uint32_t Key(uint32_t worker, uint32_t idx) { return worker * kPerWorker + idx; }
  static bool Probe(uint32_t i) { return i % kPerWorker >= kKeysPerWorker; }
};

TEST(KvtierdFaultInjection, WrongPagesNeverServedEveryFaultCountedHeldPagesSurviveCuts) {
  const uint64_t seed = nvme_test::TestSeed("KvtierdFaultInjection");
  std::mt19937_64 rng(seed);
  nvme_test::ScratchDir root("kvtierd-faults");
  // The NVMe files on tmpfs where there is one: this test is about faults, not the disk's speed
  // (the injector, not the kernel, decides what a power cut drops).
  std::string nvme = root.sub("nvme");
  char shm_template[] = "/dev/shm/kvtierd-faults-XXXXXX";
  if (std::getenv("KVTIER_TEST_TMPDIR") == nullptr && ::mkdtemp(shm_template) != nullptr) {
    nvme = shm_template;
  }
  std::filesystem::create_directories(nvme);
  struct RemoveAtEnd {
    std::string path;
    ~RemoveAtEnd() {
      std::error_code ec;
      std::filesystem::remove_all(path, ec);
    }
  } remove_nvme{nvme};
  const std::string config_path = root.sub("kvtierd.yaml");
  {
    std::ofstream out(config_path);
    out << "data_dir: " << root.sub("data") << "\nsocket_path: " << root.sub("kvtierd.sock")
        << "\nhttp_address: \"127.0.0.1:0\"\nstore:\n  page_bytes: " << kPageBytes
        << "\n  hbm_pages: 0\n  dram_pages: 16\n  maintain_interval_ms: 3600000\n"
        << "nvme:\n  directories: [" << nvme << "/d0, " << nvme
        << "/d1]\n  capacity_bytes: " << uint64_t{kNvmeSlots} * (4096 + kPageBytes)
        << "\nnamespaces:\n  - name: \"faults/*\"\n    sink_slots: 0\n";
  }
  FaultDaemon daemon(root.path(), config_path);
  const uint64_t total_target = TotalOps();
  const int epochs = Epochs(total_target);
  const uint64_t ops_per_epoch = total_target / epochs + 1;

  std::optional<KeySpace> space;
  const uint32_t nkeys = kWorkers * KeySpace::kPerWorker;
  std::vector<bool> submitted(nkeys, false);  // a Store of it went out (ever)
  std::vector<bool> held(nkeys, false);       // on NVMe at the last kill, says Lookup
  Tally total;
  Report faults;  // summed over epochs
  uint64_t held_at_kills = 0, survived = 0, lost = 0, unheld_kept = 0, never_present = 0,
           verify_wrong = 0, count_mismatches = 0;
  const Clock::time_point start = Clock::now();
  for (int epoch = 0; epoch <= epochs; ++epoch) {
    SCOPED_TRACE(absl::StrCat("epoch ", epoch));
    if (absl::Status s = daemon.Start(rng()); !s.ok()) FAIL() << "epoch " << epoch << ": " << s;
    // After the restart, with no faults: what the daemon held on NVMe at the kill is there and
    // intact; whatever else is there is intact; nothing never stored is there.
    {
      Conn v;
      ASSERT_TRUE(v.Open(daemon.socket_path()).ok());
      if (!space.has_value()) space.emplace(v.salt, seed);
      for (uint32_t at = 0; at < nkeys; at += kVerifyBatch) {
        std::vector<PageKey> keys;
        for (uint32_t i = at; i < std::min(nkeys, at + kVerifyBatch); ++i) {
          keys.push_back(space->keys[i]);
        }
        absl::StatusOr<PageResults> r = v.Load(keys);
        ASSERT_TRUE(r.ok()) << r.status();
        for (uint32_t j = 0; j < keys.size(); ++j) {
          const uint32_t i = at + j;
          const bool found = r->codes[j] == absl::StatusCode::kOk;
          const bool intact = found && v.Intact(j, keys[j], i);
          if (found && !intact) {
            ++verify_wrong;
            ADD_FAILURE() << "key " << i << " served a wrong page after the restart";
          }
          if (found && !submitted[i]) {
            ++never_present;
            ADD_FAILURE() << "key " << i << " was never stored, yet found";
          }
          if (held[i]) {
            if (intact) {
              ++survived;
            } else {
              ++lost;
              ADD_FAILURE() << "key " << i << " was on NVMe at the kill and is "
                            << (found ? "wrong" : "gone") << " after the restart";
            }
          } else if (found) {
            ++unheld_kept;
          }
        }
      }
    }
    if (epoch == epochs) break;
    if (HasFailure()) return;

    // Load under faults, a power cut at a random operation, a few batches more.
    ASSERT_TRUE(daemon.Command("activate").ok());
    const uint64_t cut_at = ops_per_epoch + rng() % (ops_per_epoch / 2 + 1);
    std::atomic<uint64_t> epoch_ops{0};
    std::atomic<bool> cut{false};
    std::mutex cut_mu;
    absl::Status cut_status;
    Tally t;
    std::vector<std::thread> workers;
    std::vector<std::vector<bool>> mine(kWorkers);  // per worker: keys it submitted this epoch
    for (uint32_t w = 0; w < kWorkers; ++w) {
      mine[w].assign(kKeysPerWorker, false);
      workers.emplace_back([&, w, worker_seed = rng()] {
        std::mt19937_64 r(worker_seed);
        Conn c;
        if (absl::Status s = c.Open(daemon.socket_path()); !s.ok()) {
          ++t.request_errors;
          ADD_FAILURE() << "worker " << w << ": " << s;
          return;
        }
        uint32_t after_cut = 0;
        while (after_cut < kBatchesAfterCut) {
          if (cut.load()) ++after_cut;
          std::set<uint32_t> pick;
          while (pick.size() < kBatch) pick.insert(static_cast<uint32_t>(r() % kKeysPerWorker));
          std::vector<PageKey> keys;
          std::vector<uint64_t> tags;
          for (uint32_t idx : pick) {
            tags.push_back(KeySpace::Key(w, idx));
            keys.push_back(space->keys[tags.back()]);
          }
          if (r() % 2 == 0) {
            for (uint32_t idx : pick) mine[w][idx] = true;
            absl::StatusOr<PageResults> res = c.Store(keys, tags);
            t.stores += keys.size();
            if (!res.ok()) {
              ++t.request_errors;
              ADD_FAILURE() << "worker " << w << " store: " << res.status();
              return;
            }
            t.stores_ok += res->ok_pages;
          } else {
            absl::StatusOr<PageResults> res = c.Load(keys);
            t.loads += keys.size();
            if (!res.ok()) {
              ++t.request_errors;
              ADD_FAILURE() << "worker " << w << " load: " << res.status();
              return;
            }
            for (size_t i = 0; i < keys.size(); ++i) {
              if (res->codes[i] != absl::StatusCode::kOk) continue;
              ++t.hits;
              if (!c.Intact(i, keys[i], tags[i])) {
                ++t.wrong;
                ADD_FAILURE() << "worker " << w << ": key " << tags[i] << " served a wrong page";
              }
            }
          }
          const uint64_t before = epoch_ops.fetch_add(keys.size());
          t.ops += keys.size();
          if (before < cut_at && before + keys.size() >= cut_at) {
            // This thread cuts the power while the others go on.
            absl::StatusOr<Report> r2 = daemon.Command("cut");
            std::lock_guard<std::mutex> lock(cut_mu);
            cut_status = r2.status();
            cut.store(true);
          }
        }
      });
    }
    for (std::thread& th : workers) th.join();
    ASSERT_TRUE(cut_status.ok()) << cut_status;
    for (uint32_t w = 0; w < kWorkers; ++w) {
      for (uint32_t idx = 0; idx < kKeysPerWorker; ++idx) {
        if (mine[w][idx]) submitted[KeySpace::Key(w, idx)] = true;
      }
    }

    // Every fault counted: the injector's counts and the daemon's metrics agree exactly. The
    // clients are done and the planner idle, so nothing moves; a count read between two equal
    // reports is compared (a fault counted twice or never would never agree).
    Report last;
    std::string mismatch;
    const Clock::time_point deadline = Clock::now() + std::chrono::seconds(60);
    bool agreed = false;
    while (!agreed && Clock::now() < deadline) {
      absl::StatusOr<Report> r1 = daemon.Command("report");
      absl::StatusOr<std::string> m = daemon.Metrics();
      absl::StatusOr<Report> r2 = daemon.Command("report");
      ASSERT_TRUE(r1.ok() && m.ok() && r2.ok()) << r1.status() << m.status() << r2.status();
      const double read = Sample(*m, "kvtier_nvme_errors_total{kind=\"read\"}");
      const double write = Sample(*m, "kvtier_nvme_errors_total{kind=\"write\"}");
      const double no_space = Sample(*m, "kvtier_nvme_errors_total{kind=\"no_space\"}");
      agreed = *r1 == *r2 && read == double(r1->reads()) && write == double(r1->writes()) &&
               no_space == double(r1->write_enospc);
      last = *r2;
      mismatch = absl::StrCat("metrics read=", read, " write=", write, " no_space=", no_space,
                              "; injected reads=", r2->reads(), " writes+syncs=", r2->writes(),
                              " enospc=", r2->write_enospc);
      if (!agreed) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    if (!agreed) {
      ++count_mismatches;
      ADD_FAILURE() << "faults injected and counted never agreed: " << mismatch;
    }
    // What the daemon holds on NVMe now, with the power gone: all of it must come back.
    {
      Conn v;
      ASSERT_TRUE(v.Open(daemon.socket_path()).ok());
      for (uint32_t i = 0; i < nkeys; ++i) {
        absl::StatusOr<LookupReply> l = v.client->Lookup({space->keys[i]});
        ASSERT_TRUE(l.ok()) << l.status();
        held[i] = l->prefix_pages == 1 && l->tiers[0] == Tier::kNvme;
        held_at_kills += held[i];
      }
    }
    daemon.Kill();

    EXPECT_EQ(t.wrong.load(), 0u);
    EXPECT_EQ(t.request_errors.load(), 0u);
    EXPECT_GT(t.hits.load(), 0u) << "no load was ever served: the daemon is not serving";
    total.ops += t.ops;
    total.stores += t.stores;
    total.stores_ok += t.stores_ok;
    total.loads += t.loads;
    total.hits += t.hits;
    total.wrong += t.wrong;
    total.request_errors += t.request_errors;
    faults.read_eio += last.read_eio;
    faults.write_eio += last.write_eio;
    faults.write_enospc += last.write_enospc;
    faults.sync_eio += last.sync_eio;
    faults.cut_reads += last.cut_reads;
    faults.cut_writes += last.cut_writes;
    faults.cut_syncs += last.cut_syncs;
    faults.dropped_bytes += last.dropped_bytes;
    if (HasFailure()) break;
  }
  if (!HasFailure()) {
    EXPECT_EQ(daemon.Stop(), 0) << "the daemon did not shut down cleanly";
  }
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  std::printf(
      "kvtierd-fault-injection ops=%llu stores=%llu stores_ok=%llu loads=%llu hits=%llu "
      "power_cuts=%d read_eio=%llu write_eio=%llu write_enospc=%llu sync_eio=%llu "
      "cut_failures=%llu unsynced_bytes_dropped=%llu count_mismatches=%llu held_at_kills=%llu "
      "survived=%llu lost=%llu unheld_kept=%llu never_present=%llu request_errors=%llu "
      "wrong=%llu seconds=%.1f\n",
      static_cast<unsigned long long>(total.ops.load()),
      static_cast<unsigned long long>(total.stores.load()),
      static_cast<unsigned long long>(total.stores_ok.load()),
      static_cast<unsigned long long>(total.loads.load()),
      static_cast<unsigned long long>(total.hits.load()), epochs,
      static_cast<unsigned long long>(faults.read_eio),
      static_cast<unsigned long long>(faults.write_eio),
      static_cast<unsigned long long>(faults.write_enospc),
      static_cast<unsigned long long>(faults.sync_eio),
      static_cast<unsigned long long>(faults.cut_reads + faults.cut_writes + faults.cut_syncs),
      static_cast<unsigned long long>(faults.dropped_bytes),
      static_cast<unsigned long long>(count_mismatches),
      static_cast<unsigned long long>(held_at_kills), static_cast<unsigned long long>(survived),
      static_cast<unsigned long long>(lost), static_cast<unsigned long long>(unheld_kept),
      static_cast<unsigned long long>(never_present),
      static_cast<unsigned long long>(total.request_errors.load()),
      static_cast<unsigned long long>(total.wrong.load() + verify_wrong), seconds);
  EXPECT_EQ(total.wrong.load() + verify_wrong, 0u);
  EXPECT_EQ(lost, 0u);
  EXPECT_EQ(never_present, 0u);
  EXPECT_GE(total.ops.load(), total_target);
  // The run exercised what it claims to.
  EXPECT_GT(faults.read_eio, 0u);
  EXPECT_GT(faults.write_eio, 0u);
  EXPECT_GT(faults.cut_reads + faults.cut_writes, 0u);
  EXPECT_GT(held_at_kills, 0u);
}

}  // namespace
}  // namespace kvtier::testing
