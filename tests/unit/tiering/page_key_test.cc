#include "tiering/page_key.h"

#include <vector>

#include "gtest/gtest.h"
#include "tests/unit/tiering/test_seed.h"

namespace kvtier {
namespace {

std::vector<int32_t> RandomTokens(std::mt19937_64& rng, size_t n) {
  std::uniform_int_distribution<int32_t> tok(1, 128'000);
  std::vector<int32_t> t(n);
  for (int32_t& x : t) x = tok(rng);
  return t;
}

TEST(PageKeyTest, SharedPrefixSharesKeysUntilTheFirstDifferentBlock) {
  auto rng = testing::SeededRng();
  const PageKey salt = NamespaceSalt("llama-3-8b/tenant-a");
  std::vector<int32_t> a = RandomTokens(rng, 64);
  std::vector<int32_t> b = a;
  b[40] ^= 1;  // block 2 (tokens 32..47) differs
  const std::vector<PageKey> ka = ChainKeys(salt, a, 16);
  const std::vector<PageKey> kb = ChainKeys(salt, b, 16);
  ASSERT_EQ(ka.size(), 4u);
  ASSERT_EQ(kb.size(), 4u);
  EXPECT_EQ(ka[0], kb[0]);
  EXPECT_EQ(ka[1], kb[1]);
  EXPECT_NE(ka[2], kb[2]);
  // Chaining: a difference in block 2 changes every later key even where tokens agree.
  EXPECT_NE(ka[3], kb[3]);
}

TEST(PageKeyTest, NamespacesNeverShareKeys) {
  auto rng = testing::SeededRng();
  std::vector<int32_t> t = RandomTokens(rng, 32);
  const auto k1 = ChainKeys(NamespaceSalt("model/tenant-a"), t, 16);
  const auto k2 = ChainKeys(NamespaceSalt("model/tenant-b"), t, 16);
  ASSERT_EQ(k1.size(), 2u);
  EXPECT_NE(k1[0], k2[0]);
  EXPECT_NE(k1[1], k2[1]);
}

TEST(PageKeyTest, TrailingPartialBlockHasNoKey) {
  auto rng = testing::SeededRng();
  std::vector<int32_t> t = RandomTokens(rng, 40);
  EXPECT_EQ(ChainKeys(NamespaceSalt("ns"), t, 16).size(), 2u);
  EXPECT_TRUE(ChainKeys(NamespaceSalt("ns"), t, 0).empty());
}

TEST(PageKeyTest, KeyDependsOnParentAndMatchesChainKeys) {
  auto rng = testing::SeededRng();
  const PageKey salt = NamespaceSalt("ns");
  std::vector<int32_t> t = RandomTokens(rng, 32);
  const auto keys = ChainKeys(salt, t, 16);
  const PageKey first = ChainKey(salt, PageKey{}, absl::MakeConstSpan(t).subspan(0, 16));
  const PageKey second = ChainKey(salt, first, absl::MakeConstSpan(t).subspan(16, 16));
  EXPECT_EQ(keys[0], first);
  EXPECT_EQ(keys[1], second);
  EXPECT_NE(ChainKey(salt, PageKey{}, absl::MakeConstSpan(t).subspan(16, 16)), second);
  EXPECT_FALSE(first.is_null());
}

TEST(PageKeyTest, IdBlocksAndTokenBlocksAreDifferentDomains) {
  const PageKey salt = NamespaceSalt("ns");
  const int32_t tokens[2] = {7, 0};
  uint64_t id = 7;  // same 8 bytes as the two tokens above
  EXPECT_NE(ChainKey(salt, PageKey{}, tokens), ChainKeyFromId(salt, PageKey{}, id));
  EXPECT_EQ(ChainKeyFromId(salt, PageKey{}, 7), ChainKeyFromId(salt, PageKey{}, 7));
}

TEST(PageKeyTest, HexIsThirtyTwoDigitsHighWordFirst) {
  EXPECT_EQ((PageKey{0x1, 0xabcdef}).ToHex(), "00000000000000010000000000abcdef");
}

}  // namespace
}  // namespace kvtier
