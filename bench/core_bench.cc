// Core micro-benchmarks: index lookups per second, and page movement DRAM <-> (emulated) HBM
// through the real TieredStore against plain memcpy of the same bytes, measured in the same run.
// After Google Benchmark's table it prints JSON lines with the ratios, among them:
//   {"bench":"core","lookup1_keys_per_s":..,"move_gbps":..,"move_vs_memcpy":..,"putget_vs_memcpy":..}
#include <benchmark/benchmark.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <random>
#include <string>
#include <thread>

#include "absl/functional/function_ref.h"
#include "tiering/nvme/nvme_tier.h"
#include "tiering/policy/policy_factory.h"
#include "tiering/tiered_store.h"

namespace kvtier {
namespace {

constexpr uint64_t kPageBytes = 2u << 20;  // Llama-3-8B, bf16, 16 tokens a page
constexpr uint32_t kPages = 64;            // 128 MiB per tier: far beyond the caches

std::unique_ptr<TieredStore> MakeStore(uint32_t hbm, uint32_t dram, uint64_t page_bytes) {
  StoreOptions o;
  o.page_bytes = page_bytes;
  o.hbm.slots = hbm;
  o.dram.slots = dram;
  o.hbm_backend = HbmBackend::kHostEmulated;
  return *TieredStore::Create(o);
}

void FillRandom(std::vector<std::byte>& v, uint64_t seed) {
  std::mt19937_64 g(seed);
  for (size_t i = 0; i + 8 <= v.size(); i += 8) {
    const uint64_t x = g();
    std::memcpy(&v[i], &x, 8);
  }
}

// Stores one chain of `pages` 64-byte pages in `ns`, page i with options_of(i); returns its keys.
std::vector<PageKey> PutChain(TieredStore& store, NamespaceId ns, uint64_t pages,
                              absl::FunctionRef<PutOptions(uint64_t)> options_of) {
  std::vector<PageKey> keys;
  std::vector<std::byte> page(64, std::byte{1});
  const ConstBuffer src{page.data(), page.size()};
  PageKey parent;
  for (uint64_t i = 0; i < pages; ++i) {
    parent = ChainKeyFromId(*store.NamespaceSaltOf(ns), parent, i);
    keys.push_back(parent);
    (void)store.Put(ns, parent, absl::MakeConstSpan(&src, 1), options_of(i));
  }
  return keys;
}

// LookupPrefix of a batch of keys on an index of 100k pages.
void BM_IndexLookupPrefix(benchmark::State& state) {
  const size_t batch = static_cast<size_t>(state.range(0));
  auto store = MakeStore(0, 100'000, 64);
  const NamespaceId ns = *store->AddNamespace("bench", 0);
  const std::vector<PageKey> keys = PutChain(*store, ns, 100'000, [](uint64_t) {
    PutOptions o;
    o.position = 1;
    return o;
  });
  std::mt19937_64 rng(1);
  for (auto _ : state) {
    const size_t start = rng() % (keys.size() - batch);
    LookupResult r = store->LookupPrefix(ns, absl::MakeConstSpan(keys).subspan(start, batch));
    benchmark::DoNotOptimize(r.prefix_pages);
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * batch));
}
BENCHMARK(BM_IndexLookupPrefix)->Arg(1)->Arg(256)->Arg(8192);

// A GPU worker's 128k-token load, the store's share of it: PinAndLocate of 8192 pages in chunks
// as daemon/gpu_worker_memory.cc pins them, then UnpinAfterRead of all (the accesses counted).
// Argument 1: the same with a second thread doing 8192-key LookupPrefix calls all the while, as
// the next request's Lookup overlaps the last load's bookkeeping; the counter `lookup_us` is the
// mean LookupPrefix time seen by that thread.
void BM_GpuLoadPins(benchmark::State& state) {
  constexpr uint32_t kLoadPages = 8192;
  auto store = MakeStore(kLoadPages, 0, 64);
  const NamespaceId ns = *store->AddNamespace("bench", 0);
  const std::vector<PageKey> keys = PutChain(*store, ns, kLoadPages, [](uint64_t i) {
    PutOptions o;
    o.position = static_cast<uint32_t>(i);
    o.tier = Tier::kHbm;
    return o;
  });
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> lookups{0}, lookup_ns{0};
  std::thread looker;
  if (state.range(0) == 1) {
    looker = std::thread([&] {
      while (!stop.load(std::memory_order_relaxed)) {
        const auto t0 = std::chrono::steady_clock::now();
        LookupResult r = store->LookupPrefix(ns, keys);
        benchmark::DoNotOptimize(r.prefix_pages);
        lookup_ns.fetch_add(static_cast<uint64_t>(
            std::chrono::nanoseconds(std::chrono::steady_clock::now() - t0).count()));
        lookups.fetch_add(1);
      }
    });
  }
  std::vector<PageEntry> located;
  for (auto _ : state) {
    for (size_t lo = 0, chunk = 128; lo < keys.size();
         lo += chunk, chunk = std::min<size_t>(2 * chunk, 1024)) {
      const size_t n = std::min(chunk, keys.size() - lo);
      if (!store->PinAndLocate(ns, absl::MakeConstSpan(keys).subspan(lo, n), located).ok()) {
        state.SkipWithError("PinAndLocate failed");
        break;
      }
    }
    if (!store->UnpinAfterRead(ns, keys).ok()) state.SkipWithError("UnpinAfterRead failed");
  }
  stop = true;
  if (looker.joinable()) looker.join();
  if (lookups.load() > 0) {
    state.counters["lookup_us"] = static_cast<double>(lookup_ns.load()) / lookups.load() / 1e3;
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * kLoadPages));
}
BENCHMARK(BM_GpuLoadPins)->Arg(0)->Arg(1)->UseRealTime()->Unit(benchmark::kMillisecond);

