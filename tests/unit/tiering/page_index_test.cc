#include "tiering/page_index.h"

#include <thread>

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

}  // namespace
}  // namespace kvtier
