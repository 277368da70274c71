// MemoryTier: a TierBackend over memory regions cut into fixed-size slots (the HBM and DRAM
// pools). Copies go through a CopyEngine so the same class serves host and device memory.
//
// A tier may span several pools: the HBM tier has one region per GPU, each copied by the engine
// of its own device, and pool p's slots follow pool p-1's. A batch touching several pools is split
// into one engine call per pool.
#pragma once

#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "tiering/copy_engine.h"
#include "tiering/memory_region.h"
#include "tiering/tier_backend.h"

namespace kvtier {

// One pool of a memory tier: `slots` slots at the start of `region`, copied by `engine` (which
// must reach the region and outlive the tier).
struct MemoryPool {
  std::unique_ptr<MemoryRegion> region;
  uint32_t slots = 0;
  CopyEngine* engine = nullptr;
  int device = -1;  // TierPool::device
};

class MemoryTier final : public TierBackend {
 public:
  // One pool: `region` must hold slot_count * slot_bytes; `engine` must outlive this and reach
  // the region.
  static absl::StatusOr<std::unique_ptr<MemoryTier>> Create(Tier tier,
                                                            std::unique_ptr<MemoryRegion> region,
                                                            uint32_t slot_count,
                                                            uint64_t slot_bytes,
                                                            CopyEngine* engine);
  // Several pools, each with at least one slot, in slot order.
  static absl::StatusOr<std::unique_ptr<MemoryTier>> Create(Tier tier,
                                                            std::vector<MemoryPool> pools,
                                                            uint64_t slot_bytes);

  Tier tier() const override { return tier_; }
  absl::string_view name() const override { return pools_.front().pool.region->backend(); }
  uint32_t slot_count() const override { return slot_count_; }
  uint64_t slot_bytes() const override { return slot_bytes_; }
  std::byte* HostSlot(uint32_t slot) const override;
  std::vector<TierPool> pools() const override;
  void Write(absl::Span<const SlotWrite> writes, absl::Span<absl::Status> results) override;
  void Read(absl::Span<const SlotRead> reads, absl::Span<absl::Status> results) override;

  // The first pool's region (the DRAM tier has only one: the memfd shared with workers).
  const MemoryRegion& region() const { return *pools_.front().pool.region; }
  // Device (or host) address of a slot, for copy engines that speak device memory; nullptr for a
  // slot out of range. `region` (optional) receives the pool's region.
  std::byte* SlotAddress(uint32_t slot, const MemoryRegion** region = nullptr) const;

 private:
  struct Pool {
    MemoryPool pool;
    uint32_t first_slot = 0;
  };
  MemoryTier(Tier tier, std::vector<Pool> pools, uint32_t slot_count, uint64_t slot_bytes);
  const Pool& PoolOf(uint32_t slot) const;

  template <typename Item, typename Buffer>
  void CopyBatch(absl::Span<const Item> items, absl::Span<absl::Status> results,
                 absl::Span<const Buffer> Item::*buffers);

  const Tier tier_;
  const std::vector<Pool> pools_;
  const uint32_t slot_count_;
  const uint64_t slot_bytes_;
};

}  // namespace kvtier
