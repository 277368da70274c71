// GPU tests of kernels/ and CudaCopyEngine, run on a GPU machine by scripts/gpu/run (never in CI).
// Copies must be bit-exact against the CPU twin; attention statistics within the documented bound
// of the float64 reference; outputs are poisoned first so that an unwritten element fails.
#include "kernels/cuda/gpu_kernels.h"

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "kernels/attention_stats.h"
#include "kernels/copy_batch.h"
#include "tests/unit/kernels/test_util.h"
#include "tiering/copy_plan.h"
#include "tiering/cuda_copy_engine.h"

namespace kvtier::kernels {
namespace {

#define ASSERT_CUDA(x) ASSERT_EQ(cudaSuccess, (x)) << #x << ": " << cudaGetErrorString(x)

// RAII pinned host memory (cudaMallocHost: mapped, so the kernel can read and write it).
struct Pinned {
  explicit Pinned(size_t n) : bytes(n) { EXPECT_EQ(cudaSuccess, cudaMallocHost(&p, n)); }
  ~Pinned() { cudaFreeHost(p); }
  unsigned char* get() const { return static_cast<unsigned char*>(p); }
  void* p = nullptr;
  size_t bytes;
};

struct Stream {
  Stream() { EXPECT_EQ(cudaSuccess, cudaStreamCreate(&s)); }
  ~Stream() { cudaStreamDestroy(s); }
  cudaStream_t s = nullptr;
};

// A random batch over [0, bytes): shuffled pieces of random 16-byte multiples.
struct Batch {
  std::vector<uint64_t> src_off, dst_off, len;
};
Batch RandomBatch(std::mt19937_64& rng, size_t bytes, uint64_t max_piece) {
  Batch b;
  size_t used = 0;
  while (true) {
    const uint64_t len = 16 * (1 + rng() % (max_piece / 16));
    if (used + len > bytes) break;
    b.len.push_back(len);
    b.src_off.push_back(used);
    used += len;
  }
  std::vector<size_t> order(b.len.size());
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), rng);
  b.dst_off.resize(b.len.size());
  for (size_t k = 0, o = 0; k < order.size(); o += b.len[order[k]], ++k) b.dst_off[order[k]] = o;
  return b;
}

TEST(GpuCopyTest, BitExactOnEveryRouteAndBudget) {
  std::mt19937_64 rng(testing::TestSeed("GpuCopyTest.BitExactOnEveryRouteAndBudget"));
  const size_t bytes = size_t{8} << 20;
  Pinned host_src(bytes), host_dst(bytes), expect(bytes);
  auto dev_src = DeviceBuffer::Allocate(bytes);
  auto dev_dst = DeviceBuffer::Allocate(bytes);
  ASSERT_TRUE(dev_src.ok() && dev_dst.ok());
  auto descs = DeviceBuffer::Allocate(sizeof(CopyDescriptor) * (bytes / 16));
  ASSERT_TRUE(descs.ok());
  Pinned host_descs(sizeof(CopyDescriptor) * (bytes / 16));  // for host_descriptors runs
  Stream stream;
  for (size_t i = 0; i < bytes; ++i) host_src.get()[i] = static_cast<unsigned char>(rng());
  ASSERT_CUDA(cudaMemcpy(dev_src->get(), host_src.get(), bytes, cudaMemcpyHostToDevice));
  std::vector<unsigned char> readback(bytes);
  // 16 KiB + 112 and up: pieces that span several of the bulk-async mover's 16 KiB chunks and end
  // in a short one.
  const uint64_t max_pieces[] = {16, 4096, 16384 + 16 * 7, 65536, 262144};
  const int budgets[] = {1, 16, 0};
  struct Run {
    int route;  // 0: H2D, 1: D2H, 2: D2D
    GpuCopyMover mover;
    uint64_t max_piece;
    int budget;
    bool host_descriptors = false;
  };
  std::vector<Run> runs;
  int round = 0;
  for (int route = 0; route < 3; ++route) {
    for (uint64_t max_piece : max_pieces) {
      runs.push_back({route, GpuCopyMover::kLoadStore, max_piece, budgets[round++ % 3]});
      // The same mover reading its descriptors from mapped pinned host memory.
      runs.push_back({route, GpuCopyMover::kLoadStore, max_piece, budgets[round % 3], true});
    }
  }
  // The bulk-async mover serves device to device only, at every budget and piece range.
  for (int budget : budgets) {
    for (uint64_t max_piece : max_pieces) {
      runs.push_back({2, GpuCopyMover::kBulkAsync, max_piece, budget});
    }
  }
  for (const Run& run : runs) {
    const int route = run.route;
    SCOPED_TRACE(::testing::Message()
                 << "route " << route << " mover " << static_cast<int>(run.mover) << " max_piece "
                 << run.max_piece << " sm_budget " << run.budget << " host_descriptors "
                 << run.host_descriptors);
    const Batch b = RandomBatch(rng, bytes, run.max_piece);
    auto* src = static_cast<unsigned char*>(route == 0 ? host_src.p : dev_src->get());
    auto* dst = static_cast<unsigned char*>(route == 1 ? host_dst.p : dev_dst->get());
    std::vector<CopyDescriptor> list, cpu_list;
    uint64_t max_len = 0;
    for (size_t i = 0; i < b.len.size(); ++i) {
      list.push_back({src + b.src_off[i], dst + b.dst_off[i], b.len[i]});
      cpu_list.push_back({host_src.get() + b.src_off[i], expect.get() + b.dst_off[i], b.len[i]});
      max_len = std::max(max_len, b.len[i]);
    }
    ASSERT_LE(list.size(), bytes / 16);
    ASSERT_TRUE(ValidateCopyBatch(list).ok());
    std::memset(expect.get(), 0xA5, bytes);
    ASSERT_TRUE(CopyBatchCpu(cpu_list).ok());
    // Poison the destination.
    if (route == 1) {
      std::memset(host_dst.get(), 0xA5, bytes);
    } else {
      ASSERT_CUDA(cudaMemset(dev_dst->get(), 0xA5, bytes));
    }
    ASSERT_CUDA(cudaMemcpy(descs->get(), list.data(), list.size() * sizeof(CopyDescriptor),
                           cudaMemcpyHostToDevice));
    std::memcpy(host_descs.get(), list.data(), list.size() * sizeof(CopyDescriptor));
    GpuCopyOptions opt;
    opt.sm_budget = run.budget;
    opt.mover = run.mover;
    opt.host_descriptors = run.host_descriptors;
    const absl::Status launched =
        LaunchCopyBatch(reinterpret_cast<const CopyDescriptor*>(
                            run.host_descriptors ? host_descs.get() : descs->get()),
                        static_cast<uint32_t>(list.size()), max_len, opt, stream.s);
    ASSERT_TRUE(launched.ok()) << launched;
    ASSERT_CUDA(cudaStreamSynchronize(stream.s));
    if (route == 1) {
      std::memcpy(readback.data(), host_dst.get(), bytes);
    } else {
      ASSERT_CUDA(cudaMemcpy(readback.data(), dev_dst->get(), bytes, cudaMemcpyDeviceToHost));
    }
    ASSERT_EQ(0, std::memcmp(readback.data(), expect.get(), bytes));
  }
  // An empty batch launches nothing and succeeds, with either mover.
  EXPECT_TRUE(LaunchCopyBatch(nullptr, 0, 0, {}, stream.s).ok());
  GpuCopyOptions bulk;
  bulk.mover = GpuCopyMover::kBulkAsync;
  EXPECT_TRUE(LaunchCopyBatch(nullptr, 0, 0, bulk, stream.s).ok());
  // Host descriptors are the load/store mover's alone.
  bulk.host_descriptors = true;
  EXPECT_EQ(LaunchCopyBatch(nullptr, 0, 0, bulk, stream.s).code(),
            absl::StatusCode::kInvalidArgument);
}

