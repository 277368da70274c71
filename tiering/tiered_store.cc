#include "tiering/tiered_store.h"

#include <algorithm>
#include <cmath>
#include <thread>

#include "absl/strings/str_cat.h"
#include "base/invariant.h"
#include "tiering/memory_tier.h"
// Static-linking-only API: the hash state lives on the stack.
#define XXH_STATIC_LINKING_ONLY
#include <xxhash.h>

#include "tiering/ranked_policy.h"

namespace kvtier {

namespace {

// Every pin taken is given back exactly once; a release without a pin would wrap the count and
// leave the page pinned for ever (uint32), so it is an invariant, not an arithmetic step.
void ReleasePin(PageEntry& x) {
  if (KVTIER_INVARIANT(x.pin_count > 0, "a page's pin released more often than it was taken")) {
    --x.pin_count;
  }
}

}  // namespace

// Lock-free counters: bumped on data paths without the store lock.
struct TieredStore::Counters_ {
  std::array<std::atomic<uint64_t>, kNumTiers> hits{};
  std::atomic<uint64_t> misses{0};
  std::atomic<uint64_t> puts{0};
  std::atomic<uint64_t> put_duplicates{0};
  std::array<std::array<std::atomic<uint64_t>, kNumPageClasses>, kNumTiers> evictions{};
  std::array<std::array<std::atomic<uint64_t>, kNumTiers>, kNumTiers> migrations{};
  std::array<std::array<std::atomic<uint64_t>, kNumTiers>, kNumTiers> migrated_bytes{};
  std::atomic<uint64_t> sink_overflows{0};
  std::atomic<uint64_t> sink_replacements{0};
  std::array<std::atomic<uint64_t>, kNumTiers> io_errors{};
};

namespace {

void Bump(std::atomic<uint64_t>& c, uint64_t n = 1) { c.fetch_add(n, std::memory_order_relaxed); }

absl::Status CheckWatermarks(absl::string_view tier, const TierOptions& t) {
  if (!(t.low_watermark > 0 && t.low_watermark <= t.high_watermark && t.high_watermark <= 1)) {
    return absl::InvalidArgumentError(absl::StrCat(tier, " watermarks must satisfy 0 < low (",
                                                   t.low_watermark, ") <= high (", t.high_watermark,
                                                   ") <= 1"));
  }
  return absl::OkStatus();
}

// The index key of a client key: XXH3-128 over (namespace salt, key), seeded with the store's
// secret. The salt puts the namespace into the key, so the same client key in two namespaces names
// two pages; the secret seed keeps a client from searching for a key of its own that lands on
// another namespace's index key (it cannot compute any index key).
PageKey MixIndexKey(uint64_t secret, const PageKey& salt, const PageKey& key) {
  const uint64_t words[4] = {salt.hi, salt.lo, key.hi, key.lo};
  const XXH128_hash_t h = XXH3_128bits_withSeed(words, sizeof(words), secret);
  PageKey out{h.high64, h.low64};
  if (out.is_null()) out.lo = 1;  // the null key means "no parent"
  return out;
}

// A page's scattered side must add up to exactly one page; `what` names it in the error.
template <typename Buffer>
absl::Status CheckPageBytes(absl::Span<const Buffer> bufs, uint64_t page_bytes,
                            absl::string_view what) {
  uint64_t total = 0;
  for (const Buffer& b : bufs) total += b.size;
  if (total == page_bytes) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(what, " of ", total, " bytes, expected ", page_bytes));
}

absl::Status NotFound(const PageKey& key) {
  return absl::NotFoundError(absl::StrCat("page ", key.ToHex(), " is not cached"));
}

}  // namespace

TieredStore::TieredStore(const StoreOptions& options, StoreParts parts)
    : options_(options),
      clock_(options.clock != nullptr ? options.clock : SteadyClock::Get()),
      copy_engine_(std::move(parts.copy_engine)),
      hbm_engines_(std::move(parts.hbm_engines)),
      policy_(std::move(parts.policy)),
      policy_name_(policy_->name()),
      counters_(std::make_unique<Counters_>()) {
  backends_[TierIndex(Tier::kHbm)] = std::move(parts.hbm);
  backends_[TierIndex(Tier::kDram)] = std::move(parts.dram);
  backends_[TierIndex(Tier::kNvme)] = std::move(parts.nvme);
}

TieredStore::~TieredStore() = default;

absl::StatusOr<std::unique_ptr<TieredStore>> TieredStore::Create(const StoreOptions& options,
                                                                 StoreParts parts) {
  if (options.page_bytes == 0) return absl::InvalidArgumentError("page_bytes must be > 0");
  if (options.tokens_per_page == 0) {
    return absl::InvalidArgumentError("tokens_per_page must be > 0");
  }
  if (!(options.frequency_half_life_ms > 0)) {
    return absl::InvalidArgumentError("frequency_half_life_ms must be > 0");
  }
  if (!(options.attention_ewma_alpha > 0 && options.attention_ewma_alpha <= 1)) {
    return absl::InvalidArgumentError("attention_ewma_alpha must be in (0, 1]");
  }
  if (absl::Status s = CheckWatermarks("hbm", options.hbm); !s.ok()) return s;
  if (absl::Status s = CheckWatermarks("dram", options.dram); !s.ok()) return s;
  if (parts.policy == nullptr) parts.policy = std::make_unique<LruPolicy>();
  if (parts.copy_engine == nullptr) parts.copy_engine = std::make_unique<CpuCopyEngine>(1);
  std::unique_ptr<TieredStore> store(new TieredStore(options, std::move(parts)));
  if (absl::Status s = store->Init(); !s.ok()) return s;
  return store;
}

