#include "tiering/layout.h"

#include <limits>

#include "absl/strings/str_cat.h"

namespace kvtier {

size_t DTypeBytes(DType d) {
  switch (d) {
    case DType::kBF16:
    case DType::kFP16:
      return 2;
    case DType::kFP32:
      return 4;
    case DType::kFP8:
      return 1;
  }
  return 0;
}

namespace {

// Multiplies and reports overflow instead of wrapping.
bool MulOverflows(uint64_t a, uint64_t b, uint64_t* out) {
  return __builtin_mul_overflow(a, b, out);
}

}  // namespace

Layout::Layout(const LayoutSpec& spec) : spec_(spec) {}

absl::StatusOr<Layout> Layout::Create(const LayoutSpec& spec) {
  if (spec.layers == 0 || spec.kv_heads == 0 || spec.head_dim == 0 || spec.tokens_per_page == 0 ||
      spec.num_blocks == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "layout needs non-zero layers, kv_heads, head_dim, tokens_per_page and num_blocks; got ",
        spec.layers, ", ", spec.kv_heads, ", ", spec.head_dim, ", ", spec.tokens_per_page, ", ",
        spec.num_blocks));
  }
  const size_t dtype_bytes = DTypeBytes(spec.dtype);
  if (dtype_bytes == 0) {
    return absl::InvalidArgumentError(absl::StrCat("unknown dtype ", static_cast<int>(spec.dtype)));
  }
  switch (spec.tensor_layout) {
    case TensorLayout::kVllmPerLayer:
    case TensorLayout::kBlockMajorPerLayer:
    case TensorLayout::kPageContiguous:
    case TensorLayout::kSplitKvPageFirst:
    case TensorLayout::kSplitKvPageFirstDirect:
      break;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("unknown tensor layout ", static_cast<int>(spec.tensor_layout)));
  }
  Layout layout(spec);
  uint64_t half = 0, page = 0, buffer = 0;
  if (MulOverflows(uint64_t{spec.tokens_per_page} * spec.kv_heads, spec.head_dim, &half) ||
      MulOverflows(half, dtype_bytes, &half) ||
      MulOverflows(half, 2 * uint64_t{spec.layers}, &page) ||
      MulOverflows(page, spec.num_blocks, &buffer)) {
    return absl::InvalidArgumentError("layout sizes overflow 64 bits");
  }
  // Pages live in fixed slots and move as one unit; keep them to a sane bound (1 GiB).
  constexpr uint64_t kMaxPageBytes = uint64_t{1} << 30;
  if (page > kMaxPageBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("page of ", page, " bytes exceeds the limit of ", kMaxPageBytes));
  }
  layout.half_piece_bytes_ = half;
  layout.page_bytes_ = page;
  layout.templates_ = layout.MakeTemplates();
  return layout;
}

std::vector<PieceTemplate> Layout::MakeTemplates() const {
  const uint64_t half = half_piece_bytes_;
  const uint64_t blocks = spec_.num_blocks;
  std::vector<PieceTemplate> t;
  switch (spec_.tensor_layout) {
    case TensorLayout::kVllmPerLayer:
      // Per layer [2, num_blocks, ...]: K of block b at b*half, V at (num_blocks + b)*half.
      for (uint32_t layer = 0; layer < spec_.layers; ++layer) {
        for (uint32_t kv = 0; kv < 2; ++kv) {
          t.push_back({layer, kv * blocks * half, half, half, (uint64_t{layer} * 2 + kv) * half});
        }
      }
      break;
    case TensorLayout::kBlockMajorPerLayer:
      // Per layer [num_blocks, 2, ...]: K and V of a block side by side.
      for (uint32_t layer = 0; layer < spec_.layers; ++layer) {
        t.push_back({layer, 0, 2 * half, 2 * half, uint64_t{layer} * 2 * half});
      }
      break;
    case TensorLayout::kPageContiguous:
      t.push_back({0, 0, page_bytes_, page_bytes_, 0});
      break;
    case TensorLayout::kSplitKvPageFirst:
    case TensorLayout::kSplitKvPageFirstDirect: {
      // [2, num_blocks, ...]: K of block b at b*(page/2), V at (num_blocks + b)*(page/2).
      const uint64_t kv_half = page_bytes_ / 2;
      t.push_back({0, 0, kv_half, kv_half, 0});
      t.push_back({0, blocks * kv_half, kv_half, kv_half, kv_half});
      break;
    }
  }
  return t;
}

uint32_t Layout::buffer_count() const {
  switch (spec_.tensor_layout) {
    case TensorLayout::kVllmPerLayer:
    case TensorLayout::kBlockMajorPerLayer:
      return spec_.layers;
    case TensorLayout::kPageContiguous:
    case TensorLayout::kSplitKvPageFirst:
    case TensorLayout::kSplitKvPageFirstDirect:
      return 1;
  }
  return 0;
}

uint64_t Layout::buffer_bytes() const {
  // One buffer holds every layer's blocks; a per-layer buffer holds K and V of its layer.
  const uint64_t per_block = buffer_count() == 1 ? page_bytes_ : 2 * half_piece_bytes_;
  return per_block * spec_.num_blocks;
}

absl::Status Layout::AppendPieces(uint32_t block_id, std::vector<Piece>& out) const {
  if (block_id >= spec_.num_blocks) {
    return absl::OutOfRangeError(
        absl::StrCat("block id ", block_id, " out of range [0, ", spec_.num_blocks, ")"));
  }
  for (const PieceTemplate& t : templates_) {
    out.push_back(Piece{t.buffer, t.offset + block_id * t.block_stride, t.length, t.page_offset});
  }
  return absl::OkStatus();
}

std::string Layout::DebugString() const {
  return absl::StrCat("layers=", spec_.layers, " kv_heads=", spec_.kv_heads,
                      " head_dim=", spec_.head_dim, " dtype_bytes=", DTypeBytes(spec_.dtype),
                      " tokens_per_page=", spec_.tokens_per_page,
                      " tensor_layout=", static_cast<int>(spec_.tensor_layout),
                      " num_blocks=", spec_.num_blocks, " page_bytes=", page_bytes_);
}

}  // namespace kvtier
