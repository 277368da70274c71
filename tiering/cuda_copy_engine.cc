#include "tiering/cuda_copy_engine.h"

#include <cuda.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "kernels/cuda/driver_entry.h"
#include "tiering/copy_plan.h"

namespace kvtier {

using kernels::CudaStatus;

absl::string_view CudaCopyMethodName(CudaCopyMethod m) {
  switch (m) {
    case CudaCopyMethod::kAuto:
      return "auto";
    case CudaCopyMethod::kKernel:
      return "kernel";
    case CudaCopyMethod::kMemcpyBatch:
      return "memcpy-batch";
    case CudaCopyMethod::kMemcpyPerRun:
      return "memcpy-per-run";
    case CudaCopyMethod::kKernelBulk:
      return "kernel-bulk";
  }
  return "?";
}

absl::string_view CopyRouteName(CopyRoute r) {
  switch (r) {
    case CopyRoute::kHostToDevice:
      return "h2d";
    case CopyRoute::kDeviceToHost:
      return "d2h";
    case CopyRoute::kDeviceToDevice:
      return "d2d";
    case CopyRoute::kHostToHost:
      return "h2h";
  }
  return "?";
}

namespace {
// Piece sizes the calibration measures; a batch takes the row nearest its mean piece size.
constexpr uint64_t kCalibrationPieces[] = {uint64_t{16} << 10, uint64_t{64} << 10,
                                           uint64_t{256} << 10};

// Makes the engine's GPU the calling thread's current device for a call, and gives the caller's
// back after: the engine's streams belong to its GPU (a kernel launched into another device's
// stream fails), while its callers may hold another GPU current (a GPU worker's copies, when a
// node has one HBM pool per GPU and one engine each).
class ScopedDevice {
 public:
  explicit ScopedDevice(int device) : device_(device) {
    if (cudaGetDevice(&previous_) != cudaSuccess) previous_ = -1;
    if (previous_ != device_) cudaSetDevice(device_);
  }
  ~ScopedDevice() {
    if (previous_ >= 0 && previous_ != device_) cudaSetDevice(previous_);
  }
  ScopedDevice(const ScopedDevice&) = delete;
  ScopedDevice& operator=(const ScopedDevice&) = delete;

 private:
  const int device_;
  int previous_ = -1;
};

// RAII owner of a cudaMallocHost allocation.
struct PinnedHost {
  void* p = nullptr;
  ~PinnedHost() {
    if (p != nullptr) cudaFreeHost(p);
  }
};

// The driver's green-context entry points, reached through the runtime (no -lcuda link): null
// members where the driver lacks them (before CUDA 12.5), and then `ok` is false.
struct GreenApi {
  decltype(&cuDeviceGet) device_get = nullptr;
  decltype(&cuDeviceGetDevResource) get_resource = nullptr;
  decltype(&cuDevSmResourceSplitByCount) split = nullptr;
  decltype(&cuDevResourceGenerateDesc) generate_desc = nullptr;
  decltype(&cuGreenCtxCreate) create = nullptr;
  decltype(&cuGreenCtxDestroy) destroy = nullptr;
  decltype(&cuGreenCtxStreamCreate) stream_create = nullptr;
  decltype(&cuStreamDestroy) stream_destroy = nullptr;
  decltype(&cuCtxFromGreenCtx) to_ctx = nullptr;
  decltype(&cuCtxPushCurrent) push = nullptr;
  decltype(&cuCtxPopCurrent) pop = nullptr;
  bool ok = false;
};

// Green contexts came with CUDA 12.5.
template <typename Fn>
bool ResolveDriver(const char* name, Fn& out) {
  return ResolveCudaDriverEntry(name, out, 12050);
}

const GreenApi& Green() {
  static const GreenApi api = [] {
    GreenApi a;
    a.ok = ResolveDriver("cuDeviceGet", a.device_get) &&
           ResolveDriver("cuDeviceGetDevResource", a.get_resource) &&
           ResolveDriver("cuDevSmResourceSplitByCount", a.split) &&
           ResolveDriver("cuDevResourceGenerateDesc", a.generate_desc) &&
           ResolveDriver("cuGreenCtxCreate", a.create) &&
           ResolveDriver("cuGreenCtxDestroy", a.destroy) &&
           ResolveDriver("cuGreenCtxStreamCreate", a.stream_create) &&
           ResolveDriver("cuStreamDestroy", a.stream_destroy) &&
           ResolveDriver("cuCtxFromGreenCtx", a.to_ctx) &&
           ResolveDriver("cuCtxPushCurrent", a.push) && ResolveDriver("cuCtxPopCurrent", a.pop);
    return a;
  }();
  return api;
}

absl::Status DriverStatus(CUresult r, const char* what) {
  return CudaDriverStatus(r, what, absl::StatusCode::kInternal);
}

// Makes a green context current for a launch, when its lane asks for that.
class ScopedGreen {
 public:
  ScopedGreen(void* green, bool push) {
    if (!push || green == nullptr) return;
    CUcontext ctx = nullptr;
    pushed_ = Green().to_ctx(&ctx, static_cast<CUgreenCtx>(green)) == CUDA_SUCCESS &&
              Green().push(ctx) == CUDA_SUCCESS;
  }
  ~ScopedGreen() {
    CUcontext popped = nullptr;
    if (pushed_) Green().pop(&popped);
  }
  ScopedGreen(const ScopedGreen&) = delete;
  ScopedGreen& operator=(const ScopedGreen&) = delete;