// Batches shorter than the SM budget: the bulk-async mover then shares one descriptor among
// several blocks (chunk-interleaved) when pieces span several chunks, and runs fewer blocks than
// the budget when they do not. Bytes between the pieces must keep their poison.
TEST(GpuCopyTest, BulkAsyncBatchesShorterThanTheBudget) {
  std::mt19937_64 rng(testing::TestSeed("GpuCopyTest.BulkAsyncBatchesShorterThanTheBudget"));
  const size_t bytes = size_t{4} << 20;
  std::vector<unsigned char> src_host(bytes), expect(bytes, 0xA5), readback(bytes);
  for (auto& x : src_host) x = static_cast<unsigned char>(rng());
  auto dev_src = DeviceBuffer::Allocate(bytes);
  auto dev_dst = DeviceBuffer::Allocate(bytes);
  auto descs = DeviceBuffer::Allocate(sizeof(CopyDescriptor) * 16);
  ASSERT_TRUE(dev_src.ok() && dev_dst.ok() && descs.ok());
  ASSERT_CUDA(cudaMemcpy(dev_src->get(), src_host.data(), bytes, cudaMemcpyHostToDevice));
  auto* src = static_cast<unsigned char*>(dev_src->get());
  auto* dst = static_cast<unsigned char*>(dev_dst->get());
  Stream stream;
  const std::vector<std::vector<uint64_t>> batches = {
      {262144},                          // one piece of 16 chunks
      {16, 16384 * 5 + 48, 262144},      // 1, 6 and 16 chunks
      {16, 4096, 16384, 1008, 32},       // one chunk each: no sharing
      {16384 * 3, 16384 * 3, 16384 * 3}  // equal multi-chunk pieces
  };
  for (const std::vector<uint64_t>& lens : batches) {
    for (int budget : {1, 16, 0}) {
      SCOPED_TRACE(::testing::Message() << lens.size() << " pieces, sm_budget " << budget);
      // Pieces 64 KiB apart in the source, written in reverse order 512 KiB apart in the
      // destination, so that a chunk written to the wrong place or past a piece's end shows.
      std::vector<CopyDescriptor> list;
      std::fill(expect.begin(), expect.end(), 0xA5);
      uint64_t max_len = 0;
      for (size_t i = 0; i < lens.size(); ++i) {
        const size_t s_off = i * (size_t{64} << 10) + 16 * (rng() % 64);
        const size_t d_off = (lens.size() - 1 - i) * (size_t{512} << 10) + 16 * (rng() % 64);
        ASSERT_LE(d_off + lens[i], bytes);
        list.push_back({src + s_off, dst + d_off, lens[i]});
        std::memcpy(expect.data() + d_off, src_host.data() + s_off, lens[i]);
        max_len = std::max(max_len, lens[i]);
      }
      ASSERT_TRUE(ValidateCopyBatch(list).ok());
      ASSERT_CUDA(cudaMemset(dst, 0xA5, bytes));
      ASSERT_CUDA(cudaMemcpy(descs->get(), list.data(), list.size() * sizeof(CopyDescriptor),
                             cudaMemcpyHostToDevice));
      GpuCopyOptions opt;
      opt.sm_budget = budget;
      opt.mover = GpuCopyMover::kBulkAsync;
      const absl::Status launched =
          LaunchCopyBatch(static_cast<const CopyDescriptor*>(descs->get()),
                          static_cast<uint32_t>(list.size()), max_len, opt, stream.s);
      ASSERT_TRUE(launched.ok()) << launched;
      ASSERT_CUDA(cudaStreamSynchronize(stream.s));
      ASSERT_CUDA(cudaMemcpy(readback.data(), dst, bytes, cudaMemcpyDeviceToHost));
      ASSERT_EQ(0, std::memcmp(readback.data(), expect.data(), bytes));
    }
  }
}

