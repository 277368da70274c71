#include "tiering/nvme/nvme_tier.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <system_error>

#include "absl/strings/str_cat.h"
#include "base/errno_status.h"
#include "base/status_macros.h"
#include "tiering/nvme/index_db.h"
#include "tiering/nvme/io_ring.h"
#include "tiering/nvme/page_format.h"

namespace kvtier {
namespace nvme {

// Owns one slot file's descriptor.
struct SlotFile {
  SlotFile() = default;
  SlotFile(SlotFile&& o) noexcept
      : path(std::move(o.path)),
        fd(std::exchange(o.fd, -1)),
        created(o.created),
        allocated_slots(o.allocated_slots) {}
  SlotFile& operator=(SlotFile&&) = delete;
  ~SlotFile() {
    if (fd >= 0) close(fd);
  }
  std::string path;
  int fd = -1;
  bool created = false;          // did not exist at start: index entries naming it are stale
  uint32_t allocated_slots = 0;  // leading slots backed by allocated blocks (all, unless ENOSPC)
};

// What the tier knows about one slot. Only the thread the store handed the slot to touches it.
struct SlotState {
  PageKey key;
  uint64_t length = 0;
  uint32_t crc = 0;
  bool occupied = false;
  bool backed = false;  // its blocks are allocated: a write cannot hit ENOSPC
};

}  // namespace nvme

using nvme::IoRequest;
using nvme::IoWaiter;
using nvme::kHeaderBlockBytes;
using nvme::RoundUpToBlock;
using Op = NvmeFaultInjector::Op;

struct NvmeTier::Counters_ {
  std::atomic<uint64_t> pages_written{0}, pages_read{0}, bytes_written{0}, bytes_read{0},
      write_errors{0}, read_errors{0}, short_ios{0}, checksum_mismatches{0}, enospc{0},
      rejected_full{0}, recovered_pages{0}, recovery_dropped{0}, zero_copy_pages{0},
      staged_pages{0};
};

namespace {

void Bump(std::atomic<uint64_t>& c, uint64_t n = 1) { c.fetch_add(n, std::memory_order_relaxed); }

// Pages handed to the kernel per submit call while the rest of a batch is still being copied:
// small enough that the disk starts early, large enough to amortize the syscall.
constexpr size_t kSubmitChunk = 4;

template <typename Buffer>
absl::Status CheckIo(uint32_t slot, uint32_t slot_count, uint64_t page_bytes, uint64_t bytes,
                     absl::Span<const Buffer> bufs) {
  if (slot >= slot_count) {
    return absl::OutOfRangeError(
        absl::StrCat("slot ", slot, " out of range [0, ", slot_count, ")"));
  }
  if (bytes == 0 || bytes > page_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("page of ", bytes, " bytes does not fit a slot of ", page_bytes));
  }
  uint64_t total = 0;
  for (const Buffer& b : bufs) total += b.size;
  if (total != bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("buffers hold ", total, " bytes, page has ", bytes));
  }
  return absl::OkStatus();
}

// The tier's callers tell a full tier (ResourceExhausted) and a missing file (NotFound) from a
// failing device, which is every other errno (Unavailable: the store serves on without the
// tier), so this maps errno more coarsely than ErrnoStatus does; the message is the same.
absl::Status NvmeErrnoStatus(int err, absl::string_view what) {
  const std::string msg(ErrnoStatus(err, what).message());
  switch (err) {
    case ENOSPC:
    case EFBIG:
    case EDQUOT:
      return absl::ResourceExhaustedError(msg);
    case ENOENT:
      return absl::NotFoundError(msg);
    default:
      return absl::UnavailableError(msg);
  }
}

bool IsNoSpace(int err) { return err == ENOSPC || err == EFBIG || err == EDQUOT; }

uint64_t UnixMs() {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                   std::chrono::system_clock::now().time_since_epoch())
                                   .count());
}

