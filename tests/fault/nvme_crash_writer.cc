// nvme_crash_writer: a real process that writes pages to an NVMe tier in a loop until it is killed
// (tests/fault/nvme_fault_test.cc kills it with SIGKILL at random moments).
//
// It prints one line per event on stdout, unbuffered, *after* the event is certain:
//   "A <slot> <key.hi> <key.lo>"  the tier acknowledged the page (Write returned OK)
//   "R <slot>"                    about to release the slot (its page may vanish from here on)
// Page bytes are nvme_test::FillPage(key), so the verifier needs nothing but these lines.
//
// With --batches N it stops after N batches and prints "S <enospc> <rejected_full>" (counters).
// --fsize-limit B sets RLIMIT_FSIZE (a full disk for hosts where a small tmpfs cannot be
// mounted; SIGXFSZ is ignored so the limit surfaces as EFBIG).
//
//   nvme_crash_writer --dir D --seed S [--page-bytes N] [--slots N] [--batches N]
//                     [--fsize-limit B]
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "tests/fault/crash_writer_options.h"
#include "tests/unit/nvme/nvme_test_util.h"
#include "tiering/nvme/nvme_tier.h"

namespace {

void Emit(const std::string& s) {
  // One write(2) per batch of lines: a SIGKILL can cut the process between lines, never inside
  // the kernel's copy of one short write to a pipe.
  size_t off = 0;
  while (off < s.size()) {
    const ssize_t n = write(STDOUT_FILENO, s.data() + off, s.size() - off);
    if (n <= 0) std::_Exit(3);
    off += static_cast<size_t>(n);
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::string dir;
  uint64_t seed = 1, page_bytes = kvtier::testing::kCrashWriterPageBytes, batches = 0;
  uint32_t slots = kvtier::testing::kCrashWriterSlots;
  uint64_t fsize_limit = 0;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string f = argv[i];
    bool ok = true;
    if (f == "--dir") {
      dir = argv[i + 1];
    } else if (f == "--seed") {
      ok = absl::SimpleAtoi(argv[i + 1], &seed);
    } else if (f == "--page-bytes") {
      ok = absl::SimpleAtoi(argv[i + 1], &page_bytes);
    } else if (f == "--slots") {
      ok = absl::SimpleAtoi(argv[i + 1], &slots);
    } else if (f == "--batches") {
      ok = absl::SimpleAtoi(argv[i + 1], &batches);
    } else if (f == "--fsize-limit") {
      ok = absl::SimpleAtoi(argv[i + 1], &fsize_limit);
    } else {
      ok = false;
    }
    if (!ok) {
      std::fprintf(stderr, "bad flag %s\n", f.c_str());
      return 2;
    }
  }
  if (fsize_limit > 0) {
    signal(SIGXFSZ, SIG_IGN);
    const rlimit lim{fsize_limit, fsize_limit};
    if (setrlimit(RLIMIT_FSIZE, &lim) != 0) return 1;
  }
  const kvtier::NvmeTierOptions o = kvtier::testing::CrashWriterOptions(dir, page_bytes, slots);
  auto tier = kvtier::NvmeTier::Create(o);
  if (!tier.ok()) {
    std::fprintf(stderr, "writer: %s\n", tier.status().ToString().c_str());
    return 1;
  }
  std::vector<kvtier::PageKey> held(slots);
  std::vector<bool> occupied(slots, false);
  if (absl::Status s = (*tier)->Recover([&](const kvtier::RecoveredPage& p) {
        held[p.slot] = p.meta.key;
        occupied[p.slot] = true;
      });
      !s.ok()) {
    return 1;
  }
  // Half the batches come from a registered, aligned arena (the zero-copy path), half from
  // ordinary heap vectors in pieces (the staging-copy path).
  constexpr uint32_t kMaxBatch = 6;
  const uint64_t span = (page_bytes + 4095) / 4096 * 4096;
  auto* arena = static_cast<std::byte*>(std::aligned_alloc(4096, span * kMaxBatch));
  (void)(*tier)->RegisterHostMemory({kvtier::MutableBuffer{arena, span * kMaxBatch}});
  std::vector<std::vector<std::byte>> heap(kMaxBatch, std::vector<std::byte>(page_bytes));
  std::mt19937_64 rng(seed);
  for (uint64_t b = 0; batches == 0 || b < batches; ++b) {
    const uint32_t n = 1 + static_cast<uint32_t>(rng() % kMaxBatch);
    const bool registered = rng() % 2 == 0;
    std::vector<uint32_t> chosen;
    while (chosen.size() < n) {
      const auto s = static_cast<uint32_t>(rng() % slots);
      if (std::find(chosen.begin(), chosen.end(), s) == chosen.end()) chosen.push_back(s);
    }
    std::string released;
    for (uint32_t s : chosen) {
      if (occupied[s]) released += absl::StrCat("R ", s, "\n");
    }
    Emit(released);
    std::vector<std::vector<kvtier::ConstBuffer>> pieces(n);
    std::vector<kvtier::SlotWrite> writes;
    for (uint32_t i = 0; i < n; ++i) {
      const uint32_t s = chosen[i];
      if (occupied[s]) (*tier)->Release(s);
      occupied[s] = false;
      held[s] = kvtier::nvme_test::RandomKey(rng);
      std::byte* mem = registered ? arena + i * span : heap[i].data();
      kvtier::nvme_test::FillPage(held[s], mem, page_bytes);
      if (registered) {
        pieces[i].push_back({mem, page_bytes});
      } else {
        const size_t cut = 1 + rng() % (page_bytes - 1);
        pieces[i].push_back({mem, cut});
        pieces[i].push_back({mem + cut, page_bytes - cut});
      }
      writes.push_back(kvtier::SlotWrite{
          s, kvtier::PageMeta{held[s], 0, kvtier::PageClass::kSemantic, page_bytes, {3, 4}},
          pieces[i]});
    }
    std::vector<absl::Status> results(n);
    (*tier)->Write(writes, absl::MakeSpan(results));
    std::string acks;
    for (uint32_t i = 0; i < n; ++i) {
      if (!results[i].ok()) continue;
      occupied[chosen[i]] = true;
      acks += absl::StrCat("A ", chosen[i], " ", held[chosen[i]].hi, " ", held[chosen[i]].lo, "\n");
    }
    Emit(acks);
  }
  std::free(arena);
  const kvtier::NvmeCounters c = (*tier)->counters();
  Emit(absl::StrCat("S ", c.enospc, " ", c.rejected_full, "\n"));
  return 0;
}
