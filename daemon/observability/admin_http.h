// AdminHttpServer: the operator's HTTP endpoint (civetweb): GET /metrics (Prometheus text format
// 0.0.4), /healthz (the process serves requests) and /readyz (the daemon is ready for workers).
//
// civetweb runs its own small thread pool; handlers only read the registry (which locks itself)
// and the readiness callback, so the server holds no state of its own.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "daemon/observability/metrics.h"

struct mg_context;

namespace kvtier {

struct AdminHttpOptions {
  // host:port to listen on. Default 127.0.0.1:9400; port 0 picks a free port (tests).
  std::string address = "127.0.0.1:9400";
  // civetweb worker threads. Default 2: scrapes are rare and cheap.
  int threads = 2;
  // Extra lines for /readyz's body (e.g. the cluster's etcd state); empty: none.
  std::function<std::string()> ready_detail;
};

class AdminHttpServer {
 public:
  // `registry` must outlive the server; `ready` answers /readyz (nullptr: always ready).
  static absl::StatusOr<std::unique_ptr<AdminHttpServer>> Start(const AdminHttpOptions& options,
                                                                metrics::Registry* registry,
                                                                std::function<bool()> ready);
  ~AdminHttpServer();
  AdminHttpServer(const AdminHttpServer&) = delete;
  AdminHttpServer& operator=(const AdminHttpServer&) = delete;

  int port() const { return port_; }
  metrics::Registry& registry() { return *registry_; }
  bool ready() const { return !ready_ || ready_(); }
  std::string ready_detail() const { return ready_detail_ ? ready_detail_() : std::string(); }

 private:
  AdminHttpServer(metrics::Registry* registry, std::function<bool()> ready)
      : registry_(registry), ready_(std::move(ready)) {}

  metrics::Registry* registry_;
  std::function<bool()> ready_;
  std::function<std::string()> ready_detail_;
  mg_context* ctx_ = nullptr;
  int port_ = 0;
};

}  // namespace kvtier
