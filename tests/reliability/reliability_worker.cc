// kvtier-reliability-worker: the worker process of the reliability tests (tests/reliability/,
// bench/reliability/). It links the client library as an inference worker would and stores and
// loads self-describing pages (page_pattern.h), so every byte it gets back is checked.
//
//   crash        stores and loads until the daemon goes away (or --seconds pass), recording each
//                store in --log *outside the daemon*: "S id hi lo" before it is submitted, "A id hi
//                lo" once acknowledged. Continues the versions its log already holds, and loads
//                back what it (or its predecessors) had acknowledged. Without --log: soak churn.
//   verify       after a restart: reads the crash workers' logs and loads, per logical page, the
//                last acknowledged version, every version submitted after it, and one version
//                never submitted. Acknowledged: intact or absent. Submitted, unacknowledged: intact
//                or absent (the kill may fall between the write and the reply). Never submitted:
//                must be absent. Any page that is not intact is wrong.
//   consistency  --threads clients (one connection each) store and load random versions of a
//                shared key space until --ops page operations are done; a miss is allowed, a page
//                whose bytes are not one of the versions stored under its key is an inconsistency.
//
// Exit status: 0 done (crash: also when the daemon went away), 1 setup or protocol error, 3 a wrong
// page or an inconsistency. The last stdout line is a summary of key=value figures.
#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "client/client.h"
#include "tests/reliability/page_pattern.h"

ABSL_FLAG(std::string, socket, "", "kvtierd's socket");
ABSL_FLAG(std::string, ns, "reliability/test", "namespace");
ABSL_FLAG(uint64_t, page_bytes, 4096, "the daemon's store.page_bytes");
ABSL_FLAG(uint64_t, seed, 1, "random seed (printed by the driver)");
ABSL_FLAG(uint32_t, worker, 0, "crash: this worker's number (part of every page id)");
ABSL_FLAG(std::string, log, "", "crash: append-only acknowledgement log; verify: comma list");
ABSL_FLAG(uint32_t, keys, 64, "crash: logical pages per worker; consistency: shared key space");
ABSL_FLAG(uint32_t, batch, 16, "pages per Store/Load request");
ABSL_FLAG(double, seconds, 0, "crash: stop after this long (0: until the daemon goes away)");
ABSL_FLAG(uint32_t, threads, 8, "consistency: client threads");
ABSL_FLAG(uint64_t, ops, 100000, "consistency: page operations in all");
ABSL_FLAG(uint32_t, versions, 4, "consistency: versions per key (at most 255)");

namespace {

using namespace kvtier;
using reliability::CheckPattern;
using reliability::FillPattern;
using reliability::PatternVerdict;

int Fail(const std::string& what, const absl::Status& s) {
  std::fprintf(stderr, "kvtier-reliability-worker: %s: %s\n", what.c_str(), s.ToString().c_str());
  return 1;
}

// One connection with its registered buffers.
struct Conn {
  std::unique_ptr<Client> client;
  std::optional<Layout> layout;
  std::optional<WorkerBuffers> buffers;
  PageKey salt;
  uint32_t blocks = 0;

  absl::Status Open(uint32_t num_blocks) {
    absl::StatusOr<std::unique_ptr<Client>> c = Client::Connect(absl::GetFlag(FLAGS_socket));
    if (!c.ok()) return c.status();
    client = *std::move(c);
    client->set_spin_wait_us(0);  // many processes share two cores: never spin
    absl::StatusOr<LayoutSpec> spec = FlatLayoutFor(absl::GetFlag(FLAGS_page_bytes), num_blocks);
    if (!spec.ok()) return spec.status();
    absl::StatusOr<Layout> l = Layout::Create(*spec);
    if (!l.ok()) return l.status();
    layout.emplace(*std::move(l));
    absl::StatusOr<HelloInfo> hello = client->Hello(absl::GetFlag(FLAGS_ns), *spec);
    if (!hello.ok()) return hello.status();
    salt = hello->salt;
    absl::StatusOr<WorkerBuffers> b = WorkerBuffers::Create(*layout);
    if (!b.ok()) return b.status();
    buffers.emplace(*std::move(b));
    blocks = num_blocks;
    return client->RegisterBuffers(buffers->fds(), buffers->sizes());
  }

