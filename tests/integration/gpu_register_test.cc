// GPU-worker registration against a real kvtierd on a machine without a GPU (CI): the protocol
// paths a GPU worker takes, with no GPU behind them. A request with mistakes of its own is refused
// with InvalidArgument naming the limit (the same checks run before the daemon looks for a GPU);
// a well-formed one with FailedPrecondition saying why this daemon cannot serve GPU buffers; the
// session survives either and can register memfd buffers; VMM fds attached to a refused request
// are closed (no descriptor leak); and the C ABI reports the same.
#include <sys/mman.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/client.h"
#include "client/kvtier_c.h"
#include "gtest/gtest.h"
#include "tests/integration/daemon_harness.h"
#include "tiering/memory_region.h"

namespace kvtier::testing {
namespace {

constexpr char kConfig[] = R"(http_address: ""
store:
  page_bytes: 32768
  hbm_pages: 8
  dram_pages: 64
namespaces:
  - name: "gpu/*"
    sink_slots: 0
)";

LayoutSpec Layout4() {  // 4 layers of [2, 16, 16, 2, 64] bf16: 32 KiB pages
  LayoutSpec s;
  s.layers = 4;
  s.kv_heads = 2;
  s.head_dim = 64;
  s.tokens_per_page = 16;
  s.tensor_layout = TensorLayout::kVllmPerLayer;
  s.num_blocks = 16;
  return s;
}

// Well-formed handles for Layout4 (what a worker would send), with random bytes as handles.
std::vector<GpuBufferHandle> Handles(uint64_t seed) {
  const Layout layout = *Layout::Create(Layout4());
  std::vector<GpuBufferHandle> out(layout.buffer_count());
  for (size_t i = 0; i < out.size(); ++i) {
    out[i].ipc_handle.assign(64, static_cast<char>((seed + i) & 0x7f));
    out[i].offset = 4096 + i * layout.buffer_bytes();
    out[i].size = layout.buffer_bytes();
  }
  return out;
}

class GpuRegisterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (CudaDeviceAvailable()) GTEST_SKIP() << "a GPU is present: tests/gpu/run_gpu_test covers it";
    seed_ = TestSeed();
    absl::StatusOr<DaemonProcess> d = DaemonProcess::Start(kConfig);
    ASSERT_TRUE(d.ok()) << d.status();
    daemon_ = std::make_unique<DaemonProcess>(*std::move(d));
    absl::StatusOr<std::unique_ptr<Client>> c = Client::Connect(daemon_->socket_path());
    ASSERT_TRUE(c.ok()) << c.status();
    client_ = *std::move(c);
    ASSERT_TRUE(client_->Hello("gpu/test", Layout4()).ok());
  }
  uint64_t seed_ = 0;
  std::unique_ptr<DaemonProcess> daemon_;
  std::unique_ptr<Client> client_;
  const std::string uuid_ = std::string(16, '\x5a');
};

TEST_F(GpuRegisterTest, WellFormedRequestIsFailedPreconditionNamingWhy) {
  absl::Status s = client_->RegisterGpuBuffers(uuid_, Handles(seed_));
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_NE(s.message().find("CUDA"), absl::string_view::npos) << s;
  EXPECT_NE(s.message().find("memfd"), absl::string_view::npos) << s;
  // Nothing was registered: a Load is refused as before any registration.
  absl::StatusOr<OpHandle> op = client_->LoadGpuAsync({PageKey{1, 2}}, {0u}, true);
  ASSERT_TRUE(op.ok()) << op.status();
  absl::StatusOr<GpuPageResults> r = client_->WaitGpu(*op);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition) << r.status();
  // The session goes on: memfd buffers register and serve a store and a load.
  const Layout layout = *Layout::Create(Layout4());
  absl::StatusOr<WorkerBuffers> bufs = WorkerBuffers::Create(layout);
  ASSERT_TRUE(bufs.ok()) << bufs.status();
  const std::vector<int> fds = bufs->fds();
  ASSERT_TRUE(client_->RegisterBuffers(fds, bufs->sizes()).ok());
  std::vector<std::byte> page(layout.page_bytes());
  for (size_t i = 0; i < page.size(); ++i) page[i] = static_cast<std::byte>((seed_ + i * 7) & 0xff);
  ASSERT_TRUE(bufs->WriteBlock(layout, 3, page).ok());
  absl::StatusOr<OpHandle> st = client_->StoreAsync({PageKey{seed_, 1}}, {3u});
  ASSERT_TRUE(st.ok());
  ASSERT_EQ(client_->Wait(*st)->ok_pages, 1u);
  absl::StatusOr<OpHandle> ld = client_->LoadAsync({PageKey{seed_, 1}}, {9u});
  ASSERT_TRUE(ld.ok());
  absl::StatusOr<PageResults> got = client_->Wait(*ld);
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->ok_pages, 1u);
  std::vector<std::byte> back(layout.page_bytes());
  ASSERT_TRUE(bufs->ReadBlock(layout, 9, absl::MakeSpan(back)).ok());
  EXPECT_EQ(back, page) << "seed " << seed_;
}