// The paged kernel (piece table + one {slot, block} a page) against its CPU twin, on a vLLM
// per-layer layout (64 pieces a page), device memory on both sides, both movers and directions.
TEST(GpuCopyTest, PagedCopyMatchesTheCpuTwin) {
  std::mt19937_64 rng(testing::TestSeed("GpuCopyTest.PagedCopyMatchesTheCpuTwin"));
  LayoutSpec spec{
      .layers = 32, .kv_heads = 8, .head_dim = 128, .tokens_per_page = 16, .num_blocks = 40};
  auto layout = Layout::Create(spec);
  ASSERT_TRUE(layout.ok());
  const size_t nbuf = layout->buffer_count(), buf_bytes = layout->buffer_bytes();
  const size_t pages = 24, page_bytes = layout->page_bytes();
  // Host images of the worker's buffers and the slots; device copies of both.
  std::vector<std::vector<std::byte>> worker_host(nbuf, std::vector<std::byte>(buf_bytes));
  for (auto& v : worker_host) {
    for (auto& x : v) x = static_cast<std::byte>(rng());
  }
  std::vector<std::byte> slots_host(pages * page_bytes);
  for (auto& x : slots_host) x = static_cast<std::byte>(rng());
  std::vector<DeviceBuffer> worker_dev;
  std::vector<std::byte*> worker_ptrs;
  for (size_t i = 0; i < nbuf; ++i) {
    auto b = DeviceBuffer::Allocate(buf_bytes);
    ASSERT_TRUE(b.ok());
    worker_ptrs.push_back(static_cast<std::byte*>(b->get()));
    worker_dev.push_back(*std::move(b));
  }
  auto slots_dev = DeviceBuffer::Allocate(slots_host.size());
  ASSERT_TRUE(slots_dev.ok());
  std::vector<uint32_t> blocks(spec.num_blocks);
  std::iota(blocks.begin(), blocks.end(), 0);
  std::shuffle(blocks.begin(), blocks.end(), rng);
  std::vector<uint64_t> sizes(nbuf, buf_bytes);
  Stream stream;
  for (PagedDirection dir : {PagedDirection::kSlotToWorker, PagedDirection::kWorkerToSlot}) {
    for (GpuCopyMover mover : {GpuCopyMover::kLoadStore, GpuCopyMover::kBulkAsync}) {
      for (int budget : {1, 16, 0}) {
        SCOPED_TRACE(::testing::Message() << "direction " << static_cast<int>(dir) << " mover "
                                          << static_cast<int>(mover) << " budget " << budget);
        // Reset the device to the host images, then run the kernel there and the twin here.
        for (size_t i = 0; i < nbuf; ++i) {
          ASSERT_CUDA(
              cudaMemcpy(worker_ptrs[i], worker_host[i].data(), buf_bytes, cudaMemcpyHostToDevice));
        }
        ASSERT_CUDA(cudaMemcpy(slots_dev->get(), slots_host.data(), slots_host.size(),
                               cudaMemcpyHostToDevice));
        auto dev_pieces = BindPieceTemplates(*layout, worker_ptrs, sizes);
        ASSERT_TRUE(dev_pieces.ok()) << dev_pieces.status();
        std::vector<PagedPage> dev_pages(pages);
        for (size_t p = 0; p < pages; ++p) {
          dev_pages[p] = {static_cast<std::byte*>(slots_dev->get()) + p * page_bytes, blocks[p]};
        }
        ASSERT_TRUE(ValidatePagedCopy(*dev_pieces, dev_pages).ok());
        auto table = DeviceBuffer::Allocate(dev_pieces->size() * sizeof(PagedPiece) +
                                            pages * sizeof(PagedPage));
        ASSERT_TRUE(table.ok());
        auto* d_pieces = static_cast<PagedPiece*>(table->get());
        auto* d_pages = reinterpret_cast<PagedPage*>(d_pieces + dev_pieces->size());
        ASSERT_CUDA(cudaMemcpy(d_pieces, dev_pieces->data(),
                               dev_pieces->size() * sizeof(PagedPiece), cudaMemcpyHostToDevice));
        ASSERT_CUDA(cudaMemcpy(d_pages, dev_pages.data(), pages * sizeof(PagedPage),
                               cudaMemcpyHostToDevice));
        GpuCopyOptions opt;
        opt.sm_budget = budget;
        opt.mover = mover;
        const absl::Status launched = LaunchPagedCopy(
            d_pieces, static_cast<uint32_t>(dev_pieces->size()), d_pages,
            static_cast<uint32_t>(pages), dir, MaxPagedPieceBytes(*dev_pieces), opt, stream.s);
        ASSERT_TRUE(launched.ok()) << launched;
        ASSERT_CUDA(cudaStreamSynchronize(stream.s));

        auto worker_expect = worker_host;
        auto slots_expect = slots_host;
        std::vector<std::byte*> host_ptrs;
        for (auto& v : worker_expect) host_ptrs.push_back(v.data());
        auto host_pieces = BindPieceTemplates(*layout, host_ptrs, sizes);
        ASSERT_TRUE(host_pieces.ok());
        std::vector<PagedPage> host_pages(pages);
        for (size_t p = 0; p < pages; ++p) {
          host_pages[p] = {slots_expect.data() + p * page_bytes, blocks[p]};
        }
        ASSERT_TRUE(CopyPagedCpu(*host_pieces, host_pages, dir).ok());
        std::vector<std::byte> readback(buf_bytes);
        for (size_t i = 0; i < nbuf; ++i) {
          ASSERT_CUDA(
              cudaMemcpy(readback.data(), worker_ptrs[i], buf_bytes, cudaMemcpyDeviceToHost));
          ASSERT_EQ(readback, worker_expect[i]) << "worker buffer " << i;
        }
        readback.resize(slots_host.size());
        ASSERT_CUDA(cudaMemcpy(readback.data(), slots_dev->get(), slots_host.size(),
                               cudaMemcpyDeviceToHost));
        ASSERT_EQ(readback, slots_expect);
      }
    }
  }
}

struct AttnCase {
  AttentionStatsShape shape;
  const char* name;
};