// One page HBM -> DRAM and back through TieredStore::Move (slot copies via the CPU copy engine).
void BM_StoreMoveHbmDram(benchmark::State& state) {
  auto store = MakeStore(kPages, kPages, kPageBytes);
  const NamespaceId ns = *store->AddNamespace("bench", 0);
  std::vector<std::byte> page(kPageBytes);
  std::vector<PageKey> keys;
  for (uint32_t i = 0; i < kPages / 2; ++i) {
    FillRandom(page, i);
    const PageKey k{7, i + 1};
    const ConstBuffer src{page.data(), page.size()};
    PutOptions o;
    o.position = 1;
    o.tier = Tier::kHbm;
    (void)store->Put(ns, k, absl::MakeConstSpan(&src, 1), o);
    keys.push_back(k);
  }
  size_t i = 0;
  for (auto _ : state) {
    const PageKey& k = keys[i++ % keys.size()];
    benchmark::DoNotOptimize(store->Move(ns, k, Tier::kDram));
    benchmark::DoNotOptimize(store->Move(ns, k, Tier::kHbm));
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * 2 * kPageBytes));
}
BENCHMARK(BM_StoreMoveHbmDram)->UseRealTime();

// Worker buffer -> store (Put) and store -> worker buffer (Get), each page in 64 scattered
// pieces of 32 KiB as vLLM lays it out. Pages rotate through 32 slots and a 128 MiB worker arena
// so that, like the memcpy baseline, every copy goes to and from DRAM rather than the caches.
void BM_StorePutGetScattered(benchmark::State& state) {
  auto store = MakeStore(kPages, kPages, kPageBytes);
  const NamespaceId ns = *store->AddNamespace("bench", 0);
  std::vector<std::byte> worker(kPageBytes * kPages);
  FillRandom(worker, 3);
  constexpr size_t kPiece = 32 * 1024;
  constexpr size_t kPieces = kPageBytes / kPiece;
  constexpr uint32_t kLive = kPages / 2;
  // Piece j of worker page p sits at (j * kPages + p) * kPiece: a stride of kPages pieces.
  auto pieces_of = [&](uint32_t p, auto* out) {
    out->clear();
    for (size_t j = 0; j < kPieces; ++j) {
      out->push_back({worker.data() + (j * kPages + p) * kPiece, kPiece});
    }
  };
  std::vector<ConstBuffer> src;
  std::vector<MutableBuffer> dst;
  uint64_t id = 1;
  for (auto _ : state) {
    const uint32_t p = static_cast<uint32_t>(id % kLive);
    pieces_of(p, &src);
    pieces_of(p + kLive, &dst);
    const PageKey k{9, id};
    if (id > kLive) (void)store->Evict(ns, PageKey{9, id - kLive});
    PutOptions o;
    o.position = 1;
    benchmark::DoNotOptimize(store->Put(ns, k, src, o));
    benchmark::DoNotOptimize(store->Get(ns, k, dst));
    ++id;
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * 2 * kPageBytes));
}
BENCHMARK(BM_StorePutGetScattered)->UseRealTime();

