// The NVMe tier under a fault-injecting I/O layer (fault_injecting_io.h, RocksDB's
// FaultInjectionTestFS): several threads write and read self-describing pages through one tier
// while reads fail with EIO 1 in 32, writes with EIO 1 in 128 and ENOSPC 1 in 997, syncs with
// EIO 1 in 251; each epoch ends in a simulated power cut at a random operation (every completion
// fails from then on, and unsynced bytes are dropped: zeros, garbage or kept, per 4 KiB block),
// and the next epoch reopens the tier on what is left. Checked:
//  - 0 wrong pages: every read that succeeds returns exactly the page of the key asked for;
//  - every fault is counted: the tier's read and write error counters, and the
//    kvtier_nvme_errors_total metrics the daemon exports from them, equal the faults injected;
//  - the tier serves throughout (every call returns; most succeed) and after every power cut
//    every page acknowledged before the cut is recovered intact, and no other page appears.
//
// KVTIER_FAULT_INJECTION_OPS sets the page operations over all epochs (default 40000, the CI
// run; the full run is `bench/reliability/run.sh faults` with 1 M).
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "daemon/observability/metrics.h"
#include "daemon/observability/nvme_metrics.h"
#include "gtest/gtest.h"
#include "tests/fault/fault_injecting_io.h"
#include "tests/reliability/page_pattern.h"
#include "tests/unit/nvme/nvme_test_util.h"
#include "tiering/nvme/nvme_tier.h"

