// MemoryTier: a TierBackend over one MemoryRegion cut into fixed-size slots (the HBM and DRAM
// pools). Copies go through the CopyEngine so the same class serves host and device memory.
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "tiering/copy_engine.h"
#include "tiering/memory_region.h"
#include "tiering/tier_backend.h"

namespace kvtier {

class MemoryTier final : public TierBackend {
 public:
  // `region` must hold slot_count * slot_bytes; `engine` must outlive this and reach the region.
  static absl::StatusOr<std::unique_ptr<MemoryTier>> Create(Tier tier,
                                                            std::unique_ptr<MemoryRegion> region,
                                                            uint32_t slot_count,
                                                            uint64_t slot_bytes,
                                                            CopyEngine* engine);

  Tier tier() const override { return tier_; }
  absl::string_view name() const override { return region_->backend(); }
  uint32_t slot_count() const override { return slot_count_; }
  uint64_t slot_bytes() const override { return slot_bytes_; }
  std::byte* HostSlot(uint32_t slot) const override;
  void Write(absl::Span<const SlotWrite> writes, absl::Span<absl::Status> results) override;
  void Read(absl::Span<const SlotRead> reads, absl::Span<absl::Status> results) override;

  const MemoryRegion& region() const { return *region_; }
  // Device (or host) address of a slot, for copy engines that speak device memory.
  std::byte* SlotAddress(uint32_t slot) const { return region_->data() + slot * slot_bytes_; }

 private:
  MemoryTier(Tier tier, std::unique_ptr<MemoryRegion> region, uint32_t slot_count,
             uint64_t slot_bytes, CopyEngine* engine);

  template <typename Item, typename Buffer>
  void CopyBatch(absl::Span<const Item> items, absl::Span<absl::Status> results,
                 absl::Span<const Buffer> Item::*buffers);

  const Tier tier_;
  const std::unique_ptr<MemoryRegion> region_;
  const uint32_t slot_count_;
  const uint64_t slot_bytes_;
  CopyEngine* const engine_;
};

}  // namespace kvtier
