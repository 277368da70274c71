#include "daemon/observability/metrics.h"

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <type_traits>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace kvtier::metrics {
namespace {

bool ValidName(absl::string_view name, bool allow_colon) {
  if (name.empty()) return false;
  for (size_t i = 0; i < name.size(); ++i) {
    const char c = name[i];
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
                    (allow_colon && c == ':') || (i > 0 && c >= '0' && c <= '9');
    if (!ok) return false;
  }
  return true;
}

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "kvtier metrics: %s\n", what.c_str());
  std::abort();
}

// prometheus-cpp 1.0.1 writes HELP text verbatim, so a newline in it would end the line early
// and break the exposition: escape it (and the backslash) as the text format asks.
std::string EscapeHelp(absl::string_view help) {
  std::string out;
  for (char c : help) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

}  // namespace

void Counter::Increment(double by) { counter_.Increment(by); }
void Counter::Set(double v) {
  const double now = counter_.Value();
  if (v > now) counter_.Increment(v - now);
}
double Counter::value() const { return counter_.Value(); }

void Gauge::Set(double v) { gauge_.Set(v); }
void Gauge::Increment(double by) { gauge_.Increment(by); }
void Gauge::Decrement(double by) { gauge_.Decrement(by); }
double Gauge::value() const { return gauge_.Value(); }

void Histogram::Observe(double v) { histogram_.Observe(v); }
std::vector<uint64_t> Histogram::CumulativeCounts() const {
  const prometheus::ClientMetric m = histogram_.Collect();
  std::vector<uint64_t> out;
  out.reserve(m.histogram.bucket.size());
  for (const auto& b : m.histogram.bucket) out.push_back(b.cumulative_count);
  return out;
}
double Histogram::sum() const { return histogram_.Collect().histogram.sample_sum; }
uint64_t Histogram::count() const { return histogram_.Collect().histogram.sample_count; }

std::vector<double> LatencyBuckets() {
  return {1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3,
          1e-2, 2.5e-2, 5e-2, 0.1,  0.25,   0.5,  1,    2.5,    10};
}

template <typename T>
absl::StatusOr<T*> Family<T>::Add(const LabelValues& values) {
  if (values.size() != label_names_.size()) {
    return absl::InvalidArgumentError(absl::StrCat("metric ", name_, " takes ", label_names_.size(),
                                                   " label values, got ", values.size()));
  }
  absl::MutexLock lock(&registry_->mu_);
  for (auto& [v, metric] : metrics_) {
    if (v == values) return metric.get();
  }
  std::map<std::string, std::string> labels;
  for (size_t i = 0; i < values.size(); ++i) labels.emplace(label_names_[i], values[i]);
  std::unique_ptr<T> metric;
  if constexpr (std::is_same_v<T, Histogram>) {
    metric = std::make_unique<Histogram>(impl_->Add(labels, buckets_), buckets_);
  } else {
    metric = std::make_unique<T>(impl_->Add(labels));
  }
  T* raw = metric.get();
  metrics_.emplace_back(values, std::move(metric));
  return raw;
}

template <typename T>
T& Family<T>::Get(const LabelValues& values) {
  absl::StatusOr<T*> m = Add(values);
  if (!m.ok()) Die(std::string(m.status().message()));
  return **m;
}

template class Family<Counter>;
template class Family<Gauge>;
template class Family<Histogram>;

Registry::Registry() : registry_(std::make_unique<prometheus::Registry>()) {}
Registry::~Registry() = default;

template <typename T>
Family<T>& Registry::AddFamily(absl::string_view name, absl::string_view help,
                               std::vector<std::string> labels, std::vector<double> buckets) {
  if (!ValidName(name, true)) Die(absl::StrCat("invalid metric name '", name, "'"));
  for (const std::string& l : labels) {
    if (!ValidName(l, false) || l.rfind("__", 0) == 0 || l == "le") {
      Die(absl::StrCat("invalid label name '", l, "' for ", name));
    }
  }
  for (size_t i = 1; i < buckets.size(); ++i) {
    if (!(buckets[i - 1] < buckets[i])) Die(absl::StrCat("unsorted buckets for ", name));
  }
  absl::MutexLock lock(&mu_);
  if (std::find(names_.begin(), names_.end(), name) != names_.end()) {
    Die(absl::StrCat("duplicate metric '", name, "'"));
  }
  names_.emplace_back(name);
  auto& fronted = [&]() -> typename Family<T>::Fronted& {
    if constexpr (std::is_same_v<T, Counter>) {
      return prometheus::BuildCounter()
          .Name(std::string(name))
          .Help(EscapeHelp(help))
          .Register(*registry_);
    } else if constexpr (std::is_same_v<T, Gauge>) {
      return prometheus::BuildGauge()
          .Name(std::string(name))
          .Help(EscapeHelp(help))
          .Register(*registry_);
    } else {
      return prometheus::BuildHistogram()
          .Name(std::string(name))
          .Help(EscapeHelp(help))
          .Register(*registry_);
    }
  }();
  auto family = std::unique_ptr<Family<T>>(
      new Family<T>(this, std::string(name), std::move(labels), std::move(buckets), &fronted));
  Family<T>* raw = family.get();
  if constexpr (std::is_same_v<T, Counter>) {
    counters_.push_back(std::move(family));
  } else if constexpr (std::is_same_v<T, Gauge>) {
    gauges_.push_back(std::move(family));
  } else {
    histograms_.push_back(std::move(family));
  }
  return *raw;
}

Family<Counter>& Registry::AddCounter(absl::string_view name, absl::string_view help,
                                      std::vector<std::string> labels) {
  if (!absl::EndsWith(name, "_total")) Die(absl::StrCat("counter '", name, "' must end in _total"));
  return AddFamily<Counter>(name, help, std::move(labels), {});
}

Family<Gauge>& Registry::AddGauge(absl::string_view name, absl::string_view help,
                                  std::vector<std::string> labels) {
  return AddFamily<Gauge>(name, help, std::move(labels), {});
}

Family<Histogram>& Registry::AddHistogram(absl::string_view name, absl::string_view help,
                                          std::vector<std::string> labels,
                                          std::vector<double> buckets) {
  return AddFamily<Histogram>(name, help, std::move(labels), std::move(buckets));
}

void Registry::AddCollector(std::function<void()> collector) {
  absl::MutexLock lock(&collectors_mu_);
  collectors_.push_back(std::move(collector));
}

std::string Registry::Serialize() {
  {
    absl::MutexLock lock(&collectors_mu_);
    for (auto& c : collectors_) c();
  }
  return prometheus::TextSerializer().Serialize(registry_->Collect());
}

}  // namespace kvtier::metrics
