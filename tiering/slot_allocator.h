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
  explicit SlotAllocator(uint32_t capacity) : in_use_(capacity, false) {
    free_.reserve(capacity);
    // Hand out low slot ids first: deterministic placement makes tests and dumps readable.
    for (uint32_t i = capacity; i > 0; --i) free_.push_back(i - 1);
  }

  uint32_t capacity() const { return static_cast<uint32_t>(in_use_.size()); }
  uint32_t used() const { return capacity() - static_cast<uint32_t>(free_.size()); }
  uint32_t free() const { return static_cast<uint32_t>(free_.size()); }

  std::optional<uint32_t> Allocate() {
    if (free_.empty()) return std::nullopt;
    const uint32_t slot = free_.back();
    free_.pop_back();
    in_use_[slot] = true;
    return slot;
  }

  // Claims a specific slot (recovery of a persistent tier). False if taken or out of range.
  bool Claim(uint32_t slot) {
    if (slot >= capacity() || in_use_[slot]) return false;
    for (auto it = free_.begin(); it != free_.end(); ++it) {
      if (*it == slot) {
        *it = free_.back();
        free_.pop_back();
        break;
      }
    }
    in_use_[slot] = true;
    return true;
  }

  // False (and nothing changes) for a slot that is out of range or not allocated: a double free
  // is a bug the caller must hear about rather than a corrupted free list.
  bool Free(uint32_t slot) {
    if (slot >= capacity() || !in_use_[slot]) return false;
    in_use_[slot] = false;
    free_.push_back(slot);
    return true;
  }

 private:
  std::vector<uint32_t> free_;
  std::vector<bool> in_use_;
};

}  // namespace kvtier
