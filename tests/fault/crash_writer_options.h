// The NVMe tier the crash writer (nvme_crash_writer.cc) writes and the fault tests
// (nvme_fault_test.cc) reopen: both must build it the same way, so both take it from here.
#pragma once

#include <cstdint>
#include <string>

#include "tiering/nvme/nvme_tier.h"

namespace kvtier::testing {

inline constexpr uint64_t kCrashWriterPageBytes = 64 * 1024;
inline constexpr uint32_t kCrashWriterSlots = 48;

inline NvmeTierOptions CrashWriterOptions(const std::string& dir,
                                          uint64_t page_bytes = kCrashWriterPageBytes,
                                          uint32_t slots = kCrashWriterSlots) {
  NvmeTierOptions o;
  o.dirs = {dir + "/data0", dir + "/data1"};
  o.index_dir = dir + "/index";
  o.page_bytes = page_bytes;
  o.slots = slots;
  o.queue_depth = 8;
  o.log = [](absl::string_view) {};
  return o;
}

}  // namespace kvtier::testing