 private:
  bool pushed_ = false;
};

std::atomic<bool> lane_fallback_logged{false};
}  // namespace

CudaCopyEngine::CudaCopyEngine(const CudaCopyEngineOptions& options) : options_(options) {}

CudaCopyEngine::~CudaCopyEngine() {
  absl::MutexLock lock(&mu_);
  ScopedDevice on_device(options_.device);
  if (stream_ != nullptr) {
    cudaStreamSynchronize(stream_);
    cudaStreamDestroy(stream_);
  }
  if (upload_stream_ != nullptr) {
    cudaStreamSynchronize(upload_stream_);
    cudaStreamDestroy(upload_stream_);
  }
  if (uploaded_ != nullptr) cudaEventDestroy(uploaded_);
  if (staging_ != nullptr) cudaFreeHost(staging_);
  for (Lane& lane : lanes_) DestroyLane(lane);
}

void CudaCopyEngine::DestroyLane(Lane& lane) {
  for (cudaStream_t& s : lane.streams) {
    if (s == nullptr) continue;
    cudaStreamSynchronize(s);
    if (lane.green != nullptr) {
      Green().stream_destroy(reinterpret_cast<CUstream>(s));
    } else {
      cudaStreamDestroy(s);
    }
    s = nullptr;
  }
  if (lane.green != nullptr) Green().destroy(static_cast<CUgreenCtx>(lane.green));
  lane.green = nullptr;
}

absl::string_view CudaCopyEngine::LaunchMode(CopyRoute route) const {
  return route == CopyRoute::kHostToHost ? "none" : LaneFor(route).mode();
}

int CudaCopyEngine::LaunchSms(CopyRoute route) const {
  return route == CopyRoute::kHostToHost ? 0 : LaneFor(route).sms;
}

absl::Status CudaCopyEngine::InitLane(int budget, int device_sms, Lane& lane) {
  lane.sms = budget == 0 ? device_sms : std::min(budget, device_sms);
  if (!options_.overlap_launches) return absl::OkStatus();
  auto fall_back = [&](const std::string& why) {
    DestroyLane(lane);
    cudaGetLastError();
    if (!lane_fallback_logged.exchange(true)) {
      std::fprintf(stderr,
                   "kvtier cuda copy engine: chunk kernels of a %d-SM budget go on one stream: "
                   "%s (logged once)\n",
                   lane.sms, why.c_str());
    }
    return absl::OkStatus();
  };
  if (lane.sms == device_sms) {
    // Every SM: two ordinary streams; the kernels cannot exceed the budget.
    for (cudaStream_t& s : lane.streams) {
      if (cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) != cudaSuccess) {
        return fall_back("cudaStreamCreate failed");
      }
    }
  } else {
    const char* env = std::getenv("KVTIER_COPY_GREEN");
    if (env != nullptr && std::strcmp(env, "0") == 0) return fall_back("KVTIER_COPY_GREEN=0");
    const GreenApi& api = Green();
    if (!api.ok) return fall_back("the driver has no green contexts (CUDA 12.5)");
    CUdevice dev = 0;
    CUdevResource all{};
    if (absl::Status s = DriverStatus(api.device_get(&dev, options_.device), "cuDeviceGet");
        !s.ok()) {
      return fall_back(s.ToString());
    }
    if (absl::Status s = DriverStatus(api.get_resource(dev, &all, CU_DEV_RESOURCE_TYPE_SM),
                                      "cuDeviceGetDevResource");
        !s.ok()) {
      return fall_back(s.ToString());
    }
    // A group of exactly the budget's SMs: the default split first (aligned to the device's
    // co-scheduling granularity, 8 SMs on Hopper), then SM by SM.
    CUdevResource group{};
    bool exact = false;
    for (unsigned flags : {0u, unsigned{CU_DEV_SM_RESOURCE_SPLIT_IGNORE_SM_COSCHEDULING}}) {
      unsigned groups = 1;
      CUdevResource rest{};
      if (api.split(&group, &groups, &all, &rest, flags, static_cast<unsigned>(lane.sms)) ==
              CUDA_SUCCESS &&
          groups == 1 && group.sm.smCount == static_cast<unsigned>(lane.sms)) {
        exact = true;
        break;
      }
    }
    if (!exact) {
      return fall_back(absl::StrCat("no green context of exactly ", lane.sms, " SMs"));
    }
    CUdevResourceDesc desc = nullptr;
    if (absl::Status s =
            DriverStatus(api.generate_desc(&desc, &group, 1), "cuDevResourceGenerateDesc");
        !s.ok()) {
      return fall_back(s.ToString());
    }
    CUgreenCtx green = nullptr;
    if (absl::Status s = DriverStatus(api.create(&green, desc, dev, CU_GREEN_CTX_DEFAULT_STREAM),
                                      "cuGreenCtxCreate");
        !s.ok()) {
      return fall_back(s.ToString());
    }
    lane.green = green;
    for (cudaStream_t& st : lane.streams) {
      CUstream cs = nullptr;
      if (absl::Status s = DriverStatus(api.stream_create(&cs, green, CU_STREAM_NON_BLOCKING, 0),
                                        "cuGreenCtxStreamCreate");
          !s.ok()) {
        return fall_back(s.ToString());
      }
      st = reinterpret_cast<cudaStream_t>(cs);
    }
  }
  // Kernels launched on the lane's streams must run: first as they are, then with the green
  // context made current around each launch.
  absl::Status probe = ProbeLane(lane);
  if (!probe.ok() && lane.green != nullptr) {
    cudaGetLastError();
    lane.push_ctx = true;
    probe = ProbeLane(lane);
  }
  if (!probe.ok()) return fall_back(probe.ToString());
  return absl::OkStatus();
}