TEST(GpuAttentionStatsTest, MatchesFloat64ReferenceWithPoisonedOutput) {
  std::mt19937_64 rng(testing::TestSeed("GpuAttentionStatsTest"));
  const AttnCase cases[] = {
      {{4096, 32, 8, 128, 32, 16, KvDType::kBF16}, "llama-8b-like bf16"},
      {{1000, 32, 8, 128, 32, 16, KvDType::kFP16}, "fp16, partial last page"},
      {{777, 8, 2, 64, 5, 7, KvDType::kBF16}, "odd: tpp 7, window 5, d 64"},
      {{300, 4, 4, 32, 3, 100, KvDType::kFP16}, "pages longer than a tile"},
      {{129, 6, 3, 80, 9, 1, KvDType::kBF16}, "one token a page, d 80"},
      // The tiled pass (tokens_per_page 8/16/32/64, head_dim 64/128/256), at its edges:
      {{2000, 16, 2, 64, 17, 8, KvDType::kBF16}, "tiled: tpp 8, d 64, 136 rows in two splits"},
      {{333, 8, 1, 256, 6, 32, KvDType::kFP16}, "tiled: tpp 32, d 256, partial tile"},
      {{50, 4, 2, 128, 50, 64, KvDType::kBF16}, "tiled: one partial tile, window = sequence"},
      {{1500, 8, 2, 128, 12, 32, KvDType::kBF16}, "tiled: tpp 32, d 128, 48 rows, partial page"},
      {{4100, 64, 8, 128, 20, 16, KvDType::kFP16}, "tiled: 160 rows a kv head in two splits"},
  };
  Stream stream;
  for (const AttnCase& c : cases) {
    const AttentionStatsShape& s = c.shape;
    SCOPED_TRACE(c.name);
    const size_t nq = size_t{s.window} * s.q_heads * s.head_dim;
    const size_t nkv = size_t{s.tokens} * s.kv_heads * s.head_dim;
    const auto q = testing::RandomHalves(rng, nq, s.dtype, 1.0f);
    const auto k = testing::RandomHalves(rng, nkv, s.dtype, 1.0f);
    const auto v = testing::RandomHalves(rng, nkv, s.dtype, 0.5f);
    const uint32_t pages = AttentionStatsPageCount(s);
    AttentionStatsOptions opt;
    opt.breadth_threshold = 2.0f / pages;
    std::vector<PageAttentionStats> ref(pages), got(pages);
    ASSERT_TRUE(
        ComputeAttentionStatsReference(s, opt, q.data(), k.data(), v.data(), absl::MakeSpan(ref))
            .ok());
    auto dq = DeviceBuffer::Allocate(nq * 2);
    auto dk = DeviceBuffer::Allocate(nkv * 2);
    auto dv = DeviceBuffer::Allocate(nkv * 2);
    auto dout = DeviceBuffer::Allocate(pages * sizeof(PageAttentionStats));
    ASSERT_TRUE(dq.ok() && dk.ok() && dv.ok() && dout.ok());
    ASSERT_CUDA(cudaMemcpy(dq->get(), q.data(), nq * 2, cudaMemcpyHostToDevice));
    ASSERT_CUDA(cudaMemcpy(dk->get(), k.data(), nkv * 2, cudaMemcpyHostToDevice));
    ASSERT_CUDA(cudaMemcpy(dv->get(), v.data(), nkv * 2, cudaMemcpyHostToDevice));
    ASSERT_CUDA(cudaMemset(dout->get(), 0xFF, pages * sizeof(PageAttentionStats)));  // NaNs
    auto ws = AttentionStatsWorkspace::Create(s);
    ASSERT_TRUE(ws.ok()) << ws.status();
    const absl::Status st =
        LaunchAttentionStats(s, opt, dq->get(), dk->get(), dv->get(),
                             static_cast<PageAttentionStats*>(dout->get()), *ws, stream.s);
    ASSERT_TRUE(st.ok()) << st;
    ASSERT_CUDA(cudaStreamSynchronize(stream.s));
    ASSERT_CUDA(cudaMemcpy(got.data(), dout->get(), pages * sizeof(PageAttentionStats),
                           cudaMemcpyDeviceToHost));
    double max_mass_err = 0;
    int breadth_off = 0;
    for (uint32_t p = 0; p < pages; ++p) {
      ASSERT_TRUE(std::isfinite(got[p].mass) && std::isfinite(got[p].breadth) &&
                  std::isfinite(got[p].value_norm) && std::isfinite(got[p].mass_entropy))
          << "page " << p << " left unwritten or NaN";
      const double bound = 1e-3 * std::max(ref[p].mass, 1.0f / pages) + 1e-6;
      max_mass_err = std::max(max_mass_err, std::abs(got[p].mass - ref[p].mass) / bound);
      EXPECT_NEAR(got[p].mass, ref[p].mass, bound) << "page " << p;
      EXPECT_NEAR(got[p].value_norm, ref[p].value_norm, 1e-4 * ref[p].value_norm) << "page " << p;
      EXPECT_NEAR(got[p].mass_entropy, ref[p].mass_entropy, 1e-3) << "page " << p;
      const double pair = 1.0 / (double(s.window) * s.q_heads);
      if (std::abs(got[p].breadth - ref[p].breadth) > 1e-6) ++breadth_off;
      EXPECT_NEAR(got[p].breadth, ref[p].breadth, pair + 1e-6) << "page " << p;
    }
    std::printf("[attn] %s: pages=%u max mass error = %.3f of bound, breadth off on %d pages\n",
                c.name, pages, max_mass_err, breadth_off);
  }
}

// A workspace keeps what it can between launches (the tensor maps of K and V, made for their
// pointers; the fused tail's counters): launched on other buffers, or on the first ones again,
// it must give what a fresh workspace gives. Within float rounding, not bit for bit: where the
// statistics take two launches (e.g. KVTIER_ATTN_OPT=15), pass 3 adds in shared-memory atomics.
TEST(GpuAttentionStatsTest, ReusedWorkspaceFollowsNewBuffers) {
  std::mt19937_64 rng(testing::TestSeed("GpuAttentionStatsReuse"));
  const AttentionStatsShape s{2048, 32, 8, 128, 32, 16, KvDType::kBF16};
  const size_t nq = size_t{s.window} * s.q_heads * s.head_dim;
  const size_t nkv = size_t{s.tokens} * s.kv_heads * s.head_dim;
  const uint32_t pages = AttentionStatsPageCount(s);
  const auto q = testing::RandomHalves(rng, nq, s.dtype, 1.0f);
  auto dq = DeviceBuffer::Allocate(nq * 2);
  ASSERT_TRUE(dq.ok());
  ASSERT_CUDA(cudaMemcpy(dq->get(), q.data(), nq * 2, cudaMemcpyHostToDevice));
  // Two K/V sets in separate buffers.
  std::vector<DeviceBuffer> kv;
  for (int i = 0; i < 4; ++i) {
    const auto h = testing::RandomHalves(rng, nkv, s.dtype, i % 2 == 0 ? 1.0f : 0.5f);
    auto d = DeviceBuffer::Allocate(nkv * 2);
    ASSERT_TRUE(d.ok());
    ASSERT_CUDA(cudaMemcpy(d->get(), h.data(), nkv * 2, cudaMemcpyHostToDevice));
    kv.push_back(std::move(*d));
  }
  auto dout = DeviceBuffer::Allocate(pages * sizeof(PageAttentionStats));
  ASSERT_TRUE(dout.ok());
  Stream stream;
  AttentionStatsOptions opt;
  opt.breadth_threshold = 2.0f / pages;
  auto run = [&](AttentionStatsWorkspace& w, int set, std::vector<PageAttentionStats>& got) {
    ASSERT_CUDA(cudaMemset(dout->get(), 0xFF, pages * sizeof(PageAttentionStats)));  // NaNs
    const absl::Status st =
        LaunchAttentionStats(s, opt, dq->get(), kv[2 * set].get(), kv[2 * set + 1].get(),
                             static_cast<PageAttentionStats*>(dout->get()), w, stream.s);
    ASSERT_TRUE(st.ok()) << st;
    ASSERT_CUDA(cudaStreamSynchronize(stream.s));
    got.resize(pages);
    ASSERT_CUDA(cudaMemcpy(got.data(), dout->get(), pages * sizeof(PageAttentionStats),
                           cudaMemcpyDeviceToHost));
  };
  // Pages whose statistics differ by more than rounding (NaN, i.e. unwritten, differs).
  const double pair = 1.0 / (double(s.window) * s.q_heads);
  auto pages_differing = [&](const std::vector<PageAttentionStats>& a,
                             const std::vector<PageAttentionStats>& b) {
    uint32_t n = 0;
    for (uint32_t p = 0; p < pages; ++p) {
      const bool close =
          std::abs(double(a[p].mass) - b[p].mass) <= 1e-5 * std::max(b[p].mass, 1.0f / pages) &&
          std::abs(double(a[p].value_norm) - b[p].value_norm) <= 1e-5 * b[p].value_norm &&
          std::abs(double(a[p].mass_entropy) - b[p].mass_entropy) <= 1e-5 &&
          std::abs(double(a[p].breadth) - b[p].breadth) <= pair + 1e-6;
      n += close ? 0 : 1;
    }
    return n;
  };
  auto reused = AttentionStatsWorkspace::Create(s);
  ASSERT_TRUE(reused.ok()) << reused.status();
  std::vector<PageAttentionStats> fresh[2];
  for (int set = 0; set < 2; ++set) {
    auto w = AttentionStatsWorkspace::Create(s);
    ASSERT_TRUE(w.ok()) << w.status();
    run(*w, set, fresh[set]);
  }
  ASSERT_GT(pages_differing(fresh[0], fresh[1]), pages / 2)
      << "the two K/V sets must give different statistics";
  for (const int set : {0, 1, 1, 0}) {
    SCOPED_TRACE(set);
    std::vector<PageAttentionStats> got;
    run(*reused, set, got);
    ASSERT_EQ(got.size(), pages);
    EXPECT_EQ(0u, pages_differing(got, fresh[set]));
  }
}