absl::Status TieredStore::Init() {
  const uint64_t bytes = options_.page_bytes;
  auto& hbm = backends_[TierIndex(Tier::kHbm)];
  if (hbm == nullptr && options_.hbm.slots > 0) {
    HbmBackend choice = options_.hbm_backend;
    if (choice == HbmBackend::kAuto) {
      choice = CudaDeviceAvailable() && copy_engine_->CanAccess(MemoryKind::kDevice)
                   ? HbmBackend::kCuda
                   : HbmBackend::kHostEmulated;
    }
    const std::vector<int> devices = options_.hbm_devices.empty()
                                         ? std::vector<int>{options_.cuda_device}
                                         : options_.hbm_devices;
    if (devices.size() > options_.hbm.slots) {
      return absl::InvalidArgumentError(absl::StrCat(options_.hbm.slots, " HBM slots cannot make ",
                                                     devices.size(), " pools of at least one"));
    }
    std::vector<MemoryPool> pools;
    for (size_t p = 0; p < devices.size(); ++p) {
      MemoryPool pool;
      pool.slots = static_cast<uint32_t>(options_.hbm.slots / devices.size() +
                                         (p < options_.hbm.slots % devices.size() ? 1 : 0));
      pool.device = devices[p];
      absl::StatusOr<std::unique_ptr<MemoryRegion>> region =
          choice == HbmBackend::kCuda ? CreateCudaDeviceRegion(bytes * pool.slots, pool.device)
                                      : CreateHostEmulatedDeviceRegion(bytes * pool.slots);
      if (!region.ok()) return region.status();
      pool.region = *std::move(region);
      auto engine = hbm_engines_.find(pool.device);
      pool.engine = engine != hbm_engines_.end() && engine->second != nullptr ? engine->second.get()
                                                                              : copy_engine_.get();
      pools.push_back(std::move(pool));
    }
    absl::StatusOr<std::unique_ptr<MemoryTier>> tier =
        MemoryTier::Create(Tier::kHbm, std::move(pools), bytes);
    if (!tier.ok()) return tier.status();
    hbm = *std::move(tier);
  }
  auto& dram = backends_[TierIndex(Tier::kDram)];
  if (dram == nullptr && options_.dram.slots > 0) {
    absl::StatusOr<std::unique_ptr<MemoryRegion>> region =
        CreateMemfdRegion("dram-pool", bytes * options_.dram.slots, options_.pin_dram);
    if (!region.ok()) return region.status();
    absl::StatusOr<std::unique_ptr<MemoryTier>> tier = MemoryTier::Create(
        Tier::kDram, *std::move(region), options_.dram.slots, bytes, copy_engine_.get());
    if (!tier.ok()) return tier.status();
    dram = *std::move(tier);
  }
  absl::MutexLock lock(&mu_);
  bool any = false;
  for (Tier t : kAllTiers) {
    const auto& backend = backends_[TierIndex(t)];
    if (backend == nullptr) continue;
    if (backend->tier() != t) {
      return absl::InvalidArgumentError(absl::StrCat("backend '", backend->name(), "' serves ",
                                                     TierName(backend->tier()), ", not ",
                                                     TierName(t)));
    }
    if (backend->slot_bytes() < bytes) {
      return absl::InvalidArgumentError(absl::StrCat(TierName(t), " slots of ",
                                                     backend->slot_bytes(),
                                                     " bytes are smaller than a page of ", bytes));
    }
    if (backend->slot_count() == 0) {
      return absl::InvalidArgumentError(absl::StrCat(TierName(t), " tier has no slots"));
    }
    std::vector<uint32_t> pool_sizes;
    uint64_t covered = 0;
    for (const TierPool& pool : backend->pools()) {
      if (pool.first_slot != covered || pool.slots == 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            TierName(t), " tier's pools do not cover its slots in order (a pool at slot ",
            pool.first_slot, " of ", pool.slots, " slots after ", covered, ")"));
      }
      covered += pool.slots;
      pool_sizes.push_back(pool.slots);
    }
    if (covered != backend->slot_count()) {
      return absl::InvalidArgumentError(absl::StrCat(TierName(t), " tier's pools hold ", covered,
                                                     " slots, not its ", backend->slot_count()));
    }
    slots_[TierIndex(t)].emplace(absl::MakeConstSpan(pool_sizes));
    if (t == Tier::kHbm) hbm_pools_ = backend->pools();
    any = true;
  }
  if (!any) return absl::InvalidArgumentError("the store needs at least one tier with slots");
  hbm_backend_name_ = hbm != nullptr ? std::string(hbm->name()) : "none";
  bounce_.resize(bytes);
  // Host-addressable pools are offered to every backend once, so one that moves pages by DMA
  // (NVMe over io_uring) can register them and skip a copy; a refusal only costs that copy.
  std::vector<MutableBuffer> host_pools;
  for (Tier t : kAllTiers) {
    const auto& b = backends_[TierIndex(t)];
    if (b != nullptr && b->HostSlot(0) != nullptr) {
      host_pools.push_back(
          MutableBuffer{b->HostSlot(0), uint64_t{b->slot_count()} * b->slot_bytes()});
    }
  }
  for (Tier t : kAllTiers) {
    auto& backend = backends_[TierIndex(t)];
    if (backend != nullptr && !host_pools.empty()) (void)backend->RegisterHostMemory(host_pools);
  }
  // A persistent tier brings back what it held before a restart.
  for (Tier t : kAllTiers) {
    auto& backend = backends_[TierIndex(t)];
    if (backend == nullptr) continue;
    absl::Status s = backend->Recover([this](const RecoveredPage& page)
                                          ABSL_NO_THREAD_SAFETY_ANALYSIS { AdoptRecovered(page); });
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

void TieredStore::AdoptRecovered(const RecoveredPage& page) {
  // Recovered pages belong to the tier that reported them; namespaces are re-registered by
  // clients, and a page's namespace id is only trusted once its salt-chained key is asked for.
  const Tier t = Tier::kNvme;
  auto& slots = slots_[TierIndex(t)];
  if (!slots.has_value() || page.meta.bytes != options_.page_bytes || !slots->Claim(page.slot)) {
    backends_[TierIndex(t)]->Release(page.slot);
    return;
  }
  PageEntry e;
  e.ns = page.meta.ns;
  if (!page.meta.ns_salt.is_null()) {
    // Bind the page to a placeholder namespace for its salt; AddNamespace claims it by name.
    auto [it, inserted] = recovered_namespaces_.try_emplace(
        page.meta.ns_salt, static_cast<NamespaceId>(namespaces_.size()));
    if (inserted) {
      namespaces_.push_back(NamespaceState{"", page.meta.ns_salt, 0, 0, {}, 0, false});
      absl::MutexLock salts(&salts_mu_);
      salts_.push_back(page.meta.ns_salt);
    }
    e.ns = it->second;
  }
  e.slot = page.slot;
  e.tier = t;
  e.cls = page.meta.cls;
  e.state = PageState::kReady;
  e.stats.insert_ns = e.stats.last_access_ns = Now();
  e.stats.frequency = page.meta.frequency;
  e.stats.access_count = page.meta.access_count;
  e.stats.tokens = options_.tokens_per_page;
  if (!index_.Insert(page.meta.key, e)) {
    KVTIER_INVARIANT(slots->Free(page.slot), "a recovered page's slot freed twice");
    backends_[TierIndex(t)]->Release(page.slot);
    return;
  }
  ++pages_by_class_[TierIndex(t)][static_cast<int>(e.cls)];
  policy_->OnInsert(page.meta.key, e);
  ++recovered_pages_;
}

absl::StatusOr<NamespaceId> TieredStore::AddNamespace(const std::string& name,
                                                      uint32_t sink_slots) {
  if (name.empty()) return absl::InvalidArgumentError("namespace name is empty");
  absl::MutexLock lock(&mu_);
  // The reserve is granted as far as HBM allows, never refused: namespaces that took every
  // reservable slot must not lock the next tenant out (its sinks then compete as ordinary pages,
  // counted as sink overflows). Slots ordinary pages occupy can be reserved; the planner demotes
  // them as the reserve fills.
  const auto& hbm = slots_[TierIndex(Tier::kHbm)];
  const uint32_t reservable = hbm.has_value() ? hbm->capacity() - total_sink_reserved_ : 0;
  if (auto it = namespace_ids_.find(name); it != namespace_ids_.end()) {
    NamespaceState& n = namespaces_[it->second];
    if (n.sink_requested != sink_slots) {
      return absl::AlreadyExistsError(absl::StrCat("namespace '", name, "' exists with ",
                                                   n.sink_requested, " sink slots, not ",
                                                   sink_slots));
    }
    if (n.retired) {
      // Back in use: its reserve is made again (sinks still pinned in slots kept theirs).
      n.retired = false;
      const uint32_t want = std::max(sink_slots, n.sink_reserved);
      const uint32_t extra = std::min(want - n.sink_reserved, reservable);
      n.sink_reserved += extra;
      total_sink_reserved_ += extra;
    }
    return it->second;
  }
  const uint32_t granted = std::min(sink_slots, reservable);
  const PageKey salt = NamespaceSalt(name);
  NamespaceId id = static_cast<NamespaceId>(namespaces_.size());
  if (auto it = recovered_namespaces_.find(salt); it != recovered_namespaces_.end()) {
    // Pages recovered from a persistent tier were waiting for this name: they keep their id.
    id = it->second;
    recovered_namespaces_.erase(it);
    namespaces_[id].name = name;
    namespaces_[id].sink_reserved = granted;
    namespaces_[id].sink_requested = sink_slots;
  } else {
    namespaces_.push_back(NamespaceState{name, salt, granted, 0, {}, sink_slots, false});
    absl::MutexLock salts(&salts_mu_);
    salts_.push_back(salt);
  }
  namespace_ids_.emplace(name, id);
  total_sink_reserved_ += granted;
  return id;
}

void TieredStore::RetireNamespace(NamespaceId ns) {
  absl::MutexLock lock(&mu_);
  if (ns >= namespaces_.size() || namespaces_[ns].retired) return;
  NamespaceState& n = namespaces_[ns];
  n.retired = true;
  // The unused part of the reserve goes back now; each slot a sink still holds goes back as the
  // sink leaves it (ReleaseSlot), at once here unless the page is pinned or being read.
  total_sink_reserved_ -= n.sink_reserved - n.sink_used;
  n.sink_reserved = n.sink_used;
  const std::vector<PageKey> sinks = n.sinks_in_slots;  // MoveLocked edits the list
  for (const PageKey& key : sinks) LeaveRetiredReserveLocked(key);
}

void TieredStore::LeaveRetiredReserveLocked(const PageKey& key) {
  std::optional<PageEntry> e = index_.Find(key);
  if (!e.has_value() || !e->in_sink_slot || e->pin_count > 0 || e->state != PageState::kReady ||
      e->ns >= namespaces_.size() || !namespaces_[e->ns].retired) {
    return;
  }
  // The page stays cached as an ordinary page, placed like any other: HBM if it has room, else a
  // tier down, else it leaves the cache.
  absl::Status moved = MoveLocked(key, Tier::kHbm, /*into_sink_slot=*/false, 0);
  if (!moved.ok()) {
    if (const std::optional<Tier> below = Below(Tier::kHbm); below.has_value()) {
      moved = MoveLocked(key, *below, false, 1);
    }
  }
  if (!moved.ok()) {
    if (std::optional<PageEntry> left = index_.Find(key); left.has_value() && left->in_sink_slot) {
      DropLocked(key, *left);
    }
  }
}

PageKey TieredStore::IndexKey(NamespaceId ns, const PageKey& key) const {
  if (key.is_null()) return key;
  PageKey salt;  // an unknown namespace mixes with the null salt and finds nothing of its own
  {
    absl::ReaderMutexLock lock(&salts_mu_);
    if (ns < salts_.size()) salt = salts_[ns];
  }
  return MixIndexKey(options_.index_key_secret, salt, key);
}

void TieredStore::IndexKeys(NamespaceId ns, absl::Span<const PageKey> keys,
                            std::vector<PageKey>& out) const {
  PageKey salt;
  {
    absl::ReaderMutexLock lock(&salts_mu_);
    if (ns < salts_.size()) salt = salts_[ns];
  }
  out.resize(keys.size());
  for (size_t i = 0; i < keys.size(); ++i) {
    out[i] = keys[i].is_null() ? keys[i] : MixIndexKey(options_.index_key_secret, salt, keys[i]);
  }
}

absl::StatusOr<PageKey> TieredStore::NamespaceSaltOf(NamespaceId ns) const {
  absl::MutexLock lock(&mu_);
  if (ns >= namespaces_.size()) {
    return absl::NotFoundError(absl::StrCat("unknown namespace id ", ns));
  }
  return namespaces_[ns].salt;
}

uint32_t TieredStore::SemanticCapacity(Tier t) const {
  const auto& s = slots_[TierIndex(t)];
  if (!s.has_value()) return 0;
  return s->capacity() - (t == Tier::kHbm ? total_sink_reserved_ : 0);
}

uint32_t TieredStore::SemanticUsed(Tier t) const {
  const auto& s = slots_[TierIndex(t)];
  if (!s.has_value()) return 0;
  return s->used() - (t == Tier::kHbm ? total_sink_used_ : 0);
}

std::optional<Tier> TieredStore::Below(Tier t) const {
  for (int i = TierIndex(t) + 1; i < kNumTiers; ++i) {
    if (backends_[i] != nullptr) return static_cast<Tier>(i);
  }
  return std::nullopt;
}

std::optional<Tier> TieredStore::Above(Tier t) const {
  for (int i = TierIndex(t) - 1; i >= 0; --i) {
    if (backends_[i] != nullptr) return static_cast<Tier>(i);
  }
  return std::nullopt;
}

bool TieredStore::Evictable(const PageKey& key) const {
  std::optional<PageEntry> e = index_.Find(key);
  return e.has_value() && e->pin_count == 0 && e->state == PageState::kReady && !e->in_sink_slot;
}

uint32_t TieredStore::HbmPoolOn(std::optional<int> device) const {
  const auto& slots = slots_[TierIndex(Tier::kHbm)];
  uint32_t best = SlotAllocator::kAnyPool;
  if (!device.has_value() || !slots.has_value()) return best;
  for (uint32_t p = 0; p < hbm_pools_.size(); ++p) {
    if (hbm_pools_[p].device != *device) continue;
    if (best == SlotAllocator::kAnyPool || slots->pool_free(p) > slots->pool_free(best)) best = p;
  }
  return best;
}

std::optional<uint32_t> TieredStore::AcquireSemanticSlot(Tier t, int depth, uint32_t hbm_pool) {
  auto& slots = slots_[TierIndex(t)];
  if (!slots.has_value()) return std::nullopt;
  const uint32_t pool = t == Tier::kHbm ? hbm_pool : SlotAllocator::kAnyPool;
  if (SemanticUsed(t) < SemanticCapacity(t)) return slots->Allocate(pool);
  if (depth > kNumTiers) return std::nullopt;
  std::vector<PageKey> victims;
  policy_->LeastValuable(
      t, 1, [this](const PageKey& k) { return Evictable(k); }, victims);
  if (victims.empty()) return std::nullopt;
  const PageKey victim = victims.front();
  const std::optional<Tier> below = Below(t);
  bool moved = false;
  if (below.has_value()) {
    std::optional<PageEntry> v = index_.Find(victim);
    if (v.has_value() && policy_->Admits(*below, *v)) {
      moved = MoveLocked(victim, *below, false, depth + 1).ok();
    }
  }
  if (!moved) {
    // Bottom tier, or nothing below can take it: the page leaves the cache.
    if (std::optional<PageEntry> e = index_.Find(victim); e.has_value() && e->tier == t) {
      DropLocked(victim, *e);
    }
  }
  // The victim's slot may be in another pool than the one asked for: the page goes there (a
  // worker on another GPU reads it by peer access or through DRAM).
  if (SemanticUsed(t) < SemanticCapacity(t)) return slots->Allocate(pool);
  return std::nullopt;
}

std::optional<uint32_t> TieredStore::AcquireSinkSlot(NamespaceId ns, uint32_t hbm_pool) {
  NamespaceState& n = namespaces_[ns];
  if (n.sink_reserved == 0 || n.retired) return std::nullopt;
  if (n.sink_used == n.sink_reserved) {
    // Replace the least recently used unpinned sink of this namespace: it leaves the reserve and
    // goes on as an ordinary page one tier down (or is dropped if there is none).
    std::optional<PageKey> lru;
    uint64_t lru_ns = UINT64_MAX;
    for (const PageKey& k : n.sinks_in_slots) {
      std::optional<PageEntry> e = index_.Find(k);
      if (e.has_value() && e->pin_count == 0 && e->state == PageState::kReady &&
          e->stats.last_access_ns < lru_ns) {
        lru = k;
        lru_ns = e->stats.last_access_ns;
      }
    }
    if (!lru.has_value()) return std::nullopt;
    std::optional<Tier> below = Below(Tier::kHbm);
    bool moved = below.has_value() && MoveLocked(*lru, *below, false, 1).ok();
    if (!moved) {
      if (std::optional<PageEntry> e = index_.Find(*lru); e.has_value()) DropLocked(*lru, *e);
    }
    Bump(counters_->sink_replacements);
    if (n.sink_used == n.sink_reserved) return std::nullopt;
  }
  std::optional<uint32_t> slot = slots_[TierIndex(Tier::kHbm)]->Allocate(hbm_pool);
  if (slot.has_value()) {
    ++n.sink_used;
    ++total_sink_used_;
  }
  return slot;
}

void TieredStore::ReleaseSlot(Tier t, uint32_t slot, bool sink_slot, NamespaceId ns) {
  backends_[TierIndex(t)]->Release(slot);
  KVTIER_INVARIANT(slots_[TierIndex(t)]->Free(slot), "a slot freed twice or never allocated");
  if (sink_slot && KVTIER_INVARIANT(namespaces_[ns].sink_used > 0 && total_sink_used_ > 0,
                                    "a sink slot released that was not counted as used")) {
    --namespaces_[ns].sink_used;
    --total_sink_used_;
    if (namespaces_[ns].retired) {  // a retired namespace's reserve shrinks with its last sinks
      --namespaces_[ns].sink_reserved;
      --total_sink_reserved_;
    }
  }
}

absl::Status TieredStore::CopyBetween(TierBackend& from, uint32_t from_slot, TierBackend& to,
                                      uint32_t to_slot, const PageMeta& meta) {
  absl::Status result;
  if (const std::byte* src = from.HostSlot(from_slot); src != nullptr) {
    const ConstBuffer buf{src, meta.bytes};
    to.Write({SlotWrite{to_slot, meta, absl::MakeConstSpan(&buf, 1)}}, absl::MakeSpan(&result, 1));
  } else if (std::byte* dst = to.HostSlot(to_slot); dst != nullptr) {
    const MutableBuffer buf{dst, meta.bytes};
    from.Read({SlotRead{from_slot, meta, absl::MakeConstSpan(&buf, 1)}},
              absl::MakeSpan(&result, 1));
  } else {
    const MutableBuffer in{bounce_.data(), meta.bytes};
    from.Read({SlotRead{from_slot, meta, absl::MakeConstSpan(&in, 1)}}, absl::MakeSpan(&result, 1));
    if (result.ok()) {
      const ConstBuffer out{bounce_.data(), meta.bytes};
      to.Write({SlotWrite{to_slot, meta, absl::MakeConstSpan(&out, 1)}},
               absl::MakeSpan(&result, 1));
    }
  }
  return result;
}

absl::Status TieredStore::MoveLocked(const PageKey& key, Tier to, bool into_sink_slot, int depth) {
  absl::StatusOr<std::optional<PendingMove>> begun =
      BeginMoveLocked(key, to, into_sink_slot, depth);
  if (!begun.ok()) return begun.status();
  if (!begun->has_value()) return absl::OkStatus();  // already there
  const PendingMove& m = **begun;
  return EndMoveLocked(m, CopyBetween(*backends_[TierIndex(m.from.tier)], m.from.slot,
                                      *backends_[TierIndex(to)], m.slot, m.meta));
}

absl::StatusOr<std::optional<TieredStore::PendingMove>> TieredStore::BeginMoveLocked(
    const PageKey& key, Tier to, bool into_sink_slot, int depth) {
  std::optional<PageEntry> found = index_.Find(key);
  if (!found.has_value()) return NotFound(key);
  const PageEntry e = *found;
  if (e.tier == to && e.in_sink_slot == into_sink_slot) return std::nullopt;
  if (e.pin_count > 0 || e.state != PageState::kReady) {
    return absl::FailedPreconditionError(absl::StrCat("page ", key.ToHex(), " is pinned"));
  }
  if (backends_[TierIndex(to)] == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat("no ", TierName(to), " tier"));
  }
  // Keep the page from being chosen again while room is made below it, and (in a batch) while
  // the other pages of the batch make theirs: it stays where it is until EndMoveLocked.
  index_.Update(key, [](PageEntry& x) { ++x.pin_count; });
  std::optional<uint32_t> slot =
      into_sink_slot ? AcquireSinkSlot(e.ns) : AcquireSemanticSlot(to, depth);
  if (!slot.has_value()) {
    index_.Update(key, [](PageEntry& x) { ReleasePin(x); });
    return absl::ResourceExhaustedError(
        absl::StrCat("no room in ", TierName(to), " for page ", key.ToHex()));
  }
  const PageMeta meta{key,
                      e.ns,
                      e.cls,
                      options_.page_bytes,
                      e.ns < namespaces_.size() ? namespaces_[e.ns].salt : PageKey{},
                      e.stats.frequency,
                      e.stats.access_count};
  return PendingMove{key, e, to, *slot, into_sink_slot, meta};
}

