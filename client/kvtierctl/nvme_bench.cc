#include "client/kvtierctl/nvme_bench.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "tiering/nvme/nvme_tier.h"

namespace kvtier {
namespace {

struct Args {
  std::string dir;
  uint64_t page_bytes = 2 << 20;
  uint32_t queue_depth = 32;
  double seconds = 5;
  bool json = false;
  uint64_t capacity_mib = 4096;
  uint32_t write_threads = 2;
  // Pages per Write call (each call ends with one data sync and one index sync, as a planner's
  // demotion batch would). 0: 4 * queue_depth / write_threads.
  uint32_t write_batch = 0;
  uint32_t read_threads = 0;  // 0: queue_depth (one page in flight per thread)
  bool sync_data = true;
  bool sync_index = true;
  bool sqpoll = false;
  bool register_memory = true;
};

int Usage(const char* why) {
  std::fprintf(stderr,
               "error: %s\nusage: bench nvme --dir D [--page-bytes N] [--queue-depth N] "
               "[--seconds S] [--json] [--capacity-mib N] [--write-threads N] [--write-batch N] "
               "[--no-sync] [--no-sync-data] [--no-sync-index] [--no-register] [--sqpoll]\n",
               why);
  return 2;
}

using Clock = std::chrono::steady_clock;

// One page of 4 KiB-aligned heap memory.
class AlignedPage {
 public:
  explicit AlignedPage(size_t bytes)
      : p_(static_cast<std::byte*>(std::aligned_alloc(4096, (bytes + 4095) / 4096 * 4096))) {}
  AlignedPage(AlignedPage&& o) noexcept : p_(std::exchange(o.p_, nullptr)) {}
  AlignedPage& operator=(AlignedPage&&) = delete;
  ~AlignedPage() { std::free(p_); }
  std::byte* data() const { return p_; }

 private:
  std::byte* p_;
};

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

}  // namespace

int RunBenchNvme(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string f = argv[i];
    auto value = [&]() -> const char* { return i + 1 < argc ? argv[++i] : nullptr; };
    const char* v = nullptr;
    bool ok = true;
    if (f == "--help" || f == "-h") {
      std::printf(
          "usage: bench nvme --dir D [--page-bytes N] [--queue-depth N] [--seconds S] [--json]\n"
          "  [--capacity-mib N] [--write-threads N] [--write-batch N] [--read-threads N]\n"
          "  [--no-sync] [--no-sync-data] [--no-sync-index] [--no-register] [--sqpoll]\n"
          "Writes then reads whole pages through the NVMe tier (io_uring, RocksDB index,\n"
          "crc32c) under D and prints write_gbps, read_gbps, read_p50_us, read_p99_us.\n");
      return 0;
    }
    if (f == "--dir") {
      ok = (v = value()) != nullptr;
      if (ok) a.dir = v;
    } else if (f == "--page-bytes") {
      ok = (v = value()) != nullptr && absl::SimpleAtoi(v, &a.page_bytes) && a.page_bytes > 0;
    } else if (f == "--queue-depth") {
      ok = (v = value()) != nullptr && absl::SimpleAtoi(v, &a.queue_depth) && a.queue_depth > 0;
    } else if (f == "--seconds") {
      ok = (v = value()) != nullptr && absl::SimpleAtod(v, &a.seconds) && a.seconds > 0;
    } else if (f == "--capacity-mib") {
      ok = (v = value()) != nullptr && absl::SimpleAtoi(v, &a.capacity_mib);
    } else if (f == "--write-threads") {
      ok = (v = value()) != nullptr && absl::SimpleAtoi(v, &a.write_threads) && a.write_threads > 0;
    } else if (f == "--write-batch") {
      ok = (v = value()) != nullptr && absl::SimpleAtoi(v, &a.write_batch);
    } else if (f == "--read-threads") {
      ok = (v = value()) != nullptr && absl::SimpleAtoi(v, &a.read_threads);
    } else if (f == "--json") {
      a.json = true;
    } else if (f == "--no-sync") {
      a.sync_data = a.sync_index = false;
    } else if (f == "--no-sync-data") {
      a.sync_data = false;
    } else if (f == "--no-sync-index") {
      a.sync_index = false;
    } else if (f == "--no-register") {
      a.register_memory = false;
    } else if (f == "--sqpoll") {
      a.sqpoll = true;
    } else {
      return Usage(absl::StrCat("unknown flag ", f).c_str());
    }
    if (!ok) return Usage(absl::StrCat("bad or missing value for ", f).c_str());
  }
  if (a.dir.empty()) return Usage("--dir is required");