absl::Status CudaCopyEngine::ProbeLane(const Lane& lane) {
  // Two 16-byte pieces of a scratch buffer and their descriptors: one copy on each stream.
  auto scratch = kernels::DeviceBuffer::Allocate(64 + 2 * sizeof(kernels::CopyDescriptor));
  if (!scratch.ok()) return scratch.status();
  auto* base = static_cast<unsigned char*>(scratch->get());
  const kernels::CopyDescriptor descs[2] = {{base, base + 16, 16}, {base + 32, base + 48, 16}};
  auto* device_descs = reinterpret_cast<kernels::CopyDescriptor*>(base + 64);
  unsigned char init[64];
  for (int i = 0; i < 64; ++i)
    init[i] = static_cast<unsigned char>(i < 16 || (i >= 32 && i < 48) ? 0xC3 : 0);
  RETURN_IF_ERROR(CudaStatus(cudaMemcpy(base, init, 64, cudaMemcpyHostToDevice), "probe init"));
  RETURN_IF_ERROR(CudaStatus(cudaMemcpy(device_descs, descs, sizeof(descs), cudaMemcpyHostToDevice),
                             "probe descriptors"));
  kernels::GpuCopyOptions opt = options_.kernel;
  opt.sm_budget = lane.sms;
  opt.mover = kernels::GpuCopyMover::kLoadStore;
  for (int k = 0; k < 2; ++k) {
    ScopedGreen current(lane.green, lane.push_ctx);
    RETURN_IF_ERROR(kernels::LaunchCopyBatch(device_descs + k, 1, 16, opt, lane.streams[k]));
  }
  for (cudaStream_t st : lane.streams) {
    RETURN_IF_ERROR(CudaStatus(cudaStreamSynchronize(st), "probe synchronize"));
  }
  unsigned char got[64];
  RETURN_IF_ERROR(CudaStatus(cudaMemcpy(got, base, 64, cudaMemcpyDeviceToHost), "probe read"));
  for (int i = 0; i < 64; ++i) {
    if (got[i] != 0xC3) return absl::InternalError("probe copy did not land");
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<CudaCopyEngine>> CudaCopyEngine::Create(
    const CudaCopyEngineOptions& options) {
  if (options.max_ops_per_launch == 0 || options.first_launch_ops == 0 ||
      options.first_launch_ops_from_staging == 0 || !(options.launch_growth >= 1.0)) {
    return absl::InvalidArgumentError(
        "cuda copy engine: max_ops_per_launch, first_launch_ops and "
        "first_launch_ops_from_staging must be > 0 and launch_growth >= 1");
  }
  if (options.kernel.sm_budget < 0 || options.device_to_device_sm_budget < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cuda copy engine: SM budgets must be >= 0 (0: all), got ", options.kernel.sm_budget,
        " and device_to_device ", options.device_to_device_sm_budget));
  }
  if (options.host_to_device == CudaCopyMethod::kKernelBulk ||
      options.device_to_host == CudaCopyMethod::kKernelBulk) {
    return absl::InvalidArgumentError(
        "cuda copy engine: kernel-bulk copies device to device only; pin it for "
        "device_to_device alone");
  }
  ScopedDevice on_device(options.device);
  std::unique_ptr<CudaCopyEngine> engine(new CudaCopyEngine(options));
  RETURN_IF_ERROR(engine->Init());
  RETURN_IF_ERROR(engine->Calibrate());
  return engine;
}

