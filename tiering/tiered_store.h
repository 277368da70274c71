// TieredStore: the in-process page store over HBM, DRAM and (optionally) NVMe tiers.
//
// It owns placement mechanics: slot allocation per tier, the page index, reserved sink slots per
// namespace, moving pages between tiers, and watermarks. Which pages to move is asked of a
// PlacementPolicy (LRU by default), so policies swap without touching this file.
//
// Thread model: every public method is thread-safe. Metadata changes are serialized under one
// store mutex; the bytes of Put and Get are copied *outside* it, under a pin that keeps the page
// from moving (a page being written is invisible until published). LookupPrefix never takes the
// store mutex, only the index's shard locks. Moves made by the planner copy under the store mutex.
//
// HBM pools: the HBM tier may be one pool per GPU (StoreOptions::hbm_devices). One policy ranks
// every HBM page; a put that names a GPU (PutOptions::hbm_device) takes a slot in that GPU's pool
// when it has room, and every other placement goes to the pool with the most room.
//
// Reserved sink slots: each namespace may reserve HBM slots that only SINK pages use, outside the
// semantic budget. A sink in a reserved slot is never a victim of semantic pressure; when a
// namespace's reserve is full, a new sink replaces that namespace's least recently used *unpinned*
// sink (which moves down a tier as an ordinary page), and if every reserved sink is pinned the new
// sink competes as an ordinary page ("sink overflow", counted).
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "tiering/clock.h"
#include "tiering/copy_engine.h"
#include "tiering/memory_region.h"
#include "tiering/page_index.h"
#include "tiering/policy.h"
#include "tiering/slot_allocator.h"
#include "tiering/tier_backend.h"

