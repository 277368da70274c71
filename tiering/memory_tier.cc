#include "tiering/memory_tier.h"

#include <algorithm>
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

MemoryTier::MemoryTier(Tier tier, std::vector<Pool> pools, uint32_t slot_count, uint64_t slot_bytes)
    : tier_(tier), pools_(std::move(pools)), slot_count_(slot_count), slot_bytes_(slot_bytes) {}

absl::StatusOr<std::unique_ptr<MemoryTier>> MemoryTier::Create(Tier tier,
                                                               std::unique_ptr<MemoryRegion> region,
                                                               uint32_t slot_count,
                                                               uint64_t slot_bytes,
                                                               CopyEngine* engine) {
  std::vector<MemoryPool> pools(1);
  pools[0].region = std::move(region);
  pools[0].slots = slot_count;
  pools[0].engine = engine;
  return Create(tier, std::move(pools), slot_bytes);
}

absl::StatusOr<std::unique_ptr<MemoryTier>> MemoryTier::Create(Tier tier,
                                                               std::vector<MemoryPool> pools,
                                                               uint64_t slot_bytes) {
  if (pools.empty()) return absl::InvalidArgumentError("memory tier needs at least one pool");
  if (slot_bytes == 0) return absl::InvalidArgumentError("slot of 0 bytes");
  std::vector<Pool> laid_out;
  uint64_t total = 0;
  for (size_t p = 0; p < pools.size(); ++p) {
    MemoryPool& pool = pools[p];
    if (pool.region == nullptr || pool.engine == nullptr) {
      return absl::InvalidArgumentError("memory tier needs a region and a copy engine");
    }
    if (pool.slots == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("pool ", p, " of the memory tier has no slots"));
    }
    if (uint64_t{pool.slots} * slot_bytes > pool.region->size()) {
      return absl::InvalidArgumentError(absl::StrCat(
          pool.slots, " slots of ", slot_bytes, " bytes exceed a region of ", pool.region->size()));
    }
    if (!pool.engine->CanAccess(pool.region->kind())) {
      return absl::FailedPreconditionError(absl::StrCat("copy engine '", pool.engine->name(),
                                                        "' cannot reach ", pool.region->backend(),
                                                        " memory"));
    }
    laid_out.push_back(Pool{std::move(pool), static_cast<uint32_t>(total)});
    total += laid_out.back().pool.slots;
    if (total > UINT32_MAX) {
      return absl::InvalidArgumentError("the memory tier's pools hold more than 2^32 slots");
    }
  }
  return std::unique_ptr<MemoryTier>(
      new MemoryTier(tier, std::move(laid_out), static_cast<uint32_t>(total), slot_bytes));
}

const MemoryTier::Pool& MemoryTier::PoolOf(uint32_t slot) const {
  if (pools_.size() == 1) return pools_.front();
  auto it = std::upper_bound(pools_.begin(), pools_.end(), slot,
                             [](uint32_t s, const Pool& p) { return s < p.first_slot; });
  return *(it - 1);
}

std::byte* MemoryTier::SlotAddress(uint32_t slot, const MemoryRegion** region) const {
  if (slot >= slot_count_) return nullptr;
  const Pool& p = PoolOf(slot);
  if (region != nullptr) *region = p.pool.region.get();
  return p.pool.region->data() + uint64_t{slot - p.first_slot} * slot_bytes_;
}

std::byte* MemoryTier::HostSlot(uint32_t slot) const {
  const MemoryRegion* region = nullptr;
  std::byte* address = SlotAddress(slot, &region);
  return address != nullptr && region->kind() == MemoryKind::kHost ? address : nullptr;
}

std::vector<TierPool> MemoryTier::pools() const {
  std::vector<TierPool> out;
  for (const Pool& p : pools_) out.push_back(TierPool{p.first_slot, p.pool.slots, p.pool.device});
  return out;
}

// One copy-engine batch per pool for a batch of slot I/Os: each item is checked on its own (a bad
// item fails alone), its pieces become CopyOps between the slot and the caller's buffers, and an
// engine failure fails every item of that pool that was still good.
template <typename Item, typename Buffer>
void MemoryTier::CopyBatch(absl::Span<const Item> items, absl::Span<absl::Status> results,
                           absl::Span<const Buffer> Item::*buffers) {
  std::vector<std::vector<CopyOp>> ops(pools_.size());
  std::vector<uint32_t> pool_of_item(items.size(), 0);
  for (size_t i = 0; i < items.size(); ++i) {
    const Item& item = items[i];
    const absl::Span<const Buffer> bufs = item.*buffers;
    results[i] = CheckIo(item.slot, slot_count_, slot_bytes_, item.meta.bytes, bufs);
    if (!results[i].ok()) continue;
    const Pool& pool = PoolOf(item.slot);
    pool_of_item[i] = static_cast<uint32_t>(&pool - pools_.data());
    std::byte* slot = SlotAddress(item.slot);
    for (const Buffer& b : bufs) {
      // Read-only caller buffers are a write into the slot; writable ones are a read out of it.
      if constexpr (std::is_same_v<Buffer, ConstBuffer>) {
        ops[pool_of_item[i]].push_back(CopyOp{slot, b.data, b.size});
      } else {
        ops[pool_of_item[i]].push_back(CopyOp{b.data, slot, b.size});
      }
      slot += b.size;
    }
  }
  for (size_t p = 0; p < pools_.size(); ++p) {
    if (ops[p].empty()) continue;
    absl::Status s = pools_[p].pool.engine->Copy(ops[p]);
    if (s.ok()) continue;
    for (size_t i = 0; i < items.size(); ++i) {
      if (pool_of_item[i] == p && results[i].ok()) results[i] = s;
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
