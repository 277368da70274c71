#include "kernels/copy_batch.h"

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

}  // namespace kvtier::kernels
