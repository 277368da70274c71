// kvtier-gpu-worker: a GPU inference worker for the two-process GPU test (tests/gpu/run_gpu_test).
// It keeps Llama-3-8B-shaped KV blocks in its own GPU memory, registers them with kvtierd by CUDA
// IPC handle (or VMM fd with --vmm) and:
//   store  fills blocks [0, pages) with pages [0, pages) of sequence --seed and stores them;
//   load   loads pages [0, pages) into blocks (i + shift) % num_blocks, waits on the daemon's
//          event on its own stream, and checks every word (exit 0 only if all match and every
//          page came from --expect_tier when given);
//   loop   loads and checks --iterations times, printing "ready" after the first (for kill -9).
// Prints one "gpu_worker ..." line per result.
#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "bench/gpu/gpu_worker_lib.h"
#include "client/client.h"
#include "tiering/page_key.h"

ABSL_FLAG(std::string, socket, "", "kvtierd socket");
ABSL_FLAG(std::string, mode, "load", "store, load, loop or prefix");
ABSL_FLAG(uint32_t, cached_prefix, 0,
          "prefix mode: page at this index is replaced by one never stored (0: pages / 2)");
ABSL_FLAG(uint32_t, pages, 256, "pages of the sequence");
ABSL_FLAG(uint32_t, blocks, 0, "blocks per layer tensor (0: pages + 64)");
ABSL_FLAG(uint64_t, seed, 1, "sequence seed (tokens and bytes)");
ABSL_FLAG(uint32_t, shift, 0, "load page i into block (i + shift) % blocks");
ABSL_FLAG(bool, vmm, false, "register a CUDA VMM allocation by fd instead of an IPC handle");
ABSL_FLAG(bool, enqueued, true, "ask for the reply when the copies are enqueued");
ABSL_FLAG(std::string, expect_tier, "",
          "hbm, dram or nvme (or a comma list): every loaded page must come from one of them, and "
          "some from the first");
ABSL_FLAG(uint32_t, iterations, 20, "loop mode: loads");
ABSL_FLAG(uint32_t, batch, 1024, "pages per request");