absl::Status TieredStore::EndMoveLocked(const PendingMove& m, const absl::Status& copied) {
  const PageKey& key = m.key;
  const PageEntry& e = m.from;
  const Tier to = m.to;
  index_.Update(key, [](PageEntry& x) { ReleasePin(x); });
  if (!copied.ok()) {
    ReleaseSlot(to, m.slot, m.into_sink_slot, e.ns);
    Bump(counters_->io_errors[TierIndex(to)]);
    return copied;
  }
  ReleaseSlot(e.tier, e.slot, e.in_sink_slot, e.ns);
  if (e.in_sink_slot) std::erase(namespaces_[e.ns].sinks_in_slots, key);
  if (m.into_sink_slot) namespaces_[e.ns].sinks_in_slots.push_back(key);
  PageEntry moved;
  index_.Update(key, [&](PageEntry& x) {
    x.tier = to;
    x.slot = m.slot;
    x.in_sink_slot = m.into_sink_slot;
    moved = x;
  });
  --pages_by_class_[TierIndex(e.tier)][PageClassIndex(e.cls)];
  ++pages_by_class_[TierIndex(to)][PageClassIndex(e.cls)];
  Bump(counters_->migrations[TierIndex(e.tier)][TierIndex(to)]);
  Bump(counters_->migrated_bytes[TierIndex(e.tier)][TierIndex(to)], options_.page_bytes);
  policy_->OnMove(key, e.tier, moved);
  return absl::OkStatus();
}

