// kvtier::Client's reply routing and deadlines, against a scripted peer on a real Unix socket: the
// test plays the daemon's end so it can hold one reply back, answer late or answer garbage, which a
// healthy kvtierd never does on purpose. (The daemon-backed cases are in tests/python and
// tests/integration.)
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "base/seqpacket.h"
#include "base/unique_fd.h"
#include "client/client.h"
#include "client/proto/kvtier.pb.h"
#include "gtest/gtest.h"

namespace kvtier {
namespace {

// The daemon's end of one connection: accepts the client, reads requests, sends replies.
class ScriptedPeer {
 public:
  ScriptedPeer() {
    char dir_template[] = "/tmp/kvtier-client-test-XXXXXX";
    const char* dir = ::mkdtemp(dir_template);
    EXPECT_NE(dir, nullptr);
    dir_ = dir;
    path_ = dir_ + "/s.sock";
    listener_ = UniqueFd(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path_.c_str(), sizeof(addr.sun_path) - 1);
    EXPECT_EQ(::bind(listener_.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)), 0);
    EXPECT_EQ(::listen(listener_.get(), 1), 0);
  }
  ~ScriptedPeer() {
    ::unlink(path_.c_str());
    ::rmdir(dir_.c_str());
  }

  std::unique_ptr<Client> Connect() {
    absl::StatusOr<std::unique_ptr<Client>> c = Client::Connect(path_);
    EXPECT_TRUE(c.ok()) << c.status();
    conn_ = UniqueFd(::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC));
    EXPECT_TRUE(conn_.valid());
    return c.ok() ? *std::move(c) : nullptr;
  }

  wire::Request Read() {
    std::string buf;
    absl::StatusOr<Datagram> d = ReceiveDatagram(conn_.get(), buf, 1 << 20);
    EXPECT_TRUE(d.ok()) << d.status();
    wire::Request req;
    if (d.ok()) {
      EXPECT_TRUE(req.ParseFromArray(buf.data(), static_cast<int>(d->size)));
    }
    return req;
  }

  void Send(const wire::Response& r) {
    ASSERT_TRUE(SendDatagram(conn_.get(), r.SerializeAsString()).ok());
  }
  void SendRaw(const std::string& bytes) { ASSERT_TRUE(SendDatagram(conn_.get(), bytes).ok()); }

  static wire::Response LookupReply(uint64_t id, uint32_t prefix_pages) {
    wire::Response r;
    r.set_id(id);
    r.mutable_lookup()->set_prefix_pages(prefix_pages);
    r.mutable_lookup()->set_tiers(std::string(prefix_pages, '\1'));
    return r;
  }
  static wire::Response PagesReply(uint64_t id, int pages) {
    wire::Response r;
    r.set_id(id);
    for (int i = 0; i < pages; ++i) r.mutable_pages()->add_codes(0);
    r.mutable_pages()->set_tiers(std::string(pages, '\1'));
    r.mutable_pages()->set_ok_pages(pages);
    return r;
  }

 private:
  std::string dir_, path_;
  UniqueFd listener_, conn_;
};

const PageKey kKeys[2] = {PageKey{1, 2}, PageKey{3, 4}};
const uint32_t kBlocks[2] = {0, 1};

// A thread waiting on a slow operation must not hold back a reply another thread waits for. The
// peer answers the Lookup first and the Load only once the Lookup has returned (or after 20 s,
// when the client is wrong: then the assertion on `lookup_first` fails).
TEST(ClientReplies, ASlowOperationDoesNotHoldBackAnotherThreadsReply) {
  ScriptedPeer peer;
  std::unique_ptr<Client> client = peer.Connect();
  ASSERT_NE(client, nullptr);
  client->set_spin_wait_us(0);
  absl::StatusOr<OpHandle> load = client->LoadAsync(kKeys, kBlocks);
  ASSERT_TRUE(load.ok());
  const wire::Request load_req = peer.Read();
  std::atomic<bool> load_done{false};
  absl::Notification waiter_reading;
  std::thread waiter([&] {
    waiter_reading.Notify();
    absl::StatusOr<PageResults> r = client->Wait(*load);
    EXPECT_TRUE(r.ok()) << r.status();
    if (r.ok()) {
      EXPECT_EQ(r->ok_pages, 2u);
    }
    load_done = true;
  });
  waiter_reading.WaitForNotification();
  absl::SleepFor(absl::Milliseconds(50));  // most likely the reader now (either order is correct)
  absl::Notification lookup_returned;
  bool lookup_first = false;
  std::thread peer_thread([&] {
    const wire::Request lookup_req = peer.Read();
    EXPECT_TRUE(lookup_req.has_lookup());
    peer.Send(ScriptedPeer::LookupReply(lookup_req.id(), 2));
    lookup_first = lookup_returned.WaitForNotificationWithTimeout(absl::Seconds(20));
    peer.Send(ScriptedPeer::PagesReply(load_req.id(), 2));
  });
  absl::StatusOr<LookupReply> lookup = client->Lookup(kKeys);
  const bool load_done_before_lookup = load_done;
  lookup_returned.Notify();
  ASSERT_TRUE(lookup.ok()) << lookup.status();
  EXPECT_EQ(lookup->prefix_pages, 2u);
  peer_thread.join();
  waiter.join();
  EXPECT_TRUE(lookup_first) << "the Lookup's reply waited for the Load's";
  EXPECT_FALSE(load_done_before_lookup);
  EXPECT_TRUE(load_done);
}