  NvmeTierOptions o;
  o.dirs = {(std::filesystem::path(a.dir) / "kvtier-bench").string()};
  o.index_dir = (std::filesystem::path(a.dir) / "kvtier-bench-index").string();
  o.page_bytes = a.page_bytes;
  o.slots = static_cast<uint32_t>(
      std::max<uint64_t>(uint64_t{a.queue_depth} * 2, (a.capacity_mib << 20) / a.page_bytes));
  o.queue_depth = a.queue_depth;
  o.sync_data = a.sync_data;
  o.sync_index = a.sync_index;
  o.sqpoll = a.sqpoll;
  // Start from nothing: a benchmark must not inherit an earlier run's index.
  std::error_code ec;
  std::filesystem::remove_all(o.dirs[0], ec);
  std::filesystem::remove_all(o.index_dir, ec);
  absl::StatusOr<std::unique_ptr<NvmeTier>> created = NvmeTier::Create(o);
  if (!created.ok()) {
    std::fprintf(stderr, "error: %s\n", created.status().ToString().c_str());
    return 1;
  }
  NvmeTier& tier = **created;

  // Sources and read destinations live in one 4 KiB-aligned arena registered with the tier, as
  // the DRAM pool is in the daemon, so whole pages move without a copy (the tier's zero-copy
  // path); --no-register measures the staging-copy path instead. Random bytes, never zeros.
  std::mt19937_64 rng(std::random_device{}());
  constexpr int kSources = 4;
  const uint64_t page_span = (a.page_bytes + 4095) / 4096 * 4096;
  const uint32_t max_dst = a.queue_depth;
  AlignedPage arena(page_span * (kSources + max_dst));
  std::vector<std::byte*> sources;
  for (int k = 0; k < kSources; ++k) {
    sources.push_back(arena.data() + k * page_span);
    for (size_t i = 0; i + 8 <= a.page_bytes; i += 8) {
      const uint64_t v = rng();
      std::memcpy(sources.back() + i, &v, 8);
    }
  }
  std::atomic<uint32_t> next_dst{0};
  if (a.register_memory) {
    const MutableBuffer region{arena.data(), page_span * (kSources + max_dst)};
    if (absl::Status s = tier.RegisterHostMemory({region}); !s.ok()) {
      std::fprintf(stderr, "warning: %s\n", s.ToString().c_str());
    }
  }
  std::vector<PageKey> keys(o.slots);
  std::vector<uint8_t> written(o.slots, 0);

