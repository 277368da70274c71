#include "kernels/copy_batch.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace kvtier::kernels {

absl::Status ValidateCopyBatch(absl::Span<const CopyDescriptor> batch) {
  for (size_t i = 0; i < batch.size(); ++i) {
    const CopyDescriptor& d = batch[i];
    if (d.bytes == 0) continue;
    if (d.src == nullptr || d.dst == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("copy descriptor ", i, " of ", batch.size(), " has a null pointer"));
    }
    const auto src = reinterpret_cast<uintptr_t>(d.src);
    const auto dst = reinterpret_cast<uintptr_t>(d.dst);
    if (src % kCopyAlignment != 0 || dst % kCopyAlignment != 0 || d.bytes % kCopyAlignment != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "copy descriptor ", i, " of ", batch.size(), " is not ", kCopyAlignment,
          "-byte aligned (src % 16 = ", src % kCopyAlignment, ", dst % 16 = ", dst % kCopyAlignment,
          ", bytes = ", d.bytes, "): pieces must be whole 16-byte vectors"));
    }
  }
  return absl::OkStatus();
}

uint64_t CopyBatchBytes(absl::Span<const CopyDescriptor> batch) {
  uint64_t total = 0;
  for (const CopyDescriptor& d : batch) total += d.bytes;
  return total;
}

absl::Status CopyBatchCpu(absl::Span<const CopyDescriptor> batch) {
  if (absl::Status s = ValidateCopyBatch(batch); !s.ok()) return s;
  for (const CopyDescriptor& d : batch) {
    if (d.bytes != 0) std::memcpy(d.dst, d.src, d.bytes);
  }
  return absl::OkStatus();
}

absl::Status ValidatePagedCopy(absl::Span<const PagedPiece> pieces,
                               absl::Span<const PagedPage> pages) {
  if (uint64_t{pieces.size()} * pages.size() > UINT32_MAX) {
    return absl::InvalidArgumentError(absl::StrCat(pages.size(), " pages of ", pieces.size(),
                                                   " pieces exceed 2^32 - 1 copy items"));
  }
  auto misaligned = [](uint64_t v) { return v % kCopyAlignment != 0; };
  for (size_t i = 0; i < pieces.size(); ++i) {
    const PagedPiece& p = pieces[i];
    if (p.worker == nullptr || misaligned(reinterpret_cast<uintptr_t>(p.worker)) ||
        misaligned(p.block_stride) || misaligned(p.bytes) || misaligned(p.slot_offset)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "paged piece ", i, " of ", pieces.size(), " is null or not ", kCopyAlignment,
          "-byte aligned (worker % 16 = ", reinterpret_cast<uintptr_t>(p.worker) % kCopyAlignment,
          ", block_stride ", p.block_stride, ", bytes ", p.bytes, ", slot_offset ", p.slot_offset,
          ")"));
    }
  }
  for (size_t i = 0; i < pages.size(); ++i) {
    const auto slot = reinterpret_cast<uintptr_t>(pages[i].slot);
    if (slot == 0 || misaligned(slot)) {
      return absl::InvalidArgumentError(
          absl::StrCat("paged page ", i, " of ", pages.size(),
                       " has a null or unaligned slot (slot % 16 = ", slot % kCopyAlignment, ")"));
    }
  }
  return absl::OkStatus();
}

uint64_t MaxPagedPieceBytes(absl::Span<const PagedPiece> pieces) {
  uint64_t max = 0;
  for (const PagedPiece& p : pieces) max = std::max(max, p.bytes);
  return max;
}

absl::Status CopyPagedCpu(absl::Span<const PagedPiece> pieces, absl::Span<const PagedPage> pages,
                          PagedDirection direction) {
  if (absl::Status s = ValidatePagedCopy(pieces, pages); !s.ok()) return s;
  const uint32_t items = static_cast<uint32_t>(pieces.size() * pages.size());  // validated
  for (uint32_t i = 0; i < items; ++i) {
    const CopyDescriptor d =
        PagedItem(pieces.data(), static_cast<uint32_t>(pieces.size()), pages.data(), direction, i);
    if (d.bytes != 0) std::memcpy(d.dst, d.src, d.bytes);
  }
  return absl::OkStatus();
}

}  // namespace kvtier::kernels
