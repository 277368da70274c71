#include "tiering/policy/sink_classifier.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"

namespace kvtier {

ClassDecision SinkClassifier::OnPut(PageClass hint, uint32_t position) const {
  if (hint != PageClass::kUnknown) return {hint, ClassSource::kHint};
  if (options_.sink_tokens > 0 &&
      uint64_t{position} * options_.tokens_per_page < options_.sink_tokens) {
    return {PageClass::kSink, ClassSource::kPosition};
  }
  return {};
}

bool SinkClassifier::LooksLikeSink(const PageStats& s) const {
  return s.stat_reports >= options_.min_reports && s.breadth >= options_.min_breadth &&
         s.mass_entropy <= options_.max_entropy && s.value_norm <= options_.max_value_norm;
}

ClassDecision SinkClassifier::OnStats(const PageEntry& e) const {
  // Hint and position are more trusted than any measurement: they stand.
  if (e.class_source == ClassSource::kHint || e.class_source == ClassSource::kPosition) {
    return {e.cls, e.class_source};
  }
  if (e.stats.stat_reports < options_.min_reports) return {e.cls, e.class_source};
  return {LooksLikeSink(e.stats) ? PageClass::kSink : PageClass::kSemantic, ClassSource::kMeasured};
}

absl::StatusOr<std::vector<AttentionSample>> SummarizeAttention(
    absl::Span<const float> probs, size_t rows, size_t pages, absl::Span<const float> value_norms,
    const SinkClassifierOptions& options) {
  if (pages == 0 || rows == 0) return absl::InvalidArgumentError("no rows or no pages");
  if (probs.size() != rows * pages) {
    return absl::InvalidArgumentError(absl::StrCat("attention has ", probs.size(),
                                                   " probabilities, expected rows (", rows,
                                                   ") x pages (", pages, ")"));
  }
  if (value_norms.size() != pages) {
    return absl::InvalidArgumentError(
        absl::StrCat(value_norms.size(), " value norms for ", pages, " pages"));
  }
  std::vector<double> mass(pages, 0), above(pages, 0), weighted_entropy(pages, 0);
  const double threshold = options.breadth_uniform_multiple / static_cast<double>(pages);
  const double max_entropy = pages > 1 ? std::log(static_cast<double>(pages)) : 1.0;
  for (size_t r = 0; r < rows; ++r) {
    const float* row = probs.data() + r * pages;
    double h = 0;
    for (size_t p = 0; p < pages; ++p) {
      if (row[p] > 0) h -= row[p] * std::log(static_cast<double>(row[p]));
    }
    const double normalised = pages > 1 ? h / max_entropy : 0.0;
    for (size_t p = 0; p < pages; ++p) {
      mass[p] += row[p];
      if (row[p] > threshold) above[p] += 1;
      weighted_entropy[p] += row[p] * normalised;
    }
  }
  std::vector<AttentionSample> out(pages);
  for (size_t p = 0; p < pages; ++p) {
    AttentionSample& s = out[p];
    s.mass = static_cast<float>(std::min(1.0, mass[p] / static_cast<double>(rows)));
    s.breadth = static_cast<float>(above[p] / static_cast<double>(rows));
    // A page nobody attends has no rows to average: call its entropy maximal (not sink-like).
    s.mass_entropy = mass[p] > 0
                         ? static_cast<float>(std::clamp(weighted_entropy[p] / mass[p], 0.0, 1.0))
                         : 1.0f;
    s.value_norm = value_norms[p];
  }
  return out;
}

absl::Status ClassifyAfterReport(TieredStore& store, NamespaceId ns, const PageKey& key,
                                 const SinkClassifier& classifier) {
  std::optional<PageEntry> e = store.Find(ns, key);
  if (!e.has_value()) return absl::NotFoundError(absl::StrCat("page ", key.ToHex()));
  const ClassDecision d = classifier.OnStats(*e);
  if (d.cls == e->cls && d.source == e->class_source) return absl::OkStatus();
  return store.SetClass(ns, key, d.cls, d.source);
}

}  // namespace kvtier