namespace kvtier {
namespace {

using nvme_test::ScratchDir;
using nvme_test::TestSeed;
using reliability::CheckPattern;
using reliability::FillPattern;
using reliability::PatternVerdict;
using testing::FaultInjectingIo;
using testing::FaultInjectionOptions;
using testing::InjectedFaults;

constexpr uint64_t kPageBytes = 4096;
constexpr uint32_t kThreads = 4;
constexpr uint32_t kSlotsPerThread = 64;
constexpr uint32_t kBatch = 16;
constexpr int kEpochs = 8;

uint64_t TotalOps() {
  if (const char* s = std::getenv("KVTIER_FAULT_INJECTION_OPS"); s != nullptr) {
    return std::strtoull(s, nullptr, 10);
  }
  return 40000;
}

// The value of the sample `name{labels}` in a text exposition, -1 when absent.
double Sample(const std::string& text, const std::string& series) {
  const size_t at = text.find("\n" + series + " ");
  if (at == std::string::npos) return -1;
  return std::strtod(text.c_str() + at + series.size() + 2, nullptr);
}

// What the test knows about one slot.
struct SlotModel {
  enum State : uint8_t { kEmpty, kHeld, kUnknown };
  State state = kEmpty;
  PageKey key;
  uint64_t tag = 0;
};

struct Tally {
  std::atomic<uint64_t> ops{0}, writes{0}, writes_ok{0}, reads{0}, reads_ok{0}, wrong{0}, lost{0},
      unexpected{0};
};

// One thread's share of an epoch: its own slots, batches of writes and reads, until the cut.
void RunThread(NvmeTier& tier, FaultInjectingIo& faults, std::vector<SlotModel>& model,
               uint32_t first_slot, uint64_t seed, uint64_t cut_at, std::atomic<bool>& cut,
               Tally& t) {
  std::mt19937_64 rng(seed);
  std::vector<std::vector<std::byte>> pages(kBatch, std::vector<std::byte>(kPageBytes));
  while (!cut.load()) {
    std::vector<uint32_t> slots;
    const bool write = rng() % 2 == 0;
    for (uint32_t i = 0; i < kSlotsPerThread && slots.size() < kBatch; ++i) {
      const uint32_t s = first_slot + static_cast<uint32_t>(rng() % kSlotsPerThread);
      if (std::find(slots.begin(), slots.end(), s) != slots.end()) continue;
      if (!write && model[s].state != SlotModel::kHeld) continue;
      slots.push_back(s);
    }
    if (slots.empty()) continue;
    std::vector<absl::Status> results(slots.size());
    std::vector<SlotModel> next(slots.size());
    if (write) {
      std::vector<ConstBuffer> src(slots.size());
      std::vector<SlotWrite> w;
      for (size_t i = 0; i < slots.size(); ++i) {
        next[i] = SlotModel{SlotModel::kHeld, nvme_test::RandomKey(rng), rng()};
        FillPattern(next[i].key, next[i].tag, absl::MakeSpan(pages[i]));
        src[i] = ConstBuffer{pages[i].data(), kPageBytes};
        w.push_back(SlotWrite{slots[i],
                              PageMeta{next[i].key, 0, PageClass::kSemantic, kPageBytes, {1, 2}},
                              absl::MakeConstSpan(&src[i], 1)});
      }
      tier.Write(w, absl::MakeSpan(results));
      t.writes += slots.size();
      for (size_t i = 0; i < slots.size(); ++i) {
        if (results[i].ok()) {
          ++t.writes_ok;
        } else {
          next[i].state = SlotModel::kEmpty;  // a failed write leaves the slot empty
        }
      }
    } else {
      std::vector<MutableBuffer> dst(slots.size());
      std::vector<SlotRead> r;
      for (size_t i = 0; i < slots.size(); ++i) {
        dst[i] = MutableBuffer{pages[i].data(), kPageBytes};
        r.push_back(SlotRead{slots[i], PageMeta{model[slots[i]].key, 0, {}, kPageBytes},
                             absl::MakeConstSpan(&dst[i], 1)});
      }
      tier.Read(r, absl::MakeSpan(results));
      t.reads += slots.size();
      for (size_t i = 0; i < slots.size(); ++i) {
        next[i] = model[slots[i]];
        if (results[i].ok()) {
          ++t.reads_ok;
          uint64_t tag = 0;
          if (CheckPattern(next[i].key, pages[i], &tag) != PatternVerdict::kIntact ||
              tag != next[i].tag) {
            ++t.wrong;
          }
        } else if (absl::IsUnavailable(results[i])) {
          next[i].state = SlotModel::kEmpty;  // EIO: the tier dropped the page
        } else {
          ++t.unexpected;  // NotFound or DataLoss of a held page, before any power cut
          next[i].state = SlotModel::kEmpty;
        }
      }
    }
    // A batch that may have seen the power cut: its slots' fate is unknown (still checked for
    // wrong bytes after the restart, never for survival).
    const bool after_cut = cut.load();
    for (size_t i = 0; i < slots.size(); ++i) {
      model[slots[i]] = next[i];
      if (after_cut) model[slots[i]].state = SlotModel::kUnknown;
    }
    if (t.ops.fetch_add(slots.size()) + slots.size() >= cut_at && !cut.load()) {
      faults.PowerCut();
      cut.store(true);
    }
  }
}

TEST(NvmeFaultInjection, WrongPagesNeverServedAndEveryFaultCounted) {
  const uint64_t seed = TestSeed("WrongPagesNeverServedAndEveryFaultCounted");
  std::mt19937_64 rng(seed);
  ScratchDir dir("nvme-faults");
  FaultInjectionOptions fo;
  fo.seed = rng();
  FaultInjectingIo faults(fo);
  NvmeTierOptions o;
  o.dirs = {dir.sub("data0"), dir.sub("data1")};
  o.index_dir = dir.sub("index");
  o.page_bytes = kPageBytes;
  o.slots = kThreads * kSlotsPerThread;
  o.queue_depth = 16;
  o.fault_injector = &faults;
  std::atomic<uint64_t> log_lines{0};
  o.log = [&](absl::string_view) { ++log_lines; };
  std::vector<SlotModel> model(o.slots);
  const uint64_t ops_per_epoch = TotalOps() / kEpochs + 1;
  uint64_t total_ops = 0, total_reads = 0, total_reads_ok = 0, total_writes = 0,
           total_writes_ok = 0, wrong = 0, survived = 0, unknown_kept = 0, dropped_bytes = 0;
  InjectedFaults all;
  for (int epoch = 0; epoch <= kEpochs; ++epoch) {
    SCOPED_TRACE(absl::StrCat("epoch ", epoch));
    auto tier = NvmeTier::Create(o);
    ASSERT_TRUE(tier.ok()) << tier.status();
    // Recovery after the power cut, checked with the faults off.
    faults.set_active(false);
    std::vector<RecoveredPage> found;
    ASSERT_TRUE((*tier)->Recover([&](const RecoveredPage& p) { found.push_back(p); }).ok());
    std::vector<bool> recovered(o.slots, false);
    std::vector<std::byte> got(kPageBytes);
    for (const RecoveredPage& p : found) {
      SlotModel& m = model[p.slot];
      ASSERT_NE(m.state, SlotModel::kEmpty)
          << "slot " << p.slot << " holds page " << p.meta.key.ToHex() << " nobody wrote there";
      const MutableBuffer dst{got.data(), got.size()};
      absl::Status s;
      (*tier)->Read({SlotRead{p.slot, p.meta, absl::MakeConstSpan(&dst, 1)}},
                    absl::MakeSpan(&s, 1));
      uint64_t tag = 0;
      if (s.ok()) {
        const bool intact = CheckPattern(p.meta.key, got, &tag) == PatternVerdict::kIntact;
        wrong += !intact;
        EXPECT_TRUE(intact) << "slot " << p.slot << " served a wrong page after the power cut";
      }
      if (m.state == SlotModel::kHeld) {
        EXPECT_TRUE(s.ok() && p.meta.key == m.key && tag == m.tag)
            << "acknowledged page in slot " << p.slot << " did not survive the power cut: " << s;
        ++survived;
      } else if (s.ok()) {
        ++unknown_kept;
      }
      recovered[p.slot] = s.ok();
      m = SlotModel{s.ok() ? SlotModel::kHeld : SlotModel::kEmpty, p.meta.key, tag};
    }
    for (uint32_t s = 0; s < o.slots; ++s) {
      if (recovered[s]) continue;
      EXPECT_NE(model[s].state, SlotModel::kHeld)
          << "acknowledged page in slot " << s << " was not recovered";
      model[s].state = SlotModel::kEmpty;
    }
    if (epoch == kEpochs) break;

    // An epoch of load under faults, ending in a power cut at a random operation.
    metrics::Registry registry;
    BindNvmeMetrics(registry, **tier);
    faults.set_active(true);
    const uint64_t cut_at = ops_per_epoch + rng() % (ops_per_epoch / 2 + 1);
    std::atomic<bool> cut{false};
    Tally t;
    std::vector<std::thread> threads;
    for (uint32_t i = 0; i < kThreads; ++i) {
      threads.emplace_back(RunThread, std::ref(**tier), std::ref(faults), std::ref(model),
                           i * kSlotsPerThread, rng(), cut_at, std::ref(cut), std::ref(t));
    }
    for (std::thread& th : threads) th.join();
    const InjectedFaults f = faults.counts();
    const NvmeCounters c = (*tier)->counters();
    const std::string text = "\n" + registry.Serialize();
    EXPECT_EQ(t.wrong.load(), 0u);
    EXPECT_EQ(t.unexpected.load(), 0u);
    EXPECT_EQ(c.read_errors, f.reads());
    EXPECT_EQ(c.write_errors, f.writes() + f.syncs());
    EXPECT_EQ(c.enospc, f.write_enospc);
    EXPECT_EQ(c.checksum_mismatches, 0u);
    EXPECT_EQ(Sample(text, "kvtier_nvme_errors_total{kind=\"read\"}"), double(f.reads()));
    EXPECT_EQ(Sample(text, "kvtier_nvme_errors_total{kind=\"write\"}"),
              double(f.writes() + f.syncs()));
    EXPECT_EQ(Sample(text, "kvtier_nvme_errors_total{kind=\"no_space\"}"), double(f.write_enospc));
    // Serving throughout: the faults cost a few pages, not the tier.
    EXPECT_GT(t.reads_ok.load(), t.reads.load() / 2);
    EXPECT_GT(t.writes_ok.load(), t.writes.load() / 2);
    total_ops += t.ops;
    total_reads += t.reads;
    total_reads_ok += t.reads_ok;
    total_writes += t.writes;
    total_writes_ok += t.writes_ok;
    wrong += t.wrong;
    all.read_eio += f.read_eio;
    all.write_eio += f.write_eio;
    all.write_enospc += f.write_enospc;
    all.sync_eio += f.sync_eio;
    all.cut_reads += f.cut_reads;
    all.cut_writes += f.cut_writes;
    all.cut_syncs += f.cut_syncs;
    const std::vector<std::string> paths = {(*tier)->SlotFilePath(0), (*tier)->SlotFilePath(1)};
    tier->reset();
    dropped_bytes += faults.DropUnsyncedData(paths);
    if (HasFailure()) break;
  }
  std::printf(
      "fault-injection ops=%llu reads=%llu reads_ok=%llu writes=%llu writes_ok=%llu "
      "power_cuts=%d read_eio=%llu write_eio=%llu write_enospc=%llu sync_eio=%llu "
      "cut_failures=%llu unsynced_bytes_dropped=%llu acked_survived_cuts=%llu "
      "unacked_kept=%llu wrong=%llu\n",
      static_cast<unsigned long long>(total_ops), static_cast<unsigned long long>(total_reads),
      static_cast<unsigned long long>(total_reads_ok),
      static_cast<unsigned long long>(total_writes),
      static_cast<unsigned long long>(total_writes_ok), kEpochs,
      static_cast<unsigned long long>(all.read_eio), static_cast<unsigned long long>(all.write_eio),
      static_cast<unsigned long long>(all.write_enospc),
      static_cast<unsigned long long>(all.sync_eio),
      static_cast<unsigned long long>(all.cut_reads + all.cut_writes + all.cut_syncs),
      static_cast<unsigned long long>(dropped_bytes), static_cast<unsigned long long>(survived),
      static_cast<unsigned long long>(unknown_kept), static_cast<unsigned long long>(wrong));
  EXPECT_EQ(wrong, 0u);
  EXPECT_GE(total_ops, TotalOps());
  // The run exercised every fault it claims to.
  EXPECT_GT(all.read_eio, 0u);
  EXPECT_GT(all.write_eio, 0u);
  EXPECT_GT(all.write_enospc, 0u);
  EXPECT_GT(dropped_bytes, 0u);
}

}  // namespace
}  // namespace kvtier
