#include "tiering/sim/attention_trace.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <random>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace kvtier {
namespace {

using nlohmann::json;

template <typename T>
absl::Status ReadArray(const json& obj, const char* field, bool required, size_t line,
                       std::vector<T>& out) {
  auto it = obj.find(field);
  if (it == obj.end()) {
    if (!required) return absl::OkStatus();
    return absl::InvalidArgumentError(absl::StrCat("line ", line, ": missing '", field, "'"));
  }
  if (!it->is_array()) {
    return absl::InvalidArgumentError(
        absl::StrCat("line ", line, ": '", field, "' is not an array"));
  }
  out.reserve(it->size());
  for (const json& v : *it) {
    if (!v.is_number() || (std::is_unsigned_v<T> && !v.is_number_unsigned())) {
      return absl::InvalidArgumentError(
          absl::StrCat("line ", line, ": '", field, "' holds a non-number or negative value"));
    }
    out.push_back(v.get<T>());
  }
  return absl::OkStatus();
}

// 5 significant digits keeps generated traces small without changing any result measurably.
double Round5(double v) {
  if (v == 0) return 0;
  const double scale = std::pow(10.0, 4 - std::floor(std::log10(std::fabs(v))));
  return std::round(v * scale) / scale;
}

}  // namespace

uint32_t AttentionTrace::page_count() const {
  uint32_t n = 0;
  for (const AttentionStep& s : steps) n += static_cast<uint32_t>(s.append.size());
  return n;
}

absl::StatusOr<AttentionTrace> ReadAttentionTrace(std::istream& in) {
  AttentionTrace trace;
  std::string line;
  size_t line_no = 0;
  bool header = false;
  std::vector<bool> appended;
  while (std::getline(in, line)) {
    ++line_no;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    json obj = json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (obj.is_discarded() || !obj.is_object()) {
      return absl::InvalidArgumentError(absl::StrCat("line ", line_no, ": not a JSON object"));
    }
    if (!header) {
      if (obj.value("kind", std::string()) != "kvtier-attention" || obj.value("version", 0) != 1) {
        return absl::InvalidArgumentError(
            absl::StrCat("line ", line_no,
                         ": expected header {\"kind\": \"kvtier-attention\", \"version\": 1}"));
      }
      trace.tokens_per_page = obj.value("tokens_per_page", 16u);
      if (trace.tokens_per_page == 0) {
        return absl::InvalidArgumentError("header: tokens_per_page must be > 0");
      }
      if (obj.contains("sink_pages")) {
        trace.sinks_known = true;
        if (absl::Status s = ReadArray(obj, "sink_pages", true, line_no, trace.sink_pages);
            !s.ok()) {
          return s;
        }
      }
      header = true;
      continue;
    }
    AttentionStep step;
    if (!obj.contains("step") || !obj["step"].is_number_unsigned()) {
      return absl::InvalidArgumentError(absl::StrCat("line ", line_no, ": missing 'step'"));
    }
    step.step = obj["step"].get<uint32_t>();
    for (absl::Status s : {ReadArray(obj, "append", false, line_no, step.append),
                           ReadArray(obj, "pages", true, line_no, step.pages),
                           ReadArray(obj, "mass", true, line_no, step.mass),
                           ReadArray(obj, "value_norm", true, line_no, step.value_norm),
                           ReadArray(obj, "breadth", false, line_no, step.breadth),
                           ReadArray(obj, "entropy", false, line_no, step.entropy)}) {
      if (!s.ok()) return s;
    }
    const size_t n = step.pages.size();
    if (step.mass.size() != n || step.value_norm.size() != n ||
        (!step.breadth.empty() && step.breadth.size() != n) ||
        (!step.entropy.empty() && step.entropy.size() != n)) {
      return absl::InvalidArgumentError(
          absl::StrCat("line ", line_no,
                       ": pages, mass, value_norm (and breadth, entropy when "
                       "given) must have the same length"));
    }
    if (step.breadth.empty()) step.breadth.assign(n, 0.0f);
    if (step.entropy.empty()) step.entropy.assign(n, 1.0f);
    for (uint32_t p : step.append) {
      if (p >= appended.size()) appended.resize(p + 1, false);
      if (appended[p]) {
        return absl::InvalidArgumentError(
            absl::StrCat("line ", line_no, ": page ", p, " appended twice"));
      }
      appended[p] = true;
    }
    for (size_t i = 0; i < n; ++i) {
      if (step.pages[i] >= appended.size() || !appended[step.pages[i]]) {
        return absl::InvalidArgumentError(
            absl::StrCat("line ", line_no, ": page ", step.pages[i], " used before appended"));
      }
      if (!(step.mass[i] >= 0 && step.mass[i] <= 1 && step.value_norm[i] >= 0 &&
            step.breadth[i] >= 0 && step.breadth[i] <= 1 && step.entropy[i] >= 0 &&
            step.entropy[i] <= 1)) {
        return absl::InvalidArgumentError(
            absl::StrCat("line ", line_no, ": page ", step.pages[i], " has a value out of range"));
      }
    }
    trace.steps.push_back(std::move(step));
  }
  if (!header) return absl::InvalidArgumentError("empty attention trace (no header)");
  return trace;
}