void TieredStore::CopyMovesLocked(absl::Span<const PendingMove> moves,
                                  absl::Span<absl::Status> copied) {
  // Per route, the side the CPU can address is the other side's source or destination, so the
  // route is one Write (or one Read) of all its pages: a persistent tier syncs once per call.
  std::vector<size_t> route;
  std::vector<ConstBuffer> in;
  std::vector<MutableBuffer> out;
  std::vector<SlotWrite> writes;
  std::vector<SlotRead> reads;
  std::vector<absl::Status> results;
  for (Tier from_tier : kAllTiers) {
    for (Tier to_tier : kAllTiers) {
      route.clear();
      for (size_t i = 0; i < moves.size(); ++i) {
        if (moves[i].from.tier == from_tier && moves[i].to == to_tier) route.push_back(i);
      }
      if (route.empty()) continue;
      TierBackend& from = *backends_[TierIndex(from_tier)];
      TierBackend& to = *backends_[TierIndex(to_tier)];
      const uint64_t bytes = options_.page_bytes;
      results.assign(route.size(), absl::OkStatus());
      if (from.HostSlot(moves[route[0]].from.slot) != nullptr) {
        in.clear();
        writes.clear();
        in.reserve(route.size());  // the writes' spans point into `in`
        for (size_t i : route) in.push_back(ConstBuffer{from.HostSlot(moves[i].from.slot), bytes});
        for (size_t k = 0; k < route.size(); ++k) {
          const PendingMove& m = moves[route[k]];
          writes.push_back(SlotWrite{m.slot, m.meta, absl::MakeConstSpan(&in[k], 1)});
        }
        to.Write(writes, absl::MakeSpan(results));
      } else if (to.HostSlot(moves[route[0]].slot) != nullptr) {
        out.clear();
        reads.clear();
        out.reserve(route.size());
        for (size_t i : route) out.push_back(MutableBuffer{to.HostSlot(moves[i].slot), bytes});
        for (size_t k = 0; k < route.size(); ++k) {
          const PendingMove& m = moves[route[k]];
          reads.push_back(SlotRead{m.from.slot, m.meta, absl::MakeConstSpan(&out[k], 1)});
        }
        from.Read(reads, absl::MakeSpan(results));
      } else {  // neither side host-addressable: through the bounce buffer, a page at a time
        for (size_t k = 0; k < route.size(); ++k) {
          const PendingMove& m = moves[route[k]];
          results[k] = CopyBetween(from, m.from.slot, to, m.slot, m.meta);
        }
      }
      for (size_t k = 0; k < route.size(); ++k) copied[route[k]] = std::move(results[k]);
    }
  }
}

uint32_t TieredStore::RunMovesLocked(absl::Span<const PendingMove> moves,
                                     std::vector<PageKey>& failed) {
  std::vector<absl::Status> copied(moves.size());
  CopyMovesLocked(moves, absl::MakeSpan(copied));
  uint32_t moved = 0;
  for (size_t i = 0; i < moves.size(); ++i) {
    if (EndMoveLocked(moves[i], copied[i]).ok()) {
      ++moved;
    } else {
      failed.push_back(moves[i].key);
    }
  }
  return moved;
}

void TieredStore::DropLocked(const PageKey& key, const PageEntry& e) {
  ReleaseSlot(e.tier, e.slot, e.in_sink_slot, e.ns);
  if (e.in_sink_slot) std::erase(namespaces_[e.ns].sinks_in_slots, key);
  index_.Erase(key);
  if (!e.parent.is_null()) {
    index_.Update(e.parent, [](PageEntry& p) {
      if (p.cached_children > 0) --p.cached_children;
    });
    if (std::optional<PageEntry> p = index_.Find(e.parent); p.has_value()) {
      policy_->OnUpdate(e.parent, *p);
    }
  }
  --pages_by_class_[TierIndex(e.tier)][static_cast<int>(e.cls)];
  Bump(counters_->evictions[TierIndex(e.tier)][static_cast<int>(e.cls)]);
  policy_->OnRemove(key, e);
}

void TieredStore::RecordAccess(PageEntry& e) const {
  const uint64_t now = Now();
  const double elapsed_ms =
      now > e.stats.last_access_ns ? static_cast<double>(now - e.stats.last_access_ns) / 1e6 : 0.0;
  e.stats.frequency = static_cast<float>(
      e.stats.frequency * std::exp2(-elapsed_ms / options_.frequency_half_life_ms) + 1.0);
  e.stats.last_access_ns = now;
  ++e.stats.access_count;
}

PageClass TieredStore::ClassifyOnPut(const PutOptions& o, ClassSource* source) const {
  if (o.class_hint != PageClass::kUnknown) {
    *source = ClassSource::kHint;
    return o.class_hint;
  }
  if (options_.sink_tokens > 0 &&
      uint64_t{o.position} * options_.tokens_per_page < options_.sink_tokens) {
    *source = ClassSource::kPosition;
    return PageClass::kSink;
  }
  *source = ClassSource::kNone;
  return PageClass::kUnknown;
}

absl::StatusOr<PageEntry> TieredStore::FindOwned(NamespaceId ns, const PageKey& key) const {
  std::optional<PageEntry> e = index_.Find(key);
  if (!e.has_value() || e->ns != ns || e->state != PageState::kReady) return NotFound(key);
  return *e;
}

