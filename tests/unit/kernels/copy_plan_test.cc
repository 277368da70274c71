// CopyPlan: Layout pieces -> copy ops. A random set of pages gathered out of vLLM-style worker
// buffers and scattered into a second set must reproduce exactly those blocks; MergeAdjacentCopies
// coalesces only true continuations.
#include "tiering/copy_plan.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "kernels/copy_batch.h"
#include "tests/unit/kernels/test_util.h"

namespace kvtier {
namespace {

TEST(CopyPlanTest, GatherThenScatterRoundTripsRandomBlocks) {
  std::mt19937_64 rng(kernels::testing::TestSeed("GatherThenScatterRoundTripsRandomBlocks"));
  for (TensorLayout tl : {TensorLayout::kVllmPerLayer, TensorLayout::kBlockMajorPerLayer,
                          TensorLayout::kPageContiguous}) {
    LayoutSpec spec;
    spec.layers = 1 + rng() % 5;
    spec.kv_heads = 1 + rng() % 3;
    spec.head_dim = 8 * (1 + rng() % 4);
    spec.tokens_per_page = 1 + rng() % 9;
    spec.dtype = DType::kBF16;
    spec.tensor_layout = tl;
    spec.num_blocks = 5 + rng() % 20;
    auto layout = Layout::Create(spec);
    ASSERT_TRUE(layout.ok()) << layout.status();
    const size_t nbuf = layout->buffer_count(), bytes = layout->buffer_bytes();
    std::vector<std::vector<std::byte>> src(nbuf, std::vector<std::byte>(bytes));
    std::vector<std::vector<std::byte>> dst(nbuf, std::vector<std::byte>(bytes, std::byte{0x5a}));
    for (auto& b : src) {
      for (auto& x : b) x = static_cast<std::byte>(rng());
    }
    std::vector<std::byte*> src_ptrs, dst_ptrs;
    for (auto& b : src) src_ptrs.push_back(b.data());
    for (auto& b : dst) dst_ptrs.push_back(b.data());

    std::vector<uint32_t> blocks(spec.num_blocks);
    std::iota(blocks.begin(), blocks.end(), 0);
    std::shuffle(blocks.begin(), blocks.end(), rng);
    blocks.resize(1 + rng() % (spec.num_blocks - 1));
    std::vector<std::byte> slots(blocks.size() * layout->page_bytes(), std::byte{0x33});
    std::vector<PageTransfer> pages;
    for (size_t i = 0; i < blocks.size(); ++i) {
      pages.push_back({blocks[i], slots.data() + i * layout->page_bytes()});
    }
    std::vector<CopyOp> ops;
    ASSERT_TRUE(AppendPageCopies(*layout, src_ptrs, pages, PageCopyDirection::kGather, ops).ok());
    EXPECT_EQ(ops.size(), blocks.size() * layout->pieces_per_page());
    uint64_t total = 0;
    for (const CopyOp& op : ops) {
      total += op.bytes;
      std::memcpy(op.dst, op.src, op.bytes);
    }
    EXPECT_EQ(total, slots.size());  // every slot byte written exactly once
    ops.clear();
    ASSERT_TRUE(AppendPageCopies(*layout, dst_ptrs, pages, PageCopyDirection::kScatter, ops).ok());
    for (const CopyOp& op : ops) std::memcpy(op.dst, op.src, op.bytes);

    // The chosen blocks now match; every other block still holds the poison.
    std::vector<Piece> pieces;
    for (uint32_t b = 0; b < spec.num_blocks; ++b) {
      pieces.clear();
      ASSERT_TRUE(layout->AppendPieces(b, pieces).ok());
      const bool moved = std::find(blocks.begin(), blocks.end(), b) != blocks.end();
      for (const Piece& p : pieces) {
        const std::byte* d = dst[p.buffer].data() + p.offset;
        if (moved) {
          ASSERT_EQ(0, std::memcmp(d, src[p.buffer].data() + p.offset, p.length)) << b;
        } else {
          ASSERT_TRUE(std::all_of(d, d + p.length, [](std::byte x) {
            return x == std::byte{0x5a};
          })) << b;
        }
      }
    }
  }
}

TEST(CopyPlanTest, RejectsBadBlocksAndBuffersWithoutAppending) {
  LayoutSpec spec{2, 1, 8, DType::kBF16, 4, TensorLayout::kVllmPerLayer, 3};
  auto layout = Layout::Create(spec);
  ASSERT_TRUE(layout.ok());
  std::vector<std::byte> a(layout->buffer_bytes()), b(layout->buffer_bytes()),
      slot(layout->page_bytes());
  std::vector<std::byte*> bufs = {a.data(), b.data()};
  std::vector<CopyOp> ops(1);
  std::vector<PageTransfer> pages = {{0, slot.data()}, {3, slot.data()}};
  EXPECT_EQ(AppendPageCopies(*layout, bufs, pages, PageCopyDirection::kGather, ops).code(),
            absl::StatusCode::kOutOfRange);
  EXPECT_EQ(ops.size(), 1u);
  bufs.pop_back();
  pages.pop_back();
  EXPECT_EQ(AppendPageCopies(*layout, bufs, pages, PageCopyDirection::kGather, ops).code(),
            absl::StatusCode::kInvalidArgument);
}

// The paged form (piece table + one {slot, block} a page, expanded by kernels::PagedItem) moves
// exactly the bytes AppendPageCopies' per-piece ops move, for every layout, both directions.
TEST(CopyPlanTest, PagedCopyMatchesPerPieceCopiesOnEveryLayout) {
  std::mt19937_64 rng(kernels::testing::TestSeed("PagedCopyMatchesPerPieceCopiesOnEveryLayout"));
  for (uint32_t tl = 0; tl <= static_cast<uint32_t>(kLastTensorLayout); ++tl) {
    LayoutSpec spec;
    spec.layers = 1 + rng() % 5;
    spec.kv_heads = 1 + rng() % 3;
    spec.head_dim = 8 * (1 + rng() % 4);
    spec.tokens_per_page = 1 + rng() % 9;
    spec.tensor_layout = static_cast<TensorLayout>(tl);
    spec.num_blocks = 3 + rng() % 20;
    auto layout = Layout::Create(spec);
    ASSERT_TRUE(layout.ok()) << layout.status();
    const size_t nbuf = layout->buffer_count(), bytes = layout->buffer_bytes();
    auto random_buffers = [&] {
      std::vector<std::vector<std::byte>> b(nbuf, std::vector<std::byte>(bytes));
      for (auto& v : b) {
        for (auto& x : v) x = static_cast<std::byte>(rng());
      }
      return b;
    };
    auto worker_a = random_buffers();
    auto worker_b = worker_a;
    std::vector<std::byte*> ptr_a, ptr_b;
    for (auto& v : worker_a) ptr_a.push_back(v.data());
    for (auto& v : worker_b) ptr_b.push_back(v.data());
    std::vector<uint64_t> sizes(nbuf, bytes);
    std::vector<uint32_t> blocks(spec.num_blocks);
    std::iota(blocks.begin(), blocks.end(), 0);
    std::shuffle(blocks.begin(), blocks.end(), rng);
    blocks.resize(1 + rng() % spec.num_blocks);
    std::vector<std::byte> slots_a(blocks.size() * layout->page_bytes());
    for (auto& x : slots_a) x = static_cast<std::byte>(rng());
    std::vector<std::byte> slots_b = slots_a;
    for (PageCopyDirection dir : {PageCopyDirection::kGather, PageCopyDirection::kScatter}) {
      std::vector<PageTransfer> pages;
      std::vector<kernels::PagedPage> paged;
      for (size_t i = 0; i < blocks.size(); ++i) {
        pages.push_back({blocks[i], slots_a.data() + i * layout->page_bytes()});
        paged.push_back({slots_b.data() + i * layout->page_bytes(), blocks[i]});
      }
      std::vector<CopyOp> ops;
      ASSERT_TRUE(AppendPageCopies(*layout, ptr_a, pages, dir, ops).ok());
      for (const CopyOp& op : ops) std::memmove(op.dst, op.src, op.bytes);
      absl::StatusOr<std::vector<kernels::PagedPiece>> pieces =
          BindPieceTemplates(*layout, ptr_b, sizes);
      ASSERT_TRUE(pieces.ok()) << pieces.status();
      ASSERT_TRUE(kernels::CopyPagedCpu(*pieces, paged,
                                        dir == PageCopyDirection::kGather
                                            ? kernels::PagedDirection::kWorkerToSlot
                                            : kernels::PagedDirection::kSlotToWorker)
                      .ok());
      EXPECT_EQ(slots_a, slots_b) << "layout " << tl;
      EXPECT_EQ(worker_a, worker_b) << "layout " << tl;
    }
  }
}

TEST(CopyPlanTest, BindPieceTemplatesRefusesBuffersShorterThanTheLayout) {
  LayoutSpec spec;
  spec.layers = 2;
  spec.kv_heads = 1;
  spec.head_dim = 8;
  spec.tokens_per_page = 4;
  spec.num_blocks = 6;
  auto layout = Layout::Create(spec);
  ASSERT_TRUE(layout.ok());
  std::vector<std::byte> a(layout->buffer_bytes()), b(layout->buffer_bytes());
  std::vector<std::byte*> ptrs{a.data(), b.data()};
  std::vector<uint64_t> sizes{layout->buffer_bytes(), layout->buffer_bytes() - 16};
  absl::StatusOr<std::vector<kernels::PagedPiece>> bound = BindPieceTemplates(*layout, ptrs, sizes);
  EXPECT_EQ(bound.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bound.status().message().find("worker buffer 1"), std::string::npos) << bound.status();
  sizes[1] = layout->buffer_bytes();
  EXPECT_TRUE(BindPieceTemplates(*layout, ptrs, sizes).ok());
  EXPECT_FALSE(BindPieceTemplates(*layout, absl::MakeConstSpan(ptrs.data(), 1), sizes).ok());
  // Unaligned or null slots are the validator's to refuse.
  std::vector<kernels::PagedPage> bad{{nullptr, 0}};
  EXPECT_FALSE(kernels::ValidatePagedCopy(*BindPieceTemplates(*layout, ptrs, sizes), bad).ok());
}

TEST(CopyPlanTest, MergeAdjacentCopiesCoalescesOnlyContinuations) {
  std::mt19937_64 rng(kernels::testing::TestSeed("MergeAdjacentCopiesCoalescesOnlyContinuations"));
  std::vector<std::byte> src(1 << 16), dst(1 << 16);
  // Runs of 1..4 ops that continue each other, separated by gaps.
  std::vector<CopyOp> ops;
  size_t expected_runs = 0, off = 0;
  while (off + 4 * 256 + 64 < src.size()) {
    const size_t run = 1 + rng() % 4;
    for (size_t i = 0; i < run; ++i, off += 256) {
      ops.push_back({dst.data() + off, src.data() + off, 256});
    }
    off += 16 * (1 + rng() % 4);  // gap
    ++expected_runs;
  }
  const size_t ops_before = ops.size();
  EXPECT_EQ(MergeAdjacentCopies(ops), expected_runs);
  EXPECT_LE(ops.size(), ops_before);
  uint64_t total = 0;
  for (const CopyOp& op : ops) total += op.bytes;
  EXPECT_EQ(total, ops_before * 256);
  std::vector<CopyOp> empty;
  EXPECT_EQ(MergeAdjacentCopies(empty), 0u);
}

}  // namespace
}  // namespace kvtier
