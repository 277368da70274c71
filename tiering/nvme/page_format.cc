#include "tiering/nvme/page_format.h"

#include <isa-l/crc.h>

#include <algorithm>
#include <climits>

namespace kvtier::nvme {
namespace {

// Fixed-width little-endian record: version(2) file(2) slot(4) offset(8) length(8) crc(4) cls(1)
// pad(3) ns(4) salt(16) written_unix_ms(8) frequency(4) access_count(4) record_crc(4).
constexpr size_t kRecordBytes = 2 + 2 + 4 + 8 + 8 + 4 + 1 + 3 + 4 + 16 + 8 + 4 + 4 + 4;
static_assert(kRecordBytes == kIndexRecordBytes);

template <typename T>
void Put(char*& p, T v) {
  std::memcpy(p, &v, sizeof(T));
  p += sizeof(T);
}
template <typename T>
T Get(const char*& p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  p += sizeof(T);
  return v;
}

}  // namespace

uint32_t Crc32cExtend(uint32_t crc, const std::byte* data, size_t size) {
  uint32_t state = ~crc;
  // crc32_iscsi takes an int length: feed very large payloads in chunks.
  while (size > 0) {
    const size_t n = std::min<size_t>(size, size_t{1} << 30);
    state = crc32_iscsi(const_cast<unsigned char*>(reinterpret_cast<const unsigned char*>(data)),
                        static_cast<int>(n), state);
    data += n;
    size -= n;
  }
  return ~state;
}

uint32_t Crc32c(const std::byte* data, size_t size) { return Crc32cExtend(0, data, size); }

void EncodeHeader(PageHeader h, std::byte* block) {
  h.magic = kPageMagic;
  h.version = kFormatVersion;
  h.header_crc = 0;
  h.header_crc = Crc32c(reinterpret_cast<const std::byte*>(&h), offsetof(PageHeader, header_crc));
  std::memset(block, 0, kHeaderBlockBytes);
  std::memcpy(block, &h, sizeof(h));
}

std::optional<PageHeader> DecodeHeader(const std::byte* block) {
  PageHeader h;
  std::memcpy(&h, block, sizeof(h));
  if (h.magic != kPageMagic || h.version != kFormatVersion) return std::nullopt;
  if (h.header_crc !=
      Crc32c(reinterpret_cast<const std::byte*>(&h), offsetof(PageHeader, header_crc))) {
    return std::nullopt;
  }
  return h;
}

void EncodeIndexKey(const PageKey& key, char* out) {
  // Big-endian so RocksDB's bytewise order equals PageKey order.
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>(key.hi >> (8 * (7 - i)));
  for (int i = 0; i < 8; ++i) out[8 + i] = static_cast<char>(key.lo >> (8 * (7 - i)));
}

std::string EncodeIndexKey(const PageKey& key) {
  std::string out(kIndexKeyBytes, '\0');
  EncodeIndexKey(key, out.data());
  return out;
}

std::optional<PageKey> DecodeIndexKey(absl::string_view bytes) {
  if (bytes.size() != 16) return std::nullopt;
  PageKey k;
  for (int i = 0; i < 8; ++i) k.hi = (k.hi << 8) | static_cast<uint8_t>(bytes[i]);
  for (int i = 8; i < 16; ++i) k.lo = (k.lo << 8) | static_cast<uint8_t>(bytes[i]);
  return k;
}

void EncodeIndexRecord(const IndexRecord& r, char* out) {
  char* p = out;
  Put(p, kFormatVersion);
  Put(p, r.file);
  Put(p, r.slot);
  Put(p, r.offset);
  Put(p, r.length);
  Put(p, r.payload_crc);
  Put(p, r.cls);
  std::memset(p, 0, 3);
  p += 3;
  Put(p, r.ns);
  Put(p, r.ns_salt.hi);
  Put(p, r.ns_salt.lo);
  Put(p, r.written_unix_ms);
  Put(p, r.frequency);
  Put(p, r.access_count);
  Put(p, Crc32c(reinterpret_cast<const std::byte*>(out), kRecordBytes - 4));
}

std::string EncodeIndexRecord(const IndexRecord& r) {
  std::string out(kRecordBytes, '\0');
  EncodeIndexRecord(r, out.data());
  return out;
}

std::optional<IndexRecord> DecodeIndexRecord(absl::string_view bytes) {
  if (bytes.size() != kRecordBytes) return std::nullopt;
  const char* p = bytes.data();
  uint32_t stored_crc;
  std::memcpy(&stored_crc, p + kRecordBytes - 4, 4);
  if (stored_crc != Crc32c(reinterpret_cast<const std::byte*>(p), kRecordBytes - 4)) {
    return std::nullopt;
  }
  IndexRecord r;
  r.version = Get<uint16_t>(p);
  if (r.version != kFormatVersion) return std::nullopt;
  r.file = Get<uint16_t>(p);
  r.slot = Get<uint32_t>(p);
  r.offset = Get<uint64_t>(p);
  r.length = Get<uint64_t>(p);
  r.payload_crc = Get<uint32_t>(p);
  r.cls = Get<uint8_t>(p);
  p += 3;
  r.ns = Get<uint32_t>(p);
  r.ns_salt.hi = Get<uint64_t>(p);
  r.ns_salt.lo = Get<uint64_t>(p);
  r.written_unix_ms = Get<uint64_t>(p);
  r.frequency = Get<float>(p);
  r.access_count = Get<uint32_t>(p);
  return r;
}

}  // namespace kvtier::nvme
