// Sink classification on synthetic attention whose truth is known by construction.
#include "tiering/policy/sink_classifier.h"

#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "test_seed.h"
#include "tiering/tiered_store.h"

namespace kvtier {
namespace {

// Rows (query, head) x pages of softmax rows. Page `sink` takes 70-90% of every row; rows of the
// "topic" (half of them) also give page `heavy` 40-60%; the rest is random.
struct Synthetic {
  size_t rows, pages, sink, heavy;
  std::vector<float> probs, norms;
};

Synthetic MakeAttention(std::mt19937_64& rng, size_t sink, size_t heavy, bool heavy_everywhere) {
  Synthetic s{128, 16, sink, heavy, {}, {}};
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  s.probs.resize(s.rows * s.pages);
  for (size_t r = 0; r < s.rows; ++r) {
    float* row = s.probs.data() + r * s.pages;
    float rest = 0;
    for (size_t p = 0; p < s.pages; ++p) rest += row[p] = 0.05f + u(rng);
    const float sink_share = 0.7f + 0.2f * u(rng);  // deep-layer sinks take most of a row
    const bool topic = heavy_everywhere || r % 2 == 0;
    const float heavy_share = topic ? 0.4f + 0.2f * u(rng) : 0.0f;
    const float other = std::max(0.0f, 1.0f - sink_share - heavy_share);
    for (size_t p = 0; p < s.pages; ++p) row[p] *= other / rest;
    row[sink] += sink_share;
    row[heavy] += heavy_share;
    float total = 0;
    for (size_t p = 0; p < s.pages; ++p) total += row[p];
    for (size_t p = 0; p < s.pages; ++p) row[p] /= total;
  }
  s.norms.resize(s.pages);
  for (size_t p = 0; p < s.pages; ++p) s.norms[p] = 0.8f + 0.4f * u(rng);
  s.norms[sink] = 0.02f + 0.06f * u(rng);  // value-state drain
  s.norms[heavy] = 1.4f + 0.4f * u(rng);   // important: large values
  return s;
}

PageStats StatsAfter(const AttentionSample& a, uint32_t reports) {
  PageStats s;
  s.attention_mass = a.mass;
  s.breadth = a.breadth;
  s.value_norm = a.value_norm;
  s.mass_entropy = a.mass_entropy;
  s.stat_reports = reports;
  return s;
}

TEST(SinkClassifierTest, FindsSinkAwayFromPositionZeroAndSparesHeavyHitter) {
  std::mt19937_64 rng = testing::SeededRng();
  for (bool heavy_everywhere : {false, true}) {
    const size_t sink = 3 + rng() % 10;  // never position 0
    const size_t heavy = (sink + 1 + rng() % 14) % 16;
    ASSERT_NE(sink, heavy);
    const Synthetic s = MakeAttention(rng, sink, heavy, heavy_everywhere);
    absl::StatusOr<std::vector<AttentionSample>> samples =
        SummarizeAttention(s.probs, s.rows, s.pages, s.norms);
    ASSERT_TRUE(samples.ok()) << samples.status();
    const SinkClassifier classifier;
    for (size_t p = 0; p < s.pages; ++p) {
      const PageStats stats = StatsAfter((*samples)[p], 5);
      EXPECT_EQ(classifier.LooksLikeSink(stats), p == sink)
          << "page " << p << " sink=" << sink << " heavy=" << heavy << " breadth=" << stats.breadth
          << " entropy=" << stats.mass_entropy << " norm=" << stats.value_norm
          << " mass=" << stats.attention_mass;
    }
    // The heavy hitter is as hot as the sink (and as broad when every row attends it): only its
    // value norm keeps it out.
    EXPECT_GT((*samples)[heavy].mass, 0.15f);
    if (heavy_everywhere) {
      EXPECT_GE((*samples)[heavy].breadth, 0.85f);
    }
  }
}

TEST(SinkClassifierTest, NeedsEnoughReports) {
  const SinkClassifier classifier;
  PageStats sink_like;
  sink_like.breadth = 0.99f;
  sink_like.mass_entropy = 0.1f;
  sink_like.value_norm = 0.05f;
  sink_like.stat_reports = 2;
  EXPECT_FALSE(classifier.LooksLikeSink(sink_like));
  sink_like.stat_reports = 3;
  EXPECT_TRUE(classifier.LooksLikeSink(sink_like));
}

TEST(SinkClassifierTest, TrustOrderHintPositionMeasurement) {
  const SinkClassifier classifier(SinkClassifierOptions{.sink_tokens = 4, .tokens_per_page = 16});
  EXPECT_EQ(classifier.OnPut(PageClass::kUnknown, 0).cls, PageClass::kSink);
  EXPECT_EQ(classifier.OnPut(PageClass::kUnknown, 0).source, ClassSource::kPosition);
  EXPECT_EQ(classifier.OnPut(PageClass::kUnknown, 1).cls, PageClass::kUnknown);
  // The hint wins over position.
  EXPECT_EQ(classifier.OnPut(PageClass::kSemantic, 0).cls, PageClass::kSemantic);
  EXPECT_EQ(classifier.OnPut(PageClass::kSemantic, 0).source, ClassSource::kHint);
  // Measurement never overrides position or hint, but decides an unknown page.
  PageEntry e;
  e.stats.stat_reports = 10;
  e.stats.breadth = 0.1f;
  e.stats.value_norm = 1.0f;
  e.cls = PageClass::kSink;
  e.class_source = ClassSource::kPosition;
  EXPECT_EQ(classifier.OnStats(e).cls, PageClass::kSink);
  e.cls = PageClass::kUnknown;
  e.class_source = ClassSource::kNone;
  EXPECT_EQ(classifier.OnStats(e).cls, PageClass::kSemantic);
  EXPECT_EQ(classifier.OnStats(e).source, ClassSource::kMeasured);
}

TEST(SinkClassifierTest, RejectsMalformedAttention) {
  std::vector<float> probs(10, 0.1f), norms(4, 1.0f);
  EXPECT_FALSE(SummarizeAttention(probs, 3, 4, norms).ok());  // 10 != 3 x 4
  EXPECT_FALSE(SummarizeAttention(probs, 2, 5, norms).ok());  // 4 norms for 5 pages
}

// Through the store: reports make a mid-sequence page a measured sink, which moves into the
// namespace's reserved slot; a heavy hitter with the same heat stays semantic.
TEST(SinkClassifierTest, StoreMovesMeasuredSinkIntoReservedSlot) {
  std::mt19937_64 rng = testing::SeededRng();
  StoreOptions o;
  o.page_bytes = 64;
  o.hbm.slots = 4;
  o.dram.slots = 16;
  o.hbm_backend = HbmBackend::kHostEmulated;
  o.pin_dram = false;
  o.sink_tokens = 0;
  absl::StatusOr<std::unique_ptr<TieredStore>> store = TieredStore::Create(o);
  ASSERT_TRUE(store.ok()) << store.status();
  absl::StatusOr<NamespaceId> ns = (*store)->AddNamespace("m", 1);
  ASSERT_TRUE(ns.ok());
  std::vector<PageKey> keys;
  std::vector<std::byte> bytes(64);
  for (uint32_t i = 0; i < 12; ++i) {
    keys.push_back(PageKey{rng() | 1, rng()});
    for (auto& b : bytes) b = static_cast<std::byte>(rng());
    const ConstBuffer src{bytes.data(), bytes.size()};
    PutOptions put;
    put.position = i;
    ASSERT_TRUE((*store)->Put(*ns, keys[i], absl::MakeConstSpan(&src, 1), put).ok());
  }
  const size_t sink = 5 + rng() % 3, heavy = 9;
  const SinkClassifier classifier;
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  for (int step = 0; step < 5; ++step) {
    for (size_t p = 0; p < keys.size(); ++p) {
      AttentionSample a{0.01f + 0.01f * u(rng), 0.05f * u(rng), 0.8f + 0.4f * u(rng),
                        0.7f + 0.2f * u(rng)};
      if (p == sink) a = {0.4f, 0.95f + 0.05f * u(rng), 0.05f * u(rng), 0.2f};
      if (p == heavy) a = {0.4f, 0.95f + 0.05f * u(rng), 1.5f, 0.2f};
      ASSERT_TRUE((*store)->ReportAttention(*ns, keys[p], a).ok());
      ASSERT_TRUE(ClassifyAfterReport(**store, *ns, keys[p], classifier).ok());
    }
  }
  for (size_t p = 0; p < keys.size(); ++p) {
    std::optional<PageEntry> e = (*store)->Find(*ns, keys[p]);
    ASSERT_TRUE(e.has_value());
    EXPECT_EQ(e->cls, p == sink ? PageClass::kSink : PageClass::kSemantic) << "page " << p;
    EXPECT_EQ(e->in_sink_slot, p == sink) << "page " << p;
    if (p == sink) {
      EXPECT_EQ(e->tier, Tier::kHbm);
      EXPECT_EQ(e->class_source, ClassSource::kMeasured);
    }
  }
  EXPECT_EQ((*store)->Usage(Tier::kHbm).sink_used_slots, 1u);
}

}  // namespace
}  // namespace kvtier
