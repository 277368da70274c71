// A small Prometheus metrics registry in prometheus-cpp's model (prometheus-cpp is not packaged
// for Debian): families of counters, gauges and histograms, one metric per label set.
//
// Hot paths hold a pointer to their metric and update it with one relaxed atomic operation: no
// lock, no allocation, no formatting. Creating metrics (Family::Add) and serializing take the
// registry's mutex and happen at start-up and at scrape time only. Collectors registered with
// AddCollector run just before each serialization, to mirror state that lives elsewhere (tier
// occupancy, the store's own counters) without touching the data path.
#pragma once

#include <atomic>
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

namespace kvtier::metrics {

// Label values in the order of the family's label names.
using LabelValues = std::vector<std::string>;

class Counter {
 public:
  void Increment(double by = 1) { value_.fetch_add(by, std::memory_order_relaxed); }
  // Mirrors a monotonic count kept elsewhere (a collector copying the store's counters).
  void Set(double v) { value_.store(v, std::memory_order_relaxed); }
  double value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0};
};

class Gauge {
 public:
  void Set(double v) { value_.store(v, std::memory_order_relaxed); }
  void Increment(double by = 1) { value_.fetch_add(by, std::memory_order_relaxed); }
  void Decrement(double by = 1) { value_.fetch_sub(by, std::memory_order_relaxed); }
  double value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0};
};

class Histogram {
 public:
  // `upper_bounds` strictly increasing; +Inf is implicit.
  explicit Histogram(std::vector<double> upper_bounds);
  void Observe(double v);
  const std::vector<double>& upper_bounds() const { return bounds_; }
  // Cumulative counts per bucket (last is +Inf), sum and count: a consistent-enough snapshot
  // for exposition (each field is read atomically; a scrape racing an Observe may be one off).
  std::vector<uint64_t> CumulativeCounts() const;
  double sum() const { return sum_.load(std::memory_order_relaxed); }
  uint64_t count() const { return count_.load(std::memory_order_relaxed); }

 private:
  const std::vector<double> bounds_;
  std::unique_ptr<std::atomic<uint64_t>[]> buckets_;  // bounds_.size() + 1, not cumulative
  std::atomic<double> sum_{0};
  std::atomic<uint64_t> count_{0};
};

// Latency buckets in seconds from 10 us to 10 s, for RPCs and I/O.
std::vector<double> LatencyBuckets();

enum class MetricType { kCounter, kGauge, kHistogram };

class Registry;

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
  Family(Registry* registry, std::string name, std::string help, std::vector<std::string> labels,
         std::vector<double> buckets)
      : registry_(registry),
        name_(std::move(name)),
        help_(std::move(help)),
        label_names_(std::move(labels)),
        buckets_(std::move(buckets)) {}

  Registry* registry_;
  std::string name_, help_;
  std::vector<std::string> label_names_;
  std::vector<double> buckets_;  // histograms only
  // Guarded by the registry's mutex; deque keeps element addresses stable.
  std::deque<std::pair<LabelValues, std::unique_ptr<T>>> metrics_;
};

class Registry {
 public:
  Registry() = default;
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

  // Text exposition format 0.0.4.
  std::string Serialize();

 private:
  template <typename T>
  friend class Family;
  struct Entry {
    MetricType type;
    void* family;  // Family<Counter|Gauge|Histogram>*
  };

  template <typename T>
  Family<T>& AddFamily(MetricType type, absl::string_view name, absl::string_view help,
                       std::vector<std::string> labels, std::vector<double> buckets);

  absl::Mutex mu_;
  std::vector<Entry> entries_ ABSL_GUARDED_BY(mu_);
  std::deque<std::unique_ptr<Family<Counter>>> counters_ ABSL_GUARDED_BY(mu_);
  std::deque<std::unique_ptr<Family<Gauge>>> gauges_ ABSL_GUARDED_BY(mu_);
  std::deque<std::unique_ptr<Family<Histogram>>> histograms_ ABSL_GUARDED_BY(mu_);
  absl::Mutex collectors_mu_;
  std::vector<std::function<void()>> collectors_ ABSL_GUARDED_BY(collectors_mu_);
};

}  // namespace kvtier::metrics
