#include "tiering/types.h"

namespace kvtier {

absl::string_view TierName(Tier t) {
  switch (t) {
    case Tier::kHbm:
      return "hbm";
    case Tier::kDram:
      return "dram";
    case Tier::kNvme:
      return "nvme";
  }
  return "invalid";
}

absl::string_view PageClassName(PageClass c) {
  switch (c) {
    case PageClass::kUnknown:
      return "unknown";
    case PageClass::kSink:
      return "sink";
    case PageClass::kSemantic:
      return "semantic";
  }
  return "invalid";
}

absl::string_view ClassSourceName(ClassSource s) {
  switch (s) {
    case ClassSource::kNone:
      return "none";
    case ClassSource::kHint:
      return "hint";
    case ClassSource::kPosition:
      return "position";
    case ClassSource::kMeasured:
      return "measured";
  }
  return "invalid";
}

}  // namespace kvtier
