// The peer protocol's encoder and decoder: round trips, and every bound the decoder enforces.
#include "transport/peer_protocol.h"

#include <gtest/gtest.h>

#include <cstring>

#include "absl/strings/str_cat.h"

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
  all.push_back({MsgType::kFetchBatch, 11, FetchBatch{"ns", {{1, 2}, {3, 4}}}});
  all.push_back({MsgType::kFetchBatch, 11, FetchBatch{"ns", {{1, 2}}, kFetchLendShared}});
  all.push_back({MsgType::kFetchBatchReply, 11,
                 FetchBatchReply{9,
                                 {"dram-rkey", "staging-rkey"},
                                 {FetchEntry{0, {1, 2}, 2 << 20, 77, 0x2000, 1, 1, 3},
                                  FetchEntry{5, {3, 4}, 0, 0, 0, 0, 0, 0}},
                                 1}});
  all.push_back({MsgType::kPush, 12, Push{"ns", "node-a", {{7, 8}}}});
  all.push_back({MsgType::kAuthHello, 0, AuthHello{{1, 2}}});
  all.push_back({MsgType::kAuthChallenge, 0, AuthChallenge{{3, 4}, std::string(32, 'm')}});
  all.push_back({MsgType::kAuthProof, 0, AuthProof{std::string(32, 'p')}});
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
  // A batch entry that names a remote key the reply did not send.
  const std::string batch =
      *Encode({MsgType::kFetchBatchReply, 3,
               FetchBatchReply{1, {"k"}, {FetchEntry{0, {1, 2}, 8, 0, 0, 1}}}});
  s = Decode(batch).status();
  EXPECT_NE(s.message().find("rkey_index 1"), std::string::npos) << s;
  // A shared lend region that names a remote key the reply did not send.
  s = Decode(*Encode({MsgType::kFetchBatchReply, 3, FetchBatchReply{1, {"k"}, {}, 1}})).status();
  EXPECT_NE(s.message().find("shared_rkey_index 1"), std::string::npos) << s;
  // The flags round-trip.
  absl::StatusOr<Message> fb =
      Decode(*Encode({MsgType::kFetchBatch, 4, FetchBatch{"ns", {{1, 2}}, kFetchLendShared}}));
  ASSERT_TRUE(fb.ok()) << fb.status();
  EXPECT_EQ(std::get<FetchBatch>(fb->body).flags, kFetchLendShared);
  // A body that does not match its type cannot be encoded.
  EXPECT_FALSE(Encode({MsgType::kFetch, 1, Ack{}}).ok());
}

// The bytes on the wire, pinned: peers of one protocol version must agree on them whatever the
// encoder's code looks like (hex of Encode's output when this test was written).
TEST(PeerProtocol, TheWireFormatIsPinned) {
  auto hex = [](const std::string& b) {
    std::string out;
    for (unsigned char c : b) absl::StrAppend(&out, absl::Hex(c, absl::kZeroPad2));
    return out;
  };
  EXPECT_EQ(hex(*Encode({MsgType::kDirQueryReply, 9, DirQueryReply{{{"a", "b"}, {}}}})),
            "4b5654500200040009000000000000001200000000000000020000000200000001006101006200000000");
  EXPECT_EQ(
      hex(*Encode({MsgType::kFetchBatchReply, 11,
                   FetchBatchReply{9,
                                   {"dram-rkey", "staging-rkey"},
                                   {FetchEntry{0, {1, 2}, 2 << 20, 77, 0x2000, 1, 1, 3},
                                    FetchEntry{5, {3, 4}, 0, 0, 0, 0, 0, 0}},
                                   1}})),
      "4b56545002000a000b000000000000009d0000000000000009000000000000000200000009006472616d2d726b65"
      "790c0073746167696e672d726b657901000000020000000000000001000000000000000200000000000000000020"
      "00000000004d00000000000000002000000000000001000000010000000300000005000000030000000000000004"
      "00000000000000000000000000000000000000000000000000000000000000000000000000000000000000");
}

}  // namespace
}  // namespace kvtier::peer
