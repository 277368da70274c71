// Fault tests of the NVMe tier with real processes (ctest label `fault`):
//  - CrashConsistency: a writer process is killed with SIGKILL at random moments, >= 50 times
//    (KVTIER_FAULT_ITERATIONS for a soak); after each restart every acknowledged page reads back
//    bit-identical, and no page that reads back differs from what was written.
//  - FlippedBytesAreDetected: random bytes flipped in stored pages on disk fail verification.
//  - FullDiskIsSurvived: a size-limited tmpfs fills up; the tier stops admitting, keeps serving,
//    and what it acknowledged survives a restart (skipped where mount(2) is not allowed).
//  - FileSizeLimitIsSurvived: the same through RLIMIT_FSIZE on a writer process, no privileges.
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "tests/fault/crash_writer_options.h"
#include "tests/unit/nvme/nvme_test_util.h"
#include "tiering/nvme/nvme_tier.h"
#include "tiering/nvme/page_format.h"

extern char** environ;

namespace kvtier {
namespace {

using nvme_test::FillPage;
using nvme_test::ScratchDir;
using nvme_test::TestSeed;

constexpr uint64_t kPageBytes = testing::kCrashWriterPageBytes;
constexpr uint32_t kSlots = testing::kCrashWriterSlots;

NvmeTierOptions WriterOptions(const std::string& dir) { return testing::CrashWriterOptions(dir); }

// Runs the writer with its stdout on a pipe; Kill() sends SIGKILL and returns what it printed.
class Writer {
 public:
  Writer(const std::string& dir, uint64_t seed, const std::vector<std::string>& extra = {}) {
    int p[2];
    if (pipe(p) != 0) std::abort();
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, p[1], STDOUT_FILENO);
    posix_spawn_file_actions_addclose(&fa, p[0]);
    std::vector<std::string> args = {KVTIER_NVME_CRASH_WRITER, "--dir", dir, "--seed",
                                     std::to_string(seed)};
    args.insert(args.end(), extra.begin(), extra.end());
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    if (posix_spawn(&pid_, argv[0], &fa, nullptr, argv.data(), environ) != 0) std::abort();
    posix_spawn_file_actions_destroy(&fa);
    close(p[1]);
    fd_ = p[0];
    reader_ = std::thread([this] {
      char buf[4096];
      for (;;) {
        const ssize_t n = read(fd_, buf, sizeof(buf));
        if (n <= 0) break;
        out_.append(buf, static_cast<size_t>(n));
      }
    });
  }
  // SIGKILL (if still running), reap, and return stdout and the wait status.
  std::string Kill(int* status) {
    kill(pid_, SIGKILL);
    return Wait(status);
  }
  std::string Wait(int* status) {
    waitpid(pid_, status, 0);
    reader_.join();
    close(fd_);
    return out_;
  }

 private:
  pid_t pid_ = -1;
  int fd_ = -1;
  std::thread reader_;
  std::string out_;
};

// Applies the writer's complete lines to `acked` (slot -> key); a torn last line is ignored.
void ApplyLog(const std::string& out, std::map<uint32_t, PageKey>& acked) {
  std::istringstream in(out.substr(0, out.rfind('\n') + 1));
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream l(line);
    char kind;
    uint32_t slot;
    l >> kind >> slot;
    if (kind == 'R') {
      acked.erase(slot);
    } else if (kind == 'A') {
      PageKey k;
      l >> k.hi >> k.lo;
      acked[slot] = k;
    }
  }
}

struct Verdict {
  std::map<uint32_t, PageKey> intact;  // recovered and bit-identical
  int differing = 0;                   // read OK but bytes differ: must never happen
  int failed_verification = 0;         // recovered but dropped on read (absent)
};

Verdict RecoverAndVerify(const NvmeTierOptions& o) {
  Verdict v;
  auto tier = NvmeTier::Create(o);
  EXPECT_TRUE(tier.ok()) << tier.status();
  if (!tier.ok()) return v;
  std::vector<RecoveredPage> found;
  EXPECT_TRUE((*tier)->Recover([&](const RecoveredPage& p) { found.push_back(p); }).ok());
  std::vector<std::byte> got(o.page_bytes), want(o.page_bytes);
  for (const RecoveredPage& p : found) {
    const MutableBuffer dst{got.data(), got.size()};
    absl::Status s;
    (*tier)->Read({SlotRead{p.slot, p.meta, absl::MakeConstSpan(&dst, 1)}}, absl::MakeSpan(&s, 1));
    if (!s.ok()) {
      ++v.failed_verification;
      continue;
    }
    FillPage(p.meta.key, want.data(), want.size());
    if (got != want) {
      ++v.differing;
      continue;
    }
    v.intact[p.slot] = p.meta.key;
  }
  return v;
}

int Iterations() {
  if (const char* s = std::getenv("KVTIER_FAULT_ITERATIONS"); s != nullptr) return std::atoi(s);
  return 50;
}

