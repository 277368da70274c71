#include "tiering/nvme/index_db.h"

#include <rocksdb/db.h>
#include <rocksdb/options.h>
#include <rocksdb/write_batch.h>

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

rocksdb::Status OpenDb(const std::string& dir, std::unique_ptr<rocksdb::DB>& out) {
  rocksdb::Options options;
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

IndexDb::IndexDb(std::unique_ptr<rocksdb::DB> db, bool existed)
    : db_(std::move(db)), existed_(existed) {}

IndexDb::~IndexDb() = default;

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
  if (s.ok()) return std::unique_ptr<IndexDb>(new IndexDb(std::move(db), existed));
  if (!existed) return FromRocks(s, absl::StrCat("creating index at ", dir));
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
  return std::unique_ptr<IndexDb>(new IndexDb(std::move(db), false));
}

absl::Status IndexDb::Apply(absl::Span<const Put> puts, absl::Span<const std::string> deletes,
                            bool sync) {
  rocksdb::WriteBatch batch;
  for (const std::string& k : deletes) batch.Delete(k);
  for (const Put& p : puts) batch.Put(p.key, p.value);
  rocksdb::WriteOptions wo;
  wo.sync = sync;
  return FromRocks(db_->Write(wo, &batch), "write");
}

absl::Status IndexDb::Delete(absl::string_view key) {
  rocksdb::WriteOptions wo;
  wo.sync = false;
  return FromRocks(db_->Delete(wo, rocksdb::Slice(key.data(), key.size())), "delete");
}

absl::Status IndexDb::ForEach(
    const std::function<void(absl::string_view, absl::string_view)>& fn) {
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    fn(absl::string_view(it->key().data(), it->key().size()),
       absl::string_view(it->value().data(), it->value().size()));
  }
  return FromRocks(it->status(), "scan");
}

}  // namespace kvtier::nvme
