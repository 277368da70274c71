// GPU benchmarks of kernels/ and CudaCopyEngine against named baselines measured in the same run:
//   1. HBM <-> pinned DRAM, scattered pages of 16/32/64 KiB pieces, vs ONE large pinned
//      cudaMemcpyAsync of the same bytes (and per-piece cudaMemcpyAsync, cudaMemcpyBatchAsync, the
//      copy kernel at SM budgets 1..all, and the CudaCopyEngine as configured by default);
//   2. HBM <-> HBM page gathers vs one device-to-device cudaMemcpyAsync of the same bytes (the
//      copy kernel with each mover, load/store "kernel" and bulk-async "kernel_bulk", at every
//      SM budget);
//   3. attention statistics on a 32k-token sequence vs the time to read K and V once at the
//      device bandwidth measured by a large device-to-device copy (read + write bytes).
// Beside the engine's rows (the default engine, and variants with one stream or overlapped chunk
// launches at 16, 64 and every SM: `engine_kernel_<one|two>_f<first chunk>_g<growth>[_s|_sd]`,
// their launch mode in `engine_mode` lines, their host side in `engine_host` lines),
// `kernel_wall` times the raw kernel as the engine is timed (one launch plus synchronise, wall
// clock; in the same rounds as the variants), a `PROBE` line gives the host's descriptor staging
// cost per piece, and an `engine_check` line per route and overlapped variant says whether the
// engine's kernel method wrote what the raw kernel writes; `attention_stats_rearm` checks that a
// reused attention workspace gives what a fresh one gives. KVTIER_BENCH_ATTN_OPTS="15,3,..." also
// times the attention pass's other option sets (KVTIER_ATTN_OPT,
// kernels/cuda/gpu_attention_stats.cu) against the default's output. Prints a table, then one
// machine-readable `BENCH key=value ...` line per figure. Usage: kvtier_gpu_bench [--total_mib=512]
// [--reps=5] [--attn_only] [--engine_only]
#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "kernels/attention_stats.h"
#include "kernels/copy_batch.h"
#include "kernels/cuda/gpu_kernels.h"
#include "kernels/half_float.h"
#include "tiering/cuda_copy_engine.h"

