// TierBackend: where one tier keeps the bytes of its page slots.
//
// The store owns placement (which page sits in which slot of which tier); a backend only stores
// and returns slot contents. Memory tiers (HBM, DRAM) are MemoryTier; the NVMe tier implements the
// same interface over io_uring and persists what it holds. Read and Write may be called from many
// threads at once for *different* slots; the store never touches one slot from two threads.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "tiering/page_key.h"
#include "tiering/types.h"

namespace kvtier {

// What a backend may record about a page it stores (persistent tiers write it to their index).
struct PageMeta {
  PageKey key;
  NamespaceId ns = 0;
  PageClass cls = PageClass::kUnknown;
  uint64_t bytes = 0;
  // Salt of the page's namespace (NamespaceSalt of its name). Unlike `ns`, it means the same in
  // the next run: persistent tiers store it so recovered pages find their namespace again.
  PageKey ns_salt;
  // Stats snapshot for a persistent tier's index, so a restart warm-starts the ranking.
  float frequency = 0;
  uint32_t access_count = 0;
};

// One page to read or write: its slot and the scattered memory on the other side.
struct SlotWrite {
  uint32_t slot = 0;
  PageMeta meta;
  absl::Span<const ConstBuffer> src;  // gathered, in order, into the slot
};
struct SlotRead {
  uint32_t slot = 0;
  PageMeta meta;
  absl::Span<const MutableBuffer> dst;  // the slot is scattered, in order, into these
};

// A tier's slots may sit in several pools (the HBM tier: one pool per GPU); pool p holds the
// consecutive slots [first_slot, first_slot + slots), in the memory of `device`.
struct TierPool {
  uint32_t first_slot = 0;
  uint32_t slots = 0;
  // The CUDA device the pool's memory is on (for a host-emulated HBM pool, the device it stands
  // in for); -1 for host memory.
  int device = -1;
};

// A page a persistent backend found at start.
struct RecoveredPage {
  uint32_t slot = 0;
  PageMeta meta;
};

// Sees the latency of every batch a backend serves; the daemon turns these into histograms. Called
// on the thread that made the call, once per batch: implementations must be cheap and lock-free.
class IoObserver {
 public:
  virtual ~IoObserver() = default;
  virtual void OnBatch(Tier tier, bool write, size_t pages, uint64_t nanos) = 0;
};

class TierBackend {
 public:
  virtual ~TierBackend() = default;
  virtual Tier tier() const = 0;
  // Names the implementation for logs and metrics ("memfd", "host-emulated", "cuda", "io_uring").
  virtual absl::string_view name() const = 0;
  virtual uint32_t slot_count() const = 0;
  virtual uint64_t slot_bytes() const = 0;
  // Host address of a slot when the CPU can address it directly, else nullptr.
  virtual std::byte* HostSlot(uint32_t slot) const = 0;
  // The tier's pools, in slot order, covering [0, slot_count()). Default: one pool of host
  // memory (or of no memory, for NVMe).
  virtual std::vector<TierPool> pools() const { return {TierPool{0, slot_count(), -1}}; }

  // Batched I/O; `results[i]` is the outcome of item i (sizes equal). A failed item never
  // affects another. Writes are durable (for a persistent tier) when the call returns OK.
  virtual void Write(absl::Span<const SlotWrite> writes, absl::Span<absl::Status> results) = 0;
  virtual void Read(absl::Span<const SlotRead> reads, absl::Span<absl::Status> results) = 0;

  // The slot no longer holds a page (eviction or move); a persistent tier forgets it.
  virtual void Release(uint32_t /*slot*/) {}

  // Host memory that pages will be moved from and to (the DRAM pool), offered once before any
  // I/O so a backend can register it for zero-copy transfers. Optional: the default ignores it.
  virtual absl::Status RegisterHostMemory(absl::Span<const MutableBuffer> /*regions*/) {
    return absl::OkStatus();
  }

  // Persistent tiers report the pages they hold from an earlier run; memory tiers none.
  virtual absl::Status Recover(const std::function<void(const RecoveredPage&)>& /*visit*/) {
    return absl::OkStatus();
  }
};

}  // namespace kvtier