absl::Status CudaCopyEngine::Init() {
  absl::MutexLock lock(&mu_);
  if (absl::Status s = CudaStatus(cudaSetDevice(options_.device), "cudaSetDevice"); !s.ok()) {
    return s;
  }
  int host_ptr_ok = 0;
  cudaDeviceGetAttribute(&host_ptr_ok, cudaDevAttrCanUseHostPointerForRegisteredMem,
                         options_.device);
  if (!host_ptr_ok) {
    // The kernel path dereferences pinned host pointers as they are; without this attribute it
    // would need cudaHostGetDevicePointer per op. No such machine is targeted (x86-64 + UVA).
    return absl::FailedPreconditionError(
        "cuda copy engine: device cannot use host pointers of registered memory");
  }
  if (absl::Status s = CudaStatus(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking),
                                  "cudaStreamCreate");
      !s.ok()) {
    return s;
  }
  if (absl::Status s = CudaStatus(cudaStreamCreateWithFlags(&upload_stream_, cudaStreamNonBlocking),
                                  "cudaStreamCreate(upload)");
      !s.ok()) {
    return s;
  }
  if (absl::Status s = CudaStatus(cudaEventCreateWithFlags(&uploaded_, cudaEventDisableTiming),
                                  "cudaEventCreate(uploaded)");
      !s.ok()) {
    return s;
  }
  const size_t bytes = sizeof(kernels::CopyDescriptor) * options_.max_ops_per_launch;
  void* staging = nullptr;
  if (absl::Status s = CudaStatus(cudaMallocHost(&staging, bytes), "cudaMallocHost(staging)");
      !s.ok()) {
    return s;
  }
  staging_ = static_cast<kernels::CopyDescriptor*>(staging);
  auto descs = kernels::DeviceBuffer::Allocate(bytes);
  if (!descs.ok()) return descs.status();
  device_descs_ = std::move(*descs);
  int sms = 0;
  RETURN_IF_ERROR(CudaStatus(
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, options_.device), "SM count"));
  const int budget = options_.kernel.sm_budget;
  const int d2d_budget =
      options_.device_to_device_sm_budget != 0 ? options_.device_to_device_sm_budget : budget;
  auto capped = [&](int b) { return b == 0 ? sms : std::min(b, sms); };
  RETURN_IF_ERROR(InitLane(budget, sms, lanes_[0]));
  d2d_lane_ = capped(d2d_budget) == capped(budget) ? 0 : 1;
  if (d2d_lane_ == 1) RETURN_IF_ERROR(InitLane(d2d_budget, sms, lanes_[1]));
  return absl::OkStatus();
}

void CudaCopyEngine::RegisterRegion(const void* base, size_t bytes, MemoryKind kind) {
  absl::MutexLock lock(&mu_);
  const auto b = reinterpret_cast<uintptr_t>(base);
  Region r{b, b + bytes, kind};
  auto it = std::lower_bound(regions_.begin(), regions_.end(), r,
                             [](const Region& x, const Region& y) { return x.begin < y.begin; });
  regions_.insert(it, r);
  last_hit_ = {~size_t{0}, ~size_t{0}};  // indices moved
}

CudaCopyEngine::PtrKind CudaCopyEngine::Classify(const void* p) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  // The ops of a batch mostly alternate between two regions (a pool and a worker's blocks): try
  // the last two regions hit before searching.
  for (size_t h : last_hit_) {
    if (h < regions_.size() && a >= regions_[h].begin && a < regions_[h].end) {
      return regions_[h].kind == MemoryKind::kDevice ? PtrKind::kDevice : PtrKind::kPinnedHost;
    }
  }
  auto it = std::upper_bound(regions_.begin(), regions_.end(), a,
                             [](uintptr_t x, const Region& r) { return x < r.begin; });
  if (it != regions_.begin() && a < std::prev(it)->end) {
    last_hit_[1] = last_hit_[0];
    last_hit_[0] = static_cast<size_t>(std::prev(it) - regions_.begin());
    return std::prev(it)->kind == MemoryKind::kDevice ? PtrKind::kDevice : PtrKind::kPinnedHost;
  }
  cudaPointerAttributes attr{};
  if (cudaPointerGetAttributes(&attr, p) != cudaSuccess) {
    cudaGetLastError();
    return PtrKind::kPageableHost;
  }
  switch (attr.type) {
    case cudaMemoryTypeDevice:
    case cudaMemoryTypeManaged:
      return PtrKind::kDevice;
    case cudaMemoryTypeHost:
      return PtrKind::kPinnedHost;
    default:
      return PtrKind::kPageableHost;
  }
}