TEST(GpuAttentionStatsTest, RejectsShapesTheKernelCannotRun) {
  AttentionStatsShape s{64, 4, 2, 24, 4, 16, KvDType::kBF16};  // head_dim not a multiple of 16
  auto ws = AttentionStatsWorkspace::Create(s);
  ASSERT_TRUE(ws.ok());
  EXPECT_EQ(LaunchAttentionStats(s, {}, nullptr, nullptr, nullptr, nullptr, *ws, nullptr).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(CudaCopyEngineTest, CalibratesAndCopiesMixedBatchesExactly) {
  std::mt19937_64 rng(testing::TestSeed("CudaCopyEngineTest"));
  CudaCopyEngineOptions options;
  options.calibration_bytes = size_t{4} << 20;  // small: this also runs under memcheck
  auto engine = CudaCopyEngine::Create(options);
  ASSERT_TRUE(engine.ok()) << engine.status();
  for (const CopyCalibration& c : (*engine)->calibration()) {
    std::printf(
        "[calibration] %s %6llu KiB: kernel %.1f kernel-bulk %.1f batch %.1f per-run %.1f GB/s "
        "-> %s\n",
        std::string(CopyRouteName(c.route)).c_str(),
        static_cast<unsigned long long>(c.piece_bytes >> 10), c.kernel_gbps, c.kernel_bulk_gbps,
        c.batch_gbps, c.per_run_gbps, std::string(CudaCopyMethodName(c.chosen)).c_str());
    EXPECT_GT(c.kernel_gbps, 0);
    EXPECT_GT(c.batch_gbps, 0);
    EXPECT_GT(c.per_run_gbps, 0);
    // The bulk-async mover is measured on device->device alone (these tests run on Hopper).
    if (c.route == CopyRoute::kDeviceToDevice) {
      EXPECT_GT(c.kernel_bulk_gbps, 0);
    } else {
      EXPECT_EQ(c.kernel_bulk_gbps, 0);
      EXPECT_NE(c.chosen, CudaCopyMethod::kKernelBulk);
    }
  }
  EXPECT_EQ((*engine)->calibration().size(), 9u);

  // One batch mixing every route, pageable host memory and an unaligned op; all must land.
  const size_t n = size_t{8} << 20;
  Pinned pinned_a(n), pinned_b(n);
  std::vector<unsigned char> pageable_a(n), pageable_b(n, 0xA5);
  auto dev_a = DeviceBuffer::Allocate(n);
  auto dev_b = DeviceBuffer::Allocate(n);
  ASSERT_TRUE(dev_a.ok() && dev_b.ok());
  for (size_t i = 0; i < n; ++i) {
    pinned_a.get()[i] = static_cast<unsigned char>(rng());
    pageable_a[i] = static_cast<unsigned char>(rng());
  }
  std::memset(pinned_b.get(), 0xA5, n);
  ASSERT_CUDA(cudaMemcpy(dev_a->get(), pageable_a.data(), n, cudaMemcpyHostToDevice));
  ASSERT_CUDA(cudaMemset(dev_b->get(), 0xA5, n));
  (*engine)->RegisterRegion(dev_a->get(), n, MemoryKind::kDevice);
  auto* da = static_cast<unsigned char*>(dev_a->get());
  auto* db = static_cast<unsigned char*>(dev_b->get());
  const size_t q = n / 4;
  std::vector<CopyOp> ops = {
      {db, pinned_a.get(), q},                             // h2d
      {pinned_b.get(), da, q},                             // d2h
      {db + q, da + q, q},                                 // d2d
      {pinned_b.get() + q, pinned_a.get() + q, q},         // h2h
      {pageable_b.data(), da + 2 * q, q},                  // d2h into pageable memory
      {db + 2 * q + 3, pinned_a.get() + 2 * q + 5, 1001},  // unaligned h2d
  };
  const uint64_t fallbacks_before = (*engine)->fallbacks();
  ASSERT_TRUE((*engine)->Copy(ops).ok());
  // The pageable op always falls back; the unaligned one only where h2d takes the kernel.
  const bool h2d_kernel =
      (*engine)->MethodFor(CopyRoute::kHostToDevice, (q + 1001) / 2) == CudaCopyMethod::kKernel;
  EXPECT_EQ((*engine)->fallbacks(), fallbacks_before + 1 + (h2d_kernel ? 1 : 0));
  std::vector<unsigned char> got_b(n);
  ASSERT_CUDA(cudaMemcpy(got_b.data(), db, n, cudaMemcpyDeviceToHost));
  EXPECT_EQ(0, std::memcmp(got_b.data(), pinned_a.get(), q));
  EXPECT_EQ(0, std::memcmp(pinned_b.get(), pageable_a.data(), q));
  EXPECT_EQ(0, std::memcmp(got_b.data() + q, pageable_a.data() + q, q));
  EXPECT_EQ(0, std::memcmp(pinned_b.get() + q, pinned_a.get() + q, q));
  EXPECT_EQ(0, std::memcmp(pageable_b.data(), pageable_a.data() + 2 * q, q));
  EXPECT_EQ(0, std::memcmp(got_b.data() + 2 * q + 3, pinned_a.get() + 2 * q + 5, 1001));
  EXPECT_EQ(got_b[2 * q + 2], 0xA5);
  EXPECT_EQ(got_b[2 * q + 3 + 1001], 0xA5);
}

// Batches longer than one launch are staged and launched in parts: with 7 descriptors a launch, a
// few hundred scattered pieces on each route take dozens of launches, and every byte must land;
// so must a second round through the same engine.
TEST(CudaCopyEngineTest, BatchesLongerThanALaunchLandExactly) {
  std::mt19937_64 rng(testing::TestSeed("BatchesLongerThanALaunch"));
  CudaCopyEngineOptions options;
  options.calibration_bytes = size_t{1} << 20;
  options.max_ops_per_launch = 7;
  options.host_to_device = CudaCopyMethod::kKernel;
  options.device_to_host = CudaCopyMethod::kKernel;
  options.device_to_device = CudaCopyMethod::kKernel;
  auto engine = CudaCopyEngine::Create(options);
  ASSERT_TRUE(engine.ok()) << engine.status();
  constexpr size_t kPieces = 301, kPiece = 4096;
  const size_t n = kPieces * kPiece;
  Pinned host_src(n), host_dst(n);
  auto dev_src = DeviceBuffer::Allocate(n);
  auto dev_dst = DeviceBuffer::Allocate(n);
  ASSERT_TRUE(dev_src.ok() && dev_dst.ok());
  for (int round = 0; round < 2; ++round) {
    for (size_t i = 0; i < n; ++i) host_src.get()[i] = static_cast<unsigned char>(rng());
    std::memset(host_dst.get(), 0x5A, n);
    ASSERT_CUDA(cudaMemset(dev_src->get(), 0x5A, n));
    ASSERT_CUDA(cudaMemset(dev_dst->get(), 0x5A, n));
    auto* ds = static_cast<unsigned char*>(dev_src->get());
    auto* dd = static_cast<unsigned char*>(dev_dst->get());
    // Pieces in a shuffled order, so that each launch scatters.
    std::vector<size_t> order(kPieces);
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), rng);
    auto batch = [&](unsigned char* dst, const unsigned char* src) {
      std::vector<CopyOp> ops;
      for (size_t k = 0; k < kPieces; ++k) {
        ops.push_back({dst + order[k] * kPiece, src + k * kPiece, kPiece});
      }
      return ops;
    };
    ASSERT_TRUE((*engine)->Copy(batch(ds, host_src.get())).ok());  // h2d, scattered
    ASSERT_TRUE((*engine)->Copy(batch(dd, ds)).ok());              // d2d, scattered again
    ASSERT_TRUE((*engine)->Copy(batch(host_dst.get(), dd)).ok());  // d2h
    // Piece k went to order[k] three times over.
    for (size_t k = 0; k < kPieces; ++k) {
      const size_t at = order[order[order[k]]];
      ASSERT_EQ(0, std::memcmp(host_dst.get() + at * kPiece, host_src.get() + k * kPiece, kPiece))
          << "round " << round << " piece " << k;
    }
  }
  EXPECT_EQ((*engine)->fallbacks(), 0u);
}