absl::StatusOr<Tier> TieredStore::Put(NamespaceId ns, const PageKey& key,
                                      absl::Span<const ConstBuffer> src,
                                      const PutOptions& options) {
  absl::StatusOr<Tier> result;
  PutBatch(ns, {PutRequest{key, src, options}}, absl::MakeSpan(&result, 1));
  return result;
}

void TieredStore::PutBatch(NamespaceId ns, absl::Span<const PutRequest> pages,
                           absl::Span<absl::StatusOr<Tier>> results) {
  if (!KVTIER_INVARIANT(results.size() == pages.size(), "PutBatch results sized to its pages")) {
    for (absl::StatusOr<Tier>& r : results) r = absl::InternalError("PutBatch: results size");
    return;
  }
  // Pages reserved on NVMe wait here and are written together: one backend call, so one
  // fdatasync and one synced index write for all of them. A page placed in memory is written and
  // published at once, as Put does, so that it can be displaced by the batch's next pages exactly
  // as page-by-page puts would: placement does not depend on how the pages were grouped.
  constexpr size_t kMaxPending = 256;  // bounds the pages pinned and waiting at once
  std::vector<PutReservation> pending;
  auto land = [&](absl::Span<PutReservation> batch) {
    std::vector<absl::Status> written(batch.size());
    WriteReserved(ns, batch, absl::MakeSpan(written));
    absl::MutexLock lock(&mu_);
    for (size_t k = 0; k < batch.size(); ++k) {
      results[batch[k].index] = FinishPutLocked(batch[k], written[k]);
    }
  };
  for (size_t next = 0; next < pages.size();) {
    PutReservation r;
    r.index = next;
    std::optional<absl::StatusOr<Tier>> done = PreparePut(ns, pages[next], false, r);
    if (!done.has_value()) {
      absl::MutexLock lock(&mu_);
      done = ReservePutLocked(ns, r);
    }
    if (done.has_value()) {
      // No room while this batch's NVMe pages hold slots (pinned while their bytes land): land
      // them and try this page again.
      if (!done->ok() && done->status().code() == absl::StatusCode::kResourceExhausted &&
          !pending.empty()) {
        land(absl::MakeSpan(pending));
        pending.clear();
        continue;
      }
      results[next++] = *std::move(done);
      continue;
    }
    ++next;
    if (r.entry.tier != Tier::kNvme) {
      land(absl::MakeSpan(&r, 1));
      continue;
    }
    pending.push_back(r);
    if (pending.size() >= kMaxPending) {
      land(absl::MakeSpan(pending));
      pending.clear();
    }
  }
  land(absl::MakeSpan(pending));
}

void TieredStore::WriteReserved(NamespaceId ns, absl::Span<const PutReservation> batch,
                                absl::Span<absl::Status> written) {
  if (batch.empty()) return;
  std::vector<SlotWrite> writes;
  writes.reserve(batch.size());
  for (const PutReservation& r : batch) {
    writes.push_back(SlotWrite{
        r.entry.slot, PageMeta{r.key, ns, r.entry.cls, options_.page_bytes, r.ns_salt}, r.src});
  }
  backends_[TierIndex(batch.front().entry.tier)]->Write(writes, written);
}

void TieredStore::BeginDirectPuts(NamespaceId ns, absl::Span<const PutRequest> pages,
                                  DirectPutBatch& batch) {
  batch.ns = ns;
  batch.pages.assign(pages.size(), {});
  batch.reserved.assign(pages.size(), {});
  for (size_t i = 0; i < pages.size(); ++i) {
    DirectPutBatch::Page& page = batch.pages[i];
    PutReservation& r = batch.reserved[i];
    r.index = i;
    page.done = PreparePut(ns, pages[i], /*bytes_come_later=*/true, r);
    if (!page.done.has_value()) {
      absl::MutexLock lock(&mu_);
      page.done = ReservePutLocked(ns, r);
    }
    if (page.done.has_value()) continue;
    page.tier = r.entry.tier;
    page.slot = r.entry.slot;
    page.address = page.tier == Tier::kNvme ? nullptr : SlotAddress(page.tier, page.slot);
  }
}

void TieredStore::EndDirectPuts(DirectPutBatch& batch, absl::Span<const absl::Status> written,
                                absl::Span<const absl::Span<const ConstBuffer>> src,
                                absl::Span<absl::StatusOr<Tier>> results) {
  const size_t n = batch.pages.size();
  if (!KVTIER_INVARIANT(written.size() == n && src.size() == n && results.size() == n,
                        "EndDirectPuts spans sized to the batch")) {
    // Still undo every reservation: a pinned, filling page would never leave.
    for (size_t i = 0; i < n; ++i) {
      if (batch.pages[i].done.has_value()) continue;
      absl::MutexLock lock(&mu_);
      (void)FinishPutLocked(batch.reserved[i], absl::InternalError("EndDirectPuts: sizes"));
    }
    for (absl::StatusOr<Tier>& r : results) r = absl::InternalError("EndDirectPuts: sizes");
    return;
  }
  // Pages whose bytes the store writes: one backend call per tier.
  std::vector<absl::Status> outcome(written.begin(), written.end());
  for (Tier t : kAllTiers) {
    std::vector<PutReservation> to_write;
    for (size_t i = 0; i < n; ++i) {
      PutReservation& r = batch.reserved[i];
      if (batch.pages[i].done.has_value() || r.entry.tier != t || !outcome[i].ok() ||
          src[i].empty()) {
        continue;
      }
      outcome[i] = CheckPageBytes(src[i], options_.page_bytes, "page data");
      if (!outcome[i].ok()) continue;
      r.src = src[i];
      to_write.push_back(r);
    }
    std::vector<absl::Status> done(to_write.size());
    WriteReserved(batch.ns, to_write, absl::MakeSpan(done));
    for (size_t k = 0; k < to_write.size(); ++k) outcome[to_write[k].index] = done[k];
  }
  absl::MutexLock lock(&mu_);
  for (size_t i = 0; i < n; ++i) {
    const DirectPutBatch::Page& page = batch.pages[i];
    if (page.done.has_value()) {
      results[i] = *page.done;
      continue;
    }
    absl::Status s = outcome[i];
    if (s.ok() && src[i].empty() && page.address == nullptr) {
      s = absl::InternalError("a direct put without an address was given no bytes");
    }
    results[i] = FinishPutLocked(batch.reserved[i], s);
  }
  batch.pages.clear();
  batch.reserved.clear();
}

std::optional<absl::StatusOr<Tier>> TieredStore::PreparePut(NamespaceId ns, const PutRequest& page,
                                                            bool bytes_come_later,
                                                            PutReservation& out) const {
  if (page.key.is_null()) return absl::InvalidArgumentError("null page key");
  if (!bytes_come_later) {
    if (absl::Status s = CheckPageBytes(page.src, options_.page_bytes, "page data"); !s.ok()) {
      return s;
    }
  }
  if (page.options.tier.has_value() && backends_[TierIndex(*page.options.tier)] == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("no ", TierName(*page.options.tier), " tier"));
  }
  out.client_key = page.key;
  out.key = IndexKey(ns, page.key);
  out.options = page.options;
  out.options.parent = IndexKey(ns, page.options.parent);
  out.src = page.src;
  out.entry.cls = ClassifyOnPut(out.options, &out.entry.class_source);
  return std::nullopt;
}