namespace kvtier {

struct TierOptions {
  // Page slots in the tier; 0 leaves the tier out. For HBM this includes reserved sink slots.
  uint32_t slots = 0;
  // The planner starts demoting when occupancy exceeds high_watermark of the tier's semantic
  // capacity and stops at low_watermark. Must satisfy 0 < low <= high <= 1.
  double high_watermark = 0.95;
  double low_watermark = 0.85;
};

struct StoreOptions {
  // Bytes of every page (Layout::page_bytes()). Required.
  uint64_t page_bytes = 0;
  TierOptions hbm{.slots = 0};
  TierOptions dram{.slots = 0};
  // Which memory backs HBM: a real GPU (cuda), host memory standing in for one, or auto (cuda
  // when this build has CUDA and a GPU is present). Chosen once at Create and reported.
  HbmBackend hbm_backend = HbmBackend::kAuto;
  int cuda_device = 0;
  // One HBM pool per entry, on that CUDA device (a node's GPUs each give the cache a pool, and a
  // page's HBM copy lives in one of them); hbm.slots is split evenly between them, the first
  // pools taking one more when it does not divide. Empty (default): one pool on cuda_device. A
  // device may be listed twice (two pools on one GPU; tests use it to run the several-pool code
  // on a one-GPU machine). With a host-emulated HBM backend each entry is a host region
  // standing in for that device.
  std::vector<int> hbm_devices;
  // Pin the DRAM pool with cudaHostRegister when CUDA is live (faster, zero-copy-mappable).
  bool pin_dram = true;
  // StreamingLLM's attention sinks: pages covering the first `sink_tokens` tokens of a sequence
  // are sinks by position. Default 4; 0 disables position-based classification.
  uint32_t sink_tokens = kDefaultSinkTokens;
  // Tokens per page, for the position rule and recompute cost. Default 16 (vLLM's block size).
  uint32_t tokens_per_page = kDefaultTokensPerPage;
  // Half-life of the decayed access frequency. Default 30 s of store clock.
  double frequency_half_life_ms = 30'000;
  // Weight of a new attention report in the EWMAs (0 < alpha <= 1). Default 0.2.
  double attention_ewma_alpha = 0.2;
  // Time source; nullptr means the steady clock. Must outlive the store.
  const Clock* clock = nullptr;
  // Seed of the hash that makes a client's key and its namespace one index key (keys are per
  // namespace: the same key in two namespaces names two pages). A daemon sets a secret, kept with
  // its persistent tier so recovered pages keep their index keys; with a secret, no client can
  // compute an index key, so none can aim a key of its own at another namespace's page.
  // Default 0 (fine for a store whose clients are trusted, e.g. tests and the simulator).
  uint64_t index_key_secret = 0;
};

// Parts a caller may inject; anything left null gets the default.
struct StoreParts {
  std::unique_ptr<PlacementPolicy> policy;  // default: LruPolicy
  std::unique_ptr<CopyEngine> copy_engine;  // default: CpuCopyEngine(1)
  std::unique_ptr<TierBackend> hbm;         // default: built from options (HBM backend choice)
  // The copy engine of each CUDA device an HBM pool is on (keyed by ordinal); a pool on a device
  // without one here is copied by copy_engine. Used only when the store builds the HBM tier.
  std::map<int, std::unique_ptr<CopyEngine>> hbm_engines;
  std::unique_ptr<TierBackend> dram;  // default: memfd pool from options
  std::unique_ptr<TierBackend> nvme;  // default: no NVMe tier
};

struct PutOptions {
  PageKey parent;                              // previous page of the sequence (null for the first)
  uint32_t position = 0;                       // index of this page within its sequence
  uint32_t tokens = 0;                         // tokens covered; 0 means tokens_per_page
  PageClass class_hint = PageClass::kUnknown;  // the worker's memory-intent hint
  std::optional<Tier> tier;  // place in this tier instead of the fastest with room
  // Put the page's HBM copy in a pool on this CUDA device when one has room (the GPU of the
  // worker that stored it); otherwise, or when unset, in the pool with the most free slots.
  std::optional<int> hbm_device;
};

// One page of a PutBatch: its key, its bytes (pieces in page order) and its options.
struct PutRequest {
  PageKey key;
  absl::Span<const ConstBuffer> src;
  PutOptions options;
};

// One attention-statistics observation for a page (per decode step or window).
struct AttentionSample {
  float mass = 0;        // share of attention mass received, 0..1
  float breadth = 0;     // share of queries above the breadth threshold, 0..1
  float value_norm = 0;  // mean value-vector L2 norm
  float mass_entropy = 1;
};

struct LookupResult {
  size_t prefix_pages = 0;  // pages [0, prefix_pages) are cached
  std::vector<Tier> tiers;  // tier of each of those pages
};

// One pool of a tier (TierPool) and how full it is.
struct PoolUsage {
  int device = -1;
  uint32_t capacity_slots = 0;
  uint32_t used_slots = 0;
};

struct TierUsage {
  bool present = false;
  std::string backend;
  uint32_t capacity_slots = 0;
  uint32_t used_slots = 0;
  uint32_t sink_reserved_slots = 0;                        // HBM only
  uint32_t sink_used_slots = 0;                            // HBM only
  std::array<uint32_t, kNumPageClasses> pages_by_class{};  // indexed by PageClass
  std::vector<PoolUsage> pools;                            // in slot order; one for most tiers
};

struct StoreCounters {
  std::array<uint64_t, kNumTiers> hits{};
  uint64_t misses = 0;
  uint64_t puts = 0;
  uint64_t put_duplicates = 0;
  std::array<std::array<uint64_t, kNumPageClasses>, kNumTiers> evictions{};  // [tier][class]
  std::array<std::array<uint64_t, kNumTiers>, kNumTiers> migrations{};       // [from][to]
  std::array<std::array<uint64_t, kNumTiers>, kNumTiers> migrated_bytes{};
  uint64_t sink_overflows = 0;
  uint64_t sink_replacements = 0;
  std::array<uint64_t, kNumTiers> io_errors{};
};

struct MaintainOptions {
  // Bytes the planner may move in one run (0 = unlimited): migrations compete with inference
  // for PCIe and disk bandwidth.
  uint64_t max_migration_bytes = 0;
  bool promote = true;
  // After filling free room, also promote by displacement: while the most valuable page of a
  // lower tier has a higher policy Value than the least valuable page of the tier above, move it
  // up (the page it displaces goes down a tier). Policies build their own hysteresis into Value.
  // Default false (the original fill-only behaviour). Bounded by max_migration_bytes.
  bool displace = false;
};

struct PlannerReport {
  uint32_t demoted = 0;
  uint32_t promoted = 0;
  uint32_t dropped = 0;
  uint64_t bytes_moved = 0;
};

class TieredStore {
 public:
  // A page whose slot a put has taken and whose bytes are yet to land (internal to the store;
  // public only so that DirectPutBatch can hold it).
  struct PutReservation {
    size_t index = 0;  // in the batch
    PageKey key;       // index key
    PageKey client_key;
    PutOptions options;  // parent as an index key
    PageEntry entry;
    PageKey ns_salt;
    absl::Span<const ConstBuffer> src;
  };
  // Puts whose bytes the caller writes straight into the reserved slots (a GPU kernel gathering a
  // worker's blocks into the DRAM or HBM pool, with no staging copy); see BeginDirectPuts.
  struct DirectPutBatch {
    struct Page {
      // Set when the page was finished at Begin: a duplicate (its tier), or refused.
      std::optional<absl::StatusOr<Tier>> done;
      Tier tier = Tier::kHbm;
      uint32_t slot = 0;
      // Where the caller may write the page's bytes (SlotAddress of the slot): host or device
      // memory a GPU kernel reaches. nullptr (NVMe, unpinned host memory): give them to End.
      std::byte* address = nullptr;
    };
    std::vector<Page> pages;