absl::StatusOr<AttentionTrace> ReadAttentionTraceFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open attention trace '", path, "'"));
  return ReadAttentionTrace(in);
}

absl::Status WriteAttentionTrace(const AttentionTrace& trace, std::ostream& out) {
  json header = {
      {"kind", "kvtier-attention"}, {"version", 1}, {"tokens_per_page", trace.tokens_per_page}};
  if (trace.sinks_known) header["sink_pages"] = trace.sink_pages;
  out << header.dump() << '\n';
  std::vector<double> rounded;
  for (const AttentionStep& s : trace.steps) {
    json line = {{"step", s.step}, {"append", s.append}, {"pages", s.pages}};
    for (const auto& [name, values] :
         {std::pair<const char*, const std::vector<float>*>{"mass", &s.mass},
          {"value_norm", &s.value_norm},
          {"breadth", &s.breadth},
          {"entropy", &s.entropy}}) {
      rounded.clear();
      for (float v : *values) rounded.push_back(Round5(v));
      line[name] = rounded;
    }
    out << line.dump() << '\n';
  }
  if (!out) return absl::DataLossError("writing the attention trace failed");
  return absl::OkStatus();
}

absl::StatusOr<AttentionTrace> GenerateAttentionTrace(const AttentionTraceOptions& o) {
  if (o.prompt_pages == 0 || o.tokens_per_page == 0 || o.steps == 0) {
    return absl::InvalidArgumentError("steps, prompt_pages and tokens_per_page must be > 0");
  }
  for (uint32_t s : o.sink_pages) {
    if (s >= o.prompt_pages) {
      return absl::InvalidArgumentError(
          absl::StrCat("sink page ", s, " is outside the prompt of ", o.prompt_pages, " pages"));
    }
  }
  if (o.sink_mass + o.heavy_mass + o.recent_mass >= 1.0 || o.topics == 0 ||
      o.pages_per_topic == 0 || o.phase_steps == 0) {
    return absl::InvalidArgumentError(
        "sink_mass + heavy_mass + recent_mass must be < 1 and topics, pages_per_topic, "
        "phase_steps > 0");
  }
  std::mt19937_64 rng(o.seed);
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  auto in = [&](double lo, double hi) { return lo + (hi - lo) * unit(rng); };

  AttentionTrace trace;
  trace.tokens_per_page = o.tokens_per_page;
  trace.sink_pages = o.sink_pages;
  trace.sinks_known = true;

  std::vector<bool> is_sink(o.prompt_pages, false);
  for (uint32_t s : o.sink_pages) is_sink[s] = true;
  std::vector<double> base_norm;  // a page's own value norm
  std::vector<double> topic_weight;
  auto add_page = [&] {
    const size_t p = base_norm.size();
    const bool sink = p < is_sink.size() && is_sink[p];
    base_norm.push_back(sink ? in(0.03, 0.08) : in(0.7, 1.3));
    topic_weight.push_back(in(0.5, 1.5));
  };
  for (uint32_t p = 0; p < o.prompt_pages; ++p) add_page();

  // Topics draw their pages from the prompt (sinks excluded); heavy hitters carry large values.
  std::vector<std::vector<uint32_t>> topics(o.topics);
  std::vector<uint32_t> candidates;
  for (uint32_t p = 0; p < o.prompt_pages; ++p) {
    if (!is_sink[p]) candidates.push_back(p);
  }
  for (auto& t : topics) {
    std::shuffle(candidates.begin(), candidates.end(), rng);
    t.assign(candidates.begin(), candidates.begin() + static_cast<std::ptrdiff_t>(std::min<size_t>(
                                                          o.pages_per_topic, candidates.size())));
    for (uint32_t p : t) base_norm[p] = std::max(base_norm[p], in(1.2, 1.8));
  }
  std::vector<double> zipf(o.topics);
  for (uint32_t i = 0; i < o.topics; ++i) zipf[i] = 1.0 / std::pow(i + 1.0, o.topic_zipf);
  std::discrete_distribution<uint32_t> pick_topic(zipf.begin(), zipf.end());

  uint32_t active = 0;
  std::vector<double> mass;
  std::vector<int> role;  // 0 background, 1 sink, 2 heavy, 3 recent
  for (uint32_t step = 0; step < o.steps; ++step) {
    AttentionStep s;
    s.step = step;
    if (step == 0) {
      for (uint32_t p = 0; p < o.prompt_pages; ++p) s.append.push_back(p);
    } else if (step % o.tokens_per_page == 0) {
      const auto p = static_cast<uint32_t>(base_norm.size());
      add_page();
      s.append.push_back(p);
      // What the model writes while on a topic becomes part of that topic.
      if (unit(rng) < 0.3) topics[active].push_back(p);
    }
    if (step % o.phase_steps == 0) active = pick_topic(rng);
    const size_t n = base_norm.size();
    mass.assign(n, 0.0);
    role.assign(n, 0);
    for (uint32_t p : o.sink_pages) role[p] = 1;
    double topic_total = 0;
    for (uint32_t p : topics[active]) {
      if (role[p] == 0) topic_total += topic_weight[p];
    }
    for (uint32_t p : topics[active]) {
      if (role[p] == 0) {
        role[p] = 2;
        mass[p] = o.heavy_mass * topic_weight[p] / topic_total;
      }
    }
    std::vector<uint32_t> recent;
    for (size_t p = n; p-- > 0 && recent.size() < o.recent_pages;) {
      if (role[p] == 0) recent.push_back(static_cast<uint32_t>(p));
    }
    double recent_norm = 0;
    for (size_t i = 0; i < recent.size(); ++i) recent_norm += std::pow(0.5, i);
    for (size_t i = 0; i < recent.size(); ++i) {
      role[recent[i]] = 3;
      mass[recent[i]] = o.recent_mass * std::pow(0.5, i) / recent_norm;
    }
    size_t background = 0;
    for (size_t p = 0; p < n; ++p) background += role[p] == 0;
    const double rest = 1.0 - o.sink_mass - o.heavy_mass - o.recent_mass;
    for (size_t p = 0; p < n; ++p) {
      if (role[p] == 1) mass[p] = o.sink_mass / o.sink_pages.size();
      if (role[p] == 0) mass[p] = rest / std::max<size_t>(background, 1);
    }
    double total = 0;
    for (size_t p = 0; p < n; ++p) {
      mass[p] *= in(1.0 - o.noise, 1.0 + o.noise);
      total += mass[p];
    }
    for (size_t p = 0; p < n; ++p) {
      s.pages.push_back(static_cast<uint32_t>(p));
      s.mass.push_back(static_cast<float>(mass[p] / total));
      s.value_norm.push_back(static_cast<float>(base_norm[p] * in(0.95, 1.05)));
      switch (role[p]) {
        case 1:
          s.breadth.push_back(static_cast<float>(in(0.93, 1.0)));
          s.entropy.push_back(static_cast<float>(in(0.15, 0.3)));
          break;
        case 2:
          s.breadth.push_back(static_cast<float>(in(0.3, 0.5)));
          s.entropy.push_back(static_cast<float>(in(0.35, 0.55)));
          break;
        case 3:
          s.breadth.push_back(static_cast<float>(in(0.5, 0.7)));
          s.entropy.push_back(static_cast<float>(in(0.5, 0.7)));
          break;
        default:
          s.breadth.push_back(static_cast<float>(in(0.0, 0.1)));
          s.entropy.push_back(static_cast<float>(in(0.7, 0.9)));
      }
    }
    trace.steps.push_back(std::move(s));
  }
  return trace;
}

}  // namespace kvtier
