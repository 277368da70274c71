// The checks GPU-worker copies pass before any launch (daemon/gpu_worker_memory.h): the request's
// shape against the layout, and every copy's worker-side range against the registered buffers.
// Pure logic, no GPU: buffers here are host ranges standing in for device addresses.
#include "daemon/gpu_worker_memory.h"

#include <random>

#include "gtest/gtest.h"
#include "tiering/copy_plan.h"

namespace kvtier {
namespace {

LayoutSpec Spec() {
  LayoutSpec s;
  s.layers = 3;
  s.kv_heads = 2;
  s.head_dim = 64;
  s.tokens_per_page = 16;
  s.tensor_layout = TensorLayout::kVllmPerLayer;
  s.num_blocks = 10;
  return s;
}

class HostRanges final : public GpuWorkerBuffers {
 public:
  // Buffers of the layout's size plus `slack` unregistered bytes, registered as `registered`
  // bytes each (the layout's size when 0).
  HostRanges(const Layout& layout, size_t slack, size_t registered = 0) {
    for (uint32_t i = 0; i < layout.buffer_count(); ++i) {
      storage_.emplace_back(layout.buffer_bytes() + slack);
      bases_.push_back(storage_.back().data());
    }
    size_ = registered != 0 ? registered : layout.buffer_bytes();
  }
  size_t count() const override { return bases_.size(); }
  std::byte* base(size_t i) const override { return bases_[i]; }
  size_t size(size_t) const override { return size_; }
  int device() const override { return 0; }
  const std::string& event_handle() const override { return handle_; }

 private:
  std::vector<std::vector<std::byte>> storage_;
  std::vector<std::byte*> bases_;
  size_t size_ = 0;
  std::string handle_;
};

GpuBufferRequest Request(const Layout& layout) {
  GpuBufferRequest r;
  for (uint32_t i = 0; i < layout.buffer_count(); ++i) {
    r.ipc_handles.emplace_back(kCudaIpcHandleBytes, 'h');
    r.offsets.push_back(4096 + i * layout.buffer_bytes());
    r.sizes.push_back(layout.buffer_bytes());
  }
  r.device_uuid.assign(kGpuUuidBytes, 'u');
  return r;
}

TEST(CheckGpuBufferRequestTest, AcceptsAWellFormedRequest) {
  const Layout layout = *Layout::Create(Spec());
  EXPECT_TRUE(CheckGpuBufferRequest(layout, Request(layout)).ok());
}

TEST(CheckGpuBufferRequestTest, RefusesEachMistakeNamingIt) {
  const Layout layout = *Layout::Create(Spec());
  GpuBufferRequest r = Request(layout);
  r.sizes.pop_back();
  EXPECT_NE(CheckGpuBufferRequest(layout, r).message().find("2 sizes"), absl::string_view::npos);
  r = Request(layout);
  r.sizes[1] = layout.buffer_bytes() - 1;
  EXPECT_NE(CheckGpuBufferRequest(layout, r).message().find("the layout needs"),
            absl::string_view::npos);
  r = Request(layout);
  r.offsets[2] = 4100;
  EXPECT_NE(CheckGpuBufferRequest(layout, r).message().find("aligned"), absl::string_view::npos);
  r = Request(layout);
  r.ipc_handles[0].pop_back();
  EXPECT_NE(CheckGpuBufferRequest(layout, r).message().find("63 bytes"), absl::string_view::npos);
  r = Request(layout);
  r.device_uuid.clear();
  EXPECT_EQ(CheckGpuBufferRequest(layout, r).code(), absl::StatusCode::kInvalidArgument);
  r = Request(layout);
  r.vmm_fds.emplace_back(-1);
  EXPECT_NE(CheckGpuBufferRequest(layout, r).message().find("both"), absl::string_view::npos);
}

TEST(BindWorkerPiecesTest, EveryPagedCopyIsInsideAndAShortBufferIsRefused) {
  const uint64_t seed = std::random_device{}();
  std::mt19937_64 rng(seed);
  const Layout layout = *Layout::Create(Spec());
  HostRanges buffers(layout, /*slack=*/4096);
  absl::StatusOr<std::vector<kernels::PagedPiece>> pieces = BindWorkerPieces(layout, buffers);
  ASSERT_TRUE(pieces.ok()) << pieces.status();
  ASSERT_EQ(pieces->size(), layout.pieces_per_page());
  // Every copy the paged kernel would make for any block in range lies inside a registered buffer.
  std::vector<std::byte> slot(layout.page_bytes());
  for (int round = 0; round < 16; ++round) {
    const kernels::PagedPage page{slot.data(), rng() % layout.spec().num_blocks};
    for (uint32_t i = 0; i < pieces->size(); ++i) {
      const kernels::CopyDescriptor d =
          kernels::PagedItem(pieces->data(), static_cast<uint32_t>(pieces->size()), &page,
                             kernels::PagedDirection::kSlotToWorker, i);
      bool inside = false;
      for (size_t b = 0; b < buffers.count(); ++b) {
        inside |= d.dst >= buffers.base(b) &&
                  static_cast<std::byte*>(d.dst) + d.bytes <= buffers.base(b) + buffers.size(b);
      }
      EXPECT_TRUE(inside) << "seed " << seed << " block " << page.block << " piece " << i;
    }
  }
  // Registered 16 bytes shorter than the layout needs: refused before any copy is planned.
  HostRanges short_buffers(layout, /*slack=*/4096, layout.buffer_bytes() - 16);
  absl::StatusOr<std::vector<kernels::PagedPiece>> refused =
      BindWorkerPieces(layout, short_buffers);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(refused.status().message().find("ends before byte"), absl::string_view::npos)
      << refused.status();
}

}  // namespace
}  // namespace kvtier