CudaCopyMethod CudaCopyEngine::MethodFor(CopyRoute route, uint64_t piece_bytes) const {
  if (route == CopyRoute::kHostToHost) return CudaCopyMethod::kMemcpyPerRun;
  const CudaCopyMethod pinned = route == CopyRoute::kHostToDevice   ? options_.host_to_device
                                : route == CopyRoute::kDeviceToHost ? options_.device_to_host
                                                                    : options_.device_to_device;
  if (pinned != CudaCopyMethod::kAuto) return pinned;
  const CopyCalibration* best = nullptr;
  double best_dist = 0;
  for (const CopyCalibration& c : calibration_) {
    if (c.route != route) continue;
    const double dist = std::abs(std::log2(double(c.piece_bytes)) -
                                 std::log2(double(std::max<uint64_t>(piece_bytes, 1))));
    if (best == nullptr || dist < best_dist) {
      best = &c;
      best_dist = dist;
    }
  }
  return best == nullptr ? CudaCopyMethod::kKernel : best->chosen;
}

void CudaCopyEngine::CountFallback(size_t ops, const char* why) {
  fallbacks_.fetch_add(ops, std::memory_order_relaxed);
  if (!fallback_logged_.exchange(true)) {
    std::fprintf(stderr,
                 "kvtier cuda copy engine: %s; such ops go through cudaMemcpyAsync per "
                 "run (logged once, counted in fallbacks())\n",
                 why);
  }
}

absl::Status CudaCopyEngine::Copy(absl::Span<const CopyOp> ops) {
  absl::MutexLock lock(&mu_);
  ScopedDevice on_device(options_.device);
  for (auto& v : by_route_) v.clear();
  std::vector<CopyOp>& pageable = pageable_;
  pageable.clear();
  for (const CopyOp& op : ops) {
    if (op.bytes == 0) continue;
    if (op.src == nullptr || op.dst == nullptr) {
      return absl::InvalidArgumentError("copy op with a null pointer");
    }
    const PtrKind s = Classify(op.src), d = Classify(op.dst);
    const bool src_dev = s == PtrKind::kDevice, dst_dev = d == PtrKind::kDevice;
    if (!src_dev && !dst_dev) {
      by_route_[static_cast<int>(CopyRoute::kHostToHost)].push_back(op);
    } else if ((!src_dev && s == PtrKind::kPageableHost) ||
               (!dst_dev && d == PtrKind::kPageableHost)) {
      pageable.push_back(op);
    } else {
      const CopyRoute r = src_dev && dst_dev ? CopyRoute::kDeviceToDevice
                          : src_dev          ? CopyRoute::kDeviceToHost
                                             : CopyRoute::kHostToDevice;
      by_route_[static_cast<int>(r)].push_back(op);
    }
  }
  for (const CopyOp& op : by_route_[static_cast<int>(CopyRoute::kHostToHost)]) {
    std::memcpy(op.dst, op.src, op.bytes);
  }
  for (int r = 0; r < 3; ++r) {
    std::vector<CopyOp>& v = by_route_[r];
    if (v.empty()) continue;
    uint64_t bytes = 0;
    for (const CopyOp& op : v) bytes += op.bytes;
    const CopyRoute route = static_cast<CopyRoute>(r);
    if (absl::Status s = RunLocked(route, MethodFor(route, bytes / v.size()), v); !s.ok()) {
      return s;
    }
  }
  if (!pageable.empty()) {
    CountFallback(pageable.size(), "pageable host memory cannot be read by the copy kernel");
    RETURN_IF_ERROR(RunPerRun(pageable));
  }
  return Sync();
}

absl::Status CudaCopyEngine::CopyWith(CopyRoute route, CudaCopyMethod method,
                                      absl::Span<const CopyOp> ops) {
  absl::MutexLock lock(&mu_);
  ScopedDevice on_device(options_.device);
  if (method == CudaCopyMethod::kAuto) {
    uint64_t bytes = 0;
    for (const CopyOp& op : ops) bytes += op.bytes;
    method = MethodFor(route, ops.empty() ? 0 : bytes / ops.size());
  }
  RETURN_IF_ERROR(RunLocked(route, method, ops));
  return Sync();
}

