#include "tiering/sim/simulator.h"

#include <chrono>
#include <memory>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "tiering/clock.h"
#include "tiering/copy_engine.h"
#include "tiering/memory_region.h"
#include "tiering/memory_tier.h"
#include "tiering/page_key.h"
#include "tiering/policy/planner.h"
#include "tiering/tiered_store.h"

namespace kvtier {
namespace {

constexpr char kNamespace[] = "kvtier-sim";

// One policy's store and what must outlive it (members destroy in reverse order: store first).
struct SimStore {
  ManualClock clock;
  std::unique_ptr<CpuCopyEngine> nvme_engine;
  std::unique_ptr<TieredStore> store;
  std::optional<Planner> planner;  // absent: no bandwidth cap, Maintain with the page cap only
  NamespaceId ns = 0;
  MaintainOptions maintain;

  void Plan() {
    if (planner.has_value()) {
      planner->RunOnce();
    } else {
      store->Maintain(maintain);
    }
  }
};

uint32_t Slots(double fraction, uint64_t distinct) {
  if (!(fraction > 0)) return 0;
  return static_cast<uint32_t>(std::max<double>(1.0, std::floor(fraction * distinct)));
}

absl::Status CheckOptions(const SimOptions& o) {
  for (double f : {o.hbm_fraction, o.dram_fraction, o.nvme_fraction}) {
    if (!(f >= 0 && f <= 10)) {
      return absl::InvalidArgumentError(absl::StrCat("tier fraction ", f, " not in [0, 10]"));
    }
  }
  if (!(o.hbm_fraction > 0)) return absl::InvalidArgumentError("--hbm-fraction must be > 0");
  if (o.policies.empty()) return absl::InvalidArgumentError("no policies to simulate");
  if (o.sim_page_bytes == 0 || o.block_tokens == 0) {
    return absl::InvalidArgumentError("page bytes and block tokens must be > 0");
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<SimStore>> BuildStore(const SimOptions& o, const std::string& policy,
                                                     uint64_t distinct, uint32_t tokens_per_page,
                                                     uint32_t sink_tokens, double half_life_ms,
                                                     uint32_t sink_slots, SimResult& r,
                                                     const NextUseOracle* oracle = nullptr) {
  auto s = std::make_unique<SimStore>();
  PolicyConfig config = o.policy;
  config.oracle = oracle;
  config.kvtier.frequency_half_life_ms = half_life_ms;
  config.streaming.tokens_per_page = tokens_per_page;
  config.h2o.ewma_alpha = o.attention_ewma_alpha;
  config.kvtier.hbm_gbps = o.cost.hbm_gbps;
  config.kvtier.dram_gbps = o.cost.dram_gbps;
  config.kvtier.nvme_gbps = o.cost.nvme_gbps;
  config.kvtier.prefill_tokens_per_s = o.cost.prefill_tokens_per_s;
  config.kvtier.bytes_per_token = o.cost.bytes_per_token;
  absl::StatusOr<std::unique_ptr<PlacementPolicy>> p = MakePolicy(policy, config);
  if (!p.ok()) return p.status();
  StoreOptions so;
  so.page_bytes = o.sim_page_bytes;
  r.hbm_slots = Slots(o.hbm_fraction, distinct);
  r.dram_slots = Slots(o.dram_fraction, distinct);
  r.nvme_slots = Slots(o.nvme_fraction, distinct);
  // Inline eviction on Put is free in a simulation, so keep no headroom: demote only when full,
  // and let the planner fill every free slot.
  so.hbm = TierOptions{.slots = r.hbm_slots, .high_watermark = 1.0, .low_watermark = 1.0};
  so.dram = TierOptions{.slots = r.dram_slots, .high_watermark = 1.0, .low_watermark = 1.0};
  so.hbm_backend = HbmBackend::kHostEmulated;
  so.pin_dram = false;
  so.sink_tokens = sink_tokens;
  so.tokens_per_page = tokens_per_page;
  so.frequency_half_life_ms = half_life_ms;
  so.attention_ewma_alpha = o.attention_ewma_alpha;
  so.clock = &s->clock;
  StoreParts parts;
  parts.policy = *std::move(p);
  if (r.nvme_slots > 0) {
    s->nvme_engine = std::make_unique<CpuCopyEngine>(1);
    absl::StatusOr<std::unique_ptr<MemoryRegion>> region = CreateMemfdRegion(
        "nvme-standin", uint64_t{o.sim_page_bytes} * r.nvme_slots, /*pin_for_cuda=*/false);
    if (!region.ok()) return region.status();
    absl::StatusOr<std::unique_ptr<MemoryTier>> tier = MemoryTier::Create(
        Tier::kNvme, *std::move(region), r.nvme_slots, o.sim_page_bytes, s->nvme_engine.get());
    if (!tier.ok()) return tier.status();
    parts.nvme = *std::move(tier);
  }
  absl::StatusOr<std::unique_ptr<TieredStore>> store = TieredStore::Create(so, std::move(parts));
  if (!store.ok()) return store.status();
  s->store = *std::move(store);
  absl::StatusOr<NamespaceId> ns =
      s->store->AddNamespace(kNamespace, std::min(sink_slots, r.hbm_slots - 1));
  if (!ns.ok()) return ns.status();
  s->ns = *ns;
  s->maintain =
      MaintainOptions{.max_migration_bytes = uint64_t{o.max_migration_pages} * o.sim_page_bytes,
                      .promote = true,
                      .displace = true};
  if (o.migration_gbps > 0) {
    // The planner's budget is in the store's bytes; the simulation's pages stand for pages of
    // tokens_per_page x bytes_per_token modeled bytes.
    const double scale = o.sim_page_bytes / (tokens_per_page * o.cost.bytes_per_token);
    absl::StatusOr<Planner> planner = Planner::Create(
        s->store.get(), &s->clock,
        PlannerOptions{
            .max_migration_bytes_per_s = o.migration_gbps * 1e9 * scale,
            .burst_bytes = uint64_t{std::max(o.max_migration_pages, 1u)} * o.sim_page_bytes});
    if (!planner.ok()) return planner.status();
    s->planner.emplace(*std::move(planner));
  }
  r.policy = policy;
  r.distinct_pages = distinct;
  return s;
}

// Prices migrations and loads once a run is over.
void Finish(const SimOptions& o, const TieredStore& store, uint32_t tokens_per_page, SimResult& r) {
  const CostModel& c = o.cost;
  const StoreCounters counters = store.Counters();
  const double page_model_bytes = tokens_per_page * c.bytes_per_token;
  for (int from = 0; from < kNumTiers; ++from) {
    for (int to = 0; to < kNumTiers; ++to) {
      // A new page written straight into a lower tier crosses the same link as a demotion from
      // HBM would: priced as one (it used to be free, which favoured the policies whose new pages
      // land below HBM, S3-FIFO and W-TinyLFU above all).
      const uint64_t put = from == TierIndex(Tier::kHbm) ? r.pages_put_below[to] : 0;
      const uint64_t pages = counters.migrations[from][to] + put;
      if (pages == 0) continue;
      r.pages_migrated += pages;
      r.pages_moved[from][to] = counters.migrations[from][to];
      const double bytes = static_cast<double>(pages) * page_model_bytes;
      r.bytes_migrated += static_cast<uint64_t>(bytes);
      // A move touching NVMe runs at the drive's speed, anything else over PCIe.
      const bool nvme = from == TierIndex(Tier::kNvme) || to == TierIndex(Tier::kNvme);
      r.migration_seconds += bytes / ((nvme ? c.nvme_gbps : c.dram_gbps) * 1e9);
    }
  }
  r.load_seconds = r.hit_tokens_hbm * c.bytes_per_token / (c.hbm_gbps * 1e9) +
                   r.hit_tokens_dram * c.bytes_per_token / (c.dram_gbps * 1e9) +
                   r.hit_tokens_nvme * c.bytes_per_token / (c.nvme_gbps * 1e9);
  r.recompute_seconds = r.miss_tokens / c.prefill_tokens_per_s;
  r.modeled_prefill_seconds = r.load_seconds + r.recompute_seconds + r.migration_seconds;
  r.sink_overflows = counters.sink_overflows;
  const double hits = static_cast<double>(r.hit_tokens_hbm + r.hit_tokens_dram + r.hit_tokens_nvme);
  const double asked = hits + static_cast<double>(r.miss_tokens);
  r.hit_share = asked > 0 ? hits / asked : 0;
  r.hbm_hit_share = asked > 0 ? static_cast<double>(r.hit_tokens_hbm) / asked : 0;
}

void CountHit(Tier t, uint64_t tokens, SimResult& r) {
  switch (t) {
    case Tier::kHbm:
      r.hit_tokens_hbm += tokens;
      break;
    case Tier::kDram:
      r.hit_tokens_dram += tokens;
      break;
    case Tier::kNvme:
      r.hit_tokens_nvme += tokens;
      break;
  }
}

double Seconds(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

absl::StatusOr<std::vector<SimResult>> SimulatePrefixTrace(
    const std::vector<MooncakeRequest>& requests, const SimOptions& o) {
  if (absl::Status s = CheckOptions(o); !s.ok()) return s;
  // Chained keys once for every policy: equal leading ids are equal prefixes.
  const PageKey salt = NamespaceSalt(kNamespace);
  std::vector<std::vector<PageKey>> keys(requests.size());
  absl::flat_hash_set<PageKey> distinct;
  for (size_t i = 0; i < requests.size(); ++i) {
    PageKey parent;
    for (uint64_t id : requests[i].hash_ids) {
      parent = ChainKeyFromId(salt, parent, id);
      keys[i].push_back(parent);
      distinct.insert(parent);
    }
  }
  std::vector<std::byte> page(o.sim_page_bytes);
  std::vector<SimResult> results;
  for (const std::string& policy : o.policies) {
    const auto start = std::chrono::steady_clock::now();
    SimResult r;
    r.format = "mooncake";
    // The future, for Belady: use number i is request i, under the keys the store's policy sees.
    NextUseOracle oracle;
    absl::StatusOr<std::unique_ptr<SimStore>> built =
        BuildStore(o, policy, distinct.size(), o.block_tokens, /*sink_tokens=*/0,
                   o.frequency_half_life_ms, /*sink_slots=*/0, r, &oracle);
    if (!built.ok()) return built.status();
    SimStore& s = **built;
    TieredStore& store = *s.store;
    for (size_t i = 0; i < keys.size(); ++i) {
      for (const PageKey& k : keys[i]) oracle.Add(store.IndexKeyOf(s.ns, k), i);
    }
    for (size_t i = 0; i < requests.size(); ++i) {
      const MooncakeRequest& req = requests[i];
      const std::vector<PageKey>& k = keys[i];
      oracle.SetNow(i);
      s.clock.SetNs(std::max<uint64_t>(1, req.timestamp_ms * 1'000'000));
      auto tokens_of = [&](size_t b) -> uint64_t {
        const uint64_t begin = uint64_t{b} * o.block_tokens;
        if (req.input_length <= begin) return 1;  // ids beyond the input: count a token
        return std::min<uint64_t>(o.block_tokens, req.input_length - begin);
      };
      const LookupResult hit = store.LookupPrefix(s.ns, k);
      const auto prefix = absl::MakeConstSpan(k.data(), hit.prefix_pages);
      const bool pinned = !prefix.empty() && store.Pin(s.ns, prefix).ok();
      size_t served = 0;
      for (; served < hit.prefix_pages; ++served) {
        const MutableBuffer dst{page.data(), page.size()};
        absl::StatusOr<Tier> got = store.Get(s.ns, k[served], absl::MakeConstSpan(&dst, 1));
        if (!got.ok()) break;
        CountHit(*got, tokens_of(served), r);
      }
      for (size_t b = served; b < k.size(); ++b) {
        r.miss_tokens += tokens_of(b);
        std::fill(page.begin(), page.end(), static_cast<std::byte>(k[b].lo));
        const ConstBuffer src{page.data(), page.size()};
        PutOptions put;
        put.parent = b == 0 ? PageKey{} : k[b - 1];
        put.position = static_cast<uint32_t>(b);
        put.tokens = static_cast<uint32_t>(tokens_of(b));
        absl::StatusOr<Tier> stored = store.Put(s.ns, k[b], absl::MakeConstSpan(&src, 1), put);
        if (stored.ok() && *stored != Tier::kHbm) ++r.pages_put_below[TierIndex(*stored)];
        if (!stored.ok() && !absl::IsResourceExhausted(stored.status())) {
          return absl::Status(stored.status().code(), absl::StrCat(policy, ": request ", i, ": ",
                                                                   stored.status().message()));
        }
      }
      if (pinned) {
        if (absl::Status u = store.Unpin(s.ns, prefix); !u.ok()) return u;
      }
      s.Plan();
    }
    Finish(o, store, o.block_tokens, r);
    r.wall_seconds = Seconds(start);
    results.push_back(std::move(r));
  }
  return results;
}

absl::StatusOr<std::vector<SimResult>> SimulateAttentionTrace(const AttentionTrace& trace,
                                                              const SimOptions& o) {
  if (absl::Status s = CheckOptions(o); !s.ok()) return s;
  const uint32_t pages = trace.page_count();
  if (pages == 0) return absl::InvalidArgumentError("attention trace appends no pages");
  for (const std::string& p : o.policies) {
    if (p == "belady") {
      return absl::InvalidArgumentError("belady is measured on prefix (mooncake) traces only");
    }
  }
  const PageKey salt = NamespaceSalt(kNamespace);
  std::vector<PageKey> keys(pages);
  for (uint32_t i = 0; i < pages; ++i) {
    keys[i] = ChainKeyFromId(salt, i == 0 ? PageKey{} : keys[i - 1], i);
  }
  SinkClassifierOptions classifier_options = o.classifier;
  classifier_options.tokens_per_page = trace.tokens_per_page;
  const SinkClassifier classifier(classifier_options);
  std::vector<std::byte> page(o.sim_page_bytes);
  std::vector<SimResult> results;
  for (const std::string& policy : o.policies) {
    const auto start = std::chrono::steady_clock::now();
    SimResult r;
    r.format = "attention";
    const bool is_kvtier = policy == "kvtier";
    absl::StatusOr<std::unique_ptr<SimStore>> built =
        BuildStore(o, policy, pages, trace.tokens_per_page, classifier_options.sink_tokens,
                   o.attention_half_life_ms, is_kvtier ? o.sink_slots : 0, r);
    if (!built.ok()) return built.status();
    SimStore& s = **built;
    TieredStore& store = *s.store;
    auto put = [&](uint32_t id) -> absl::Status {
      std::fill(page.begin(), page.end(), static_cast<std::byte>(keys[id].lo));
      const ConstBuffer src{page.data(), page.size()};
      PutOptions po;
      po.parent = id == 0 ? PageKey{} : keys[id - 1];
      po.position = id;
      absl::StatusOr<Tier> stored = store.Put(s.ns, keys[id], absl::MakeConstSpan(&src, 1), po);
      if (!stored.ok()) return stored.status();
      if (*stored != Tier::kHbm) ++r.pages_put_below[TierIndex(*stored)];
      return absl::OkStatus();
    };
    double mass_total = 0, mass_hbm = 0, out_total = 0, out_hbm = 0;
    uint64_t sink_checks = 0, sink_in_hbm = 0;
    uint32_t alive = 0;
    for (const AttentionStep& step : trace.steps) {
      s.clock.SetNs(1 + static_cast<uint64_t>(step.step * o.step_ms * 1e6));
      for (uint32_t id : step.append) {
        if (absl::Status st = put(id); !st.ok()) return st;
        ++alive;
      }
      // Recall on the placement this step finds.
      for (size_t i = 0; i < step.pages.size(); ++i) {
        std::optional<PageEntry> e = store.Find(s.ns, keys[step.pages[i]]);
        const bool in_hbm = e.has_value() && e->tier == Tier::kHbm;
        const double m = step.mass[i];
        const double out = m * step.value_norm[i];
        mass_total += m;
        out_total += out;
        if (in_hbm) {
          mass_hbm += m;
          out_hbm += out;
        }
      }
      if (trace.sinks_known) {
        for (uint32_t sink : trace.sink_pages) {
          if (sink >= alive) continue;
          std::optional<PageEntry> e = store.Find(s.ns, keys[sink]);
          ++sink_checks;
          sink_in_hbm += e.has_value() && e->tier == Tier::kHbm;
        }
      }
      // Reads: pages above the uniform share are the ones this step needs.
      const double threshold = 1.0 / std::max<uint32_t>(alive, 1);
      for (size_t i = 0; i < step.pages.size(); ++i) {
        if (step.mass[i] < threshold) continue;
        const PageKey& key = keys[step.pages[i]];
        const MutableBuffer dst{page.data(), page.size()};
        absl::StatusOr<Tier> got = store.Get(s.ns, key, absl::MakeConstSpan(&dst, 1));
        if (got.ok()) {
          CountHit(*got, trace.tokens_per_page, r);
        } else {
          r.miss_tokens += trace.tokens_per_page;  // dropped: recompute and store again
          if (absl::Status st = put(step.pages[i]); !st.ok()) return st;
        }
      }
      for (size_t i = 0; i < step.pages.size(); ++i) {
        const PageKey& key = keys[step.pages[i]];
        const AttentionSample sample{step.mass[i], step.breadth[i], step.value_norm[i],
                                     step.entropy[i]};
        if (!store.ReportAttention(s.ns, key, sample).ok()) continue;  // dropped page
        if (is_kvtier) (void)ClassifyAfterReport(store, s.ns, key, classifier);
      }
      s.Plan();
    }
    Finish(o, store, trace.tokens_per_page, r);
    r.attention_recall = mass_total > 0 ? mass_hbm / mass_total : 0;
    r.output_recall = out_total > 0 ? out_hbm / out_total : 0;
    r.sink_residency = sink_checks > 0 ? static_cast<double>(sink_in_hbm) / sink_checks : -1.0;
    r.wall_seconds = Seconds(start);
    results.push_back(std::move(r));
  }
  return results;
}

std::string SimResultJson(const SimResult& r) {
  nlohmann::ordered_json j;
  j["policy"] = r.policy;
  j["format"] = r.format;
  j["distinct_pages"] = r.distinct_pages;
  j["hbm_slots"] = r.hbm_slots;
  j["dram_slots"] = r.dram_slots;
  j["nvme_slots"] = r.nvme_slots;
  j["hit_tokens_hbm"] = r.hit_tokens_hbm;
  j["hit_tokens_dram"] = r.hit_tokens_dram;
  j["hit_tokens_nvme"] = r.hit_tokens_nvme;
  j["miss_tokens"] = r.miss_tokens;
  j["pages_migrated"] = r.pages_migrated;
  j["bytes_migrated"] = r.bytes_migrated;
  j["pages_moved"] = r.pages_moved;
  j["pages_put_below"] = r.pages_put_below;
  j["load_seconds"] = r.load_seconds;
  j["recompute_seconds"] = r.recompute_seconds;
  j["migration_seconds"] = r.migration_seconds;
  j["modeled_prefill_seconds"] = r.modeled_prefill_seconds;
  j["hit_share"] = r.hit_share;
  j["hbm_hit_share"] = r.hbm_hit_share;
  if (r.format == "attention") {
    j["attention_recall"] = r.attention_recall;
    j["output_recall"] = r.output_recall;
    j["sink_residency"] = r.sink_residency;
    j["sink_overflows"] = r.sink_overflows;
  }
  j["wall_seconds"] = r.wall_seconds;
  return j.dump();
}

}  // namespace kvtier
