// On-disk formats of the NVMe tier: the header written in front of every page slot and the
// record kept for it in the RocksDB index. Both are fixed-size, little-endian (the only byte order
// this daemon runs on), and carry a format version so a later layout can refuse an older one
// instead of misreading it. Pure functions; callable from any thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>

#include "absl/strings/string_view.h"
#include "tiering/page_key.h"
#include "tiering/types.h"

namespace kvtier::nvme {

inline constexpr uint64_t kPageMagic = 0x3147'5041'5054'564bULL;  // "KVTPAPG1" little-endian
inline constexpr uint16_t kFormatVersion = 1;
// Payloads start one block after the slot start so both stay aligned for O_DIRECT.
inline constexpr uint64_t kHeaderBlockBytes = 4096;
inline constexpr uint64_t kBlockBytes = 4096;

inline constexpr uint64_t RoundUpToBlock(uint64_t n) {
  return (n + kBlockBytes - 1) / kBlockBytes * kBlockBytes;
}

// The first bytes of a slot's header block. The rest of the block is zero.
struct PageHeader {
  uint64_t magic = kPageMagic;
  uint16_t version = kFormatVersion;
  uint8_t cls = 0;
  uint8_t reserved0 = 0;
  uint32_t ns = 0;  // namespace id of the run that wrote it (informational)
  PageKey key;
  PageKey ns_salt;      // the namespace's salt: what survives a restart
  uint64_t length = 0;  // payload bytes
  uint32_t payload_crc = 0;
  uint32_t header_crc = 0;  // crc32c of every field above
};
static_assert(sizeof(PageHeader) == 64);

// crc32c (Castagnoli) via ISA-L's crc32_iscsi, seeded with ~0 and inverted at the end.
uint32_t Crc32c(const std::byte* data, size_t size);
// Continues a crc32c over another chunk: Crc32cExtend(Crc32c(a), b) == Crc32c(a ++ b).
uint32_t Crc32cExtend(uint32_t crc, const std::byte* data, size_t size);

// Writes `h` (with header_crc computed) into the first bytes of `block` and zeroes the rest.
void EncodeHeader(PageHeader h, std::byte* block);
// Decodes and checks magic, version and header_crc; nullopt when any of them is wrong.
std::optional<PageHeader> DecodeHeader(const std::byte* block);

// Value of one page in the RocksDB index (keyed by EncodeIndexKey(page key)).
struct IndexRecord {
  uint16_t version = kFormatVersion;
  uint16_t file = 0;
  uint32_t slot = 0;
  uint64_t offset = 0;  // byte offset of the slot in its file
  uint64_t length = 0;  // payload bytes
  uint32_t payload_crc = 0;
  uint8_t cls = 0;
  uint32_t ns = 0;
  PageKey ns_salt;
  // Stats snapshot at write time, for a policy that wants to warm-start its ranking.
  uint64_t written_unix_ms = 0;
  float frequency = 0;
  uint32_t access_count = 0;
};

inline constexpr size_t kIndexKeyBytes = 16;
inline constexpr size_t kIndexRecordBytes = 72;

// Fixed-size encoders writing into caller storage: the write path encodes one key and one record
// per page and allocates for neither.
void EncodeIndexKey(const PageKey& key, char* out);       // kIndexKeyBytes
void EncodeIndexRecord(const IndexRecord& r, char* out);  // kIndexRecordBytes
std::string EncodeIndexKey(const PageKey& key);
std::optional<PageKey> DecodeIndexKey(absl::string_view bytes);
std::string EncodeIndexRecord(const IndexRecord& r);
std::optional<IndexRecord> DecodeIndexRecord(absl::string_view bytes);

}  // namespace kvtier::nvme