// The baseline: memcpy of the same bytes with the same address pattern as the store's moves.
// The store's free-slot stack hands a just-freed slot out again, so each page copy goes from a
// cold page to a cache-warm slot and back out to a cold page; the baseline does exactly that.
void BM_Memcpy(benchmark::State& state) {
  std::vector<std::byte> cold(kPageBytes * kPages), warm(kPageBytes);
  FillRandom(cold, 1);
  FillRandom(warm, 2);
  size_t i = 0;
  for (auto _ : state) {
    const size_t page = i++ % (kPages / 2);
    std::memcpy(warm.data(), cold.data() + page * kPageBytes, kPageBytes);
    std::memcpy(cold.data() + (page + kPages / 2) * kPageBytes, warm.data(), kPageBytes);
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * 2 * kPageBytes));
}
BENCHMARK(BM_Memcpy)->UseRealTime();

// The baseline for Move: a page out to a warm slot and back into the slot it came from (the
// store's LIFO free list returns the just-vacated HBM slot).
void BM_MemcpyRoundTrip(benchmark::State& state) {
  std::vector<std::byte> cold(kPageBytes * kPages), warm(kPageBytes);
  FillRandom(cold, 1);
  FillRandom(warm, 2);
  size_t i = 0;
  for (auto _ : state) {
    std::byte* page = cold.data() + (i++ % (kPages / 2)) * kPageBytes;
    std::memcpy(warm.data(), page, kPageBytes);
    std::memcpy(page, warm.data(), kPageBytes);
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * 2 * kPageBytes));
}
BENCHMARK(BM_MemcpyRoundTrip)->UseRealTime();

// A placement policy's own cost, without the store around it: 100k pages in chains of 32
// tracked in HBM; per iteration one access (a hit: OnAccess) along a random chain's prefix, read
// in order as a request reads it, and every fourth
// iteration a miss as well (LeastValuable(1), OnRemove of the victim, OnInsert of a new page).
// Argument: index into kPolicyBenchNames. The store calls the policy under its lock, so this
// is the policy's share of every Get/Put/Touch.
constexpr const char* kPolicyBenchNames[] = {"lru", "kvtier", "arc", "s3fifo", "wtinylfu"};

