// What kvtierd does to its directories and files before it serves: the exclusive lock that makes
// a second daemon on the same data stop before it touches anything, the secret that makes index
// keys per namespace, and the only removal it ever makes at socket_path (a stale socket).
//
// Thread model: called from main before any other thread starts.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "base/unique_fd.h"
#include "daemon/config.h"

namespace kvtier {

// Takes an exclusive, non-blocking flock on `dir`/kvtierd.lock (creating it 0600) and writes this
// process's pid into it. `dir` must be a directory (a regular file there is an error naming
// `key`). Held until the returned fd closes, i.e. for the daemon's life; the kernel drops it when
// the process dies, so a kill -9 leaves no stale lock. FailedPrecondition "another kvtierd ..."
// when another process holds it.
absl::StatusOr<UniqueFd> LockDirectory(const std::string& dir, absl::string_view key);

// Removes a stale socket at `path`, and only a socket: a regular file, directory or anything else
// there is an error (nothing is removed). A missing path is fine.
absl::Status RemoveStaleSocket(const std::string& path);

// The seed that mixes namespaces into index keys (StoreOptions::index_key_secret): 8 random bytes
// kept in `dir`/kvtier-index.secret (0600, created when missing) so pages a persistent tier keeps
// are found again after a restart. An empty `dir` (no persistent tier) gets a fresh random secret.
absl::StatusOr<uint64_t> LoadOrCreateIndexSecret(const std::string& dir);

// All of the above for kvtierd's config, in order: locks data_dir and every NVMe directory
// (creating them), then loads the index secret from the first NVMe directory (or makes a fresh
// one without NVMe). `locks` keeps the lock fds; hold them until exit.
absl::Status LockDaemonData(const DaemonConfig& config, std::vector<UniqueFd>& locks,
                            uint64_t& index_secret);

}  // namespace kvtier
