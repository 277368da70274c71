// Worker buffers that can shrink under kvtierd (daemon/fd_buffer.h), against a real daemon: a
// memfd sealed with F_SEAL_SEAL only (how SGLang's `shm` host pool allocates, memfd_create
// without MFD_ALLOW_SEALING) in SGLang's page_first layout (a page is a K piece and a V piece at
// two offsets of one buffer) registers, stores and loads bit-identically; shrunk by its worker
// (ftruncate) while registered, every store and load of it fails with a message naming the
// shrink, and the daemon keeps serving this session and others.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "base/unique_fd.h"
#include "client/client.h"
#include "gtest/gtest.h"
#include "tests/integration/daemon_harness.h"

namespace kvtier::testing {
namespace {

constexpr char kConfig[] = R"(http_address: ""
store:
  page_bytes: 32768
  hbm_pages: 8
  dram_pages: 64
namespaces:
  - name: "sglang/*"
    sink_slots: 0
)";

// SGLang's MHA host pool, page_first: [2, 16 pages * 16 tokens, 4 layers, 2 heads, 64] bf16.
LayoutSpec PageFirst() {
  LayoutSpec s;
  s.layers = 4;
  s.kv_heads = 2;
  s.head_dim = 64;
  s.tokens_per_page = 16;
  s.tensor_layout = TensorLayout::kSplitKvPageFirst;
  s.num_blocks = 16;
  return s;
}

// The page image of `block` (its K piece, then its V piece) read from the worker's own mapping.
std::string PageOf(const std::byte* buffer, const Layout& layout, uint32_t block) {
  std::vector<Piece> pieces;
  EXPECT_TRUE(layout.AppendPieces(block, pieces).ok());
  std::string out;
  for (const Piece& p : pieces) {
    out.append(reinterpret_cast<const char*>(buffer + p.offset), p.length);
  }
  return out;
}

class FdBufferTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const uint64_t seed = TestSeed();
    rng_.seed(seed);
    absl::StatusOr<DaemonProcess> d = DaemonProcess::Start(kConfig);
    ASSERT_TRUE(d.ok()) << d.status();
    daemon_ = std::make_unique<DaemonProcess>(*std::move(d));
    client_ = Connect();
    ASSERT_NE(client_, nullptr);
    layout_ = *Layout::Create(PageFirst());
    bytes_ = layout_.buffer_bytes();
    // As SGLang's alloc_shm: no MFD_ALLOW_SEALING, so the memfd carries F_SEAL_SEAL and nothing
    // else, and can be shrunk at any time.
    fd_ = UniqueFd(::memfd_create("sglang_host_pool", MFD_CLOEXEC));
    ASSERT_TRUE(fd_.valid());
    ASSERT_EQ(::fcntl(fd_.get(), F_GET_SEALS), F_SEAL_SEAL);
    ASSERT_EQ(::ftruncate(fd_.get(), static_cast<off_t>(bytes_)), 0);
    void* p = ::mmap(nullptr, bytes_, PROT_READ | PROT_WRITE, MAP_SHARED, fd_.get(), 0);
    ASSERT_NE(p, MAP_FAILED);
    buffer_ = static_cast<std::byte*>(p);
    for (uint64_t i = 0; i < bytes_; ++i) buffer_[i] = static_cast<std::byte>(rng_());
    const int fd = fd_.get();
    ASSERT_TRUE(client_->RegisterBuffers({&fd, 1}, {&bytes_, 1}).ok());
  }
  void TearDown() override {
    if (buffer_ != nullptr) ::munmap(buffer_, bytes_);
  }

  std::unique_ptr<Client> Connect() {
    absl::StatusOr<std::unique_ptr<Client>> c = Client::Connect(daemon_->socket_path());
    EXPECT_TRUE(c.ok()) << c.status();
    if (!c.ok()) return nullptr;
    absl::StatusOr<HelloInfo> h = (*c)->Hello("sglang/test", PageFirst());
    EXPECT_TRUE(h.ok()) << h.status();
    return h.ok() ? *std::move(c) : nullptr;
  }
  std::vector<PageKey> Keys(size_t n) {
    std::vector<PageKey> keys(n);
    for (PageKey& k : keys) k = PageKey{rng_(), rng_()};
    return keys;
  }
  bool DaemonAlive() const {
    int status = 0;
    return ::waitpid(daemon_->pid(), &status, WNOHANG) == 0;
  }

  std::mt19937_64 rng_;
  std::unique_ptr<DaemonProcess> daemon_;
  std::unique_ptr<Client> client_;
  Layout layout_ = *Layout::Create(PageFirst());
  uint64_t bytes_ = 0;
  UniqueFd fd_;
  std::byte* buffer_ = nullptr;
};

