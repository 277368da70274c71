// The Redis baseline of `kvtierctl bench rpc`: a private redis-server on a Unix socket in a temp
// directory (started and stopped by the bench), spoken to in RESP directly.
#pragma once

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "base/unique_fd.h"

namespace kvtier::ctl {

class RedisServer {
 public:
  // Starts `binary` (redis-server) with persistence off, listening only on a Unix socket.
  static absl::StatusOr<std::unique_ptr<RedisServer>> Start(const std::string& binary);
  ~RedisServer();  // SIGTERM, wait, remove the temp directory
  const std::string& socket_path() const { return socket_path_; }

 private:
  RedisServer() = default;
  pid_t pid_ = -1;
  std::string dir_;
  std::string socket_path_;
};

class RedisConnection {
 public:
  static absl::StatusOr<std::unique_ptr<RedisConnection>> Connect(const std::string& path);
  // Sends one command and reads its reply; returns the number of non-nil elements (for an
  // array reply) or 1 for a simple reply. Errors from Redis become Status.
  absl::StatusOr<size_t> Command(absl::Span<const absl::string_view> args);

 private:
  explicit RedisConnection(UniqueFd fd) : fd_(std::move(fd)) {}
  // Parses one reply starting at pos_; false when more bytes are needed.
  bool ParseReply(size_t& pos, size_t& non_nil, std::string& error, bool top);
  UniqueFd fd_;
  std::string out_;
  std::string in_;
};

}  // namespace kvtier::ctl
