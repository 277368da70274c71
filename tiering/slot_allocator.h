// SlotAllocator: O(1) allocation of fixed-size slot ids from free stacks built once.
//
// A tier's slots may sit in several pools (the HBM tier has one pool per GPU): pool p owns the
// consecutive slots [first(p), first(p) + size(p)) and keeps its own free stack, so a caller can
// ask for a slot in a given pool (a page stored by a worker on GPU 1 lands in GPU 1's pool when
// it has room). Without a preference, or when the preferred pool is full, the slot comes from
// the pool with the most free slots, which keeps the pools evenly filled.
//
// No allocation after construction: the free stacks are sized to capacity up front, which is what
// keeps the page path free of malloc. Not thread-safe: the owner (TieredStore) serializes it.
#pragma once

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <optional>
#include <vector>

#include "absl/types/span.h"

namespace kvtier {

class SlotAllocator {
 public:
  // One pool of `capacity` slots.
  explicit SlotAllocator(uint32_t capacity) : SlotAllocator({capacity}) {}
  // Pools of the given sizes, numbered in order, their slots consecutive. At least one pool.
  explicit SlotAllocator(absl::Span<const uint32_t> pool_sizes) {
    uint32_t total = 0;
    for (uint32_t n : pool_sizes) {
      first_.push_back(total);
      total += n;
    }
    if (first_.empty()) first_.push_back(0);
    first_.push_back(total);
    position_.resize(total);
    free_.resize(pool_count());
    for (uint32_t p = 0; p < pool_count(); ++p) {
      std::vector<uint32_t>& stack = free_[p];
      stack.reserve(pool_size(p));
      // Hand out low slot ids first: deterministic placement makes tests and dumps readable.
      for (uint32_t s = first_[p + 1]; s > first_[p]; --s) {
        position_[s - 1] = static_cast<uint32_t>(stack.size());
        stack.push_back(s - 1);
      }
    }
    free_total_ = total;
  }
  SlotAllocator(std::initializer_list<uint32_t> pool_sizes)
      : SlotAllocator(absl::MakeConstSpan(pool_sizes.begin(), pool_sizes.size())) {}

  uint32_t capacity() const { return first_.back(); }
  uint32_t used() const { return capacity() - free_total_; }
  uint32_t free() const { return free_total_; }

  uint32_t pool_count() const { return static_cast<uint32_t>(first_.size() - 1); }
  uint32_t pool_size(uint32_t pool) const { return first_[pool + 1] - first_[pool]; }
  uint32_t pool_free(uint32_t pool) const { return static_cast<uint32_t>(free_[pool].size()); }
  uint32_t pool_used(uint32_t pool) const { return pool_size(pool) - pool_free(pool); }
  // The pool that owns `slot` (which must be < capacity()).
  uint32_t PoolOf(uint32_t slot) const {
    if (pool_count() == 1) return 0;
    return static_cast<uint32_t>(std::upper_bound(first_.begin(), first_.end(), slot) -
                                 first_.begin() - 1);
  }

  // No pool preferred.
  static constexpr uint32_t kAnyPool = UINT32_MAX;

  // A free slot, from `preferred_pool` when it has one (kAnyPool, or any out-of-range pool, is no
  // preference), else from the pool with the most free slots. nullopt when every pool is full.
  std::optional<uint32_t> Allocate(uint32_t preferred_pool = kAnyPool) {
    if (free_total_ == 0) return std::nullopt;
    uint32_t pool = 0;
    if (preferred_pool < pool_count() && !free_[preferred_pool].empty()) {
      pool = preferred_pool;
    } else {
      for (uint32_t p = 1; p < pool_count(); ++p) {
        if (free_[p].size() > free_[pool].size()) pool = p;
      }
    }
    std::vector<uint32_t>& stack = free_[pool];
    const uint32_t slot = stack.back();
    stack.pop_back();
    position_[slot] = kInUse;
    --free_total_;
    return slot;
  }

  // Claims a specific slot (recovery of a persistent tier). False if taken or out of range.
  bool Claim(uint32_t slot) {
    if (slot >= capacity() || position_[slot] == kInUse) return false;
    std::vector<uint32_t>& stack = free_[PoolOf(slot)];
    const uint32_t last = stack.back();
    stack[position_[slot]] = last;
    position_[last] = position_[slot];
    stack.pop_back();
    position_[slot] = kInUse;
    --free_total_;
    return true;
  }

  // False (and nothing changes) for a slot that is out of range or not allocated: a double free
  // is a bug the caller must hear about rather than a corrupted free list.
  bool Free(uint32_t slot) {
    if (slot >= capacity() || position_[slot] != kInUse) return false;
    std::vector<uint32_t>& stack = free_[PoolOf(slot)];
    position_[slot] = static_cast<uint32_t>(stack.size());
    stack.push_back(slot);
    ++free_total_;
    return true;
  }

 private:
  static constexpr uint32_t kInUse = UINT32_MAX;
  std::vector<uint32_t> first_;              // pool p: slots [first_[p], first_[p + 1])
  std::vector<std::vector<uint32_t>> free_;  // per pool
  std::vector<uint32_t> position_;           // index in its pool's free stack, or kInUse
  uint32_t free_total_ = 0;
};

}  // namespace kvtier
