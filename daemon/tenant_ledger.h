// TenantLedger: what each uid and each namespace holds in kvtierd right now, so limits apply per
// tenant and not only in total: live namespaces (those with at least one session) per uid, and
// pins per uid and per namespace. A namespace whose last session ends is retired by the caller.
//
// Thread model: not synchronized; the Dispatcher calls it under its own mutex.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "tiering/types.h"

namespace kvtier {

struct TenantLimits {
  uint32_t max_namespaces = 1024;         // live namespaces in total
  uint32_t max_namespaces_per_uid = 64;   // live namespaces one uid holds sessions in
  uint32_t max_pinned_per_uid = 0;        // pins of one uid's sessions together
  uint32_t max_pinned_per_namespace = 0;  // pins in one namespace, over all its sessions
};

class TenantLedger {
 public:
  explicit TenantLedger(TenantLimits limits) : limits_(limits) {}

  // A session of `uid` joins `name`. ResourceExhausted (naming the limit) when the namespace is
  // new and would exceed max_namespaces, or new to this uid and would exceed the uid's share.
  absl::Status Join(uid_t uid, const std::string& name);
  // That session ended. True when it was the namespace's last: the caller retires it.
  bool Leave(uid_t uid, const std::string& name);
  size_t live_namespaces() const { return sessions_.size(); }

  // Accounts `n` more pins by `uid` in `ns`, or refuses (changing nothing) past either quota.
  absl::Status AddPins(uid_t uid, NamespaceId ns, uint32_t n);
  void RemovePins(uid_t uid, NamespaceId ns, uint32_t n);

 private:
  const TenantLimits limits_;
  absl::flat_hash_map<std::string, uint32_t> sessions_;  // live namespace -> its sessions
  // uid -> (namespace -> that uid's sessions in it)
  absl::flat_hash_map<uid_t, absl::flat_hash_map<std::string, uint32_t>> by_uid_;
  absl::flat_hash_map<uid_t, uint32_t> pins_by_uid_;
  absl::flat_hash_map<NamespaceId, uint32_t> pins_by_namespace_;
};

}  // namespace kvtier
