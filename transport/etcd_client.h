// EtcdClient: the few etcd v3 calls membership needs (lease grant/keepalive/revoke, put, prefix
// range, prefix watch), over etcd's JSON gRPC gateway with libcurl. Keys and values are raw
// bytes (base64 on the wire, as the gateway wants); int64s travel as JSON strings.
//
// Endpoints are tried in order, starting from the last one that answered, so a multi-member
// etcd cluster survives one member going away.
//
// Thread model: thread-safe; each call uses its own curl handle. Watch blocks its caller.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace kvtier {

struct EtcdOptions {
  // http://host:port of etcd members. Required.
  std::vector<std::string> endpoints;
  // Per-request deadline (connect included). Default 2 s.
  absl::Duration request_timeout = absl::Seconds(2);
};

class EtcdClient {
 public:
  static absl::StatusOr<std::unique_ptr<EtcdClient>> Create(const EtcdOptions& options);

  absl::StatusOr<int64_t> LeaseGrant(int64_t ttl_s);
  // Remaining TTL in seconds; 0 when the lease is gone (expired or revoked).
  absl::StatusOr<int64_t> LeaseKeepAlive(int64_t lease);
  absl::Status LeaseRevoke(int64_t lease);
  absl::Status Put(const std::string& key, const std::string& value, int64_t lease);
  // Every key under `prefix`, with the store revision the answer is from.
  struct Range {
    std::vector<std::pair<std::string, std::string>> kvs;
    int64_t revision = 0;
  };
  absl::StatusOr<Range> GetPrefix(const std::string& prefix);
  // Streams changes under `prefix` from `start_revision`, calling `on_change` once per batch of
  // events, until the stream breaks or `stop()` is true (checked about once a second).
  absl::Status WatchPrefix(const std::string& prefix, int64_t start_revision,
                           const std::function<void()>& on_change,
                           const std::function<bool()>& stop);

 private:
  explicit EtcdClient(EtcdOptions options) : options_(std::move(options)) {}
  // POSTs `body` to `path` on the first endpoint that answers; returns the response body.
  absl::StatusOr<std::string> Post(const std::string& path, const std::string& body);

  const EtcdOptions options_;
  std::atomic<size_t> preferred_{0};
};

}  // namespace kvtier