std::optional<absl::StatusOr<Tier>> TieredStore::ReservePutLocked(NamespaceId ns,
                                                                  PutReservation& out) {
  const PageKey& client_key = out.client_key;
  const PageKey& key = out.key;
  const PutOptions& options = out.options;
  const PageClass cls = out.entry.cls;
  if (ns >= namespaces_.size()) {
    return absl::NotFoundError(absl::StrCat("unknown namespace id ", ns));
  }
  if (std::optional<PageEntry> existing = index_.Find(key); existing.has_value()) {
    if (existing->ns != ns) {
      // Two namespaces' keys met in the index: a 128-bit collision of a secret-seeded hash.
      // The page is refused like any page without room, so nothing about the other page shows.
      return absl::ResourceExhaustedError(
          absl::StrCat("no tier has room for page ", client_key.ToHex()));
    }
    Bump(counters_->put_duplicates);
    if (existing->state == PageState::kReady) {
      PageEntry updated;
      index_.Update(key, [&](PageEntry& x) {
        RecordAccess(x);
        updated = x;
      });
      policy_->OnAccess(key, updated);
    }
    return existing->tier;
  }
  bool sink_slot = false;
  std::optional<uint32_t> slot;
  Tier tier = options.tier.value_or(Tier::kHbm);
  const uint32_t hbm_pool = HbmPoolOn(options.hbm_device);
  if (!options.tier.has_value() && cls == PageClass::kSink && has_tier(Tier::kHbm)) {
    slot = AcquireSinkSlot(ns, hbm_pool);
    sink_slot = slot.has_value();
    if (!sink_slot && namespaces_[ns].sink_reserved > 0) Bump(counters_->sink_overflows);
  }
  // The fastest tier with room, demoting the policy's victims to make it.
  for (Tier t : kAllTiers) {
    if (slot.has_value()) break;
    if (TierIndex(t) < TierIndex(tier) || backends_[TierIndex(t)] == nullptr) continue;
    PageEntry candidate;
    candidate.ns = ns;
    candidate.tier = t;
    candidate.cls = cls;
    candidate.position = options.position;
    candidate.stats.tokens = options.tokens != 0 ? options.tokens : options_.tokens_per_page;
    if (!policy_->Admits(t, candidate)) continue;  // not worth a slot there: try the next
    slot = AcquireSemanticSlot(t, 0, hbm_pool);
    tier = t;
  }
  if (!slot.has_value()) {
    return absl::ResourceExhaustedError(
        absl::StrCat("no tier has room for page ", client_key.ToHex(),
                     ": every page is pinned or the policy admits it nowhere"));
  }
  PageEntry& entry = out.entry;
  entry.parent = options.parent;
  entry.ns = ns;
  entry.slot = *slot;
  entry.pin_count = 1;  // the writer's pin: the slot cannot be reused while bytes land
  entry.position = options.position;
  entry.tier = tier;
  entry.state = PageState::kFilling;
  entry.in_sink_slot = sink_slot;
  entry.stats.insert_ns = Now();
  entry.stats.tokens = options.tokens != 0 ? options.tokens : options_.tokens_per_page;
  out.ns_salt = namespaces_[ns].salt;
  index_.Insert(key, entry);
  if (sink_slot) namespaces_[ns].sinks_in_slots.push_back(key);
  ++pages_by_class_[TierIndex(tier)][static_cast<int>(cls)];
  return std::nullopt;
}

absl::StatusOr<Tier> TieredStore::FinishPutLocked(const PutReservation& r,
                                                  const absl::Status& written) {
  const PageEntry& entry = r.entry;
  const NamespaceId ns = entry.ns;
  if (!written.ok()) {
    Bump(counters_->io_errors[TierIndex(entry.tier)]);
    ReleaseSlot(entry.tier, entry.slot, entry.in_sink_slot, ns);
    if (entry.in_sink_slot) std::erase(namespaces_[ns].sinks_in_slots, r.key);
    --pages_by_class_[TierIndex(entry.tier)][static_cast<int>(entry.cls)];
    index_.Erase(r.key);
    return written;
  }
  PageEntry ready;
  index_.Update(r.key, [&](PageEntry& x) {
    x.state = PageState::kReady;
    ReleasePin(x);
    RecordAccess(x);
    ready = x;
  });
  if (!r.options.parent.is_null()) {
    index_.Update(r.options.parent, [](PageEntry& p) { ++p.cached_children; });
    if (std::optional<PageEntry> p = index_.Find(r.options.parent); p.has_value()) {
      policy_->OnUpdate(r.options.parent, *p);
    }
  }
  policy_->OnInsert(r.key, ready);
  Bump(counters_->puts);
  // Its namespace was retired while the bytes landed: the sink leaves the reserve now.
  if (ready.in_sink_slot) LeaveRetiredReserveLocked(r.key);
  return ready.tier;
}

TieredStore::SharedPool TieredStore::dram_pool() const {
  const auto* tier = dynamic_cast<const MemoryTier*>(backends_[TierIndex(Tier::kDram)].get());
  if (tier == nullptr) return {};
  return SharedPool{tier->region().fd(), tier->slot_count(), tier->slot_bytes()};
}

std::byte* TieredStore::SlotAddress(Tier t, uint32_t slot) const {
  const auto* tier = dynamic_cast<const MemoryTier*>(backends_[TierIndex(t)].get());
  if (tier == nullptr) return nullptr;
  const MemoryRegion* region = nullptr;
  std::byte* address = tier->SlotAddress(slot, &region);
  // Host memory a GPU kernel cannot reach (not registered with CUDA) is no address for it.
  if (address == nullptr || (region->kind() == MemoryKind::kHost && !region->pinned())) {
    return nullptr;
  }
  return address;
}

int TieredStore::HbmDeviceOfSlot(uint32_t slot) const {
  for (const TierPool& p : hbm_pools_) {
    if (slot >= p.first_slot && slot - p.first_slot < p.slots) return p.device;
  }
  return -1;
}

absl::StatusOr<Tier> TieredStore::Get(NamespaceId ns, const PageKey& client_key,
                                      absl::Span<const MutableBuffer> dst) {
  absl::StatusOr<Tier> result;
  GetBatch(ns, absl::MakeConstSpan(&client_key, 1), absl::MakeConstSpan(&dst, 1),
           absl::MakeSpan(&result, 1));
  return result;
}

void TieredStore::GetBatch(NamespaceId ns, absl::Span<const PageKey> client_keys,
                           absl::Span<const absl::Span<const MutableBuffer>> dsts,
                           absl::Span<absl::StatusOr<Tier>> results) {
  const size_t n = client_keys.size();
  if (dsts.size() != n || results.size() != n) {
    for (auto& r : results) {
      r = absl::InvalidArgumentError(absl::StrCat(n, " keys, ", dsts.size(), " destinations and ",
                                                  results.size(), " results"));
    }
    return;
  }
  std::vector<PageKey> keys;
  IndexKeys(ns, client_keys, keys);
  std::vector<PageEntry> entries(n);
  std::vector<bool> pinned(n, false);
  {
    absl::MutexLock lock(&mu_);
    for (size_t i = 0; i < n; ++i) {
      if (absl::Status s = CheckPageBytes(dsts[i], options_.page_bytes, "destination"); !s.ok()) {
        results[i] = s;
        continue;
      }
      absl::StatusOr<PageEntry> found = FindOwned(ns, keys[i]);
      if (!found.ok()) {
        Bump(counters_->misses);
        results[i] = found.status();
        continue;
      }
      index_.Update(keys[i], [&](PageEntry& x) {
        ++x.pin_count;  // the reader's pin: the page cannot move while its bytes are copied out
        RecordAccess(x);
        entries[i] = x;
      });
      policy_->OnAccess(keys[i], entries[i]);
      pinned[i] = true;
    }
  }
  // One Read per tier, outside the lock: the pins hold every slot.
  for (Tier t : kAllTiers) {
    std::vector<SlotRead> reads;
    std::vector<size_t> which;
    for (size_t i = 0; i < n; ++i) {
      if (!pinned[i] || entries[i].tier != t) continue;
      reads.push_back(SlotRead{
          entries[i].slot, PageMeta{keys[i], ns, entries[i].cls, options_.page_bytes}, dsts[i]});
      which.push_back(i);
    }
    if (reads.empty()) continue;
    std::vector<absl::Status> read(reads.size());
    backends_[TierIndex(t)]->Read(reads, absl::MakeSpan(read));
    for (size_t k = 0; k < which.size(); ++k) {
      results[which[k]] = read[k].ok() ? absl::StatusOr<Tier>(t) : read[k];
    }
  }
  absl::MutexLock lock(&mu_);
  for (size_t i = 0; i < n; ++i) {
    if (!pinned[i]) continue;
    index_.Update(keys[i], [](PageEntry& x) { ReleasePin(x); });
    const Tier t = entries[i].tier;
    if (!results[i].ok()) {
      // A page that cannot be read is gone: drop it so it is recomputed, never served wrong.
      Bump(counters_->io_errors[TierIndex(t)]);
      Bump(counters_->misses);
      if (std::optional<PageEntry> e = index_.Find(keys[i]); e.has_value() && e->pin_count == 0) {
        DropLocked(keys[i], *e);
      }
      continue;
    }
    if (entries[i].in_sink_slot) LeaveRetiredReserveLocked(keys[i]);  // retired while read
    Bump(counters_->hits[TierIndex(t)]);
  }
}

LookupResult TieredStore::LookupPrefix(NamespaceId ns, absl::Span<const PageKey> keys) const {
  LookupResult result;
  result.tiers.resize(keys.size());
  // A null key stays null here and is never in the index (Put refuses it): a miss either way.
  std::vector<PageKey> index_keys;
  IndexKeys(ns, keys, index_keys);
  result.prefix_pages = index_.LookupPrefix(ns, index_keys, absl::MakeSpan(result.tiers));
  result.tiers.resize(result.prefix_pages);
  return result;
}