TEST_F(FdBufferTest, SealSealOnlyPageFirstBufferRoundTripsBitIdentical) {
  const std::vector<PageKey> keys = Keys(6);
  const std::vector<uint32_t> from = {0, 1, 2, 3, 4, 5};
  const std::vector<uint32_t> to = {15, 9, 10, 11, 12, 8};
  std::vector<std::string> stored;
  stored.reserve(from.size());
  for (uint32_t b : from) stored.push_back(PageOf(buffer_, layout_, b));
  absl::StatusOr<PageResults> st = client_->Wait(*client_->StoreAsync(keys, from));
  ASSERT_TRUE(st.ok()) << st.status();
  ASSERT_EQ(st->ok_pages, keys.size()) << st->first_error;
  for (uint32_t b : to) {
    std::vector<Piece> pieces;
    ASSERT_TRUE(layout_.AppendPieces(b, pieces).ok());
    for (const Piece& p : pieces) std::memset(buffer_ + p.offset, 0, p.length);
  }
  absl::StatusOr<PageResults> ld = client_->Wait(*client_->LoadAsync(keys, to));
  ASSERT_TRUE(ld.ok()) << ld.status();
  ASSERT_EQ(ld->ok_pages, keys.size()) << ld->first_error;
  for (size_t i = 0; i < keys.size(); ++i) {
    EXPECT_EQ(PageOf(buffer_, layout_, to[i]), stored[i]) << "page " << i;
  }
  absl::StatusOr<wire::StatsReply> stats = client_->Stats();
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->registered_buffers(), 1u);
}

TEST_F(FdBufferTest, ShrunkBufferFailsItsPagesAndTheDaemonKeepsServing) {
  const std::vector<PageKey> keys = Keys(4);
  const std::vector<uint32_t> blocks = {12, 13, 14, 15};
  absl::StatusOr<PageResults> st = client_->Wait(*client_->StoreAsync(keys, blocks));
  ASSERT_TRUE(st.ok()) << st.status();
  ASSERT_EQ(st->ok_pages, keys.size()) << st->first_error;
  // Shrunk to half: every K piece is still there, every V piece is gone. A daemon that mapped
  // the buffer would die of SIGBUS on the first V piece; this one fails the pages. The worker's
  // own mapping is not touched again (it would fault here).
  ASSERT_EQ(::ftruncate(fd_.get(), static_cast<off_t>(bytes_ / 2)), 0);
  absl::StatusOr<PageResults> shrunk_store = client_->Wait(*client_->StoreAsync(Keys(2), {14, 15}));
  ASSERT_TRUE(shrunk_store.ok()) << shrunk_store.status();
  EXPECT_EQ(shrunk_store->ok_pages, 0u);
  EXPECT_EQ(shrunk_store->codes[0], absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(shrunk_store->first_error.find("shrank"), std::string::npos)
      << shrunk_store->first_error;
  std::printf("  store after shrink -> %s\n", shrunk_store->first_error.c_str());
  absl::StatusOr<PageResults> shrunk_load = client_->Wait(*client_->LoadAsync(keys, blocks));
  ASSERT_TRUE(shrunk_load.ok()) << shrunk_load.status();
  EXPECT_EQ(shrunk_load->ok_pages, 0u);
  EXPECT_NE(shrunk_load->first_error.find("shrank"), std::string::npos) << shrunk_load->first_error;
  std::printf("  load after shrink  -> %s\n", shrunk_load->first_error.c_str());
  // Shrunk to nothing: the same, for K pieces too.
  ASSERT_EQ(::ftruncate(fd_.get(), 0), 0);
  absl::StatusOr<PageResults> empty_store = client_->Wait(*client_->StoreAsync(Keys(1), {0}));
  ASSERT_TRUE(empty_store.ok()) << empty_store.status();
  EXPECT_EQ(empty_store->ok_pages, 0u);
  ASSERT_TRUE(DaemonAlive());
  // The session still answers, the pages it stored before the shrink are still cached, and a
  // second worker with a fresh buffer is served.
  absl::StatusOr<LookupReply> lookup = client_->Lookup(keys);
  ASSERT_TRUE(lookup.ok()) << lookup.status();
  EXPECT_EQ(lookup->prefix_pages, keys.size());
  std::unique_ptr<Client> other = Connect();
  ASSERT_NE(other, nullptr);
  UniqueFd fresh(::memfd_create("sglang_host_pool", MFD_CLOEXEC));
  ASSERT_EQ(::ftruncate(fresh.get(), static_cast<off_t>(bytes_)), 0);
  const int fd = fresh.get();
  ASSERT_TRUE(other->RegisterBuffers({&fd, 1}, {&bytes_, 1}).ok());
  absl::StatusOr<PageResults> ld = other->Wait(*other->LoadAsync(keys, blocks));
  ASSERT_TRUE(ld.ok()) << ld.status();
  EXPECT_EQ(ld->ok_pages, keys.size()) << ld->first_error;
  EXPECT_TRUE(DaemonAlive());
}

TEST_F(FdBufferTest, BufferThatCannotCarrySealsIsRefused) {
  // A pipe is not a regular file; a file on disk fails F_GET_SEALS. Neither is read through.
  char path[] = "/var/tmp/kvtier-fd-buffer-XXXXXX";
  UniqueFd file(::mkstemp(path));
  ASSERT_TRUE(file.valid());
  ::unlink(path);
  ASSERT_EQ(::ftruncate(file.get(), static_cast<off_t>(bytes_)), 0);
  const int fd = file.get();
  absl::Status s = client_->RegisterBuffers({&fd, 1}, {&bytes_, 1});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("not a memfd"), absl::string_view::npos) << s;
  EXPECT_TRUE(DaemonAlive());
}

}  // namespace
}  // namespace kvtier::testing