// Drives a set of requests to completion: resubmits short transfers (O_DIRECT may return a
// block-aligned prefix) and calls `finish(id)` once per request when it is done or failed.
// `launch(outstanding, out)` fills `out` with new requests and says whether it has more (kChunk:
// call again right away; kBlocked: no staging buffer free, call again after completions).
enum class Launch { kDone, kChunk, kBlocked };
template <typename LaunchFn, typename Finish>
void Drive(nvme::IoRing& ring, IoWaiter& waiter, absl::Span<IoRequest> reqs,
           std::atomic<uint64_t>& short_ios, LaunchFn launch, Finish finish) {
  std::vector<IoRequest*> batch;
  batch.reserve(reqs.size());
  std::vector<uint32_t> done;
  done.reserve(reqs.size());
  size_t outstanding = 0;
  Launch more = Launch::kChunk;
  while (more != Launch::kDone || outstanding > 0) {
    if (more != Launch::kDone) {
      more = launch(outstanding, batch);
      outstanding += batch.size();
      ring.Submit(batch);
      batch.clear();
      if (more == Launch::kChunk) continue;
    }
    if (outstanding == 0) continue;
    waiter.Take(done);
    for (uint32_t id : done) {
      --outstanding;
      IoRequest& r = reqs[id];
      if (r.result > 0 && static_cast<uint32_t>(r.result) < r.length) {
        Bump(short_ios);
        if (r.result % nvme::kBlockBytes == 0) {
          nvme::Advance(r, static_cast<uint32_t>(r.result));
          batch.push_back(&r);
          continue;
        }
        r.result = -EIO;  // a torn, unaligned transfer cannot be continued under O_DIRECT
      } else if (r.result == 0 && r.length > 0) {
        r.result = -ENODATA;  // end of file where a slot should be
      }
      finish(id);
    }
    outstanding += batch.size();
    ring.Submit(batch);
    batch.clear();
  }
}

}  // namespace

NvmeTier::NvmeTier(const NvmeTierOptions& options)
    : options_(options),
      payload_disk_bytes_(RoundUpToBlock(options.page_bytes)),
      slot_disk_bytes_(kHeaderBlockBytes + RoundUpToBlock(options.page_bytes)),
      file_count_(static_cast<uint32_t>(options.dirs.size())),
      counters_(std::make_unique<Counters_>()) {}

NvmeTier::~NvmeTier() {
  // Members go in reverse order: the ring (and its reaper) before the buffers and files it uses.
}

absl::StatusOr<std::unique_ptr<NvmeTier>> NvmeTier::Create(const NvmeTierOptions& options) {
  if (options.dirs.empty()) return absl::InvalidArgumentError("nvme tier: no directories");
  if (options.dirs.size() > 0xffff) return absl::InvalidArgumentError("nvme tier: too many dirs");
  if (options.page_bytes == 0) return absl::InvalidArgumentError("nvme tier: page_bytes is 0");
  if (options.page_bytes + kHeaderBlockBytes > (uint64_t{1} << 31)) {
    return absl::InvalidArgumentError(absl::StrCat("nvme tier: page of ", options.page_bytes,
                                                   " bytes exceeds the 2 GiB single-I/O limit"));
  }
  if (options.slots == 0) return absl::InvalidArgumentError("nvme tier: slots is 0");
  if (options.queue_depth == 0 || options.queue_depth > 4096) {
    return absl::InvalidArgumentError(
        absl::StrCat("nvme tier: queue_depth ", options.queue_depth, " not in [1, 4096]"));
  }
  std::unique_ptr<NvmeTier> tier(new NvmeTier(options));
  RETURN_IF_ERROR(tier->Open());
  return tier;
}

void NvmeTier::Log(absl::string_view line) const {
  if (options_.log) {
    options_.log(line);
  } else {
    std::fprintf(stderr, "kvtier nvme: %.*s\n", static_cast<int>(line.size()), line.data());
  }
}

void NvmeTier::NoteNoSpace(absl::string_view what) {
  Bump(counters_->enospc);
  admitting_.store(false, std::memory_order_relaxed);
  if (!logged_no_space_.exchange(true)) {
    Log(absl::StrCat("out of space (", what,
                     "): no longer admitting new pages to the NVMe tier; stored pages are still "
                     "served"));
  }
}

bool NvmeTier::admitting() const {
  return admitting_.load(std::memory_order_relaxed) && index_->writable();
}

bool NvmeTier::RetryAdmission() {
  // Room for this many slots in every slot file's file system before pages are admitted again:
  // enough that the next few writes do not stop admission at once.
  constexpr uint64_t kResumeSlots = 16;
  const uint32_t every = std::max<uint32_t>(1, options_.admission_retry_refusals);
  if (refusals_since_retry_.fetch_add(1, std::memory_order_relaxed) + 1 < every) return false;
  refusals_since_retry_.store(0, std::memory_order_relaxed);
  uint64_t free_bytes = UINT64_MAX;
  for (const nvme::SlotFile& f : files_) {
    struct statvfs st {};
    if (fstatvfs(f.fd, &st) != 0) return false;
    free_bytes = std::min<uint64_t>(free_bytes, uint64_t{st.f_bavail} * st.f_frsize);
  }
  struct statvfs ist {};
  if (statvfs(index_dir_.c_str(), &ist) != 0) return false;
  free_bytes = std::min<uint64_t>(free_bytes, uint64_t{ist.f_bavail} * ist.f_frsize);
  if (free_bytes < kResumeSlots * slot_disk_bytes_) return false;
  if (!index_->writable()) {
    std::string why;
    if (!index_->TryRecover(why)) {
      Log(absl::StrCat("index still not writable with ", free_bytes, " bytes free: ", why));
      return false;
    }
    Log("index writable again");
  }
  admitting_.store(true, std::memory_order_relaxed);
  logged_no_space_.store(false, std::memory_order_relaxed);
  Log(absl::StrCat("space was freed (", free_bytes,
                   " bytes available): admitting new pages to the NVMe tier again"));
  return true;
}

