// ReplyChannel on a real socketpair: a reply never waits for the peer, queued replies go out in
// order (descriptors with them) once the peer reads, and a peer that never reads is cut off at
// the limit.
#include "daemon/reply_channel.h"

#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <string>

#include "absl/strings/str_cat.h"
#include "base/seqpacket.h"
#include "gtest/gtest.h"

namespace kvtier {
namespace {

struct Pair {
  std::shared_ptr<ReplyChannel> channel;
  UniqueFd peer;
};

Pair MakePair(size_t max_pending_bytes) {
  int fds[2];
  EXPECT_EQ(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, fds), 0);
  UniqueFd ours(fds[0]);
  absl::StatusOr<std::shared_ptr<ReplyChannel>> c =
      ReplyChannel::Create(std::move(ours), max_pending_bytes);
  EXPECT_TRUE(c.ok()) << c.status();
  return Pair{*std::move(c), UniqueFd(fds[1])};
}

bool Readable(int fd) {
  pollfd p{fd, POLLIN, 0};
  return ::poll(&p, 1, 0) == 1;
}

TEST(ReplyChannelTest, QueuesWhatThePeerHasNotReadAndSendsItInOrderLater) {
  Pair p = MakePair(64 << 20);
  const std::string payload(200, 'r');
  int sent = 0;
  // Fill the socket: the send that would block returns at once and queues instead.
  while (!p.channel->pending()) {
    p.channel->Send(absl::StrCat(sent, ":", payload), -1);
    ++sent;
    ASSERT_LT(sent, 1 << 20) << "the socket never filled";
  }
  EXPECT_TRUE(Readable(p.channel->wake_fd())) << "queuing must wake the connection thread";
  p.channel->ClearWake();
  UniqueFd memfd(::memfd_create("attached", MFD_CLOEXEC));
  p.channel->Send(absl::StrCat(sent, ":", payload), memfd.get());  // queued with a duplicate
  ++sent;
  memfd.Reset();
  int received = 0;
  bool fd_seen = false;
  std::string buffer;
  while (received < sent) {
    absl::StatusOr<Datagram> d = ReceiveDatagram(p.peer.get(), buffer, 4096, /*nonblocking=*/true);
    if (!d.ok()) {
      ASSERT_TRUE(IsWouldBlock(d.status())) << d.status();
      ASSERT_TRUE(p.channel->pending());
      p.channel->Flush();  // the peer made room
      continue;
    }
    const std::string text(buffer.data(), d->size);
    EXPECT_EQ(text.substr(0, text.find(':')), absl::StrCat(received)) << "out of order";
    if (received == sent - 1) {
      ASSERT_EQ(d->fds.size(), 1u);
      struct stat st {};
      EXPECT_EQ(::fstat(d->fds[0].get(), &st), 0);
      fd_seen = true;
    }
    ++received;
  }
  EXPECT_TRUE(fd_seen);
  EXPECT_FALSE(p.channel->pending());
  EXPECT_FALSE(p.channel->overflowed());
}

TEST(ReplyChannelTest, APeerThatNeverReadsIsCutOffAtTheLimit) {
  constexpr size_t kLimit = 16 << 10;
  Pair p = MakePair(kLimit);
  const std::string reply(512, 'x');
  int sends = 0;
  while (!p.channel->overflowed()) {
    p.channel->Send(reply, -1);
    ASSERT_LT(++sends, 1 << 20) << "never cut off";
  }
  EXPECT_TRUE(Readable(p.channel->wake_fd()));
  EXPECT_FALSE(p.channel->pending()) << "what was queued for it is dropped";
  // Nothing more is queued for it.
  p.channel->Send(reply, -1);
  EXPECT_FALSE(p.channel->pending());
}

TEST(ReplyChannelTest, APeerThatIsGoneDropsRepliesWithoutError) {
  Pair p = MakePair(1 << 20);
  p.peer.Reset();
  p.channel->Send("late", -1);
  EXPECT_FALSE(p.channel->pending());
  EXPECT_FALSE(p.channel->overflowed());
}

}  // namespace
}  // namespace kvtier