TEST(NvmeFault, CrashConsistencyUnderKill9) {
  const uint64_t seed = TestSeed("CrashConsistencyUnderKill9");
  std::mt19937_64 rng(seed);
  ScratchDir dir("nvme-crash");
  const NvmeTierOptions o = WriterOptions(dir.path());
  std::map<uint32_t, PageKey> acked;  // what the tier has promised is stored
  const int iterations = Iterations();
  int kills_mid_run = 0;
  uint64_t acks_seen = 0;
  for (int it = 0; it < iterations; ++it) {
    Writer w(dir.path(), rng());
    // Random moments: during start-up and recovery as well as mid-batch.
    std::this_thread::sleep_for(std::chrono::microseconds(rng() % 150'000));
    int status = 0;
    const std::string out = w.Kill(&status);
    ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)
        << "writer exited on its own (status " << status << ") at iteration " << it;
    ++kills_mid_run;
    acks_seen += static_cast<uint64_t>(std::count(out.begin(), out.end(), 'A'));
    ApplyLog(out, acked);
    const Verdict v = RecoverAndVerify(o);
    ASSERT_EQ(v.differing, 0) << "iteration " << it << ": a page read back different bytes";
    for (const auto& [slot, key] : acked) {
      auto f = v.intact.find(slot);
      ASSERT_TRUE(f != v.intact.end() && f->second == key)
          << "iteration " << it << ": acknowledged page " << key.ToHex() << " in slot " << slot
          << " did not survive";
    }
    // A kill does not lose what the kernel already has: nothing recovered may fail verification.
    EXPECT_EQ(v.failed_verification, 0) << "iteration " << it;
    acked = v.intact;  // the next writer starts from what is on disk now
  }
  std::printf("[crash] %d kills, %llu acknowledgements, %zu pages held at the end\n", kills_mid_run,
              static_cast<unsigned long long>(acks_seen), acked.size());
  EXPECT_GE(kills_mid_run, std::min(iterations, 50));
  EXPECT_GT(acks_seen, 0u);
}

TEST(NvmeFault, FlippedBytesAreDetectedOnRead) {
  const uint64_t seed = TestSeed("FlippedBytesAreDetectedOnRead");
  std::mt19937_64 rng(seed);
  ScratchDir dir("nvme-flip");
  {
    Writer w(dir.path(), rng(), {"--batches", "40"});
    int status = 0;
    w.Wait(&status);
    ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  }
  const NvmeTierOptions o = WriterOptions(dir.path());
  std::vector<RecoveredPage> found;
  uint64_t flipped_slots = 0;
  {
    auto tier = NvmeTier::Create(o);
    ASSERT_TRUE(tier.ok());
    ASSERT_TRUE((*tier)->Recover([&](const RecoveredPage& p) { found.push_back(p); }).ok());
    ASSERT_GE(found.size(), 10u);
    std::shuffle(found.begin(), found.end(), rng);
    // Flip one bit in each of the first 5 pages: in the header fields or anywhere in the payload.
    for (int i = 0; i < 5; ++i) {
      const uint64_t within = rng() % 2 == 0 ? rng() % sizeof(nvme::PageHeader)
                                             : nvme::kHeaderBlockBytes + rng() % kPageBytes;
      const uint64_t at = (*tier)->SlotFileOffset(found[i].slot) + within;
      const int fd = open((*tier)->SlotFilePath(found[i].slot).c_str(), O_RDWR);
      ASSERT_GE(fd, 0);
      unsigned char b = 0;
      ASSERT_EQ(pread(fd, &b, 1, static_cast<off_t>(at)), 1);
      b ^= static_cast<unsigned char>(1u << (rng() % 8));
      ASSERT_EQ(pwrite(fd, &b, 1, static_cast<off_t>(at)), 1);
      close(fd);
      ++flipped_slots;
    }
  }
  // A fresh process-like start: recovery trusts the index, the first read checks the bytes.
  auto tier = NvmeTier::Create(o);
  ASSERT_TRUE(tier.ok());
  std::vector<RecoveredPage> again;
  ASSERT_TRUE((*tier)->Recover([&](const RecoveredPage& p) { again.push_back(p); }).ok());
  ASSERT_EQ(again.size(), found.size());
  std::vector<std::byte> got(kPageBytes), want(kPageBytes);
  for (size_t i = 0; i < found.size(); ++i) {
    const MutableBuffer dst{got.data(), got.size()};
    absl::Status s;
    (*tier)->Read({SlotRead{found[i].slot, found[i].meta, absl::MakeConstSpan(&dst, 1)}},
                  absl::MakeSpan(&s, 1));
    if (i < flipped_slots) {
      EXPECT_TRUE(absl::IsDataLoss(s))
          << "flip in slot " << found[i].slot << " not detected: " << s;
    } else {
      ASSERT_TRUE(s.ok()) << s;
      FillPage(found[i].meta.key, want.data(), want.size());
      EXPECT_EQ(got, want);
    }
  }
  EXPECT_EQ((*tier)->counters().checksum_mismatches, flipped_slots);
}

TEST(NvmeFault, FullDiskIsSurvived) {
  const uint64_t seed = TestSeed("FullDiskIsSurvived");
  std::mt19937_64 rng(seed);
  ScratchDir dir("nvme-full");
  const std::string mnt = dir.sub("small");
  std::filesystem::create_directories(mnt);
  // 3 MiB of tmpfs for 48 slots of 64 KiB (3.2 MB of slots) plus the RocksDB index.
  if (mount("tmpfs", mnt.c_str(), "tmpfs", 0, "size=3m") != 0) {
    GTEST_SKIP() << "cannot mount a small tmpfs here (" << std::strerror(errno)
                 << "); FileSizeLimitIsSurvived covers the full-disk path without privileges";
  }
  struct Unmount {
    std::string path;
    ~Unmount() { umount2(path.c_str(), MNT_DETACH); }
  } unmount{mnt};
  for (bool prealloc : {true, false}) {
    SCOPED_TRACE(prealloc ? "preallocated" : "sparse");
    const std::string d = mnt + (prealloc ? "/p" : "/s");
    NvmeTierOptions o = WriterOptions(d);
    o.preallocate = prealloc;
    std::map<uint32_t, PageKey> acked;
    {
      auto tier = NvmeTier::Create(o);
      ASSERT_TRUE(tier.ok()) << tier.status();
      std::vector<std::byte> page(kPageBytes);
      int ok = 0, full = 0;
      for (uint32_t slot = 0; slot < kSlots; ++slot) {
        const PageKey key = nvme_test::RandomKey(rng);
        FillPage(key, page.data(), page.size());
        const ConstBuffer src{page.data(), page.size()};
        absl::Status s;
        (*tier)->Write({SlotWrite{slot, PageMeta{key, 0, PageClass::kSemantic, kPageBytes, {5, 6}},
                                  absl::MakeConstSpan(&src, 1)}},
                       absl::MakeSpan(&s, 1));
        if (s.ok()) {
          ++ok;
          acked[slot] = key;
        } else {
          ASSERT_TRUE(absl::IsResourceExhausted(s)) << s;
          if (full == 0) std::printf("[full] first refusal: %s\n", s.ToString().c_str());
          ++full;
        }
      }
      EXPECT_GT(ok, 0);
      EXPECT_GT(full, 0);
      EXPECT_FALSE((*tier)->admitting());
      EXPECT_GT((*tier)->counters().enospc, 0u);
      // Still serving everything it acknowledged.
      for (const auto& [slot, key] : acked) {
        std::vector<std::byte> got(kPageBytes);
        const MutableBuffer dst{got.data(), got.size()};
        absl::Status s;
        (*tier)->Read(
            {SlotRead{slot, PageMeta{key, 0, {}, kPageBytes}, absl::MakeConstSpan(&dst, 1)}},
            absl::MakeSpan(&s, 1));
        ASSERT_TRUE(s.ok()) << s;
        FillPage(key, page.data(), page.size());
        EXPECT_EQ(got, page);
      }
      std::printf("[full] %s: %d pages stored, %d refused\n", prealloc ? "preallocated" : "sparse",
                  ok, full);
    }
    // And after a restart on the still-full file system.
    const Verdict v = RecoverAndVerify(o);
    EXPECT_EQ(v.differing, 0);
    for (const auto& [slot, key] : acked) {
      auto f = v.intact.find(slot);
      EXPECT_TRUE(f != v.intact.end() && f->second == key) << "slot " << slot;
    }
    std::filesystem::remove_all(d);  // the next variant gets the whole small file system
  }
}

// The same without privileges: RLIMIT_FSIZE on a writer process makes its files "full" (EFBIG);
// it must refuse what does not fit, count it, exit cleanly, and keep what it acknowledged.
TEST(NvmeFault, FileSizeLimitIsSurvived) {
  const uint64_t seed = TestSeed("FileSizeLimitIsSurvived");
  std::mt19937_64 rng(seed);
  ScratchDir dir("nvme-fsize");
  // 20 slots' worth per file: the rest of the 24 slots per file cannot be allocated.
  const std::string d = dir.sub("limited");
  Writer w(d, rng(),
           {"--batches", "60", "--fsize-limit", std::to_string(20 * (kPageBytes + 4096))});
  int status = 0;
  const std::string out = w.Wait(&status);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status << "\n" << out;
  std::map<uint32_t, PageKey> acked;
  ApplyLog(out, acked);
  const size_t s_at = out.rfind("S ");
  ASSERT_NE(s_at, std::string::npos);
  unsigned long long enospc = 0, rejected = 0;
  ASSERT_EQ(std::sscanf(out.c_str() + s_at, "S %llu %llu", &enospc, &rejected), 2);
  EXPECT_GT(enospc, 0u);
  EXPECT_GT(rejected, 0u);
  EXPECT_FALSE(acked.empty());
  const Verdict v = RecoverAndVerify(WriterOptions(d));
  EXPECT_EQ(v.differing, 0);
  for (const auto& [slot, key] : acked) {
    auto f = v.intact.find(slot);
    EXPECT_TRUE(f != v.intact.end() && f->second == key) << "slot " << slot;
  }
}

}  // namespace
}  // namespace kvtier
