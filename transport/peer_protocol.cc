#include "transport/peer_protocol.h"

#include <cstring>
#include <type_traits>

#include "absl/strings/str_cat.h"

namespace kvtier::peer {
namespace {

constexpr uint32_t kMaxMacBytes = 64;

// The two sides of a body's field list (Fields below). A Writer appends each field; a Reader
// takes it back with a bounds check against the Limits. Both take a field with the same call, so
// one list per body says the wire order to both; the limit and the name are the Reader's.
using Limit = uint32_t Limits::*;

class Writer {
 public:
  static constexpr bool kReads = false;
  explicit Writer(std::string& out) : out_(out) {}
  template <typename T>
  bool Get(T v, const char* /*what*/) {
    static_assert(std::is_integral_v<T>);
    char b[sizeof(T)];
    std::memcpy(b, &v, sizeof(T));  // little-endian hosts only (x86-64, aarch64)
    out_.append(b, sizeof(T));
    return true;
  }
  bool Str(absl::string_view s, Limit /*max*/, const char* what) {
    Get(static_cast<uint16_t>(s.size()), what);
    out_.append(s.data(), s.size());
    return true;
  }
  bool Str(absl::string_view s, uint32_t /*max*/, const char* what) {
    return Str(s, Limit{}, what);
  }
  bool Id(const ObjectId& id, const char* what) { return Get(id.hi, what) && Get(id.lo, what); }
  // A counted list: the count, then each item by `item`.
  template <typename T, typename F>
  bool List(const std::vector<T>& v, Limit /*max*/, size_t /*min_item_bytes*/, const char* what,
            F&& item) {
    Get(static_cast<uint32_t>(v.size()), what);
    for (const T& x : v) item(x);
    return true;
  }
  bool Ids(const std::vector<ObjectId>& ids, Limit max) {
    return List(ids, max, 16, "ids", [&](const ObjectId& id) { return Id(id, "id"); });
  }
  bool ok() const { return true; }
  void Invalid(absl::string_view /*why*/) {}

