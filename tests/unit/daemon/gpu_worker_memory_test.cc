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
  HostRanges(const Layout& layout, size_t slack) {
    for (uint32_t i = 0; i < layout.buffer_count(); ++i) {
      storage_.emplace_back(layout.buffer_bytes() + slack);
      bases_.push_back(storage_.back().data());
    }
    size_ = layout.buffer_bytes();
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

TEST(CheckWorkerRangesTest, EveryPlannedCopyIsInsideAndAnyOutsideIsRefused) {
  const uint64_t seed = std::random_device{}();
  std::mt19937_64 rng(seed);
  const Layout layout = *Layout::Create(Spec());
  HostRanges buffers(layout, /*slack=*/4096);
  std::vector<std::byte*> bases;
  for (size_t i = 0; i < buffers.count(); ++i) bases.push_back(buffers.base(i));
  std::vector<std::byte> slots(layout.page_bytes() * 4);
  std::vector<PageTransfer> pages;
  for (int i = 0; i < 4; ++i) {
    pages.push_back({static_cast<uint32_t>(rng() % layout.spec().num_blocks),
                     slots.data() + i * layout.page_bytes()});
  }
  for (PageCopyDirection dir : {PageCopyDirection::kScatter, PageCopyDirection::kGather}) {
    std::vector<CopyOp> ops;
    ASSERT_TRUE(AppendPageCopies(layout, bases, pages, dir, ops).ok());
    EXPECT_TRUE(CheckWorkerRanges(buffers, ops, dir).ok()) << "seed " << seed;
    // One op moved past its buffer's registered end (into the slack: memory the worker did not
    // register) must stop the whole batch.
    std::vector<CopyOp> bad = ops;
    CopyOp& victim = bad[rng() % bad.size()];
    std::byte* const end = buffers.base(0) + buffers.size(0);
    if (dir == PageCopyDirection::kScatter) {
      victim.dst = end - victim.bytes + 16;
    } else {
      victim.src = end - victim.bytes + 16;
    }
    absl::Status s = CheckWorkerRanges(buffers, bad, dir);
    EXPECT_FALSE(s.ok()) << "seed " << seed;
    EXPECT_NE(s.message().find("outside every registered GPU buffer"), absl::string_view::npos);
    // A block id out of range never becomes a copy at all.
    std::vector<CopyOp> none;
    const PageTransfer out_of_range{layout.spec().num_blocks, slots.data()};
    EXPECT_FALSE(AppendPageCopies(layout, bases, {&out_of_range, 1}, dir, none).ok());
    EXPECT_TRUE(none.empty());
  }
}

}  // namespace
}  // namespace kvtier
