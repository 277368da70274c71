#include "daemon/observability/admin_http.h"

#include <civetweb.h>

#include <mutex>

#include "absl/strings/str_cat.h"

namespace kvtier {
namespace {

void Reply(mg_connection* conn, int status, absl::string_view content_type,
           absl::string_view body) {
  const char* reason = status == 200 ? "OK" : status == 503 ? "Service Unavailable" : "Not Found";
  const std::string head =
      absl::StrCat("HTTP/1.1 ", status, " ", reason, "\r\nContent-Type: ", content_type,
                   "\r\nContent-Length: ", body.size(), "\r\nConnection: close\r\n\r\n");
  mg_write(conn, head.data(), head.size());
  mg_write(conn, body.data(), body.size());
}

bool IsGet(mg_connection* conn) {
  const mg_request_info* info = mg_get_request_info(conn);
  return info != nullptr && info->request_method != nullptr &&
         (absl::string_view(info->request_method) == "GET" ||
          absl::string_view(info->request_method) == "HEAD");
}

int HandleMetrics(mg_connection* conn, void* self) {
  if (!IsGet(conn)) {
    Reply(conn, 404, "text/plain", "GET only\n");
    return 1;
  }
  auto* server = static_cast<AdminHttpServer*>(self);
  Reply(conn, 200, "text/plain; version=0.0.4; charset=utf-8", server->registry().Serialize());
  return 1;
}

int HandleHealthz(mg_connection* conn, void*) {
  Reply(conn, 200, "text/plain", "ok\n");
  return 1;
}

int HandleReadyz(mg_connection* conn, void* self) {
  auto* server = static_cast<AdminHttpServer*>(self);
  const bool ready = server->ready();
  std::string body = ready ? "ready\n" : "not ready\n";
  if (std::string detail = server->ready_detail(); !detail.empty()) body += detail + "\n";
  Reply(conn, ready ? 200 : 503, "text/plain", body);
  return 1;
}

}  // namespace

absl::StatusOr<std::unique_ptr<AdminHttpServer>> AdminHttpServer::Start(
    const AdminHttpOptions& options, metrics::Registry* registry, std::function<bool()> ready) {
  if (registry == nullptr) return absl::InvalidArgumentError("admin HTTP needs a registry");
  if (options.threads < 1 || options.threads > 64) {
    return absl::InvalidArgumentError(
        absl::StrCat("admin HTTP threads must be in [1, 64], got ", options.threads));
  }
  static std::once_flag init_once;
  std::call_once(init_once, [] { mg_init_library(0); });
  std::unique_ptr<AdminHttpServer> server(new AdminHttpServer(registry, std::move(ready)));
  if (options.request_timeout_ms < 100 || options.request_timeout_ms > 60000) {
    return absl::InvalidArgumentError(absl::StrCat(
        "admin HTTP request_timeout_ms must be in [100, 60000], got ", options.request_timeout_ms));
  }
  server->ready_detail_ = options.ready_detail;
  const std::string threads = std::to_string(options.threads);
  const std::string timeout = std::to_string(options.request_timeout_ms);
  const char* mg_options[] = {"listening_ports", options.address.c_str(), "num_threads",
                              threads.c_str(), "request_timeout_ms", timeout.c_str(),
                              // No keep-alive: a probe or scrape is one request, and an idle
                              // kept-alive connection would hold a thread too.
                              "enable_keep_alive", "no", nullptr};
  mg_callbacks callbacks{};
  server->ctx_ = mg_start(&callbacks, nullptr, mg_options);
  if (server->ctx_ == nullptr) {
    return absl::UnavailableError(absl::StrCat("cannot listen for admin HTTP on '", options.address,
                                               "' (address in use, or not host:port)"));
  }
  mg_set_request_handler(server->ctx_, "/metrics$", HandleMetrics, server.get());
  mg_set_request_handler(server->ctx_, "/healthz$", HandleHealthz, server.get());
  mg_set_request_handler(server->ctx_, "/readyz$", HandleReadyz, server.get());
  mg_server_port ports[4];
  const int n = mg_get_server_ports(server->ctx_, 4, ports);
  if (n > 0) server->port_ = ports[0].port;
  return server;
}

AdminHttpServer::~AdminHttpServer() {
  if (ctx_ != nullptr) mg_stop(ctx_);
}

}  // namespace kvtier
