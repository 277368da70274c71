// Unit tests of the NVMe tier: round trips through io_uring, restart through the RocksDB index
// (directly and inside a TieredStore), and each fault the tier must survive: bytes flipped on
// disk, EIO, short reads, ENOSPC, a lost index, a data directory that disappears.
#include "tiering/nvme/nvme_tier.h"

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "gtest/gtest.h"
#include "tests/unit/nvme/nvme_test_util.h"
#include "tiering/nvme/page_format.h"
#include "tiering/tiered_store.h"

namespace kvtier {
namespace {

using nvme_test::FillPage;
using nvme_test::PageFor;
using nvme_test::RandomKey;
using nvme_test::ScratchDir;
using nvme_test::TestSeed;

// Captures the tier's log lines.
struct LogSink {
  absl::Mutex mu;
  std::vector<std::string> lines;
  std::function<void(absl::string_view)> fn() {
    return [this](absl::string_view l) {
      absl::MutexLock lock(&mu);
      lines.emplace_back(l);
    };
  }
  bool Contains(absl::string_view needle) {
    absl::MutexLock lock(&mu);
    for (const std::string& l : lines) {
      if (absl::StrContains(l, needle)) return true;
    }
    return false;
  }
};

NvmeTierOptions Options(const ScratchDir& dir, uint64_t page_bytes, uint32_t slots, int dirs = 1) {
  NvmeTierOptions o;
  for (int i = 0; i < dirs; ++i) o.dirs.push_back(dir.sub(absl::StrCat("d", i)));
  o.index_dir = dir.sub("index");
  o.page_bytes = page_bytes;
  o.slots = slots;
  o.queue_depth = 4;
  o.log = [](absl::string_view) {};
  return o;
}

struct Page {
  uint32_t slot;
  PageKey key;
  std::vector<std::byte> bytes;
};

// Writes pages in one batch, each source split into uneven pieces (a worker's scattered layout).
void WriteAll(NvmeTier& tier, std::vector<Page>& pages, std::mt19937_64& rng,
              std::vector<absl::Status>* statuses = nullptr) {
  std::vector<std::vector<ConstBuffer>> pieces(pages.size());
  std::vector<SlotWrite> writes;
  for (size_t i = 0; i < pages.size(); ++i) {
    const std::vector<std::byte>& b = pages[i].bytes;
    size_t off = 0;
    while (off < b.size()) {
      const size_t n = std::min<size_t>(b.size() - off, 1 + rng() % (b.size() / 3 + 1));
      pieces[i].push_back(ConstBuffer{b.data() + off, n});
      off += n;
    }
    writes.push_back(
        SlotWrite{pages[i].slot,
                  PageMeta{pages[i].key, 7, PageClass::kSemantic, b.size(), PageKey{1, 2}, 2.5f, 4},
                  pieces[i]});
  }
  std::vector<absl::Status> results(writes.size());
  tier.Write(writes, absl::MakeSpan(results));
  if (statuses != nullptr) {
    *statuses = results;
    return;
  }
  for (const absl::Status& s : results) ASSERT_TRUE(s.ok()) << s;
}

absl::Status ReadOne(NvmeTier& tier, uint32_t slot, const PageKey& key,
                     std::vector<std::byte>& out) {
  // Two pieces, to exercise the scatter.
  const size_t half = out.size() / 2 + 1;
  const MutableBuffer dst[2] = {{out.data(), half}, {out.data() + half, out.size() - half}};
  absl::Status s;
  tier.Read({SlotRead{slot, PageMeta{key, 7, PageClass::kSemantic, out.size()}, dst}},
            absl::MakeSpan(&s, 1));
  return s;
}

std::vector<Page> MakePages(std::mt19937_64& rng, uint32_t count, uint64_t page_bytes,
                            uint32_t first_slot = 0) {
  std::vector<Page> pages;
  for (uint32_t i = 0; i < count; ++i) {
    const PageKey key = RandomKey(rng);
    pages.push_back(Page{first_slot + i, key, PageFor(key, page_bytes)});
  }
  return pages;
}

TEST(NvmeFormat, HeaderAndIndexRecordRoundTripAndRejectDamage) {
  std::mt19937_64 rng(TestSeed("HeaderAndIndexRecordRoundTripAndRejectDamage"));
  nvme::PageHeader h;
  h.cls = 2;
  h.ns = static_cast<uint32_t>(rng());
  h.key = RandomKey(rng);
  h.ns_salt = RandomKey(rng);
  h.length = rng() % (1 << 30);
  h.payload_crc = static_cast<uint32_t>(rng());
  std::vector<std::byte> block(nvme::kHeaderBlockBytes);
  nvme::EncodeHeader(h, block.data());
  std::optional<nvme::PageHeader> back = nvme::DecodeHeader(block.data());
  ASSERT_TRUE(back.has_value());
  EXPECT_EQ(back->key, h.key);
  EXPECT_EQ(back->ns_salt, h.ns_salt);
  EXPECT_EQ(back->length, h.length);
  EXPECT_EQ(back->payload_crc, h.payload_crc);
  block[rng() % sizeof(nvme::PageHeader)] ^= std::byte{0x04};
  EXPECT_FALSE(nvme::DecodeHeader(block.data()).has_value());

  nvme::IndexRecord r;
  r.file = 3;
  r.slot = static_cast<uint32_t>(rng());
  r.offset = rng();
  r.length = rng();
  r.payload_crc = static_cast<uint32_t>(rng());
  r.cls = 1;
  r.ns = 9;
  r.ns_salt = RandomKey(rng);
  r.written_unix_ms = rng();
  r.frequency = 3.25f;
  r.access_count = 17;
  std::string enc = nvme::EncodeIndexRecord(r);
  ASSERT_EQ(enc.size(), nvme::kIndexRecordBytes);
  std::optional<nvme::IndexRecord> rb = nvme::DecodeIndexRecord(enc);
  ASSERT_TRUE(rb.has_value());
  EXPECT_EQ(rb->slot, r.slot);
  EXPECT_EQ(rb->offset, r.offset);
  EXPECT_EQ(rb->ns_salt, r.ns_salt);
  EXPECT_EQ(rb->written_unix_ms, r.written_unix_ms);
  EXPECT_EQ(rb->frequency, r.frequency);
  EXPECT_EQ(rb->access_count, r.access_count);
  enc[rng() % enc.size()] ^= 0x20;
  EXPECT_FALSE(nvme::DecodeIndexRecord(enc).has_value());
  const PageKey k = RandomKey(rng);
  EXPECT_EQ(nvme::DecodeIndexKey(nvme::EncodeIndexKey(k)), k);
  // crc32c check value of "123456789" (RFC 3720).
  const char* digits = "123456789";
  EXPECT_EQ(nvme::Crc32c(reinterpret_cast<const std::byte*>(digits), 9), 0xE3069283u);
}

TEST(NvmeTier, RoundTripsRandomPagesAcrossDirectories) {
  std::mt19937_64 rng(TestSeed("RoundTripsRandomPagesAcrossDirectories"));
  ScratchDir dir("nvme-rt");
  // An odd page size: the payload is padded to 4 KiB on disk, never on the way back.
  const uint64_t page_bytes = 3 * 4096 + 123;
  auto tier = NvmeTier::Create(Options(dir, page_bytes, 40, /*dirs=*/3));
  ASSERT_TRUE(tier.ok()) << tier.status();
  std::vector<Page> pages = MakePages(rng, 40, page_bytes);  // more than queue_depth in one batch
  WriteAll(**tier, pages, rng);
  std::shuffle(pages.begin(), pages.end(), rng);
  for (const Page& p : pages) {
    std::vector<std::byte> out(page_bytes);
    ASSERT_TRUE(ReadOne(**tier, p.slot, p.key, out).ok());
    EXPECT_EQ(out, p.bytes) << "slot " << p.slot;
  }
  // The wrong key for a slot is a miss, not someone else's bytes.
  std::vector<std::byte> out(page_bytes);
  EXPECT_TRUE(absl::IsNotFound(ReadOne(**tier, pages[0].slot, RandomKey(rng), out)));
  // Many batched reads at once, more than the staging pool holds.
  std::vector<std::vector<std::byte>> outs(pages.size(), std::vector<std::byte>(page_bytes));
  std::vector<MutableBuffer> dsts;
  std::vector<SlotRead> reads;
  for (size_t i = 0; i < pages.size(); ++i) dsts.push_back({outs[i].data(), page_bytes});
  for (size_t i = 0; i < pages.size(); ++i) {
    reads.push_back(SlotRead{pages[i].slot, PageMeta{pages[i].key, 7, {}, page_bytes},
                             absl::MakeConstSpan(&dsts[i], 1)});
  }
  std::vector<absl::Status> results(reads.size());
  (*tier)->Read(reads, absl::MakeSpan(results));
  for (size_t i = 0; i < pages.size(); ++i) {
    ASSERT_TRUE(results[i].ok()) << results[i];
    EXPECT_EQ(outs[i], pages[i].bytes);
  }
  EXPECT_EQ((*tier)->counters().pages_written, 40u);
}

TEST(NvmeTier, SqpollRoundTrip) {
  std::mt19937_64 rng(TestSeed("SqpollRoundTrip"));
  ScratchDir dir("nvme-sqpoll");
  const uint64_t page_bytes = 16 * 1024;
  NvmeTierOptions o = Options(dir, page_bytes, 16);
  o.sqpoll = true;
  o.sqpoll_idle_ms = 10;
  auto tier = NvmeTier::Create(o);
  ASSERT_TRUE(tier.ok()) << tier.status();
  EXPECT_NE((*tier)->Describe().find("sqpoll"), std::string::npos) << (*tier)->Describe();
  std::vector<Page> pages = MakePages(rng, 16, page_bytes);
  WriteAll(**tier, pages, rng);
  for (const Page& p : pages) {
    std::vector<std::byte> out(page_bytes);
    ASSERT_TRUE(ReadOne(**tier, p.slot, p.key, out).ok());
    EXPECT_EQ(out, p.bytes);
  }
}

TEST(NvmeTier, RestartRecoversIndexedPagesAndForgetsReleasedOnes) {
  std::mt19937_64 rng(TestSeed("RestartRecoversIndexedPagesAndForgetsReleasedOnes"));
  ScratchDir dir("nvme-restart");
  const uint64_t page_bytes = 64 * 1024;
  std::vector<Page> pages = MakePages(rng, 12, page_bytes);
  {
    auto tier = NvmeTier::Create(Options(dir, page_bytes, 16, 2));
    ASSERT_TRUE(tier.ok()) << tier.status();
    WriteAll(**tier, pages, rng);
    (*tier)->Release(pages[3].slot);
    (*tier)->Release(pages[8].slot);
  }
  auto tier = NvmeTier::Create(Options(dir, page_bytes, 16, 2));
  ASSERT_TRUE(tier.ok()) << tier.status();
  std::vector<RecoveredPage> found;
  ASSERT_TRUE((*tier)->Recover([&](const RecoveredPage& p) { found.push_back(p); }).ok());
  ASSERT_EQ(found.size(), 10u);
  for (const RecoveredPage& r : found) {
    auto it =
        std::find_if(pages.begin(), pages.end(), [&](const Page& p) { return p.slot == r.slot; });
    ASSERT_NE(it, pages.end());
    EXPECT_NE(r.slot, pages[3].slot);
    EXPECT_NE(r.slot, pages[8].slot);
    EXPECT_EQ(r.meta.key, it->key);
    EXPECT_EQ(r.meta.ns_salt, (PageKey{1, 2}));
    EXPECT_EQ(r.meta.cls, PageClass::kSemantic);
    EXPECT_EQ(r.meta.frequency, 2.5f);
    EXPECT_EQ(r.meta.access_count, 4u);
    std::vector<std::byte> out(page_bytes);
    ASSERT_TRUE(ReadOne(**tier, r.slot, r.meta.key, out).ok());
    EXPECT_EQ(out, it->bytes);
  }
}

// Flips one random byte of a stored page on disk (header or payload): the read must fail, count
// it, and drop the page; its neighbours are untouched.
TEST(NvmeTier, ByteFlippedOnDiskIsDetectedOnRead) {
  std::mt19937_64 rng(TestSeed("ByteFlippedOnDiskIsDetectedOnRead"));
  ScratchDir dir("nvme-flip");
  const uint64_t page_bytes = 16 * 1024;
  std::vector<Page> pages = MakePages(rng, 6, page_bytes);
  auto tier = NvmeTier::Create(Options(dir, page_bytes, 8));
  ASSERT_TRUE(tier.ok()) << tier.status();
  WriteAll(**tier, pages, rng);
  for (int round = 0; round < 2; ++round) {
    const Page& victim = pages[round];
    // Round 0 hits the payload, round 1 the header fields.
    const uint64_t within = round == 0 ? nvme::kHeaderBlockBytes + rng() % page_bytes
                                       : rng() % sizeof(nvme::PageHeader);
    const uint64_t at = (*tier)->SlotFileOffset(victim.slot) + within;
    int fd = open((*tier)->SlotFilePath(victim.slot).c_str(), O_RDWR);
    ASSERT_GE(fd, 0);
    unsigned char b;
    ASSERT_EQ(pread(fd, &b, 1, static_cast<off_t>(at)), 1);
    b ^= static_cast<unsigned char>(1u << (rng() % 8));
    ASSERT_EQ(pwrite(fd, &b, 1, static_cast<off_t>(at)), 1);
    close(fd);
    std::vector<std::byte> out(page_bytes);
    const absl::Status s = ReadOne(**tier, victim.slot, victim.key, out);
    EXPECT_TRUE(absl::IsDataLoss(s)) << s;
    EXPECT_EQ((*tier)->counters().checksum_mismatches, uint64_t(round + 1));
    // Dropped: the next read is a plain miss.
    EXPECT_TRUE(absl::IsNotFound(ReadOne(**tier, victim.slot, victim.key, out)));
  }
  for (size_t i = 2; i < pages.size(); ++i) {
    std::vector<std::byte> out(page_bytes);
    ASSERT_TRUE(ReadOne(**tier, pages[i].slot, pages[i].key, out).ok());
    EXPECT_EQ(out, pages[i].bytes);
  }
}

// Pages in registered host memory move by fixed-buffer I/O straight to and from it; they are
// verified the same way.
TEST(NvmeTier, RegisteredMemoryRoundTripsAndIsVerified) {
  std::mt19937_64 rng(TestSeed("RegisteredMemoryRoundTripsAndIsVerified"));
  ScratchDir dir("nvme-reg");
  const uint64_t page_bytes = 32 * 1024;
  LogSink log;
  NvmeTierOptions o = Options(dir, page_bytes, 8);
  o.log = log.fn();
  auto tier = NvmeTier::Create(o);
  ASSERT_TRUE(tier.ok()) << tier.status();
  constexpr int kPages = 6;
  std::unique_ptr<std::byte, decltype(&std::free)> arena(
      static_cast<std::byte*>(std::aligned_alloc(4096, 2 * kPages * page_bytes)), &std::free);
  ASSERT_TRUE(
      (*tier)->RegisterHostMemory({MutableBuffer{arena.get(), 2 * kPages * page_bytes}}).ok());
  ASSERT_TRUE(log.Contains("registered 1 host region"));
  std::vector<PageKey> keys;
  std::vector<ConstBuffer> srcs(kPages);
  std::vector<SlotWrite> writes;
  for (int i = 0; i < kPages; ++i) {
    keys.push_back(RandomKey(rng));
    FillPage(keys[i], arena.get() + i * page_bytes, page_bytes);
    srcs[i] = ConstBuffer{arena.get() + i * page_bytes, page_bytes};
    writes.push_back(SlotWrite{static_cast<uint32_t>(i), PageMeta{keys[i], 1, {}, page_bytes},
                               absl::MakeConstSpan(&srcs[i], 1)});
  }
  std::vector<absl::Status> results(kPages);
  (*tier)->Write(writes, absl::MakeSpan(results));
  for (const absl::Status& st : results) ASSERT_TRUE(st.ok()) << st;
  // Flip a payload bit of page 2 on disk.
  {
    const uint64_t at = (*tier)->SlotFileOffset(2) + nvme::kHeaderBlockBytes + rng() % page_bytes;
    int fd = open((*tier)->SlotFilePath(2).c_str(), O_RDWR);
    ASSERT_GE(fd, 0);
    unsigned char b;
    ASSERT_EQ(pread(fd, &b, 1, static_cast<off_t>(at)), 1);
    b ^= 0x10;
    ASSERT_EQ(pwrite(fd, &b, 1, static_cast<off_t>(at)), 1);
    close(fd);
  }
  std::vector<MutableBuffer> dsts(kPages);
  std::vector<SlotRead> reads;
  for (int i = 0; i < kPages; ++i) {
    dsts[i] = MutableBuffer{arena.get() + (kPages + i) * page_bytes, page_bytes};
    reads.push_back(SlotRead{static_cast<uint32_t>(i), PageMeta{keys[i], 1, {}, page_bytes},
                             absl::MakeConstSpan(&dsts[i], 1)});
  }
  (*tier)->Read(reads, absl::MakeSpan(results));
  for (int i = 0; i < kPages; ++i) {
    if (i == 2) {
      EXPECT_TRUE(absl::IsDataLoss(results[i])) << results[i];
      continue;
    }
    ASSERT_TRUE(results[i].ok()) << results[i];
    EXPECT_EQ(std::memcmp(dsts[i].data, PageFor(keys[i], page_bytes).data(), page_bytes), 0);
  }
  EXPECT_EQ((*tier)->counters().zero_copy_pages, 2u * kPages);
  EXPECT_EQ((*tier)->counters().staged_pages, 0u);
}

// Rewrites chosen completions, like RocksDB's FaultInjectionTestFS.
class ScriptedFaults : public NvmeFaultInjector {
 public:
  int OnComplete(Op op, uint32_t, uint64_t offset, uint32_t length, int result) override {
    absl::MutexLock lock(&mu_);
    if (op == Op::kRead && offset == eio_read_offset_) return -EIO;
    if (op == Op::kRead && offset == short_read_offset_ && short_reads_left_ > 0) {
      --short_reads_left_;
      return short_aligned_ ? 4096 : static_cast<int>(length / 2 + 1);
    }
    if (op == Op::kWrite && enospc_writes_) return -ENOSPC;
    return result;
  }
  absl::Mutex mu_;
  uint64_t eio_read_offset_ ABSL_GUARDED_BY(mu_) = UINT64_MAX;
  uint64_t short_read_offset_ ABSL_GUARDED_BY(mu_) = UINT64_MAX;
  int short_reads_left_ ABSL_GUARDED_BY(mu_) = 0;
  bool short_aligned_ ABSL_GUARDED_BY(mu_) = true;
  bool enospc_writes_ ABSL_GUARDED_BY(mu_) = false;
};

TEST(NvmeTier, EioOnReadDropsThePageAndShortReadsAreContinued) {
  std::mt19937_64 rng(TestSeed("EioOnReadDropsThePageAndShortReadsAreContinued"));
  ScratchDir dir("nvme-eio");
  const uint64_t page_bytes = 32 * 1024;
  ScriptedFaults faults;
  NvmeTierOptions o = Options(dir, page_bytes, 8);
  o.fault_injector = &faults;
  auto tier = NvmeTier::Create(o);
  ASSERT_TRUE(tier.ok()) << tier.status();
  std::vector<Page> pages = MakePages(rng, 4, page_bytes);
  WriteAll(**tier, pages, rng);
  std::vector<std::byte> out(page_bytes);
  {
    absl::MutexLock lock(&faults.mu_);
    faults.eio_read_offset_ = (*tier)->SlotFileOffset(pages[0].slot);
    faults.short_read_offset_ = (*tier)->SlotFileOffset(pages[1].slot);
    faults.short_reads_left_ = 1;
  }
  EXPECT_TRUE(absl::IsUnavailable(ReadOne(**tier, pages[0].slot, pages[0].key, out)));
  EXPECT_TRUE(absl::IsNotFound(ReadOne(**tier, pages[0].slot, pages[0].key, out)));
  EXPECT_EQ((*tier)->counters().read_errors, 1u);
  // An aligned short read is continued where it stopped, bytes intact.
  ASSERT_TRUE(ReadOne(**tier, pages[1].slot, pages[1].key, out).ok());
  EXPECT_EQ(out, pages[1].bytes);
  EXPECT_EQ((*tier)->counters().short_ios, 1u);
  // A torn, unaligned short read cannot be continued under O_DIRECT: a miss, never torn bytes.
  {
    absl::MutexLock lock(&faults.mu_);
    faults.short_read_offset_ = (*tier)->SlotFileOffset(pages[2].slot);
    faults.short_reads_left_ = 1;
    faults.short_aligned_ = false;
  }
  EXPECT_FALSE(ReadOne(**tier, pages[2].slot, pages[2].key, out).ok());
  ASSERT_TRUE(ReadOne(**tier, pages[3].slot, pages[3].key, out).ok());
  EXPECT_EQ(out, pages[3].bytes);
}

TEST(NvmeTier, EnospcStopsAdmittingButKeepsServing) {
  std::mt19937_64 rng(TestSeed("EnospcStopsAdmittingButKeepsServing"));
  ScratchDir dir("nvme-enospc");
  const uint64_t page_bytes = 8 * 1024;
  ScriptedFaults faults;
  LogSink log;
  NvmeTierOptions o = Options(dir, page_bytes, 16);
  o.fault_injector = &faults;
  o.preallocate = false;  // sparse: a slot's blocks are allocated by its first write
  o.log = log.fn();
  auto tier = NvmeTier::Create(o);
  ASSERT_TRUE(tier.ok()) << tier.status();
  std::vector<Page> stored = MakePages(rng, 4, page_bytes);
  WriteAll(**tier, stored, rng);
  {
    absl::MutexLock lock(&faults.mu_);
    faults.enospc_writes_ = true;
  }
  std::vector<Page> more = MakePages(rng, 3, page_bytes, 8);
  std::vector<absl::Status> st;
  WriteAll(**tier, more, rng, &st);
  for (const absl::Status& s : st) EXPECT_TRUE(absl::IsResourceExhausted(s)) << s;
  EXPECT_FALSE((*tier)->admitting());
  EXPECT_TRUE(log.Contains("no longer admitting"));
  {
    absl::MutexLock lock(&faults.mu_);
    faults.enospc_writes_ = false;
  }
  // Refused without I/O now, and counted.
  WriteAll(**tier, more, rng, &st);
  for (const absl::Status& s : st) EXPECT_TRUE(absl::IsResourceExhausted(s)) << s;
  EXPECT_EQ((*tier)->counters().rejected_full, 3u);
  // Slots that already hold blocks can still be rewritten, and stored pages are served.
  for (const Page& p : stored) {
    std::vector<std::byte> out(page_bytes);
    ASSERT_TRUE(ReadOne(**tier, p.slot, p.key, out).ok());
    EXPECT_EQ(out, p.bytes);
  }
  std::vector<Page> again = MakePages(rng, 1, page_bytes, stored[0].slot);
  (*tier)->Release(stored[0].slot);
  WriteAll(**tier, again, rng);
}

// A full disk at run time stops admission; once space is there again (here: the injected
// ENOSPC stops, the real file system has room), admission resumes after a few refusals.
TEST(NvmeTier, AdmissionResumesOnceSpaceIsFreed) {
  std::mt19937_64 rng(TestSeed("AdmissionResumesOnceSpaceIsFreed"));
  ScratchDir dir("nvme-resume");
  const uint64_t page_bytes = 8 * 1024;
  ScriptedFaults faults;
  LogSink log;
  NvmeTierOptions o = Options(dir, page_bytes, 16);
  o.fault_injector = &faults;
  o.preallocate = false;
  o.log = log.fn();
  o.admission_retry_refusals = 3;
  auto tier = NvmeTier::Create(o);
  ASSERT_TRUE(tier.ok()) << tier.status();
  {
    absl::MutexLock lock(&faults.mu_);
    faults.enospc_writes_ = true;
  }
  std::vector<Page> first = MakePages(rng, 1, page_bytes, 0);
  std::vector<absl::Status> st;
  WriteAll(**tier, first, rng, &st);
  ASSERT_TRUE(absl::IsResourceExhausted(st[0])) << st[0];
  EXPECT_FALSE((*tier)->admitting());
  {
    absl::MutexLock lock(&faults.mu_);
    faults.enospc_writes_ = false;
  }
  // Refused twice without a look; the third refusal looks, finds room and writes.
  int refused = 0;
  for (uint32_t slot = 1; slot <= 3; ++slot) {
    std::vector<Page> one = MakePages(rng, 1, page_bytes, slot);
    WriteAll(**tier, one, rng, &st);
    refused += absl::IsResourceExhausted(st[0]) ? 1 : 0;
    if (slot == 3) {
      ASSERT_TRUE(st[0].ok()) << st[0];
      std::vector<std::byte> out(page_bytes);
      ASSERT_TRUE(ReadOne(**tier, one[0].slot, one[0].key, out).ok());
      EXPECT_EQ(out, one[0].bytes);
    }
  }
  EXPECT_EQ(refused, 2);
  EXPECT_TRUE((*tier)->admitting());
  EXPECT_TRUE(log.Contains("admitting new pages to the NVMe tier again"));
}

// A second process (here: a second tier) on the same directory finds the index locked: that is
// "busy", never "unreadable": the live index is not moved aside, and the first tier keeps it.
TEST(NvmeTier, ALockedIndexIsBusyNotCorrupt) {
  std::mt19937_64 rng(TestSeed("ALockedIndexIsBusyNotCorrupt"));
  ScratchDir dir("nvme-locked");
  const uint64_t page_bytes = 8 * 1024;
  std::vector<Page> pages = MakePages(rng, 5, page_bytes);
  auto first = NvmeTier::Create(Options(dir, page_bytes, 8));
  ASSERT_TRUE(first.ok()) << first.status();
  WriteAll(**first, pages, rng);
  LogSink log;
  NvmeTierOptions o = Options(dir, page_bytes, 8);
  o.log = log.fn();
  auto second = NvmeTier::Create(o);
  ASSERT_FALSE(second.ok()) << "two tiers opened one index";
  EXPECT_TRUE(absl::IsFailedPrecondition(second.status())) << second.status();
  EXPECT_NE(second.status().message().find("locked by another process"), std::string::npos)
      << second.status();
  EXPECT_FALSE(log.Contains("unreadable"));
  for (const auto& e : std::filesystem::directory_iterator(dir.path())) {
    EXPECT_EQ(e.path().filename().string().find("unreadable"), std::string::npos) << e.path();
  }
  first->reset();
  auto again = NvmeTier::Create(Options(dir, page_bytes, 8));
  ASSERT_TRUE(again.ok()) << again.status();
  int n = 0;
  ASSERT_TRUE((*again)->Recover([&](const RecoveredPage&) { ++n; }).ok());
  EXPECT_EQ(n, 5);
}

TEST(NvmeTier, MissingOrUnreadableIndexMeansAnEmptyTier) {
  std::mt19937_64 rng(TestSeed("MissingOrUnreadableIndexMeansAnEmptyTier"));
  ScratchDir dir("nvme-noindex");
  const uint64_t page_bytes = 8 * 1024;
  std::vector<Page> pages = MakePages(rng, 5, page_bytes);
  {
    auto tier = NvmeTier::Create(Options(dir, page_bytes, 8));
    ASSERT_TRUE(tier.ok());
    WriteAll(**tier, pages, rng);
  }
  // Unreadable: CURRENT names a manifest that is garbage.
  {
    std::string current = dir.sub("index") + "/CURRENT";
    FILE* f = std::fopen(current.c_str(), "w");
    ASSERT_NE(f, nullptr);
    std::fputs("MANIFEST-999999\n", f);
    std::fclose(f);
  }
  LogSink log;
  NvmeTierOptions o = Options(dir, page_bytes, 8);
  o.log = log.fn();
  {
    auto tier = NvmeTier::Create(o);
    ASSERT_TRUE(tier.ok()) << tier.status();
    int n = 0;
    ASSERT_TRUE((*tier)->Recover([&](const RecoveredPage&) { ++n; }).ok());
    EXPECT_EQ(n, 0);
    EXPECT_TRUE(log.Contains("unreadable"));
    // The tier works: the old bytes are simply unindexed slots.
    std::vector<Page> fresh = MakePages(rng, 2, page_bytes);
    WriteAll(**tier, fresh, rng);
  }
  // Missing altogether.
  std::filesystem::remove_all(dir.sub("index"));
  auto tier = NvmeTier::Create(o);
  ASSERT_TRUE(tier.ok()) << tier.status();
  int n = 0;
  ASSERT_TRUE((*tier)->Recover([&](const RecoveredPage&) { ++n; }).ok());
  EXPECT_EQ(n, 0);
  EXPECT_TRUE(log.Contains("no index at"));
}

TEST(NvmeTier, DataDirectoryThatDisappears) {
  std::mt19937_64 rng(TestSeed("DataDirectoryThatDisappears"));
  ScratchDir dir("nvme-gone");
  const uint64_t page_bytes = 8 * 1024;
  std::vector<Page> pages = MakePages(rng, 6, page_bytes);
  {
    auto tier = NvmeTier::Create(Options(dir, page_bytes, 6, 2));
    ASSERT_TRUE(tier.ok());
    WriteAll(**tier, pages, rng);
    // The open file outlives its directory: the running tier keeps serving and storing.
    std::filesystem::remove_all(dir.sub("d1"));
    for (const Page& p : pages) {
      std::vector<std::byte> out(page_bytes);
      ASSERT_TRUE(ReadOne(**tier, p.slot, p.key, out).ok());
      EXPECT_EQ(out, p.bytes);
    }
  }
  // At restart the directory is recreated empty and the pages that lived in it are dropped
  // (counted), the others recovered.
  auto tier = NvmeTier::Create(Options(dir, page_bytes, 6, 2));
  ASSERT_TRUE(tier.ok()) << tier.status();
  std::vector<RecoveredPage> found;
  ASSERT_TRUE((*tier)->Recover([&](const RecoveredPage& p) { found.push_back(p); }).ok());
  EXPECT_EQ(found.size(), 3u);
  EXPECT_EQ((*tier)->counters().recovery_dropped, 3u);
  for (const RecoveredPage& r : found) {
    EXPECT_EQ(r.slot % 2, 0u);
    std::vector<std::byte> out(page_bytes);
    ASSERT_TRUE(ReadOne(**tier, r.slot, r.meta.key, out).ok());
    EXPECT_EQ(out, pages[r.slot].bytes);
  }
}

// The done-when test: a TieredStore with the NVMe backend keeps its NVMe pages across a restart,
// and they find their namespace again by name even when namespace ids come out different.
TEST(NvmeTier, TieredStoreRestartKeepsNvmePages) {
  std::mt19937_64 rng(TestSeed("TieredStoreRestartKeepsNvmePages"));
  ScratchDir dir("nvme-store");
  const uint64_t page_bytes = 64 * 1024;
  StoreOptions so;
  so.page_bytes = page_bytes;
  so.dram.slots = 4;
  so.pin_dram = false;
  LogSink log;
  auto make = [&]() -> absl::StatusOr<std::unique_ptr<TieredStore>> {
    NvmeTierOptions o = Options(dir, page_bytes, 32, 2);
    o.log = log.fn();
    auto tier = NvmeTier::Create(o);
    if (!tier.ok()) return tier.status();
    StoreParts parts;
    parts.nvme = *std::move(tier);
    return TieredStore::Create(so, std::move(parts));
  };
  std::vector<std::pair<PageKey, std::vector<std::byte>>> pages;
  {
    auto store = make();
    ASSERT_TRUE(store.ok()) << store.status();
    auto ns = (*store)->AddNamespace("llama-3-8b/tenant-a", 0);
    ASSERT_TRUE(ns.ok());
    for (int i = 0; i < 20; ++i) {
      const PageKey key = RandomKey(rng);
      pages.emplace_back(key, PageFor(key, page_bytes));
      const ConstBuffer src{pages.back().second.data(), page_bytes};
      PutOptions po;
      po.position = 100 + i;
      if (i % 2 == 0) po.tier = Tier::kNvme;  // the rest go to DRAM and spill down
      auto t = (*store)->Put(*ns, key, absl::MakeConstSpan(&src, 1), po);
      ASSERT_TRUE(t.ok()) << t.status();
    }
    EXPECT_GE((*store)->Usage(Tier::kNvme).used_slots, 16u);
    // The store offered its DRAM pool (a memfd) for zero-copy moves; say whether it was taken.
    std::printf("[store] DRAM pool registered with the ring: %s\n",
                log.Contains("registered 1 host region") ? "yes" : "no (copy path)");
  }
  auto store = make();
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_GE((*store)->recovered_pages(), 16u);
  // Another namespace registers first: ids differ from the first run, salts do not.
  ASSERT_TRUE((*store)->AddNamespace("other-model/tenant-b", 0).ok());
  auto ns = (*store)->AddNamespace("llama-3-8b/tenant-a", 0);
  ASSERT_TRUE(ns.ok());
  int served = 0;
  for (const auto& [key, bytes] : pages) {
    std::vector<std::byte> out(page_bytes);
    const MutableBuffer dst{out.data(), page_bytes};
    auto t = (*store)->Get(*ns, key, absl::MakeConstSpan(&dst, 1));
    if (!t.ok()) {
      EXPECT_TRUE(absl::IsNotFound(t.status())) << t.status();  // was only in DRAM
      continue;
    }
    EXPECT_EQ(*t, Tier::kNvme);
    EXPECT_EQ(out, bytes);
    ++served;
  }
  EXPECT_EQ(served, static_cast<int>((*store)->recovered_pages()));
  EXPECT_GE(served, 16);
}

}  // namespace
}  // namespace kvtier
