// kvtier-test-worker: a real worker process for the integration tests. It links the client
// library exactly as an inference worker would, with a vLLM per-layer layout (so every page is
// scattered over 2 x layers pieces) and pages whose bytes are a pure function of their key.
//
//   kvtier-test-worker store|load|hold SOCKET NAMESPACE SEED PAGES
// store: stores PAGES pages (first one hinted SINK, attention stats attached).
// load:  pins them, looks them up, loads them into other blocks and checks every byte. It asks
//        for the DRAM pool (as older workers did) and fails if the daemon shares it or names a
//        DRAM slot: pages reach a worker only by Load.
// hold:  stores, pins, submits loads without waiting, prints "ready", and sleeps until killed.
// probe: looks each page up on its own and loads and checks those found (after a restart, only
//        what the NVMe tier kept is there); prints "verified F of PAGES".
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "client/client.h"
#include "daemon/workload.h"

namespace {

using namespace kvtier;

constexpr uint32_t kBlocks = 64;

LayoutSpec TestLayout() {
  LayoutSpec s;
  s.layers = 4;
  s.kv_heads = 2;
  s.head_dim = 64;
  s.dtype = DType::kBF16;
  s.tokens_per_page = 16;
  s.tensor_layout = TensorLayout::kVllmPerLayer;
  s.num_blocks = kBlocks;
  return s;  // 32 KiB pages in 8 pieces
}

int Die(const char* what, const absl::Status& s) {
  std::fprintf(stderr, "kvtier-test-worker: %s: %s\n", what, s.ToString().c_str());
  return 1;
}

int Run(const std::string& mode, const std::string& socket, const std::string& ns, uint64_t seed,
        uint32_t pages) {
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(socket);
  if (!client.ok()) return Die("connect", client.status());
  Client& c = **client;
  const LayoutSpec spec = TestLayout();
  absl::StatusOr<Layout> layout = Layout::Create(spec);
  if (!layout.ok()) return Die("layout", layout.status());
  absl::StatusOr<HelloInfo> hello = c.Hello(ns, spec, /*want_dram_pool=*/mode == "load", mode);
  if (!hello.ok()) return Die("hello", hello.status());
  absl::StatusOr<WorkerBuffers> buffers = WorkerBuffers::Create(*layout);
  if (!buffers.ok()) return Die("buffers", buffers.status());
  if (absl::Status s = c.RegisterBuffers(buffers->fds(), buffers->sizes()); !s.ok()) {
    return Die("register", s);
  }
  std::mt19937_64 rng(seed);
  std::vector<int32_t> tokens(pages * spec.tokens_per_page);
  for (int32_t& t : tokens) t = static_cast<int32_t>(rng() % 128000);
  const std::vector<PageKey> keys = ChainKeys(hello->salt, tokens, spec.tokens_per_page);
  std::vector<std::byte> page(layout->page_bytes()), got(layout->page_bytes());
  std::vector<uint32_t> store_blocks(pages), load_blocks(pages);
  for (uint32_t i = 0; i < pages; ++i) {
    store_blocks[i] = (i * 7 + 3) % kBlocks;
    load_blocks[i] = (i * 5 + 1) % kBlocks;
  }
  // 0 when load block i holds page i (left in `page` for further checks), else the exit code.
  auto check_loaded = [&](uint32_t i) {
    FillPage(keys[i], absl::MakeSpan(page));
    if (absl::Status s = buffers->ReadBlock(*layout, load_blocks[i], absl::MakeSpan(got));
        !s.ok()) {
      return Die("read block", s);
    }
    if (std::memcmp(page.data(), got.data(), page.size()) != 0) {
      std::fprintf(stderr, "page %u differs after load\n", i);
      return 1;
    }
    return 0;
  };

  if (mode == "store" || mode == "hold") {
    for (uint32_t i = 0; i < pages; ++i) {
      FillPage(keys[i], absl::MakeSpan(page));
      if (absl::Status s = buffers->WriteBlock(*layout, store_blocks[i], page); !s.ok()) {
        return Die("write block", s);
      }
    }
    StoreHints hints;
    hints.class_hints.assign(pages, PageClass::kUnknown);
    hints.class_hints[0] = PageClass::kSink;
    AttentionBatch stats;
    for (uint32_t i = 0; i < pages; ++i) {
      stats.mass.push_back(i == 0 ? 0.6f : 0.01f);
      stats.breadth.push_back(i == 0 ? 0.95f : 0.1f);
      stats.value_norm.push_back(i == 0 ? 0.02f : 1.5f);
      stats.mass_entropy.push_back(i == 0 ? 0.1f : 0.9f);
    }
    absl::StatusOr<OpHandle> op = c.StoreAsync(keys, store_blocks, hints, &stats);
    if (!op.ok()) return Die("store submit", op.status());
    absl::StatusOr<PageResults> r = c.Wait(*op);
    if (!r.ok()) return Die("store wait", r.status());
    if (r->ok_pages != pages) return Die("store", absl::InternalError(r->first_error));
    if (mode == "store") {
      std::printf("stored %u\n", pages);
      return 0;
    }
    if (absl::Status s = c.Pin(keys); !s.ok()) return Die("pin", s);
    for (int i = 0; i < 8; ++i) {
      if (absl::StatusOr<OpHandle> l = c.LoadAsync(keys, load_blocks); !l.ok()) {
        return Die("load submit", l.status());
      }
    }
    std::printf("ready\n");
    std::fflush(stdout);
    while (true) ::pause();  // until SIGKILL: the daemon must clean up after us
  }

  if (mode == "probe") {
    uint32_t verified = 0;
    for (uint32_t i = 0; i < pages; ++i) {
      absl::StatusOr<LookupReply> one = c.Lookup(absl::MakeConstSpan(&keys[i], 1));
      if (!one.ok()) return Die("lookup", one.status());
      if (one->prefix_pages == 0) continue;
      absl::StatusOr<OpHandle> op =
          c.LoadAsync(absl::MakeConstSpan(&keys[i], 1), absl::MakeConstSpan(&load_blocks[i], 1));
      if (!op.ok()) return Die("load submit", op.status());
      absl::StatusOr<PageResults> r = c.Wait(*op);
      if (!r.ok()) return Die("load wait", r.status());
      if (r->ok_pages != 1) continue;  // dropped since the lookup: a miss, not an error
      if (int rc = check_loaded(i); rc != 0) return rc;
      ++verified;
    }
    std::printf("verified %u of %u\n", verified, pages);
    return 0;
  }

  // load
  if (absl::Status s = c.Pin(keys); !s.ok()) return Die("pin", s);
  absl::StatusOr<LookupReply> found = c.Lookup(keys, /*with_dram_slots=*/true);
  if (!found.ok()) return Die("lookup", found.status());
  if (found->prefix_pages != pages) {
    std::fprintf(stderr, "lookup found %zu of %u pages\n", found->prefix_pages, pages);
    return 1;
  }
  absl::StatusOr<OpHandle> op = c.LoadAsync(keys, load_blocks);
  if (!op.ok()) return Die("load submit", op.status());
  absl::StatusOr<PageResults> r = c.Wait(*op);
  if (!r.ok()) return Die("load wait", r.status());
  if (r->ok_pages != pages) return Die("load", absl::InternalError(r->first_error));
  for (uint32_t i = 0; i < pages; ++i) {
    if (int rc = check_loaded(i); rc != 0) return rc;
    if (found->dram_slots[i] != LookupReply::kNoSlot || !c.DramSlot(0).empty()) {
      std::fprintf(stderr, "the daemon shared its DRAM pool (page %u, slot %u)\n", i,
                   found->dram_slots[i]);
      return 1;
    }
  }
  absl::StatusOr<uint32_t> released = c.Release();
  if (!released.ok()) return Die("release", released.status());
  std::printf("verified %u pages (DRAM pool not shared), released %u pins\n", pages, *released);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  uint64_t seed = 0;
  uint32_t pages = 0;
  if (argc != 6 || !absl::SimpleAtoi(argv[4], &seed) || !absl::SimpleAtoi(argv[5], &pages) ||
      pages == 0 || pages > kBlocks) {
    std::fprintf(stderr,
                 "usage: kvtier-test-worker store|load|hold|probe SOCKET NS SEED PAGES(<=64)\n");
    return 2;
  }
  return Run(argv[1], argv[2], argv[3], seed, pages);
}