   private:
    friend class TieredStore;
    NamespaceId ns = 0;
    std::vector<PutReservation> reserved;  // by page; meaningful where !done
  };

  static absl::StatusOr<std::unique_ptr<TieredStore>> Create(const StoreOptions& options,
                                                             StoreParts parts = {});
  ~TieredStore();
  TieredStore(const TieredStore&) = delete;
  TieredStore& operator=(const TieredStore&) = delete;

  // Registers a namespace (model fingerprint + tenant) asking for `sink_slots` reserved HBM slots;
  // as many are reserved as HBM has unreserved (never an error: one tenant's reserves must not
  // lock another out). Registering an existing name returns its id (the request must match) and
  // makes a retired namespace live again, its reserve made anew.
  absl::StatusOr<NamespaceId> AddNamespace(const std::string& name, uint32_t sink_slots);
  // The namespace's last session ended: its sink reserve is given back and its sinks leave the
  // reserved slots as ordinary pages (pinned ones when unpinned). Its pages stay cached, ranked
  // by the policy like any others; AddNamespace of the name finds them again.
  void RetireNamespace(NamespaceId ns);
  // The salt that namespace's keys are chained from.
  absl::StatusOr<PageKey> NamespaceSaltOf(NamespaceId ns) const;

  // Stores a page gathered from `src` (pieces in page order, summing to page_bytes). A key that is
  // already present is not rewritten (same key, same bytes) and counts as an access. Returns the
  // tier the page is in.
  absl::StatusOr<Tier> Put(NamespaceId ns, const PageKey& key, absl::Span<const ConstBuffer> src,
                           const PutOptions& options = {});
  // Put of several pages of one namespace, each with Put's semantics, placement and its own
  // result in `results` (same size as `pages`), but the pages placed on NVMe are written in one
  // backend call (an NVMe batch pays one fdatasync and one index sync, not one per page) and
  // published together. Pages placed in memory are written at once, as by Put.
  void PutBatch(NamespaceId ns, absl::Span<const PutRequest> pages,
                absl::Span<absl::StatusOr<Tier>> results);
  // Direct puts, in two calls. Begin reserves a slot for each page of `pages` (their `src` is not
  // read), in order and with Put's placement, and pins it; the caller then writes page_bytes at
  // the `address` of each reserved page, and calls End with each page's outcome: End publishes a
  // page whose write succeeded (`src[i]`, when not empty, is written for it by the store instead:
  // pages without an address), and undoes the rest (its slot freed, the page absent). Between
  // the two calls the pages are invisible and cannot move; every Begin must be followed by one
  // End. results[i] is what Put would have returned.
  void BeginDirectPuts(NamespaceId ns, absl::Span<const PutRequest> pages, DirectPutBatch& batch);
  void EndDirectPuts(DirectPutBatch& batch, absl::Span<const absl::Status> written,
                     absl::Span<const absl::Span<const ConstBuffer>> src,
                     absl::Span<absl::StatusOr<Tier>> results);
  // Copies a page into `dst` (pieces in page order); NotFound on a miss. Returns the serving tier.
  absl::StatusOr<Tier> Get(NamespaceId ns, const PageKey& key, absl::Span<const MutableBuffer> dst);
  // Get for a whole request: every page's lookup, pin and access under one lock, one backend
  // Read per tier (an NVMe tier gets the batch's reads at once), the pins back under one lock.
  // results[i] is what Get(ns, keys[i], dsts[i]) would return; a page that fails alone fails.
  void GetBatch(NamespaceId ns, absl::Span<const PageKey> keys,
                absl::Span<const absl::Span<const MutableBuffer>> dsts,
                absl::Span<absl::StatusOr<Tier>> results);
  // Longest cached prefix of `keys`; does not count as an access.
  LookupResult LookupPrefix(NamespaceId ns, absl::Span<const PageKey> keys) const;
  // Records an access without copying (the caller served the bytes some other way).
  absl::Status Touch(NamespaceId ns, const PageKey& key);

