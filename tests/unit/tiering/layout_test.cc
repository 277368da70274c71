#include "tiering/layout.h"

#include "gtest/gtest.h"
#include "tests/unit/tiering/test_seed.h"

namespace kvtier {
namespace {

LayoutSpec Llama3_8B(TensorLayout tl) {
  return LayoutSpec{.layers = 32,
                    .kv_heads = 8,
                    .head_dim = 128,
                    .dtype = DType::kBF16,
                    .tokens_per_page = 16,
                    .tensor_layout = tl,
                    .num_blocks = 1000};
}

TEST(LayoutTest, Llama3_8BVllmPageIsTwoMiBInSixtyFourPieces) {
  absl::StatusOr<Layout> l = Layout::Create(Llama3_8B(TensorLayout::kVllmPerLayer));
  ASSERT_TRUE(l.ok()) << l.status();
  // 2 (K,V) * 32 layers * 8 heads * 128 dim * 2 bytes * 16 tokens (DESIGN.md §2).
  EXPECT_EQ(l->page_bytes(), 2u * 1024 * 1024);
  EXPECT_EQ(l->block_bytes_per_layer(), 32u * 1024);
  EXPECT_EQ(l->pieces_per_page(), 64u);
  EXPECT_EQ(l->buffer_count(), 32u);
  EXPECT_EQ(l->buffer_bytes(), 2u * 1000 * 32 * 1024);
  std::vector<Piece> pieces;
  ASSERT_TRUE(l->AppendPieces(5, pieces).ok());
  ASSERT_EQ(pieces.size(), 64u);
  // Layer 3, V of block 5: buffer 3 at (num_blocks + 5) * 32 KiB; page offset (3*2+1) * 32 KiB.
  const Piece& v3 = pieces[3 * 2 + 1];
  EXPECT_EQ(v3.buffer, 3u);
  EXPECT_EQ(v3.offset, (1000u + 5u) * 32768u);
  EXPECT_EQ(v3.length, 32768u);
  EXPECT_EQ(v3.page_offset, 7u * 32768u);
  // Layer 0, K of block 5.
  EXPECT_EQ(pieces[0].buffer, 0u);
  EXPECT_EQ(pieces[0].offset, 5u * 32768u);
}

TEST(LayoutTest, BlockMajorLayoutMergesKAndVIntoOnePiecePerLayer) {
  absl::StatusOr<Layout> l = Layout::Create(Llama3_8B(TensorLayout::kBlockMajorPerLayer));
  ASSERT_TRUE(l.ok());
  std::vector<Piece> pieces;
  ASSERT_TRUE(l->AppendPieces(999, pieces).ok());
  ASSERT_EQ(pieces.size(), 32u);
  EXPECT_EQ(pieces[31].buffer, 31u);
  EXPECT_EQ(pieces[31].offset, 999u * 65536u);
  EXPECT_EQ(pieces[31].length, 65536u);
  EXPECT_EQ(pieces[31].page_offset, 31u * 65536u);
}

TEST(LayoutTest, PageContiguousLayoutIsOnePiece) {
  absl::StatusOr<Layout> l = Layout::Create(Llama3_8B(TensorLayout::kPageContiguous));
  ASSERT_TRUE(l.ok());
  std::vector<Piece> pieces;
  ASSERT_TRUE(l->AppendPieces(2, pieces).ok());
  ASSERT_EQ(pieces.size(), 1u);
  EXPECT_EQ(pieces[0].offset, 2u * 2 * 1024 * 1024);
  EXPECT_EQ(l->buffer_count(), 1u);
}

TEST(LayoutTest, SglangPageFirstPageIsAKPieceAndAVPieceOfOneBuffer) {
  for (TensorLayout tl : {TensorLayout::kSplitKvPageFirst, TensorLayout::kSplitKvPageFirstDirect}) {
    absl::StatusOr<Layout> l = Layout::Create(Llama3_8B(tl));
    ASSERT_TRUE(l.ok()) << l.status();
    EXPECT_EQ(l->buffer_count(), 1u);
    EXPECT_EQ(l->pieces_per_page(), 2u);
    // [2, 1000, ...]: the K half of all blocks, then the V half; 2 MiB pages.
    EXPECT_EQ(l->buffer_bytes(), 1000u * 2 * 1024 * 1024);
    std::vector<Piece> pieces;
    ASSERT_TRUE(l->AppendPieces(7, pieces).ok());
    ASSERT_EQ(pieces.size(), 2u);
    EXPECT_EQ(pieces[0].buffer, 0u);
    EXPECT_EQ(pieces[0].offset, 7u * 1024 * 1024);
    EXPECT_EQ(pieces[0].length, 1024u * 1024);
    EXPECT_EQ(pieces[0].page_offset, 0u);
    EXPECT_EQ(pieces[1].buffer, 0u);
    EXPECT_EQ(pieces[1].offset, (1000u + 7u) * 1024 * 1024);
    EXPECT_EQ(pieces[1].length, 1024u * 1024);
    EXPECT_EQ(pieces[1].page_offset, 1024u * 1024);
  }
}

TEST(LayoutTest, BlockIdOutOfRangeIsRejectedWithTheRange) {
  absl::StatusOr<Layout> l = Layout::Create(Llama3_8B(TensorLayout::kVllmPerLayer));
  ASSERT_TRUE(l.ok());
  std::vector<Piece> pieces;
  absl::Status s = l->AppendPieces(1000, pieces);
  EXPECT_EQ(s.code(), absl::StatusCode::kOutOfRange);
  EXPECT_NE(s.message().find("block id 1000 out of range [0, 1000)"), absl::string_view::npos) << s;
  EXPECT_TRUE(pieces.empty());
}

TEST(LayoutTest, ZeroAndOverflowingSpecsAreRejected) {
  LayoutSpec zero = Llama3_8B(TensorLayout::kVllmPerLayer);
  zero.kv_heads = 0;
  EXPECT_EQ(Layout::Create(zero).status().code(), absl::StatusCode::kInvalidArgument);
  LayoutSpec huge = Llama3_8B(TensorLayout::kVllmPerLayer);
  huge.head_dim = 1u << 31;
  huge.tokens_per_page = 1u << 31;
  EXPECT_EQ(Layout::Create(huge).status().code(), absl::StatusCode::kInvalidArgument);
  LayoutSpec bad_dtype = Llama3_8B(TensorLayout::kVllmPerLayer);
  bad_dtype.dtype = static_cast<DType>(77);
  EXPECT_EQ(Layout::Create(bad_dtype).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(LayoutTest, PiecesTileThePageExactlyForRandomShapes) {
  auto rng = testing::SeededRng();
  std::uniform_int_distribution<uint32_t> small(1, 9);
  for (int iter = 0; iter < 200; ++iter) {
    LayoutSpec spec{.layers = small(rng),
                    .kv_heads = small(rng),
                    .head_dim = 8 * small(rng),
                    .dtype = static_cast<DType>(rng() % 4),
                    .tokens_per_page = small(rng),
                    .tensor_layout = static_cast<TensorLayout>(
                        rng() % (static_cast<uint32_t>(kLastTensorLayout) + 1)),
                    .num_blocks = small(rng) + 1};
    absl::StatusOr<Layout> l = Layout::Create(spec);
    ASSERT_TRUE(l.ok()) << l.status();
    const uint32_t block = static_cast<uint32_t>(rng() % spec.num_blocks);
    std::vector<Piece> pieces;
    ASSERT_TRUE(l->AppendPieces(block, pieces).ok());
    ASSERT_EQ(pieces.size(), l->pieces_per_page());
    uint64_t next = 0;
    for (const Piece& p : pieces) {
      EXPECT_EQ(p.page_offset, next);
      EXPECT_LT(p.buffer, l->buffer_count());
      EXPECT_LE(p.offset + p.length, l->buffer_bytes());
      next += p.length;
    }
    EXPECT_EQ(next, l->page_bytes());
    // The templates are the same pieces for every block, and each one's last block stays inside
    // its buffer (what BindPieceTemplates relies on).
    ASSERT_EQ(l->piece_templates().size(), pieces.size());
    for (size_t i = 0; i < pieces.size(); ++i) {
      const PieceTemplate& t = l->piece_templates()[i];
      EXPECT_EQ(t.buffer, pieces[i].buffer);
      EXPECT_EQ(t.offset + block * t.block_stride, pieces[i].offset);
      EXPECT_EQ(t.length, pieces[i].length);
      EXPECT_EQ(t.page_offset, pieces[i].page_offset);
      EXPECT_LE(t.offset + (spec.num_blocks - 1) * t.block_stride + t.length, l->buffer_bytes());
    }
  }
}

}  // namespace
}  // namespace kvtier