TEST_F(GpuRegisterTest, MalformedRequestsAreInvalidArgumentNamingTheLimit) {
  struct Case {
    const char* name;
    std::vector<GpuBufferHandle> handles;
    std::string uuid;
    const char* says;
  };
  const Layout layout = *Layout::Create(Layout4());
  std::vector<Case> cases;
  cases.push_back({"too few buffers", Handles(seed_), uuid_, "the layout needs 4 buffers"});
  cases.back().handles.pop_back();
  cases.push_back({"short handle", Handles(seed_), uuid_, "CUDA IPC handle of 10 bytes"});
  cases.back().handles[2].ipc_handle.resize(10);
  cases.push_back({"buffer too small", Handles(seed_), uuid_, "the layout needs"});
  cases.back().handles[1].size = layout.buffer_bytes() - 16;
  cases.push_back({"unaligned offset", Handles(seed_), uuid_, "16-byte aligned"});
  cases.back().handles[3].offset += 8;
  cases.push_back({"offset overflow", Handles(seed_), uuid_, "overflows"});
  cases.back().handles[0].offset = UINT64_MAX - 15;
  cases.push_back({"bad uuid", Handles(seed_), "short", "a GPU UUID is 16"});
  for (const Case& c : cases) {
    absl::Status s = client_->RegisterGpuBuffers(c.uuid, c.handles);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << c.name << ": " << s;
    EXPECT_NE(s.message().find(c.says), absl::string_view::npos) << c.name << ": " << s;
  }
  // A refused connection is not closed for these (fewer than max_consecutive_errors in a row).
  EXPECT_EQ(client_->RegisterGpuBuffers(uuid_, Handles(seed_)).code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST_F(GpuRegisterTest, VmmFdsOfARefusedRequestAreClosed) {
  const Layout layout = *Layout::Create(Layout4());
  const size_t before = daemon_->OpenFds();
  std::vector<int> fds;
  std::vector<GpuBufferHandle> handles(layout.buffer_count());
  for (size_t i = 0; i < handles.size(); ++i) {
    fds.push_back(::memfd_create("fake-vmm", MFD_CLOEXEC));
    ASSERT_GE(fds.back(), 0);
    handles[i].vmm_fd = fds.back();
    handles[i].allocation_bytes = 2 * layout.buffer_bytes();
    handles[i].offset = 0;
    handles[i].size = layout.buffer_bytes();
  }
  for (int round = 0; round < 3; ++round) {
    absl::Status s = client_->RegisterGpuBuffers(uuid_, handles);
    EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  }
  handles[0].offset = 2 * layout.buffer_bytes();  // outside its allocation
  absl::Status s = client_->RegisterGpuBuffers(uuid_, handles);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("outside its VMM allocation"), absl::string_view::npos) << s;
  // At most as many as before: a connection the harness opened while starting the daemon may
  // still have been closing when `before` was counted (seen under ASan), while a leak here would
  // be 4 descriptors for each of the 4 refused requests.
  EXPECT_LE(daemon_->OpenFds(), before) << "descriptors of refused registrations leaked";
  for (int fd : fds) ::close(fd);
  const wire::StatsReply stats = *client_->Stats();
  EXPECT_EQ(stats.registered_buffers(), 0u);
}

TEST_F(GpuRegisterTest, CAbiReportsFailedPrecondition) {
  int code = 0;
  kvtier_client* c = kvtier_connect(daemon_->socket_path().c_str(), &code);
  ASSERT_NE(c, nullptr) << code;
  const LayoutSpec l = Layout4();
  const kvtier_layout cl{l.layers,          l.kv_heads,
                         l.head_dim,        static_cast<uint32_t>(l.dtype),
                         l.tokens_per_page, static_cast<uint32_t>(l.tensor_layout),
                         l.num_blocks};
  ASSERT_EQ(kvtier_hello(c, "gpu/c", &cl, nullptr), 0) << kvtier_last_error(c);
  const std::vector<GpuBufferHandle> h = Handles(seed_);
  std::string handles;
  std::vector<uint64_t> offsets, sizes;
  for (const GpuBufferHandle& b : h) {
    handles += b.ipc_handle;
    offsets.push_back(b.offset);
    sizes.push_back(b.size);
  }
  EXPECT_EQ(kvtier_register_gpu_buffers(c, reinterpret_cast<const uint8_t*>(uuid_.data()),
                                        reinterpret_cast<const uint8_t*>(handles.data()),
                                        offsets.data(), sizes.data(), h.size()),
            static_cast<int>(absl::StatusCode::kFailedPrecondition));
  EXPECT_NE(std::string(kvtier_last_error(c)).find("CUDA"), std::string::npos);
  kvtier_close(c);
}

}  // namespace
}  // namespace kvtier::testing
