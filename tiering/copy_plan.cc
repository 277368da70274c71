#include "tiering/copy_plan.h"

#include "absl/strings/str_cat.h"

namespace kvtier {

absl::Status AppendPageCopies(const Layout& layout, absl::Span<std::byte* const> worker_buffers,
                              absl::Span<const PageTransfer> pages, PageCopyDirection direction,
                              std::vector<CopyOp>& out) {
  if (worker_buffers.size() != layout.buffer_count()) {
    return absl::InvalidArgumentError(absl::StrCat("layout expects ", layout.buffer_count(),
                                                   " worker buffers, got ", worker_buffers.size()));
  }
  for (size_t i = 0; i < worker_buffers.size(); ++i) {
    if (worker_buffers[i] == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("worker buffer ", i, " is null"));
    }
  }
  const size_t first = out.size();
  // Pieces are rebuilt per page; a thread-local scratch keeps this path allocation-free once warm.
  thread_local std::vector<Piece> pieces;
  for (const PageTransfer& page : pages) {
    if (page.slot == nullptr) {
      out.resize(first);
      return absl::InvalidArgumentError(
          absl::StrCat("page slot for block ", page.block_id, " is null"));
    }
    pieces.clear();
    if (absl::Status s = layout.AppendPieces(page.block_id, pieces); !s.ok()) {
      out.resize(first);
      return s;
    }
    for (const Piece& piece : pieces) {
      std::byte* worker = worker_buffers[piece.buffer] + piece.offset;
      std::byte* slot = page.slot + piece.page_offset;
      if (direction == PageCopyDirection::kGather) {
        out.push_back(CopyOp{slot, worker, piece.length});
      } else {
        out.push_back(CopyOp{worker, slot, piece.length});
      }
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<kernels::PagedPiece>> BindPieceTemplates(
    const Layout& layout, absl::Span<std::byte* const> worker_buffers,
    absl::Span<const uint64_t> buffer_bytes) {
  if (worker_buffers.size() != layout.buffer_count() ||
      buffer_bytes.size() != worker_buffers.size()) {
    return absl::InvalidArgumentError(absl::StrCat("layout expects ", layout.buffer_count(),
                                                   " worker buffers, got ", worker_buffers.size(),
                                                   " (and ", buffer_bytes.size(), " sizes)"));
  }
  const uint64_t last_block = layout.spec().num_blocks - 1;  // Create() refuses 0 blocks
  std::vector<kernels::PagedPiece> out;
  out.reserve(layout.pieces_per_page());
  for (const PieceTemplate& t : layout.piece_templates()) {
    std::byte* base = worker_buffers[t.buffer];
    // offset + last_block * stride + length cannot overflow: Layout::Create bounded
    // page_bytes * num_blocks, which is at least this extent.
    const uint64_t end = t.offset + last_block * t.block_stride + t.length;
    if (base == nullptr || end > buffer_bytes[t.buffer]) {
      return absl::InvalidArgumentError(
          absl::StrCat("worker buffer ", t.buffer, " (", buffer_bytes[t.buffer], " bytes) ",
                       base == nullptr ? "is null" : absl::StrCat("ends before byte ", end),
                       ", which block ", last_block, " of the layout reaches"));
    }
    out.push_back(kernels::PagedPiece{base + t.offset, t.block_stride, t.length, t.page_offset});
  }
  return out;
}

size_t MergeAdjacentCopies(std::vector<CopyOp>& ops) {
  if (ops.empty()) return 0;
  size_t w = 0;
  for (size_t r = 1; r < ops.size(); ++r) {
    CopyOp& last = ops[w];
    const CopyOp& next = ops[r];
    if (static_cast<const std::byte*>(last.src) + last.bytes == next.src &&
        static_cast<std::byte*>(last.dst) + last.bytes == next.dst) {
      last.bytes += next.bytes;
    } else {
      ops[++w] = next;
    }
  }
  ops.resize(w + 1);
  return ops.size();
}

}  // namespace kvtier