absl::Status CudaCopyEngine::Sync() {
  return CudaStatus(cudaStreamSynchronize(stream_), "cuda copy engine: stream synchronize");
}

absl::Status CudaCopyEngine::RunLocked(CopyRoute route, CudaCopyMethod method,
                                       absl::Span<const CopyOp> ops) {
  if (ops.empty()) return absl::OkStatus();
  if (route == CopyRoute::kHostToHost) {
    for (const CopyOp& op : ops) std::memcpy(op.dst, op.src, op.bytes);
    return absl::OkStatus();
  }
  switch (method) {
    case CudaCopyMethod::kAuto:
    case CudaCopyMethod::kKernel:
      return RunKernel(route, ops, kernels::GpuCopyMover::kLoadStore);
    case CudaCopyMethod::kKernelBulk:
      // The bulk copy unit reads and writes device memory only; mapped host memory is the
      // load/store mover's.
      if (route != CopyRoute::kDeviceToDevice) {
        return absl::InvalidArgumentError(
            absl::StrCat("cuda copy engine: kernel-bulk copies device to device only, not ",
                         CopyRouteName(route)));
      }
      return RunKernel(route, ops, kernels::GpuCopyMover::kBulkAsync);
    case CudaCopyMethod::kMemcpyBatch:
      return RunBatch(ops);
    case CudaCopyMethod::kMemcpyPerRun:
      return RunPerRun(ops);
  }
  return absl::InternalError("unknown copy method");
}