absl::Status TieredStore::Touch(NamespaceId ns, const PageKey& client_key) {
  const PageKey key = IndexKey(ns, client_key);
  absl::MutexLock lock(&mu_);
  absl::StatusOr<PageEntry> found = FindOwned(ns, key);
  if (!found.ok()) return found.status();
  PageEntry e;
  index_.Update(key, [&](PageEntry& x) {
    RecordAccess(x);
    e = x;
  });
  policy_->OnAccess(key, e);
  return absl::OkStatus();
}

absl::Status TieredStore::Pin(NamespaceId ns, absl::Span<const PageKey> client_keys) {
  std::vector<PageEntry> entries;
  return PinAndLocate(ns, client_keys, entries);
}

absl::Status TieredStore::PinAndLocate(NamespaceId ns, absl::Span<const PageKey> client_keys,
                                       std::vector<PageEntry>& entries) {
  entries.clear();
  std::vector<PageKey> keys;
  IndexKeys(ns, client_keys, keys);
  pin_waiters_.fetch_add(1, std::memory_order_relaxed);
  absl::MutexLock lock(&mu_);
  pin_waiters_.fetch_sub(1, std::memory_order_relaxed);
  // One batched probe (the GPU load path calls this for thousands of pages): pin while finding,
  // and take the pins back if any page is missing, before the lock is let go.
  entries.resize(keys.size());
  size_t first_missing = keys.size();
  index_.UpdateEach(keys, [&](size_t i, PageEntry* x) {
    if (x == nullptr || x->ns != ns || x->state != PageState::kReady) {
      first_missing = std::min(first_missing, i);
      return;
    }
    ++x->pin_count;
    entries[i] = *x;
  });
  if (first_missing < keys.size()) {
    std::vector<PageKey> pinned;
    for (size_t i = 0; i < keys.size(); ++i) {
      if (entries[i].pin_count > 0) pinned.push_back(keys[i]);
    }
    index_.UpdateEach(pinned, [](size_t, PageEntry* x) { ReleasePin(*x); });
    entries.clear();
    return NotFound(keys[first_missing]);
  }
  return absl::OkStatus();
}

absl::Status TieredStore::Unpin(NamespaceId ns, absl::Span<const PageKey> client_keys) {
  return ReleasePins(ns, client_keys, /*count_access=*/false);
}

absl::Status TieredStore::UnpinAfterRead(NamespaceId ns, absl::Span<const PageKey> client_keys) {
  return ReleasePins(ns, client_keys, /*count_access=*/true);
}

absl::Status TieredStore::ReleasePins(NamespaceId ns, absl::Span<const PageKey> client_keys,
                                      bool count_access) {
  std::vector<PageKey> keys;
  IndexKeys(ns, client_keys, keys);
  {
    absl::MutexLock lock(&mu_);
    // A key listed twice releases two pins: check each key against how often it is listed, so
    // that the decrements below can never go below zero.
    absl::flat_hash_map<PageKey, uint32_t> listed;
    listed.reserve(keys.size());
    for (const PageKey& key : keys) ++listed[key];
    size_t bad = keys.size();
    absl::Status why;
    index_.FindEach(keys, [&](size_t i, const PageEntry* e) {
      if (i >= bad) return;  // the first bad key in key order is the one reported
      if (e == nullptr || e->ns != ns || e->state != PageState::kReady) {
        bad = i;
        why = NotFound(keys[i]);
      } else if (e->pin_count < listed[keys[i]]) {
        bad = i;
        why = absl::FailedPreconditionError(absl::StrCat(
            "page ", client_keys[i].ToHex(), " is not pinned ", listed[keys[i]], " times"));
      }
    });
    if (!why.ok()) return why;
  }
  // In chunks that let go of the lock between them, each counted (while its pins still hold the
  // pages) and released in one index pass: the policy's bookkeeping for a large load
  // (microseconds a page) must not hold up the next load's pinning for its whole length. Only
  // the pins' owner releases them, so the check above still holds for the later chunks. The
  // policy sees the accesses in key order.
  constexpr size_t kChunk = 64;
  std::vector<PageEntry> accessed;
  std::vector<PageKey> leaving;  // unpinned sinks: those of a retired namespace leave the reserve
  for (size_t lo = 0; lo < keys.size(); lo += kChunk) {
    while (pin_waiters_.load(std::memory_order_relaxed) > 0) std::this_thread::yield();
    const absl::Span<const PageKey> chunk =
        absl::MakeConstSpan(keys).subspan(lo, std::min(kChunk, keys.size() - lo));
    accessed.resize(chunk.size());
    leaving.clear();
    absl::MutexLock lock(&mu_);
    index_.UpdateEach(chunk, [&](size_t i, PageEntry* x) {
      if (count_access) {
        RecordAccess(*x);  // present: the pins hold it
        accessed[i] = *x;
      }
      ReleasePin(*x);
      if (x->in_sink_slot && x->pin_count == 0) leaving.push_back(chunk[i]);
    });
    for (size_t i = 0; count_access && i < chunk.size(); ++i) {
      policy_->OnAccess(chunk[i], accessed[i]);
    }
    for (const PageKey& key : leaving) LeaveRetiredReserveLocked(key);
  }
  return absl::OkStatus();
}

absl::Status TieredStore::ReportAttention(NamespaceId ns, const PageKey& client_key,
                                          const AttentionSample& sample) {
  const PageKey key = IndexKey(ns, client_key);
  if (!(sample.mass >= 0 && sample.mass <= 1 && sample.breadth >= 0 && sample.breadth <= 1 &&
        sample.value_norm >= 0 && std::isfinite(sample.value_norm) && sample.mass_entropy >= 0 &&
        sample.mass_entropy <= 1)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "attention sample out of range: mass=", sample.mass, " breadth=", sample.breadth,
        " value_norm=", sample.value_norm, " entropy=", sample.mass_entropy));
  }
  absl::MutexLock lock(&mu_);
  absl::StatusOr<PageEntry> found = FindOwned(ns, key);
  if (!found.ok()) return found.status();
  const float a = static_cast<float>(options_.attention_ewma_alpha);
  PageEntry e;
  index_.Update(key, [&](PageEntry& x) {
    PageStats& s = x.stats;
    // The first report seeds the averages instead of being diluted by the zero they start at.
    const float w = s.stat_reports == 0 ? 1.0f : a;
    s.attention_mass += w * (sample.mass - s.attention_mass);
    s.breadth += w * (sample.breadth - s.breadth);
    s.value_norm += w * (sample.value_norm - s.value_norm);
    s.mass_entropy += w * (sample.mass_entropy - s.mass_entropy);
    ++s.stat_reports;
    e = x;
  });
  policy_->OnUpdate(key, e);
  return absl::OkStatus();
}

absl::Status TieredStore::SetClass(NamespaceId ns, const PageKey& client_key, PageClass cls,
                                   ClassSource source) {
  const PageKey key = IndexKey(ns, client_key);
  absl::MutexLock lock(&mu_);
  absl::StatusOr<PageEntry> found = FindOwned(ns, key);
  if (!found.ok()) return found.status();
  // A weaker source never overrides a stronger one (hint > position > measured).
  if (found->class_source != ClassSource::kNone && found->class_source < source) {
    return absl::OkStatus();
  }
  PageEntry e;
  index_.Update(key, [&](PageEntry& x) {
    x.cls = cls;
    x.class_source = source;
    e = x;
  });
  --pages_by_class_[TierIndex(e.tier)][static_cast<int>(found->cls)];
  ++pages_by_class_[TierIndex(e.tier)][static_cast<int>(cls)];
  policy_->OnUpdate(key, e);
  if (cls == PageClass::kSink && !e.in_sink_slot && has_tier(Tier::kHbm) && e.pin_count == 0 &&
      namespaces_[ns].sink_used < namespaces_[ns].sink_reserved) {
    return MoveLocked(key, Tier::kHbm, /*into_sink_slot=*/true, 0);
  }
  if (cls != PageClass::kSink && e.in_sink_slot && e.pin_count == 0) {
    // No longer a sink: it leaves the reserve and competes like any page.
    absl::Status s = MoveLocked(key, Tier::kHbm, false, 0);
    if (!s.ok()) s = MoveLocked(key, Below(Tier::kHbm).value_or(Tier::kHbm), false, 0);
    return s;
  }
  return absl::OkStatus();
}

