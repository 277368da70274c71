#include "tiering/tiered_store.h"

#include <cstring>
#include <thread>

#include "gtest/gtest.h"
#include "tests/unit/tiering/test_seed.h"

namespace kvtier {
namespace {

constexpr uint64_t kPage = 4096;

class CountingTier;

class TieredStoreTest : public ::testing::Test {
 protected:
  void Make(uint32_t hbm, uint32_t dram, uint32_t sink_slots = 0) {
    StoreOptions o;
    o.page_bytes = kPage;
    o.hbm.slots = hbm;
    o.dram.slots = dram;
    o.hbm_backend = HbmBackend::kHostEmulated;
    o.clock = &clock_;
    auto s = TieredStore::Create(o);
    ASSERT_TRUE(s.ok()) << s.status();
    store_ = *std::move(s);
    auto ns = store_->AddNamespace("model-a/tenant-1", sink_slots);
    ASSERT_TRUE(ns.ok()) << ns.status();
    ns_ = *ns;
  }

  // Page contents are a function of the key, so any mix-up shows as a mismatch.
  std::vector<std::byte> Contents(const PageKey& k) {
    std::vector<std::byte> v(kPage);
    std::mt19937_64 g(k.lo ^ (k.hi << 1));
    for (size_t i = 0; i < kPage; i += 8) {
      const uint64_t x = g();
      std::memcpy(&v[i], &x, 8);
    }
    return v;
  }
  PageKey Key(uint64_t i) { return PageKey{0x5eed, i + 1}; }

  absl::StatusOr<Tier> Put(uint64_t i, PutOptions o = {}) {
    clock_.AdvanceNs(1000);
    const std::vector<std::byte> data = Contents(Key(i));
    const ConstBuffer src{data.data(), data.size()};
    if (o.position == 0 && o.class_hint == PageClass::kUnknown) o.position = 1;  // not a sink
    return store_->Put(ns_, Key(i), absl::MakeConstSpan(&src, 1), o);
  }
  absl::StatusOr<Tier> GetAndCheck(uint64_t i) {
    clock_.AdvanceNs(1000);
    std::vector<std::byte> out(kPage);
    const MutableBuffer dst{out.data(), out.size()};
    absl::StatusOr<Tier> t = store_->Get(ns_, Key(i), absl::MakeConstSpan(&dst, 1));
    if (t.ok()) {
      EXPECT_EQ(out, Contents(Key(i))) << "page " << i << " came back different";
    }
    return t;
  }
  Tier TierOf(uint64_t i) { return store_->Find(ns_, Key(i))->tier; }
  // The store over a CountingTier of 32 slots as its NVMe tier (no HBM, DRAM as `dram` says);
  // returns that tier.
  CountingTier* MakeOverCountingTier(const TierOptions& dram);

