// kvtierd's metrics: a thin layer over prometheus-cpp's core library (Debian's
// prometheus-cpp-dev), which owns the metric values, the families and the text exposition.
//
// The layer exists for three reasons: label values are passed positionally in the order the
// family declared its label names (so a hot path caches one pointer and never builds a label map),
// a wrong label count is an error value instead of an exception, and collectors registered with
// AddCollector run just before each serialization, to mirror state that lives elsewhere (tier
// occupancy, the store's own counters) without touching the data path.
//
// Hot paths hold a pointer to their metric and update it through prometheus-cpp (one atomic
// operation: no lock, no allocation, no formatting). Creating metrics (Family::Add) and
// serializing take the registry's mutex and happen at start-up and at scrape time only.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"

namespace prometheus {
class Counter;
class Gauge;
class Histogram;
class Registry;
template <typename T>
class Family;
}  // namespace prometheus

namespace kvtier::metrics {

// Label values in the order of the family's label names.
using LabelValues = std::vector<std::string>;

class Counter {
 public:
  explicit Counter(prometheus::Counter& counter) : counter_(counter) {}
  void Increment(double by = 1);
  // Mirrors a monotonic count kept elsewhere (a collector copying the store's counters): moves
  // the counter up to `v`; a smaller `v` (the source restarted) leaves it where it is, since a
  // Prometheus counter only goes down by a process restart.
  void Set(double v);
  double value() const;

 private:
  prometheus::Counter& counter_;
};

class Gauge {
 public:
  explicit Gauge(prometheus::Gauge& gauge) : gauge_(gauge) {}
  void Set(double v);
  void Increment(double by = 1);
  void Decrement(double by = 1);
  double value() const;

 private:
  prometheus::Gauge& gauge_;
};

class Histogram {
 public:
  Histogram(prometheus::Histogram& histogram, std::vector<double> upper_bounds)
      : histogram_(histogram), bounds_(std::move(upper_bounds)) {}
  void Observe(double v);
  const std::vector<double>& upper_bounds() const { return bounds_; }
  // Cumulative counts per bucket (last is +Inf), sum and count, as a scrape would see them.
  std::vector<uint64_t> CumulativeCounts() const;
  double sum() const;
  uint64_t count() const;

 private:
  prometheus::Histogram& histogram_;
  const std::vector<double> bounds_;
};

// Latency buckets in seconds from 10 us to 10 s, for RPCs and I/O.
std::vector<double> LatencyBuckets();

class Registry;

// The prometheus-cpp metric type each of ours fronts.
template <typename T>
struct PrometheusTypeOf;
template <>
struct PrometheusTypeOf<Counter> {
  using type = prometheus::Counter;
};
template <>
struct PrometheusTypeOf<Gauge> {
  using type = prometheus::Gauge;
};
template <>
struct PrometheusTypeOf<Histogram> {
  using type = prometheus::Histogram;
};

template <typename T>
class Family {
 public:
  // Returns the metric for these label values, creating it on first use. The reference stays
  // valid for the registry's lifetime. Fails on a wrong number of label values.
  absl::StatusOr<T*> Add(const LabelValues& values);
  // Add() for label values known correct at compile time; aborts on a mismatch (a bug).
  T& Get(const LabelValues& values);
  const std::string& name() const { return name_; }

 private:
  friend class Registry;
  using Fronted = prometheus::Family<typename PrometheusTypeOf<T>::type>;
  Family(Registry* registry, std::string name, std::vector<std::string> labels,
         std::vector<double> buckets, Fronted* impl)
      : registry_(registry),
        name_(std::move(name)),
        label_names_(std::move(labels)),
        buckets_(std::move(buckets)),
        impl_(impl) {}

  Registry* registry_;
  std::string name_;
  std::vector<std::string> label_names_;
  std::vector<double> buckets_;  // histograms only
  Fronted* impl_;                // owned by the prometheus-cpp registry
  // Guarded by the registry's mutex; deque keeps element addresses stable.
  std::deque<std::pair<LabelValues, std::unique_ptr<T>>> metrics_;
};

class Registry {
 public:
  Registry();
  ~Registry();
  Registry(const Registry&) = delete;
  Registry& operator=(const Registry&) = delete;

  // Names must match [a-zA-Z_:][a-zA-Z0-9_:]* and be unique; label names [a-zA-Z_][a-zA-Z0-9_]*.
  // Invalid names are programming errors and abort with the offending name.
  Family<Counter>& AddCounter(absl::string_view name, absl::string_view help,
                              std::vector<std::string> labels = {});
  Family<Gauge>& AddGauge(absl::string_view name, absl::string_view help,
                          std::vector<std::string> labels = {});
  Family<Histogram>& AddHistogram(absl::string_view name, absl::string_view help,
                                  std::vector<std::string> labels, std::vector<double> buckets);

  // Runs before every Serialize(), under no registry lock (collectors call Family::Get/Set).
  void AddCollector(std::function<void()> collector);

  // Text exposition format 0.0.4 (prometheus-cpp's TextSerializer).
  std::string Serialize();

 private:
  template <typename T>
  friend class Family;

  template <typename T>
  Family<T>& AddFamily(absl::string_view name, absl::string_view help,
                       std::vector<std::string> labels, std::vector<double> buckets);

  absl::Mutex mu_;
  std::unique_ptr<prometheus::Registry> registry_;  // thread-safe itself
  std::vector<std::string> names_ ABSL_GUARDED_BY(mu_);
  std::deque<std::unique_ptr<Family<Counter>>> counters_ ABSL_GUARDED_BY(mu_);
  std::deque<std::unique_ptr<Family<Gauge>>> gauges_ ABSL_GUARDED_BY(mu_);
  std::deque<std::unique_ptr<Family<Histogram>>> histograms_ ABSL_GUARDED_BY(mu_);
  absl::Mutex collectors_mu_;
  std::vector<std::function<void()>> collectors_ ABSL_GUARDED_BY(collectors_mu_);
};

}  // namespace kvtier::metrics
