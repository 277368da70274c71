#include "transport/membership.h"

#include <glog/logging.h>

#include <algorithm>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "nlohmann/json.hpp"

namespace kvtier {

using nlohmann::json;

std::string MemberInfo::ToJson() const {
  return json{{"node_id", node_id},    {"peer_address", peer_address}, {"namespaces", namespaces},
              {"tiers", tiers},        {"free_slots", free_slots},     {"page_bytes", page_bytes},
              {"http_port", http_port}}
      .dump();
}

absl::StatusOr<MemberInfo> MemberInfo::FromJson(const std::string& text) {
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError("member record is not a JSON object");
  }
  MemberInfo m;
  try {
    m.node_id = j.at("node_id").get<std::string>();
    m.peer_address = j.at("peer_address").get<std::string>();
    m.namespaces = j.value("namespaces", std::vector<std::string>{});
    m.tiers = j.value("tiers", std::vector<std::string>{});
    m.free_slots = j.value("free_slots", uint64_t{0});
    m.page_bytes = j.value("page_bytes", uint64_t{0});
    m.http_port = j.value("http_port", 0);
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("member record: ", e.what()));
  }
  if (m.node_id.empty() || m.peer_address.empty()) {
    return absl::InvalidArgumentError("member record without node_id or peer_address");
  }
  return m;
}

bool MemberInfo::Serves(const std::string& ns) const {
  for (const std::string& rule : namespaces) {
    if (!rule.empty() && rule.back() == '*') {
      if (absl::StartsWith(ns, absl::string_view(rule).substr(0, rule.size() - 1))) return true;
    } else if (rule == ns) {
      return true;
    }
  }
  return false;
}

absl::StatusOr<std::unique_ptr<Membership>> Membership::Start(const MembershipOptions& options,
                                                              std::function<MemberInfo()> self,
                                                              OnChange on_change) {
  if (options.lease_ttl_s < 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("lease TTL ", options.lease_ttl_s, " s is below the minimum of 2 s"));
  }
  absl::StatusOr<std::unique_ptr<EtcdClient>> etcd = EtcdClient::Create(options.etcd);
  if (!etcd.ok()) return etcd.status();
  std::unique_ptr<Membership> m(
      new Membership(options, *std::move(etcd), std::move(self), std::move(on_change)));
  m->refresh_ = std::thread([p = m.get()] { p->RefreshLoop(); });
  m->watch_ = std::thread([p = m.get()] { p->WatchLoop(); });
  return m;
}

Membership::~Membership() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  refresh_.join();
  watch_.join();
  if (lease_ != 0) etcd_->LeaseRevoke(lease_).IgnoreError();  // best effort: TTL covers it
}

std::vector<MemberInfo> Membership::Members() const {
  absl::MutexLock lock(&mu_);
  return members_;
}

void Membership::SetReachable(bool up, const absl::Status& why) {
  const bool was = reachable_.exchange(up, std::memory_order_relaxed);
  if (was == up) return;
  if (up) {
    LOG(INFO) << "event=etcd_reachable endpoints=" << absl::StrJoin(options_.etcd.endpoints, ",");
  } else {
    // Said once per outage; the daemon keeps serving with the members it last saw.
    LOG(WARNING) << "event=etcd_unreachable action=serve_locally_with_last_members endpoints="
                 << absl::StrJoin(options_.etcd.endpoints, ",") << " error=\"" << why.message()
                 << "\"";
  }
}

