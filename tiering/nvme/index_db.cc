#include "tiering/nvme/index_db.h"

#include <rocksdb/db.h>
#include <rocksdb/env.h>
#include <rocksdb/options.h>
#include <rocksdb/write_batch.h>

#include <cstdarg>
#include <ctime>
#include <filesystem>
#include <system_error>

#include "absl/strings/str_cat.h"

namespace kvtier::nvme {
namespace {

absl::Status FromRocks(const rocksdb::Status& s, absl::string_view what) {
  if (s.ok()) return absl::OkStatus();
  const std::string msg = absl::StrCat("rocksdb ", what, ": ", s.ToString());
  if (s.IsNoSpace()) return absl::ResourceExhaustedError(msg);
  if (s.IsIOError()) return absl::UnavailableError(msg);
  return absl::InternalError(msg);
}

// RocksDB's own info log would be one more file in the index directory that needs space: on a
// full file system its failed append trips an assertion in Debian's RocksDB build. The tier logs
// what matters itself, so RocksDB's chatter goes nowhere.
class SilentLogger : public rocksdb::Logger {
 public:
  SilentLogger() : rocksdb::Logger(rocksdb::InfoLogLevel::FATAL_LEVEL) {}
  using rocksdb::Logger::Logv;
  void Logv(const char* /*format*/, va_list /*ap*/) override {}
};

rocksdb::Status OpenDb(const std::string& dir, std::unique_ptr<rocksdb::DB>& out) {
  rocksdb::Options options;
  options.info_log = std::make_shared<SilentLogger>();
  options.create_if_missing = true;
  // The index is small (one ~90-byte record per page); keep RocksDB's own footprint small too.
  options.write_buffer_size = 8 << 20;
  options.max_open_files = 64;
  options.keep_log_file_num = 2;
  options.info_log_level = rocksdb::InfoLogLevel::WARN_LEVEL;
  options.paranoid_checks = true;
  rocksdb::DB* db = nullptr;
  rocksdb::Status s = rocksdb::DB::Open(options, dir, &db);
  out.reset(db);
  return s;
}

}  // namespace

IndexDb::IndexDb(std::unique_ptr<rocksdb::DB> db, bool existed, bool read_only)
    : db_(std::move(db)), existed_(existed), read_only_(read_only) {}

absl::Status IndexDb::Written(absl::Status s) {
  if (!s.ok()) failed_.store(true, std::memory_order_relaxed);
  return s;
}

IndexDb::~IndexDb() = default;

bool IndexDb::TryRecover(std::string& why) {
  // Exclusive: no Apply, Delete or scan is inside the database while it is swapped.
  absl::MutexLock lock(&db_mu_);
  if (writable()) return true;
  // Read-only since start, or stopped by a failed write (RocksDB then refuses writes until a
  // recovery that, after a failed WAL append, does not come by itself): either way the database
  // is reopened read-write; the WAL replay drops a torn last record, as after a crash.
  db_.reset();
  std::unique_ptr<rocksdb::DB> db;
  rocksdb::Status s = OpenDb(dir_, db);
  if (!s.ok()) {
    why = s.ToString();
    // Keep serving what was indexed, read-only, until the next attempt.
    rocksdb::Options ro;
    ro.info_log = std::make_shared<SilentLogger>();
    rocksdb::DB* rdb = nullptr;
    if (rocksdb::DB::OpenForReadOnly(ro, dir_, &rdb).ok()) db_.reset(rdb);
    read_only_.store(true, std::memory_order_release);
    failed_.store(false, std::memory_order_release);
    return false;
  }
  db_ = std::move(db);
  failed_.store(false, std::memory_order_release);
  read_only_.store(false, std::memory_order_release);
  return true;
}

absl::StatusOr<std::unique_ptr<IndexDb>> IndexDb::Open(
    const std::string& dir, const std::function<void(absl::string_view)>& log) {
  std::error_code ec;
  const bool existed = std::filesystem::exists(std::filesystem::path(dir) / "CURRENT", ec);
  if (!existed) {
    log(absl::StrCat("no index at ", dir, ": starting with an empty NVMe tier"));
    std::filesystem::create_directories(dir, ec);
  }
  std::unique_ptr<rocksdb::DB> db;
  rocksdb::Status s = OpenDb(dir, db);
  if (s.ok()) {
    auto index = std::unique_ptr<IndexDb>(new IndexDb(std::move(db), existed, false));
    index->dir_ = dir;
    return index;
  }
  if (s.IsIOError() && s.ToString().find("lock") != std::string::npos) {
    // Another process has the index open: it is busy, not unreadable. Never set it aside.
    return absl::FailedPreconditionError(
        absl::StrCat("index at ", dir, " is locked by another process (is another kvtierd using ",
                     "this NVMe directory?): ", s.ToString()));
  }
  if (!existed) return FromRocks(s, absl::StrCat("creating index at ", dir));
  if (s.IsNoSpace() || (s.IsIOError() && s.ToString().find("No space") != std::string::npos)) {
    // A full file system is no reason to forget an intact index: serve it read-only.
    rocksdb::Options ro;
    ro.info_log = std::make_shared<SilentLogger>();
    rocksdb::DB* rdb = nullptr;
    rocksdb::Status r = rocksdb::DB::OpenForReadOnly(ro, dir, &rdb);
    if (r.ok()) {
      log(absl::StrCat("file system of index ", dir, " is full (", s.ToString(),
                       "): index opened read-only; stored pages are served, none admitted"));
      auto index =
          std::unique_ptr<IndexDb>(new IndexDb(std::unique_ptr<rocksdb::DB>(rdb), existed, true));
      index->dir_ = dir;
      return index;
    }
  }
  // An index we cannot read is not one we can trust: set it aside (for a post-mortem) and start
  // empty. Its slots become free, and the pages in them are never served.
  const std::string aside = absl::StrCat(dir, ".unreadable-", std::time(nullptr));
  std::filesystem::rename(dir, aside, ec);
  if (ec) {
    return FromRocks(s, absl::StrCat("opening index at ", dir, " (and moving it aside to ", aside,
                                     " failed: ", ec.message(), ")"));
  }
  log(absl::StrCat("index at ", dir, " is unreadable (", s.ToString(), "); moved to ", aside,
                   ", starting with an empty NVMe tier"));
  std::filesystem::create_directories(dir, ec);
  s = OpenDb(dir, db);
  if (!s.ok()) return FromRocks(s, absl::StrCat("creating index at ", dir));
  auto index = std::unique_ptr<IndexDb>(new IndexDb(std::move(db), false, false));
  index->dir_ = dir;
  return index;
}

absl::Status IndexDb::Apply(absl::Span<const Put> puts, absl::Span<const std::string> deletes,
                            bool sync) {
  if (!writable()) return absl::FailedPreconditionError("index is read-only after an error");
  rocksdb::WriteBatch batch;
  for (const std::string& k : deletes) batch.Delete(k);
  for (const Put& p : puts) {
    batch.Put(rocksdb::Slice(p.key, sizeof(p.key)), rocksdb::Slice(p.value, sizeof(p.value)));
  }
  rocksdb::WriteOptions wo;
  wo.sync = sync;
  absl::ReaderMutexLock lock(&db_mu_);
  if (db_ == nullptr || !writable()) return absl::FailedPreconditionError("index is read-only");
  return Written(FromRocks(db_->Write(wo, &batch), "write"));
}

absl::Status IndexDb::Delete(absl::string_view key) {
  if (!writable()) return absl::FailedPreconditionError("index is read-only after an error");
  rocksdb::WriteOptions wo;
  wo.sync = false;
  absl::ReaderMutexLock lock(&db_mu_);
  if (db_ == nullptr || !writable()) return absl::FailedPreconditionError("index is read-only");
  return Written(FromRocks(db_->Delete(wo, rocksdb::Slice(key.data(), key.size())), "delete"));
}

absl::Status IndexDb::ForEach(const std::function<void(absl::string_view, absl::string_view)>& fn) {
  absl::ReaderMutexLock lock(&db_mu_);
  if (db_ == nullptr) return absl::FailedPreconditionError("index is not open");
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    fn(absl::string_view(it->key().data(), it->key().size()),
       absl::string_view(it->value().data(), it->value().size()));
  }
  return FromRocks(it->status(), "scan");
}

}  // namespace kvtier::nvme