// Chunk kernels overlapped on two streams (of a green context below every SM): with chunks that
// start at 3 descriptors and grow by 1.5 (or 2, or 1: a fixed chunk size), uploads on the upload
// stream or on each kernel's own, a batch of 2731 scattered pieces of random sizes (an odd tail
// in every fill) spans dozens of launches and wraps the 1000-descriptor staging buffer; every
// byte must land on every route and at every budget (16 SMs, 64, every SM), with the launch mode
// the budget calls for. An unaligned op rides along.
TEST(CudaCopyEngineTest, OverlappedChunksLandExactlyAtEveryBudget) {
  std::mt19937_64 rng(testing::TestSeed("OverlappedChunksLandExactly"));
  int device_sms = 0;
  ASSERT_CUDA(cudaDeviceGetAttribute(&device_sms, cudaDevAttrMultiProcessorCount, 0));
  constexpr size_t kPieces = 2731, kMaxPiece = 2048;
  std::vector<uint64_t> len(kPieces), src_off(kPieces), dst_off(kPieces);
  size_t n = 0;
  for (size_t k = 0; k < kPieces; ++k) {
    len[k] = 16 * (1 + rng() % (kMaxPiece / 16));
    src_off[k] = n;
    n += len[k];
  }
  std::vector<size_t> order(kPieces);
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), rng);
  for (size_t k = 0, o = 0; k < kPieces; o += len[order[k]], ++k) dst_off[order[k]] = o;
  const size_t total = n + 64;  // room for the unaligned op
  Pinned host_src(total), host_dst(total);
  auto dev_a = DeviceBuffer::Allocate(total);
  auto dev_b = DeviceBuffer::Allocate(total);
  ASSERT_TRUE(dev_a.ok() && dev_b.ok());
  auto* da = static_cast<unsigned char*>(dev_a->get());
  auto* db = static_cast<unsigned char*>(dev_b->get());
  // Scatter: piece k from src + src_off[k] to dst + dst_off[k]; plus 37 unaligned bytes.
  auto batch = [&](unsigned char* dst, const unsigned char* src) {
    std::vector<CopyOp> ops;
    for (size_t k = 0; k < kPieces; ++k)
      ops.push_back({dst + dst_off[k], src + src_off[k], len[k]});
    ops.push_back({dst + n + 3, src + n + 1, 37});
    return ops;
  };
  struct Setting {
    int budget;
    bool overlap;
    uint32_t first;
    double growth;
    bool upload_on_launch_stream;
    bool descriptors_from_staging = false;
  };
  const Setting settings[] = {{16, true, 3, 1.5, false},       {64, true, 3, 2.0, false},
                              {0, true, 3, 1.5, false},        {0, true, 5, 1.0, true},
                              {64, true, 3, 2.0, true},        {64, false, 3, 2.0, false},
                              {16, true, 1024, 2.0, false},    {16, true, 3, 1.5, false, true},
                              {64, true, 5, 2.0, false, true}, {0, true, 3, 1.5, false, true},
                              {64, false, 3, 1.0, false, true}};
  for (const Setting& st : settings) {
    CudaCopyEngineOptions options;
    options.kernel.sm_budget = 16;
    // Every SM spelled as the device's count: a device_to_device budget of 0 means kernel's.
    options.device_to_device_sm_budget = st.budget == 0 ? device_sms : st.budget;
    options.overlap_launches = st.overlap;
    options.first_launch_ops = st.first;
    options.launch_growth = st.growth;
    options.upload_on_launch_stream = st.upload_on_launch_stream;
    // The test's pieces are small: pin each setting to one descriptor path.
    options.staging_descriptors_below_bytes = st.descriptors_from_staging ? UINT64_MAX : 0;
    options.first_launch_ops_from_staging = st.first;
    options.max_ops_per_launch = 1000;
    options.host_to_device = options.device_to_host = options.device_to_device =
        CudaCopyMethod::kKernel;
    auto engine = CudaCopyEngine::Create(options);
    ASSERT_TRUE(engine.ok()) << engine.status();
    const int sms = st.budget == 0 ? device_sms : std::min(st.budget, device_sms);
    const std::string mode(((*engine)->LaunchMode(CopyRoute::kDeviceToDevice)));
    std::printf("[mode] d2d budget %d overlap %d: %s on %d SMs; h2d: %s on %d SMs\n", st.budget,
                st.overlap ? 1 : 0, mode.c_str(), (*engine)->LaunchSms(CopyRoute::kDeviceToDevice),
                std::string((*engine)->LaunchMode(CopyRoute::kHostToDevice)).c_str(),
                (*engine)->LaunchSms(CopyRoute::kHostToDevice));
    EXPECT_EQ((*engine)->LaunchSms(CopyRoute::kDeviceToDevice), sms);
    EXPECT_EQ((*engine)->LaunchSms(CopyRoute::kHostToDevice), std::min(16, device_sms));
    if (!st.overlap) {
      EXPECT_EQ(mode, "one_stream");
    } else if (sms == device_sms) {
      EXPECT_EQ(mode, "two_stream");
    } else {
      // A green context where the driver makes one, else one stream (logged).
      EXPECT_TRUE(mode == "two_stream_green" || mode == "one_stream") << mode;
    }
    for (int round = 0; round < 2; ++round) {
      for (size_t i = 0; i < total; ++i) host_src.get()[i] = static_cast<unsigned char>(rng());
      std::memset(host_dst.get(), 0x5A, total);
      ASSERT_CUDA(cudaMemset(da, 0x5A, total));
      ASSERT_CUDA(cudaMemset(db, 0x5A, total));
      const uint64_t fallbacks = (*engine)->fallbacks();
      ASSERT_TRUE((*engine)->Copy(batch(da, host_src.get())).ok());  // h2d
      ASSERT_TRUE((*engine)->Copy(batch(db, da)).ok());              // d2d
      ASSERT_TRUE((*engine)->Copy(batch(host_dst.get(), db)).ok());  // d2h
      EXPECT_EQ((*engine)->fallbacks(), fallbacks + 3);              // the unaligned ops
      // Three scatters: piece k's bytes moved src_off -> dst_off, then that offset read as a
      // src_off again, twice more. Compare through the composed map, piece by piece.
      std::vector<unsigned char> stage(total, 0x5A);
      std::vector<unsigned char> cur(host_src.get(), host_src.get() + total);
      for (int hop = 0; hop < 3; ++hop) {
        std::fill(stage.begin(), stage.end(), 0x5A);
        for (size_t k = 0; k < kPieces; ++k) {
          std::memcpy(stage.data() + dst_off[k], cur.data() + src_off[k], len[k]);
        }
        std::memcpy(stage.data() + n + 3, cur.data() + n + 1, 37);
        cur.swap(stage);
      }
      ASSERT_EQ(0, std::memcmp(host_dst.get(), cur.data(), total))
          << "budget " << st.budget << " overlap " << st.overlap << " first " << st.first
          << " upload on launch stream " << st.upload_on_launch_stream << " from staging "
          << st.descriptors_from_staging << " round " << round;
    }
  }
}