namespace kvtier {
namespace {

using kernels::CopyDescriptor;
using kernels::DeviceBuffer;

#define CHECK_CUDA(x)                                                                         \
  do {                                                                                        \
    cudaError_t e_ = (x);                                                                     \
    if (e_ != cudaSuccess) {                                                                  \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
      std::exit(1);                                                                           \
    }                                                                                         \
  } while (0)
#define CHECK_OK(x)                                                                  \
  do {                                                                               \
    absl::Status s_ = (x);                                                           \
    if (!s_.ok()) {                                                                  \
      std::fprintf(stderr, "%s:%d %s\n", __FILE__, __LINE__, s_.ToString().c_str()); \
      std::exit(1);                                                                  \
    }                                                                                \
  } while (0)

// Median seconds of `reps` timed runs after one warm-up, timed with events on `stream`.
double TimeIt(cudaStream_t stream, int reps, const std::function<void()>& body) {
  cudaEvent_t a, b;
  CHECK_CUDA(cudaEventCreate(&a));
  CHECK_CUDA(cudaEventCreate(&b));
  body();
  CHECK_CUDA(cudaStreamSynchronize(stream));
  std::vector<double> t;
  for (int r = 0; r < reps; ++r) {
    CHECK_CUDA(cudaEventRecord(a, stream));
    body();
    CHECK_CUDA(cudaEventRecord(b, stream));
    CHECK_CUDA(cudaEventSynchronize(b));
    float ms = 0;
    CHECK_CUDA(cudaEventElapsedTime(&ms, a, b));
    t.push_back(ms / 1e3);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

// Median wall-clock seconds of `reps` runs of a synchronous `body` after one warm-up (for the
// engine, which runs on its own stream and returns when the bytes have landed).
double TimeHost(int reps, const std::function<void()>& body) {
  body();
  std::vector<double> t;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    body();
    t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

struct Row {
  std::string section, dir, method;
  uint64_t piece_kib = 0;
  int sm = -1;  // -1: not a kernel
  double gbps = 0, baseline_gbps = 0;
};
std::vector<Row> rows;

void Record(const Row& r) {
  rows.push_back(r);
  std::printf(
      "BENCH section=%s dir=%s piece_kib=%llu method=%s sm=%d gbps=%.2f baseline_gbps=%.2f "
      "ratio=%.3f\n",
      r.section.c_str(), r.dir.c_str(), static_cast<unsigned long long>(r.piece_kib),
      r.method.c_str(), r.sm, r.gbps, r.baseline_gbps, r.gbps / r.baseline_gbps);
  std::fflush(stdout);
}

int Main(int argc, char** argv) {
  size_t total_mib = 512;
  int reps = 5;
  bool attn_only = false;  // --attn_only: just the attention statistics (for profiling)
  // --engine_only: of the copy sections, only the one large memcpy, the engine's rows, kernel_wall
  // and the engine checks; no attention section.
  bool engine_only = false;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--attn_only") == 0) attn_only = true;
    if (std::strcmp(argv[i], "--engine_only") == 0) engine_only = true;
    if (std::strncmp(argv[i], "--total_mib=", 12) == 0) total_mib = std::atoi(argv[i] + 12);
    if (std::strncmp(argv[i], "--reps=", 7) == 0) reps = std::atoi(argv[i] + 7);
  }
  const size_t total = total_mib << 20;
  cudaDeviceProp prop{};
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  int driver = 0, runtime = 0;
  cudaDriverGetVersion(&driver);
  cudaRuntimeGetVersion(&runtime);
  std::printf("device: %s, %d SMs, driver API %d, runtime %d, total per copy %zu MiB\n", prop.name,
              prop.multiProcessorCount, driver, runtime, total_mib);
  const uint64_t seed = std::random_device{}();
  std::printf("seed: %llu\n", static_cast<unsigned long long>(seed));
  std::mt19937_64 rng(seed);

  cudaStream_t stream;
  CHECK_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  void* host = nullptr;
  CHECK_CUDA(cudaMallocHost(&host, total));
  for (size_t i = 0; i < total; i += 8) {
    const uint64_t x = rng();
    std::memcpy(static_cast<char*>(host) + i, &x, 8);
  }
  // The worker's KV memory is twice the batch: pieces sit at shuffled, non-adjacent blocks.
  auto worker = DeviceBuffer::Allocate(2 * total);
  auto slots = DeviceBuffer::Allocate(total);
  CHECK_OK(worker.status());
  CHECK_OK(slots.status());
  CHECK_CUDA(cudaMemset(worker->get(), 0x5a, 2 * total));
  CHECK_CUDA(cudaMemset(slots->get(), 0x3c, total));
  auto descs = DeviceBuffer::Allocate(sizeof(CopyDescriptor) * (total / 16384 + 16));
  CHECK_OK(descs.status());

  const int budgets[] = {1, 2, 4, 8, 16, 32, 48, 64, 0};
  CudaCopyEngineOptions engine_options;  // defaults: SM budget 16, methods by calibration
  auto engine = CudaCopyEngine::Create(engine_options);
  CHECK_OK(engine.status());
  std::printf("BENCH section=engine_mode engine=default h2d=%s h2d_sms=%d d2d=%s d2d_sms=%d\n",
              std::string((*engine)->LaunchMode(CopyRoute::kHostToDevice)).c_str(),
              (*engine)->LaunchSms(CopyRoute::kHostToDevice),
              std::string((*engine)->LaunchMode(CopyRoute::kDeviceToDevice)).c_str(),
              (*engine)->LaunchSms(CopyRoute::kDeviceToDevice));
  // Engine variants, kernel method pinned (no calibration), timed beside the default engine:
  // each SM budget's engine with one stream (chunk launches in sequence) and with overlapped
  // chunk launches (two streams, a green context of the budget's SMs below every SM), at a few
  // chunk schedules (first chunk, growth). A budget of 16 serves the HBM <-> DRAM rows, larger
  // ones (0: every SM) the HBM -> HBM rows. KVTIER_BENCH_ENGINE_VARIANTS="budget:overlap:first:
  // growth[:u[:s]],..." replaces the list (a fifth field 1: upload_on_launch_stream, label `_u`;
  // a sixth field: 0 or none, descriptors always uploaded (the engine before session 16); 1,
  // chunk kernels always read them from the pinned staging, first chunk `first`, label `_s`; 2,
  // the engine's default choice by piece size (staging_descriptors_below_bytes, its first chunk
  // first_launch_ops_from_staging), label `_sd`).
  struct Variant {
    int budget;
    bool overlap;
    uint32_t first;
    double growth;
    std::string label;
    std::unique_ptr<CudaCopyEngine> engine;
  };
  std::vector<Variant> variants;
  {
    std::string list =
        "16:1:768:1.5,16:1:768:1.5:0:1,16:1:768:1.5:0:2,64:1:768:1.5,64:1:768:1.5:0:1,"
        "64:1:384:1.5:0:1,64:1:768:1.5:0:2,0:1:768:1.5,0:1:768:1.5:0:1,0:1:384:1.5:0:1,"
        "0:1:768:1.5:0:2";
    if (const char* v = std::getenv("KVTIER_BENCH_ENGINE_VARIANTS"); v != nullptr) list = v;
    for (size_t at = 0; at < list.size();) {
      size_t end = list.find(',', at);
      if (end == std::string::npos) end = list.size();
      Variant v{};
      int overlap = 0, same_stream = 0, from_staging = 0;
      if (std::sscanf(list.substr(at, end - at).c_str(), "%d:%d:%u:%lf:%d:%d", &v.budget, &overlap,
                      &v.first, &v.growth, &same_stream, &from_staging) < 4) {
        std::fprintf(stderr, "bad KVTIER_BENCH_ENGINE_VARIANTS entry at %zu\n", at);
        return 1;
      }
      at = end + 1;
      v.overlap = overlap != 0;
      char label[64];
      std::snprintf(label, sizeof(label), "%s_f%u_g%g%s%s", v.overlap ? "two" : "one", v.first,
                    v.growth, same_stream != 0 ? "_u" : "",
                    from_staging == 1   ? "_s"
                    : from_staging == 2 ? "_sd"
                                        : "");
      v.label = label;
      CudaCopyEngineOptions o;
      // Both routes at the variant's budget (a device_to_device budget of 0 would mean the
      // 16-SM kernel.sm_budget, not every SM).
      o.kernel.sm_budget = v.budget;
      o.device_to_device_sm_budget = v.budget;
      o.overlap_launches = v.overlap;
      o.first_launch_ops = v.first;
      o.launch_growth = v.growth;
      o.upload_on_launch_stream = same_stream != 0;
      if (from_staging == 0) o.staging_descriptors_below_bytes = 0;
      if (from_staging == 1) {
        o.staging_descriptors_below_bytes = UINT64_MAX;
        o.first_launch_ops_from_staging = v.first;
      }
      o.host_to_device = o.device_to_host = o.device_to_device = CudaCopyMethod::kKernel;
      auto e = CudaCopyEngine::Create(o);
      CHECK_OK(e.status());
      v.engine = *std::move(e);
      const CopyRoute r = v.budget == 16 ? CopyRoute::kHostToDevice : CopyRoute::kDeviceToDevice;
      std::printf("BENCH section=engine_mode engine=%s budget=%d mode=%s sms=%d\n", v.label.c_str(),
                  v.budget, std::string(v.engine->LaunchMode(r)).c_str(), v.engine->LaunchSms(r));
      variants.push_back(std::move(v));
    }
  }
  CopyDescriptor* host_descs = nullptr;  // pinned, for the staging probe below
  CHECK_CUDA(cudaMallocHost(reinterpret_cast<void**>(&host_descs),
                            sizeof(CopyDescriptor) * (total / 16384 + 16)));
  std::printf("\nCudaCopyEngine calibration (16 MiB samples, reversed pieces):\n");
  for (const CopyCalibration& c : (*engine)->calibration()) {
    std::printf(
        "  %s %4llu KiB: kernel %6.1f  kernel-bulk %6.1f  batch %6.1f  per-run %6.1f GB/s -> %s\n",
        std::string(CopyRouteName(c.route)).c_str(),
        static_cast<unsigned long long>(c.piece_bytes >> 10), c.kernel_gbps, c.kernel_bulk_gbps,
        c.batch_gbps, c.per_run_gbps, std::string(CudaCopyMethodName(c.chosen)).c_str());
  }
  std::printf("\n");

  auto* host_b = static_cast<std::byte*>(host);
  auto* worker_b = static_cast<std::byte*>(worker->get());
  auto* slots_b = static_cast<std::byte*>(slots->get());
  const double gb = static_cast<double>(total) / 1e9;

  // The engine_check's snapshots of a destination, kept across checks (up to 2 GiB each).
  std::vector<std::byte> by_engine, by_kernel;
  // --- 1 and 2: scattered pieces ---
  for (int dir = 0; dir < (attn_only ? 0 : 4);
       ++dir) {  // 0 h2d (scatter), 1 d2h (gather), 2 d2d gather, 3 d2d scatter
    const char* dir_name[] = {"h2d", "d2h", "d2d_gather", "d2d_scatter"};
    const bool d2d = dir >= 2;
    std::byte* contiguous = d2d ? slots_b : host_b;
    double baseline = 0;
    if (!d2d) {
      baseline =
          gb / TimeIt(stream, reps, [&] {
            if (dir == 0) {
              CHECK_CUDA(cudaMemcpyAsync(worker_b, host_b, total, cudaMemcpyHostToDevice, stream));
            } else {
              CHECK_CUDA(cudaMemcpyAsync(host_b, worker_b, total, cudaMemcpyDeviceToHost, stream));
            }
          });
    } else {
      baseline = gb / TimeIt(stream, reps, [&] {
                   CHECK_CUDA(cudaMemcpyAsync(slots_b, worker_b + total, total,
                                              cudaMemcpyDeviceToDevice, stream));
                 });
    }
    Record({d2d ? "hbm_hbm" : "hbm_dram", dir_name[dir], "one_large_memcpy", 0, -1, baseline,
            baseline});
    for (uint64_t piece_kib : {16, 32, 64}) {
      const uint64_t piece = piece_kib << 10;
      const size_t n = total / piece;
      std::vector<size_t> blocks(2 * n);
      std::iota(blocks.begin(), blocks.end(), 0);
      std::shuffle(blocks.begin(), blocks.end(), rng);
      std::vector<CopyDescriptor> list(n);
      std::vector<CopyOp> ops(n);
      std::vector<void*> dsts(n);
      std::vector<const void*> srcs(n);
      std::vector<size_t> sizes(n, piece);
      for (size_t i = 0; i < n; ++i) {
        std::byte* w = worker_b + blocks[i] * piece;
        std::byte* c = contiguous + i * piece;
        const bool to_worker = dir == 0 || dir == 3;
        list[i] = {to_worker ? c : w, to_worker ? w : c, piece};
        ops[i] = {to_worker ? w : c, to_worker ? c : w, piece};
        dsts[i] = ops[i].dst;
        srcs[i] = ops[i].src;
      }
      CHECK_OK(kernels::ValidateCopyBatch(list));
      CHECK_CUDA(cudaMemcpy(descs->get(), list.data(), n * sizeof(CopyDescriptor),
                            cudaMemcpyHostToDevice));
      const char* section = d2d ? "hbm_hbm" : "hbm_dram";
      double t = 0;
      // --engine_only: the engine's rows, kernel_wall and the checks alone.
      if (!engine_only) {
        const int slow_reps = std::max(1, reps / 2);
        t = TimeIt(stream, slow_reps, [&] {
          for (size_t i = 0; i < n; ++i) {
            CHECK_CUDA(cudaMemcpyAsync(dsts[i], srcs[i], piece, cudaMemcpyDefault, stream));
          }
        });
        Record({section, dir_name[dir], "per_piece_memcpy", piece_kib, -1, gb / t, baseline});
        cudaMemcpyAttributes attr{};
        attr.srcAccessOrder = cudaMemcpySrcAccessOrderStream;
        size_t attr_idx = 0;
        t = TimeIt(stream, reps, [&] {
          CHECK_CUDA(cudaMemcpyBatchAsync(dsts.data(), srcs.data(), sizes.data(), n, &attr,
                                          &attr_idx, 1, stream));
        });
        Record({section, dir_name[dir], "memcpy_batch", piece_kib, -1, gb / t, baseline});
        for (int budget : budgets) {
          kernels::GpuCopyOptions opt;
          opt.sm_budget = budget;
          t = TimeIt(stream, reps, [&] {
            CHECK_OK(kernels::LaunchCopyBatch(static_cast<const CopyDescriptor*>(descs->get()),
                                              static_cast<uint32_t>(n), piece, opt, stream));
          });
          Record({section, dir_name[dir], "kernel", piece_kib,
                  budget == 0 ? prop.multiProcessorCount : budget, gb / t, baseline});
        }
        // The bulk-async mover reads and writes device memory only: HBM <-> HBM rows alone.
        if (d2d) {
          for (int budget : budgets) {
            kernels::GpuCopyOptions opt;
            opt.sm_budget = budget;
            opt.mover = kernels::GpuCopyMover::kBulkAsync;
            t = TimeIt(stream, reps, [&] {
              CHECK_OK(kernels::LaunchCopyBatch(static_cast<const CopyDescriptor*>(descs->get()),
                                                static_cast<uint32_t>(n), piece, opt, stream));
            });
            Record({section, dir_name[dir], "kernel_bulk", piece_kib,
                    budget == 0 ? prop.multiProcessorCount : budget, gb / t, baseline});
          }
        }
      }
      // The engine as the daemon would use it: descriptor staging + upload + launch + sync,
      // with the route's method from its calibration.
      const CopyRoute route = dir == 0   ? CopyRoute::kHostToDevice
                              : dir == 1 ? CopyRoute::kDeviceToHost
                                         : CopyRoute::kDeviceToDevice;
      const std::string m =
          "engine_" + std::string(CudaCopyMethodName((*engine)->MethodFor(route, piece)));
      t = TimeHost(reps, [&] { CHECK_OK((*engine)->CopyWith(route, CudaCopyMethod::kAuto, ops)); });
      Record({section, dir_name[dir], m, piece_kib, engine_options.kernel.sm_budget, gb / t,
              baseline});
      // The route's variants and the raw kernel timed as they are (kernel_wall: one launch plus
      // synchronise, wall clock, descriptors already on the device; what an engine without any
      // host work of its own would reach), at the variants' budgets, in rounds: one run of each a
      // round after one warm-up each, so that the machine's drift over the rounds falls on all of
      // them alike. Medians.
      struct Timed {
        std::string method;
        int sm;
        std::function<void()> body;
        Variant* variant;
        std::vector<double> secs;
      };
      std::vector<Timed> timed;
      for (Variant& v : variants) {
        if ((v.budget == 16) == d2d) continue;
        CudaCopyEngine& e = *v.engine;
        timed.push_back(
            {"engine_kernel_" + v.label,
             e.LaunchSms(route),
             [&e, &ops, route] { CHECK_OK(e.CopyWith(route, CudaCopyMethod::kKernel, ops)); },
             &v,
             {}});
      }
      for (int budget : d2d ? std::vector<int>{16, 64, 0} : std::vector<int>{16}) {
        kernels::GpuCopyOptions opt;
        opt.sm_budget = budget;
        timed.push_back(
            {"kernel_wall",
             budget == 0 ? prop.multiProcessorCount : budget,
             [&, opt] {
               CHECK_OK(kernels::LaunchCopyBatch(static_cast<const CopyDescriptor*>(descs->get()),
                                                 static_cast<uint32_t>(n), piece, opt, stream));
               CHECK_CUDA(cudaStreamSynchronize(stream));
             },
             nullptr,
             {}});
      }
      for (Timed& x : timed) x.body();
      for (int r = 0; r < reps; ++r) {
        for (Timed& x : timed) {
          const auto t0 = std::chrono::steady_clock::now();
          x.body();
          x.secs.push_back(
              std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
        }
      }
      for (Timed& x : timed) {
        std::sort(x.secs.begin(), x.secs.end());
        Record({section, dir_name[dir], x.method, piece_kib, x.sm, gb / x.secs[x.secs.size() / 2],
                baseline});
        if (x.variant == nullptr) continue;
        // The host's side of the variant's last run: lead time to the first kernel, time to the
        // last launch, CUDA calls.
        const KernelRunTrace tr = x.variant->engine->LastKernelRun();
        std::printf(
            "BENCH section=engine_host dir=%s piece_kib=%llu engine=%s chunks=%u api_calls=%u "
            "first_launch_us=%.1f enqueued_us=%.1f done_us=%.1f\n",
            dir_name[dir], static_cast<unsigned long long>(piece_kib), x.variant->label.c_str(),
            tr.chunks, tr.api_calls, tr.first_launch_us, tr.enqueued_us, tr.done_us);
      }
      // What the engine's kernel method wrote must be what the raw kernel writes: destination
      // poisoned, engine, snapshot, poisoned again, raw kernel, compare. Once per route and
      // overlapped engine variant, at 16 KiB pieces (32768 descriptors in 6-8 chunks).
      for (Variant& v : variants) {
        if (piece_kib != 16 || !v.overlap || (v.budget == 16) == d2d) continue;
        const bool dst_host = dir == 1;
        std::byte* dst = dir == 0 ? worker_b : dir == 1 ? host_b : dir == 2 ? slots_b : worker_b;
        const size_t dst_bytes = dir == 0 || dir == 3 ? 2 * total : total;
        CudaCopyEngine& e = *v.engine;
        if (by_engine.size() < dst_bytes) {
          by_engine.resize(dst_bytes);
          by_kernel.resize(dst_bytes);
        }
        auto snapshot = [&](std::vector<std::byte>& into) {
          CHECK_CUDA(cudaMemcpy(into.data(), dst, dst_bytes, cudaMemcpyDefault));
        };
        auto poison = [&] {
          if (dst_host) {
            std::memset(dst, 0x77, dst_bytes);
          } else {
            CHECK_CUDA(cudaMemset(dst, 0x77, dst_bytes));
          }
        };
        poison();
        CHECK_OK(e.CopyWith(route, CudaCopyMethod::kKernel, ops));
        snapshot(by_engine);
        poison();
        kernels::GpuCopyOptions opt;
        CHECK_OK(kernels::LaunchCopyBatch(static_cast<const CopyDescriptor*>(descs->get()),
                                          static_cast<uint32_t>(n), piece, opt, stream));
        CHECK_CUDA(cudaStreamSynchronize(stream));
        snapshot(by_kernel);
        size_t written = 0;
        for (size_t i = 0; i < dst_bytes; i += 4096) written += by_kernel[i] != std::byte{0x77};
        const bool same = std::memcmp(by_engine.data(), by_kernel.data(), dst_bytes) == 0;
        std::printf(
            "BENCH section=engine_check dir=%s piece_kib=16 engine=%s mode=%s sm=%d "
            "same_as_kernel=%d pages_written=%zu\n",
            dir_name[dir], v.label.c_str(), std::string(e.LaunchMode(route)).c_str(),
            e.LaunchSms(route), same ? 1 : 0, written);
        if (!same || written == 0) {
          std::fprintf(stderr, "engine output differs from the raw kernel's (%s)\n", dir_name[dir]);
          std::exit(1);
        }
      }
      // The engine's host work before its launch, alone: building the batch's descriptors in a
      // pinned buffer (ns an op), the reason its rows trail the kernel's on device-to-device.
      {
        const auto s0 = std::chrono::steady_clock::now();
        for (size_t i = 0; i < n; ++i) {
          host_descs[i] = CopyDescriptor{ops[i].src, ops[i].dst, ops[i].bytes};
        }
        const double ns =
            std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - s0).count();
        std::printf("PROBE dir=%s piece_kib=%llu ops=%zu staging_pinned_ns_per_op=%.2f\n",
                    dir_name[dir], static_cast<unsigned long long>(piece_kib), n, ns / n);
      }
    }
  }

  // --- 3: attention statistics ---
  if (!engine_only) {
    kernels::AttentionStatsShape s{32768, 32, 8, 128, 32, 16, kernels::KvDType::kBF16};
    const size_t nq = size_t{s.window} * s.q_heads * s.head_dim;
    const size_t nkv = size_t{s.tokens} * s.kv_heads * s.head_dim;
    std::vector<uint16_t> hq(nq), hkv(nkv);
    std::normal_distribution<float> n01(0, 1);
    for (auto& x : hq) x = kernels::FloatToBf16(n01(rng));
    auto dq = DeviceBuffer::Allocate(nq * 2);
    auto dk = DeviceBuffer::Allocate(nkv * 2);
    auto dv = DeviceBuffer::Allocate(nkv * 2);
    const uint32_t pages = kernels::AttentionStatsPageCount(s);
    auto dout = DeviceBuffer::Allocate(pages * sizeof(kernels::PageAttentionStats));
    CHECK_OK(dq.status());
    CHECK_OK(dk.status());
    CHECK_OK(dv.status());
    CHECK_OK(dout.status());
    CHECK_CUDA(cudaMemcpy(dq->get(), hq.data(), nq * 2, cudaMemcpyHostToDevice));
    for (auto& x : hkv) x = kernels::FloatToBf16(n01(rng));
    CHECK_CUDA(cudaMemcpy(dk->get(), hkv.data(), nkv * 2, cudaMemcpyHostToDevice));
    for (auto& x : hkv) x = kernels::FloatToBf16(0.5f * n01(rng));
    CHECK_CUDA(cudaMemcpy(dv->get(), hkv.data(), nkv * 2, cudaMemcpyHostToDevice));
    auto ws = kernels::AttentionStatsWorkspace::Create(s);
    CHECK_OK(ws.status());
    const double t_attn = TimeIt(stream, 20, [&] {
      CHECK_OK(kernels::LaunchAttentionStats(s, {}, dq->get(), dk->get(), dv->get(),
                                             static_cast<kernels::PageAttentionStats*>(dout->get()),
                                             *ws, stream));
    });
    // Device bandwidth: a 1 GiB device-to-device copy, bytes read + bytes written. Rotating
    // through 2 GiB keeps it out of the 50 MB L2.
    const size_t big = size_t{1} << 30;
    auto a = DeviceBuffer::Allocate(big);
    auto b = DeviceBuffer::Allocate(big);
    CHECK_OK(a.status());
    CHECK_OK(b.status());
    const double t_copy = TimeIt(stream, reps, [&] {
      CHECK_CUDA(cudaMemcpyAsync(b->get(), a->get(), big, cudaMemcpyDeviceToDevice, stream));
    });
    const double bw = 2.0 * big / t_copy;
    const double kv_bytes = 2.0 * nkv * 2;
    const double t_read = kv_bytes / bw;
    std::printf(
        "BENCH section=attention_stats tokens=%u q_heads=%u kv_heads=%u head_dim=%u window=%u "
        "tokens_per_page=%u us=%.1f device_bw_gbps=%.0f kv_read_us=%.1f ratio=%.2f\n",
        s.tokens, s.q_heads, s.kv_heads, s.head_dim, s.window, s.tokens_per_page, t_attn * 1e6,
        bw / 1e9, t_read * 1e6, t_attn / t_read);
    std::fflush(stdout);
    // KVTIER_BENCH_ATTN_OPTS="0,1,..." times the tiled pass's other option sets side by side
    // (kernels/cuda/gpu_attention_stats.cu, KVTIER_ATTN_OPT), each checked against the default's
    // output on the same inputs.
    if (const char* opts = std::getenv("KVTIER_BENCH_ATTN_OPTS"); opts != nullptr) {
      std::vector<kernels::PageAttentionStats> ref(pages), got(pages);
      CHECK_CUDA(
          cudaMemcpy(ref.data(), dout->get(), pages * sizeof(ref[0]), cudaMemcpyDeviceToHost));
      std::string list = opts;
      for (size_t at = 0; at < list.size();) {
        size_t end = list.find(',', at);
        if (end == std::string::npos) end = list.size();
        const std::string opt = list.substr(at, end - at);
        at = end + 1;
        setenv("KVTIER_ATTN_OPT", opt.c_str(), 1);
        auto wv = kernels::AttentionStatsWorkspace::Create(s);
        CHECK_OK(wv.status());
        CHECK_CUDA(cudaMemset(dout->get(), 0xff, pages * sizeof(ref[0])));  // NaN poison
        const double tv = TimeIt(stream, 20, [&] {
          CHECK_OK(kernels::LaunchAttentionStats(
              s, {}, dq->get(), dk->get(), dv->get(),
              static_cast<kernels::PageAttentionStats*>(dout->get()), *wv, stream));
        });
        CHECK_CUDA(
            cudaMemcpy(got.data(), dout->get(), pages * sizeof(got[0]), cudaMemcpyDeviceToHost));
        // Two calls between the events: the second's launch is made while the first runs, so
        // pair_us - us is a call's device time without the launch latency a lone call pays.
        const double tp = TimeIt(stream, 20, [&] {
          for (int i = 0; i < 2; ++i) {
            CHECK_OK(kernels::LaunchAttentionStats(
                s, {}, dq->get(), dk->get(), dv->get(),
                static_cast<kernels::PageAttentionStats*>(dout->get()), *wv, stream));
          }
        });
        // The host's share of a lone call: LaunchAttentionStats' own time on the CPU (median).
        std::vector<double> host_s;
        for (int r = 0; r < 20; ++r) {
          const auto h0 = std::chrono::steady_clock::now();
          CHECK_OK(kernels::LaunchAttentionStats(
              s, {}, dq->get(), dk->get(), dv->get(),
              static_cast<kernels::PageAttentionStats*>(dout->get()), *wv, stream));
          host_s.push_back(
              std::chrono::duration<double>(std::chrono::steady_clock::now() - h0).count());
          CHECK_CUDA(cudaStreamSynchronize(stream));
        }
        std::sort(host_s.begin(), host_s.end());
        double mass = 0, norm = 0, breadth = 0, entropy = 0;
        for (uint32_t i = 0; i < pages; ++i) {
          auto rel = [](double x, double y) {
            return std::isnan(x) || std::isnan(y) ? 1e30
                                                  : std::abs(x - y) / std::max(1e-30, std::abs(y));
          };
          mass = std::max(mass, std::abs(double(got[i].mass) - ref[i].mass) /
                                    std::max<double>(ref[i].mass, 1.0 / pages));
          if (std::isnan(got[i].mass)) mass = 1e30;
          norm = std::max(norm, rel(got[i].value_norm, ref[i].value_norm));
          breadth = std::max(breadth, std::abs(double(got[i].breadth) - ref[i].breadth));
          entropy = std::max(entropy, std::abs(double(got[i].mass_entropy) - ref[i].mass_entropy));
        }
        std::printf(
            "BENCH section=attention_stats_opt opt=%s us=%.1f kv_read_us=%.1f ratio=%.2f "
            "mass_rel_diff=%.2e norm_rel_diff=%.2e breadth_diff=%.3f entropy_diff=%.2e "
            "pair_us=%.1f host_us=%.1f\n",
            opt.c_str(), tv * 1e6, t_read * 1e6, tv / t_read, mass, norm, breadth, entropy,
            tp * 1e6, host_s[host_s.size() / 2] * 1e6);
        std::fflush(stdout);
      }
      unsetenv("KVTIER_ATTN_OPT");
    }
    // The timed workspace's cross-block counters (the fused tail's) must be rearmed after every
    // launch: given other inputs (K and V swapped), it must give what a fresh workspace gives.
    // (Last: it leaves the swapped inputs' statistics in dout.)
    {
      std::vector<kernels::PageAttentionStats> used(pages), fresh(pages);
      auto run = [&](kernels::AttentionStatsWorkspace& w,
                     std::vector<kernels::PageAttentionStats>& dst) {
        CHECK_CUDA(cudaMemset(dout->get(), 0xff, pages * sizeof(dst[0])));  // NaN poison
        CHECK_OK(kernels::LaunchAttentionStats(
            s, {}, dq->get(), dv->get(), dk->get(),
            static_cast<kernels::PageAttentionStats*>(dout->get()), w, stream));
        CHECK_CUDA(cudaStreamSynchronize(stream));
        CHECK_CUDA(
            cudaMemcpy(dst.data(), dout->get(), pages * sizeof(dst[0]), cudaMemcpyDeviceToHost));
      };
      run(*ws, used);
      auto wf = kernels::AttentionStatsWorkspace::Create(s);
      CHECK_OK(wf.status());
      run(*wf, fresh);
      uint32_t differ = 0, unwritten = 0;
      for (uint32_t i = 0; i < pages; ++i) {
        differ += std::memcmp(&used[i], &fresh[i], sizeof(used[i])) != 0 ? 1 : 0;
        unwritten += std::isfinite(used[i].mass) && std::isfinite(used[i].mass_entropy) ? 0 : 1;
      }
      std::printf(
          "BENCH section=attention_stats_rearm pages=%u pages_differing=%u pages_unwritten=%u\n",
          pages, differ, unwritten);
      if (differ != 0 || unwritten != 0) {
        std::fprintf(stderr, "attention stats: a reused workspace differs from a fresh one\n");
        std::exit(1);
      }
    }
  }

  // --- table ---
  std::printf("\n%-9s %-12s %6s %-22s %5s %9s %9s %7s\n", "section", "dir", "piece", "method",
              "SMs", "GB/s", "baseline", "ratio");
  for (const Row& r : rows) {
    std::printf("%-9s %-12s %6llu %-22s %5s %9.2f %9.2f %7.3f\n", r.section.c_str(), r.dir.c_str(),
                static_cast<unsigned long long>(r.piece_kib), r.method.c_str(),
                r.sm < 0 ? "-" : std::to_string(r.sm).c_str(), r.gbps, r.baseline_gbps,
                r.gbps / r.baseline_gbps);
  }
  CHECK_CUDA(cudaFreeHost(host));
  CHECK_CUDA(cudaFreeHost(host_descs));
  cudaStreamDestroy(stream);
  return 0;
}

}  // namespace
}  // namespace kvtier

int main(int argc, char** argv) { return kvtier::Main(argc, argv); }
