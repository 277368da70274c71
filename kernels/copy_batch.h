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

}  // namespace kvtier::kernels