absl::Status CudaCopyEngine::RunKernel(CopyRoute route, absl::Span<const CopyOp> ops,
                                       kernels::GpuCopyMover mover) {
  // Ops that break the kernel's 16-byte rule are set aside and copied per run; the rest are staged
  // as descriptors in chunks (first_launch_ops, growing by launch_growth), each uploaded on
  // upload_stream_ and copied by its own launch while the host stages the next. With two streams
  // (the route's lane), chunk k+1's kernel waits only on its own upload and so overlaps chunk k's
  // tail. A batch of small pieces (staging_descriptors_below_bytes) skips the upload: its chunk
  // kernels read their slices of the staging buffer. Chunks of one fill take disjoint slices of
  // the staging and device buffers, so nothing is rewritten while in use; once max_ops_per_launch
  // are staged, the streams drain and the next fill starts over at 0.
  const auto t_begin = std::chrono::steady_clock::now();
  auto us_since_begin = [&t_begin] {
    return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t_begin)
        .count();
  };
  KernelRunTrace trace;
  unaligned_.clear();
  const Lane& lane = LaneFor(route);
  const bool two = lane.streams[1] != nullptr;
  const std::array<cudaStream_t, 2> streams = {two ? lane.streams[0] : stream_,
                                               two ? lane.streams[1] : stream_};
  int turn = 0;  // the stream of the next launch
  const bool upload_on_launch_stream = two && options_.upload_on_launch_stream;
  // Chunk kernels read the staging buffer itself (small pieces: nothing to upload).
  uint64_t leading_bytes = 0;
  const size_t leading = std::min<size_t>(ops.size(), 64);
  for (size_t i = 0; i < leading; ++i) leading_bytes += ops[i].bytes;
  const bool from_staging = mover == kernels::GpuCopyMover::kLoadStore && leading > 0 &&
                            leading_bytes / leading < options_.staging_descriptors_below_bytes;
  // CUDA calls a chunk makes besides its launch's own four (LaunchCopyBatch: device, SM count,
  // launch, error check), for the trace.
  const uint32_t calls_per_chunk = (from_staging              ? 0
                                    : upload_on_launch_stream ? 1
                                                              : 3) +
                                   4 + (lane.push_ctx && lane.green != nullptr ? 3 : 0);
  const size_t capacity = options_.max_ops_per_launch;
  const size_t first = std::min<size_t>(
      from_staging ? options_.first_launch_ops_from_staging : options_.first_launch_ops, capacity);
  size_t begin = 0;   // first descriptor of the chunk being staged
  size_t staged = 0;  // descriptors staged so far in this fill
  size_t target = first;
  uint64_t max_piece = 0;
  kernels::GpuCopyOptions kernel_options = options_.kernel;
  kernel_options.mover = mover;
  kernel_options.sm_budget = lane.sms;
  kernel_options.host_descriptors = from_staging;
  auto drain = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) -> absl::Status {
    absl::Status status;
    for (int k = 0; k < (two ? 2 : 1); ++k) {
      status.Update(
          CudaStatus(cudaStreamSynchronize(streams[k]), "cuda copy engine: stream synchronize"));
    }
    return status;
  };
  // The lambda runs under the caller's lock; Clang's analysis needs to be told so.
  auto launch = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) -> absl::Status {
    const size_t n = staged - begin;
    if (n == 0) return absl::OkStatus();
    // The chunk's descriptors as its kernel reads them: the staging itself, or their upload.
    auto* descs = from_staging ? staging_ + begin
                               : static_cast<kernels::CopyDescriptor*>(device_descs_.get()) + begin;
    cudaStream_t stream = streams[turn];
    turn ^= 1;
    if (!from_staging) {
      RETURN_IF_ERROR(
          CudaStatus(cudaMemcpyAsync(descs, staging_ + begin, n * sizeof(kernels::CopyDescriptor),
                                     cudaMemcpyHostToDevice,
                                     upload_on_launch_stream ? stream : upload_stream_),
                     "cuda copy engine: descriptor upload"));
    }
    if (!from_staging && !upload_on_launch_stream) {
      // A wait takes the event's latest record when it is enqueued, so one event serves every
      // chunk.
      RETURN_IF_ERROR(CudaStatus(cudaEventRecord(uploaded_, upload_stream_),
                                 "cuda copy engine: cudaEventRecord"));
      RETURN_IF_ERROR(CudaStatus(cudaStreamWaitEvent(stream, uploaded_, 0),
                                 "cuda copy engine: cudaStreamWaitEvent"));
    }
    {
      ScopedGreen current(lane.green, lane.push_ctx);
      RETURN_IF_ERROR(kernels::LaunchCopyBatch(descs, static_cast<uint32_t>(n), max_piece,
                                               kernel_options, stream));
    }
    if (trace.chunks++ == 0) trace.first_launch_us = us_since_begin();
    trace.api_calls += calls_per_chunk;
    begin = staged;
    max_piece = 0;
    const double grown = std::ceil(static_cast<double>(target) * options_.launch_growth);
    target = grown >= static_cast<double>(capacity) ? capacity : static_cast<size_t>(grown);
    if (staged < capacity) return absl::OkStatus();
    // The buffers are full: what they hold must have been read before they are rewritten.
    begin = staged = 0;
    target = first;
    return drain();
  };
  auto stage = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) -> absl::Status {
    for (const CopyOp& op : ops) {
      if ((reinterpret_cast<uintptr_t>(op.src) | reinterpret_cast<uintptr_t>(op.dst) | op.bytes) %
              kernels::kCopyAlignment !=
          0) {
        unaligned_.push_back(op);
        continue;
      }
      staging_[staged++] = kernels::CopyDescriptor{op.src, op.dst, op.bytes};
      max_piece = std::max<uint64_t>(max_piece, op.bytes);
      if (staged - begin == target || staged == capacity) {
        RETURN_IF_ERROR(launch());
      }
    }
    return launch();
  };
  absl::Status status = stage();
  trace.enqueued_us = us_since_begin();
  // Drained before returning, error or not, as every launch used to be: the next call stages
  // from slot 0 again, and nothing may still read the staging buffer. (An upload enqueued before
  // a refused launch is ordered before the next call's uploads on upload_stream_.)
  status.Update(drain());
  trace.done_us = us_since_begin();
  last_kernel_run_ = trace;
  if (!status.ok()) {
    cudaStreamSynchronize(upload_stream_);
    return status;
  }
  if (!unaligned_.empty()) {
    CountFallback(unaligned_.size(), "copy ops not 16-byte aligned cannot take the copy kernel");
    return RunPerRun(unaligned_);
  }
  return absl::OkStatus();
}

absl::Status CudaCopyEngine::RunBatch(absl::Span<const CopyOp> ops) {
  batch_dsts_.clear();
  batch_srcs_.clear();
  batch_sizes_.clear();
  for (const CopyOp& op : ops) {
    batch_dsts_.push_back(op.dst);
    batch_srcs_.push_back(op.src);
    batch_sizes_.push_back(op.bytes);
  }
  cudaMemcpyAttributes attr{};
  attr.srcAccessOrder = cudaMemcpySrcAccessOrderStream;
  size_t attr_index = 0;
  for (size_t begin = 0; begin < ops.size(); begin += options_.max_ops_per_launch) {
    const size_t n = std::min<size_t>(options_.max_ops_per_launch, ops.size() - begin);
    if (absl::Status s = CudaStatus(
            cudaMemcpyBatchAsync(batch_dsts_.data() + begin, batch_srcs_.data() + begin,
                                 batch_sizes_.data() + begin, n, &attr, &attr_index, 1, stream_),
            "cudaMemcpyBatchAsync");
        !s.ok()) {
      return s;
    }
  }
  return absl::OkStatus();
}