 private:
  std::string& out_;
};

// Reads with a bounds check on every field; the first failure sticks and names the field.
class Reader {
 public:
  static constexpr bool kReads = true;
  Reader(absl::string_view in, const Limits& limits) : in_(in), limits_(limits) {}
  template <typename T>
  bool Get(T& v, const char* what) {
    if (!ok()) return false;
    if (in_.size() - pos_ < sizeof(T)) return Fail(what, sizeof(T));
    std::memcpy(&v, in_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return true;
  }
  bool Str(std::string& s, Limit max, const char* what) { return Str(s, limits_.*max, what); }
  bool Str(std::string& s, uint32_t max, const char* what) {
    uint16_t n = 0;
    if (!Get(n, what)) return false;
    if (n > max) {
      status_ = absl::InvalidArgumentError(
          absl::StrCat(what, " of ", n, " bytes exceeds the limit of ", max));
      return false;
    }
    if (in_.size() - pos_ < n) return Fail(what, n);
    s.assign(in_.data() + pos_, n);
    pos_ += n;
    return true;
  }
  bool Id(ObjectId& id, const char* what) { return Get(id.hi, what) && Get(id.lo, what); }
  // A counted list (Writer::List) of at most `max` items of at least `min_item_bytes` each, each
  // read by `item`, which returns false to stop.
  template <typename T, typename F>
  bool List(std::vector<T>& v, Limit max, size_t min_item_bytes, const char* what, F&& item) {
    uint32_t n = 0;
    if (!Count(n, limits_.*max, min_item_bytes, what)) return false;
    v.resize(n);
    for (T& x : v) {
      if (!item(x)) break;
    }
    return ok();
  }
  bool Ids(std::vector<ObjectId>& ids, Limit max) {
    return List(ids, max, 16, "ids", [&](ObjectId& id) { return Id(id, "id"); });
  }
  // A count of items of at least `min_item_bytes` each: bounded by `max` and by what is left, so
  // a forged count cannot make the decoder reserve memory the message does not back.
  bool Count(uint32_t& n, uint32_t max, size_t min_item_bytes, const char* what) {
    if (!Get(n, what)) return false;
    if (n > max) {
      status_ = absl::InvalidArgumentError(
          absl::StrCat(what, " count ", n, " exceeds the limit of ", max));
      return false;
    }
    if (static_cast<uint64_t>(n) * min_item_bytes > in_.size() - pos_) return Fail(what, n);
    return true;
  }
  void Invalid(absl::string_view why) {
    if (ok()) status_ = absl::InvalidArgumentError(why);
  }
  bool ok() const { return status_.ok(); }
  bool at_end() const { return pos_ == in_.size(); }
  size_t left() const { return in_.size() - pos_; }
  const absl::Status& status() const { return status_; }

 private:
  bool Fail(const char* what, size_t need) {
    status_ = absl::InvalidArgumentError(absl::StrCat("message truncated in ", what, ": needs ",
                                                      need, " more, ", in_.size() - pos_,
                                                      " bytes left at offset ", pos_));
    return false;
  }
  absl::string_view in_;
  const Limits& limits_;
  size_t pos_ = 0;
  absl::Status status_;
};

// A body as the side of IO sees it: const to a Writer, filled by a Reader.
template <typename B, typename IO>
using Side = std::conditional_t<IO::kReads, B, const B>;

// Each body's fields in wire order: the one list both Encode and Decode follow. A Reader stops at
// the first field that fails (the && chains); checks that only a reader makes go through Invalid.
template <typename IO>
void Fields(IO& io, Side<DirUpdate, IO>& b) {
  io.Str(b.ns, &Limits::max_name_bytes, "namespace") &&
      io.Str(b.holder, &Limits::max_name_bytes, "holder") && io.Ids(b.ids, &Limits::max_ids);
}
template <typename IO>
void Fields(IO& io, Side<Push, IO>& b) {
  io.Str(b.ns, &Limits::max_name_bytes, "namespace") &&
      io.Str(b.holder, &Limits::max_name_bytes, "holder") && io.Ids(b.ids, &Limits::max_ids);
}
template <typename IO>
void Fields(IO& io, Side<DirQuery, IO>& b) {
  io.Str(b.ns, &Limits::max_name_bytes, "namespace") && io.Ids(b.ids, &Limits::max_ids);
}
template <typename IO>
void Fields(IO& io, Side<FetchBatch, IO>& b) {
  io.Str(b.ns, &Limits::max_name_bytes, "namespace") && io.Ids(b.ids, &Limits::max_ids) &&
      io.Get(b.flags, "flags");
}
template <typename IO>
void Fields(IO& io, Side<DirQueryReply, IO>& b) {
  io.List(b.holders, &Limits::max_ids, 4, "holder lists", [&](auto& holders) {
    return io.List(holders, &Limits::max_holders, 2, "holders",
                   [&](auto& h) { return io.Str(h, &Limits::max_name_bytes, "holder"); });
  });
}
template <typename IO>
void Fields(IO& io, Side<Fetch, IO>& b) {
  io.Str(b.ns, &Limits::max_name_bytes, "namespace") && io.Id(b.id, "id");
}
template <typename IO>
void Fields(IO& io, Side<FetchReply, IO>& b) {
  io.Get(b.code, "code") && io.Id(b.id, "id") && io.Get(b.bytes, "bytes") &&
      io.Get(b.checksum, "checksum") && io.Get(b.remote_addr, "remote_addr") &&
      io.Get(b.lease, "lease") && io.Get(b.object_class, "object_class") &&
      io.Get(b.object_position, "object_position") &&
      io.Str(b.rkey, &Limits::max_rkey_bytes, "rkey") &&
      io.Str(b.error, &Limits::max_error_bytes, "error");
}
template <typename IO>
void Fields(IO& io, Side<Release, IO>& b) {
  io.Get(b.lease, "lease");
}
template <typename IO>
void Fields(IO& io, Side<Ack, IO>& b) {
  io.Get(b.code, "code") && io.Str(b.error, &Limits::max_error_bytes, "error");
}
template <typename IO>
void Fields(IO& io, Side<FetchBatchReply, IO>& b) {
  if (!(io.Get(b.lease, "lease") &&
        io.List(b.rkeys, &Limits::max_rkeys, 2, "rkeys",
                [&](auto& k) { return io.Str(k, &Limits::max_rkey_bytes, "rkey"); }) &&
        io.Get(b.shared_rkey_index, "shared_rkey_index"))) {
    return;
  }
  const size_t rkeys = b.rkeys.size();
  if (b.shared_rkey_index != kNoRkey && b.shared_rkey_index >= rkeys) {
    io.Invalid(absl::StrCat("shared_rkey_index ", b.shared_rkey_index, " is outside the ", rkeys,
                            " remote keys sent"));
    return;
  }
  constexpr size_t kEntryBytes = 4 + 16 + 8 + 8 + 8 + 4 + 4 + 4;
  io.List(b.entries, &Limits::max_ids, kEntryBytes, "entries", [&](auto& e) {
    if (!(io.Get(e.code, "code") && io.Id(e.id, "id") && io.Get(e.bytes, "bytes") &&
          io.Get(e.checksum, "checksum") && io.Get(e.remote_addr, "remote_addr") &&
          io.Get(e.rkey_index, "rkey_index") && io.Get(e.object_class, "object_class") &&
          io.Get(e.object_position, "object_position"))) {
      return false;
    }
    if (e.rkey_index >= rkeys) {
      io.Invalid(absl::StrCat("rkey_index ", e.rkey_index, " is outside the ", rkeys,
                              " remote keys sent"));
      return false;
    }
    return true;
  });
}
template <typename IO>
void Fields(IO& io, Side<AuthHello, IO>& b) {
  io.Id(b.nonce, "nonce");
}
template <typename IO>
void Fields(IO& io, Side<AuthChallenge, IO>& b) {
  io.Id(b.nonce, "nonce") && io.Str(b.mac, kMaxMacBytes, "mac");
}
template <typename IO>
void Fields(IO& io, Side<AuthProof, IO>& b) {
  io.Str(b.mac, kMaxMacBytes, "mac");
}

// The body each message type carries, empty.
Body EmptyBody(MsgType t) {
  switch (t) {
    case MsgType::kDirAdd:
    case MsgType::kDirRemove:
      return DirUpdate{};
    case MsgType::kDirQuery:
      return DirQuery{};
    case MsgType::kDirQueryReply:
      return DirQueryReply{};
    case MsgType::kFetch:
      return Fetch{};
    case MsgType::kFetchReply:
      return FetchReply{};
    case MsgType::kRelease:
      return Release{};
    case MsgType::kAck:
      return Ack{};
    case MsgType::kFetchBatch:
      return FetchBatch{};
    case MsgType::kFetchBatchReply:
      return FetchBatchReply{};
    case MsgType::kPush:
      return Push{};
    case MsgType::kAuthHello:
      return AuthHello{};
    case MsgType::kAuthChallenge:
      return AuthChallenge{};
    case MsgType::kAuthProof:
      return AuthProof{};
  }
  return Ack{};  // DecodeHeader refuses unknown types before a body is made
}

}  // namespace

bool IsReply(MsgType t) {
  return t == MsgType::kDirQueryReply || t == MsgType::kFetchReply || t == MsgType::kAck ||
         t == MsgType::kFetchBatchReply;
}

absl::string_view MsgTypeName(MsgType t) {
  switch (t) {
    case MsgType::kDirAdd:
      return "DirAdd";
    case MsgType::kDirRemove:
      return "DirRemove";
    case MsgType::kDirQuery:
      return "DirQuery";
    case MsgType::kDirQueryReply:
      return "DirQueryReply";
    case MsgType::kFetch:
      return "Fetch";
    case MsgType::kFetchReply:
      return "FetchReply";
    case MsgType::kRelease:
      return "Release";
    case MsgType::kAck:
      return "Ack";
    case MsgType::kFetchBatch:
      return "FetchBatch";
    case MsgType::kFetchBatchReply:
      return "FetchBatchReply";
    case MsgType::kPush:
      return "Push";
    case MsgType::kAuthHello:
      return "AuthHello";
    case MsgType::kAuthChallenge:
      return "AuthChallenge";
    case MsgType::kAuthProof:
      return "AuthProof";
  }
  return "(unknown)";
}

absl::StatusOr<std::string> Encode(const Message& m) {
  if (EmptyBody(m.type).index() != m.body.index()) {
    return absl::InvalidArgumentError(
        absl::StrCat("peer message of type ", MsgTypeName(m.type), " carries another body"));
  }
  std::string out;
  Writer w(out);
  w.Get(kMagic, "magic");
  w.Get(kVersion, "version");
  w.Get(static_cast<uint16_t>(m.type), "type");
  w.Get(m.request_id, "request_id");
  w.Get(uint32_t{0}, "body_bytes");  // patched below
  w.Get(uint32_t{0}, "reserved");
  std::visit([&](const auto& b) { Fields<Writer>(w, b); }, m.body);
  const uint32_t body = static_cast<uint32_t>(out.size() - kHeaderBytes);
  std::memcpy(out.data() + 16, &body, sizeof(body));
  return out;
}

absl::StatusOr<Header> DecodeHeader(absl::string_view bytes) {
  const Limits limits;
  Reader r(bytes, limits);
  uint32_t magic = 0, body = 0, reserved = 0;
  uint16_t version = 0, type = 0;
  uint64_t id = 0;
  if (!r.Get(magic, "header") || !r.Get(version, "header") || !r.Get(type, "header") ||
      !r.Get(id, "header") || !r.Get(body, "header") || !r.Get(reserved, "header")) {
    return r.status();
  }
  if (magic != kMagic) {
    return absl::InvalidArgumentError(absl::StrCat("bad magic 0x", absl::Hex(magic)));
  }
  if (version != kVersion) {
    return absl::InvalidArgumentError(
        absl::StrCat("peer protocol version ", version, "; this node speaks ", kVersion));
  }
  if (type < static_cast<uint16_t>(MsgType::kDirAdd) ||
      type > static_cast<uint16_t>(MsgType::kAuthProof)) {
    return absl::InvalidArgumentError(absl::StrCat("unknown message type ", type));
  }
  if (reserved != 0) return absl::InvalidArgumentError("reserved header word is not zero");
  if (body != bytes.size() - kHeaderBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "header says ", body, " body bytes, message has ", bytes.size() - kHeaderBytes));
  }
  return Header{static_cast<MsgType>(type), id, body};
}

absl::StatusOr<Message> Decode(absl::string_view bytes, const Limits& limits) {
  if (bytes.size() > limits.max_message_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat("peer message of ", bytes.size(),
                                                     " bytes exceeds max_message_bytes (",
                                                     limits.max_message_bytes, ")"));
  }
  absl::StatusOr<Header> h = DecodeHeader(bytes);
  if (!h.ok()) return h.status();
  Message m;
  m.type = h->type;
  m.request_id = h->request_id;
  Reader r(bytes.substr(kHeaderBytes), limits);
  m.body = EmptyBody(h->type);
  std::visit([&](auto& b) { Fields<Reader>(r, b); }, m.body);
  if (!r.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(MsgTypeName(h->type), ": ", r.status().message()));
  }
  if (!r.at_end()) {
    return absl::InvalidArgumentError(
        absl::StrCat(MsgTypeName(h->type), ": ", r.left(), " trailing bytes"));
  }
  return m;
}

}  // namespace kvtier::peer
