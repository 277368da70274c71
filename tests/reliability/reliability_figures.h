// Reads the key=value summary lines kvtier-reliability-worker prints, and adds them up over the
// iterations of a crash test.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace kvtier::testing {

// The value of `key=` on the last line of `text` that starts with `prefix`; 0 when absent.
inline uint64_t FigureOf(const std::string& text, const std::string& prefix, const std::string& key,
                         bool* found = nullptr) {
  std::string last;
  for (size_t at = 0; at < text.size();) {
    size_t eol = text.find('\n', at);
    if (eol == std::string::npos) eol = text.size();
    if (text.compare(at, prefix.size(), prefix) == 0) last = text.substr(at, eol - at);
    at = eol + 1;
  }
  const size_t pos = last.find(" " + key + "=");
  if (found != nullptr) *found = pos != std::string::npos;
  if (pos == std::string::npos) return 0;
  return std::strtoull(last.c_str() + pos + key.size() + 2, nullptr, 10);
}

struct VerifyFigures {
  bool parsed = false;
  uint64_t acked = 0, acked_intact = 0, inflight = 0, inflight_present = 0, never = 0,
           never_present = 0, wrong = 0;
};

inline VerifyFigures ParseVerify(const std::string& out) {
  VerifyFigures f;
  FigureOf(out, "verify ", "wrong", &f.parsed);
  f.acked = FigureOf(out, "verify ", "acked");
  f.acked_intact = FigureOf(out, "verify ", "acked_intact");
  f.inflight = FigureOf(out, "verify ", "inflight");
  f.inflight_present = FigureOf(out, "verify ", "inflight_present");
  f.never = FigureOf(out, "verify ", "never");
  f.never_present = FigureOf(out, "verify ", "never_present");
  f.wrong = FigureOf(out, "verify ", "wrong");
  return f;
}

struct CrashFigures {
  int kills = 0;
  int restarts = 0;
  double max_ready_ms = 0, sum_ready_ms = 0;
  uint64_t stores = 0, acks = 0, loads = 0, loads_verified = 0;
  uint64_t acked = 0, acked_intact = 0, inflight = 0, inflight_present = 0, never = 0,
           never_present = 0, wrong = 0;
  uint64_t max_acked_absent = 0;  // most acknowledged pages absent after one restart

  void NoteReady(double ms) {
    ++restarts;
    max_ready_ms = std::max(max_ready_ms, ms);
    sum_ready_ms += ms;
  }
  void Add(const VerifyFigures& f) {
    acked += f.acked;
    acked_intact += f.acked_intact;
    inflight += f.inflight;
    inflight_present += f.inflight_present;
    never += f.never;
    never_present += f.never_present;
    wrong += f.wrong;
  }
  void AddWorker(const std::string& out) {
    stores += FigureOf(out, "crash-worker ", "stores");
    acks += FigureOf(out, "crash-worker ", "acked");
    loads += FigureOf(out, "crash-worker ", "loads");
    loads_verified += FigureOf(out, "crash-worker ", "verified");
  }
  std::string Summary() const {
    return absl::StrFormat(
        "crash-test kills=%d restarts=%d ready_max_ms=%.0f ready_mean_ms=%.0f stores=%u "
        "acks=%u worker_loads=%u worker_loads_verified=%u checked_acked=%u acked_intact=%u "
        "acked_absent=%u max_acked_absent_per_restart=%u checked_inflight=%u inflight_present=%u "
        "checked_never=%u "
        "never_present=%u wrong=%u",
        kills, restarts, max_ready_ms, restarts > 0 ? sum_ready_ms / restarts : 0.0, stores, acks,
        loads, loads_verified, acked, acked_intact, acked - acked_intact, max_acked_absent,
        inflight, inflight_present, never, never_present, wrong);
  }
};

}  // namespace kvtier::testing