absl::Status TieredStore::Evict(NamespaceId ns, const PageKey& client_key) {
  const PageKey key = IndexKey(ns, client_key);
  absl::MutexLock lock(&mu_);
  absl::StatusOr<PageEntry> e = FindOwned(ns, key);
  if (!e.ok()) return e.status();
  if (e->pin_count > 0) {
    return absl::FailedPreconditionError(absl::StrCat("page ", key.ToHex(), " is pinned"));
  }
  DropLocked(key, *e);
  return absl::OkStatus();
}

absl::Status TieredStore::Move(NamespaceId ns, const PageKey& client_key, Tier to) {
  const PageKey key = IndexKey(ns, client_key);
  absl::MutexLock lock(&mu_);
  absl::StatusOr<PageEntry> e = FindOwned(ns, key);
  if (!e.ok()) return e.status();
  return MoveLocked(key, to, false, 0);
}

PlannerReport TieredStore::Maintain(const MaintainOptions& options) {
  PlannerReport report;
  absl::MutexLock lock(&mu_);
  auto budget_left = [&] {
    return options.max_migration_bytes == 0 ||
           report.bytes_moved + options_.page_bytes <= options.max_migration_bytes;
  };
  const auto eligible = [this](const PageKey& k) { return Evictable(k); };
  // Demote (or drop at the bottom) until every tier is back at its low watermark.
  for (Tier t : kAllTiers) {
    if (!slots_[TierIndex(t)].has_value()) continue;
    const TierOptions& o = t == Tier::kHbm ? options_.hbm : options_.dram;
    const uint32_t cap = SemanticCapacity(t);
    const double high = t == Tier::kNvme ? 1.0 : o.high_watermark;
    const double low = t == Tier::kNvme ? 1.0 : o.low_watermark;
    if (SemanticUsed(t) <= high * cap) continue;
    const auto target = static_cast<uint32_t>(low * cap);
    std::vector<PageKey> victims;
    policy_->LeastValuable(t, SemanticUsed(t) - target, eligible, victims);
    const std::optional<Tier> below = Below(t);
    // The pass's moves are begun here, copied below in one backend call for the route, then
    // ended; a victim whose move cannot begin or fails is dropped, as the bottom tier's are.
    std::vector<PendingMove> moves;
    std::vector<PageKey> not_moved;
    const auto drop = [&](const PageKey& victim) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      if (std::optional<PageEntry> e = index_.Find(victim); e.has_value() && e->tier == t) {
        DropLocked(victim, *e);
        ++report.dropped;
      }
    };
    for (const PageKey& victim : victims) {
      if (SemanticUsed(t) - moves.size() <= target) break;  // begun moves leave t when ended
      std::optional<PageEntry> v = index_.Find(victim);
      if (below.has_value() && v.has_value() && policy_->Admits(*below, *v)) {
        if (!budget_left()) break;
        absl::StatusOr<std::optional<PendingMove>> begun =
            BeginMoveLocked(victim, *below, false, 1);
        if (begun.ok() && begun->has_value()) {
          moves.push_back(**begun);
          report.bytes_moved += options_.page_bytes;  // counted now so budget_left sees it
          continue;
        }
      }
      drop(victim);
    }
    const uint32_t demoted = RunMovesLocked(moves, not_moved);
    report.demoted += demoted;
    report.bytes_moved -= (moves.size() - demoted) * options_.page_bytes;
    for (const PageKey& victim : not_moved) drop(victim);
  }
  if (!options.promote) return report;
  // Promote the most valuable pages of each lower tier into free room above (no displacement:
  // a promotion that evicts is the policy's call, made through its own ranking above).
  for (Tier t : {Tier::kDram, Tier::kNvme}) {
    const std::optional<Tier> above = Above(t);
    if (!slots_[TierIndex(t)].has_value() || !above.has_value()) continue;
    const TierOptions& o = *above == Tier::kHbm ? options_.hbm : options_.dram;
    const auto target = static_cast<uint32_t>(o.low_watermark * SemanticCapacity(*above));
    if (SemanticUsed(*above) >= target) continue;
    std::vector<PageKey> candidates;
    policy_->MostValuable(t, target - SemanticUsed(*above), eligible, candidates);
    std::vector<PendingMove> moves;  // copied in one backend call for the route, as above
    std::vector<PageKey> not_moved;
    for (const PageKey& key : candidates) {
      // A begun move already holds its slot above, so SemanticUsed(*above) counts it.
      if (!budget_left() || SemanticUsed(*above) >= target) break;
      absl::StatusOr<std::optional<PendingMove>> begun =
          BeginMoveLocked(key, *above, false, kNumTiers);
      if (begun.ok() && begun->has_value()) {
        moves.push_back(**begun);
        report.bytes_moved += options_.page_bytes;
      }
    }
    const uint32_t promoted = RunMovesLocked(moves, not_moved);
    report.promoted += promoted;
    report.bytes_moved -= (moves.size() - promoted) * options_.page_bytes;
  }
  if (options.displace) DisplaceLocked(options, report);
  return report;
}

void TieredStore::DisplaceLocked(const MaintainOptions& options, PlannerReport& report) {
  const auto eligible = [this](const PageKey& k) { return Evictable(k); };
  const auto moved_bytes = [this] {
    uint64_t total = 0;
    for (const auto& row : counters_->migrated_bytes) {
      for (const auto& c : row) total += c.load(std::memory_order_relaxed);
    }
    return total;
  };
  std::vector<PageKey> candidate, victim;
  for (Tier t : {Tier::kDram, Tier::kNvme}) {
    const std::optional<Tier> above = Above(t);
    if (!slots_[TierIndex(t)].has_value() || !above.has_value()) continue;
    // Each swap moves at least two pages (more when the displaced page cascades further down).
    while (options.max_migration_bytes == 0 ||
           report.bytes_moved + 2 * options_.page_bytes <= options.max_migration_bytes) {
      candidate.clear();
      victim.clear();
      policy_->MostValuable(t, 1, eligible, candidate);
      policy_->LeastValuable(*above, 1, eligible, victim);
      if (candidate.empty() || victim.empty()) break;
      if (!(policy_->Value(candidate.front()) > policy_->Value(victim.front()))) break;
      const uint64_t before = moved_bytes();
      if (!MoveLocked(candidate.front(), *above, false, 1).ok()) break;
      ++report.promoted;
      ++report.demoted;
      report.bytes_moved += moved_bytes() - before;
    }
  }
}

std::optional<PageEntry> TieredStore::Find(NamespaceId ns, const PageKey& key) const {
  std::optional<PageEntry> e = index_.Find(IndexKey(ns, key));
  if (!e.has_value() || e->ns != ns) return std::nullopt;
  return e;
}

TierUsage TieredStore::Usage(Tier tier) const {
  absl::MutexLock lock(&mu_);
  TierUsage u;
  const auto& slots = slots_[TierIndex(tier)];
  if (!slots.has_value()) return u;
  u.present = true;
  u.backend = std::string(backends_[TierIndex(tier)]->name());
  u.capacity_slots = slots->capacity();
  u.used_slots = slots->used();
  if (tier == Tier::kHbm) {
    u.sink_reserved_slots = total_sink_reserved_;
    u.sink_used_slots = total_sink_used_;
  }
  u.pages_by_class = pages_by_class_[TierIndex(tier)];
  const std::vector<TierPool> pools = backends_[TierIndex(tier)]->pools();
  for (uint32_t p = 0; p < pools.size() && p < slots->pool_count(); ++p) {
    u.pools.push_back(PoolUsage{pools[p].device, slots->pool_size(p), slots->pool_used(p)});
  }
  return u;
}

StoreCounters TieredStore::Counters() const {
  StoreCounters c;
  const auto load = [](const std::atomic<uint64_t>& a) {
    return a.load(std::memory_order_relaxed);
  };
  for (int t = 0; t < kNumTiers; ++t) {
    c.hits[t] = load(counters_->hits[t]);
    c.io_errors[t] = load(counters_->io_errors[t]);
    for (int k = 0; k < kNumPageClasses; ++k) c.evictions[t][k] = load(counters_->evictions[t][k]);
    for (int u = 0; u < kNumTiers; ++u) {
      c.migrations[t][u] = load(counters_->migrations[t][u]);
      c.migrated_bytes[t][u] = load(counters_->migrated_bytes[t][u]);
    }
  }
  c.misses = load(counters_->misses);
  c.puts = load(counters_->puts);
  c.put_duplicates = load(counters_->put_duplicates);
  c.sink_overflows = load(counters_->sink_overflows);
  c.sink_replacements = load(counters_->sink_replacements);
  return c;
}

}  // namespace kvtier
