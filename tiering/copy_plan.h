// CopyPlan: turns a batch of page moves between a worker's KV buffers and contiguous page slots
// into CopyOps, one per Layout piece, for a CopyEngine to run in one launch.
//
// A gather (worker -> slot, the `store` path) reads each piece at its offset in its worker buffer
// and writes it at its page offset inside the slot; a scatter (slot -> worker, the `load` path) is
// the reverse. MergeAdjacentCopies then coalesces ops that continue each other in both src and
// dst, which the per-run memcpy path of the CUDA engine needs (fewer, longer calls).
// Free functions, no state; callers reuse `out` across batches so the hot path does not allocate.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kernels/copy_batch.h"
#include "tiering/copy_engine.h"
#include "tiering/layout.h"

namespace kvtier {

enum class PageCopyDirection : uint8_t {
  kGather = 0,   // worker blocks -> contiguous page slots
  kScatter = 1,  // contiguous page slots -> worker blocks
};

struct PageTransfer {
  uint32_t block_id = 0;      // the worker's block holding (or receiving) the page
  std::byte* slot = nullptr;  // the page's contiguous slot, layout.page_bytes() long
};

// Appends one CopyOp per piece of every page to `out`. `worker_buffers` holds
// layout.buffer_count() base pointers. Fails (appending nothing) on a block id out of range, a
// wrong buffer count or a null pointer.
absl::Status AppendPageCopies(const Layout& layout, absl::Span<std::byte* const> worker_buffers,
                              absl::Span<const PageTransfer> pages, PageCopyDirection direction,
                              std::vector<CopyOp>& out);

// The paged form of a batch: the layout's piece templates bound to the worker's buffers, for
// kernels::LaunchPagedCopy / CopyPagedCpu (one PagedPage {slot, block} a page then). Checks, once
// per table instead of once per copy, that every piece of every block in [0, num_blocks) lies
// inside its buffer (`buffer_bytes[i]` bytes at `worker_buffers[i]`): with the block ids bounded
// by the layout, no page of the batch can reach outside the worker's registered memory.
absl::StatusOr<std::vector<kernels::PagedPiece>> BindPieceTemplates(
    const Layout& layout, absl::Span<std::byte* const> worker_buffers,
    absl::Span<const uint64_t> buffer_bytes);

// Merges, in place, each op into the previous one when it starts exactly where the previous one's
// src and dst end. Order is kept; returns the new op count (ops are resized to it).
size_t MergeAdjacentCopies(std::vector<CopyOp>& ops);

}  // namespace kvtier
