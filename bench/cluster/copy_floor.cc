// The CPU floor of a verified same-host page fetch on this machine, beside what ucx_perftest's
// shared-memory get measures: one core, 2 MiB pages, a 64 MiB set of source pages (as
// `kvtierctl bench cluster` cycles 32 pages), 8 staging slots, 16 destination blocks.
// Not built by CMake (a measurement behind bench/RESULTS.md, Session 13):
//   g++ -O2 -o /tmp/copy_floor bench/cluster/copy_floor.cc -lxxhash && /tmp/copy_floor
#include <xxhash.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

int main() {
  using Clock = std::chrono::steady_clock;
  const size_t kPage = 2 << 20;
  const int kSources = 32, kBlocks = 16, kSlots = 8, kIters = 400;
  std::vector<char> src(kPage * kSources), dst(kPage * kBlocks), staging(kPage * kSlots);
  for (size_t i = 0; i < src.size(); ++i) src[i] = static_cast<char>(i * 7);
  std::memset(dst.data(), 1, dst.size());
  std::memset(staging.data(), 1, staging.size());
  auto gb_s = [&](Clock::time_point t0) {
    return static_cast<double>(kPage) * kIters /
           std::chrono::duration<double>(Clock::now() - t0).count() / 1e9;
  };
  uint64_t h = 0;
  auto t = Clock::now();
  for (int i = 0; i < kIters; ++i) std::memcpy(dst.data(), src.data(), kPage);
  std::printf("memcpy of one 2 MiB buffer, again and again (ucx_perftest's case): %.1f GB/s\n",
              gb_s(t));
  t = Clock::now();
  for (int i = 0; i < kIters; ++i) {
    std::memcpy(staging.data() + (i % kSlots) * kPage, src.data() + (i % kSources) * kPage, kPage);
  }
  std::printf("memcpy pool page -> staging slot (the holder's copy): %.1f GB/s\n", gb_s(t));
  t = Clock::now();
  for (int i = 0; i < kIters; ++i) {
    std::memcpy(dst.data() + (i % kBlocks) * kPage, staging.data() + (i % kSlots) * kPage, kPage);
  }
  std::printf("memcpy staging slot -> block (the reader's get): %.1f GB/s\n", gb_s(t));
  t = Clock::now();
  for (int i = 0; i < kIters; ++i)
    h += XXH3_64bits_withSeed(dst.data() + (i % kBlocks) * kPage, kPage, i);
  std::printf("XXH3 over a block (the reader's check): %.1f GB/s\n", gb_s(t));
  t = Clock::now();
  for (int i = 0; i < kIters; ++i) {
    char* slot = staging.data() + (i % kSlots) * kPage;
    char* block = dst.data() + (i % kBlocks) * kPage;
    std::memcpy(slot, src.data() + (i % kSources) * kPage, kPage);
    std::memcpy(block, slot, kPage);
    h += XXH3_64bits_withSeed(block, kPage, i);
  }
  std::printf("all three in sequence on one core: %.2f GB/s (%llx)\n", gb_s(t),
              static_cast<unsigned long long>(h));
}
