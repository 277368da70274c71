#include "daemon/tenant_ledger.h"

#include "absl/strings/str_cat.h"

namespace kvtier {

absl::Status TenantLedger::Join(uid_t uid, const std::string& name) {
  const bool live = sessions_.contains(name);
  if (!live && sessions_.size() >= limits_.max_namespaces) {
    return absl::ResourceExhaustedError(
        absl::StrCat("namespace '", name, "' would be live namespace number ", sessions_.size() + 1,
                     "; limits.max_namespaces is ", limits_.max_namespaces));
  }
  auto& mine = by_uid_[uid];
  if (!mine.contains(name) && mine.size() >= limits_.max_namespaces_per_uid) {
    if (mine.empty()) by_uid_.erase(uid);
    return absl::ResourceExhaustedError(absl::StrCat(
        "uid ", uid, " already holds sessions in ", mine.size(),
        " namespaces; limits.max_namespaces_per_uid is ", limits_.max_namespaces_per_uid,
        " (a namespace is released when its last session ends)"));
  }
  ++mine[name];
  ++sessions_[name];
  return absl::OkStatus();
}

bool TenantLedger::Leave(uid_t uid, const std::string& name) {
  if (auto u = by_uid_.find(uid); u != by_uid_.end()) {
    if (auto it = u->second.find(name); it != u->second.end() && --it->second == 0) {
      u->second.erase(it);
      if (u->second.empty()) by_uid_.erase(u);
    }
  }
  auto it = sessions_.find(name);
  if (it == sessions_.end()) return false;
  if (--it->second > 0) return false;
  sessions_.erase(it);
  return true;
}

absl::Status TenantLedger::AddPins(uid_t uid, NamespaceId ns, uint32_t n) {
  const uint64_t by_uid = uint64_t{pins_by_uid_[uid]} + n;
  const uint64_t by_ns = uint64_t{pins_by_namespace_[ns]} + n;
  if (by_uid > limits_.max_pinned_per_uid) {
    return absl::ResourceExhaustedError(
        absl::StrCat("pinning ", n, " more pages would hold ", by_uid, " for uid ", uid,
                     "; limits.max_pinned_pages_per_uid is ", limits_.max_pinned_per_uid));
  }
  if (by_ns > limits_.max_pinned_per_namespace) {
    return absl::ResourceExhaustedError(
        absl::StrCat("pinning ", n, " more pages would hold ", by_ns,
                     " in this namespace; limits.max_pinned_pages_per_uid (per namespace too) is ",
                     limits_.max_pinned_per_namespace));
  }
  pins_by_uid_[uid] = static_cast<uint32_t>(by_uid);
  pins_by_namespace_[ns] = static_cast<uint32_t>(by_ns);
  return absl::OkStatus();
}

void TenantLedger::RemovePins(uid_t uid, NamespaceId ns, uint32_t n) {
  if (n == 0) return;
  if (auto it = pins_by_uid_.find(uid); it != pins_by_uid_.end()) {
    it->second -= std::min(it->second, n);
    if (it->second == 0) pins_by_uid_.erase(it);
  }
  if (auto it = pins_by_namespace_.find(ns); it != pins_by_namespace_.end()) {
    it->second -= std::min(it->second, n);
    if (it->second == 0) pins_by_namespace_.erase(it);
  }
}

}  // namespace kvtier