absl::Status NvmeTier::Open() {
  // The index opens first: on a nearly full file system it gets its few blocks before the slot
  // files take the rest.
  index_dir_ = options_.index_dir.empty()
                   ? (std::filesystem::path(options_.dirs[0]) / "index").string()
                   : options_.index_dir;
  const std::string& index_dir = index_dir_;
  absl::StatusOr<std::unique_ptr<nvme::IndexDb>> index =
      nvme::IndexDb::Open(index_dir, [this](absl::string_view l) { Log(l); });
  if (!index.ok()) return index.status();
  index_ = *std::move(index);
  const auto nfiles = static_cast<uint32_t>(options_.dirs.size());
  const uint32_t per_file = (options_.slots + nfiles - 1) / nfiles;
  files_.reserve(nfiles);
  for (uint32_t i = 0; i < nfiles; ++i) {
    RETURN_IF_ERROR(OpenFile(i, per_file));
  }
  slot_state_ = std::make_unique<nvme::SlotState[]>(options_.slots);
  for (uint32_t s = 0; s < options_.slots; ++s) {
    slot_state_[s].backed = s / nfiles < files_[FileOf(s)].allocated_slots;
  }
  absl::StatusOr<std::unique_ptr<nvme::StagingPool>> pool =
      nvme::StagingPool::Create(options_.queue_depth, slot_disk_bytes_);
  if (!pool.ok()) return pool.status();
  staging_ = *std::move(pool);
  std::vector<int> fds;
  for (const nvme::SlotFile& f : files_) fds.push_back(f.fd);
  nvme::IoRing::Options ro;
  // A page may take two requests (header + payload) and each file one sync.
  ro.entries = 2 * options_.queue_depth + nfiles + 1;
  ro.sqpoll = options_.sqpoll;
  ro.sqpoll_idle_ms = options_.sqpoll_idle_ms;
  ro.fault_injector = options_.fault_injector;
  absl::StatusOr<std::unique_ptr<nvme::IoRing>> ring = nvme::IoRing::Create(ro, fds, *staging_);
  if (!ring.ok()) return ring.status();
  ring_ = *std::move(ring);
  return absl::OkStatus();
}

absl::Status NvmeTier::OpenFile(uint32_t i, uint32_t slots_in_file) {
  nvme::SlotFile f;
  std::error_code ec;
  std::filesystem::create_directories(options_.dirs[i], ec);
  if (ec) {
    return absl::UnavailableError(
        absl::StrCat("nvme tier: cannot create directory ", options_.dirs[i], ": ", ec.message()));
  }
  f.path = (std::filesystem::path(options_.dirs[i]) / "kvtier-nvme.slots").string();
  f.created = access(f.path.c_str(), F_OK) != 0;
  f.fd = open(f.path.c_str(), O_RDWR | O_CREAT | O_DIRECT | O_CLOEXEC, 0644);
  if (f.fd < 0) {
    const int err = errno;
    return NvmeErrnoStatus(err,
                           absl::StrCat("nvme tier: open(", f.path, ", O_DIRECT)",
                                        err == EINVAL ? " (file system without O_DIRECT?)" : ""));
  }
  const auto want = static_cast<off_t>(uint64_t{slots_in_file} * slot_disk_bytes_);
  if (options_.preallocate) {
    if (fallocate(f.fd, 0, 0, want) == 0) {
      f.allocated_slots = slots_in_file;
    } else if (IsNoSpace(errno)) {
      // Keep every slot the file system can hold; the rest are refused (counted, logged once).
      uint32_t k = 0;
      while (k < slots_in_file && fallocate(f.fd, 0, static_cast<off_t>(k * slot_disk_bytes_),
                                            static_cast<off_t>(slot_disk_bytes_)) == 0) {
        ++k;
      }
      f.allocated_slots = k;
      NoteNoSpace(absl::StrCat("preallocating ", f.path, ": room for ", k, " of ", slots_in_file,
                               " slots"));
    } else {
      return NvmeErrnoStatus(errno, absl::StrCat("nvme tier: fallocate(", f.path, ", ", want, ")"));
    }
  }
  struct stat st {};
  if (fstat(f.fd, &st) == 0 && st.st_size < want && ftruncate(f.fd, want) != 0) {
    // A file-size limit (RLIMIT_FSIZE, quotas) reads like a full disk: slots past the end are
    // simply never backed, so they are never admitted.
    if (!IsNoSpace(errno)) {
      return NvmeErrnoStatus(errno, absl::StrCat("nvme tier: ftruncate(", f.path, ", ", want, ")"));
    }
    NoteNoSpace(absl::StrCat("extending ", f.path, " to ", want, " bytes"));
  }
  files_.push_back(std::move(f));
  return absl::OkStatus();
}

