// AdminHttpServer: the operator's HTTP endpoint (civetweb): GET /metrics (Prometheus text format
// 0.0.4), /healthz (the process serves requests) and /readyz (the daemon is ready for workers).
//
// civetweb runs its own thread pool, one connection per thread, and a thread is held until the
// request has arrived in full: a client that sends half a request holds a thread until
// request_timeout_ms. Enough threads and a short timeout keep /healthz answering while a few
// such clients are connected; whoever can open many can still delay it, which is why the
// Kubernetes liveness probe does not use this port (deploy/kubernetes, README "Security model").
// Handlers only read the registry (which locks itself) and the readiness callback, so the
// server holds no state of its own.
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
  // civetweb worker threads: each serves one connection at a time, and a slow client holds one
  // until request_timeout_ms. Default 16 (idle threads cost only their stacks' address space).
  int threads = 16;
  // How long a connection may take to send its request (and to read the reply). Default 2 s: a
  // scrape or probe sends its request in one packet.
  int request_timeout_ms = 2000;
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
