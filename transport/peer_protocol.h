// The peer protocol: control messages between kvtierd nodes (directory updates and queries, page
// fetch requests and their leases), in a compact little-endian binary format. Page bytes never
// travel in these messages: they move by RMA get from registered memory
// (transport/peer_transport.h).
//
// Every message is a fixed 24-byte header followed by its body:
//   u32 magic "KVTP" | u16 version | u16 type | u64 request_id | u32 body_bytes | u32 reserved (0)
// Strings are u16 length + bytes; 128-bit object ids are two u64 (hi, lo). A reply carries the
// request_id of its request. Decode checks every length against Limits before it reads or
// allocates, so a peer cannot make a node read out of bounds or reserve unbounded memory; a
// message that does not decode is the sender's fault and the transport disconnects it.
//
// The transport knows objects and namespaces by name and 128-bit id only, not pages.
// Pure functions; callable from any thread.
#pragma once

#include <cstdint>
#include <string>
#include <variant>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace kvtier::peer {

inline constexpr uint32_t kMagic = 0x5054564b;  // "KVTP" read little-endian
inline constexpr uint16_t kVersion = 2;
inline constexpr size_t kHeaderBytes = 24;

// Bounds every decoded message respects; anything larger is malformed.
struct Limits {
  // Largest whole message (header + body). Default 1 MiB: 4096 ids with their holders fit.
  uint32_t max_message_bytes = 1 << 20;
  uint32_t max_ids = 4096;          // ids in one directory message
  uint32_t max_name_bytes = 256;    // namespace and node names
  uint32_t max_holders = 16;        // holders listed per id in a query reply
  uint32_t max_rkey_bytes = 4096;   // a packed UCX remote key
  uint32_t max_error_bytes = 1024;  // an error message
  uint32_t max_rkeys = 8;           // remote keys in one batch reply (one per lent region)
};

enum class MsgType : uint16_t {
  kDirAdd = 1,         // DirUpdate: `holder` now holds these ids
  kDirRemove = 2,      // DirUpdate: `holder` no longer holds these ids
  kDirQuery = 3,       // DirQuery -> DirQueryReply
  kDirQueryReply = 4,  // reply
  kFetch = 5,          // Fetch -> FetchReply
  kFetchReply = 6,     // reply
  kRelease = 7,        // Release: the fetch lease is over (one-way)
  kAck = 8,            // reply to a DirAdd/DirRemove/Push
  kFetchBatch = 9,     // FetchBatch -> FetchBatchReply: many objects, one lease
  kFetchBatchReply = 10,
  kPush = 11,  // Push -> Ack: the receiver is asked to fetch these ids from `holder` and keep them
  // Peer authentication (a shared cluster secret), first on every connection when it is on:
  kAuthHello = 12,      // connector -> acceptor: AuthHello (its nonce)
  kAuthChallenge = 13,  // acceptor -> connector: AuthChallenge (its nonce, its proof)
  kAuthProof = 14,      // connector -> acceptor: AuthProof
};
bool IsReply(MsgType t);
absl::string_view MsgTypeName(MsgType t);

struct ObjectId {
  uint64_t hi = 0;
  uint64_t lo = 0;
  friend bool operator==(const ObjectId&, const ObjectId&) = default;
};

struct DirUpdate {
  std::string ns;
  std::string holder;  // node id
  std::vector<ObjectId> ids;
};
struct DirQuery {
  std::string ns;
  std::vector<ObjectId> ids;
};
struct DirQueryReply {
  std::vector<std::vector<std::string>> holders;  // per queried id, in query order
};
struct Fetch {
  std::string ns;
  ObjectId id;
};
struct FetchReply {
  int32_t code = 0;  // absl::StatusCode; 0: the object is readable at remote_addr
  ObjectId id;
  uint64_t bytes = 0;
  uint64_t checksum = 0;
  uint64_t remote_addr = 0;
  uint64_t lease = 0;            // hand back with Release once read
  uint32_t object_class = 0;     // opaque to the transport (the daemon sends the page class)
  uint32_t object_position = 0;  // opaque to the transport (the page's index in its sequence)
  std::string rkey;              // packed UCX remote key of the region holding it
  std::string error;
};
struct Release {
  uint64_t lease = 0;
};
// FetchBatch::flags: the requester maps the holder's shared lend region (it is on the same host
// and UCX reaches it by shared memory), so the holder should copy pages into that region rather
// than lend them in place: a get from it is then a memcpy (from registered memory, over a
// shared-memory endpoint, UCX emulates the get with active messages).
inline constexpr uint32_t kFetchLendShared = 1;
// FetchBatchReply::shared_rkey_index when the holder has no shared lend region.
inline constexpr uint32_t kNoRkey = 0xffffffff;
struct FetchBatch {
  std::string ns;
  std::vector<ObjectId> ids;
  uint32_t flags = 0;  // kFetch* bits; unknown bits are ignored
};
// One object of a FetchBatchReply; its bytes are at remote_addr under rkeys[rkey_index].
struct FetchEntry {
  int32_t code = 0;  // absl::StatusCode; 0: readable
  ObjectId id;
  uint64_t bytes = 0;
  uint64_t checksum = 0;
  uint64_t remote_addr = 0;
  uint32_t rkey_index = 0;
  uint32_t object_class = 0;
  uint32_t object_position = 0;
  friend bool operator==(const FetchEntry&, const FetchEntry&) = default;
};
struct FetchBatchReply {
  uint64_t lease = 0;  // one lease for every readable entry; hand back with Release
  std::vector<std::string> rkeys;
  std::vector<FetchEntry> entries;  // in request order
  // Which of rkeys is the holder's shared lend region (UCX-allocated: peers on its host map it
  // and may then ask with kFetchLendShared), or kNoRkey.
  uint32_t shared_rkey_index = kNoRkey;
};
struct Push {
  std::string ns;
  std::string holder;  // node id of the sender, which holds the ids now
  std::vector<ObjectId> ids;
};
struct Ack {
  int32_t code = 0;
  std::string error;
};

// The handshake: each side proves it knows the secret with an HMAC over both nonces (so a
// recorded handshake does not replay on another connection).
struct AuthHello {
  ObjectId nonce;
};
struct AuthChallenge {
  ObjectId nonce;
  std::string mac;  // HMAC-SHA256(secret, "kvtier-acceptor" | connector nonce | acceptor nonce)
};
struct AuthProof {
  std::string mac;  // HMAC-SHA256(secret, "kvtier-connector" | acceptor nonce | connector nonce)
};

using Body = std::variant<DirUpdate, DirQuery, DirQueryReply, Fetch, FetchReply, Release, Ack,
                          FetchBatch, FetchBatchReply, Push, AuthHello, AuthChallenge, AuthProof>;

struct Message {
  MsgType type = MsgType::kAck;
  uint64_t request_id = 0;
  Body body = Ack{};
};

// The header alone (to route a reply, or to name the message in a log line).
struct Header {
  MsgType type;
  uint64_t request_id;
  uint32_t body_bytes;
};
absl::StatusOr<Header> DecodeHeader(absl::string_view bytes);

// Encodes `m`; its body alternative must match its type (checked: InvalidArgument otherwise).
absl::StatusOr<std::string> Encode(const Message& m);
// Decodes one whole message; every failure names what was wrong and the limit.
absl::StatusOr<Message> Decode(absl::string_view bytes, const Limits& limits = {});

}  // namespace kvtier::peer