  // The key under which the index and the policy know the page a client names `key` in `ns`
  // (the namespace and the daemon's secret are part of it). For tools that talk to a policy
  // directly, such as the simulator's Belady oracle and the policy tests.
  PageKey IndexKeyOf(NamespaceId ns, const PageKey& key) const { return IndexKey(ns, key); }

  // Pins every page of `keys` (all or nothing): pinned pages are never moved or evicted.
  absl::Status Pin(NamespaceId ns, absl::Span<const PageKey> keys);
  // Pin, also returning each page's entry (tier and slot, stable while pinned) from the same
  // lookup: batched copy paths place a whole batch with one lock and one index probe a page.
  absl::Status PinAndLocate(NamespaceId ns, absl::Span<const PageKey> keys,
                            std::vector<PageEntry>& entries);
  absl::Status Unpin(NamespaceId ns, absl::Span<const PageKey> keys);
  // Unpin after the pages' bytes were read some other way (the GPU load path), counting each as
  // an access as Touch does: the whole batch under one lock, one index probe a page.
  absl::Status UnpinAfterRead(NamespaceId ns, absl::Span<const PageKey> keys);

  // Feeds attention statistics into the page's EWMAs.
  absl::Status ReportAttention(NamespaceId ns, const PageKey& key, const AttentionSample& sample);
  // Sets the class (e.g. from the sink classifier); a sink is moved into a reserved slot when
  // one is free.
  absl::Status SetClass(NamespaceId ns, const PageKey& key, PageClass cls, ClassSource source);

  // Drops a page from every tier. FailedPrecondition if pinned.
  absl::Status Evict(NamespaceId ns, const PageKey& key);
  // Moves a page to `to`, making room there by the policy. FailedPrecondition if pinned.
  absl::Status Move(NamespaceId ns, const PageKey& key, Tier to);

  // One planner pass: every tier back under its high watermark, free room promoted into.
  PlannerReport Maintain(const MaintainOptions& options = {});

  std::optional<PageEntry> Find(NamespaceId ns, const PageKey& key) const;
  TierUsage Usage(Tier tier) const;
  StoreCounters Counters() const;
  size_t page_count() const { return index_.size(); }
  uint64_t page_bytes() const { return options_.page_bytes; }
  // "cuda" or "host-emulated": which HBM backend is live.
  absl::string_view hbm_backend() const { return hbm_backend_name_; }
  absl::string_view policy_name() const { return policy_name_; }
  bool has_tier(Tier t) const { return backends_[TierIndex(t)] != nullptr; }
  const StoreOptions& options() const { return options_; }
  // The DRAM pool as other processes may map it (the daemon passes the fd to workers for
  // zero-copy reads): slot s starts at byte s * slot_bytes. fd is -1 when DRAM is absent or not
  // a memfd-backed memory tier. The fd stays owned by the store.
  struct SharedPool {
    int fd = -1;
    uint32_t slots = 0;
    uint64_t slot_bytes = 0;
  };
  SharedPool dram_pool() const;
  // Address of `slot` in memory tier `t` as a GPU kernel reaches it (device memory for a CUDA
  // HBM pool, pinned and mapped host memory for DRAM); nullptr for a tier that is absent or not
  // memory (NVMe), host memory not registered with CUDA, or a slot out of range. For copy paths
  // outside Get/Put that move a batch of pages in one launch: valid while the page is pinned.
  std::byte* SlotAddress(Tier t, uint32_t slot) const;
  // The HBM tier's pools (empty without HBM); fixed at Create.
  const std::vector<TierPool>& hbm_pools() const { return hbm_pools_; }
  // The CUDA device of the HBM pool that holds `slot`, or -1 for a slot out of range.
  int HbmDeviceOfSlot(uint32_t slot) const;
  // Adopts pages a persistent tier recovered (called once by Create for NVMe).
  uint32_t recovered_pages() const { return recovered_pages_; }

