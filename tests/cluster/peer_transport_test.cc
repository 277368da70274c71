// PeerTransport between two real UCX workers in one process (loopback TCP and shared memory):
// request/reply, RMA get from a registered region, deadlines, a peer that vanishes, and a peer
// that sends a malformed message (disconnected; the node keeps serving).
#include "transport/peer_transport.h"

#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"

namespace kvtier {
namespace {

PeerTransportOptions Loopback(const std::string& tls) {
  PeerTransportOptions o;
  o.listen_address = "127.0.0.1:0";
  o.ucx.tls = tls;
  o.ucx.net_devices = "lo";
  return o;
}

std::string Addr(const PeerTransport& t) { return absl::StrCat("127.0.0.1:", t.listen_port()); }

peer::Message EchoAck(const peer::Message& req) {
  peer::Message r;
  r.type = peer::MsgType::kAck;
  if (const auto* u = std::get_if<peer::DirUpdate>(&req.body)) {
    r.body = peer::Ack{0, absl::StrCat(u->ns, "/", u->holder, "/", u->ids.size())};
  }
  return r;
}

class PeerTransportTest : public ::testing::TestWithParam<std::string> {};

TEST_P(PeerTransportTest, CallAndGet) {
  std::vector<std::byte> exported(1 << 20);
  const uint64_t seed = std::random_device{}();
  std::printf("seed %llu\n", static_cast<unsigned long long>(seed));
  std::mt19937_64 rng(seed);
  for (auto& b : exported) b = static_cast<std::byte>(rng());
  auto server = PeerTransport::Create(Loopback(GetParam()), EchoAck);
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = PeerTransport::Create(Loopback(GetParam()), EchoAck);
  ASSERT_TRUE(client.ok()) << client.status();

  peer::Message m;
  m.type = peer::MsgType::kDirAdd;
  m.body = peer::DirUpdate{"ns", "node-b", {{1, 2}, {3, 4}}};
  auto reply = (*client)->Call(Addr(**server), m, absl::Seconds(10));
  ASSERT_TRUE(reply.ok()) << reply.status();
  EXPECT_EQ(std::get<peer::Ack>(reply->body).error, "ns/node-b/2");

  auto region = (*server)->Register(exported.data(), exported.size());
  ASSERT_TRUE(region.ok()) << region.status();
  std::vector<std::byte> landing(exported.size());
  auto local = (*client)->Register(landing.data(), landing.size());
  ASSERT_TRUE(local.ok()) << local.status();
  const size_t off = 4096, len = 512 * 1024;
  ASSERT_TRUE((*client)
                  ->Get(Addr(**server), reinterpret_cast<uint64_t>(exported.data()) + off,
                        (*region)->packed_rkey(), **local, 0, len, absl::Seconds(10))
                  .ok());
  EXPECT_EQ(std::memcmp(landing.data(), exported.data() + off, len), 0);
  local->reset();
  region->reset();
}

// A region UCX allocated: gets from it land like any, and a peer in another process of this
// host (here: another worker) maps it exactly when shared memory is among the transports (its gets
// are then a memcpy; kvtierd asks such a holder to lend through its allocated staging slots).
// Registered memory (a heap buffer) never maps.
TEST_P(PeerTransportTest, AllocatedRegionMapsOverSharedMemoryOnly) {
  const uint64_t seed = std::random_device{}();
  std::printf("seed %llu\n", static_cast<unsigned long long>(seed));
  std::mt19937_64 rng(seed);
  auto server = PeerTransport::Create(Loopback(GetParam()), EchoAck);
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = PeerTransport::Create(Loopback(GetParam()), EchoAck);
  ASSERT_TRUE(client.ok()) << client.status();
  const size_t len = 2 << 20;
  auto shared = (*server)->Allocate(len);
  ASSERT_TRUE(shared.ok()) << shared.status();
  ASSERT_GE((*shared)->length(), len);
  for (size_t i = 0; i < len; ++i) (*shared)->base()[i] = static_cast<std::byte>(rng());
  std::vector<std::byte> heap(len);
  auto registered = (*server)->Register(heap.data(), heap.size());
  ASSERT_TRUE(registered.ok()) << registered.status();

  // A call first: the endpoint is wired up when keys are unpacked on it.
  peer::Message m;
  m.type = peer::MsgType::kDirAdd;
  m.body = peer::DirUpdate{"ns", "n", {}};
  ASSERT_TRUE((*client)->Call(Addr(**server), m, absl::Seconds(10)).ok());
  const uint64_t at = reinterpret_cast<uint64_t>((*shared)->base());
  auto maps = (*client)->Mappable(Addr(**server), (*shared)->packed_rkey(), at, absl::Seconds(10));
  ASSERT_TRUE(maps.ok()) << maps.status();
  EXPECT_EQ(*maps, GetParam() != "tcp") << GetParam();
  auto heap_maps = (*client)->Mappable(Addr(**server), (*registered)->packed_rkey(),
                                       reinterpret_cast<uint64_t>(heap.data()), absl::Seconds(10));
  ASSERT_TRUE(heap_maps.ok()) << heap_maps.status();
  EXPECT_FALSE(*heap_maps);
  // And UCX reads it over a shared-memory lane: the endpoint has sysv or posix get lanes on sm
  // (UCX 1.13 leaves them out of endpoints that handle peer failure unless the context says
  // MM_ERROR_HANDLING, which ucx::Context does).
  auto info = (*client)->EndpointInfo(Addr(**server), absl::Seconds(10));
  ASSERT_TRUE(info.ok()) << info.status();
  const bool mm_lane =
      info->find("sysv/") != std::string::npos || info->find("posix/") != std::string::npos;
  EXPECT_EQ(mm_lane, GetParam() != "tcp") << *info;

  // Twice through the same (cached) remote key, into unregistered memory.
  std::vector<std::byte> landing(len);
  for (int round = 0; round < 2; ++round) {
    std::fill(landing.begin(), landing.end(), std::byte{0});
    std::vector<RemoteRead> reads = {
        {at, 0, landing.data(), len / 2, 0, nullptr},
        {at + len / 2, 0, landing.data() + len / 2, len / 2, 1, nullptr}};
    auto batch = (*client)->StartGets(Addr(**server), {(*shared)->packed_rkey()}, std::move(reads),
                                      2, absl::Seconds(10));
    ASSERT_TRUE(batch.ok()) << batch.status();
    ASSERT_TRUE((*batch)->Wait(0).ok());
    ASSERT_TRUE((*batch)->Wait(1).ok());
    batch->reset();
    EXPECT_EQ(std::memcmp(landing.data(), (*shared)->base(), len), 0) << "round " << round;
  }
  client->reset();  // endpoints (and their keys) before the regions they name
  shared->reset();
  registered->reset();
}

// Request types marked inline are answered on the progress thread, the rest on handler
// threads; both replies reach the caller.
TEST_P(PeerTransportTest, InlineTypesAreAnsweredOnTheProgressThread) {
  absl::Mutex mu;
  std::thread::id query_thread, update_thread;
  PeerTransportOptions o = Loopback(GetParam());
  o.inline_types = {peer::MsgType::kDirQuery};
  auto server = PeerTransport::Create(o, [&](const peer::Message& req) {
    absl::MutexLock lock(&mu);
    (req.type == peer::MsgType::kDirQuery ? query_thread : update_thread) =
        std::this_thread::get_id();
    peer::Message r;
    if (req.type == peer::MsgType::kDirQuery) {
      r.type = peer::MsgType::kDirQueryReply;
      r.body = peer::DirQueryReply{{{"holder-x"}}};
    } else {
      r = EchoAck(req);
    }
    return std::optional<peer::Message>(r);
  });
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = PeerTransport::Create(Loopback(GetParam()), EchoAck);
  ASSERT_TRUE(client.ok()) << client.status();
  peer::Message q;
  q.type = peer::MsgType::kDirQuery;
  q.body = peer::DirQuery{"ns", {{1, 2}}};
  auto qr = (*client)->Call(Addr(**server), q, absl::Seconds(10));
  ASSERT_TRUE(qr.ok()) << qr.status();
  EXPECT_EQ(std::get<peer::DirQueryReply>(qr->body).holders[0][0], "holder-x");
  peer::Message u;
  u.type = peer::MsgType::kDirAdd;
  u.body = peer::DirUpdate{"ns", "n", {{3, 4}}};
  auto ur = (*client)->Call(Addr(**server), u, absl::Seconds(10));
  ASSERT_TRUE(ur.ok()) << ur.status();
  EXPECT_EQ(std::get<peer::Ack>(ur->body).error, "ns/n/1");
  absl::MutexLock lock(&mu);
  EXPECT_NE(query_thread, std::thread::id());
  EXPECT_NE(update_thread, std::thread::id());
  EXPECT_NE(query_thread, update_thread);
}

TEST_P(PeerTransportTest, DeadPeerFailsFastAndTimeoutsHold) {
  auto client = PeerTransport::Create(Loopback(GetParam()), EchoAck);
  ASSERT_TRUE(client.ok()) << client.status();
  std::string gone;
  {
    auto server = PeerTransport::Create(Loopback(GetParam()), EchoAck);
    ASSERT_TRUE(server.ok());
    gone = Addr(**server);
  }
  peer::Message m;
  m.type = peer::MsgType::kDirAdd;
  m.body = peer::DirUpdate{"ns", "n", {}};
  const absl::Time t0 = absl::Now();
  auto reply = (*client)->Call(gone, m, absl::Seconds(3));
  EXPECT_FALSE(reply.ok());
  EXPECT_LT(absl::Now() - t0, absl::Seconds(10));

  // A peer that never answers: the call fails at its deadline.
  absl::Notification release;
  auto slow = PeerTransport::Create(Loopback(GetParam()), [&](const peer::Message&) {
    release.WaitForNotificationWithTimeout(absl::Seconds(20));
    return std::optional<peer::Message>();
  });
  ASSERT_TRUE(slow.ok());
  auto late = (*client)->Call(Addr(**slow), m, absl::Milliseconds(300));
  EXPECT_EQ(late.status().code(), absl::StatusCode::kDeadlineExceeded) << late.status();
  release.Notify();
}

TEST_P(PeerTransportTest, MalformedMessageDisconnectsThatPeerOnly) {
  auto server = PeerTransport::Create(Loopback(GetParam()), EchoAck);
  ASSERT_TRUE(server.ok());
  auto good = PeerTransport::Create(Loopback(GetParam()), EchoAck);
  auto bad = PeerTransport::Create(Loopback(GetParam()), EchoAck);
  ASSERT_TRUE(good.ok() && bad.ok());
  peer::Message m;
  m.type = peer::MsgType::kDirAdd;
  m.body = peer::DirUpdate{"ns", "n", {{5, 6}}};
  ASSERT_TRUE((*bad)->Call(Addr(**server), m, absl::Seconds(10)).ok());
  // A DirAdd whose id count claims more ids than the message holds.
  peer::Message forged = m;
  forged.type = peer::MsgType::kDirQuery;
  forged.body = peer::DirQuery{"ns", {{7, 8}}};
  std::string bytes = *peer::Encode(forged);
  const uint32_t lie = 4000;
  std::memcpy(bytes.data() + peer::kHeaderBytes + 2 + 2, &lie, sizeof(lie));
  ASSERT_FALSE(peer::Decode(bytes).ok());
  // Send the raw bytes through a DirQuery call whose encoding we replace: the server drops and
  // disconnects; the call fails rather than hanging.
  auto r = (*bad)->CallRawForTest(Addr(**server), bytes, absl::Seconds(5));
  EXPECT_FALSE(r.ok());
  EXPECT_GE((*server)->Counters().malformed, 1u);
  EXPECT_GE((*server)->Counters().disconnects, 1u);
  // Everyone else is still served.
  auto ok = (*good)->Call(Addr(**server), m, absl::Seconds(10));
  EXPECT_TRUE(ok.ok()) << ok.status();
}

TEST_P(PeerTransportTest, PeerDyingMidTransferFailsCleanly) {
  // A large get from a peer that goes away while it runs: Get returns (an error, or OK if it
  // won the race), and nothing lands in the destination after it returned.
  constexpr size_t kBytes = 64 << 20;
  std::vector<std::byte> exported(kBytes, std::byte{0x5a});
  std::vector<std::byte> landing(kBytes, std::byte{0});
  auto client = PeerTransport::Create(Loopback(GetParam()), EchoAck);
  ASSERT_TRUE(client.ok());
  auto local = (*client)->Register(landing.data(), landing.size());
  ASSERT_TRUE(local.ok());
  auto server = PeerTransport::Create(Loopback(GetParam()), EchoAck);
  ASSERT_TRUE(server.ok());
  auto region = (*server)->Register(exported.data(), exported.size());
  ASSERT_TRUE(region.ok());
  const std::string addr = Addr(**server);
  const std::string rkey = (*region)->packed_rkey();
  absl::Status got;
  std::thread reader([&] {
    got = (*client)->Get(addr, reinterpret_cast<uint64_t>(exported.data()), rkey, **local, 0,
                         kBytes, absl::Seconds(20));
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  server->reset();  // the peer goes away (its endpoints close under the transfer)
  reader.join();
  std::printf("get after the peer left: %s\n", got.ToString().c_str());
  const std::vector<std::byte> after = landing;
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_EQ(std::memcmp(after.data(), landing.data(), kBytes), 0) << "bytes landed after Get";
  local->reset();
  region->reset();
}

TEST_P(PeerTransportTest, BatchOfGetsIsWaitedForGroupByGroup) {
  // Eight 256 KiB "pages", each read in four pieces straight into unregistered memory.
  constexpr size_t kPage = 256 << 10, kPages = 8, kPieces = 4;
  std::vector<std::byte> exported(kPage * kPages);
  const uint64_t seed = std::random_device{}();
  std::printf("seed %llu\n", static_cast<unsigned long long>(seed));
  std::mt19937_64 rng(seed);
  for (auto& b : exported) b = static_cast<std::byte>(rng());
  auto server = PeerTransport::Create(Loopback(GetParam()), EchoAck);
  auto client = PeerTransport::Create(Loopback(GetParam()), EchoAck);
  ASSERT_TRUE(server.ok() && client.ok());
  auto region = (*server)->Register(exported.data(), exported.size());
  ASSERT_TRUE(region.ok());
  std::vector<std::byte> landing(exported.size());
  std::vector<RemoteRead> reads;
  for (uint32_t p = 0; p < kPages; ++p) {
    // Pages land in reverse order, so a mix-up of groups and offsets shows.
    std::byte* dst = landing.data() + (kPages - 1 - p) * kPage;
    for (size_t k = 0; k < kPieces; ++k) {
      const size_t off = p * kPage + k * (kPage / kPieces);
      reads.push_back(RemoteRead{reinterpret_cast<uint64_t>(exported.data()) + off, 0,
                                 dst + k * (kPage / kPieces), kPage / kPieces, p, nullptr});
    }
  }
  auto batch = (*client)->StartGets(Addr(**server), {(*region)->packed_rkey()}, reads, kPages,
                                    absl::Seconds(10));
  ASSERT_TRUE(batch.ok()) << batch.status();
  for (uint32_t p = 0; p < kPages; ++p) {
    ASSERT_TRUE((*batch)->Wait(p).ok()) << p;
    EXPECT_EQ(
        std::memcmp(landing.data() + (kPages - 1 - p) * kPage, exported.data() + p * kPage, kPage),
        0)
        << "page " << p;
  }
  batch->reset();
  // A read naming a group or key the batch does not have is refused before anything moves.
  reads[0].rkey_index = 1;
  EXPECT_FALSE(
      (*client)
          ->StartGets(Addr(**server), {(*region)->packed_rkey()}, reads, kPages, absl::Seconds(1))
          .ok());
  region->reset();
}

TEST_P(PeerTransportTest, PeersWithoutTheSecretAreRefused) {
  auto secured = [&](const std::string& secret) {
    PeerTransportOptions o = Loopback(GetParam());
    o.secret = secret;
    return PeerTransport::Create(o, EchoAck);
  };
  auto server = secured("cluster-secret-1");
  auto good = secured("cluster-secret-1");
  auto wrong = secured("cluster-secret-2");
  auto none = PeerTransport::Create(Loopback(GetParam()), EchoAck);
  ASSERT_TRUE(server.ok() && good.ok() && wrong.ok() && none.ok());
  peer::Message m;
  m.type = peer::MsgType::kDirAdd;
  m.body = peer::DirUpdate{"ns", "node-b", {{1, 2}}};
  auto ok = (*good)->Call(Addr(**server), m, absl::Seconds(10));
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(std::get<peer::Ack>(ok->body).error, "ns/node-b/1");
  // No secret: its first message is not a handshake; the server refuses and disconnects it.
  auto r1 = (*none)->Call(Addr(**server), m, absl::Seconds(3));
  EXPECT_FALSE(r1.ok());
  // Counters are published by the progress thread after the turn that failed the call.
  auto refused = [](PeerTransport& t) {
    for (int i = 0; i < 100 && t.Counters().auth_refused == 0; ++i)
      absl::SleepFor(absl::Milliseconds(20));
    return t.Counters().auth_refused;
  };
  EXPECT_GE(refused(**server), 1u);
  // Another secret: the server's challenge does not verify; the connector refuses the server.
  auto r2 = (*wrong)->Call(Addr(**server), m, absl::Seconds(3));
  EXPECT_EQ(r2.status().code(), absl::StatusCode::kPermissionDenied) << r2.status();
  EXPECT_NE(r2.status().message().find("authentication"), std::string::npos) << r2.status();
  EXPECT_GE(refused(**wrong), 1u);
  // The peer that knows the secret is still served.
  EXPECT_TRUE((*good)->Call(Addr(**server), m, absl::Seconds(10)).ok());
}

INSTANTIATE_TEST_SUITE_P(Transports, PeerTransportTest, ::testing::Values("tcp", "sm,tcp"),
                         [](const auto& p) { return p.index == 0 ? "tcp" : "sm"; });

}  // namespace
}  // namespace kvtier
