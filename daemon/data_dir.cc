#include "daemon/data_dir.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "base/errno_status.h"

namespace kvtier {
absl::StatusOr<UniqueFd> LockDirectory(const std::string& dir, absl::string_view key) {
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0) return ErrnoStatus(errno, absl::StrCat(key, ": '", dir, "'"));
  if (!S_ISDIR(st.st_mode)) {
    return absl::FailedPreconditionError(
        absl::StrCat(key, ": '", dir, "' exists and is not a directory"));
  }
  const std::string path = absl::StrCat(dir, "/kvtierd.lock");
  UniqueFd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600));
  if (!fd.valid()) return ErrnoStatus(errno, absl::StrCat(key, ": opening lock file '", path, "'"));
  if (::flock(fd.get(), LOCK_EX | LOCK_NB) != 0) {
    if (errno != EWOULDBLOCK)
      return ErrnoStatus(errno, absl::StrCat(key, ": locking '", path, "'"));
    char buf[32] = {};
    const ssize_t n = ::pread(fd.get(), buf, sizeof(buf) - 1, 0);
    uint64_t pid = 0;
    const bool known =
        n > 0 && absl::SimpleAtoi(absl::StripAsciiWhitespace(absl::string_view(buf, n)), &pid);
    return absl::FailedPreconditionError(absl::StrCat(
        key, ": another kvtierd", known ? absl::StrCat(" (pid ", pid, ")") : "", " holds '", path,
        "'; refusing to start on the same data (nothing was touched)"));
  }
  // The pid is only for the message a second daemon prints: on a full file system the lock
  // still holds without it.
  const std::string pid = absl::StrCat(::getpid(), "\n");
  if (::ftruncate(fd.get(), 0) == 0) {
    (void)!::pwrite(fd.get(), pid.data(), pid.size(), 0);
  }
  return fd;
}

absl::Status RemoveStaleSocket(const std::string& path) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return absl::OkStatus();
    return ErrnoStatus(errno, absl::StrCat("socket_path: '", path, "'"));
  }
  if (!S_ISSOCK(st.st_mode)) {
    return absl::FailedPreconditionError(
        absl::StrCat("socket_path: '", path,
                     "' exists and is not a socket; kvtierd only ever removes a stale socket "
                     "(move the file away or choose another socket_path)"));
  }
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
    return ErrnoStatus(errno, absl::StrCat("socket_path: removing stale socket '", path, "'"));
  }
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> LoadOrCreateIndexSecret(const std::string& dir) {
  uint64_t secret = 0;
  if (dir.empty()) {
    if (::getrandom(&secret, sizeof(secret), 0) != static_cast<ssize_t>(sizeof(secret))) {
      return ErrnoStatus(errno, "getrandom");
    }
    return secret;
  }
  const std::string path = absl::StrCat(dir, "/kvtier-index.secret");
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
  if (fd.valid()) {
    if (::pread(fd.get(), &secret, sizeof(secret), 0) != static_cast<ssize_t>(sizeof(secret))) {
      return absl::DataLossError(absl::StrCat("nvme: '", path,
                                              "' is not an 8-byte secret; remove "
                                              "it (the NVMe tier's pages are then not found)"));
    }
    return secret;
  }
  if (errno != ENOENT) return ErrnoStatus(errno, absl::StrCat("nvme: opening '", path, "'"));
  if (::getrandom(&secret, sizeof(secret), 0) != static_cast<ssize_t>(sizeof(secret))) {
    return ErrnoStatus(errno, "getrandom");
  }
  // Written whole to a temporary name and renamed, so a crash never leaves a short secret.
  const std::string tmp = absl::StrCat(path, ".tmp");
  UniqueFd out(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600));
  if (!out.valid()) return ErrnoStatus(errno, absl::StrCat("nvme: creating '", tmp, "'"));
  if (::pwrite(out.get(), &secret, sizeof(secret), 0) != static_cast<ssize_t>(sizeof(secret)) ||
      ::fsync(out.get()) != 0 || ::rename(tmp.c_str(), path.c_str()) != 0) {
    return ErrnoStatus(errno, absl::StrCat("nvme: writing '", path, "'"));
  }
  return secret;
}

absl::Status LockDaemonData(const DaemonConfig& config, std::vector<UniqueFd>& locks,
                            uint64_t& index_secret) {
  absl::StatusOr<UniqueFd> lock = LockDirectory(config.data_dir, "data_dir");
  if (!lock.ok()) return lock.status();
  locks.push_back(*std::move(lock));
  for (size_t i = 0; i < config.nvme.directories.size(); ++i) {
    const std::string& dir = config.nvme.directories[i];
    if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
      return ErrnoStatus(errno, absl::StrCat("nvme.directories[", i, "]: creating '", dir, "'"));
    }
    lock = LockDirectory(dir, absl::StrCat("nvme.directories[", i, "]"));
    if (!lock.ok()) {
      // The same directory named twice, or data_dir itself, is already ours.
      if (absl::IsFailedPrecondition(lock.status()) &&
          absl::StrContains(lock.status().message(), absl::StrCat("(pid ", ::getpid(), ")"))) {
        continue;
      }
      return lock.status();
    }
    locks.push_back(*std::move(lock));
  }
  absl::StatusOr<uint64_t> secret =
      LoadOrCreateIndexSecret(config.nvme.enabled() ? config.nvme.directories[0] : std::string());
  if (!secret.ok()) return secret.status();
  index_secret = *secret;
  return absl::OkStatus();
}

}  // namespace kvtier
