#include "daemon/observability/daemon_metrics.h"

#include <string>

namespace kvtier {

absl::string_view RpcOpName(RpcOp op) {
  switch (op) {
    case RpcOp::kHello:
      return "hello";
    case RpcOp::kRegisterBuffers:
      return "register_buffers";
    case RpcOp::kLookup:
      return "lookup";
    case RpcOp::kLoad:
      return "load";
    case RpcOp::kStore:
      return "store";
    case RpcOp::kReport:
      return "report";
    case RpcOp::kPin:
      return "pin";
    case RpcOp::kUnpin:
      return "unpin";
    case RpcOp::kRelease:
      return "release";
    case RpcOp::kStats:
      return "stats";
    case RpcOp::kCount:
      break;
  }
  return "invalid";
}

DaemonMetrics::DaemonMetrics(metrics::Registry& r) {
  sessions_ = &r.AddGauge("kvtier_client_sessions", "Client sessions connected now.").Get({});
  sessions_total_ =
      &r.AddCounter("kvtier_client_sessions_total", "Client sessions ever opened.").Get({});
  auto& refused =
      r.AddCounter("kvtier_refused_connections_total",
                   "Connections refused before becoming a session, by reason.", {"reason"});
  const char* reasons[] = {"credentials", "version", "namespace", "limit"};
  for (size_t i = 0; i < refused_.size(); ++i) refused_[i] = &refused.Get({reasons[i]});
  auto& quota = r.AddCounter("kvtier_quota_rejections_total",
                             "Requests rejected by a per-connection quota, by quota.", {"quota"});
  const char* quotas[] = {"pinned_pages", "inflight_ops", "message_bytes"};
  for (size_t i = 0; i < quota_.size(); ++i) quota_[i] = &quota.Get({quotas[i]});
  bad_requests_ = &r.AddCounter("kvtier_bad_requests_total",
                                "Malformed, truncated or out-of-range client messages.")
                       .Get({});
  auto& requests = r.AddCounter("kvtier_requests_total", "Client requests by operation and result.",
                                {"op", "result"});
  auto& latency = r.AddHistogram("kvtier_request_duration_seconds",
                                 "Client request latency in the daemon, by operation.", {"op"},
                                 metrics::LatencyBuckets());
  for (size_t i = 0; i < kOps; ++i) {
    const std::string op(RpcOpName(static_cast<RpcOp>(i)));
    requests_ok_[i] = &requests.Get({op, "ok"});
    requests_failed_[i] = &requests.Get({op, "error"});
    latency_[i] = &latency.Get({op});
  }
  auto& hit =
      r.AddCounter("kvtier_hit_tokens_total",
                   "Prompt tokens found cached by lookups, by the tier holding them.", {"tier"});
  for (int t = 0; t < kNumTiers; ++t) {
    hit_tokens_[t] = &hit.Get({std::string(TierName(static_cast<Tier>(t)))});
  }
  miss_tokens_ = &r.AddCounter("kvtier_miss_tokens_total",
                               "Prompt tokens looked up and not cached (to be recomputed).")
                      .Get({});
  planner_seconds_ =
      &r.AddHistogram("kvtier_planner_run_duration_seconds",
                      "Time of one planner pass over the tiers.", {}, metrics::LatencyBuckets())
           .Get({});
}

}  // namespace kvtier