  // Stores (key, tag) pages from blocks [0, n); per-page codes.
  absl::StatusOr<PageResults> Store(const std::vector<PageKey>& keys,
                                    const std::vector<uint64_t>& tags,
                                    std::vector<std::byte>& img) {
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

  // Loads `keys` into blocks [blocks/2, blocks/2 + n); per-page codes.
  absl::StatusOr<PageResults> Load(const std::vector<PageKey>& keys) {
    std::vector<uint32_t> ids(keys.size());
    for (size_t i = 0; i < keys.size(); ++i) ids[i] = blocks / 2 + static_cast<uint32_t>(i);
    absl::StatusOr<OpHandle> op = client->LoadAsync(keys, ids);
    if (!op.ok()) return op.status();
    return client->Wait(*op);
  }

  absl::Status ReadLoaded(size_t i, std::vector<std::byte>& img) {
    return buffers->ReadBlock(*layout, blocks / 2 + static_cast<uint32_t>(i), absl::MakeSpan(img));
  }
};

// A crash worker's page id: worker, logical page, version.
uint64_t PageId(uint64_t worker, uint64_t idx, uint64_t version) {
  return (worker << 48) | (idx << 24) | version;
}
uint64_t IdWorker(uint64_t id) { return id >> 48; }
uint64_t IdIndex(uint64_t id) { return (id >> 24) & 0xffffff; }
uint64_t IdVersion(uint64_t id) { return id & 0xffffff; }

struct LogEntry {
  PageKey key;
  bool acked = false;
};
// id -> what the logs say. A torn last line (the writer died mid-line) is ignored.
void ReadLog(const std::string& path, std::map<uint64_t, LogEntry>& out) {
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream l(line);
    char kind = 0;
    uint64_t id = 0;
    PageKey k;
    if (!(l >> kind >> id >> k.hi >> k.lo)) continue;
    LogEntry& e = out[id];
    e.key = k;
    if (kind == 'A') e.acked = true;
  }
}

int RunCrash() {
  const uint64_t worker = absl::GetFlag(FLAGS_worker);
  const uint32_t nkeys = absl::GetFlag(FLAGS_keys);
  const uint32_t batch = std::min(absl::GetFlag(FLAGS_batch), nkeys);
  const std::string log_path = absl::GetFlag(FLAGS_log);
  const double seconds = absl::GetFlag(FLAGS_seconds);
  std::mt19937_64 rng(absl::GetFlag(FLAGS_seed));
  Conn c;
  if (absl::Status s = c.Open(2 * batch); !s.ok()) {
    // The daemon was killed before this worker got going: nothing was submitted.
    std::printf("crash-worker worker=%llu stores=0 ended=\"open: %s\"\n",
                static_cast<unsigned long long>(worker), std::string(s.message()).c_str());
    return 0;
  }
  // Continue where this worker's log left off: versions go on rising, acknowledged pages are
  // loaded back (across daemon restarts, when they were on NVMe).
  std::vector<uint64_t> next_version(nkeys, 1);
  std::vector<std::optional<PageKey>> last_acked(nkeys);
  std::vector<uint64_t> last_acked_tag(nkeys, 0);
  int log_fd = -1;
  if (!log_path.empty()) {
    std::map<uint64_t, LogEntry> mine;
    ReadLog(log_path, mine);
    for (const auto& [id, e] : mine) {
      if (IdWorker(id) != worker || IdIndex(id) >= nkeys) continue;
      const uint64_t idx = IdIndex(id);
      next_version[idx] = std::max(next_version[idx], IdVersion(id) + 1);
      if (e.acked) {
        last_acked[idx] = e.key;
        last_acked_tag[idx] = id;
      }
    }
    log_fd = ::open(log_path.c_str(), O_RDWR | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (log_fd < 0) return Fail("open log", absl::ErrnoToStatus(errno, log_path));
    // A predecessor killed mid-line left a torn record (ReadLog skipped it): start a new line.
    char last = '\n';
    const off_t end = ::lseek(log_fd, 0, SEEK_END);
    if (end > 0 && ::pread(log_fd, &last, 1, end - 1) == 1 && last != '\n') {
      if (::write(log_fd, "\n", 1) != 1)
        return Fail("log write", absl::ErrnoToStatus(errno, log_path));
    }
  }
  auto append = [&](const std::string& text) {
    if (log_fd >= 0 && ::write(log_fd, text.data(), text.size()) != ssize_t(text.size())) {
      std::perror("kvtier-reliability-worker: log write");
      std::exit(1);
    }
  };
  std::vector<std::byte> img(c.layout->page_bytes());
  uint64_t stores = 0, acked = 0, store_refused = 0, loads = 0, verified = 0, misses = 0;
  const auto start = std::chrono::steady_clock::now();
  absl::Status ended;
  for (;;) {
    if (seconds > 0 &&
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() >=
            seconds) {
      break;
    }
    std::set<uint32_t> pick;
    while (pick.size() < batch) pick.insert(static_cast<uint32_t>(rng() % nkeys));
    if (rng() % 5 < 3) {
      std::vector<PageKey> keys;
      std::vector<uint64_t> tags;
      std::string intent;
      for (uint32_t idx : pick) {
        const uint64_t id = PageId(worker, idx, next_version[idx]++);
        keys.push_back(ChainKeyFromId(c.salt, PageKey{}, id));
        tags.push_back(id);
        absl::StrAppend(&intent, "S ", id, " ", keys.back().hi, " ", keys.back().lo, "\n");
      }
      append(intent);  // before the daemon sees it: whatever it may hold was submitted
      absl::StatusOr<PageResults> r = c.Store(keys, tags, img);
      if (!r.ok()) {
        ended = r.status();
        break;
      }
      std::string acks;
      for (size_t i = 0; i < keys.size(); ++i) {
        ++stores;
        if (r->codes[i] != absl::StatusCode::kOk) {
          ++store_refused;
          continue;
        }
        ++acked;
        const auto idx = static_cast<uint32_t>(IdIndex(tags[i]));
        last_acked[idx] = keys[i];
        last_acked_tag[idx] = tags[i];
        absl::StrAppend(&acks, "A ", tags[i], " ", keys[i].hi, " ", keys[i].lo, "\n");
      }
      append(acks);
    } else {
      std::vector<PageKey> keys;
      std::vector<uint64_t> tags;
      for (uint32_t idx : pick) {
        if (!last_acked[idx].has_value()) continue;
        keys.push_back(*last_acked[idx]);
        tags.push_back(last_acked_tag[idx]);
      }
      if (keys.empty()) continue;
      absl::StatusOr<PageResults> r = c.Load(keys);
      if (!r.ok()) {
        ended = r.status();
        break;
      }
      for (size_t i = 0; i < keys.size(); ++i) {
        ++loads;
        if (r->codes[i] != absl::StatusCode::kOk) {
          ++misses;
          continue;
        }
        if (absl::Status s = c.ReadLoaded(i, img); !s.ok()) return Fail("read block", s);
        uint64_t tag = 0;
        if (CheckPattern(keys[i], img, &tag) != PatternVerdict::kIntact || tag != tags[i]) {
          std::printf("WRONG page id=%llu key=%s\n", static_cast<unsigned long long>(tags[i]),
                      keys[i].ToHex().c_str());
          return 3;
        }
        ++verified;
      }
    }
  }
  if (log_fd >= 0) ::close(log_fd);
  std::printf(
      "crash-worker worker=%llu stores=%llu acked=%llu refused=%llu loads=%llu verified=%llu "
      "misses=%llu wrong=0 ended=\"%s\"\n",
      static_cast<unsigned long long>(worker), static_cast<unsigned long long>(stores),
      static_cast<unsigned long long>(acked), static_cast<unsigned long long>(store_refused),
      static_cast<unsigned long long>(loads), static_cast<unsigned long long>(verified),
      static_cast<unsigned long long>(misses),
      ended.ok() ? "time" : std::string(ended.message()).c_str());
  return 0;
}

int RunVerify() {
  std::map<uint64_t, LogEntry> all;
  for (absl::string_view p : absl::StrSplit(absl::GetFlag(FLAGS_log), ',', absl::SkipEmpty())) {
    ReadLog(std::string(p), all);
  }
  // Per logical page (worker, idx): its last acknowledged version, the versions submitted after
  // it, and the first version never submitted.
  struct Logical {
    uint64_t last_acked = 0;  // 0: none
    uint64_t max_version = 0;
  };
  std::map<uint64_t, Logical> logical;  // keyed by id with version 0
  for (const auto& [id, e] : all) {
    Logical& l = logical[id & ~uint64_t{0xffffff}];
    l.max_version = std::max(l.max_version, IdVersion(id));
    if (e.acked) l.last_acked = std::max(l.last_acked, IdVersion(id));
  }
  enum Kind { kAcked, kInflight, kNever };
  struct Check {
    uint64_t id;
    PageKey key;
    Kind kind;
  };
  constexpr uint32_t kBatch = 128;
  Conn c;
  if (absl::Status s = c.Open(2 * kBatch); !s.ok()) return Fail("open", s);
  std::vector<Check> checks;
  for (const auto& [base, l] : logical) {
    for (uint64_t v = std::max<uint64_t>(l.last_acked, 1); v <= l.max_version; ++v) {
      auto it = all.find(base | v);
      if (it == all.end()) continue;
      const Kind kind = it->second.acked ? kAcked : kInflight;
      if (kind == kAcked && v != l.last_acked) continue;
      checks.push_back({base | v, it->second.key, kind});
    }
    const uint64_t never = base | (l.max_version + 1);
    checks.push_back({never, ChainKeyFromId(c.salt, PageKey{}, never), kNever});
  }
  uint64_t n[3] = {0, 0, 0}, present[3] = {0, 0, 0}, wrong = 0;
  std::vector<std::byte> img(c.layout->page_bytes());
  for (size_t at = 0; at < checks.size(); at += kBatch) {
    std::vector<PageKey> keys;
    const size_t end = std::min(checks.size(), at + kBatch);
    for (size_t i = at; i < end; ++i) keys.push_back(checks[i].key);
    absl::StatusOr<PageResults> r = c.Load(keys);
    if (!r.ok()) return Fail("load", r.status());
    for (size_t i = at; i < end; ++i) {
      const Check& ch = checks[i];
      ++n[ch.kind];
      if (r->codes[i - at] != absl::StatusCode::kOk) continue;
      ++present[ch.kind];
      if (absl::Status s = c.ReadLoaded(i - at, img); !s.ok()) return Fail("read block", s);
      uint64_t tag = 0;
      const PatternVerdict v = CheckPattern(ch.key, img, &tag);
      if (ch.kind == kNever || v != PatternVerdict::kIntact || tag != ch.id) {
        ++wrong;
        if (wrong <= 10) {
          std::printf("WRONG %s page id=%llu key=%s verdict=%d tag=%llu\n",
                      ch.kind == kNever ? "never-submitted" : "submitted",
                      static_cast<unsigned long long>(ch.id), ch.key.ToHex().c_str(),
                      static_cast<int>(v), static_cast<unsigned long long>(tag));
        }
      }
    }
  }
  std::printf(
      "verify acked=%llu acked_intact=%llu inflight=%llu inflight_present=%llu never=%llu "
      "never_present=%llu wrong=%llu\n",
      static_cast<unsigned long long>(n[kAcked]), static_cast<unsigned long long>(present[kAcked]),
      static_cast<unsigned long long>(n[kInflight]),
      static_cast<unsigned long long>(present[kInflight]),
      static_cast<unsigned long long>(n[kNever]), static_cast<unsigned long long>(present[kNever]),
      static_cast<unsigned long long>(wrong));
  return wrong == 0 ? 0 : 3;
}

int RunConsistency() {
  const uint32_t threads = absl::GetFlag(FLAGS_threads);
  const uint32_t nkeys = absl::GetFlag(FLAGS_keys);
  const uint32_t batch = std::min(absl::GetFlag(FLAGS_batch), nkeys);
  const uint32_t versions = std::min<uint32_t>(absl::GetFlag(FLAGS_versions), 255);
  const uint64_t target = absl::GetFlag(FLAGS_ops);
  const uint64_t seed = absl::GetFlag(FLAGS_seed);
  // Bit v of stored[k]: version v of key k has been submitted for storing (set before the Store
  // goes out, so a load that sees it can only race a store that has been submitted).
  std::vector<std::atomic<uint32_t>> stored(nkeys);
  std::atomic<uint64_t> ops{0}, store_pages{0}, load_pages{0}, hits{0}, misses{0}, refused{0},
      inconsistencies{0};
  std::atomic<uint64_t> hits_by_tier[3] = {0, 0, 0};
  std::atomic<int> failed{0};
  std::mutex print_mu;
  const auto start = std::chrono::steady_clock::now();
  std::vector<std::thread> pool;
  for (uint32_t t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      std::mt19937_64 rng(seed * 1000003 + t);
      Conn c;
      if (absl::Status s = c.Open(2 * batch); !s.ok()) {
        Fail("open", s);
        failed = 1;
        return;
      }
      std::vector<PageKey> key_of(nkeys);
      // The seed is the keys' parent: a second run against the same daemon has keys of its own.
      for (uint32_t k = 0; k < nkeys; ++k) {
        key_of[k] = ChainKeyFromId(c.salt, PageKey{seed, 0x636f6e73}, k);
      }
      std::vector<std::byte> img(c.layout->page_bytes());
      while (ops.load(std::memory_order_relaxed) < target && failed.load() == 0) {
        std::set<uint32_t> pick;
        while (pick.size() < batch) pick.insert(static_cast<uint32_t>(rng() % nkeys));
        std::vector<PageKey> keys;
        std::vector<uint64_t> tags;
        for (uint32_t k : pick) keys.push_back(key_of[k]);
        if (rng() % 2 == 0) {
          for (uint32_t k : pick) {
            const uint32_t v = static_cast<uint32_t>(rng() % versions);
            stored[k].fetch_or(1u << v);
            tags.push_back((uint64_t{k} << 8) | v);
          }
          absl::StatusOr<PageResults> r = c.Store(keys, tags, img);
          if (!r.ok()) {
            Fail("store", r.status());
            failed = 1;
            return;
          }
          store_pages += keys.size();
          refused += keys.size() - r->ok_pages;
        } else {
          absl::StatusOr<PageResults> r = c.Load(keys);
          if (!r.ok()) {
            Fail("load", r.status());
            failed = 1;
            return;
          }
          load_pages += keys.size();
          size_t i = 0;
          for (uint32_t k : pick) {
            if (r->codes[i] != absl::StatusCode::kOk) {
              ++misses;
              ++i;
              continue;
            }
            ++hits;
            if (i < r->tiers.size()) ++hits_by_tier[static_cast<int>(r->tiers[i]) % 3];
            if (absl::Status s = c.ReadLoaded(i, img); !s.ok()) {
              Fail("read block", s);
              failed = 1;
              return;
            }
            uint64_t tag = 0;
            const PatternVerdict v = CheckPattern(key_of[k], img, &tag);
            const uint32_t ver = static_cast<uint32_t>(tag & 0xff);
            const bool ok = v == PatternVerdict::kIntact && (tag >> 8) == k && ver < versions &&
                            (stored[k].load() & (1u << ver)) != 0;
            if (!ok && ++inconsistencies <= 10) {
              std::lock_guard<std::mutex> lock(print_mu);
              std::printf("INCONSISTENT key %u (%s): verdict %d tag %llu\n", k,
                          key_of[k].ToHex().c_str(), static_cast<int>(v),
                          static_cast<unsigned long long>(tag));
            }
            ++i;
          }
        }
        ops += keys.size();
      }
    });
  }
  for (std::thread& th : pool) th.join();
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf(
      "consistency threads=%u keys=%u versions=%u ops=%llu stores=%llu store_refused=%llu "
      "loads=%llu hits=%llu hits_hbm=%llu hits_dram=%llu hits_nvme=%llu misses=%llu "
      "inconsistencies=%llu seconds=%.1f ops_per_s=%.0f\n",
      threads, nkeys, versions, static_cast<unsigned long long>(ops.load()),
      static_cast<unsigned long long>(store_pages.load()),
      static_cast<unsigned long long>(refused.load()),
      static_cast<unsigned long long>(load_pages.load()),
      static_cast<unsigned long long>(hits.load()),
      static_cast<unsigned long long>(hits_by_tier[static_cast<int>(Tier::kHbm) % 3].load()),
      static_cast<unsigned long long>(hits_by_tier[static_cast<int>(Tier::kDram) % 3].load()),
      static_cast<unsigned long long>(hits_by_tier[static_cast<int>(Tier::kNvme) % 3].load()),
      static_cast<unsigned long long>(misses.load()),
      static_cast<unsigned long long>(inconsistencies.load()), secs, ops.load() / secs);
  if (failed.load() != 0) return 1;
  return inconsistencies.load() == 0 ? 0 : 3;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<char*> args = absl::ParseCommandLine(argc, argv);
  const std::string mode = args.size() == 2 ? args[1] : "";
  if (mode == "crash") return RunCrash();
  if (mode == "verify") return RunVerify();
  if (mode == "consistency") return RunConsistency();
  std::fprintf(stderr,
               "usage: kvtier-reliability-worker crash|verify|consistency --socket=PATH [flags]\n");
  return 2;
}
