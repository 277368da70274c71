#include "daemon/workload.h"

#include <cmath>
#include <cstring>
#include <random>

#include "absl/strings/str_cat.h"

namespace kvtier {

void FillPage(const PageKey& key, absl::Span<std::byte> out) {
  // splitmix64 stream seeded by the key: cheap, and never all zeros.
  uint64_t x = key.hi ^ (key.lo * 0x9e3779b97f4a7c15ULL);
  size_t i = 0;
  for (; i + 8 <= out.size(); i += 8) {
    x += 0x9e3779b97f4a7c15ULL;
    uint64_t z = x;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    z ^= z >> 31;
    std::memcpy(out.data() + i, &z, 8);
  }
  for (; i < out.size(); ++i) out[i] = static_cast<std::byte>(x >> (8 * (i % 8)));
}

std::vector<MooncakeRequest> GenerateWorkload(const GeneratedWorkloadOptions& o) {
  std::mt19937_64 rng(o.seed);
  std::vector<double> weights(o.documents);
  for (uint32_t d = 0; d < o.documents; ++d) weights[d] = 1.0 / std::pow(d + 1.0, o.zipf_s);
  std::discrete_distribution<uint32_t> pick_doc(weights.begin(), weights.end());
  std::uniform_int_distribution<uint32_t> prefix_len(o.blocks_per_document / 2,
                                                     o.blocks_per_document);
  std::vector<MooncakeRequest> requests;
  requests.reserve(o.requests);
  uint64_t next_private_id = uint64_t{o.documents} * o.blocks_per_document;
  for (uint32_t r = 0; r < o.requests; ++r) {
    MooncakeRequest req;
    req.timestamp_ms = r * 10ULL;
    const uint32_t doc = pick_doc(rng);
    const uint32_t len = std::max(1u, prefix_len(rng));
    for (uint32_t b = 0; b < len; ++b) {
      req.hash_ids.push_back(uint64_t{doc} * o.blocks_per_document + b);
    }
    for (uint32_t b = 0; b < o.private_blocks; ++b) req.hash_ids.push_back(next_private_id++);
    req.input_length = static_cast<uint32_t>(req.hash_ids.size() * 512);
    req.output_length = 16;
    requests.push_back(std::move(req));
  }
  return requests;
}

absl::StatusOr<ReplayStats> ReplayPrefixWorkload(TieredStore& store, NamespaceId ns,
                                                 const std::vector<MooncakeRequest>& requests,
                                                 uint32_t maintain_every) {
  absl::StatusOr<PageKey> salt = store.NamespaceSaltOf(ns);
  if (!salt.ok()) return salt.status();
  const size_t page_bytes = store.page_bytes();
  std::vector<std::byte> expected(page_bytes), actual(page_bytes);
  std::vector<PageKey> keys;
  ReplayStats stats;
  for (const MooncakeRequest& req : requests) {
    keys.clear();
    PageKey parent;
    for (uint64_t id : req.hash_ids) {
      parent = ChainKeyFromId(*salt, parent, id);
      keys.push_back(parent);
    }
    const LookupResult hit = store.LookupPrefix(ns, keys);
    size_t served = 0;
    for (; served < hit.prefix_pages; ++served) {
      const MutableBuffer dst{actual.data(), page_bytes};
      absl::StatusOr<Tier> got = store.Get(ns, keys[served], absl::MakeConstSpan(&dst, 1));
      if (!got.ok()) break;  // moved or dropped since the lookup: recompute from here
      FillPage(keys[served], absl::MakeSpan(expected));
      if (std::memcmp(expected.data(), actual.data(), page_bytes) != 0) ++stats.mismatches;
      stats.verified_bytes += page_bytes;
    }
    for (size_t i = served; i < keys.size(); ++i) {
      FillPage(keys[i], absl::MakeSpan(expected));
      const ConstBuffer src{expected.data(), page_bytes};
      PutOptions put;
      put.parent = i == 0 ? PageKey{} : keys[i - 1];
      put.position = static_cast<uint32_t>(i);
      absl::StatusOr<Tier> stored = store.Put(ns, keys[i], absl::MakeConstSpan(&src, 1), put);
      if (!stored.ok()) {
        return absl::Status(stored.status().code(), absl::StrCat("request ", stats.requests, ": ",
                                                                 stored.status().message()));
      }
      ++stats.stored_blocks;
    }
    stats.blocks += keys.size();
    stats.hit_blocks += served;
    ++stats.requests;
    if (maintain_every > 0 && stats.requests % maintain_every == 0) store.Maintain();
  }
  return stats;
}

}  // namespace kvtier