  // Write phase: each thread writes batches of queue_depth / threads pages into consecutive
  // slots, cycling over the files as fio's sequential write cycles over its file.
  const uint32_t wt = std::min(a.write_threads, a.queue_depth);
  const uint32_t wbatch =
      a.write_batch != 0 ? a.write_batch : std::max<uint32_t>(1, 4 * a.queue_depth / wt);
  std::atomic<uint64_t> next_slot{0};
  std::atomic<uint64_t> pages_written{0};
  std::atomic<uint64_t> write_errors{0};
  const auto w_start = Clock::now();
  const auto w_end = w_start + std::chrono::duration_cast<Clock::duration>(
                                   std::chrono::duration<double>(a.seconds));
  std::vector<std::thread> threads;
  for (uint32_t t = 0; t < wt; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 r(t + 1);
      std::vector<ConstBuffer> bufs(wbatch);
      std::vector<SlotWrite> writes(wbatch);
      std::vector<absl::Status> results(wbatch);
      while (Clock::now() < w_end) {
        const uint64_t first = next_slot.fetch_add(wbatch);
        for (uint32_t i = 0; i < wbatch; ++i) {
          const auto slot = static_cast<uint32_t>((first + i) % o.slots);
          tier.Release(slot);
          keys[slot] = PageKey{r() | 1, r()};
          bufs[i] = ConstBuffer{sources[(first + i) % kSources], a.page_bytes};
          writes[i] = SlotWrite{slot, PageMeta{keys[slot], 0, PageClass::kSemantic, a.page_bytes},
                                absl::MakeConstSpan(&bufs[i], 1)};
        }
        tier.Write(writes, absl::MakeSpan(results));
        for (uint32_t i = 0; i < wbatch; ++i) {
          if (results[i].ok()) {
            written[writes[i].slot] = 1;
            pages_written.fetch_add(1, std::memory_order_relaxed);
          } else {
            write_errors.fetch_add(1, std::memory_order_relaxed);
          }
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  threads.clear();
  const double w_secs = Seconds(Clock::now() - w_start);

  std::vector<uint32_t> readable;
  for (uint32_t s = 0; s < o.slots; ++s) {
    if (written[s]) readable.push_back(s);
  }
  if (readable.empty()) {
    std::fprintf(stderr, "error: no page was written\n");
    return 1;
  }
  // Read phase: queue_depth pages in flight over random slots (fio's iodepth), spread over
  // read_threads callers that each read queue_depth / read_threads pages per call. A page's
  // latency is its call's: from submission until it is verified and in the caller's memory.
  const uint32_t rt = std::min(a.read_threads != 0 ? a.read_threads : a.queue_depth, a.queue_depth);
  const uint32_t rbatch = std::max<uint32_t>(1, a.queue_depth / rt);
  std::atomic<uint64_t> pages_read{0};
  std::atomic<uint64_t> read_errors{0};
  std::vector<std::vector<float>> lat_us(rt);
  const auto r_start = Clock::now();
  const auto r_end = r_start + std::chrono::duration_cast<Clock::duration>(
                                   std::chrono::duration<double>(a.seconds));
  for (uint32_t t = 0; t < rt; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 r(1000 + t);
      std::vector<MutableBuffer> bufs;
      for (uint32_t i = 0; i < rbatch; ++i) {
        const uint32_t d = next_dst.fetch_add(1);
        bufs.push_back(MutableBuffer{arena.data() + (kSources + d) * page_span, a.page_bytes});
      }
      std::vector<SlotRead> reads(rbatch);
      std::vector<absl::Status> results(rbatch);
      lat_us[t].reserve(1 << 16);
      while (Clock::now() < r_end) {
        for (uint32_t i = 0; i < rbatch; ++i) {
          const uint32_t slot = readable[r() % readable.size()];
          reads[i] = SlotRead{slot, PageMeta{keys[slot], 0, PageClass::kSemantic, a.page_bytes},
                              absl::MakeConstSpan(&bufs[i], 1)};
        }
        const auto t0 = Clock::now();
        tier.Read(reads, absl::MakeSpan(results));
        const auto us = static_cast<float>(Seconds(Clock::now() - t0) * 1e6);
        for (uint32_t i = 0; i < rbatch; ++i) {
          lat_us[t].push_back(us);
          if (results[i].ok()) {
            pages_read.fetch_add(1, std::memory_order_relaxed);
          } else {
            read_errors.fetch_add(1, std::memory_order_relaxed);
          }
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  const double r_secs = Seconds(Clock::now() - r_start);
  std::vector<float> all;
  for (auto& v : lat_us) all.insert(all.end(), v.begin(), v.end());
  std::sort(all.begin(), all.end());
  auto pct = [&](double p) {
    return all.empty() ? 0.0 : all[std::min(all.size() - 1, static_cast<size_t>(p * all.size()))];
  };
  const double write_gbps = pages_written.load() * double(a.page_bytes) / w_secs / 1e9;
  const double read_gbps = pages_read.load() * double(a.page_bytes) / r_secs / 1e9;
  const NvmeCounters c = tier.counters();
  if (a.json) {
    std::printf(
        "{\"bench\":\"nvme\",\"dir\":\"%s\",\"page_bytes\":%llu,\"queue_depth\":%u,"
        "\"seconds\":%.3f,\"write_gbps\":%.4f,\"read_gbps\":%.4f,\"read_p50_us\":%.1f,"
        "\"read_p99_us\":%.1f,\"pages_written\":%llu,\"pages_read\":%llu,\"write_errors\":%llu,"
        "\"read_errors\":%llu,\"checksum_mismatches\":%llu,\"zero_copy_pages\":%llu,"
        "\"staged_pages\":%llu,\"sync\":%s,\"io\":\"%s\"}\n",
        a.dir.c_str(), static_cast<unsigned long long>(a.page_bytes), a.queue_depth, a.seconds,
        write_gbps, read_gbps, pct(0.50), pct(0.99),
        static_cast<unsigned long long>(pages_written.load()),
        static_cast<unsigned long long>(pages_read.load()),
        static_cast<unsigned long long>(write_errors.load()),
        static_cast<unsigned long long>(read_errors.load()),
        static_cast<unsigned long long>(c.checksum_mismatches),
        static_cast<unsigned long long>(c.zero_copy_pages),
        static_cast<unsigned long long>(c.staged_pages),
        a.sync_data && a.sync_index ? "true" : "false", tier.Describe().c_str());
  } else {
    std::printf("nvme bench on %s (%s)\n", a.dir.c_str(), tier.Describe().c_str());
    std::printf("  write_gbps  %.3f  (%llu pages)\n", write_gbps,
                static_cast<unsigned long long>(pages_written.load()));
    std::printf("  read_gbps   %.3f  (%llu pages)\n", read_gbps,
                static_cast<unsigned long long>(pages_read.load()));
    std::printf("  read_p50_us %.1f\n  read_p99_us %.1f\n", pct(0.50), pct(0.99));
  }
  std::filesystem::remove_all(o.dirs[0], ec);
  std::filesystem::remove_all(o.index_dir, ec);
  return write_errors.load() + read_errors.load() == 0 ? 0 : 1;
}

}  // namespace kvtier