template <typename Buffer>
int NvmeTier::DirectBuffer(absl::Span<const Buffer> bufs) const {
  if (bufs.size() != 1 || bufs[0].size % nvme::kBlockBytes != 0) return -1;
  const auto p = reinterpret_cast<uintptr_t>(bufs[0].data);
  if (p % nvme::kBlockBytes != 0) return -1;
  for (const HostRegion& r : host_regions_) {
    if (p >= r.begin && p + bufs[0].size <= r.end) return r.buffer_index;
  }
  return -1;
}

absl::Status NvmeTier::RegisterHostMemory(absl::Span<const MutableBuffer> regions) {
  std::vector<iovec> extra;
  std::vector<HostRegion> added;
  for (const MutableBuffer& m : regions) {
    if (m.data == nullptr || m.size == 0) continue;
    added.push_back(HostRegion{
        reinterpret_cast<uintptr_t>(m.data), reinterpret_cast<uintptr_t>(m.data) + m.size,
        static_cast<int>(staging_->count() + host_regions_.size() + added.size())});
    extra.push_back(iovec{m.data, m.size});
  }
  if (extra.empty()) return absl::OkStatus();
  std::vector<iovec> all;
  for (const HostRegion& r : host_regions_) {
    all.push_back(iovec{reinterpret_cast<void*>(r.begin), r.end - r.begin});
  }
  all.insert(all.end(), extra.begin(), extra.end());
  if (absl::Status s = ring_->RegisterExtraBuffers(all); !s.ok()) {
    Log(absl::StrCat("could not register ", extra.size(), " host region(s) with the ring (",
                     s.ToString(), "): those pages go through staging copies"));
    return s;
  }
  host_regions_.insert(host_regions_.end(), added.begin(), added.end());
  Log(absl::StrCat("registered ", extra.size(),
                   " host region(s) with the ring: aligned pages in "
                   "them move without a copy"));
  return absl::OkStatus();
}

std::string NvmeTier::SlotFilePath(uint32_t slot) const { return files_[FileOf(slot)].path; }

uint64_t NvmeTier::SlotFileOffset(uint32_t slot) const {
  return uint64_t{slot / static_cast<uint32_t>(files_.size())} * slot_disk_bytes_;
}

std::string NvmeTier::Describe() const {
  return absl::StrCat(ring_->describe(), "; ", files_.size(), " file(s), ", options_.slots,
                      " slots of ", slot_disk_bytes_, " bytes; sync_data=", options_.sync_data,
                      " sync_index=", options_.sync_index);
}

NvmeCounters NvmeTier::counters() const {
  const auto l = [](const std::atomic<uint64_t>& a) { return a.load(std::memory_order_relaxed); };
  NvmeCounters c;
  c.pages_written = l(counters_->pages_written);
  c.pages_read = l(counters_->pages_read);
  c.bytes_written = l(counters_->bytes_written);
  c.bytes_read = l(counters_->bytes_read);
  c.write_errors = l(counters_->write_errors);
  c.read_errors = l(counters_->read_errors);
  c.short_ios = l(counters_->short_ios);
  c.checksum_mismatches = l(counters_->checksum_mismatches);
  c.enospc = l(counters_->enospc);
  c.rejected_full = l(counters_->rejected_full);
  c.recovered_pages = l(counters_->recovered_pages);
  c.recovery_dropped = l(counters_->recovery_dropped);
  c.zero_copy_pages = l(counters_->zero_copy_pages);
  c.staged_pages = l(counters_->staged_pages);
  return c;
}

