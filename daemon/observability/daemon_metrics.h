// The daemon's own metrics: client sessions, refused connections, quota rejections, requests and
// their latency per operation, hit tokens, and planner runs. Resolved to metric pointers once at
// start; every update on a request path is a relaxed atomic add.
#pragma once

#include <array>

#include "daemon/observability/metrics.h"
#include "tiering/types.h"

namespace kvtier {

// Operations of the client protocol, for per-operation request metrics.
enum class RpcOp : uint8_t {
  kHello = 0,
  kRegisterBuffers,
  kLookup,
  kLoad,
  kStore,
  kReport,
  kPin,
  kUnpin,
  kRelease,
  kStats,
  kCount
};
absl::string_view RpcOpName(RpcOp op);

// Why a connection was refused before it became a session.
enum class RefusalReason : uint8_t { kCredentials = 0, kVersion, kNamespace, kLimit, kCount };
// Which per-connection quota rejected a request.
enum class QuotaKind : uint8_t { kPinnedPages = 0, kInflightOps, kMessageBytes, kCount };

class DaemonMetrics {
 public:
  explicit DaemonMetrics(metrics::Registry& registry);

  void SessionOpened() {
    sessions_->Increment();
    sessions_total_->Increment();
  }
  void SessionClosed() { sessions_->Decrement(); }
  void Refused(RefusalReason r) { refused_[static_cast<size_t>(r)]->Increment(); }
  void QuotaRejected(QuotaKind q) { quota_[static_cast<size_t>(q)]->Increment(); }
  void BadRequest() { bad_requests_->Increment(); }
  void Request(RpcOp op, double seconds, bool ok) {
    const size_t i = static_cast<size_t>(op);
    (ok ? requests_ok_ : requests_failed_)[i]->Increment();
    latency_[i]->Observe(seconds);
  }
  void HitTokens(Tier tier, uint64_t tokens) {
    hit_tokens_[TierIndex(tier)]->Increment(static_cast<double>(tokens));
  }
  void MissTokens(uint64_t tokens) { miss_tokens_->Increment(static_cast<double>(tokens)); }
  void PlannerRun(double seconds) { planner_seconds_->Observe(seconds); }

 private:
  static constexpr size_t kOps = static_cast<size_t>(RpcOp::kCount);
  metrics::Gauge* sessions_;
  metrics::Counter* sessions_total_;
  std::array<metrics::Counter*, static_cast<size_t>(RefusalReason::kCount)> refused_;
  std::array<metrics::Counter*, static_cast<size_t>(QuotaKind::kCount)> quota_;
  metrics::Counter* bad_requests_;
  std::array<metrics::Counter*, kOps> requests_ok_, requests_failed_;
  std::array<metrics::Histogram*, kOps> latency_;
  std::array<metrics::Counter*, kNumTiers> hit_tokens_;
  metrics::Counter* miss_tokens_;
  metrics::Histogram* planner_seconds_;
};

}  // namespace kvtier
