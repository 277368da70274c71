#include "daemon/observability/metrics.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>

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

void AppendValue(std::string& out, double v) {
  if (std::isnan(v)) {
    out += "NaN";
  } else if (std::isinf(v)) {
    out += v > 0 ? "+Inf" : "-Inf";
  } else if (v == std::floor(v) && std::fabs(v) < 1e15) {
    absl::StrAppend(&out, static_cast<int64_t>(v));
  } else {
    // Shortest text that reads back as the same double: le="0.1", not "0.10000000000000001".
    char buf[32];
    const auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), v);
    out.append(buf, ec == std::errc() ? static_cast<size_t>(end - buf) : 0);
  }
}

void AppendEscaped(std::string& out, absl::string_view s, bool quote) {
  for (char c : s) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else if (quote && c == '"') {
      out += "\\\"";
    } else {
      out += c;
    }
  }
}

// `{a="x",b="y"}` plus an optional extra label (histogram `le`); nothing when there are none.
void AppendLabels(std::string& out, const std::vector<std::string>& names,
                  const LabelValues& values, absl::string_view extra_name = {},
                  absl::string_view extra_value = {}) {
  if (names.empty() && extra_name.empty()) return;
  out += '{';
  bool first = true;
  for (size_t i = 0; i < names.size(); ++i) {
    if (!first) out += ',';
    first = false;
    absl::StrAppend(&out, names[i], "=\"");
    AppendEscaped(out, values[i], true);
    out += '"';
  }
  if (!extra_name.empty()) {
    if (!first) out += ',';
    absl::StrAppend(&out, extra_name, "=\"", extra_value, "\"");
  }
  out += '}';
}

}  // namespace

Histogram::Histogram(std::vector<double> upper_bounds)
    : bounds_(std::move(upper_bounds)),
      buckets_(std::make_unique<std::atomic<uint64_t>[]>(bounds_.size() + 1)) {
  for (size_t i = 0; i <= bounds_.size(); ++i) buckets_[i].store(0, std::memory_order_relaxed);
}

void Histogram::Observe(double v) {
  // Prometheus buckets are "less than or equal": the first bound >= v.
  const size_t b =
      static_cast<size_t>(std::lower_bound(bounds_.begin(), bounds_.end(), v) - bounds_.begin());
  buckets_[b].fetch_add(1, std::memory_order_relaxed);
  sum_.fetch_add(v, std::memory_order_relaxed);
  count_.fetch_add(1, std::memory_order_relaxed);
}

std::vector<uint64_t> Histogram::CumulativeCounts() const {
  std::vector<uint64_t> out(bounds_.size() + 1);
  uint64_t acc = 0;
  for (size_t i = 0; i <= bounds_.size(); ++i) {
    acc += buckets_[i].load(std::memory_order_relaxed);
    out[i] = acc;
  }
  return out;
}

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
  std::unique_ptr<T> metric;
  if constexpr (std::is_same_v<T, Histogram>) {
    metric = std::make_unique<Histogram>(buckets_);
  } else {
    metric = std::make_unique<T>();
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

template <typename T>
Family<T>& Registry::AddFamily(MetricType type, absl::string_view name, absl::string_view help,
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
  for (const Entry& e : entries_) {
    if (static_cast<Family<Counter>*>(e.family)->name() == name) {
      Die(absl::StrCat("duplicate metric '", name, "'"));
    }
  }
  auto family = std::unique_ptr<Family<T>>(new Family<T>(this, std::string(name), std::string(help),
                                                         std::move(labels), std::move(buckets)));
  Family<T>* raw = family.get();
  if constexpr (std::is_same_v<T, Counter>) {
    counters_.push_back(std::move(family));
  } else if constexpr (std::is_same_v<T, Gauge>) {
    gauges_.push_back(std::move(family));
  } else {
    histograms_.push_back(std::move(family));
  }
  entries_.push_back(Entry{type, raw});
  return *raw;
}

Family<Counter>& Registry::AddCounter(absl::string_view name, absl::string_view help,
                                      std::vector<std::string> labels) {
  if (!absl::EndsWith(name, "_total")) Die(absl::StrCat("counter '", name, "' must end in _total"));
  return AddFamily<Counter>(MetricType::kCounter, name, help, std::move(labels), {});
}

Family<Gauge>& Registry::AddGauge(absl::string_view name, absl::string_view help,
                                  std::vector<std::string> labels) {
  return AddFamily<Gauge>(MetricType::kGauge, name, help, std::move(labels), {});
}

Family<Histogram>& Registry::AddHistogram(absl::string_view name, absl::string_view help,
                                          std::vector<std::string> labels,
                                          std::vector<double> buckets) {
  return AddFamily<Histogram>(MetricType::kHistogram, name, help, std::move(labels),
                              std::move(buckets));
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
  std::string out;
  out.reserve(16 * 1024);
  absl::MutexLock lock(&mu_);
  for (const Entry& e : entries_) {
    auto header = [&](const std::string& name, const std::string& help, const char* type) {
      absl::StrAppend(&out, "# HELP ", name, " ");
      AppendEscaped(out, help, false);
      absl::StrAppend(&out, "\n# TYPE ", name, " ", type, "\n");
    };
    switch (e.type) {
      case MetricType::kCounter:
      case MetricType::kGauge: {
        // Counter and gauge families share a layout apart from T.
        auto emit = [&](auto* f, const char* type) {
          header(f->name_, f->help_, type);
          for (const auto& [values, metric] : f->metrics_) {
            out += f->name_;
            AppendLabels(out, f->label_names_, values);
            out += ' ';
            AppendValue(out, metric->value());
            out += '\n';
          }
        };
        if (e.type == MetricType::kCounter) {
          emit(static_cast<Family<Counter>*>(e.family), "counter");
        } else {
          emit(static_cast<Family<Gauge>*>(e.family), "gauge");
        }
        break;
      }
      case MetricType::kHistogram: {
        auto* f = static_cast<Family<Histogram>*>(e.family);
        header(f->name_, f->help_, "histogram");
        for (const auto& [values, h] : f->metrics_) {
          const std::vector<uint64_t> cumulative = h->CumulativeCounts();
          for (size_t i = 0; i <= h->upper_bounds().size(); ++i) {
            std::string le;
            if (i == h->upper_bounds().size()) {
              le = "+Inf";
            } else {
              AppendValue(le, h->upper_bounds()[i]);
            }
            absl::StrAppend(&out, f->name_, "_bucket");
            AppendLabels(out, f->label_names_, values, "le", le);
            absl::StrAppend(&out, " ", cumulative[i], "\n");
          }
          absl::StrAppend(&out, f->name_, "_sum");
          AppendLabels(out, f->label_names_, values);
          out += ' ';
          AppendValue(out, h->sum());
          absl::StrAppend(&out, "\n", f->name_, "_count");
          AppendLabels(out, f->label_names_, values);
          // _count equals the +Inf bucket so the two never disagree within one scrape.
          absl::StrAppend(&out, " ", cumulative.back(), "\n");
        }
        break;
      }
    }
  }
  return out;
}

}  // namespace kvtier::metrics