void BM_PolicyAccess(benchmark::State& state) {
  const char* name = kPolicyBenchNames[state.range(0)];
  state.SetLabel(name);
  std::unique_ptr<PlacementPolicy> policy = *MakePolicy(name);
  constexpr uint32_t kTracked = 100'000, kChain = 32;
  std::mt19937_64 rng(7);
  std::vector<PageKey> keys(kTracked);
  std::vector<PageEntry> entries(kTracked);
  uint64_t now = 1'000'000'000;
  auto fresh = [&](uint32_t i) {
    keys[i] = PageKey{rng() | 1, rng()};
    PageEntry& e = entries[i];
    e = PageEntry{};
    e.parent = i % kChain == 0 ? PageKey{} : keys[i - 1];
    e.position = i % kChain;
    e.tier = Tier::kHbm;
    e.state = PageState::kReady;
    e.stats.tokens = 16;
    e.stats.frequency = 1;
    e.stats.access_count = 1;
    e.stats.last_access_ns = e.stats.insert_ns = now;
  };
  for (uint32_t i = 0; i < kTracked; ++i) {
    fresh(i);
    now += 1'000'000;
    policy->OnInsert(keys[i], entries[i]);
  }
  absl::flat_hash_map<PageKey, uint32_t> slot_of;
  for (uint32_t i = 0; i < kTracked; ++i) slot_of[keys[i]] = i;
  std::vector<PageKey> victims;
  uint64_t n = 0;
  uint32_t i = 0, end = 0;
  for (auto _ : state) {
    now += 1'000'000;
    // Requests read a random chain's prefix in order, as an engine's lookups do.
    if (i == end) {
      i = static_cast<uint32_t>(rng() % kTracked) / kChain * kChain;
      end = i + 1 + static_cast<uint32_t>(rng() % kChain);
    }
    const uint32_t page = i++;
    PageEntry& e = entries[page];
    e.stats.last_access_ns = now;
    e.stats.frequency += 1;
    ++e.stats.access_count;
    policy->OnAccess(keys[page], e);
    if (++n % 4 == 0) {
      victims.clear();
      policy->LeastValuable(
          Tier::kHbm, 1, [](const PageKey&) { return true; }, victims);
      if (!victims.empty()) {
        const uint32_t v = slot_of[victims.front()];
        policy->OnRemove(keys[v], entries[v]);
        slot_of.erase(keys[v]);
        fresh(v);
        slot_of[keys[v]] = v;
        policy->OnInsert(keys[v], entries[v]);
      }
    }
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()));
}
BENCHMARK(BM_PolicyAccess)->DenseRange(0, 4);

constexpr uint64_t kNvmePage = 64 * 1024;
constexpr uint32_t kNvmeBatch = 256;

// A TieredStore over a real NVMe tier (io_uring, O_DIRECT, fdatasync and RocksDB index sync per
// write batch) of 2 x kNvmeBatch slots of kNvmePage, in a fresh directory under $KVTIER_BENCH_DIR
// (default /tmp) that is removed with it; no HBM tier, the DRAM tier as `dram` says.
class NvmeBenchStore {
 public:
  // nullptr, with `state` skipped and the reason given, when the tier cannot be made.
  static std::unique_ptr<NvmeBenchStore> Make(benchmark::State& state, const TierOptions& dram) {
    const char* root = std::getenv("KVTIER_BENCH_DIR");
    std::string dir = std::string(root != nullptr ? root : "/tmp") + "/kvtier-bench-nvme-XXXXXX";
    if (::mkdtemp(dir.data()) == nullptr) {
      state.SkipWithError("mkdtemp failed");
      return nullptr;
    }
    std::unique_ptr<NvmeBenchStore> made(new NvmeBenchStore(dir));
    NvmeTierOptions no;
    no.dirs = {dir};
    no.page_bytes = kNvmePage;
    no.slots = 2 * kNvmeBatch;
    auto nvme = NvmeTier::Create(no);
    if (!nvme.ok()) {
      state.SkipWithError(std::string(nvme.status().message()).c_str());
      return nullptr;
    }
    StoreOptions o;
    o.page_bytes = kNvmePage;
    o.hbm.slots = 0;
    o.dram = dram;
    o.hbm_backend = HbmBackend::kHostEmulated;
    StoreParts parts;
    parts.nvme = *std::move(nvme);
    made->store = *TieredStore::Create(o, std::move(parts));
    made->ns = *made->store->AddNamespace("bench", 0);
    return made;
  }
  ~NvmeBenchStore() {
    store.reset();  // closes the tier's files before they are removed
    std::filesystem::remove_all(dir_);
  }
  NvmeBenchStore(const NvmeBenchStore&) = delete;
  NvmeBenchStore& operator=(const NvmeBenchStore&) = delete;

