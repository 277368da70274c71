#include "tiering/memory_tier.h"

#include <type_traits>
#include <vector>

#include "absl/strings/str_cat.h"

namespace kvtier {
namespace {

// Checks a slot id and that the scattered side adds up to exactly one page.
template <typename Buffer>
absl::Status CheckIo(uint32_t slot, uint32_t slot_count, uint64_t slot_bytes, uint64_t page_bytes,
                     absl::Span<const Buffer> bufs) {
  if (slot >= slot_count) {
    return absl::OutOfRangeError(
        absl::StrCat("slot ", slot, " out of range [0, ", slot_count, ")"));
  }
  if (page_bytes > slot_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("page of ", page_bytes, " bytes does not fit a slot of ", slot_bytes));
  }
  uint64_t total = 0;
  for (const Buffer& b : bufs) total += b.size;
  if (total != page_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("buffers hold ", total, " bytes, page has ", page_bytes));
  }
  return absl::OkStatus();
}

}  // namespace

MemoryTier::MemoryTier(Tier tier, std::unique_ptr<MemoryRegion> region, uint32_t slot_count,
                       uint64_t slot_bytes, CopyEngine* engine)
    : tier_(tier),
      region_(std::move(region)),
      slot_count_(slot_count),
      slot_bytes_(slot_bytes),
      engine_(engine) {}

absl::StatusOr<std::unique_ptr<MemoryTier>> MemoryTier::Create(Tier tier,
                                                               std::unique_ptr<MemoryRegion> region,
                                                               uint32_t slot_count,
                                                               uint64_t slot_bytes,
                                                               CopyEngine* engine) {
  if (region == nullptr || engine == nullptr) {
    return absl::InvalidArgumentError("memory tier needs a region and a copy engine");
  }
  if (slot_bytes == 0) return absl::InvalidArgumentError("slot of 0 bytes");
  if (uint64_t{slot_count} * slot_bytes > region->size()) {
    return absl::InvalidArgumentError(absl::StrCat(slot_count, " slots of ", slot_bytes,
                                                   " bytes exceed a region of ", region->size()));
  }
  if (!engine->CanAccess(region->kind())) {
    return absl::FailedPreconditionError(absl::StrCat(
        "copy engine '", engine->name(), "' cannot reach ", region->backend(), " memory"));
  }
  return std::unique_ptr<MemoryTier>(
      new MemoryTier(tier, std::move(region), slot_count, slot_bytes, engine));
}

std::byte* MemoryTier::HostSlot(uint32_t slot) const {
  if (region_->kind() != MemoryKind::kHost || slot >= slot_count_) return nullptr;
  return SlotAddress(slot);
}

// One copy-engine batch for a batch of slot I/Os: each item is checked on its own (a bad item
// fails alone), its pieces become CopyOps between the slot and the caller's buffers, and an
// engine failure fails every item that was still good.
template <typename Item, typename Buffer>
void MemoryTier::CopyBatch(absl::Span<const Item> items, absl::Span<absl::Status> results,
                           absl::Span<const Buffer> Item::*buffers) {
  std::vector<CopyOp> ops;
  for (size_t i = 0; i < items.size(); ++i) {
    const Item& item = items[i];
    const absl::Span<const Buffer> bufs = item.*buffers;
    results[i] = CheckIo(item.slot, slot_count_, slot_bytes_, item.meta.bytes, bufs);
    if (!results[i].ok()) continue;
    std::byte* slot = SlotAddress(item.slot);
    for (const Buffer& b : bufs) {
      // Read-only caller buffers are a write into the slot; writable ones are a read out of it.
      if constexpr (std::is_same_v<Buffer, ConstBuffer>) {
        ops.push_back(CopyOp{slot, b.data, b.size});
      } else {
        ops.push_back(CopyOp{b.data, slot, b.size});
      }
      slot += b.size;
    }
  }
  absl::Status s = engine_->Copy(ops);
  if (!s.ok()) {
    for (absl::Status& r : results) {
      if (r.ok()) r = s;
    }
  }
}

void MemoryTier::Write(absl::Span<const SlotWrite> writes, absl::Span<absl::Status> results) {
  CopyBatch(writes, results, &SlotWrite::src);
}

void MemoryTier::Read(absl::Span<const SlotRead> reads, absl::Span<absl::Status> results) {
  CopyBatch(reads, results, &SlotRead::dst);
}

}  // namespace kvtier
