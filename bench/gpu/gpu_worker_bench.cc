// kvtier_gpu_worker_bench: a GPU worker process against a running kvtierd whose pages sit in one
// tier (bench/gpu/run_worker_bench starts one daemon per tier). Llama-3-8B-shaped blocks (32
// layers, 8 KV heads, head_dim 128, bf16, 16-token pages: 2 MiB a page in 64 pieces of 32 KiB).
//
// For 4k-, 32k- and 128k-token prefixes it times Lookup -> Load (reply when enqueued) -> the
// worker's stream waiting on the daemon's event -> that stream idle: the time until the worker's
// own kernels could use the blocks. In the same process it measures the tier's ceiling (one large
// device-to-device cudaMemcpy; one large pinned host-to-device copy; the raw io_uring read rate of
// the NVMe tier's own slot files, O_DIRECT, 2 MiB reads, 32 in flight) and the naive path a user
// would write (one cudaMemcpyAsync per piece - K or V of one layer of one page - from memory laid
// out like the tier's slots; for NVMe, one pread per page first). Every loaded prefix is checked
// word for word. One machine-readable line per figure, "gpu_worker_bench ...".
#include <dirent.h>
#include <fcntl.h>
#include <liburing.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "bench/gpu/gpu_worker_lib.h"
#include "client/client.h"
#include "kernels/cuda/gpu_kernels.h"
#include "tiering/copy_plan.h"
#include "tiering/page_key.h"

ABSL_FLAG(std::string, socket, "", "kvtierd socket");
ABSL_FLAG(std::string, tier, "hbm", "the tier the daemon holds the pages in: hbm, dram or nvme");
ABSL_FLAG(uint32_t, pages, 8192, "pages of the longest prefix (8192 = 128k tokens)");
ABSL_FLAG(uint32_t, store_pages, 0, "pages to store first (0: none, the daemon has them)");
ABSL_FLAG(uint32_t, repeats, 3, "timed loads per prefix");
ABSL_FLAG(std::string, nvme_dir, "", "the NVMe tier's directory (raw read rate, naive path)");
ABSL_FLAG(uint32_t, naive_pages, 2048, "pages the naive per-piece path moves");
ABSL_FLAG(uint32_t, sm_budget, 16, "gpu.sm_budget of the daemon (printed)");
ABSL_FLAG(uint32_t, d2d_sm_budget, 0, "gpu.device_to_device_sm_budget of the daemon (printed)");
ABSL_FLAG(uint64_t, seed, 7, "sequence seed");
ABSL_FLAG(bool, vmm, false,
          "register the blocks as a CUDA VMM allocation by fd, not an IPC handle");
ABSL_FLAG(bool, store_only, false, "store --store_pages and exit (NVMe: loads follow a restart)");