template <typename Batch>
void NvmeTier::Timed(bool write, size_t pages, Batch&& batch) {
  if (options_.observer == nullptr) {
    batch();
    return;
  }
  const auto start = std::chrono::steady_clock::now();
  batch();
  const auto elapsed = std::chrono::steady_clock::now() - start;
  options_.observer->OnBatch(
      Tier::kNvme, write, pages,
      static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(elapsed).count()));
}

void NvmeTier::Write(absl::Span<const SlotWrite> writes, absl::Span<absl::Status> results) {
  Timed(/*write=*/true, writes.size(), [&] { WriteBatch(writes, results); });
}

void NvmeTier::WriteBatch(absl::Span<const SlotWrite> writes, absl::Span<absl::Status> results) {
  const size_t n = writes.size();
  std::vector<uint32_t> crcs(n);
  std::vector<uint32_t> pending;
  pending.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    const SlotWrite& w = writes[i];
    results[i] = CheckIo(w.slot, options_.slots, options_.page_bytes, w.meta.bytes, w.src);
    if (!results[i].ok()) continue;
    if (!index_->writable() && !RetryAdmission()) {
      // Nothing can be indexed, so nothing can be stored (counted; logged once when it broke).
      Bump(counters_->rejected_full);
      results[i] = absl::ResourceExhaustedError(
          "nvme tier is not admitting: its index is "
          "read-only (full file system or a failed write)");
      continue;
    }
    if (!admitting() && !slot_state_[w.slot].backed && !RetryAdmission()) {
      Bump(counters_->rejected_full);
      results[i] = absl::ResourceExhaustedError(
          absl::StrCat("nvme tier is full: slot ", w.slot, " has no allocated blocks"));
      continue;
    }
    pending.push_back(static_cast<uint32_t>(i));
  }
  // Each page is one request (header block + payload, copied into staging) or, when its memory
  // is registered with the ring, two: the header block from staging and the payload straight
  // from the caller's memory. Request 2i is the first, 2i+1 the second; parts[i] counts them.
  std::vector<IoRequest> reqs(2 * n);
  std::vector<uint8_t> parts(n, 0);
  std::vector<int> bufs(n, -1);
  IoWaiter waiter(2 * n);
  size_t next = 0;
  // Copy (or checksum in place) each page, and hand it to the ring a few at a time so the disk
  // works while the next pages are prepared.
  auto launch = [&](size_t outstanding, std::vector<IoRequest*>& out) {
    while (next < pending.size()) {
      const int buf = staging_->Acquire(/*wait=*/outstanding == 0 && out.empty());
      if (buf < 0) return Launch::kBlocked;
      const uint32_t i = pending[next++];
      const SlotWrite& w = writes[i];
      std::byte* block = staging_->data(buf);
      const int direct = DirectBuffer(w.src);
      uint32_t crc = 0;
      const uint64_t io_payload = RoundUpToBlock(w.meta.bytes);
      if (direct >= 0) {
        crc = nvme::Crc32c(w.src[0].data, w.src[0].size);
      } else {
        std::byte* dst = block + kHeaderBlockBytes;
        for (const ConstBuffer& b : w.src) {
          std::memcpy(dst, b.data, b.size);
          crc = nvme::Crc32cExtend(crc, dst, b.size);
          dst += b.size;
        }
        std::memset(dst, 0, io_payload - w.meta.bytes);
      }
      nvme::PageHeader h;
      h.cls = static_cast<uint8_t>(w.meta.cls);
      h.ns = w.meta.ns;
      h.key = w.meta.key;
      h.ns_salt = w.meta.ns_salt;
      h.length = w.meta.bytes;
      h.payload_crc = crc;
      nvme::EncodeHeader(h, block);
      crcs[i] = crc;
      bufs[i] = buf;
      const uint64_t at = SlotFileOffset(w.slot);
      const uint32_t file = FileOf(w.slot);
      if (direct >= 0) {
        reqs[2 * size_t{i}] =
            IoRequest{Op::kWrite, file, buf, block, kHeaderBlockBytes, at, &waiter, 2 * i, 0};
        reqs[2 * size_t{i} + 1] = IoRequest{Op::kWrite,
                                            file,
                                            direct,
                                            const_cast<std::byte*>(w.src[0].data),
                                            static_cast<uint32_t>(w.src[0].size),
                                            at + kHeaderBlockBytes,
                                            &waiter,
                                            2 * i + 1,
                                            0};
        parts[i] = 2;
        Bump(counters_->zero_copy_pages);
        out.push_back(&reqs[2 * size_t{i}]);
        out.push_back(&reqs[2 * size_t{i} + 1]);
      } else {
        reqs[2 * size_t{i}] = IoRequest{Op::kWrite,
                                        file,
                                        buf,
                                        block,
                                        static_cast<uint32_t>(kHeaderBlockBytes + io_payload),
                                        at,
                                        &waiter,
                                        2 * i,
                                        0};
        parts[i] = 1;
        Bump(counters_->staged_pages);
        out.push_back(&reqs[2 * size_t{i}]);
      }
      if (out.size() >= 2 * kSubmitChunk) {
        return next < pending.size() ? Launch::kChunk : Launch::kDone;
      }
    }
    return Launch::kDone;
  };
  auto finish = [&](uint32_t id) {
    const uint32_t i = id / 2;
    IoRequest& r = reqs[id];
    if (r.result < 0 && results[i].ok()) {
      Bump(counters_->write_errors);
      if (IsNoSpace(-r.result)) NoteNoSpace(absl::StrCat("writing ", files_[r.file].path));
      results[i] = NvmeErrnoStatus(-r.result, absl::StrCat("nvme write of slot ", writes[i].slot,
                                                           " to ", files_[r.file].path));
    }
    if (--parts[i] == 0) staging_->Release(bufs[i]);
  };
  Drive(*ring_, waiter, absl::MakeSpan(reqs), counters_->short_ios, launch, finish);

  // Payload durable before the index names it.
  if (options_.sync_data) {
    std::vector<IoRequest> syncs(files_.size());
    std::vector<bool> touched(files_.size(), false);
    for (uint32_t i : pending)
      touched[FileOf(writes[i].slot)] = touched[FileOf(writes[i].slot)] || results[i].ok();
    std::vector<IoRequest*> batch;
    IoWaiter sync_waiter(files_.size());
    for (uint32_t f = 0; f < files_.size(); ++f) {
      if (!touched[f]) continue;
      syncs[f] = IoRequest{Op::kSync, f, -1, nullptr, 0, 0, &sync_waiter, f, 0};
      batch.push_back(&syncs[f]);
    }
    ring_->Submit(batch);
    std::vector<uint32_t> done;
    for (size_t left = batch.size(); left > 0;) {
      sync_waiter.Take(done);
      left -= done.size();
      for (uint32_t f : done) {
        if (syncs[f].result >= 0) continue;
        Bump(counters_->write_errors);
        if (IsNoSpace(-syncs[f].result)) NoteNoSpace(absl::StrCat("syncing ", files_[f].path));
        const absl::Status err =
            NvmeErrnoStatus(-syncs[f].result, absl::StrCat("nvme fdatasync of ", files_[f].path));
        for (uint32_t i : pending) {
          if (results[i].ok() && FileOf(writes[i].slot) == f) results[i] = err;
        }
      }
    }
  }

  std::vector<nvme::IndexDb::Put> puts;
  std::vector<std::string> deletes;
  puts.reserve(pending.size());
  const uint64_t now_ms = UnixMs();
  for (uint32_t i : pending) {
    if (!results[i].ok()) continue;
    const SlotWrite& w = writes[i];
    const nvme::SlotState& st = slot_state_[w.slot];
    // A slot overwritten without a Release: its old page's entry goes in the same batch.
    if (st.occupied && st.key != w.meta.key) deletes.push_back(nvme::EncodeIndexKey(st.key));
    nvme::IndexRecord rec;
    rec.file = static_cast<uint16_t>(FileOf(w.slot));
    rec.slot = w.slot;
    rec.offset = SlotFileOffset(w.slot);
    rec.length = w.meta.bytes;
    rec.payload_crc = crcs[i];
    rec.cls = static_cast<uint8_t>(w.meta.cls);
    rec.ns = w.meta.ns;
    rec.ns_salt = w.meta.ns_salt;
    rec.written_unix_ms = now_ms;
    rec.frequency = w.meta.frequency;
    rec.access_count = w.meta.access_count;
    nvme::IndexDb::Put& put = puts.emplace_back();
    nvme::EncodeIndexKey(w.meta.key, put.key);
    nvme::EncodeIndexRecord(rec, put.value);
  }
  if (!puts.empty()) {
    absl::Status s = index_->Apply(puts, deletes, options_.sync_index);
    if (!s.ok()) {
      if (absl::IsResourceExhausted(s)) {
        NoteNoSpace("index write");
      } else {
        Log(absl::StrCat("index write failed (", s.ToString(), "): no longer admitting pages"));
        admitting_.store(false, std::memory_order_relaxed);
      }
      for (uint32_t i : pending) {
        if (!results[i].ok()) continue;
        Bump(counters_->write_errors);
        results[i] = s;
        // The bytes on disk may be half-new; nothing names them, and the old page is gone.
        slot_state_[writes[i].slot].occupied = false;
      }
      return;
    }
  }
  for (uint32_t i : pending) {
    if (!results[i].ok()) {
      // Whatever the slot held before has been (partly) overwritten: it no longer holds a page.
      if (slot_state_[writes[i].slot].occupied) DropSlot(writes[i].slot);
      continue;
    }
    nvme::SlotState& st = slot_state_[writes[i].slot];
    st.key = writes[i].meta.key;
    st.length = writes[i].meta.bytes;
    st.crc = crcs[i];
    st.occupied = true;
    st.backed = true;
    Bump(counters_->pages_written);
    Bump(counters_->bytes_written, writes[i].meta.bytes);
  }
}