namespace kvtier::gpuw {
namespace {

int Fail(const std::string& what, const absl::Status& s) {
  std::printf("gpu_worker FAIL %s: %s\n", what.c_str(), s.ToString().c_str());
  std::fflush(stdout);
  return 1;
}

int Main() {
  const std::string mode = absl::GetFlag(FLAGS_mode);
  const uint32_t pages = absl::GetFlag(FLAGS_pages);
  const uint32_t blocks =
      absl::GetFlag(FLAGS_blocks) != 0 ? absl::GetFlag(FLAGS_blocks) : pages + 64;
  const uint64_t seed = absl::GetFlag(FLAGS_seed);
  const uint32_t shift = mode == "store" ? 0 : absl::GetFlag(FLAGS_shift);
  const uint32_t batch = absl::GetFlag(FLAGS_batch);
  absl::StatusOr<Layout> layout = Layout::Create(Llama3_8B(blocks));
  if (!layout.ok()) return Fail("layout", layout.status());
  absl::StatusOr<std::unique_ptr<WorkerCache>> cache =
      WorkerCache::Create(*layout, absl::GetFlag(FLAGS_vmm));
  if (!cache.ok()) return Fail("alloc", cache.status());
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(absl::GetFlag(FLAGS_socket));
  if (!client.ok()) return Fail("connect", client.status());
  absl::StatusOr<HelloInfo> hello =
      (*client)->Hello("llama3-8b/gpu-test", layout->spec(), false, "kvtier-gpu-worker");
  if (!hello.ok()) return Fail("hello", hello.status());
  if (absl::Status s = (*client)->RegisterGpuBuffers((*cache)->uuid(), (*cache)->Handles());
      !s.ok()) {
    return Fail("register", s);
  }
  const std::vector<PageKey> keys = SequenceKeys(hello->salt, seed, pages);
  if (mode == "store") {
    if (absl::Status s = (*cache)->Fill(seed, 0, pages); !s.ok()) return Fail("fill", s);
    absl::StatusOr<std::vector<Tier>> stored = StoreSequence(**client, keys, batch);
    if (!stored.ok()) return Fail("store", stored.status());
    std::string tiers;
    for (Tier t : *stored) tiers.push_back(TierName(t)[0]);
    std::printf("gpu_worker stored pages=%u tiers_first=%c tiers_last=%c\n", pages, tiers.front(),
                tiers.back());
    return 0;
  }
  if (mode == "prefix") {
    // One prefix_only Load of the sequence with page k swapped for a page never stored: pages
    // [0, k) land bit-identical, k and every page after it come back NOT_FOUND.
    const uint32_t k = absl::GetFlag(FLAGS_cached_prefix) != 0
                           ? std::min(absl::GetFlag(FLAGS_cached_prefix), pages - 1)
                           : pages / 2;
    std::vector<PageKey> asked = keys;
    asked[k] = PageKey{seed ^ 0x5eedf00d, ~seed};
    std::vector<uint32_t> ids(pages);
    for (uint32_t i = 0; i < pages; ++i) ids[i] = (i + shift) % blocks;
    if (absl::Status s = (*cache)->Clear(); !s.ok()) return Fail("clear", s);
    absl::StatusOr<OpHandle> op = (*client)->LoadGpuAsync(asked, ids, true, /*prefix_only=*/true);
    if (!op.ok()) return Fail("prefix load", op.status());
    absl::StatusOr<GpuPageResults> r = (*client)->WaitGpu(*op);
    if (!r.ok()) return Fail("prefix load wait", r.status());
    if (absl::Status s = (*cache)->WaitOn(r->cuda_event_handle); !s.ok()) return Fail("event", s);
    uint32_t not_found_after = 0;
    for (size_t i = k; i < r->pages.codes.size(); ++i) {
      not_found_after += r->pages.codes[i] == absl::StatusCode::kNotFound;
    }
    absl::StatusOr<uint64_t> bad = (*cache)->Verify(seed, k, shift);
    if (!bad.ok()) return Fail("verify", bad.status());
    std::printf(
        "gpu_worker prefix pages=%u cached_prefix=%u ok=%u not_found_from_prefix=%u "
        "mismatched_words=%llu\n",
        pages, k, r->pages.ok_pages, not_found_after, static_cast<unsigned long long>(*bad));
    return r->pages.ok_pages == k && not_found_after == pages - k && *bad == 0 ? 0 : 1;
  }
  const uint32_t iterations = mode == "loop" ? absl::GetFlag(FLAGS_iterations) : 1;
  const std::string expect = absl::GetFlag(FLAGS_expect_tier);
  for (uint32_t it = 0; it < iterations; ++it) {
    if (absl::Status s = (*cache)->Clear(); !s.ok()) return Fail("clear", s);
    const double t0 = NowSeconds();
    absl::StatusOr<LookupReply> found = (*client)->Lookup(keys);
    if (!found.ok()) return Fail("lookup", found.status());
    if (found->prefix_pages != pages) {
      return Fail("lookup", absl::NotFoundError(absl::StrCat("prefix of ", found->prefix_pages,
                                                             " pages cached, want ", pages)));
    }
    std::vector<uint32_t> ids(pages);
    for (uint32_t i = 0; i < pages; ++i) ids[i] = (i + shift) % blocks;
    std::vector<OpHandle> ops;
    for (uint32_t at = 0; at < pages; at += batch) {
      const uint32_t n = std::min(batch, pages - at);
      absl::StatusOr<OpHandle> op = (*client)->LoadGpuAsync(
          absl::MakeConstSpan(keys).subspan(at, n), absl::MakeConstSpan(ids).subspan(at, n),
          absl::GetFlag(FLAGS_enqueued));
      if (!op.ok()) return Fail("load", op.status());
      ops.push_back(*op);
    }
    uint32_t ok = 0;
    std::string tier_mismatch;
    bool saw_first = expect.empty();
    for (OpHandle op : ops) {
      absl::StatusOr<GpuPageResults> r = (*client)->WaitGpu(op);
      if (!r.ok()) return Fail("load wait", r.status());
      ok += r->pages.ok_pages;
      if (!r->pages.first_error.empty()) tier_mismatch = r->pages.first_error;
      for (Tier t : r->pages.tiers) {
        const std::string name(TierName(t));
        if (!expect.empty() &&
            !absl::StrContains(absl::StrCat(",", expect, ","), absl::StrCat(",", name, ","))) {
          tier_mismatch = name;
        }
        if (expect.rfind(name, 0) == 0) saw_first = true;
      }
      // The worker's stream waits for the daemon's copies on the GPU, not on the CPU.
      if (absl::Status s = (*cache)->WaitOn(r->cuda_event_handle); !s.ok()) return Fail("event", s);
    }
    if (!saw_first) tier_mismatch = absl::StrCat("no page from ", expect);
    absl::StatusOr<uint64_t> bad = (*cache)->Verify(seed, pages, shift);
    const double t1 = NowSeconds();
    if (!bad.ok()) return Fail("verify", bad.status());
    std::printf("gpu_worker loaded iteration=%u pages=%u ok=%u mismatched_words=%llu ms=%.2f%s%s\n",
                it, pages, ok, static_cast<unsigned long long>(*bad), (t1 - t0) * 1e3,
                tier_mismatch.empty() ? "" : " unexpected=", tier_mismatch.c_str());
    if (ok != pages || *bad != 0 || !tier_mismatch.empty()) return 1;
    if (it == 0 && mode == "loop") std::printf("ready\n");
    std::fflush(stdout);
  }
  return 0;
}

}  // namespace
}  // namespace kvtier::gpuw

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return kvtier::gpuw::Main();
}
