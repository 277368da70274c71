// The dispatcher without sockets: requests go in as datagrams, replies come out of the session's
// send function, and Load and Store run on an executor the test drives (inline, as the fuzz
// target's, or queued to check that they are answered from there). Page bytes are random from a
// printed seed.
#include "daemon/dispatcher.h"

#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <deque>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "base/memfd.h"
#include "client/client.h"
#include "client/defaults.h"
#include "gtest/gtest.h"
#include "tiering/tiered_store.h"

namespace kvtier {
namespace {

constexpr uint64_t kPageBytes = 1024;

LayoutSpec TestLayout() {
  LayoutSpec s;
  s.layers = 2;
  s.kv_heads = 1;
  s.head_dim = 32;
  s.tokens_per_page = 4;
  s.num_blocks = 16;
  return s;  // 1 KiB pages in 4 pieces
}

wire::Request HelloRequest(uint64_t id, uint32_t version = kProtocolVersion) {
  wire::Request req;
  req.set_id(id);
  wire::Hello* h = req.mutable_hello();
  h->set_protocol_version(version);
  h->set_namespace_name("test/model");
  const LayoutSpec l = TestLayout();
  h->mutable_layout()->set_layers(l.layers);
  h->mutable_layout()->set_kv_heads(l.kv_heads);
  h->mutable_layout()->set_head_dim(l.head_dim);
  h->mutable_layout()->set_tokens_per_page(l.tokens_per_page);
  h->mutable_layout()->set_num_blocks(l.num_blocks);
  return req;
}

void AddKeys(absl::Span<const PageKey> keys, google::protobuf::RepeatedField<uint64_t>* words) {
  for (const PageKey& k : keys) {
    words->Add(k.hi);
    words->Add(k.lo);
  }
}

class DispatcherTest : public ::testing::Test {
 protected:
  DispatcherTest() {
    config_.store.page_bytes = kPageBytes;
    config_.limits.max_batch_pages = 64;
    config_.limits.max_pinned_pages = 32;
    config_.limits.max_consecutive_errors = 4;
    config_.namespaces.push_back(NamespaceRule{.name = "*", .sink_slots = 2});
    StoreOptions o;
    o.page_bytes = kPageBytes;
    o.hbm.slots = 16;
    o.dram.slots = 64;
    o.hbm_backend = HbmBackend::kHostEmulated;
    o.tokens_per_page = 4;
    store_ = *TieredStore::Create(o);
    dispatcher_ = std::make_unique<Dispatcher>(
        config_, *store_, counters_,
        [this](std::function<void()> task) {
          if (queue_tasks_) {
            queued_.push_back(std::move(task));
          } else {
            task();  // inline, as the fuzz target runs them
          }
        },
        ::geteuid(), 0);
  }

  std::shared_ptr<Session> NewSession(uid_t uid = ::geteuid()) {
    return std::make_shared<Session>(
        next_session_++, PeerCredentials{1, uid, 0}, [this](absl::string_view bytes, int) {
          wire::Response r;
          ASSERT_TRUE(r.ParseFromArray(bytes.data(), static_cast<int>(bytes.size())));
          replies_.push_back(std::move(r));
        });
  }

  Dispatcher::Verdict Send(const std::shared_ptr<Session>& s, const wire::Request& req,
                           std::vector<UniqueFd> fds = {}) {
    bytes_ = req.SerializeAsString();
    Incoming in;
    in.bytes = bytes_;
    in.size = bytes_.size();
    in.fds = std::move(fds);
    return dispatcher_->Handle(s, std::move(in));
  }

  // The one reply the last request produced.
  wire::Response TakeReply() {
    EXPECT_EQ(replies_.size(), 1u);
    if (replies_.empty()) return wire::Response();
    wire::Response r = std::move(replies_.back());
    replies_.clear();
    return r;
  }

