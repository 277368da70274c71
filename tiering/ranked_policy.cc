#include "tiering/ranked_policy.h"

namespace kvtier {

void RankedPolicy::Place(const PageKey& key, const PageEntry& entry) {
  const double rank = Rank(key, entry);
  auto [it, inserted] = where_.try_emplace(key, entry.tier, rank);
  if (!inserted) {
    by_tier_[TierIndex(it->second.first)].erase({it->second.second, key});
    it->second = {entry.tier, rank};
  }
  by_tier_[TierIndex(entry.tier)].insert({rank, key});
}

void RankedPolicy::Forget(const PageKey& key) {
  auto it = where_.find(key);
  if (it == where_.end()) return;
  by_tier_[TierIndex(it->second.first)].erase({it->second.second, key});
  where_.erase(it);
}

void RankedPolicy::OnInsert(const PageKey& key, const PageEntry& entry) { Place(key, entry); }
void RankedPolicy::OnAccess(const PageKey& key, const PageEntry& entry) { Place(key, entry); }
void RankedPolicy::OnUpdate(const PageKey& key, const PageEntry& entry) { Place(key, entry); }
void RankedPolicy::OnMove(const PageKey& key, Tier, const PageEntry& entry) { Place(key, entry); }
void RankedPolicy::OnRemove(const PageKey& key, const PageEntry&) { Forget(key); }

void RankedPolicy::LeastValuable(Tier tier, size_t count,
                                 absl::FunctionRef<bool(const PageKey&)> eligible,
                                 std::vector<PageKey>& out) {
  size_t added = 0;
  for (auto it = by_tier_[TierIndex(tier)].begin();
       it != by_tier_[TierIndex(tier)].end() && added < count; ++it) {
    if (eligible(it->second)) {
      out.push_back(it->second);
      ++added;
    }
  }
}

void RankedPolicy::MostValuable(Tier tier, size_t count,
                                absl::FunctionRef<bool(const PageKey&)> eligible,
                                std::vector<PageKey>& out) {
  size_t added = 0;
  const Ordered& set = by_tier_[TierIndex(tier)];
  for (auto it = set.rbegin(); it != set.rend() && added < count; ++it) {
    if (eligible(it->second)) {
      out.push_back(it->second);
      ++added;
    }
  }
}

double RankedPolicy::Value(const PageKey& key) const {
  auto it = where_.find(key);
  return it == where_.end() ? 0.0 : it->second.second;
}

}  // namespace kvtier
