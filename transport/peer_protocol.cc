#include "transport/peer_protocol.h"

#include <cstring>
#include <type_traits>

#include "absl/strings/str_cat.h"

namespace kvtier::peer {
namespace {

constexpr uint32_t kMaxMacBytes = 64;

class Writer {
 public:
  explicit Writer(std::string& out) : out_(out) {}
  template <typename T>
  void Put(T v) {
    static_assert(std::is_integral_v<T>);
    char b[sizeof(T)];
    std::memcpy(b, &v, sizeof(T));  // little-endian hosts only (x86-64, aarch64)
    out_.append(b, sizeof(T));
  }
  void Str(absl::string_view s) {
    Put(static_cast<uint16_t>(s.size()));
    out_.append(s.data(), s.size());
  }
  void Id(const ObjectId& id) {
    Put(id.hi);
    Put(id.lo);
  }
  void Ids(const std::vector<ObjectId>& ids) {
    Put(static_cast<uint32_t>(ids.size()));
    for (const ObjectId& id : ids) Id(id);
  }

 private:
  std::string& out_;
};

// Reads with a bounds check on every field; the first failure sticks and names the field.
class Reader {
 public:
  explicit Reader(absl::string_view in) : in_(in) {}
  template <typename T>
  bool Get(T& v, const char* what) {
    if (!ok()) return false;
    if (in_.size() - pos_ < sizeof(T)) return Fail(what, sizeof(T));
    std::memcpy(&v, in_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return true;
  }
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
  // A counted list of ids (Writer::Ids), at most `max`.
  bool Ids(std::vector<ObjectId>& ids, uint32_t max) {
    uint32_t n = 0;
    if (!Count(n, max, 16, "ids")) return false;
    ids.resize(n);
    for (ObjectId& id : ids) Id(id, "id");
    return ok();
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
  size_t pos_ = 0;
  absl::Status status_;
};

template <typename T>
bool Holds(const Body& b) {
  return std::holds_alternative<T>(b);
}

bool BodyMatches(MsgType t, const Body& b) {
  switch (t) {
    case MsgType::kDirAdd:
    case MsgType::kDirRemove:
      return Holds<DirUpdate>(b);
    case MsgType::kDirQuery:
      return Holds<DirQuery>(b);
    case MsgType::kDirQueryReply:
      return Holds<DirQueryReply>(b);
    case MsgType::kFetch:
      return Holds<Fetch>(b);
    case MsgType::kFetchReply:
      return Holds<FetchReply>(b);
    case MsgType::kRelease:
      return Holds<Release>(b);
    case MsgType::kAck:
      return Holds<Ack>(b);
    case MsgType::kFetchBatch:
      return Holds<FetchBatch>(b);
    case MsgType::kFetchBatchReply:
      return Holds<FetchBatchReply>(b);
    case MsgType::kPush:
      return Holds<Push>(b);
    case MsgType::kAuthHello:
      return Holds<AuthHello>(b);
    case MsgType::kAuthChallenge:
      return Holds<AuthChallenge>(b);
    case MsgType::kAuthProof:
      return Holds<AuthProof>(b);
  }
  return false;
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
  if (!BodyMatches(m.type, m.body)) {
    return absl::InvalidArgumentError(
        absl::StrCat("peer message of type ", MsgTypeName(m.type), " carries another body"));
  }
  std::string out;
  Writer w(out);
  w.Put(kMagic);
  w.Put(kVersion);
  w.Put(static_cast<uint16_t>(m.type));
  w.Put(m.request_id);
  w.Put(uint32_t{0});  // body_bytes, patched below
  w.Put(uint32_t{0});
  std::visit(
      [&](const auto& b) {
        using T = std::decay_t<decltype(b)>;
        if constexpr (std::is_same_v<T, DirUpdate> || std::is_same_v<T, Push>) {
          w.Str(b.ns);
          w.Str(b.holder);
          w.Ids(b.ids);
        } else if constexpr (std::is_same_v<T, DirQuery>) {
          w.Str(b.ns);
          w.Ids(b.ids);
        } else if constexpr (std::is_same_v<T, FetchBatch>) {
          w.Str(b.ns);
          w.Ids(b.ids);
          w.Put(b.flags);
        } else if constexpr (std::is_same_v<T, DirQueryReply>) {
          w.Put(static_cast<uint32_t>(b.holders.size()));
          for (const auto& hs : b.holders) {
            w.Put(static_cast<uint32_t>(hs.size()));
            for (const std::string& h : hs) w.Str(h);
          }
        } else if constexpr (std::is_same_v<T, Fetch>) {
          w.Str(b.ns);
          w.Id(b.id);
        } else if constexpr (std::is_same_v<T, FetchReply>) {
          w.Put(b.code);
          w.Id(b.id);
          w.Put(b.bytes);
          w.Put(b.checksum);
          w.Put(b.remote_addr);
          w.Put(b.lease);
          w.Put(b.object_class);
          w.Put(b.object_position);
          w.Str(b.rkey);
          w.Str(b.error);
        } else if constexpr (std::is_same_v<T, Release>) {
          w.Put(b.lease);
        } else if constexpr (std::is_same_v<T, Ack>) {
          w.Put(b.code);
          w.Str(b.error);
        } else if constexpr (std::is_same_v<T, FetchBatchReply>) {
          w.Put(b.lease);
          w.Put(static_cast<uint32_t>(b.rkeys.size()));
          for (const std::string& k : b.rkeys) w.Str(k);
          w.Put(b.shared_rkey_index);
          w.Put(static_cast<uint32_t>(b.entries.size()));
          for (const FetchEntry& e : b.entries) {
            w.Put(e.code);
            w.Id(e.id);
            w.Put(e.bytes);
            w.Put(e.checksum);
            w.Put(e.remote_addr);
            w.Put(e.rkey_index);
            w.Put(e.object_class);
            w.Put(e.object_position);
          }
        } else if constexpr (std::is_same_v<T, AuthHello>) {
          w.Id(b.nonce);
        } else if constexpr (std::is_same_v<T, AuthChallenge>) {
          w.Id(b.nonce);
          w.Str(b.mac);
        } else if constexpr (std::is_same_v<T, AuthProof>) {
          w.Str(b.mac);
        }
      },
      m.body);
  const uint32_t body = static_cast<uint32_t>(out.size() - kHeaderBytes);
  std::memcpy(out.data() + 16, &body, sizeof(body));
  return out;
}

absl::StatusOr<Header> DecodeHeader(absl::string_view bytes) {
  Reader r(bytes);
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
  Reader r(bytes.substr(kHeaderBytes));
  switch (h->type) {
    case MsgType::kDirAdd:
    case MsgType::kDirRemove: {
      DirUpdate u;
      if (r.Str(u.ns, limits.max_name_bytes, "namespace") &&
          r.Str(u.holder, limits.max_name_bytes, "holder")) {
        r.Ids(u.ids, limits.max_ids);
      }
      m.body = std::move(u);
      break;
    }
    case MsgType::kDirQuery: {
      DirQuery q;
      if (r.Str(q.ns, limits.max_name_bytes, "namespace")) r.Ids(q.ids, limits.max_ids);
      m.body = std::move(q);
      break;
    }
    case MsgType::kDirQueryReply: {
      DirQueryReply q;
      uint32_t n = 0;
      if (r.Count(n, limits.max_ids, 4, "holder lists")) {
        q.holders.resize(n);
        for (auto& hs : q.holders) {
          uint32_t k = 0;
          if (!r.Count(k, limits.max_holders, 2, "holders")) break;
          hs.resize(k);
          for (std::string& s : hs) r.Str(s, limits.max_name_bytes, "holder");
        }
      }
      m.body = std::move(q);
      break;
    }
    case MsgType::kFetch: {
      Fetch f;
      if (r.Str(f.ns, limits.max_name_bytes, "namespace")) r.Id(f.id, "id");
      m.body = std::move(f);
      break;
    }
    case MsgType::kFetchReply: {
      FetchReply f;
      if (r.Get(f.code, "code") && r.Id(f.id, "id") && r.Get(f.bytes, "bytes") &&
          r.Get(f.checksum, "checksum") && r.Get(f.remote_addr, "remote_addr") &&
          r.Get(f.lease, "lease") && r.Get(f.object_class, "object_class") &&
          r.Get(f.object_position, "object_position") &&
          r.Str(f.rkey, limits.max_rkey_bytes, "rkey")) {
        r.Str(f.error, limits.max_error_bytes, "error");
      }
      m.body = std::move(f);
      break;
    }
    case MsgType::kRelease: {
      Release rel;
      r.Get(rel.lease, "lease");
      m.body = rel;
      break;
    }
    case MsgType::kAck: {
      Ack a;
      if (r.Get(a.code, "code")) r.Str(a.error, limits.max_error_bytes, "error");
      m.body = std::move(a);
      break;
    }
    case MsgType::kFetchBatch: {
      FetchBatch f;
      if (r.Str(f.ns, limits.max_name_bytes, "namespace") && r.Ids(f.ids, limits.max_ids)) {
        r.Get(f.flags, "flags");
      }
      m.body = std::move(f);
      break;
    }
    case MsgType::kFetchBatchReply: {
      FetchBatchReply f;
      uint32_t nk = 0, n = 0;
      if (r.Get(f.lease, "lease") && r.Count(nk, limits.max_rkeys, 2, "rkeys")) {
        f.rkeys.resize(nk);
        for (std::string& k : f.rkeys) r.Str(k, limits.max_rkey_bytes, "rkey");
      }
      if (r.ok() && r.Get(f.shared_rkey_index, "shared_rkey_index") &&
          f.shared_rkey_index != kNoRkey && f.shared_rkey_index >= nk) {
        r.Invalid(absl::StrCat("shared_rkey_index ", f.shared_rkey_index, " is outside the ", nk,
                               " remote keys sent"));
      }
      constexpr size_t kEntryBytes = 4 + 16 + 8 + 8 + 8 + 4 + 4 + 4;
      if (r.ok() && r.Count(n, limits.max_ids, kEntryBytes, "entries")) {
        f.entries.resize(n);
        for (FetchEntry& e : f.entries) {
          if (!(r.Get(e.code, "code") && r.Id(e.id, "id") && r.Get(e.bytes, "bytes") &&
                r.Get(e.checksum, "checksum") && r.Get(e.remote_addr, "remote_addr") &&
                r.Get(e.rkey_index, "rkey_index") && r.Get(e.object_class, "object_class") &&
                r.Get(e.object_position, "object_position"))) {
            break;
          }
          if (e.rkey_index >= nk) {
            r.Invalid(absl::StrCat("rkey_index ", e.rkey_index, " is outside the ", nk,
                                   " remote keys sent"));
            break;
          }
        }
      }
      m.body = std::move(f);
      break;
    }
    case MsgType::kPush: {
      Push p;
      if (r.Str(p.ns, limits.max_name_bytes, "namespace") &&
          r.Str(p.holder, limits.max_name_bytes, "holder")) {
        r.Ids(p.ids, limits.max_ids);
      }
      m.body = std::move(p);
      break;
    }
    case MsgType::kAuthHello: {
      AuthHello a;
      r.Id(a.nonce, "nonce");
      m.body = a;
      break;
    }
    case MsgType::kAuthChallenge: {
      AuthChallenge a;
      if (r.Id(a.nonce, "nonce")) r.Str(a.mac, kMaxMacBytes, "mac");
      m.body = std::move(a);
      break;
    }
    case MsgType::kAuthProof: {
      AuthProof a;
      r.Str(a.mac, kMaxMacBytes, "mac");
      m.body = std::move(a);
      break;
    }
  }
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