  // A session past Hello and RegisterBuffers of `buffers_` (memfds the dispatcher maps).
  std::shared_ptr<Session> Ready() {
    std::shared_ptr<Session> s = NewSession();
    EXPECT_EQ(Send(s, HelloRequest(1)), Dispatcher::Verdict::kKeep);
    EXPECT_TRUE(TakeReply().has_hello());
    if (buffers_ == nullptr) {
      buffers_ =
          std::make_unique<WorkerBuffers>(*WorkerBuffers::Create(*Layout::Create(TestLayout())));
    }
    wire::Request reg;
    reg.set_id(2);
    for (uint64_t size : buffers_->sizes()) reg.mutable_register_buffers()->add_sizes(size);
    std::vector<UniqueFd> fds;
    for (int fd : buffers_->fds()) fds.emplace_back(::dup(fd));
    EXPECT_EQ(Send(s, reg, std::move(fds)), Dispatcher::Verdict::kKeep);
    EXPECT_EQ(TakeReply().register_buffers().buffers(), buffers_->count());
    return s;
  }

  DaemonConfig config_;
  DaemonCounters counters_;
  std::unique_ptr<TieredStore> store_;
  std::unique_ptr<Dispatcher> dispatcher_;
  std::unique_ptr<WorkerBuffers> buffers_;
  bool queue_tasks_ = false;
  std::deque<std::function<void()>> queued_;
  std::vector<wire::Response> replies_;
  std::string bytes_;
  uint64_t next_session_ = 1;
};

TEST_F(DispatcherTest, HelloAnswersWithTheStoreAndTheLimits) {
  std::shared_ptr<Session> s = NewSession();
  EXPECT_EQ(Send(s, HelloRequest(7)), Dispatcher::Verdict::kKeep);
  const wire::Response r = TakeReply();
  EXPECT_EQ(r.id(), 7u);
  ASSERT_TRUE(r.has_hello()) << r.DebugString();
  EXPECT_EQ(r.hello().protocol_version(), kProtocolVersion);
  EXPECT_EQ(r.hello().page_bytes(), kPageBytes);
  EXPECT_EQ(r.hello().max_batch_pages(), 64u);
  EXPECT_TRUE(s->hello_done);
  // A second Hello on the same connection is an error, not a close.
  EXPECT_EQ(Send(s, HelloRequest(8)), Dispatcher::Verdict::kKeep);
  EXPECT_EQ(TakeReply().error().code(),
            static_cast<int32_t>(absl::StatusCode::kFailedPrecondition));
}

TEST_F(DispatcherTest, UnknownProtocolVersionClosesTheConnection) {
  std::shared_ptr<Session> s = NewSession();
  EXPECT_EQ(Send(s, HelloRequest(1, kProtocolVersion + 1)), Dispatcher::Verdict::kClose);
  const wire::Response r = TakeReply();
  EXPECT_EQ(r.error().code(), static_cast<int32_t>(absl::StatusCode::kFailedPrecondition));
  EXPECT_NE(r.error().message().find("protocol version 2"), std::string::npos) << r.DebugString();
  EXPECT_FALSE(s->hello_done);
}

TEST_F(DispatcherTest, RequestBeforeHelloNamesItsType) {
  std::shared_ptr<Session> s = NewSession();
  wire::Request req;
  req.set_id(3);
  req.mutable_lookup();
  EXPECT_EQ(Send(s, req), Dispatcher::Verdict::kKeep);
  const wire::Response r = TakeReply();
  EXPECT_EQ(r.id(), 3u);
  EXPECT_EQ(r.error().code(), static_cast<int32_t>(absl::StatusCode::kFailedPrecondition));
  EXPECT_EQ(r.error().message(), "Lookup before Hello: the first request must be the handshake");
}

TEST_F(DispatcherTest, EmptyBodyAndStrayDescriptorsAreRejected) {
  std::shared_ptr<Session> s = NewSession();
  wire::Request empty;
  empty.set_id(1);
  EXPECT_EQ(Send(s, empty), Dispatcher::Verdict::kKeep);
  EXPECT_EQ(TakeReply().error().code(), static_cast<int32_t>(absl::StatusCode::kInvalidArgument));

  wire::Request stats;
  stats.set_id(2);
  stats.mutable_stats();
  std::vector<UniqueFd> fds;
  fds.push_back(*CreateMemfd("stray", 4096, 0));
  EXPECT_EQ(Send(s, stats, std::move(fds)), Dispatcher::Verdict::kKeep);
  const wire::Response r = TakeReply();
  EXPECT_EQ(r.error().message(),
            "1 file descriptors attached to a Stats request; only RegisterBuffers carries "
            "descriptors");
}

TEST_F(DispatcherTest, StatusIsForAdminsOnly) {
  std::shared_ptr<Session> stranger = NewSession(::geteuid() + 1);
  wire::Request req;
  req.set_id(1);
  req.mutable_status();
  EXPECT_EQ(Send(stranger, req), Dispatcher::Verdict::kKeep);
  EXPECT_EQ(TakeReply().error().code(), static_cast<int32_t>(absl::StatusCode::kPermissionDenied));
  EXPECT_EQ(counters_.auth_refused.load(), 1u);

  std::shared_ptr<Session> owner = NewSession();  // no Hello needed for status
  EXPECT_EQ(Send(owner, req), Dispatcher::Verdict::kKeep);
  const wire::Response r = TakeReply();
  ASSERT_TRUE(r.has_status()) << r.DebugString();
  EXPECT_EQ(r.status().page_bytes(), kPageBytes);
  EXPECT_EQ(r.status().tiers_size(), 2);  // HBM (host-emulated) and DRAM
}

TEST_F(DispatcherTest, ConsecutiveErrorsCloseTheConnection) {
  std::shared_ptr<Session> s = NewSession();
  wire::Request req;
  req.mutable_pin();
  for (uint32_t i = 1; i < config_.limits.max_consecutive_errors; ++i) {
    req.set_id(i);
    EXPECT_EQ(Send(s, req), Dispatcher::Verdict::kKeep) << "error " << i;
  }
  EXPECT_EQ(Send(s, req), Dispatcher::Verdict::kClose);
  EXPECT_EQ(counters_.closed_untrusted.load(), 1u);
}

TEST_F(DispatcherTest, StoreThenLoadCopiesThePagesBack) {
  const uint32_t seed = std::random_device{}();
  SCOPED_TRACE(testing::Message() << "seed " << seed);
  std::mt19937 rng(seed);
  std::shared_ptr<Session> s = Ready();
  const Layout layout = *Layout::Create(TestLayout());
  constexpr uint32_t kPages = 3;
  std::vector<PageKey> keys;
  std::vector<std::vector<std::byte>> images(kPages, std::vector<std::byte>(kPageBytes));
  for (uint32_t i = 0; i < kPages; ++i) {
    keys.push_back(PageKey{rng(), rng()});
    for (std::byte& b : images[i]) b = static_cast<std::byte>(rng());
    ASSERT_TRUE(buffers_->WriteBlock(layout, i, images[i]).ok());
  }

  wire::Request store;
  store.set_id(10);
  AddKeys(keys, store.mutable_store()->mutable_key_words());
  for (uint32_t i = 0; i < kPages; ++i) store.mutable_store()->add_block_ids(i);
  EXPECT_EQ(Send(s, store), Dispatcher::Verdict::kKeep);
  wire::Response r = TakeReply();
  ASSERT_TRUE(r.has_pages()) << r.DebugString();
  EXPECT_EQ(r.id(), 10u);
  EXPECT_EQ(r.pages().ok_pages(), kPages) << r.pages().first_error();

  wire::Request load;
  load.set_id(11);
  AddKeys(keys, load.mutable_load()->mutable_key_words());
  for (uint32_t i = 0; i < kPages; ++i) load.mutable_load()->add_block_ids(kPages + i);
  EXPECT_EQ(Send(s, load), Dispatcher::Verdict::kKeep);
  r = TakeReply();
  ASSERT_EQ(r.pages().ok_pages(), kPages) << r.pages().first_error();
  for (uint32_t i = 0; i < kPages; ++i) {
    EXPECT_EQ(r.pages().codes(static_cast<int>(i)), 0);
    const auto tier = static_cast<uint8_t>(r.pages().tiers()[i]);
    EXPECT_TRUE(wire::TierCode_IsValid(tier)) << static_cast<int>(tier);
    std::vector<std::byte> back(kPageBytes);
    ASSERT_TRUE(buffers_->ReadBlock(layout, kPages + i, absl::MakeSpan(back)).ok());
    EXPECT_EQ(back, images[i]) << "page " << i;
  }

  wire::Request lookup;
  lookup.set_id(12);
  AddKeys(keys, lookup.mutable_lookup()->mutable_key_words());
  EXPECT_EQ(Send(s, lookup), Dispatcher::Verdict::kKeep);
  r = TakeReply();
  EXPECT_EQ(r.lookup().prefix_pages(), kPages);
}

TEST_F(DispatcherTest, LoadIsAnsweredByTheExecutorNotByHandle) {
  std::shared_ptr<Session> s = Ready();
  queue_tasks_ = true;
  wire::Request load;
  load.set_id(20);
  AddKeys({PageKey{1, 2}}, load.mutable_load()->mutable_key_words());
  load.mutable_load()->add_block_ids(0);
  EXPECT_EQ(Send(s, load), Dispatcher::Verdict::kKeep);
  EXPECT_TRUE(replies_.empty());
  EXPECT_EQ(counters_.inflight_ops.load(), 1u);
  ASSERT_EQ(queued_.size(), 1u);
  queued_.front()();
  queued_.pop_front();
  const wire::Response r = TakeReply();
  EXPECT_EQ(r.id(), 20u);
  EXPECT_EQ(r.pages().ok_pages(), 0u);  // never stored: a miss
  EXPECT_EQ(r.pages().codes(0), static_cast<int32_t>(absl::StatusCode::kNotFound));
  EXPECT_EQ(counters_.inflight_ops.load(), 0u);
}

// A prefix_only Load folds the Lookup into a GPU worker's Load; on host buffers it is refused
// with a message that says what to do instead, and nothing is queued.
TEST_F(DispatcherTest, PrefixOnlyLoadIsForGpuBuffers) {
  std::shared_ptr<Session> s = Ready();
  wire::Request load;
  load.set_id(21);
  AddKeys({PageKey{1, 2}}, load.mutable_load()->mutable_key_words());
  load.mutable_load()->add_block_ids(0);
  load.mutable_load()->set_prefix_only(true);
  EXPECT_EQ(Send(s, load), Dispatcher::Verdict::kKeep);
  const wire::Response r = TakeReply();
  EXPECT_EQ(r.id(), 21u);
  EXPECT_EQ(r.error().code(), static_cast<int32_t>(absl::StatusCode::kInvalidArgument));
  EXPECT_EQ(r.error().message(),
            "Load prefix_only is for GPU buffers; host workers Lookup, then Load the prefix");
  EXPECT_EQ(counters_.inflight_ops.load(), 0u);
}

TEST_F(DispatcherTest, OperationsQueuedWhenTheSessionEndsAreCancelled) {
  std::shared_ptr<Session> s = Ready();
  queue_tasks_ = true;
  wire::Request load;
  load.set_id(21);
  AddKeys({PageKey{3, 4}}, load.mutable_load()->mutable_key_words());
  load.mutable_load()->add_block_ids(0);
  EXPECT_EQ(Send(s, load), Dispatcher::Verdict::kKeep);
  dispatcher_->EndSession(*s);
  queued_.front()();
  EXPECT_TRUE(replies_.empty());
  EXPECT_EQ(counters_.ops_cancelled.load(), 1u);
  EXPECT_EQ(counters_.inflight_ops.load(), 0u);
}

TEST_F(DispatcherTest, PinsAreCountedAndReleasedWithTheSession) {
  std::shared_ptr<Session> s = Ready();
  const PageKey key{5, 6};
  std::vector<std::byte> image(kPageBytes, std::byte{7});
  ASSERT_TRUE(buffers_->WriteBlock(*Layout::Create(TestLayout()), 0, image).ok());
  wire::Request store;
  store.set_id(1);
  AddKeys({key}, store.mutable_store()->mutable_key_words());
  store.mutable_store()->add_block_ids(0);
  Send(s, store);
  ASSERT_EQ(TakeReply().pages().ok_pages(), 1u);

  wire::Request pin;
  pin.set_id(2);
  AddKeys({key, key}, pin.mutable_pin()->mutable_key_words());
  EXPECT_EQ(Send(s, pin), Dispatcher::Verdict::kKeep);
  EXPECT_EQ(TakeReply().count().pages(), 2u);
  EXPECT_EQ(counters_.pinned_pages.load(), 2u);

  wire::Request unpin;
  unpin.set_id(3);
  AddKeys({key}, unpin.mutable_unpin()->mutable_key_words());
  EXPECT_EQ(Send(s, unpin), Dispatcher::Verdict::kKeep);
  EXPECT_EQ(TakeReply().count().pages(), 1u);
  EXPECT_EQ(counters_.pinned_pages.load(), 1u);

  dispatcher_->EndSession(*s);
  EXPECT_EQ(counters_.pinned_pages.load(), 0u);
}

}  // namespace
}  // namespace kvtier