namespace kvtier::gpuw {
namespace {

constexpr uint64_t kGiB = uint64_t{1} << 30;

int Fail(const std::string& what, const absl::Status& s) {
  std::printf("gpu_worker_bench FAIL %s: %s\n", what.c_str(), s.ToString().c_str());
  return 1;
}

#define CK(x)                                                                            \
  do {                                                                                   \
    cudaError_t e_ = (x);                                                                \
    if (e_ != cudaSuccess) return Fail(#x, absl::InternalError(cudaGetErrorString(e_))); \
  } while (0)

std::vector<std::string> SlotFiles(const std::string& dir) {
  std::vector<std::string> out;
  if (DIR* d = opendir(dir.c_str()); d != nullptr) {
    while (dirent* e = readdir(d)) {
      const std::string p = dir + "/" + e->d_name;
      struct stat st {};
      if (e->d_name[0] != '.' && stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode) &&
          st.st_size > (1 << 24)) {
        out.push_back(p);
      }
    }
    closedir(d);
  }
  std::sort(out.begin(), out.end());
  return out;
}

// Raw io_uring read rate of the first `bytes` of the NVMe tier's slot files.
double RawReadGbps(const std::vector<std::string>& files, uint64_t bytes) {
  constexpr uint32_t kDepth = 32;
  constexpr size_t kChunk = size_t{2} << 20;
  io_uring ring;
  if (io_uring_queue_init(kDepth, &ring, 0) != 0) return 0;
  std::vector<void*> bufs(kDepth);
  for (void*& b : bufs) {
    if (posix_memalign(&b, 4096, kChunk) != 0) return 0;
  }
  std::vector<int> fds;
  for (const std::string& f : files) fds.push_back(open(f.c_str(), O_RDONLY | O_DIRECT));
  const uint64_t per_file = bytes / fds.size() / kChunk * kChunk;
  std::vector<uint64_t> next(fds.size(), 0);
  uint64_t done = 0;
  uint32_t inflight = 0;
  size_t rr = 0;
  std::vector<uint32_t> free_bufs;
  for (uint32_t i = 0; i < kDepth; ++i) free_bufs.push_back(i);
  const double t0 = NowSeconds();
  for (;;) {
    while (!free_bufs.empty()) {
      size_t f = fds.size();
      for (size_t k = 0; k < fds.size(); ++k) {
        const size_t c = (rr + k) % fds.size();
        if (next[c] < per_file) {
          f = c;
          break;
        }
      }
      if (f == fds.size()) break;
      rr = f + 1;
      const uint32_t b = free_bufs.back();
      free_bufs.pop_back();
      io_uring_sqe* sqe = io_uring_get_sqe(&ring);
      io_uring_prep_read(sqe, fds[f], bufs[b], kChunk, next[f]);
      io_uring_sqe_set_data64(sqe, b);
      next[f] += kChunk;
      ++inflight;
    }
    if (inflight == 0) break;
    io_uring_submit_and_wait(&ring, 1);
    io_uring_cqe* cqe = nullptr;
    while (io_uring_peek_cqe(&ring, &cqe) == 0) {
      if (cqe->res > 0) done += static_cast<uint64_t>(cqe->res);
      free_bufs.push_back(static_cast<uint32_t>(io_uring_cqe_get_data64(cqe)));
      --inflight;
      io_uring_cqe_seen(&ring, cqe);
    }
  }
  const double t = NowSeconds() - t0;
  for (int fd : fds) close(fd);
  for (void* b : bufs) free(b);
  io_uring_queue_exit(&ring);
  return done / t / 1e9;
}

int Main() {
  const std::string tier = absl::GetFlag(FLAGS_tier);
  const uint32_t pages = absl::GetFlag(FLAGS_pages);
  const uint32_t store_pages = absl::GetFlag(FLAGS_store_pages);
  const uint64_t seed = absl::GetFlag(FLAGS_seed);
  const uint32_t blocks = std::max(pages, store_pages) + 64;
  absl::StatusOr<Layout> layout = Layout::Create(Llama3_8B(blocks));
  if (!layout.ok()) return Fail("layout", layout.status());
  const uint64_t page_bytes = layout->page_bytes();
  absl::StatusOr<std::unique_ptr<WorkerCache>> cache =
      WorkerCache::Create(*layout, absl::GetFlag(FLAGS_vmm));
  if (!cache.ok()) return Fail("alloc", cache.status());
  WorkerCache& c = **cache;
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(absl::GetFlag(FLAGS_socket));
  if (!client.ok()) return Fail("connect", client.status());
  absl::StatusOr<HelloInfo> hello =
      (*client)->Hello("llama3-8b/gpu-bench", layout->spec(), false, "kvtier_gpu_worker_bench");
  if (!hello.ok()) return Fail("hello", hello.status());
  if (absl::Status s = (*client)->RegisterGpuBuffers(c.uuid(), c.Handles()); !s.ok()) {
    return Fail("register", s);
  }
  const std::vector<PageKey> keys = SequenceKeys(hello->salt, seed, std::max(pages, store_pages));
  const uint32_t max_batch = hello->max_batch_pages;
  if (store_pages > 0) {
    if (absl::Status s = c.Fill(seed, 0, store_pages); !s.ok()) return Fail("fill", s);
    const double t0 = NowSeconds();
    absl::StatusOr<std::vector<Tier>> stored =
        StoreSequence(**client, absl::MakeConstSpan(keys).subspan(0, store_pages), max_batch);
    if (!stored.ok()) return Fail("store", stored.status());
    const double t = NowSeconds() - t0;
    std::printf("gpu_worker_bench store tier=%s pages=%u s=%.2f gbps=%.2f\n", tier.c_str(),
                store_pages, t, store_pages * page_bytes / t / 1e9);
    if (absl::GetFlag(FLAGS_store_only)) return 0;
  }
  std::vector<uint32_t> ids(pages);
  for (uint32_t i = 0; i < pages; ++i) ids[i] = i;
  for (uint32_t prefix : {256u, 2048u, 8192u}) {
    if (prefix > pages) continue;
    std::vector<double> secs;
    double reply_s = 0;   // of the best run: Lookup until the last reply (the daemon's CPU side)
    double lookup_s = 0;  // of the best run: the Lookup RPC alone
    std::vector<double> load_secs;  // each run without its Lookup: Load until the stream can use it
    std::vector<double> prefix_secs;  // each prefix_only Load (the Lookup folded in) until usable
    std::string tiers_seen;
    // The prefix's Loads, one a batch, each waited for and its event put on the worker's stream;
    // returns the pages that came back. prefix_only: the Lookup folded into the Load. The first
    // run of the Lookup-then-Load mode names the tiers the pages came from.
    auto load_prefix = [&](bool prefix_only, std::string* tiers) -> absl::StatusOr<uint32_t> {
      std::vector<OpHandle> ops;
      for (uint32_t at = 0; at < prefix; at += max_batch) {
        const uint32_t n = std::min(max_batch, prefix - at);
        ASSIGN_OR_RETURN(
            OpHandle op,
            (*client)->LoadGpuAsync(absl::MakeConstSpan(keys).subspan(at, n),
                                    absl::MakeConstSpan(ids).subspan(at, n), true, prefix_only));
        ops.push_back(op);
      }
      uint32_t ok = 0;
      for (OpHandle op : ops) {
        ASSIGN_OR_RETURN(GpuPageResults res, (*client)->WaitGpu(op));
        ok += res.pages.ok_pages;
        for (Tier t : res.pages.tiers) {
          if (tiers != nullptr && tiers->find(std::string(TierName(t))) == std::string::npos) {
            absl::StrAppend(tiers, tiers->empty() ? "" : "+", TierName(t));
          }
        }
        RETURN_IF_ERROR(c.WaitOn(res.cuda_event_handle));
      }
      return ok;
    };
    for (uint32_t r = 0; r < absl::GetFlag(FLAGS_repeats); ++r) {
      if (absl::Status s = c.Clear(); !s.ok()) return Fail("clear", s);
      const double t0 = NowSeconds();
      absl::StatusOr<LookupReply> found =
          (*client)->Lookup(absl::MakeConstSpan(keys).subspan(0, prefix));
      if (!found.ok()) return Fail("lookup", found.status());
      const double t_lookup = NowSeconds() - t0;
      if (found->prefix_pages != prefix) {
        return Fail("lookup", absl::NotFoundError(absl::StrCat(found->prefix_pages, " of ", prefix,
                                                               " pages cached")));
      }
      absl::StatusOr<uint32_t> ok = load_prefix(false, r == 0 ? &tiers_seen : nullptr);
      if (!ok.ok()) return Fail("load", ok.status());
      const double t_reply = NowSeconds() - t0;
      CK(cudaStreamSynchronize(c.stream()));
      secs.push_back(NowSeconds() - t0);
      load_secs.push_back(secs.back() - t_lookup);
      if (secs.back() <= *std::min_element(secs.begin(), secs.end())) {
        reply_s = t_reply;
        lookup_s = t_lookup;
      }
      if (*ok != prefix) {
        return Fail("load", absl::InternalError(absl::StrCat(*ok, " of ", prefix, " pages")));
      }
      // The same prefix as prefix_only Loads, timed from the request until the stream may use it.
      if (absl::Status s = c.Clear(); !s.ok()) return Fail("clear", s);
      const double t1 = NowSeconds();
      absl::StatusOr<uint32_t> prefix_ok = load_prefix(true, nullptr);
      if (!prefix_ok.ok()) return Fail("prefix load", prefix_ok.status());
      CK(cudaStreamSynchronize(c.stream()));
      prefix_secs.push_back(NowSeconds() - t1);
      if (*prefix_ok != prefix) {
        return Fail("prefix load",
                    absl::InternalError(absl::StrCat(*prefix_ok, " of ", prefix, " pages")));
      }
    }
    std::sort(prefix_secs.begin(), prefix_secs.end());
    absl::StatusOr<uint64_t> bad = c.Verify(seed, prefix, 0);
    if (!bad.ok()) return Fail("verify", bad.status());
    std::sort(secs.begin(), secs.end());
    std::sort(load_secs.begin(), load_secs.end());
    const double bytes = double(prefix) * page_bytes;
    std::printf(
        "gpu_worker_bench load tier=%s served_from=%s prefix_tokens=%u pages=%u bytes=%.0f "
        "best_ms=%.2f reply_ms=%.2f best_gbps=%.2f median_gbps=%.2f mismatched_words=%llu "
        "sm_budget=%u d2d_sm_budget=%u lookup_ms=%.2f load_only_best_gbps=%.2f "
        "prefix_load_best_gbps=%.2f prefix_load_median_gbps=%.2f\n",
        tier.c_str(), tiers_seen.c_str(), prefix * 16, prefix, bytes, secs.front() * 1e3,
        reply_s * 1e3, bytes / secs.front() / 1e9, bytes / secs[secs.size() / 2] / 1e9,
        static_cast<unsigned long long>(*bad), absl::GetFlag(FLAGS_sm_budget),
        absl::GetFlag(FLAGS_d2d_sm_budget), lookup_s * 1e3, bytes / load_secs.front() / 1e9,
        bytes / prefix_secs.front() / 1e9, bytes / prefix_secs[prefix_secs.size() / 2] / 1e9);
    std::fflush(stdout);
    if (*bad != 0) return 1;
  }

  // Ceilings and the naive path, in this process.
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  cudaStream_t s = c.stream();
  auto timed = [&](auto&& body, int reps) {
    float best = 1e30f;
    for (int r = 0; r < reps; ++r) {
      cudaEventRecord(e0, s);
      body();
      cudaEventRecord(e1, s);
      cudaEventSynchronize(e1);
      float ms = 0;
      cudaEventElapsedTime(&ms, e0, e1);
      best = std::min(best, ms);
    }
    return best * 1e-3;
  };
  const uint32_t naive_pages = std::min(absl::GetFlag(FLAGS_naive_pages), pages);
  const uint64_t naive_bytes = uint64_t{naive_pages} * page_bytes;
  const uint32_t layers = layout->spec().layers;
  const uint64_t half = layout->block_bytes_per_layer();
  // The per-piece copies of page i (slot image at src + i * page_bytes) into block i: the page
  // image is layer-major, K then V of each layer (Layout's page order).
  auto naive_page = [&](const std::byte* src, uint32_t i, cudaMemcpyKind kind) {
    for (uint32_t l = 0; l < layers; ++l) {
      for (uint32_t kv = 0; kv < 2; ++kv) {
        std::byte* dst = static_cast<std::byte*>(c.layer(l)) + (uint64_t{kv} * blocks + i) * half;
        cudaMemcpyAsync(dst, src + (uint64_t{l} * 2 + kv) * half, half, kind, s);
      }
    }
  };
  if (tier == "hbm") {
    const uint64_t bytes = 4 * kGiB;
    void *a = nullptr, *b = nullptr;
    CK(cudaMalloc(&a, bytes));
    CK(cudaMalloc(&b, bytes));
    const double t = timed([&] { cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, s); }, 5);
    std::printf("gpu_worker_bench ceiling tier=hbm what=one_d2d_cudaMemcpy bytes=%llu gbps=%.2f\n",
                static_cast<unsigned long long>(bytes), bytes / t / 1e9);
    const double tn = timed(
        [&] {
          for (uint32_t i = 0; i < naive_pages; ++i) {
            naive_page(static_cast<std::byte*>(a) + i * page_bytes, i, cudaMemcpyDeviceToDevice);
          }
        },
        2);
    std::printf(
        "gpu_worker_bench naive tier=hbm what=cudaMemcpyAsync_per_piece pages=%u "
        "calls=%u gbps=%.2f\n",
        naive_pages, naive_pages * layers * 2, naive_bytes / tn / 1e9);
    // The daemon's copy kernel alone, in this process, on the same blocks: page i of the slot
    // image at `a` into block i, as the paged kernel (both item orders, both movers) and as the
    // descriptor-list kernel fed the same copies. What the daemon's loads could reach at most.
    {
      std::vector<std::byte*> bases(layers);
      std::vector<uint64_t> sizes(layers, layout->buffer_bytes());
      for (uint32_t l = 0; l < layers; ++l) bases[l] = static_cast<std::byte*>(c.layer(l));
      absl::StatusOr<std::vector<kernels::PagedPiece>> pieces =
          BindPieceTemplates(*layout, bases, sizes);
      if (!pieces.ok()) return Fail("paged pieces", pieces.status());
      std::vector<kernels::PagedPage> paged(naive_pages);
      std::vector<kernels::CopyDescriptor> list;
      for (uint32_t i = 0; i < naive_pages; ++i) {
        paged[i] = {static_cast<std::byte*>(a) + uint64_t{i} * page_bytes, i};
        for (uint32_t k = 0; k < pieces->size(); ++k) {
          list.push_back(kernels::PagedItem(pieces->data(), static_cast<uint32_t>(pieces->size()),
                                            paged.data(), kernels::PagedDirection::kSlotToWorker,
                                            i * static_cast<uint32_t>(pieces->size()) + k));
        }
      }
      void* table = nullptr;
      const size_t piece_bytes = pieces->size() * sizeof(kernels::PagedPiece);
      CK(cudaMalloc(&table, piece_bytes + paged.size() * sizeof(kernels::PagedPage) +
                                list.size() * sizeof(kernels::CopyDescriptor)));
      auto* d_pieces = static_cast<kernels::PagedPiece*>(table);
      auto* d_pages = reinterpret_cast<kernels::PagedPage*>(d_pieces + pieces->size());
      auto* d_list = reinterpret_cast<kernels::CopyDescriptor*>(d_pages + paged.size());
      CK(cudaMemcpy(d_pieces, pieces->data(), piece_bytes, cudaMemcpyHostToDevice));
      CK(cudaMemcpy(d_pages, paged.data(), paged.size() * sizeof(kernels::PagedPage),
                    cudaMemcpyHostToDevice));
      CK(cudaMemcpy(d_list, list.data(), list.size() * sizeof(kernels::CopyDescriptor),
                    cudaMemcpyHostToDevice));
      const uint64_t max_piece = kernels::MaxPagedPieceBytes(*pieces);
      auto must = [](const absl::Status& st) {
        if (!st.ok()) {
          std::fprintf(stderr, "gpu_worker_bench: kernel launch: %s\n", st.ToString().c_str());
          std::abort();
        }
      };
      for (int budget : {32, 64, 132}) {
        for (kernels::GpuCopyMover mover :
             {kernels::GpuCopyMover::kLoadStore, kernels::GpuCopyMover::kBulkAsync}) {
          kernels::GpuCopyOptions opt;
          opt.sm_budget = budget;
          opt.mover = mover;
          const char* mover_name =
              mover == kernels::GpuCopyMover::kLoadStore ? "loadstore" : "bulk";
          for (kernels::PagedOrder order :
               {kernels::PagedOrder::kPageMajor, kernels::PagedOrder::kPieceMajor}) {
            opt.paged_order = order;
            const double tk = timed(
                [&] {
                  must(kernels::LaunchPagedCopy(d_pieces, static_cast<uint32_t>(pieces->size()),
                                                d_pages, static_cast<uint32_t>(paged.size()),
                                                kernels::PagedDirection::kSlotToWorker, max_piece,
                                                opt, s));
                },
                5);
            std::printf(
                "gpu_worker_bench kernel tier=hbm what=paged order=%s mover=%s sm=%d pages=%u "
                "gbps=%.2f\n",
                order == kernels::PagedOrder::kPageMajor ? "page_major" : "piece_major", mover_name,
                budget, naive_pages, naive_bytes / tk / 1e9);
          }
          const double tl = timed(
              [&] {
                must(kernels::LaunchCopyBatch(d_list, static_cast<uint32_t>(list.size()), max_piece,
                                              opt, s));
              },
              5);
          std::printf(
              "gpu_worker_bench kernel tier=hbm what=list mover=%s sm=%d pages=%u gbps=%.2f\n",
              mover_name, budget, naive_pages, naive_bytes / tl / 1e9);
        }
      }
      std::fflush(stdout);
      cudaFree(table);
    }
    cudaFree(a);
    cudaFree(b);
  } else if (tier == "dram") {
    const uint64_t bytes = 4 * kGiB;
    void* h = nullptr;
    void* d = nullptr;
    CK(cudaHostAlloc(&h, bytes, 0));
    CK(cudaMalloc(&d, bytes));
    std::memset(h, 1, bytes);
    const double t = timed([&] { cudaMemcpyAsync(d, h, bytes, cudaMemcpyHostToDevice, s); }, 5);
    std::printf(
        "gpu_worker_bench ceiling tier=dram what=one_pinned_h2d_cudaMemcpy bytes=%llu "
        "gbps=%.2f\n",
        static_cast<unsigned long long>(bytes), bytes / t / 1e9);
    const double tn = timed(
        [&] {
          for (uint32_t i = 0; i < naive_pages; ++i) {
            naive_page(static_cast<std::byte*>(h) + i * page_bytes, i, cudaMemcpyHostToDevice);
          }
        },
        2);
    std::printf(
        "gpu_worker_bench naive tier=dram what=cudaMemcpyAsync_per_piece pages=%u "
        "calls=%u gbps=%.2f\n",
        naive_pages, naive_pages * layers * 2, naive_bytes / tn / 1e9);
    cudaFreeHost(h);
    cudaFree(d);
  } else if (tier == "nvme") {
    const std::vector<std::string> files = SlotFiles(absl::GetFlag(FLAGS_nvme_dir));
    if (files.empty()) return Fail("nvme", absl::NotFoundError("no slot files"));
    const uint64_t slot_disk = page_bytes + 4096;
    const uint64_t bytes = uint64_t{pages} * slot_disk;
    std::printf(
        "gpu_worker_bench ceiling tier=nvme what=raw_io_uring_read files=%zu bytes=%llu "
        "depth=32 chunk=2MiB gbps=%.2f\n",
        files.size(), static_cast<unsigned long long>(bytes), RawReadGbps(files, bytes));
    // Naive: one pread per page (no queue depth) into pinned memory, then per-piece copies.
    void* h = nullptr;
    CK(cudaHostAlloc(&h, slot_disk, 0));
    const int fd = open(files[0].c_str(), O_RDONLY | O_DIRECT);
    const double t0 = NowSeconds();
    for (uint32_t i = 0; i < naive_pages; ++i) {
      if (pread(fd, h, slot_disk, uint64_t{i} * slot_disk) < 0) break;
      naive_page(static_cast<std::byte*>(h) + 4096, i, cudaMemcpyHostToDevice);
      cudaStreamSynchronize(s);  // the staging page is reused
    }
    const double tn = NowSeconds() - t0;
    close(fd);
    std::printf(
        "gpu_worker_bench naive tier=nvme what=pread_then_cudaMemcpyAsync_per_piece "
        "pages=%u gbps=%.2f\n",
        naive_pages, naive_bytes / tn / 1e9);
    cudaFreeHost(h);
  }
  return 0;
}

}  // namespace
}  // namespace kvtier::gpuw

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return kvtier::gpuw::Main();
}
