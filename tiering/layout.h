// Layout: how one KV page maps onto a worker's KV tensors.
//
// A page is one block of `tokens_per_page` tokens across every layer, so one key names it, but
// its bytes are scattered over the worker's memory: with vLLM's per-layer tensors
// [2, num_blocks, block_size, kv_heads, head_dim] a page is `layers x 2` separate pieces. The copy
// engine gathers and scatters those pieces; this class computes them. Immutable after Create(),
// so any thread may use it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace kvtier {

enum class DType : uint8_t { kBF16 = 0, kFP16 = 1, kFP32 = 2, kFP8 = 3 };
size_t DTypeBytes(DType d);

// How the worker lays out its KV cache tensors.
enum class TensorLayout : uint8_t {
  // vLLM (FlashAttention backend): one tensor per layer,
  // [2, num_blocks, block_size, kv_heads, head_dim]. 2 x layers pieces per page.
  kVllmPerLayer = 0,
  // FlashInfer / SGLang-style: one tensor per layer, [num_blocks, 2, block_size, kv_heads,
  // head_dim]. K and V of a block are adjacent, so a page is `layers` pieces.
  kBlockMajorPerLayer = 1,
  // One tensor for all layers, [num_blocks, layers, 2, block_size, kv_heads, head_dim]: a page is
  // one contiguous piece (LMCache's and Mooncake's staging layout).
  kPageContiguous = 2,
  // SGLang's host pool in its `page_first` layout: one buffer for all layers,
  // [2, num_blocks, tokens_per_page, layers, kv_heads, head_dim]. A page's K half is contiguous
  // and so is its V half, `num_blocks` pages apart: 2 pieces per page, at two offsets of one
  // buffer.
  kSplitKvPageFirst = 3,
  // SGLang's `page_first_direct`: [2, num_blocks, layers, tokens_per_page, kv_heads, head_dim].
  // The same two pieces as kSplitKvPageFirst with another byte order inside each, so the two
  // never share a namespace.
  kSplitKvPageFirstDirect = 4,
};
// The highest TensorLayout value (for checking wire input).
inline constexpr TensorLayout kLastTensorLayout = TensorLayout::kSplitKvPageFirstDirect;

struct LayoutSpec {
  uint32_t layers = 0;
  uint32_t kv_heads = 0;
  uint32_t head_dim = 0;
  DType dtype = DType::kBF16;
  uint32_t tokens_per_page = 16;
  TensorLayout tensor_layout = TensorLayout::kVllmPerLayer;
  // Blocks in each of the worker's KV tensors (its block ids are [0, num_blocks)).
  uint32_t num_blocks = 0;

  friend bool operator==(const LayoutSpec&, const LayoutSpec&) = default;
};

// One contiguous run of a page's bytes inside a worker buffer.
struct Piece {
  uint32_t buffer = 0;       // which of the worker's buffers (a layer's tensor, or the only one)
  uint64_t offset = 0;       // byte offset inside that buffer
  uint64_t length = 0;       // bytes
  uint64_t page_offset = 0;  // where these bytes sit in the page's contiguous slot image
};

// One piece of every page: block b's copy of it lies at `offset + b * block_stride` of buffer
// `buffer`, and at `page_offset` of the page's slot image. Every layout is affine in the block id,
// so a page's pieces are this table plus its block id (the GPU worker path hands the table and
// one block id a page to the copy kernel instead of one descriptor a piece).
struct PieceTemplate {
  uint32_t buffer = 0;
  uint64_t offset = 0;
  uint64_t block_stride = 0;
  uint64_t length = 0;
  uint64_t page_offset = 0;
};

class Layout {
 public:
  // Validates every field; rejects zero sizes and pages or buffers whose size overflows.
  static absl::StatusOr<Layout> Create(const LayoutSpec& spec);

  const LayoutSpec& spec() const { return spec_; }
  // Bytes of one page across all layers, K and V.
  uint64_t page_bytes() const { return page_bytes_; }
  // Bytes of K (or V) of one block in one layer: block_size * kv_heads * head_dim * dtype.
  uint64_t block_bytes_per_layer() const { return half_piece_bytes_; }
  // Number of worker buffers this layout expects (layers, or 1 for the one-buffer layouts).
  uint32_t buffer_count() const;
  // Bytes each worker buffer must have.
  uint64_t buffer_bytes() const;
  // Pieces per page.
  uint32_t pieces_per_page() const { return static_cast<uint32_t>(templates_.size()); }
  // The pieces of every page, in page order (AppendPieces expands them for one block).
  absl::Span<const PieceTemplate> piece_templates() const { return templates_; }

  // Appends the pieces of block `block_id` to `out`, in page order. Fails when the block id is
  // outside [0, num_blocks).
  absl::Status AppendPieces(uint32_t block_id, std::vector<Piece>& out) const;

  std::string DebugString() const;

 private:
  explicit Layout(const LayoutSpec& spec);
  std::vector<PieceTemplate> MakeTemplates() const;

  LayoutSpec spec_;
  uint64_t half_piece_bytes_ = 0;
  uint64_t page_bytes_ = 0;
  std::vector<PieceTemplate> templates_;
};

}  // namespace kvtier