  // Makes `pages` kNvmeBatch requests for the random bytes, with keys not used before, placed on
  // `tier`; `results` is sized for them.
  void NextBatch(Tier tier) {
    for (uint32_t i = 0; i < kNvmeBatch; ++i) {
      src_[i] = ConstBuffer{data_.data() + i * kNvmePage, kNvmePage};
      pages[i].key = PageKey{11, next_id_++};
      pages[i].src = absl::MakeConstSpan(&src_[i], 1);
      pages[i].options.tier = tier;
      pages[i].options.position = i + 1;
    }
  }

  std::unique_ptr<TieredStore> store;
  NamespaceId ns = 0;
  std::vector<PutRequest> pages = std::vector<PutRequest>(kNvmeBatch);
  std::vector<absl::StatusOr<Tier>> results = std::vector<absl::StatusOr<Tier>>(kNvmeBatch);

 private:
  explicit NvmeBenchStore(std::string dir) : dir_(std::move(dir)) { FillRandom(data_, 5); }
  std::string dir_;
  std::vector<std::byte> data_ = std::vector<std::byte>(kNvmePage * kNvmeBatch);
  std::vector<ConstBuffer> src_ = std::vector<ConstBuffer>(kNvmeBatch);
  uint64_t next_id_ = 1;
};

// 256 pages stored to the NVMe tier of an NvmeBenchStore: Arg 0 stores them with one Put each
// (the dispatcher before PutBatch), Arg 1 with one PutBatch of 256. Items are pages.
void BM_StoreNvme256(benchmark::State& state) {
  constexpr uint32_t kBatch = kNvmeBatch;
  auto bench = NvmeBenchStore::Make(state, TierOptions{.slots = 1});
  if (bench == nullptr) return;
  TieredStore* store = bench->store.get();
  const NamespaceId ns = bench->ns;
  std::vector<PutRequest>& pages = bench->pages;
  std::vector<absl::StatusOr<Tier>>& results = bench->results;
  for (auto _ : state) {
    bench->NextBatch(Tier::kNvme);
    if (state.range(0) == 0) {
      for (uint32_t i = 0; i < kBatch; ++i) {
        results[i] = store->Put(ns, pages[i].key, pages[i].src, pages[i].options);
      }
    } else {
      store->PutBatch(ns, pages, absl::MakeSpan(results));
    }
    state.PauseTiming();
    for (uint32_t i = 0; i < kBatch; ++i) {
      if (!results[i].ok()) state.SkipWithError(std::string(results[i].status().message()).c_str());
      (void)store->Evict(ns, pages[i].key);
    }
    state.ResumeTiming();
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * kBatch));
}
BENCHMARK(BM_StoreNvme256)->Arg(0)->Arg(1)->UseRealTime()->Unit(benchmark::kMillisecond);

