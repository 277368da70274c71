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