void NvmeTier::Read(absl::Span<const SlotRead> reads, absl::Span<absl::Status> results) {
  Timed(/*write=*/false, reads.size(), [&] { ReadBatch(reads, results); });
}

void NvmeTier::ReadBatch(absl::Span<const SlotRead> reads, absl::Span<absl::Status> results) {
  const size_t n = reads.size();
  std::vector<uint32_t> pending;
  pending.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    const SlotRead& r = reads[i];
    results[i] = CheckIo(r.slot, options_.slots, options_.page_bytes, r.meta.bytes, r.dst);
    if (!results[i].ok()) continue;
    const nvme::SlotState& st = slot_state_[r.slot];
    if (!st.occupied || st.key != r.meta.key || st.length != r.meta.bytes) {
      results[i] = absl::NotFoundError(
          absl::StrCat("nvme slot ", r.slot, " holds no page ", r.meta.key.ToHex()));
      continue;
    }
    pending.push_back(static_cast<uint32_t>(i));
  }
  // As in Write: one request per page into staging, or two (header block into staging, payload
  // straight into registered caller memory).
  std::vector<IoRequest> reqs(2 * n);
  std::vector<uint8_t> parts(n, 0);
  std::vector<int> bufs(n, -1);
  std::vector<uint8_t> direct_read(n, 0);
  IoWaiter waiter(2 * n);
  size_t next = 0;
  auto launch = [&](size_t outstanding, std::vector<IoRequest*>& out) {
    while (next < pending.size()) {
      const int buf = staging_->Acquire(/*wait=*/outstanding == 0 && out.empty());
      if (buf < 0) return Launch::kBlocked;
      const uint32_t i = pending[next++];
      const SlotRead& r = reads[i];
      bufs[i] = buf;
      const uint64_t at = SlotFileOffset(r.slot);
      const uint32_t file = FileOf(r.slot);
      const int direct = DirectBuffer(r.dst);
      if (direct >= 0) {
        reqs[2 * size_t{i}] = IoRequest{
            Op::kRead, file, buf, staging_->data(buf), kHeaderBlockBytes, at, &waiter, 2 * i, 0};
        reqs[2 * size_t{i} + 1] = IoRequest{Op::kRead,
                                            file,
                                            direct,
                                            r.dst[0].data,
                                            static_cast<uint32_t>(r.dst[0].size),
                                            at + kHeaderBlockBytes,
                                            &waiter,
                                            2 * i + 1,
                                            0};
        parts[i] = 2;
        Bump(counters_->zero_copy_pages);
        direct_read[i] = 1;
        out.push_back(&reqs[2 * size_t{i}]);
        out.push_back(&reqs[2 * size_t{i} + 1]);
      } else {
        reqs[2 * size_t{i}] =
            IoRequest{Op::kRead,
                      file,
                      buf,
                      staging_->data(buf),
                      static_cast<uint32_t>(kHeaderBlockBytes + RoundUpToBlock(r.meta.bytes)),
                      at,
                      &waiter,
                      2 * i,
                      0};
        parts[i] = 1;
        Bump(counters_->staged_pages);
        out.push_back(&reqs[2 * size_t{i}]);
      }
      // Reads need no preparation: submit the whole window at once.
    }
    return Launch::kDone;
  };
  auto finish = [&](uint32_t id) {
    const uint32_t i = id / 2;
    const IoRequest& req = reqs[id];
    const SlotRead& r = reads[i];
    if (req.result < 0 && results[i].ok()) {
      Bump(counters_->read_errors);
      results[i] = NvmeErrnoStatus(
          -req.result, absl::StrCat("nvme read of slot ", r.slot, " from ", files_[req.file].path));
    }
    if (--parts[i] > 0) return;
    const nvme::SlotState& st = slot_state_[r.slot];
    const std::byte* block = staging_->data(bufs[i]);
    if (results[i].ok()) {
      // Verify before a single byte counts as read: header, key, length and payload crc32c must
      // all agree with what was indexed.
      const std::optional<nvme::PageHeader> h = nvme::DecodeHeader(block);
      const std::byte* payload = direct_read[i] ? r.dst[0].data : block + kHeaderBlockBytes;
      if (!h.has_value() || h->key != r.meta.key || h->length != r.meta.bytes ||
          h->payload_crc != st.crc || nvme::Crc32c(payload, r.meta.bytes) != st.crc) {
        Bump(counters_->checksum_mismatches);
        results[i] = absl::DataLossError(
            absl::StrCat("nvme page ", r.meta.key.ToHex(), " in slot ", r.slot, " of ",
                         files_[req.file].path, " failed verification: ",
                         !h.has_value() ? "bad header" : "key, length or checksum mismatch"));
      } else {
        if (!direct_read[i]) {
          for (const MutableBuffer& b : r.dst) {
            std::memcpy(b.data, payload, b.size);
            payload += b.size;
          }
        }
        Bump(counters_->pages_read);
        Bump(counters_->bytes_read, r.meta.bytes);
      }
    }
    staging_->Release(bufs[i]);
    if (!results[i].ok()) DropSlot(r.slot);
  };
  Drive(*ring_, waiter, absl::MakeSpan(reqs), counters_->short_ios, launch, finish);
}

