#include "daemon/client_workload.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "client/client.h"

namespace kvtier {
namespace {

// Llama-style per-layer vLLM layout sized to the daemon's page: 4 layers x K,V of 16 tokens x
// 2 heads x head_dim, so every page is 8 scattered pieces in the worker's buffers.
absl::StatusOr<LayoutSpec> DemoLayout(uint64_t page_bytes, uint32_t blocks) {
  LayoutSpec s;
  s.layers = 4;
  s.kv_heads = 2;
  s.tokens_per_page = 16;
  s.dtype = DType::kBF16;
  s.tensor_layout = TensorLayout::kVllmPerLayer;
  s.num_blocks = blocks;
  const uint64_t per_dim = 2ull * s.layers * s.kv_heads * s.tokens_per_page * 2;
  if (page_bytes % per_dim != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("the daemon's page of ", page_bytes, " bytes is not a multiple of ", per_dim));
  }
  s.head_dim = static_cast<uint32_t>(page_bytes / per_dim);
  return s;
}

}  // namespace

absl::StatusOr<ReplayStats> ReplayThroughDaemon(const ClientReplayOptions& o,
                                                const std::vector<MooncakeRequest>& requests) {
  size_t max_blocks = 1;
  for (const MooncakeRequest& r : requests) max_blocks = std::max(max_blocks, r.hash_ids.size());
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(o.socket_path);
  if (!client.ok()) return client.status();
  Client& c = **client;
  absl::StatusOr<wire::StatusReply> status = c.Status();
  if (!status.ok()) return status.status();
  absl::StatusOr<LayoutSpec> spec =
      DemoLayout(status->page_bytes(), static_cast<uint32_t>(max_blocks));
  if (!spec.ok()) return spec.status();
  absl::StatusOr<Layout> layout = Layout::Create(*spec);
  if (!layout.ok()) return layout.status();
  absl::StatusOr<HelloInfo> hello =
      c.Hello(o.namespace_name, *spec, false, absl::StrCat("demo-worker-", o.worker_index));
  if (!hello.ok()) return hello.status();
  absl::StatusOr<WorkerBuffers> buffers = WorkerBuffers::Create(*layout);
  if (!buffers.ok()) return buffers.status();
  if (absl::Status s = c.RegisterBuffers(buffers->fds(), buffers->sizes()); !s.ok()) return s;

  const size_t page_bytes = layout->page_bytes();
  std::vector<std::byte> expected(page_bytes), actual(page_bytes);
  std::vector<PageKey> keys;
  std::vector<uint32_t> blocks;
  ReplayStats stats;
  for (size_t r = o.worker_index; r < requests.size(); r += o.workers) {
    const MooncakeRequest& req = requests[r];
    keys.clear();
    PageKey parent;
    for (uint64_t id : req.hash_ids) {
      parent = ChainKeyFromId(hello->salt, parent, id);
      keys.push_back(parent);
    }
    absl::StatusOr<LookupReply> hit = c.Lookup(keys);
    if (!hit.ok()) return hit.status();
    size_t served = hit->prefix_pages;
    // Pin the prefix so the planner cannot drop it between lookup and load; a page evicted since
    // the lookup fails the pin, and the worker recomputes from there.
    if (served > 0 && !c.Pin(absl::MakeConstSpan(keys).subspan(0, served)).ok()) served = 0;
    if (served > 0) {
      blocks.resize(served);
      for (uint32_t b = 0; b < served; ++b) blocks[b] = b;
      absl::StatusOr<OpHandle> op =
          c.LoadAsync(absl::MakeConstSpan(keys).subspan(0, served), blocks);
      if (!op.ok()) return op.status();
      absl::StatusOr<PageResults> loaded = c.Wait(*op);
      if (!loaded.ok()) return loaded.status();
      size_t ok_prefix = 0;
      while (ok_prefix < served && loaded->codes[ok_prefix] == absl::StatusCode::kOk) ++ok_prefix;
      for (size_t i = 0; i < ok_prefix; ++i) {
        FillPage(keys[i], absl::MakeSpan(expected));
        if (absl::Status s =
                buffers->ReadBlock(*layout, static_cast<uint32_t>(i), absl::MakeSpan(actual));
            !s.ok()) {
          return s;
        }
        if (std::memcmp(expected.data(), actual.data(), page_bytes) != 0) ++stats.mismatches;
        stats.verified_bytes += page_bytes;
      }
      if (absl::StatusOr<uint32_t> rel = c.Release(); !rel.ok()) return rel.status();
      served = ok_prefix;
    }
    // The rest is "computed" (filled from its key) and stored, hinted and with attention stats.
    if (served < keys.size()) {
      blocks.clear();
      StoreHints hints;
      hints.parent = served > 0 ? keys[served - 1] : PageKey{};
      hints.first_position = static_cast<uint32_t>(served);
      for (size_t i = served; i < keys.size(); ++i) {
        FillPage(keys[i], absl::MakeSpan(expected));
        const uint32_t block = static_cast<uint32_t>(i);
        if (absl::Status s = buffers->WriteBlock(*layout, block, expected); !s.ok()) return s;
        blocks.push_back(block);
        hints.class_hints.push_back(i == 0 ? PageClass::kSink : PageClass::kUnknown);
      }
      absl::StatusOr<OpHandle> op =
          c.StoreAsync(absl::MakeConstSpan(keys).subspan(served), blocks, hints);
      if (!op.ok()) return op.status();
      absl::StatusOr<PageResults> stored = c.Wait(*op);
      if (!stored.ok()) return stored.status();
      stats.stored_blocks += stored->ok_pages;
    }
    stats.requests++;
    stats.blocks += keys.size();
    stats.hit_blocks += served;
  }
  return stats;
}

}  // namespace kvtier