// A batch whose pieces are under staging_descriptors_below_bytes skips the descriptor upload: its
// chunk kernels read the pinned staging, so each chunk makes exactly the upload's three CUDA calls
// (copy, event record, stream wait) fewer than a batch of larger pieces; both land exactly.
TEST(CudaCopyEngineTest, SmallPiecesReadDescriptorsFromTheStaging) {
  std::mt19937_64 rng(testing::TestSeed("SmallPiecesReadDescriptorsFromTheStaging"));
  CudaCopyEngineOptions opt;
  opt.host_to_device = opt.device_to_host = opt.device_to_device = CudaCopyMethod::kKernel;
  opt.first_launch_ops = opt.first_launch_ops_from_staging = 4;
  auto engine = CudaCopyEngine::Create(opt);
  ASSERT_TRUE(engine.ok()) << engine.status();
  const size_t n = size_t{4} << 20;
  auto dev_a = DeviceBuffer::Allocate(n);
  auto dev_b = DeviceBuffer::Allocate(n);
  ASSERT_TRUE(dev_a.ok() && dev_b.ok());
  auto* a = static_cast<unsigned char*>(dev_a->get());
  auto* b = static_cast<unsigned char*>(dev_b->get());
  std::vector<unsigned char> init(n), got(n), expect(n);
  for (auto& x : init) x = static_cast<unsigned char>(rng());
  ASSERT_CUDA(cudaMemcpy(a, init.data(), n, cudaMemcpyHostToDevice));
  std::vector<uint32_t> calls_per_chunk;
  for (uint64_t piece :
       {opt.staging_descriptors_below_bytes / 2, opt.staging_descriptors_below_bytes * 2}) {
    ASSERT_CUDA(cudaMemset(b, 0xA5, n));
    const size_t count = n / piece;
    std::vector<CopyOp> ops;
    for (size_t i = 0; i < count; ++i) {  // reversed: no two pieces continue each other
      ops.push_back({b + (count - 1 - i) * piece, a + i * piece, piece});
      std::memcpy(expect.data() + (count - 1 - i) * piece, init.data() + i * piece, piece);
    }
    ASSERT_TRUE((*engine)->CopyWith(CopyRoute::kDeviceToDevice, CudaCopyMethod::kKernel, ops).ok());
    ASSERT_CUDA(cudaMemcpy(got.data(), b, n, cudaMemcpyDeviceToHost));
    EXPECT_EQ(0, std::memcmp(got.data(), expect.data(), n)) << "pieces of " << piece;
    const KernelRunTrace trace = (*engine)->LastKernelRun();
    ASSERT_GT(trace.chunks, 1u) << "pieces of " << piece;
    ASSERT_EQ(trace.api_calls % trace.chunks, 0u) << "pieces of " << piece;
    calls_per_chunk.push_back(trace.api_calls / trace.chunks);
  }
  EXPECT_EQ(calls_per_chunk[0] + 3, calls_per_chunk[1]);
}