 private:
  struct NamespaceState {
    std::string name;
    PageKey salt;
    uint32_t sink_reserved = 0;
    uint32_t sink_used = 0;
    std::vector<PageKey> sinks_in_slots;  // small: bounded by sink_reserved
    uint32_t sink_requested = 0;          // what AddNamespace asked (sink_reserved is granted)
    bool retired = false;                 // no session uses it: no reserve beyond pinned sinks
  };
  struct Counters_;

  TieredStore(const StoreOptions& options, StoreParts parts);
  absl::Status Init();

  uint64_t Now() const { return clock_->NowNs(); }
  uint32_t SemanticCapacity(Tier t) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  uint32_t SemanticUsed(Tier t) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::optional<Tier> Below(Tier t) const;
  std::optional<Tier> Above(Tier t) const;
  bool Evictable(const PageKey& key) const;

  // Returns a free slot in `t` for an ordinary page, demoting or dropping the policy's victims
  // to make one. nullopt when nothing can be moved (all pinned).
  // In HBM, the slot comes from `hbm_pool` when that pool has room.
  std::optional<uint32_t> AcquireSemanticSlot(Tier t, int depth,
                                              uint32_t hbm_pool = SlotAllocator::kAnyPool)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The HBM pool on `device` with the most free slots (kAnyPool: no device given, or no pool on
  // it).
  uint32_t HbmPoolOn(std::optional<int> device) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ReleaseSlot(Tier t, uint32_t slot, bool sink_slot, NamespaceId ns)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Moves one unpinned page; on a copy failure the page is dropped and the error counted.
  absl::Status MoveLocked(const PageKey& key, Tier to, bool into_sink_slot, int depth)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A move whose slot in `to` is taken and whose page stays pinned until its bytes have landed.
  struct PendingMove {
    PageKey key;
    PageEntry from;  // the page where it is
    Tier to = Tier::kHbm;
    uint32_t slot = 0;  // in `to`
    bool into_sink_slot = false;
    PageMeta meta;
  };
  // MoveLocked in halves, so that a planner pass copies all its pages of one route in one backend
  // call (CopyMovesLocked): BeginMoveLocked checks the page, pins it and takes its slot in `to`
  // (nullopt: it is there already); EndMoveLocked unpins it and publishes the move, or, when the
  // copy failed, frees the slot and counts the error.
  absl::StatusOr<std::optional<PendingMove>> BeginMoveLocked(const PageKey& key, Tier to,
                                                             bool into_sink_slot, int depth)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status EndMoveLocked(const PendingMove& m, const absl::Status& copied)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Copies the pages of `moves`, one backend call per (from, to) route; copied[i] is move i's.
  void CopyMovesLocked(absl::Span<const PendingMove> moves, absl::Span<absl::Status> copied)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Begins, copies (grouped by route) and ends `moves`; how many succeeded. A failed move's page
  // stays where it was; `failed` collects its key.
  uint32_t RunMovesLocked(absl::Span<const PendingMove> moves, std::vector<PageKey>& failed)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void DropLocked(const PageKey& key, const PageEntry& entry) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Maintain's displacement pass (MaintainOptions::displace).
  void DisplaceLocked(const MaintainOptions& options, PlannerReport& report)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The part of a put that needs no lock (checks, index keys, the class), filled into `out`; a
  // result when the page is refused.
  // `bytes_come_later`: a direct put (BeginDirectPuts), whose src is empty until its End.
  std::optional<absl::StatusOr<Tier>> PreparePut(NamespaceId ns, const PutRequest& page,
                                                 bool bytes_come_later, PutReservation& out) const;
  // Writes the bytes (each reservation's src) of reservations all in one tier, in one backend
  // call; written[i] is reservation i's outcome.
  void WriteReserved(NamespaceId ns, absl::Span<const PutReservation> batch,
                     absl::Span<absl::Status> written);
  // Then under mu_: a finished result (a duplicate's tier, or why not), or a slot reserved in
  // `out`.
  std::optional<absl::StatusOr<Tier>> ReservePutLocked(NamespaceId ns, PutReservation& out)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Phase 3 (mu_ held): publishes a page whose bytes landed, or undoes its reservation.
  absl::StatusOr<Tier> FinishPutLocked(const PutReservation& r, const absl::Status& written)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status CopyBetween(TierBackend& from, uint32_t from_slot, TierBackend& to, uint32_t to_slot,
                           const PageMeta& meta) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Claims a reserved sink slot for `ns`, replacing its LRU unpinned sink if the reserve is full.
  std::optional<uint32_t> AcquireSinkSlot(NamespaceId ns,
                                          uint32_t hbm_pool = SlotAllocator::kAnyPool)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void RecordAccess(PageEntry& e) const;
  PageClass ClassifyOnPut(const PutOptions& o, ClassSource* source) const;
  absl::StatusOr<PageEntry> FindOwned(NamespaceId ns, const PageKey& key) const;
  // Unpin and UnpinAfterRead: checks every pin first, then releases them (and with
  // `count_access`, records an access and tells the policy) under one lock.
  absl::Status ReleasePins(NamespaceId ns, absl::Span<const PageKey> keys, bool count_access)
      ABSL_LOCKS_EXCLUDED(mu_);
  // The index key of a client's `key` in `ns` (null stays null). Takes salts_mu_ only.
  PageKey IndexKey(NamespaceId ns, const PageKey& key) const;
  // IndexKey of every key of a batch, taking salts_mu_ once.
  void IndexKeys(NamespaceId ns, absl::Span<const PageKey> keys, std::vector<PageKey>& out) const;
  void AdoptRecovered(const RecoveredPage& page) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A sink of a retired namespace, no longer pinned, leaves its reserved slot (see
  // RetireNamespace). Does nothing for any other page.
  void LeaveRetiredReserveLocked(const PageKey& key) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const StoreOptions options_;
  const Clock* const clock_;
  std::unique_ptr<CopyEngine> copy_engine_;
  std::map<int, std::unique_ptr<CopyEngine>> hbm_engines_;  // outlive the backends
  std::array<std::unique_ptr<TierBackend>, kNumTiers> backends_;
  std::vector<TierPool> hbm_pools_;  // set by Init, then read-only
  std::string hbm_backend_name_;
  PageIndex index_;

  mutable absl::Mutex mu_;
  // PinAndLocate calls waiting for mu_: the access bookkeeping of UnpinAfterRead, which takes mu_
  // chunk after chunk for milliseconds after a large load, steps aside for them (absl::Mutex is
  // not fair, so otherwise the next load's pinning waits for all of it).
  std::atomic<int> pin_waiters_{0};
  std::unique_ptr<PlacementPolicy> policy_ ABSL_GUARDED_BY(mu_);
  // The policy's name, copied once: reading it needs no lock.
  const std::string policy_name_;
  std::array<std::optional<SlotAllocator>, kNumTiers> slots_ ABSL_GUARDED_BY(mu_);
  std::vector<NamespaceState> namespaces_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, NamespaceId> namespace_ids_ ABSL_GUARDED_BY(mu_);
  uint32_t total_sink_reserved_ ABSL_GUARDED_BY(mu_) = 0;
  uint32_t total_sink_used_ ABSL_GUARDED_BY(mu_) = 0;
  std::array<std::array<uint32_t, kNumPageClasses>, kNumTiers> pages_by_class_
      ABSL_GUARDED_BY(mu_){};
  std::vector<std::byte> bounce_ ABSL_GUARDED_BY(mu_);  // for moves between two non-host tiers
  uint32_t recovered_pages_ = 0;
  // Namespaces recovered pages belong to, by salt, until AddNamespace claims them by name: the
  // daemon registers namespaces after Create, in any order, so ids cannot be carried over.
  absl::flat_hash_map<PageKey, NamespaceId> recovered_namespaces_ ABSL_GUARDED_BY(mu_);

  std::unique_ptr<Counters_> counters_;
  // Each namespace's salt by id, readable without mu_ (LookupPrefix never takes it). Appended
  // under mu_ and then this lock (lock order: mu_, then salts_mu_).
  mutable absl::Mutex salts_mu_ ABSL_ACQUIRED_AFTER(mu_);
  std::vector<PageKey> salts_ ABSL_GUARDED_BY(salts_mu_);
};

}  // namespace kvtier
