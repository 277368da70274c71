// The peer protocol's encoder and decoder: round trips, and every bound the decoder enforces.
#include "transport/peer_protocol.h"

#include <gtest/gtest.h>

#include <cstring>

namespace kvtier::peer {
namespace {

TEST(PeerProtocol, RoundTripsEveryType) {
  std::vector<Message> all;
  all.push_back({MsgType::kDirAdd, 7, DirUpdate{"ns/a", "node-1", {{1, 2}, {3, 4}}}});
  all.push_back({MsgType::kDirRemove, 8, DirUpdate{"ns/a", "node-1", {{1, 2}}}});
  all.push_back({MsgType::kDirQuery, 9, DirQuery{"ns/b", {{5, 6}}}});
  all.push_back({MsgType::kDirQueryReply, 9, DirQueryReply{{{"a", "b"}, {}}}});
  all.push_back({MsgType::kFetch, 10, Fetch{"ns", {11, 12}}});
  all.push_back({MsgType::kFetchReply, 10,
                 FetchReply{0, {11, 12}, 2 << 20, 99, 0x1000, 5, 2, 7, "rkey", ""}});
  all.push_back({MsgType::kRelease, 0, Release{5}});
  all.push_back({MsgType::kAck, 7, Ack{5, "not found"}});
  for (const Message& m : all) {
    absl::StatusOr<std::string> bytes = Encode(m);
    ASSERT_TRUE(bytes.ok());
    absl::StatusOr<Message> back = Decode(*bytes);
    ASSERT_TRUE(back.ok()) << MsgTypeName(m.type) << ": " << back.status();
    EXPECT_EQ(back->type, m.type);
    EXPECT_EQ(back->request_id, m.request_id);
    EXPECT_EQ(*Encode(*back), *bytes);
  }
}

TEST(PeerProtocol, RefusesWhatDoesNotFit) {
  const std::string good = *Encode({MsgType::kDirQuery, 1, DirQuery{"ns", {{1, 2}}}});
  // Every truncation fails cleanly.
  for (size_t n = 0; n < good.size(); ++n) EXPECT_FALSE(Decode(good.substr(0, n)).ok()) << n;
  // Trailing bytes (and a header that does not count them).
  EXPECT_FALSE(Decode(good + "x").ok());
  // An id count larger than the limit names the limit.
  Limits small;
  small.max_ids = 0;
  absl::Status s = Decode(good, small).status();
  EXPECT_NE(s.message().find("limit of 0"), std::string::npos) << s;
  // A name longer than allowed.
  small = Limits();
  small.max_name_bytes = 1;
  EXPECT_FALSE(Decode(good, small).ok());
  // Oversized whole message.
  small = Limits();
  small.max_message_bytes = 10;
  EXPECT_EQ(Decode(good, small).status().code(), absl::StatusCode::kResourceExhausted);
  // Wrong version, wrong magic, unknown type.
  for (size_t at : {0u, 4u, 6u}) {
    std::string bad = good;
    bad[at] ^= 0x7f;
    EXPECT_FALSE(Decode(bad).ok()) << at;
  }
  // A body that does not match its type cannot be encoded.
  EXPECT_FALSE(Encode({MsgType::kFetch, 1, Ack{}}).ok());
}

}  // namespace
}  // namespace kvtier::peer
