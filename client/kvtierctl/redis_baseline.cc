#include "client/kvtierctl/redis_baseline.h"

#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace kvtier::ctl {

absl::StatusOr<std::unique_ptr<RedisServer>> RedisServer::Start(const std::string& binary) {
  std::unique_ptr<RedisServer> s(new RedisServer);
  char tmpl[] = "/tmp/kvtier-bench-redis-XXXXXX";
  if (::mkdtemp(tmpl) == nullptr) {
    return absl::InternalError(absl::StrCat("mkdtemp: ", std::strerror(errno)));
  }
  s->dir_ = tmpl;
  s->socket_path_ = s->dir_ + "/redis.sock";
  const std::string log = s->dir_ + "/redis.log";
  std::vector<std::string> args = {binary,
                                   "--port",
                                   "0",
                                   "--unixsocket",
                                   s->socket_path_,
                                   "--unixsocketperm",
                                   "700",
                                   "--save",
                                   "",
                                   "--appendonly",
                                   "no",
                                   "--dir",
                                   s->dir_,
                                   "--logfile",
                                   log};
  std::vector<char*> argv;
  argv.reserve(args.size() + 1);
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  s->pid_ = ::fork();
  if (s->pid_ < 0) return absl::InternalError(absl::StrCat("fork: ", std::strerror(errno)));
  if (s->pid_ == 0) {
    ::execvp(argv[0], argv.data());
    ::_exit(127);
  }
  for (int i = 0; i < 500; ++i) {
    if (RedisConnection::Connect(s->socket_path_).ok()) return s;
    int status;
    if (::waitpid(s->pid_, &status, WNOHANG) == s->pid_) {
      s->pid_ = -1;
      return absl::UnavailableError(absl::StrCat(binary, " exited at start (see ", log, ")"));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return absl::DeadlineExceededError(absl::StrCat(binary, " did not open ", s->socket_path_));
}

RedisServer::~RedisServer() {
  if (pid_ > 0) {
    ::kill(pid_, SIGTERM);
    int status;
    ::waitpid(pid_, &status, 0);
  }
  std::error_code ec;
  if (!dir_.empty()) std::filesystem::remove_all(dir_, ec);
}

absl::StatusOr<std::unique_ptr<RedisConnection>> RedisConnection::Connect(const std::string& path) {
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) {
    return absl::UnavailableError(absl::StrCat("connect ", path, ": ", std::strerror(errno)));
  }
  return std::unique_ptr<RedisConnection>(new RedisConnection(std::move(fd)));
}

bool RedisConnection::ParseReply(size_t& pos, size_t& non_nil, std::string& error, bool top) {
  const size_t eol = in_.find("\r\n", pos);
  if (eol == std::string::npos) return false;
  const char type = in_[pos];
  const absl::string_view line(in_.data() + pos + 1, eol - pos - 1);
  pos = eol + 2;
  int64_t n = 0;
  switch (type) {
    case '+':
    case ':':
      if (top) non_nil = 1;
      return true;
    case '-':
      error = std::string(line);
      return true;
    case '$':
      if (!absl::SimpleAtoi(line, &n)) n = -1;
      if (n < 0) return true;  // nil
      if (in_.size() < pos + static_cast<size_t>(n) + 2) return false;
      pos += static_cast<size_t>(n) + 2;
      ++non_nil;
      return true;
    case '*':
      if (!absl::SimpleAtoi(line, &n)) n = -1;
      for (int64_t i = 0; i < n; ++i) {
        if (!ParseReply(pos, non_nil, error, false)) return false;
      }
      return true;
    default:
      error = absl::StrCat("unexpected RESP type '", std::string(1, type), "'");
      return true;
  }
}

absl::StatusOr<size_t> RedisConnection::Command(absl::Span<const absl::string_view> args) {
  out_.clear();
  absl::StrAppend(&out_, "*", args.size(), "\r\n");
  for (absl::string_view a : args) absl::StrAppend(&out_, "$", a.size(), "\r\n", a, "\r\n");
  for (size_t sent = 0; sent < out_.size();) {
    const ssize_t n = ::send(fd_.get(), out_.data() + sent, out_.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) return absl::UnavailableError(absl::StrCat("redis send: ", std::strerror(errno)));
    sent += static_cast<size_t>(n);
  }
  in_.clear();
  char chunk[65536];
  while (true) {
    const ssize_t n = ::recv(fd_.get(), chunk, sizeof(chunk), 0);
    if (n <= 0) return absl::UnavailableError("redis closed the connection");
    in_.append(chunk, static_cast<size_t>(n));
    size_t pos = 0, non_nil = 0;
    std::string error;
    if (ParseReply(pos, non_nil, error, true)) {
      if (!error.empty()) return absl::InternalError(absl::StrCat("redis: ", error));
      return non_nil;
    }
  }
}

}  // namespace kvtier::ctl
