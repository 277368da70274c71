// Time source for the store's access statistics. The daemon uses the steady clock; the trace
// simulator drives a manual clock from trace timestamps so replays are deterministic.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>

namespace kvtier {

class Clock {
 public:
  virtual ~Clock() = default;
  virtual uint64_t NowNs() const = 0;
};

class SteadyClock final : public Clock {
 public:
  uint64_t NowNs() const override {
    return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                     std::chrono::steady_clock::now().time_since_epoch())
                                     .count());
  }
  static const SteadyClock* Get() {
    static const SteadyClock clock;
    return &clock;
  }
};

// Thread-safe; time only moves when told to.
class ManualClock final : public Clock {
 public:
  uint64_t NowNs() const override { return now_ns_.load(std::memory_order_relaxed); }
  void SetNs(uint64_t ns) { now_ns_.store(ns, std::memory_order_relaxed); }
  void AdvanceNs(uint64_t ns) { now_ns_.fetch_add(ns, std::memory_order_relaxed); }

 private:
  std::atomic<uint64_t> now_ns_{1};
};

}  // namespace kvtier