// kernel-bulk is a device->device method: pinned for that route it moves scattered pieces exactly
// (registered and unregistered device memory alike); pinned elsewhere, or asked for off that
// route, it is refused rather than handed host memory.
TEST(CudaCopyEngineTest, KernelBulkServesDeviceToDeviceOnly) {
  std::mt19937_64 rng(testing::TestSeed("KernelBulkServesDeviceToDeviceOnly"));
  CudaCopyEngineOptions opt;
  opt.host_to_device = CudaCopyMethod::kKernelBulk;
  EXPECT_EQ(CudaCopyEngine::Create(opt).status().code(), absl::StatusCode::kInvalidArgument);
  opt.host_to_device = opt.device_to_host = CudaCopyMethod::kKernel;  // no calibration
  opt.device_to_device = CudaCopyMethod::kKernelBulk;
  auto engine = CudaCopyEngine::Create(opt);
  ASSERT_TRUE(engine.ok()) << engine.status();
  EXPECT_EQ((*engine)->MethodFor(CopyRoute::kDeviceToDevice, 32 << 10),
            CudaCopyMethod::kKernelBulk);

  const size_t n = size_t{8} << 20;
  auto dev_a = DeviceBuffer::Allocate(n);
  auto dev_b = DeviceBuffer::Allocate(n);
  ASSERT_TRUE(dev_a.ok() && dev_b.ok());
  std::vector<unsigned char> init(n), got(n), expect(n, 0xA5);
  for (auto& x : init) x = static_cast<unsigned char>(rng());
  ASSERT_CUDA(cudaMemcpy(dev_a->get(), init.data(), n, cudaMemcpyHostToDevice));
  ASSERT_CUDA(cudaMemset(dev_b->get(), 0xA5, n));
  (*engine)->RegisterRegion(dev_a->get(), n, MemoryKind::kDevice);
  auto* a = static_cast<unsigned char*>(dev_a->get());
  auto* b = static_cast<unsigned char*>(dev_b->get());
  const Batch batch = RandomBatch(rng, n, 64 << 10);
  std::vector<CopyOp> ops;
  for (size_t i = 0; i < batch.len.size(); ++i) {
    ops.push_back({b + batch.dst_off[i], a + batch.src_off[i], batch.len[i]});
    std::memcpy(expect.data() + batch.dst_off[i], init.data() + batch.src_off[i], batch.len[i]);
  }
  ASSERT_TRUE((*engine)->Copy(ops).ok());
  ASSERT_CUDA(cudaMemcpy(got.data(), b, n, cudaMemcpyDeviceToHost));
  EXPECT_EQ(0, std::memcmp(got.data(), expect.data(), n));
  EXPECT_EQ((*engine)->fallbacks(), 0u);

  Pinned host(64 << 10);
  const std::vector<CopyOp> h2d = {{b, host.get(), 64 << 10}};
  EXPECT_EQ((*engine)->CopyWith(CopyRoute::kHostToDevice, CudaCopyMethod::kKernelBulk, h2d).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(CudaCopyEngineTest, PagesRoundTripThroughPinnedSlotsWithEveryMethod) {
  std::mt19937_64 rng(testing::TestSeed("PagesRoundTripThroughPinnedSlotsWithEveryMethod"));
  // Llama-3-8B-like layout, fewer layers: 32 KiB pieces, 2 x layers pieces a page.
  LayoutSpec spec{8, 8, 128, DType::kBF16, 16, TensorLayout::kVllmPerLayer, 64};
  auto layout = Layout::Create(spec);
  ASSERT_TRUE(layout.ok());
  CudaCopyEngineOptions opt;
  opt.calibration_bytes = 1 << 20;
  for (CudaCopyMethod m :
       {CudaCopyMethod::kKernel, CudaCopyMethod::kMemcpyBatch, CudaCopyMethod::kMemcpyPerRun}) {
    SCOPED_TRACE(std::string(CudaCopyMethodName(m)));
    opt.host_to_device = opt.device_to_host = opt.device_to_device = m;
    auto engine = CudaCopyEngine::Create(opt);
    ASSERT_TRUE(engine.ok()) << engine.status();
    std::vector<DeviceBuffer> src, dst;
    std::vector<std::byte*> src_ptrs, dst_ptrs;
    std::vector<unsigned char> init(layout->buffer_bytes());
    for (uint32_t l = 0; l < layout->buffer_count(); ++l) {
      auto a = DeviceBuffer::Allocate(layout->buffer_bytes());
      auto b = DeviceBuffer::Allocate(layout->buffer_bytes());
      ASSERT_TRUE(a.ok() && b.ok());
      for (auto& x : init) x = static_cast<unsigned char>(rng());
      ASSERT_CUDA(cudaMemcpy(a->get(), init.data(), init.size(), cudaMemcpyHostToDevice));
      ASSERT_CUDA(cudaMemset(b->get(), 0xA5, init.size()));
      src_ptrs.push_back(static_cast<std::byte*>(a->get()));
      dst_ptrs.push_back(static_cast<std::byte*>(b->get()));
      src.push_back(std::move(*a));
      dst.push_back(std::move(*b));
    }
    std::vector<uint32_t> blocks(spec.num_blocks);
    std::iota(blocks.begin(), blocks.end(), 0);
    std::shuffle(blocks.begin(), blocks.end(), rng);
    blocks.resize(1 + rng() % 40);
    Pinned slots(blocks.size() * layout->page_bytes());
    std::memset(slots.get(), 0x3C, slots.bytes);
    std::vector<PageTransfer> pages;
    for (size_t i = 0; i < blocks.size(); ++i) {
      pages.push_back(
          {blocks[i], reinterpret_cast<std::byte*>(slots.get()) + i * layout->page_bytes()});
    }
    std::vector<CopyOp> ops;
    ASSERT_TRUE(AppendPageCopies(*layout, src_ptrs, pages, PageCopyDirection::kGather, ops).ok());
    ASSERT_TRUE((*engine)->Copy(ops).ok());
    ops.clear();
    ASSERT_TRUE(AppendPageCopies(*layout, dst_ptrs, pages, PageCopyDirection::kScatter, ops).ok());
    ASSERT_TRUE((*engine)->Copy(ops).ok());
    std::vector<unsigned char> a(layout->buffer_bytes()), b(layout->buffer_bytes());
    std::vector<Piece> pieces;
    for (uint32_t l = 0; l < layout->buffer_count(); ++l) {
      ASSERT_CUDA(cudaMemcpy(a.data(), src_ptrs[l], a.size(), cudaMemcpyDeviceToHost));
      ASSERT_CUDA(cudaMemcpy(b.data(), dst_ptrs[l], b.size(), cudaMemcpyDeviceToHost));
      for (uint32_t blk : blocks) {
        pieces.clear();
        ASSERT_TRUE(layout->AppendPieces(blk, pieces).ok());
        for (const Piece& p : pieces) {
          if (p.buffer != l) continue;
          ASSERT_EQ(0, std::memcmp(a.data() + p.offset, b.data() + p.offset, p.length))
              << "block " << blk << " layer " << l;
        }
      }
    }
    EXPECT_EQ((*engine)->fallbacks(), 0u);
  }
}

}  // namespace
}  // namespace kvtier::kernels
