// Batched gather/scatter copies: a list of (src, dst, bytes) descriptors moved in one call.
//
// The tiering core turns a page's Layout pieces into descriptors (worker block -> slot for a
// gather, slot -> worker block for a scatter) and hands the whole batch to one launch. This file
// holds the descriptor type, the validation rule every implementation shares, and the CPU twin
// that CI runs and that the CUDA kernel (kernels/cuda/gpu_copy.h) is checked against.
//
// Alignment rule: every non-empty descriptor's src, dst and bytes must be multiples of
// kCopyAlignment (16 bytes), because the GPU kernel moves 16-byte vectors and nothing narrower.
// Real KV pieces always satisfy this (a piece is tokens x heads x head_dim x 2 bytes); an
// unaligned descriptor is a caller bug and is rejected, never copied byte by byte.
//
// Thread model: free functions, no state; safe from any thread.
#pragma once

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/types/span.h"

namespace kvtier::kernels {

inline constexpr size_t kCopyAlignment = 16;

// The GPU copy kernel's default SM budget (GpuCopyOptions::sm_budget in cuda/gpu_kernels.h):
// 16 of an H100's 132 SMs take host<->device copies to the PCIe limit and leave the rest to
// inference. Defined here, in the kernels' CUDA-free header, so that code built without CUDA
// (kvtierd's config) states the same default.
inline constexpr int kDefaultGpuCopySmBudget = 16;

// One contiguous run. The layout is shared with the GPU kernel, which reads an array of these
// from device memory, so keep it trivially copyable and 24 bytes.
struct CopyDescriptor {
  const void* src = nullptr;
  void* dst = nullptr;
  uint64_t bytes = 0;
};
static_assert(sizeof(CopyDescriptor) == 24);

// Checks the alignment rule and null pointers. Empty batches and zero-byte descriptors are valid
// (a zero-byte descriptor may have null pointers). Does not check overlap: descriptors of one batch
// must not overlap each other (the GPU runs them concurrently); that is the caller's contract.
// The error names the first offending descriptor by index.
absl::Status ValidateCopyBatch(absl::Span<const CopyDescriptor> batch);

// Sum of bytes over the batch.
uint64_t CopyBatchBytes(absl::Span<const CopyDescriptor> batch);

// The CPU twin: validates, then memcpy's every descriptor on the calling thread.
absl::Status CopyBatchCpu(absl::Span<const CopyDescriptor> batch);

// --- Page-shaped batches ---
// A batch of whole KV pages between slots (each page one contiguous image) and a worker's blocks.
// Every page has the same pieces at worker addresses affine in its block id (Layout's
// PieceTemplate), so the batch is a piece table plus 16 bytes a page and the copy expands
// pages x pieces descriptors itself: a page costs the host one small write instead of one
// descriptor a piece (64 for a 32-layer vLLM page), which is what bounded the GPU worker path.

// One piece of every page: block b's copy lies at worker + b * block_stride, the slot's at
// slot + slot_offset. The same 32-byte layout on the device.
struct PagedPiece {
  std::byte* worker = nullptr;
  uint64_t block_stride = 0;
  uint64_t bytes = 0;
  uint64_t slot_offset = 0;
};
static_assert(sizeof(PagedPiece) == 32);

struct PagedPage {
  std::byte* slot = nullptr;
  uint64_t block = 0;
};
static_assert(sizeof(PagedPage) == 16);

enum class PagedDirection : uint8_t { kSlotToWorker = 0, kWorkerToSlot = 1 };

// The descriptor of item `i` of a paged batch (page i / pieces, piece i % pieces): the one
// definition the CPU twin and the CUDA kernel share. 32-bit: ValidatePagedCopy bounds the items.
#if defined(__CUDACC__)
__host__ __device__
#endif
    inline CopyDescriptor
    PagedItem(const PagedPiece* pieces, uint32_t piece_count, const PagedPage* pages,
              PagedDirection direction, uint32_t i) {
  const PagedPage& page = pages[i / piece_count];
  const PagedPiece& piece = pieces[i % piece_count];
  std::byte* worker = piece.worker + page.block * piece.block_stride;
  std::byte* slot = page.slot + piece.slot_offset;
  return direction == PagedDirection::kSlotToWorker ? CopyDescriptor{slot, worker, piece.bytes}
                                                    : CopyDescriptor{worker, slot, piece.bytes};
}

// Checks the 16-byte rule on every piece (worker, stride, bytes, slot offset) and page slot, and
// that pages x pieces fits in 32 bits. Block ids and ranges are the caller's to bound (the worker
// path checks each block against the layout and each piece's last block against its buffer).
absl::Status ValidatePagedCopy(absl::Span<const PagedPiece> pieces,
                               absl::Span<const PagedPage> pages);

// Bytes of the largest piece (what the kernel's work split needs).
uint64_t MaxPagedPieceBytes(absl::Span<const PagedPiece> pieces);

// The CPU twin of the paged kernel: validates, then copies every item on the calling thread.
absl::Status CopyPagedCpu(absl::Span<const PagedPiece> pieces, absl::Span<const PagedPage> pages,
                          PagedDirection direction);

}  // namespace kvtier::kernels