// 256 pages loaded from the NVMe tier of an NvmeBenchStore: Arg 0 reads them with one Get each
// (the dispatcher before GetBatch), Arg 1 with one GetBatch of 256. Items are pages.
void BM_LoadNvme256(benchmark::State& state) {
  constexpr uint32_t kBatch = kNvmeBatch;
  auto bench = NvmeBenchStore::Make(state, TierOptions{.slots = 1});
  if (bench == nullptr) return;
  TieredStore* store = bench->store.get();
  const NamespaceId ns = bench->ns;
  bench->NextBatch(Tier::kNvme);
  store->PutBatch(ns, bench->pages, absl::MakeSpan(bench->results));
  std::vector<PageKey> keys;
  for (const PutRequest& p : bench->pages) keys.push_back(p.key);
  std::vector<std::byte> out(kNvmePage * kBatch);
  std::vector<MutableBuffer> bufs;
  std::vector<absl::Span<const MutableBuffer>> dsts;
  for (uint32_t i = 0; i < kBatch; ++i) bufs.push_back({out.data() + i * kNvmePage, kNvmePage});
  for (const MutableBuffer& b : bufs) dsts.push_back(absl::MakeConstSpan(&b, 1));
  std::vector<absl::StatusOr<Tier>>& results = bench->results;
  for (auto _ : state) {
    if (state.range(0) == 0) {
      for (uint32_t i = 0; i < kBatch; ++i) results[i] = store->Get(ns, keys[i], dsts[i]);
    } else {
      store->GetBatch(ns, keys, dsts, absl::MakeSpan(results));
    }
    for (uint32_t i = 0; i < kBatch; ++i) {
      if (!results[i].ok() || *results[i] != Tier::kNvme) {
        state.SkipWithError("a page did not come back from NVMe");
        break;
      }
    }
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * kBatch));
}
BENCHMARK(BM_LoadNvme256)->Arg(0)->Arg(1)->UseRealTime()->Unit(benchmark::kMillisecond);

// The planner demoting 256 pages from a full DRAM tier to the NVMe tier of an NvmeBenchStore:
// one Maintain pass with watermarks that send every page down. Items are pages moved; each
// iteration refills DRAM (untimed) first.
void BM_PlannerDemoteNvme256(benchmark::State& state) {
  constexpr uint32_t kBatch = kNvmeBatch;
  // The low watermark is below one page: the pass demotes all of them.
  auto bench = NvmeBenchStore::Make(
      state, TierOptions{.slots = kBatch, .high_watermark = 0.5, .low_watermark = 0.001});
  if (bench == nullptr) return;
  TieredStore* store = bench->store.get();
  const NamespaceId ns = bench->ns;
  std::vector<PutRequest>& pages = bench->pages;
  MaintainOptions mo;
  mo.promote = false;
  for (auto _ : state) {
    state.PauseTiming();
    bench->NextBatch(Tier::kDram);
    store->PutBatch(ns, pages, absl::MakeSpan(bench->results));
    state.ResumeTiming();
    const PlannerReport report = store->Maintain(mo);
    state.PauseTiming();
    if (report.demoted != kBatch) {
      state.SkipWithError(("demoted " + std::to_string(report.demoted) + " of 256").c_str());
    }
    for (uint32_t i = 0; i < kBatch; ++i) (void)store->Evict(ns, pages[i].key);
    state.ResumeTiming();
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * kBatch));
}
BENCHMARK(BM_PlannerDemoteNvme256)->UseRealTime()->Unit(benchmark::kMillisecond);

// Collects each run's rate so the ratios can be printed in one line.
class RatioReporter : public benchmark::ConsoleReporter {
 public:
  void ReportRuns(const std::vector<Run>& runs) override {
    ConsoleReporter::ReportRuns(runs);
    for (const Run& r : runs) {
      auto it = r.counters.find("bytes_per_second");
      // With repetitions, the median aggregate is the figure; a single run stands for itself.
      if (r.run_type == Run::RT_Aggregate && r.aggregate_name != "median") continue;
      if (it != r.counters.end()) rate_[r.run_name.str()] = it->second.value;
      auto items = r.counters.find("items_per_second");
      if (items != r.counters.end()) rate_[r.run_name.str()] = items->second.value;
    }
  }
  double rate(const std::string& name) const {
    auto it = rate_.find(name);
    return it == rate_.end() ? 0 : it->second;
  }

 private:
  std::map<std::string, double> rate_;
};

}  // namespace
}  // namespace kvtier

