#include "tiering/page_index.h"

#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "tests/unit/tiering/test_seed.h"

namespace kvtier {
namespace {

PageEntry Ready(NamespaceId ns, uint32_t slot, Tier tier = Tier::kDram) {
  PageEntry e;
  e.ns = ns;
  e.slot = slot;
  e.tier = tier;
  e.state = PageState::kReady;
  return e;
}

TEST(PageIndexTest, ConcurrentWritersAndReadersAgreeOnTheFinalState) {
  const uint64_t seed = testing::TestSeed();
  std::printf("[ seed     ] KVTIER_TEST_SEED=%llu\n", static_cast<unsigned long long>(seed));
  PageIndex index;
  constexpr int kThreads = 4, kPerThread = 5000;
  std::vector<std::thread> threads;
  std::atomic<int> torn{0};
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(seed + t);
      for (int i = 0; i < kPerThread; ++i) {
        // Thread-owned keys: the expected final state is known exactly.
        const PageKey key{rng(), static_cast<uint64_t>(t) << 32 | static_cast<uint64_t>(i)};
        ASSERT_TRUE(index.Insert(key, Ready(t, i)));
        ASSERT_FALSE(index.Insert(key, Ready(t, i + 1)));
        index.Update(key, [](PageEntry& e) { e.pin_count += 2; });
        std::optional<PageEntry> e = index.Find(key);
        if (!e || e->slot != static_cast<uint32_t>(i) || e->pin_count != 2) ++torn;
        if (i % 2 == 1) {
          ASSERT_TRUE(index.Erase(key));
        }
      }
    });
  }
  // A reader walking the index while it changes must only ever see whole entries.
  std::thread reader([&] {
    for (int pass = 0; pass < 20; ++pass) {
      index.ForEach([&](const PageKey& k, const PageEntry& e) {
        if (static_cast<NamespaceId>(k.lo >> 32) != e.ns) ++torn;
      });
    }
  });
  for (auto& th : threads) th.join();
  reader.join();
  EXPECT_EQ(torn.load(), 0);
  EXPECT_EQ(index.size(), static_cast<size_t>(kThreads * kPerThread / 2));
  size_t seen = 0;
  index.ForEach([&](const PageKey& k, const PageEntry& e) {
    EXPECT_EQ(e.slot % 2, 0u);
    EXPECT_EQ(k.lo & 0xffffffff, e.slot);
    ++seen;
  });
  EXPECT_EQ(seen, index.size());
}

TEST(PageIndexTest, LookupPrefixIsScopedToTheNamespaceAndSkipsUnfinishedPages) {
  PageIndex index;
  const PageKey k[4] = {{1, 1}, {2, 2}, {3, 3}, {4, 4}};
  index.Insert(k[0], Ready(7, 0, Tier::kHbm));
  index.Insert(k[1], Ready(7, 1, Tier::kDram));
  PageEntry filling = Ready(7, 2);
  filling.state = PageState::kFilling;
  index.Insert(k[2], filling);
  index.Insert(k[3], Ready(7, 3));
  Tier tiers[4];
  EXPECT_EQ(index.LookupPrefix(7, k, tiers), 2u);
  EXPECT_EQ(tiers[0], Tier::kHbm);
  EXPECT_EQ(tiers[1], Tier::kDram);
  EXPECT_EQ(index.LookupPrefix(8, k, tiers), 0u) << "another namespace sees nothing";
  index.Update(k[2], [](PageEntry& e) { e.state = PageState::kReady; });
  EXPECT_EQ(index.LookupPrefix(7, k, tiers), 4u);
  index.Erase(k[0]);
  EXPECT_EQ(index.LookupPrefix(7, k, tiers), 0u) << "a missing first page is no prefix";
}

// The batched forms visit every listed key once a listing (duplicates twice), across all shards,
// with null for an absent key; UpdateEach's changes land; LookupPrefix of many keys (which goes
// through FindEach) stops at the first miss in key order, not in shard order.
TEST(PageIndexTest, BatchedProbesSeeEveryListingAcrossShards) {
  PageIndex index;
  std::vector<PageKey> keys;
  for (uint64_t i = 0; i < 1000; ++i) {
    keys.push_back(PageKey{i * 7919 + 3, i});
    if (i % 10 != 9) index.Insert(keys.back(), Ready(1, static_cast<uint32_t>(i)));
  }
  keys.push_back(keys[5]);  // listed twice
  std::vector<int> seen(keys.size(), 0);
  size_t absent = 0;
  index.FindEach(keys, [&](size_t i, const PageEntry* e) {
    ++seen[i];
    if (e == nullptr) {
      ++absent;
    } else {
      EXPECT_EQ(e->slot, keys[i].lo) << "entry of key " << i;
    }
  });
  EXPECT_EQ(absent, 100u);
  for (size_t i = 0; i < seen.size(); ++i) EXPECT_EQ(seen[i], 1) << "listing " << i;
  index.UpdateEach(keys, [](size_t, PageEntry* e) {
    if (e != nullptr) ++e->pin_count;
  });
  EXPECT_EQ(index.Find(keys[5])->pin_count, 2u) << "a key listed twice is updated twice";
  EXPECT_EQ(index.Find(keys[6])->pin_count, 1u);
  std::vector<Tier> tiers(keys.size());
  EXPECT_EQ(index.LookupPrefix(1, keys, absl::MakeSpan(tiers)), 9u) << "key 9 is the first miss";
  EXPECT_EQ(index.LookupPrefix(1, absl::MakeConstSpan(keys).subspan(0, 9), absl::MakeSpan(tiers)),
            9u);
}

}  // namespace
}  // namespace kvtier