void NvmeTier::DropSlot(uint32_t slot) {
  nvme::SlotState& st = slot_state_[slot];
  if (!st.occupied) return;
  st.occupied = false;
  // Unsynced: if the delete is lost in a crash the entry comes back and fails verification again.
  (void)index_->Delete(nvme::EncodeIndexKey(st.key));
}

void NvmeTier::Release(uint32_t slot) {
  if (slot < options_.slots) DropSlot(slot);
}

absl::Status NvmeTier::Recover(const std::function<void(const RecoveredPage&)>& visit) {
  std::vector<RecoveredPage> found;
  std::vector<std::string> stale;
  const auto nfiles = static_cast<uint32_t>(files_.size());
  absl::Status scan = index_->ForEach([&](absl::string_view k, absl::string_view v) {
    const std::optional<PageKey> key = nvme::DecodeIndexKey(k);
    const std::optional<nvme::IndexRecord> rec = nvme::DecodeIndexRecord(v);
    const bool ok = key.has_value() && rec.has_value() && rec->slot < options_.slots &&
                    rec->file == rec->slot % nfiles && !files_[rec->file].created &&
                    rec->offset == SlotFileOffset(rec->slot) && rec->length > 0 &&
                    rec->length <= options_.page_bytes && !slot_state_[rec->slot].occupied;
    if (!ok) {
      stale.emplace_back(k);
      return;
    }
    nvme::SlotState& st = slot_state_[rec->slot];
    st.key = *key;
    st.length = rec->length;
    st.crc = rec->payload_crc;
    st.occupied = true;
    st.backed = true;
    RecoveredPage page;
    page.slot = rec->slot;
    page.meta.key = *key;
    page.meta.ns = rec->ns;
    page.meta.ns_salt = rec->ns_salt;
    page.meta.cls = static_cast<PageClass>(rec->cls);
    page.meta.bytes = rec->length;
    page.meta.frequency = rec->frequency;
    page.meta.access_count = rec->access_count;
    found.push_back(page);
  });
  if (!scan.ok()) {
    // A damaged index is not trusted in part: forget everything, keep running empty.
    Log(absl::StrCat("index scan failed (", scan.ToString(), "): starting with an empty tier"));
    for (const RecoveredPage& p : found) {
      slot_state_[p.slot].occupied = false;
      stale.push_back(nvme::EncodeIndexKey(p.meta.key));
    }
    found.clear();
  }
  if (!stale.empty()) {
    Bump(counters_->recovery_dropped, stale.size());
    if (absl::Status s = index_->Apply({}, stale, true); !s.ok()) {
      Log(absl::StrCat("could not delete ", stale.size(), " stale index entries: ", s.ToString()));
    }
  }
  if (!found.empty() || !stale.empty()) {
    Log(absl::StrCat("recovered ", found.size(), " pages from the index (", stale.size(),
                     " entries dropped: bad record, lost file or duplicate slot); each is "
                     "verified on read"));
  }
  Bump(counters_->recovered_pages, found.size());
  for (const RecoveredPage& p : found) visit(p);
  return absl::OkStatus();
}

}  // namespace kvtier