int main(int argc, char** argv) {
  // Repeat and interleave by default: these machines are shared, and a baseline measured at a
  // different moment than its contender is no baseline. Flags given on the command line win.
  std::vector<char*> args(argv, argv + argc);
  std::string reps = "--benchmark_repetitions=5",
              interleave = "--benchmark_enable_random_interleaving=true",
              aggregates = "--benchmark_report_aggregates_only=true";
  args.insert(args.begin() + 1, {reps.data(), interleave.data(), aggregates.data()});
  argc = static_cast<int>(args.size());
  argv = args.data();
  benchmark::Initialize(&argc, argv);
  kvtier::RatioReporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  const double memcpy_bps = reporter.rate("BM_Memcpy/real_time");
  const double roundtrip_bps = reporter.rate("BM_MemcpyRoundTrip/real_time");
  const double move_bps = reporter.rate("BM_StoreMoveHbmDram/real_time");
  const double putget_bps = reporter.rate("BM_StorePutGetScattered/real_time");
  const double lru_per_s = reporter.rate("BM_PolicyAccess/0");
  const double kvtier_per_s = reporter.rate("BM_PolicyAccess/1");
  if (lru_per_s > 0 && kvtier_per_s > 0) {
    std::printf(
        "{\"bench\":\"policy\",\"lru_ns_per_access\":%.1f,\"kvtier_ns_per_access\":%.1f,"
        "\"arc_ns_per_access\":%.1f,\"s3fifo_ns_per_access\":%.1f,"
        "\"wtinylfu_ns_per_access\":%.1f,\"kvtier_vs_lru\":%.3f}\n",
        1e9 / lru_per_s, 1e9 / kvtier_per_s, 1e9 / reporter.rate("BM_PolicyAccess/2"),
        1e9 / reporter.rate("BM_PolicyAccess/3"), 1e9 / reporter.rate("BM_PolicyAccess/4"),
        lru_per_s / kvtier_per_s);
  }
  // One page at a time (Arg 0) against one batch call (Arg 1), as one JSON line.
  auto print_batch_gain = [&](const char* bench, const char* name, const char* one,
                              const char* batch) {
    const double one_rate = reporter.rate(std::string(name) + "/0/real_time");
    const double batch_rate = reporter.rate(std::string(name) + "/1/real_time");
    if (one_rate <= 0 || batch_rate <= 0) return;
    std::printf(
        "{\"bench\":\"%s\",\"%s_pages_per_s\":%.0f,\"%s_pages_per_s\":%.0f,"
        "\"%s_vs_%s\":%.2f}\n",
        bench, one, one_rate, batch, batch_rate, batch, one, batch_rate / one_rate);
  };
  print_batch_gain("store_nvme_256", "BM_StoreNvme256", "put", "putbatch");
  print_batch_gain("load_nvme_256", "BM_LoadNvme256", "get", "getbatch");
  if (const double demote = reporter.rate("BM_PlannerDemoteNvme256/real_time"); demote > 0) {
    std::printf("{\"bench\":\"planner_nvme_256\",\"demote_pages_per_s\":%.0f}\n", demote);
  }
  std::printf(
      "{\"bench\":\"core\",\"lookup1_keys_per_s\":%.0f,\"lookup256_keys_per_s\":%.0f,"
      "\"move_gbps\":%.2f,\"memcpy_roundtrip_gbps\":%.2f,\"putget_gbps\":%.2f,\"memcpy_gbps\":%.2f,"
      "\"move_vs_memcpy\":%.3f,\"putget_vs_memcpy\":%.3f}\n",
      reporter.rate("BM_IndexLookupPrefix/1"), reporter.rate("BM_IndexLookupPrefix/256"),
      move_bps / 1e9, roundtrip_bps / 1e9, putget_bps / 1e9, memcpy_bps / 1e9,
      roundtrip_bps > 0 ? move_bps / roundtrip_bps : 0,
      memcpy_bps > 0 ? putget_bps / memcpy_bps : 0);
  benchmark::Shutdown();
  return 0;
}
