// SlotAllocator: O(1) allocation of fixed-size slot ids from a free stack built once.
//
// No allocation after construction: the free stack is sized to capacity up front, which is what
// keeps the page path free of malloc. Not thread-safe: the owner (TieredStore) serializes it.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

namespace kvtier {

class SlotAllocator {
 public:
  // position_[slot] is the slot's index in free_ while it is free, kInUse while allocated, so
  // Claim (one call per page a persistent tier recovers) is O(1) like the rest.
  explicit SlotAllocator(uint32_t capacity) : position_(capacity) {
    free_.reserve(capacity);
    // Hand out low slot ids first: deterministic placement makes tests and dumps readable.
    for (uint32_t i = capacity; i > 0; --i) {
      position_[i - 1] = static_cast<uint32_t>(free_.size());
      free_.push_back(i - 1);
    }
  }

  uint32_t capacity() const { return static_cast<uint32_t>(position_.size()); }
  uint32_t used() const { return capacity() - static_cast<uint32_t>(free_.size()); }
  uint32_t free() const { return static_cast<uint32_t>(free_.size()); }

  std::optional<uint32_t> Allocate() {
    if (free_.empty()) return std::nullopt;
    const uint32_t slot = free_.back();
    free_.pop_back();
    position_[slot] = kInUse;
    return slot;
  }

  // Claims a specific slot (recovery of a persistent tier). False if taken or out of range.
  bool Claim(uint32_t slot) {
    if (slot >= capacity() || position_[slot] == kInUse) return false;
    const uint32_t last = free_.back();
    free_[position_[slot]] = last;
    position_[last] = position_[slot];
    free_.pop_back();
    position_[slot] = kInUse;
    return true;
  }

  // False (and nothing changes) for a slot that is out of range or not allocated: a double free
  // is a bug the caller must hear about rather than a corrupted free list.
  bool Free(uint32_t slot) {
    if (slot >= capacity() || position_[slot] != kInUse) return false;
    position_[slot] = static_cast<uint32_t>(free_.size());
    free_.push_back(slot);
    return true;
  }

 private:
  static constexpr uint32_t kInUse = UINT32_MAX;
  std::vector<uint32_t> free_;
  std::vector<uint32_t> position_;
};

}  // namespace kvtier