// A synchronous call that runs out of time fails with DeadlineExceeded; its late reply is dropped
// and the next call gets its own. A Wait that runs out leaves the operation in flight: waiting
// again returns its result.
TEST(ClientReplies, DeadlinesFailTheCallAndLateRepliesFindTheirOwner) {
  ScriptedPeer peer;
  std::unique_ptr<Client> client = peer.Connect();
  ASSERT_NE(client, nullptr);
  client->set_call_timeout(absl::Milliseconds(100));

  absl::StatusOr<LookupReply> late = client->Lookup(kKeys);
  ASSERT_TRUE(absl::IsDeadlineExceeded(late.status())) << late.status();
  const wire::Request late_req = peer.Read();

  absl::StatusOr<OpHandle> load = client->LoadAsync(kKeys, kBlocks);
  ASSERT_TRUE(load.ok());
  const wire::Request load_req = peer.Read();
  absl::StatusOr<PageResults> first_wait = client->Wait(*load);
  ASSERT_TRUE(absl::IsDeadlineExceeded(first_wait.status())) << first_wait.status();
  EXPECT_NE(first_wait.status().message().find("still in flight"), absl::string_view::npos);

  // The timed-out Lookup's reply comes now, then the Load's: the Lookup's must not be taken for
  // anything else, the Load's must reach the second Wait.
  peer.Send(ScriptedPeer::LookupReply(late_req.id(), 1));
  peer.Send(ScriptedPeer::PagesReply(load_req.id(), 2));
  absl::StatusOr<PageResults> second_wait = client->Wait(*load);
  ASSERT_TRUE(second_wait.ok()) << second_wait.status();
  EXPECT_EQ(second_wait->ok_pages, 2u);

  client->set_call_timeout(absl::InfiniteDuration());
  std::thread answer([&] {
    const wire::Request req = peer.Read();
    peer.Send(ScriptedPeer::LookupReply(req.id(), 2));
  });
  absl::StatusOr<LookupReply> next = client->Lookup(kKeys);
  answer.join();
  ASSERT_TRUE(next.ok()) << next.status();
  EXPECT_EQ(next->prefix_pages, 2u);  // its own reply, not the dropped one (1 page)
}

// A reply that does not parse breaks the connection for every waiter, the one reading and the
// ones waiting behind it, instead of leaving the others to wait forever.
TEST(ClientReplies, AGarbledReplyFailsEveryWaiter) {
  ScriptedPeer peer;
  std::unique_ptr<Client> client = peer.Connect();
  ASSERT_NE(client, nullptr);
  client->set_spin_wait_us(0);
  absl::StatusOr<OpHandle> a = client->LoadAsync(kKeys, kBlocks);
  absl::StatusOr<OpHandle> b = client->LoadAsync(kKeys, kBlocks);
  ASSERT_TRUE(a.ok() && b.ok());
  peer.Read();
  peer.Read();
  absl::Status status_a, status_b;
  std::thread wa([&] { status_a = client->Wait(*a).status(); });
  std::thread wb([&] { status_b = client->Wait(*b).status(); });
  peer.SendRaw(std::string("\xff\xff\xff\xff not a response", 20));
  wa.join();
  wb.join();
  EXPECT_TRUE(absl::IsDataLoss(status_a)) << status_a;
  EXPECT_TRUE(absl::IsDataLoss(status_b)) << status_b;
  EXPECT_TRUE(absl::IsDataLoss(client->Lookup(kKeys).status()));
}

}  // namespace
}  // namespace kvtier