absl::Status CudaCopyEngine::RunPerRun(absl::Span<const CopyOp> ops) {
  scratch_.assign(ops.begin(), ops.end());
  MergeAdjacentCopies(scratch_);
  for (const CopyOp& op : scratch_) {
    if (absl::Status s =
            CudaStatus(cudaMemcpyAsync(op.dst, op.src, op.bytes, cudaMemcpyDefault, stream_),
                       "cudaMemcpyAsync");
        !s.ok()) {
      return s;
    }
  }
  return absl::OkStatus();
}

absl::Status CudaCopyEngine::Calibrate() {
  const bool any_auto = options_.host_to_device == CudaCopyMethod::kAuto ||
                        options_.device_to_host == CudaCopyMethod::kAuto ||
                        options_.device_to_device == CudaCopyMethod::kAuto;
  if (!any_auto) return absl::OkStatus();
  const size_t bytes = options_.calibration_bytes / kCalibrationPieces[2] * kCalibrationPieces[2];
  if (bytes == 0) return absl::InvalidArgumentError("calibration_bytes below 256 KiB");
  auto dev_a = kernels::DeviceBuffer::Allocate(bytes);
  if (!dev_a.ok()) return dev_a.status();
  auto dev_b = kernels::DeviceBuffer::Allocate(bytes);
  if (!dev_b.ok()) return dev_b.status();
  PinnedHost host;
  if (absl::Status s = CudaStatus(cudaMallocHost(&host.p, bytes), "cudaMallocHost(calibration)");
      !s.ok()) {
    return s;
  }
  std::memset(host.p, 0x5a, bytes);
  cudaMemset(dev_a->get(), 0x3c, bytes);
  std::vector<CopyOp> ops;
  absl::MutexLock lock(&mu_);
  for (int r = 0; r < 3; ++r) {
    const CopyRoute route = static_cast<CopyRoute>(r);
    const CudaCopyMethod pinned = route == CopyRoute::kHostToDevice   ? options_.host_to_device
                                  : route == CopyRoute::kDeviceToHost ? options_.device_to_host
                                                                      : options_.device_to_device;
    if (pinned != CudaCopyMethod::kAuto) continue;
    auto* src = static_cast<std::byte*>(route == CopyRoute::kHostToDevice ? host.p : dev_a->get());
    auto* dst = static_cast<std::byte*>(route == CopyRoute::kDeviceToHost ? host.p : dev_b->get());
    for (uint64_t piece : kCalibrationPieces) {
      const size_t n = bytes / piece;
      ops.clear();
      // Reversed order: no two ops continue each other, as with real scattered blocks.
      for (size_t i = 0; i < n; ++i)
        ops.push_back(CopyOp{dst + (n - 1 - i) * piece, src + i * piece, piece});
      CopyCalibration row;
      row.route = route;
      row.piece_bytes = piece;
      double* slots[] = {&row.kernel_gbps, &row.batch_gbps, &row.per_run_gbps,
                         &row.kernel_bulk_gbps};
      const CudaCopyMethod methods[] = {CudaCopyMethod::kKernel, CudaCopyMethod::kMemcpyBatch,
                                        CudaCopyMethod::kMemcpyPerRun, CudaCopyMethod::kKernelBulk};
      // The bulk-async mover competes on device->device alone, the one route it can serve.
      const int method_count = route == CopyRoute::kDeviceToDevice ? 4 : 3;
      double best = -1;
      for (int m = 0; m < method_count; ++m) {
        std::vector<double> secs;
        for (int rep = 0; rep < 4; ++rep) {  // the first run is a warm-up
          const auto t0 = std::chrono::steady_clock::now();
          if (absl::Status s = RunLocked(route, methods[m], ops); !s.ok()) {
            // A device without the bulk copy unit (or the shared memory its ring needs) refuses
            // the launch: the method is not in the running there. Only the descriptor upload was
            // enqueued; drain it before the staging buffer is rewritten.
            if (methods[m] != CudaCopyMethod::kKernelBulk || !absl::IsFailedPrecondition(s)) {
              return s;
            }
            RETURN_IF_ERROR(Sync());
            break;
          }
          RETURN_IF_ERROR(Sync());
          const auto t1 = std::chrono::steady_clock::now();
          if (rep > 0) secs.push_back(std::chrono::duration<double>(t1 - t0).count());
        }
        if (secs.empty()) continue;
        std::sort(secs.begin(), secs.end());
        *slots[m] = double(bytes) / secs[secs.size() / 2] / 1e9;
        if (*slots[m] > best) {
          best = *slots[m];
          row.chosen = methods[m];
        }
      }
      calibration_.push_back(row);
    }
  }
  return absl::OkStatus();
}

}  // namespace kvtier
