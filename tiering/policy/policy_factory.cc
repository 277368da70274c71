#include "tiering/policy/policy_factory.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "tiering/ranked_policy.h"

namespace kvtier {

const std::vector<std::string>& PolicyNames() {
  static const std::vector<std::string> names = {"kvtier",   "lru",       "lfu", "arc",   "s3fifo",
                                                 "wtinylfu", "streaming", "h2o", "belady"};
  return names;
}

absl::StatusOr<std::unique_ptr<PlacementPolicy>> MakePolicy(absl::string_view name,
                                                            const PolicyConfig& config) {
  if (name == "kvtier") return std::make_unique<KvtierPolicy>(config.kvtier);
  if (name == "lru") return std::make_unique<LruPolicy>();
  if (name == "lfu") return std::make_unique<LfuPolicy>();
  if (name == "arc") return std::make_unique<ArcPolicy>();
  if (name == "s3fifo") return std::make_unique<S3FifoPolicy>();
  if (name == "wtinylfu") return std::make_unique<WTinyLfuPolicy>(config.wtinylfu);
  if (name == "belady") {
    if (config.oracle == nullptr) {
      return absl::InvalidArgumentError(
          "policy 'belady' needs to know the future: only the simulator can run it");
    }
    return std::make_unique<BeladyPolicy>(config.oracle);
  }
  if (name == "streaming") return std::make_unique<StreamingLlmPolicy>(config.streaming);
  if (name == "h2o") return std::make_unique<H2oPolicy>(config.h2o);
  return absl::InvalidArgumentError(
      absl::StrCat("unknown policy '", name, "'; known: ", absl::StrJoin(PolicyNames(), ", ")));
}

}  // namespace kvtier