  ManualClock clock_;
  std::unique_ptr<TieredStore> store_;
  NamespaceId ns_ = 0;
};

TEST_F(TieredStoreTest, RandomScatteredPagesRoundTripBitIdentical) {
  Make(8, 32);
  auto rng = testing::SeededRng();
  for (int i = 0; i < 30; ++i) {
    // Random piece boundaries on both sides, as a worker's layout would scatter them.
    std::vector<std::byte> page(kPage);
    for (auto& b : page) b = static_cast<std::byte>(rng());
    std::vector<ConstBuffer> src;
    size_t off = 0;
    while (off < kPage) {
      const size_t n = std::min<size_t>(kPage - off, 1 + rng() % 1500);
      src.push_back({page.data() + off, n});
      off += n;
    }
    const PageKey key{rng(), rng()};
    PutOptions o;
    o.position = 5;
    ASSERT_TRUE(store_->Put(ns_, key, src, o).ok());
    std::vector<std::byte> out(kPage);
    std::vector<MutableBuffer> dst;
    off = 0;
    while (off < kPage) {
      const size_t n = std::min<size_t>(kPage - off, 1 + rng() % 700);
      dst.push_back({out.data() + off, n});
      off += n;
    }
    ASSERT_TRUE(store_->Get(ns_, key, dst).ok());
    ASSERT_EQ(out, page) << "page " << i;
  }
  EXPECT_EQ(store_->Counters().puts, 30u);
}

TEST_F(TieredStoreTest, FullHbmDemotesTheLeastRecentlyUsedPageToDram) {
  Make(4, 16);
  for (int i = 0; i < 4; ++i) ASSERT_EQ(*Put(i), Tier::kHbm);
  ASSERT_TRUE(GetAndCheck(0).ok());  // page 0 is now the most recent; page 1 the least
  ASSERT_EQ(*Put(4), Tier::kHbm);
  EXPECT_EQ(TierOf(1), Tier::kDram);
  EXPECT_EQ(TierOf(0), Tier::kHbm);
  EXPECT_EQ(*GetAndCheck(1), Tier::kDram);
  const StoreCounters c = store_->Counters();
  EXPECT_EQ(c.migrations[TierIndex(Tier::kHbm)][TierIndex(Tier::kDram)], 1u);
  EXPECT_EQ(c.migrated_bytes[TierIndex(Tier::kHbm)][TierIndex(Tier::kDram)], kPage);
  EXPECT_EQ(c.hits[TierIndex(Tier::kDram)], 1u);
  EXPECT_EQ(c.hits[TierIndex(Tier::kHbm)], 1u);
}

// A store whose HBM tier has one pool per listed device (host-emulated: the same code a node
// with several GPUs runs, minus the GPUs).
std::unique_ptr<TieredStore> MakeWithHbmPools(std::vector<int> devices, uint32_t hbm, uint32_t dram,
                                              const Clock* clock) {
  StoreOptions o;
  o.page_bytes = kPage;
  o.hbm.slots = hbm;
  o.dram.slots = dram;
  o.hbm_backend = HbmBackend::kHostEmulated;
  o.hbm_devices = std::move(devices);
  o.clock = clock;
  auto s = TieredStore::Create(o);
  EXPECT_TRUE(s.ok()) << s.status();
  return s.ok() ? *std::move(s) : nullptr;
}

TEST_F(TieredStoreTest, EachHbmPageLivesInOnePoolPreferablyOnTheStoringWorkersGpu) {
  store_ = MakeWithHbmPools({0, 1}, 7, 16, &clock_);  // pool 0: 4 slots, pool 1: 3
  ASSERT_NE(store_, nullptr);
  ns_ = *store_->AddNamespace("model-a/tenant-1", 0);
  ASSERT_EQ(store_->hbm_pools().size(), 2u);
  EXPECT_EQ(store_->hbm_pools()[0].slots, 4u);
  EXPECT_EQ(store_->hbm_pools()[1].slots, 3u);
  EXPECT_EQ(store_->hbm_pools()[1].first_slot, 4u);
  EXPECT_EQ(store_->hbm_pools()[1].device, 1);
  auto device_of = [&](uint64_t i) {
    return store_->HbmDeviceOfSlot(store_->Find(ns_, Key(i))->slot);
  };
  PutOptions on1;
  on1.hbm_device = 1;
  // A worker on GPU 1 fills GPU 1's pool first; then its pages go where there is room.
  for (uint64_t i = 0; i < 3; ++i) {
    ASSERT_EQ(*Put(i, on1), Tier::kHbm);
    EXPECT_EQ(device_of(i), 1) << "page " << i;
  }
  ASSERT_EQ(*Put(3, on1), Tier::kHbm);
  EXPECT_EQ(device_of(3), 0);
  // No preference (a host worker, a promotion): the pool with the most free slots.
  ASSERT_EQ(*Put(4), Tier::kHbm);
  EXPECT_EQ(device_of(4), 0);
  // A device with no pool is no preference either.
  PutOptions on5;
  on5.hbm_device = 5;
  ASSERT_EQ(*Put(5, on5), Tier::kHbm);
  EXPECT_EQ(device_of(5), 0);
  const TierUsage u = store_->Usage(Tier::kHbm);
  ASSERT_EQ(u.pools.size(), 2u);
  EXPECT_EQ(u.pools[0].device, 0);
  EXPECT_EQ(u.pools[0].used_slots, 3u);
  EXPECT_EQ(u.pools[0].capacity_slots, 4u);
  EXPECT_EQ(u.pools[1].used_slots, 3u);
  EXPECT_EQ(u.used_slots, 6u);
  // Full HBM: the least valuable page anywhere (page 0, LRU, in pool 1) goes down to DRAM, and
  // the new page takes its slot, in the pool that freed it.
  ASSERT_EQ(*Put(6, on1), Tier::kHbm);
  ASSERT_EQ(*Put(7, on1), Tier::kHbm);
  EXPECT_EQ(TierOf(0), Tier::kDram);
  EXPECT_EQ(device_of(7), 1);
  // Every page reads back as written, from whichever pool holds it.
  for (uint64_t i = 0; i < 8; ++i) EXPECT_TRUE(GetAndCheck(i).ok()) << "page " << i;
  // Promotion back into HBM lands in a pool with room and keeps the bytes.
  ASSERT_TRUE(store_->Evict(ns_, Key(5)).ok());
  ASSERT_TRUE(store_->Move(ns_, Key(0), Tier::kHbm).ok());
  EXPECT_EQ(TierOf(0), Tier::kHbm);
  EXPECT_EQ(device_of(0), 0);  // page 5's slot, in pool 0
  EXPECT_EQ(*GetAndCheck(0), Tier::kHbm);
}

TEST_F(TieredStoreTest, HbmPoolsTwoOnOneDeviceAndTooFewSlotsForThePools) {
  // Two pools on one device (how tests run the several-pool code on a one-GPU machine): a
  // preference for that device takes the emptier of the two.
  store_ = MakeWithHbmPools({3, 3}, 4, 4, &clock_);
  ASSERT_NE(store_, nullptr);
  ns_ = *store_->AddNamespace("model-a/tenant-1", 0);
  PutOptions on3;
  on3.hbm_device = 3;
  std::vector<uint32_t> pools;
  for (uint64_t i = 0; i < 4; ++i) {
    ASSERT_EQ(*Put(i, on3), Tier::kHbm);
    const uint32_t slot = store_->Find(ns_, Key(i))->slot;
    EXPECT_EQ(store_->HbmDeviceOfSlot(slot), 3);
    pools.push_back(slot < store_->hbm_pools()[1].first_slot ? 0 : 1);
  }
  EXPECT_EQ(pools, (std::vector<uint32_t>{0, 1, 0, 1}));
  StoreOptions o;
  o.page_bytes = kPage;
  o.hbm.slots = 2;
  o.hbm_backend = HbmBackend::kHostEmulated;
  o.hbm_devices = {0, 1, 2};
  absl::StatusOr<std::unique_ptr<TieredStore>> bad = TieredStore::Create(o);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument) << bad.status();
  EXPECT_NE(bad.status().message().find("3 pools"), std::string::npos) << bad.status();
}

TEST_F(TieredStoreTest, DirectPutsReserveInOrderAndPublishOnlyWhatWasWritten) {
  Make(4, 16);
  ASSERT_EQ(*Put(0), Tier::kHbm);  // already cached: a direct put of it is a duplicate
  std::vector<PutRequest> requests;
  for (uint64_t i = 0; i < 4; ++i) {
    PutOptions o;
    o.position = 1;
    requests.push_back(PutRequest{Key(i), {}, o});
  }
  TieredStore::DirectPutBatch batch;
  store_->BeginDirectPuts(ns_, requests, batch);
  ASSERT_EQ(batch.pages.size(), 4u);
  ASSERT_TRUE(batch.pages[0].done.has_value());
  EXPECT_EQ(**batch.pages[0].done, Tier::kHbm);
  for (size_t k = 1; k < 4; ++k) {
    EXPECT_FALSE(batch.pages[k].done.has_value()) << k;
    EXPECT_EQ(batch.pages[k].tier, Tier::kHbm) << k;
    // Host-emulated HBM is no memory a GPU kernel reaches: the bytes come with End.
    EXPECT_EQ(batch.pages[k].address, nullptr) << k;
    // Reserved but not written: invisible to readers.
    EXPECT_FALSE(GetAndCheck(k).ok()) << k;
  }
  // Page 1 written, page 2's write failed, page 3 "written" without bytes (a caller bug).
  const std::vector<std::byte> one = Contents(Key(1));
  const ConstBuffer one_buf{one.data(), one.size()};
  std::vector<absl::Status> written(4);
  written[2] = absl::DataLossError("the kernel failed");
  std::vector<absl::Span<const ConstBuffer>> src(4);
  src[1] = absl::MakeConstSpan(&one_buf, 1);
  std::vector<absl::StatusOr<Tier>> results(4);
  store_->EndDirectPuts(batch, written, src, absl::MakeSpan(results));
  EXPECT_EQ(*results[0], Tier::kHbm);
  EXPECT_EQ(*results[1], Tier::kHbm);
  EXPECT_EQ(results[2].status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(results[3].status().code(), absl::StatusCode::kInternal);
  EXPECT_EQ(*GetAndCheck(1), Tier::kHbm);
  EXPECT_FALSE(store_->Find(ns_, Key(2)).has_value());
  EXPECT_FALSE(store_->Find(ns_, Key(3)).has_value());
  // The failed pages' slots are free again: two more pages fit in HBM without a demotion.
  EXPECT_EQ(store_->Usage(Tier::kHbm).used_slots, 2u);
  ASSERT_EQ(*Put(2), Tier::kHbm);
  ASSERT_EQ(*Put(3), Tier::kHbm);
  EXPECT_EQ(store_->Counters().migrations[TierIndex(Tier::kHbm)][TierIndex(Tier::kDram)], 0u);
  // A full tier: each reservation makes room as Put would (the unpinned pages go down a tier).
  requests.clear();
  for (uint64_t i = 10; i < 13; ++i) requests.push_back(PutRequest{Key(i), {}, PutOptions{}});
  store_->BeginDirectPuts(ns_, requests, batch);
  std::vector<std::vector<std::byte>> bytes;
  std::vector<ConstBuffer> bufs(3);
  src.assign(3, {});
  for (size_t k = 0; k < 3; ++k) {
    ASSERT_FALSE(batch.pages[k].done.has_value()) << k;
    bytes.push_back(Contents(Key(10 + k)));
    bufs[k] = ConstBuffer{bytes[k].data(), bytes[k].size()};
    src[k] = absl::MakeConstSpan(&bufs[k], 1);
  }
  written.assign(3, absl::OkStatus());
  results.assign(3, absl::InternalError("unset"));
  store_->EndDirectPuts(batch, written, src, absl::MakeSpan(results));
  for (size_t k = 0; k < 3; ++k) {
    ASSERT_TRUE(results[k].ok()) << results[k].status();
    EXPECT_EQ(*GetAndCheck(10 + k), *results[k]);
  }
  EXPECT_EQ(store_->Usage(Tier::kHbm).used_slots, 4u);
}

TEST_F(TieredStoreTest, BottomTierDropsAndMissesAreCounted) {
  Make(2, 2);
  for (int i = 0; i < 6; ++i) ASSERT_TRUE(Put(i).ok());
  EXPECT_EQ(store_->page_count(), 4u);
  EXPECT_EQ(GetAndCheck(0).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(GetAndCheck(1).status().code(), absl::StatusCode::kNotFound);
  for (int i = 2; i < 6; ++i) EXPECT_TRUE(GetAndCheck(i).ok()) << i;
  const StoreCounters c = store_->Counters();
  EXPECT_EQ(c.misses, 2u);
  EXPECT_EQ(c.evictions[TierIndex(Tier::kDram)][static_cast<int>(PageClass::kUnknown)], 2u);
  EXPECT_EQ(store_->Usage(Tier::kHbm).used_slots + store_->Usage(Tier::kDram).used_slots, 4u);
}

TEST_F(TieredStoreTest, PinnedSinksInReservedSlotsOutliveAnyPressure) {
  Make(6, 4, /*sink_slots=*/2);
  PutOptions sink;
  sink.class_hint = PageClass::kSink;
  ASSERT_EQ(*Put(100, sink), Tier::kHbm);
  PutOptions first;  // position 0: a sink by position (the first 4 tokens)
  first.position = 0;
  first.class_hint = PageClass::kUnknown;
  clock_.AdvanceNs(1000);
  {
    const std::vector<std::byte> d = Contents(Key(101));
    const ConstBuffer src{d.data(), d.size()};
    ASSERT_TRUE(store_->Put(ns_, Key(101), absl::MakeConstSpan(&src, 1), first).ok());
  }
  EXPECT_EQ(store_->Find(ns_, Key(101))->class_source, ClassSource::kPosition);
  ASSERT_TRUE(store_->Pin(ns_, {Key(100), Key(101)}).ok());
  EXPECT_EQ(store_->Usage(Tier::kHbm).sink_used_slots, 2u);
  // Heavy churn of semantic pages, accessing them far more often than the sinks.
  for (int i = 0; i < 200; ++i) {
    ASSERT_TRUE(Put(i).ok());
    ASSERT_TRUE(GetAndCheck(i).ok());
    store_->Maintain();
  }
  for (uint64_t s : {100, 101}) {
    std::optional<PageEntry> e = store_->Find(ns_, Key(s));
    ASSERT_TRUE(e.has_value()) << "sink " << s << " was evicted";
    EXPECT_EQ(e->tier, Tier::kHbm);
    EXPECT_TRUE(e->in_sink_slot);
    EXPECT_EQ(e->cls, PageClass::kSink);
    EXPECT_TRUE(GetAndCheck(s).ok());
  }
  // Semantic pages used only the semantic budget: 6 HBM slots minus 2 reserved.
  EXPECT_LE(store_->Usage(Tier::kHbm).used_slots, 6u);
  EXPECT_EQ(store_->Usage(Tier::kHbm).pages_by_class[static_cast<int>(PageClass::kSink)], 2u);
}

TEST_F(TieredStoreTest, FullSinkReserveReplacesAnUnpinnedSinkOrOverflows) {
  Make(4, 8, /*sink_slots=*/1);
  PutOptions sink;
  sink.class_hint = PageClass::kSink;
  ASSERT_TRUE(Put(1, sink).ok());
  ASSERT_TRUE(Put(2, sink).ok());  // reserve full, sink 1 unpinned: 2 replaces it
  EXPECT_TRUE(store_->Find(ns_, Key(2))->in_sink_slot);
  EXPECT_FALSE(store_->Find(ns_, Key(1))->in_sink_slot);
  EXPECT_EQ(TierOf(1), Tier::kDram);
  EXPECT_EQ(store_->Counters().sink_replacements, 1u);
  ASSERT_TRUE(store_->Pin(ns_, {Key(2)}).ok());
  ASSERT_TRUE(Put(3, sink).ok());  // reserve full of pinned sinks: 3 competes as a page
  EXPECT_FALSE(store_->Find(ns_, Key(3))->in_sink_slot);
  EXPECT_EQ(store_->Find(ns_, Key(3))->cls, PageClass::kSink);
  EXPECT_EQ(store_->Counters().sink_overflows, 1u);
  EXPECT_TRUE(GetAndCheck(1).ok());
}

// A namespace's reserve is granted as far as HBM allows (never refused), given back when the
// namespace is retired (its sinks stay cached as ordinary pages, pinned ones keep their slot
// until unpinned) and made again when it comes back.
TEST_F(TieredStoreTest, SinkReservesAreBestEffortAndReturnedWhenTheNamespaceRetires) {
  Make(6, 8, /*sink_slots=*/4);
  auto greedy = store_->AddNamespace("model-a/tenant-2", 6);
  ASSERT_TRUE(greedy.ok()) << greedy.status() << ": a full reserve refused a namespace";
  EXPECT_EQ(store_->Usage(Tier::kHbm).sink_reserved_slots, 6u);  // 4 + the 2 left
  PutOptions sink;
  sink.class_hint = PageClass::kSink;
  for (int i : {1, 2, 3}) ASSERT_TRUE(Put(i, sink).ok());
  ASSERT_TRUE(store_->Pin(ns_, {Key(3)}).ok());
  EXPECT_EQ(store_->Usage(Tier::kHbm).sink_used_slots, 3u);
  store_->RetireNamespace(ns_);
  // The unused reserve and the unpinned sinks' slots are back; the pinned sink keeps its slot.
  EXPECT_EQ(store_->Usage(Tier::kHbm).sink_reserved_slots, 2u + 1u);
  for (int i : {1, 2, 3}) EXPECT_TRUE(GetAndCheck(i).ok()) << "sink " << i << " was lost";
  EXPECT_FALSE(store_->Find(ns_, Key(1))->in_sink_slot);
  EXPECT_TRUE(store_->Find(ns_, Key(3))->in_sink_slot);
  ASSERT_TRUE(store_->Unpin(ns_, {Key(3)}).ok());  // unpinned: it leaves the reserve too
  EXPECT_FALSE(store_->Find(ns_, Key(3))->in_sink_slot);
  EXPECT_EQ(store_->Usage(Tier::kHbm).sink_reserved_slots, 2u);
  // Back in use: the same id, its pages, and its reserve again.
  auto again = store_->AddNamespace("model-a/tenant-1", 4);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*again, ns_);
  EXPECT_EQ(store_->Usage(Tier::kHbm).sink_reserved_slots, 6u);
  EXPECT_TRUE(GetAndCheck(2).ok());
}

TEST_F(TieredStoreTest, PinnedPagesNeverMoveAndCannotBeEvicted) {
  Make(2, 2);
  ASSERT_TRUE(Put(0).ok());
  ASSERT_TRUE(Put(1).ok());
  ASSERT_TRUE(store_->Pin(ns_, {Key(0), Key(1)}).ok());
  ASSERT_EQ(*Put(2), Tier::kDram) << "HBM is all pinned: the new page lands below";
  ASSERT_TRUE(Put(3).ok());
  EXPECT_EQ(store_->Evict(ns_, Key(0)).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(store_->Move(ns_, Key(0), Tier::kDram).code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(store_->Pin(ns_, {Key(2), Key(3)}).ok());
  EXPECT_EQ(Put(4).status().code(), absl::StatusCode::kResourceExhausted);
  ASSERT_TRUE(store_->Unpin(ns_, {Key(0)}).ok());
  EXPECT_EQ(store_->Unpin(ns_, {Key(0)}).code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(Put(4).ok()) << "an unpinned page can now make room";
  EXPECT_EQ(TierOf(1), Tier::kHbm);
  for (int i : {1, 2, 3}) EXPECT_TRUE(GetAndCheck(i).ok());
  // Pin is all-or-nothing: a missing key pins nothing.
  EXPECT_EQ(store_->Pin(ns_, {Key(4), Key(77)}).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->Find(ns_, Key(4))->pin_count, 0u);
}

TEST_F(TieredStoreTest, UnpinCountsAKeyListedTwice) {
  // Before: each key was checked alone, so [k, k] with one pin passed and decremented twice,
  // wrapping the uint32 count and pinning the page for ever.
  Make(2, 2);
  ASSERT_TRUE(Put(0).ok());
  ASSERT_TRUE(store_->Pin(ns_, {Key(0)}).ok());
  EXPECT_EQ(store_->Unpin(ns_, {Key(0), Key(0)}).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(store_->Find(ns_, Key(0))->pin_count, 1u) << "a refused unpin changes nothing";
  ASSERT_TRUE(store_->Pin(ns_, {Key(0)}).ok());
  ASSERT_TRUE(store_->Unpin(ns_, {Key(0), Key(0)}).ok());
  EXPECT_EQ(store_->Find(ns_, Key(0))->pin_count, 0u);
  EXPECT_TRUE(store_->Evict(ns_, Key(0)).ok());
}

TEST_F(TieredStoreTest, NamespacesCannotSeeEachOthersPages) {
  Make(4, 4);
  auto other = store_->AddNamespace("model-a/tenant-2", 0);
  ASSERT_TRUE(other.ok());
  ASSERT_TRUE(Put(0).ok());
  std::vector<std::byte> out(kPage);
  const MutableBuffer dst{out.data(), out.size()};
  EXPECT_EQ(store_->Get(*other, Key(0), absl::MakeConstSpan(&dst, 1)).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->LookupPrefix(*other, {Key(0)}).prefix_pages, 0u);
  EXPECT_EQ(store_->LookupPrefix(ns_, {Key(0)}).prefix_pages, 1u);
  EXPECT_EQ(store_->Evict(*other, Key(0)).code(), absl::StatusCode::kNotFound);
  EXPECT_NE(*store_->NamespaceSaltOf(ns_), *store_->NamespaceSaltOf(*other));
}

// Keys are per namespace: a tenant that stores another tenant's keys (it can compute them from the
// public salt) gets its own pages, succeeds the same whether or not the other holds them, and
// never keeps the other from caching them.
TEST_F(TieredStoreTest, TheSameKeyInTwoNamespacesNamesTwoPages) {
  Make(4, 4);
  auto other = store_->AddNamespace("model-a/tenant-2", 0);
  ASSERT_TRUE(other.ok());
  ASSERT_TRUE(Put(0).ok());  // ns_ holds key 0; *other holds nothing yet
  std::vector<std::byte> mine(kPage), theirs(kPage, std::byte{0x5a});
  const ConstBuffer theirs_src{theirs.data(), theirs.size()};
  // Key 0 (held by ns_) and key 1 (held by nobody) answer alike for the other namespace.
  for (int k : {0, 1}) {
    absl::StatusOr<Tier> t = store_->Put(*other, Key(k), absl::MakeConstSpan(&theirs_src, 1));
    EXPECT_TRUE(t.ok()) << "key " << k << ": " << t.status();
  }
  // It stored key 1 first; ns_ can still cache it.
  EXPECT_TRUE(Put(1).ok());
  for (int k : {0, 1}) {
    const MutableBuffer dst{mine.data(), mine.size()};
    ASSERT_TRUE(store_->Get(ns_, Key(k), absl::MakeConstSpan(&dst, 1)).ok());
    EXPECT_EQ(mine, Contents(Key(k))) << "ns_ reads its own bytes of key " << k;
    ASSERT_TRUE(store_->Get(*other, Key(k), absl::MakeConstSpan(&dst, 1)).ok());
    EXPECT_EQ(mine, theirs) << "the other namespace reads its own bytes of key " << k;
  }
  EXPECT_EQ(store_->page_count(), 4u);
  EXPECT_TRUE(store_->Evict(*other, Key(0)).ok());
  EXPECT_EQ(store_->LookupPrefix(ns_, {Key(0), Key(1)}).prefix_pages, 2u);
}

TEST_F(TieredStoreTest, BadArgumentsGetClearErrorsAndChangeNothing) {
  Make(2, 2);
  std::vector<std::byte> small(100);
  const ConstBuffer src{small.data(), small.size()};
  absl::Status s = store_->Put(ns_, Key(0), absl::MakeConstSpan(&src, 1)).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("100 bytes, expected 4096"), absl::string_view::npos) << s;
  EXPECT_EQ(store_->Put(99, Key(0), {}).status().code(), absl::StatusCode::kInvalidArgument);
  const std::vector<std::byte> d = Contents(Key(0));
  const ConstBuffer full{d.data(), d.size()};
  EXPECT_EQ(store_->Put(99, Key(0), absl::MakeConstSpan(&full, 1)).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->Put(ns_, PageKey{}, absl::MakeConstSpan(&full, 1)).status().code(),
            absl::StatusCode::kInvalidArgument);
  PutOptions to_nvme;
  to_nvme.tier = Tier::kNvme;
  EXPECT_EQ(store_->Put(ns_, Key(0), absl::MakeConstSpan(&full, 1), to_nvme).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store_->page_count(), 0u);
  EXPECT_EQ(store_->AddNamespace("", 0).status().code(), absl::StatusCode::kInvalidArgument);
  // More sink slots than HBM has: granted as far as HBM allows, never a refusal.
  EXPECT_TRUE(store_->AddNamespace("too-many-sinks", 3).ok());
  EXPECT_EQ(store_->Usage(Tier::kHbm).sink_reserved_slots, 2u);
  EXPECT_EQ(store_->ReportAttention(ns_, Key(0), {.mass = 2}).code(),
            absl::StatusCode::kInvalidArgument);

  StoreOptions bad;
  bad.page_bytes = kPage;
  bad.dram.slots = 4;
  bad.dram.low_watermark = 0.9;
  bad.dram.high_watermark = 0.5;
  EXPECT_EQ(TieredStore::Create(bad).status().code(), absl::StatusCode::kInvalidArgument);
  bad.dram = TierOptions{.slots = 0};
  EXPECT_EQ(TieredStore::Create(bad).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(TieredStoreTest, MaintainBringsTiersBackToTheLowWatermarkAndPromotesIntoRoom) {
  StoreOptions o;
  o.page_bytes = kPage;
  o.hbm = {.slots = 10, .high_watermark = 0.8, .low_watermark = 0.5};
  o.dram = {.slots = 20, .high_watermark = 1.0, .low_watermark = 0.9};
  o.hbm_backend = HbmBackend::kHostEmulated;
  o.clock = &clock_;
  store_ = *TieredStore::Create(o);
  ns_ = *store_->AddNamespace("ns", 0);
  for (int i = 0; i < 10; ++i) ASSERT_EQ(*Put(i), Tier::kHbm);
  PlannerReport r = store_->Maintain({.promote = false});
  EXPECT_EQ(r.demoted, 5u);
  EXPECT_EQ(store_->Usage(Tier::kHbm).used_slots, 5u);
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(TierOf(i), Tier::kDram) << "oldest pages go down";
  }
  // Room below the low watermark is filled with the most valuable DRAM pages, within budget.
  ASSERT_TRUE(store_->Evict(ns_, Key(9)).ok());
  ASSERT_TRUE(store_->Evict(ns_, Key(8)).ok());
  ASSERT_TRUE(GetAndCheck(1).ok());  // page 1 is now the most recently used DRAM page
  r = store_->Maintain({.max_migration_bytes = kPage});
  EXPECT_EQ(r.promoted, 1u);
  EXPECT_EQ(r.bytes_moved, kPage);
  EXPECT_EQ(TierOf(1), Tier::kHbm);
  for (int i = 0; i < 8; ++i) EXPECT_TRUE(GetAndCheck(i).ok());
}

TEST_F(TieredStoreTest, DuplicatePutIsAnAccessNotARewrite) {
  Make(4, 4);
  ASSERT_TRUE(Put(0).ok());
  const uint32_t before = store_->Find(ns_, Key(0))->stats.access_count;
  ASSERT_TRUE(Put(0).ok());
  EXPECT_EQ(store_->Find(ns_, Key(0))->stats.access_count, before + 1);
  EXPECT_EQ(store_->Counters().put_duplicates, 1u);
  EXPECT_EQ(store_->Counters().puts, 1u);
  EXPECT_EQ(store_->page_count(), 1u);
}

TEST_F(TieredStoreTest, FrequencyDecaysWithTheConfiguredHalfLife) {
  Make(4, 4);
  ASSERT_TRUE(Put(0).ok());                 // frequency 1 at insert
  clock_.AdvanceNs(30'000ull * 1'000'000);  // one half-life (30 s default)
  ASSERT_TRUE(store_->Touch(ns_, Key(0)).ok());
  EXPECT_NEAR(store_->Find(ns_, Key(0))->stats.frequency, 1.5, 1e-3);
}

TEST_F(TieredStoreTest, AttentionReportsFeedTheEwmasAndSinksMoveIntoReservedSlots) {
  Make(4, 4, /*sink_slots=*/1);
  ASSERT_EQ(*Put(0), Tier::kHbm);
  ASSERT_TRUE(
      store_
          ->ReportAttention(ns_, Key(0),
                            {.mass = 0.5, .breadth = 1, .value_norm = 0.1, .mass_entropy = 0.2})
          .ok());
  ASSERT_TRUE(
      store_
          ->ReportAttention(ns_, Key(0),
                            {.mass = 1.0, .breadth = 1, .value_norm = 0.1, .mass_entropy = 0.2})
          .ok());
  const PageStats s = store_->Find(ns_, Key(0))->stats;
  EXPECT_NEAR(s.attention_mass, 0.5 + 0.2 * 0.5, 1e-6);  // seeded by the first, then alpha 0.2
  EXPECT_EQ(s.stat_reports, 2u);
  ASSERT_TRUE(store_->SetClass(ns_, Key(0), PageClass::kSink, ClassSource::kMeasured).ok());
  EXPECT_TRUE(store_->Find(ns_, Key(0))->in_sink_slot);
  EXPECT_EQ(store_->Usage(Tier::kHbm).sink_used_slots, 1u);
  // A stronger source (a hint) may overrule a measurement; a measurement never overrules a hint.
  ASSERT_TRUE(store_->SetClass(ns_, Key(0), PageClass::kSemantic, ClassSource::kHint).ok());
  EXPECT_FALSE(store_->Find(ns_, Key(0))->in_sink_slot);
  ASSERT_TRUE(store_->SetClass(ns_, Key(0), PageClass::kSink, ClassSource::kMeasured).ok());
  EXPECT_EQ(store_->Find(ns_, Key(0))->cls, PageClass::kSemantic);
  EXPECT_TRUE(GetAndCheck(0).ok());
}

TEST_F(TieredStoreTest, ConcurrentWorkersNeverReadAWrongPage) {
  Make(16, 48);
  const uint64_t seed = testing::TestSeed();
  std::printf("[ seed     ] KVTIER_TEST_SEED=%llu\n", static_cast<unsigned long long>(seed));
  std::atomic<int> wrong{0}, hits{0};
  std::vector<std::thread> workers;
  for (int t = 0; t < 4; ++t) {
    workers.emplace_back([&, t] {
      std::mt19937_64 rng(seed + t);
      std::vector<std::byte> out(kPage);
      for (int i = 0; i < 1500; ++i) {
        const uint64_t id = rng() % 120;  // more pages than slots: constant eviction
        if (rng() % 2) {
          const std::vector<std::byte> d = Contents(Key(id));
          const ConstBuffer src{d.data(), d.size()};
          PutOptions o;
          o.position = 3;
          absl::Status s = store_->Put(ns_, Key(id), absl::MakeConstSpan(&src, 1), o).status();
          if (!s.ok() && s.code() != absl::StatusCode::kResourceExhausted) ++wrong;
        } else {
          const MutableBuffer dst{out.data(), out.size()};
          if (store_->Get(ns_, Key(id), absl::MakeConstSpan(&dst, 1)).ok()) {
            ++hits;
            if (out != Contents(Key(id))) ++wrong;
          }
        }
        if (i % 100 == 0) store_->Maintain();
      }
    });
  }
  for (auto& w : workers) w.join();
  EXPECT_EQ(wrong.load(), 0);
  EXPECT_GT(hits.load(), 0);
  EXPECT_EQ(store_->Usage(Tier::kHbm).used_slots + store_->Usage(Tier::kDram).used_slots,
            store_->page_count());
}

}  // namespace
}  // namespace kvtier

namespace kvtier {
namespace {

// PinAndLocate pins a batch all or nothing and hands back where each page is (the GPU-worker
// copy path's contract); SlotAddress gives no address in memory a kernel cannot reach.
TEST_F(TieredStoreTest, PinAndLocateReturnsStableSlotsAndIsAllOrNothing) {
  Make(4, 16);
  for (uint64_t i = 0; i < 12; ++i) ASSERT_TRUE(Put(i).ok());
  std::vector<PageKey> keys;
  for (uint64_t i = 0; i < 12; ++i) keys.push_back(Key(i));
  std::vector<PageEntry> entries;
  ASSERT_TRUE(store_->PinAndLocate(ns_, keys, entries).ok());
  ASSERT_EQ(entries.size(), keys.size());
  for (size_t i = 0; i < keys.size(); ++i) {
    EXPECT_EQ(entries[i].tier, TierOf(i));
    // Host memory no GPU can reach (this store has no CUDA): no address for a kernel.
    EXPECT_EQ(store_->SlotAddress(entries[i].tier, entries[i].slot), nullptr);
    EXPECT_FALSE(store_->Evict(ns_, Key(i)).ok()) << "pinned pages cannot be evicted";
  }
  EXPECT_EQ(store_->SlotAddress(Tier::kDram, 16), nullptr) << "slot out of range";
  EXPECT_EQ(store_->SlotAddress(Tier::kNvme, 0), nullptr) << "no NVMe tier here";
  ASSERT_TRUE(store_->Unpin(ns_, keys).ok());
  // A missing key fails the whole batch and pins nothing.
  keys.push_back(Key(99));
  EXPECT_EQ(store_->PinAndLocate(ns_, keys, entries).code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(entries.empty());
  EXPECT_TRUE(store_->Evict(ns_, Key(0)).ok()) << "the refused batch left no pin behind";
}

// UnpinAfterRead releases a batch's pins as Unpin does and counts one access a listing, as Touch
// would; a page pinned fewer times than listed fails the batch before any pin is released.
TEST_F(TieredStoreTest, UnpinAfterReadReleasesPinsAndCountsAccesses) {
  Make(4, 16);
  for (uint64_t i = 0; i < 3; ++i) ASSERT_TRUE(Put(i).ok());
  const std::vector<PageKey> keys{Key(0), Key(1), Key(2), Key(0)};
  std::vector<PageEntry> entries;
  ASSERT_TRUE(store_->PinAndLocate(ns_, keys, entries).ok());
  const uint32_t before0 = store_->Find(ns_, Key(0))->stats.access_count;
  const uint32_t before1 = store_->Find(ns_, Key(1))->stats.access_count;
  const std::vector<PageKey> too_many{Key(1), Key(1)};
  EXPECT_EQ(store_->UnpinAfterRead(ns_, too_many).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(store_->Find(ns_, Key(1))->pin_count, 1u) << "a refused batch releases nothing";
  ASSERT_TRUE(store_->UnpinAfterRead(ns_, keys).ok());
  EXPECT_EQ(store_->Find(ns_, Key(0))->stats.access_count, before0 + 2);
  EXPECT_EQ(store_->Find(ns_, Key(1))->stats.access_count, before1 + 1);
  for (uint64_t i = 0; i < 3; ++i) EXPECT_EQ(store_->Find(ns_, Key(i))->pin_count, 0u);
  EXPECT_TRUE(store_->Evict(ns_, Key(0)).ok());
}

TEST_F(TieredStoreTest, PutBatchLargerThanTheStoreStoresWhatPutByPageWould) {
  // 6 pages into 2 + 2 slots: page by page, each Put evicts an older page of the same request; a
  // batch's own pages are pinned while their bytes land, so it lands them and goes on.
  Make(2, 2);
  std::vector<std::vector<std::byte>> data;
  for (int i = 0; i < 6; ++i) data.push_back(Contents(Key(i)));
  std::vector<ConstBuffer> src(6);
  std::vector<PutRequest> pages(6);
  for (int i = 0; i < 6; ++i) {
    src[i] = ConstBuffer{data[i].data(), data[i].size()};
    pages[i] = PutRequest{Key(i), absl::MakeConstSpan(&src[i], 1), PutOptions{.position = 1}};
  }
  std::vector<absl::StatusOr<Tier>> results(6);
  store_->PutBatch(ns_, pages, absl::MakeSpan(results));
  for (int i = 0; i < 6; ++i) EXPECT_TRUE(results[i].ok()) << i << ": " << results[i].status();
  for (int i : {4, 5}) EXPECT_TRUE(GetAndCheck(i).ok()) << "the newest pages are kept";
}

// A persistent-tier stand-in that counts its Write calls (an NVMe batch pays one fdatasync per
// call) and fails the slots it is told to.
class CountingTier final : public TierBackend {
 public:
  CountingTier(uint32_t slots, uint64_t slot_bytes)
      : slots_(slots), slot_bytes_(slot_bytes), bytes_(slots * slot_bytes) {}
  Tier tier() const override { return Tier::kNvme; }
  absl::string_view name() const override { return "counting"; }
  uint32_t slot_count() const override { return slots_; }
  uint64_t slot_bytes() const override { return slot_bytes_; }
  std::byte* HostSlot(uint32_t) const override { return nullptr; }
  void Write(absl::Span<const SlotWrite> writes, absl::Span<absl::Status> results) override {
    ++write_calls;
    for (size_t i = 0; i < writes.size(); ++i) {
      if (writes[i].meta.key == fail_key) {
        results[i] = absl::DataLossError("injected write failure");
        continue;
      }
      std::byte* at = bytes_.data() + writes[i].slot * slot_bytes_;
      for (const ConstBuffer& b : writes[i].src) {
        std::memcpy(at, b.data, b.size);
        at += b.size;
      }
      results[i] = absl::OkStatus();
    }
  }
  void Read(absl::Span<const SlotRead> reads, absl::Span<absl::Status> results) override {
    ++read_calls;
    for (size_t i = 0; i < reads.size(); ++i) {
      if (reads[i].meta.key == fail_read_key) {
        results[i] = absl::DataLossError("injected read failure");
        continue;
      }
      const std::byte* at = bytes_.data() + reads[i].slot * slot_bytes_;
      for (const MutableBuffer& b : reads[i].dst) {
        std::memcpy(b.data, at, b.size);
        at += b.size;
      }
      results[i] = absl::OkStatus();
    }
  }
  int write_calls = 0;
  int read_calls = 0;
  PageKey fail_key;       // an index key
  PageKey fail_read_key;  // an index key

 private:
  uint32_t slots_;
  uint64_t slot_bytes_;
  std::vector<std::byte> bytes_;
};

CountingTier* TieredStoreTest::MakeOverCountingTier(const TierOptions& dram) {
  StoreOptions o;
  o.page_bytes = kPage;
  o.hbm.slots = 0;
  o.dram = dram;
  o.hbm_backend = HbmBackend::kHostEmulated;
  o.clock = &clock_;
  auto nvme = std::make_unique<CountingTier>(32, kPage);
  CountingTier* counting = nvme.get();
  StoreParts parts;
  parts.nvme = std::move(nvme);
  auto made = TieredStore::Create(o, std::move(parts));
  EXPECT_TRUE(made.ok()) << made.status();
  store_ = *std::move(made);
  ns_ = *store_->AddNamespace("model-a/tenant-1", 0);
  return counting;
}

TEST_F(TieredStoreTest, GetBatchReadsEachTierOnceAndKeepsPerPageResults) {
  CountingTier* counting = MakeOverCountingTier(TierOptions{.slots = 4});
  for (int i = 0; i < 4; ++i) ASSERT_EQ(*Put(i, PutOptions{.tier = Tier::kDram}), Tier::kDram);
  for (int i = 4; i < 10; ++i) ASSERT_EQ(*Put(i, PutOptions{.tier = Tier::kNvme}), Tier::kNvme);
  // Page 6 fails on the device; key 99 was never stored; page 2's destination is short; page 5
  // is listed twice.
  counting->fail_read_key = store_->IndexKeyOf(ns_, Key(6));
  const std::vector<uint64_t> ids{0, 4, 99, 1, 5, 6, 2, 7, 5, 3};
  std::vector<PageKey> keys;
  std::vector<std::vector<std::byte>> out(ids.size(), std::vector<std::byte>(kPage));
  std::vector<MutableBuffer> bufs;
  for (size_t k = 0; k < ids.size(); ++k) {
    keys.push_back(Key(ids[k]));
    bufs.push_back({out[k].data(), ids[k] == 2 ? kPage / 2 : kPage});
  }
  std::vector<absl::Span<const MutableBuffer>> dsts;
  for (const MutableBuffer& b : bufs) dsts.push_back(absl::MakeConstSpan(&b, 1));
  const uint32_t before = store_->Find(ns_, Key(5))->stats.access_count;
  std::vector<absl::StatusOr<Tier>> results(ids.size());
  store_->GetBatch(ns_, keys, dsts, absl::MakeSpan(results));

  EXPECT_EQ(counting->read_calls, 1) << "one NVMe read call for the whole batch";
  for (size_t k = 0; k < ids.size(); ++k) {
    const uint64_t id = ids[k];
    if (id == 99) {
      EXPECT_EQ(results[k].status().code(), absl::StatusCode::kNotFound);
    } else if (id == 2) {
      EXPECT_EQ(results[k].status().code(), absl::StatusCode::kInvalidArgument);
    } else if (id == 6) {
      EXPECT_EQ(results[k].status().code(), absl::StatusCode::kDataLoss);
      EXPECT_FALSE(store_->Find(ns_, Key(6)).has_value()) << "an unreadable page is dropped";
    } else {
      ASSERT_TRUE(results[k].ok()) << id << ": " << results[k].status();
      EXPECT_EQ(*results[k], id < 4 ? Tier::kDram : Tier::kNvme);
      EXPECT_EQ(out[k], Contents(Key(id))) << "page " << id;
      EXPECT_EQ(store_->Find(ns_, Key(id))->pin_count, 0u) << "the reader's pin is given back";
    }
  }
  EXPECT_EQ(store_->Find(ns_, Key(5))->stats.access_count, before + 2);
}

TEST_F(TieredStoreTest, PutBatchWritesEachTierOnceAndKeepsPerPageResults) {
  CountingTier* counting = MakeOverCountingTier(TierOptions{.slots = 2});

  constexpr int kPages = 12;
  std::vector<std::vector<std::byte>> data;
  std::vector<ConstBuffer> src(kPages);
  std::vector<PutRequest> pages;
  for (int i = 0; i < kPages; ++i) data.push_back(Contents(Key(i)));
  for (int i = 0; i < kPages; ++i) {
    src[i] = ConstBuffer{data[i].data(), data[i].size()};
    PutOptions po;
    po.tier = Tier::kNvme;
    po.position = static_cast<uint32_t>(i + 1);
    po.parent = i == 0 ? PageKey{} : Key(i - 1);
    pages.push_back(PutRequest{Key(i), absl::MakeConstSpan(&src[i], 1), po});
  }
  // Page 5 fails on the device; page 7 is the wrong size; page 9 repeats page 3.
  counting->fail_key = store_->IndexKeyOf(ns_, Key(5));
  const ConstBuffer short_src{data[7].data(), kPage / 2};
  pages[7].src = absl::MakeConstSpan(&short_src, 1);
  pages[9].key = Key(3);
  std::vector<absl::StatusOr<Tier>> results(kPages);
  store_->PutBatch(ns_, pages, absl::MakeSpan(results));

  EXPECT_EQ(counting->write_calls, 1) << "one backend call for the whole batch, not one a page";
  for (int i = 0; i < kPages; ++i) {
    if (i == 5) {
      EXPECT_EQ(results[i].status().code(), absl::StatusCode::kDataLoss);
      EXPECT_FALSE(store_->Find(ns_, Key(5)).has_value()) << "a failed page leaves nothing";
    } else if (i == 7) {
      EXPECT_EQ(results[i].status().code(), absl::StatusCode::kInvalidArgument);
    } else {
      ASSERT_TRUE(results[i].ok()) << i << ": " << results[i].status();
      EXPECT_EQ(*results[i], Tier::kNvme);
    }
  }
  for (int i : {0, 1, 2, 3, 4, 6, 8, 10, 11}) {
    EXPECT_TRUE(GetAndCheck(i).ok()) << i;
    EXPECT_EQ(store_->Find(ns_, Key(i))->pin_count, 0u) << "the writer's pin is given back";
  }
  EXPECT_EQ(store_->Find(ns_, Key(0))->cached_children, 1u);
  EXPECT_EQ(store_->Counters().put_duplicates, 1u);
  // Put is PutBatch of one page: one more call.
  ASSERT_TRUE(Put(20, PutOptions{.tier = Tier::kNvme}).ok());
  EXPECT_EQ(counting->write_calls, 2);
}

TEST_F(TieredStoreTest, PlannerDemotesAPassToNvmeInOneWriteAndDropsAFailedPage) {
  CountingTier* counting =
      MakeOverCountingTier(TierOptions{.slots = 16, .high_watermark = 0.5, .low_watermark = 0.25});
  for (int i = 0; i < 16; ++i) ASSERT_EQ(*Put(i, PutOptions{.tier = Tier::kDram}), Tier::kDram);
  counting->fail_key = store_->IndexKeyOf(ns_, Key(2));  // LRU: pages 0..11 are the victims

  const PlannerReport r = store_->Maintain({.promote = false});
  EXPECT_EQ(counting->write_calls, 1) << "one backend call for the pass's DRAM -> NVMe route";
  EXPECT_EQ(r.demoted, 11u);
  EXPECT_EQ(r.dropped, 1u);
  EXPECT_EQ(r.bytes_moved, 11 * kPage);
  EXPECT_EQ(store_->Usage(Tier::kDram).used_slots, 4u);
  EXPECT_EQ(store_->Counters().io_errors[TierIndex(Tier::kNvme)], 1u);
  EXPECT_FALSE(store_->Find(ns_, Key(2)).has_value()) << "the page whose copy failed is dropped";
  for (int i = 0; i < 16; ++i) {
    if (i == 2) continue;
    EXPECT_EQ(TierOf(i), i < 12 ? Tier::kNvme : Tier::kDram) << i;
    EXPECT_EQ(store_->Find(ns_, Key(i))->pin_count, 0u) << i;
    EXPECT_TRUE(GetAndCheck(i).ok()) << i;
  }
}

}  // namespace
}  // namespace kvtier