bool Membership::RefreshOnce() {
  const MemberInfo self = self_();
  const std::string key = absl::StrCat(options_.prefix, "members/", self.node_id);
  absl::Status st;
  if (lease_ != 0) {
    absl::StatusOr<int64_t> ttl = etcd_->LeaseKeepAlive(lease_);
    if (!ttl.ok()) {
      SetReachable(false, ttl.status());
      return false;
    }
    if (*ttl <= 0) {
      LOG(WARNING) << "event=etcd_lease_lost lease=" << lease_ << " action=rejoin";
      lease_ = 0;
    }
  }
  if (lease_ == 0) {
    absl::StatusOr<int64_t> lease = etcd_->LeaseGrant(options_.lease_ttl_s);
    if (!lease.ok()) {
      SetReachable(false, lease.status());
      return false;
    }
    lease_ = *lease;
    if (ever_reachable_.exchange(true)) {
      rejoins_.fetch_add(1, std::memory_order_relaxed);
      LOG(INFO) << "event=etcd_rejoined node=" << self.node_id << " lease=" << lease_;
    } else {
      LOG(INFO) << "event=etcd_joined node=" << self.node_id << " lease=" << lease_
                << " key=" << key;
    }
  }
  // Written when it changed (free capacity moves), under a new lease, and every tenth turn in
  // case etcd lost it; not every turn, since every write wakes every watcher.
  const std::string advert = self.ToJson();
  if (advert != advertised_ || lease_ != advertised_lease_ || ++turns_since_put_ >= 10) {
    if (st = etcd_->Put(key, advert, lease_); !st.ok()) {
      SetReachable(false, st);
      return false;
    }
    advertised_ = advert;
    advertised_lease_ = lease_;
    turns_since_put_ = 0;
  }
  absl::StatusOr<EtcdClient::Range> range =
      etcd_->GetPrefix(absl::StrCat(options_.prefix, "members/"));
  if (!range.ok()) {
    SetReachable(false, range.status());
    return false;
  }
  SetReachable(true, absl::OkStatus());
  std::vector<MemberInfo> members;
  for (const auto& [k, v] : range->kvs) {
    absl::StatusOr<MemberInfo> m = MemberInfo::FromJson(v);
    if (!m.ok()) {
      LOG_EVERY_N(WARNING, 100) << "event=member_record_invalid key=" << k << " error=\""
                                << m.status().message() << "\"";
      continue;
    }
    members.push_back(*std::move(m));
  }
  std::sort(members.begin(), members.end(),
            [](const MemberInfo& a, const MemberInfo& b) { return a.node_id < b.node_id; });
  std::string signature;
  for (const MemberInfo& m : members) {
    absl::StrAppend(&signature, m.node_id, "@", m.peer_address, "[",
                    absl::StrJoin(m.namespaces, ","), "];");
  }
  bool changed;
  {
    absl::MutexLock lock(&mu_);
    changed = signature != members_signature_;
    members_ = members;
    members_signature_ = std::move(signature);
  }
  watch_revision_.store(range->revision + 1, std::memory_order_relaxed);
  if (changed) {
    generation_.fetch_add(1, std::memory_order_acq_rel);
    LOG(INFO) << "event=members_changed members=\"" << [&] {
      absl::MutexLock lock(&mu_);
      return members_signature_;
    }() << "\"";
    if (on_change_) on_change_(members);
  }
  return true;
}

void Membership::RefreshLoop() {
  const absl::Duration interval =
      std::min(options_.refresh_interval, absl::Seconds(options_.lease_ttl_s) / 3);
  while (true) {
    RefreshOnce();
    absl::MutexLock lock(&mu_);
    mu_.AwaitWithTimeout(absl::Condition(
                             +[](Membership* m) ABSL_EXCLUSIVE_LOCKS_REQUIRED(m->mu_) {
                               return m->stop_ || m->wake_;
                             },
                             this),
                         interval);
    if (stop_) return;
    wake_ = false;
  }
}

void Membership::WatchLoop() {
  auto stopping = [this] {
    absl::MutexLock lock(&mu_);
    return stop_;
  };
  auto wake = [this] {
    absl::MutexLock lock(&mu_);
    wake_ = true;
  };
  while (!stopping()) {
    // Any change under the prefix wakes the refresh thread, which re-reads the whole list: the
    // list is small, and one code path decides what the members are.
    absl::Status s =
        etcd_->WatchPrefix(absl::StrCat(options_.prefix, "members/"),
                           watch_revision_.load(std::memory_order_relaxed), wake, stopping);
    if (absl::IsCancelled(s)) return;
    absl::MutexLock lock(&mu_);
    mu_.AwaitWithTimeout(absl::Condition(&stop_), absl::Milliseconds(500));
  }
}

}  // namespace kvtier
