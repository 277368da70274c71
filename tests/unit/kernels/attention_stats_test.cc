// The CPU twin of the attention statistics against the float64 reference, on random shapes with
// odd sizes, plus closed-form and planted-sink cases that pin down what the numbers mean.
#include "kernels/attention_stats.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "tests/unit/kernels/test_util.h"

namespace kvtier::kernels {
namespace {

using testing::RandomHalves;
using testing::TestSeed;
using testing::ToHalf;

struct Inputs {
  std::vector<uint16_t> q, k, v;
};

Inputs RandomInputs(std::mt19937_64& rng, const AttentionStatsShape& s) {
  Inputs in;
  // Unit-variance q and k give logits of spread ~1 after the 1/sqrt(d) scale: a softmax that is
  // neither flat nor one-hot.
  in.q = RandomHalves(rng, size_t{s.window} * s.q_heads * s.head_dim, s.dtype, 1.0f);
  in.k = RandomHalves(rng, size_t{s.tokens} * s.kv_heads * s.head_dim, s.dtype, 1.0f);
  in.v = RandomHalves(rng, size_t{s.tokens} * s.kv_heads * s.head_dim, s.dtype, 0.5f);
  return in;
}

TEST(AttentionStatsCpuTest, TwinMatchesFloat64ReferenceOnRandomShapes) {
  std::mt19937_64 rng(TestSeed("TwinMatchesFloat64ReferenceOnRandomShapes"));
  const uint32_t head_dims[] = {8, 24, 40, 64, 128};
  const uint32_t head_pairs[][2] = {{1, 1}, {4, 4}, {8, 2}, {6, 3}, {32, 8}};
  for (int round = 0; round < 12; ++round) {
    AttentionStatsShape s;
    const auto& hp = head_pairs[rng() % 5];
    s.q_heads = hp[0];
    s.kv_heads = hp[1];
    s.head_dim = head_dims[rng() % 5];
    s.tokens = 1 + rng() % 300;
    s.window = 1 + rng() % std::min<uint32_t>(s.tokens, 9);
    s.tokens_per_page = 1 + rng() % 17;
    s.dtype = rng() % 2 ? KvDType::kBF16 : KvDType::kFP16;
    SCOPED_TRACE(::testing::Message()
                 << "round " << round << " tokens=" << s.tokens << " q_heads=" << s.q_heads
                 << " kv_heads=" << s.kv_heads << " d=" << s.head_dim << " w=" << s.window
                 << " tpp=" << s.tokens_per_page);
    const Inputs in = RandomInputs(rng, s);
    const uint32_t pages = AttentionStatsPageCount(s);
    AttentionStatsOptions opt;
    opt.breadth_threshold = 1.0f / pages;
    std::vector<PageAttentionStats> got(pages), ref(pages);
    ASSERT_TRUE(
        ComputeAttentionStatsCpu(s, opt, in.q.data(), in.k.data(), in.v.data(), absl::MakeSpan(got))
            .ok());
    ASSERT_TRUE(ComputeAttentionStatsReference(s, opt, in.q.data(), in.k.data(), in.v.data(),
                                               absl::MakeSpan(ref))
                    .ok());
    double mass_sum = 0;
    for (uint32_t p = 0; p < pages; ++p) {
      mass_sum += ref[p].mass;
      EXPECT_NEAR(got[p].mass, ref[p].mass, 1e-3 * std::max(ref[p].mass, 1.0f / pages) + 1e-6)
          << "page " << p;
      EXPECT_NEAR(got[p].value_norm, ref[p].value_norm, 1e-4 * ref[p].value_norm) << "page " << p;
      EXPECT_NEAR(got[p].mass_entropy, ref[p].mass_entropy, 1e-3) << "page " << p;
      // Breadth may differ only by pairs sitting on the threshold: allow one pair.
      EXPECT_NEAR(got[p].breadth, ref[p].breadth, 1.0 / (s.window * s.q_heads) + 1e-6)
          << "page " << p;
      EXPECT_GE(ref[p].mass_entropy, 0.0f);
      EXPECT_LE(ref[p].mass_entropy, 1.0f + 1e-6f);
      EXPECT_GT(ref[p].value_norm, 0.0f);
    }
    EXPECT_NEAR(mass_sum, 1.0, 1e-6);  // float outputs: ~6e-8 rounding each
  }
}

TEST(AttentionStatsCpuTest, ClosedFormTwoTokens) {
  // One head, head_dim 1, q = 2, k = (1, -1): logits 2 and -2, so page 0 (token 0) gets
  // 1 / (1 + e^-4). All values are exact in bf16 and fp16.
  for (KvDType dt : {KvDType::kBF16, KvDType::kFP16}) {
    AttentionStatsShape s{2, 1, 1, 1, 1, 1, dt};
    const uint16_t q[] = {ToHalf(dt, 2.0f)};
    const uint16_t k[] = {ToHalf(dt, 1.0f), ToHalf(dt, -1.0f)};
    const uint16_t v[] = {ToHalf(dt, -3.0f), ToHalf(dt, 0.5f)};
    std::vector<PageAttentionStats> out(2);
    ASSERT_TRUE(
        ComputeAttentionStatsCpu(s, {.breadth_threshold = 0.5f}, q, k, v, absl::MakeSpan(out))
            .ok());
    const double m0 = 1.0 / (1.0 + std::exp(-4.0));
    EXPECT_NEAR(out[0].mass, m0, 1e-6);
    EXPECT_NEAR(out[1].mass, 1.0 - m0, 1e-6);
    EXPECT_EQ(out[0].breadth, 1.0f);
    EXPECT_EQ(out[1].breadth, 0.0f);
    EXPECT_FLOAT_EQ(out[0].value_norm, 3.0f);
    EXPECT_FLOAT_EQ(out[1].value_norm, 0.5f);
    EXPECT_EQ(out[0].mass_entropy, 1.0f);  // one head: defined as 1
  }
}

TEST(AttentionStatsCpuTest, CausalWindowMasksFutureTokens) {
  // Window 2 over 2 tokens: query 0 sits at token 0 and sees only it; query 1 sees both.
  const KvDType dt = KvDType::kBF16;
  AttentionStatsShape s{2, 1, 1, 1, 2, 1, dt};
  const uint16_t q[] = {ToHalf(dt, 1.0f), ToHalf(dt, 1.0f)};
  const uint16_t k[] = {ToHalf(dt, 1.0f), ToHalf(dt, 1.0f)};
  const uint16_t v[] = {ToHalf(dt, 1.0f), ToHalf(dt, 2.0f)};
  std::vector<PageAttentionStats> out(2);
  ASSERT_TRUE(ComputeAttentionStatsCpu(s, {}, q, k, v, absl::MakeSpan(out)).ok());
  EXPECT_NEAR(out[0].mass, (1.0 + 0.5) / 2, 1e-6);
  EXPECT_NEAR(out[1].mass, 0.5 / 2, 1e-6);
}

TEST(AttentionStatsCpuTest, PlantedSinkIsBroadHeavyAndEmpty) {
  std::mt19937_64 rng(TestSeed("PlantedSinkIsBroadHeavyAndEmpty"));
  AttentionStatsShape s{256, 8, 2, 64, 8, 16, KvDType::kBF16};
  Inputs in = RandomInputs(rng, s);
  // Every query shares a direction u; page 0's keys point along u and its values are tiny: the
  // StreamingLLM sink.
  std::normal_distribution<float> n01(0, 1);
  std::vector<float> u(s.head_dim);
  for (float& x : u) x = n01(rng);
  for (uint32_t i = 0; i < s.window * s.q_heads; ++i) {
    for (uint32_t c = 0; c < s.head_dim; ++c) {
      uint16_t& e = in.q[size_t{i} * s.head_dim + c];
      e = ToHalf(s.dtype, testing::FromHalf(s.dtype, e) * 0.3f + u[c]);
    }
  }
  for (uint32_t t = 0; t < s.tokens_per_page; ++t) {
    for (uint32_t g = 0; g < s.kv_heads; ++g) {
      for (uint32_t c = 0; c < s.head_dim; ++c) {
        const size_t idx = (size_t{t} * s.kv_heads + g) * s.head_dim + c;
        in.k[idx] = ToHalf(s.dtype, u[c] * 1.5f);
        in.v[idx] = ToHalf(s.dtype, testing::FromHalf(s.dtype, in.v[idx]) * 0.01f);
      }
    }
  }
  const uint32_t pages = AttentionStatsPageCount(s);
  std::vector<PageAttentionStats> out(pages);
  ASSERT_TRUE(ComputeAttentionStatsCpu(s, {.breadth_threshold = 0.2f}, in.q.data(), in.k.data(),
                                       in.v.data(), absl::MakeSpan(out))
                  .ok());
  EXPECT_GT(out[0].mass, 0.9f);
  EXPECT_EQ(out[0].breadth, 1.0f);
  EXPECT_GT(out[0].mass_entropy, 0.95f);  // every head sends it mass
  for (uint32_t p = 1; p < pages; ++p) {
    EXPECT_LT(out[p].mass, 0.05f) << p;
    EXPECT_EQ(out[p].breadth, 0.0f) << p;
    EXPECT_GT(out[p].value_norm, 20 * out[0].value_norm) << p;
  }
}

TEST(AttentionStatsCpuTest, InvalidShapesAreRejected) {
  std::vector<PageAttentionStats> out(4);
  AttentionStatsShape ok{64, 4, 2, 1, 4, 16, KvDType::kFP16};
  std::vector<uint16_t> buf(512, ToHalf(ok.dtype, 0.25f));
  const uint16_t* x = buf.data();
  EXPECT_TRUE(ComputeAttentionStatsCpu(ok, {}, x, x, x, absl::MakeSpan(out)).ok());
  AttentionStatsShape s = ok;
  s.kv_heads = 3;
  EXPECT_EQ(ValidateAttentionStatsShape(s).code(), absl::StatusCode::kInvalidArgument);
  s = ok;
  s.window = 65;
  EXPECT_EQ(ValidateAttentionStatsShape(s).code(), absl::StatusCode::kInvalidArgument);
  s = ok;
  s.tokens_per_page = 0;
  EXPECT_EQ(ValidateAttentionStatsShape(s).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ComputeAttentionStatsCpu(ok, {}, x, x, x, absl::MakeSpan(out).subspan(1)).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ComputeAttentionStatsCpu(ok, {}, nullptr, x, x, absl::MakeSpan(out)).code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace kvtier::kernels
