// Membership: this node's presence in etcd and its view of everyone else's.
//
// The node holds a lease (TTL `lease_ttl_s`), keeps it alive, and advertises itself at
// `<prefix>members/<node_id>` under that lease: its peer address, tiers, free capacity and the
// namespaces it serves. It watches the prefix and keeps the live member list (itself included).
// A node that dies stops renewing; etcd drops its key when the lease runs out and every watcher
// drops the node.
//
// etcd unreachable: the node keeps serving with the last member list it saw, says so once in
// the log (event=etcd_unreachable), reports etcd_reachable() false (a metric and /readyz detail
// in the daemon), and keeps retrying; when etcd answers again it re-grants a lease if its old one
// is gone, re-advertises itself (event=etcd_rejoined) and re-reads the members.
//
// Thread model: one thread renews and refreshes, one follows the watch stream. Public methods are
// thread-safe; `on_change` runs on the refresh thread.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "transport/etcd_client.h"

namespace kvtier {

struct MemberInfo {
  std::string node_id;
  std::string peer_address;             // host:port of its UCP listener
  std::vector<std::string> namespaces;  // names or prefixes ending in '*' it serves
  std::vector<std::string> tiers;
  uint64_t free_slots = 0;
  uint64_t page_bytes = 0;
  int http_port = 0;

  std::string ToJson() const;
  static absl::StatusOr<MemberInfo> FromJson(const std::string& text);
  // Whether `ns` is one of the namespaces this member serves.
  bool Serves(const std::string& ns) const;
};

struct MembershipOptions {
  EtcdOptions etcd;
  // Key prefix of this cluster in etcd. Default "/kvtier/".
  std::string prefix = "/kvtier/";
  // Lease TTL: how long a dead node stays listed. Default 10 s.
  int64_t lease_ttl_s = 10;
  // How often the refresh thread renews the lease, re-advertises and re-reads the members when
  // nothing wakes it earlier. Default: a third of the TTL, at most 1 s.
  absl::Duration refresh_interval = absl::Seconds(1);
};

class Membership {
 public:
  // `self` is asked for the current advertisement each time it is written (free capacity
  // changes). Starts both threads; does not wait for etcd.
  using OnChange = std::function<void(const std::vector<MemberInfo>& members)>;
  static absl::StatusOr<std::unique_ptr<Membership>> Start(const MembershipOptions& options,
                                                           std::function<MemberInfo()> self,
                                                           OnChange on_change);
  // Revokes the lease (a clean leave is seen at once) and stops the threads.
  ~Membership();
  Membership(const Membership&) = delete;
  Membership& operator=(const Membership&) = delete;

  std::vector<MemberInfo> Members() const;
  bool etcd_reachable() const { return reachable_.load(std::memory_order_relaxed); }
  // Bumps whenever the set of members (ids, addresses, namespaces) changes.
  uint64_t generation() const { return generation_.load(std::memory_order_acquire); }
  uint64_t rejoins() const { return rejoins_.load(std::memory_order_relaxed); }

 private:
  Membership(const MembershipOptions& options, std::unique_ptr<EtcdClient> etcd,
             std::function<MemberInfo()> self, OnChange on_change)
      : options_(options),
        etcd_(std::move(etcd)),
        self_(std::move(self)),
        on_change_(std::move(on_change)) {}
  void RefreshLoop();
  void WatchLoop();
  // One renewal + advertisement + member read; false when etcd did not answer.
  bool RefreshOnce();
  void SetReachable(bool up, const absl::Status& why);

  const MembershipOptions options_;
  const std::unique_ptr<EtcdClient> etcd_;
  const std::function<MemberInfo()> self_;
  const OnChange on_change_;
  std::atomic<bool> reachable_{false};
  std::atomic<bool> ever_reachable_{false};
  std::atomic<uint64_t> generation_{0};
  std::atomic<uint64_t> rejoins_{0};
  std::atomic<int64_t> watch_revision_{0};

  mutable absl::Mutex mu_;
  std::vector<MemberInfo> members_ ABSL_GUARDED_BY(mu_);
  std::string members_signature_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  bool wake_ ABSL_GUARDED_BY(mu_) = false;
  // ---- refresh thread only ----
  int64_t lease_ = 0;
  std::string advertised_;
  int64_t advertised_lease_ = 0;
  int turns_since_put_ = 0;
  std::thread refresh_;
  std::thread watch_;
};

}  // namespace kvtier
