// IndexDb: the NVMe tier's RocksDB index (page key -> IndexRecord), owning its rocksdb::DB.
// Internal to the NVMe tier. RocksDB is thread-safe; so is this wrapper.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "tiering/nvme/page_format.h"

namespace rocksdb {
class DB;
}

namespace kvtier::nvme {

class IndexDb {
 public:
  // Opens (creating when missing) the index at `dir`. An index that exists but cannot be opened
  // is moved aside to "<dir>.unreadable-<unix seconds>" and a fresh one created: the tier starts
  // empty rather than trusting or crashing on it. `log` hears about both cases. One that another
  // process holds open (RocksDB's LOCK) is busy, not unreadable: FailedPrecondition, untouched.
  static absl::StatusOr<std::unique_ptr<IndexDb>> Open(
      const std::string& dir, const std::function<void(absl::string_view)>& log);
  ~IndexDb();
  IndexDb(const IndexDb&) = delete;
  IndexDb& operator=(const IndexDb&) = delete;

  struct Put {
    char key[kIndexKeyBytes];
    char value[kIndexRecordBytes];
  };
  // One atomic batch of puts and deletes; `sync` makes it durable (WAL fsync) before returning.
  absl::Status Apply(absl::Span<const Put> puts, absl::Span<const std::string> deletes, bool sync);
  // A delete that rides in the WAL without its own fsync: the next synced write carries it.
  absl::Status Delete(absl::string_view key);
  // Visits every entry in key order; stops at the first error.
  absl::Status ForEach(const std::function<void(absl::string_view, absl::string_view)>& fn);

  // Whether the index directory existed before Open (false: the tier starts empty by design).
  bool existed() const { return existed_; }
  // False when the index was opened read-only (its file system was full at start) or a write to
  // it has failed: RocksDB must not be written again after an I/O error (its writer asserts), so
  // the tier stops admitting and forgets released pages in memory only.
  bool writable() const {
    return !read_only_.load(std::memory_order_acquire) && !failed_.load(std::memory_order_acquire);
  }
  // Makes the index writable again once its file system has room: one opened read-only, or
  // whose write failed, is reopened read-write. Waits for Apply/Delete/ForEach in progress. True
  // when writable afterwards; otherwise `why` says what failed (it stays read-only).
  bool TryRecover(std::string& why);

 private:
  IndexDb(std::unique_ptr<rocksdb::DB> db, bool existed, bool read_only);
  absl::Status Written(absl::Status s);
  // Swapped only by TryRecover (exclusive); every use holds it shared.
  absl::Mutex db_mu_;
  std::unique_ptr<rocksdb::DB> db_ ABSL_GUARDED_BY(db_mu_);
  bool existed_ = false;
  std::atomic<bool> read_only_{false};
  std::atomic<bool> failed_{false};
  std::string dir_;  // set by Open, for TryRecover's reopen
};

}  // namespace kvtier::nvme
