#include "kernels/attention_stats.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/half_float.h"

namespace kvtier::kernels {

absl::Status ValidateAttentionStatsShape(const AttentionStatsShape& s) {
  if (s.tokens == 0 || s.q_heads == 0 || s.kv_heads == 0 || s.head_dim == 0 || s.window == 0 ||
      s.tokens_per_page == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("attention stats shape has a zero size: tokens=", s.tokens,
                     " q_heads=", s.q_heads, " kv_heads=", s.kv_heads, " head_dim=", s.head_dim,
                     " window=", s.window, " tokens_per_page=", s.tokens_per_page));
  }
  if (s.q_heads % s.kv_heads != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("kv_heads ", s.kv_heads, " does not divide q_heads ", s.q_heads));
  }
  if (s.window > s.tokens) {
    return absl::InvalidArgumentError(
        absl::StrCat("window ", s.window, " is longer than the sequence (", s.tokens, " tokens)"));
  }
  if (uint64_t{s.tokens} * s.kv_heads * s.head_dim > (uint64_t{1} << 40) ||
      uint64_t{s.window} * s.q_heads * AttentionStatsPageCount(s) > (uint64_t{1} << 32)) {
    return absl::InvalidArgumentError("attention stats shape too large");
  }
  return absl::OkStatus();
}

namespace {

template <typename Acc>
absl::Status Compute(const AttentionStatsShape& s, const AttentionStatsOptions& options,
                     const uint16_t* q, const uint16_t* k, const uint16_t* v,
                     absl::Span<PageAttentionStats> out) {
  if (absl::Status st = ValidateAttentionStatsShape(s); !st.ok()) return st;
  const uint32_t pages = AttentionStatsPageCount(s);
  if (out.size() != pages) {
    return absl::InvalidArgumentError(
        absl::StrCat("output holds ", out.size(), " pages, the shape has ", pages));
  }
  if (q == nullptr || k == nullptr || v == nullptr) {
    return absl::InvalidArgumentError("attention stats input is null");
  }
  auto to_float = s.dtype == KvDType::kBF16 ? Bf16ToFloat : Fp16ToFloat;
  const uint32_t d = s.head_dim;
  const uint32_t group = s.q_heads / s.kv_heads;
  const Acc scale = Acc{1} / std::sqrt(static_cast<Acc>(d));

  // Widen K once: the twin is a test oracle, clarity over memory.
  std::vector<Acc> kf(size_t{s.tokens} * s.kv_heads * d);
  for (size_t i = 0; i < kf.size(); ++i) kf[i] = to_float(k[i]);

  std::vector<Acc> mass(pages, 0), head_mass(size_t{pages} * s.q_heads, 0);
  std::vector<uint32_t> above(pages, 0);
  std::vector<Acc> logits(s.tokens), qf(d), page_mass(pages);
  for (uint32_t h = 0; h < s.q_heads; ++h) {
    const uint32_t g = h / group;
    for (uint32_t i = 0; i < s.window; ++i) {
      const uint32_t pos = s.tokens - s.window + i;
      for (uint32_t c = 0; c < d; ++c) qf[c] = to_float(q[(size_t{i} * s.q_heads + h) * d + c]);
      Acc max_logit = -std::numeric_limits<Acc>::infinity();
      for (uint32_t t = 0; t <= pos; ++t) {
        const Acc* kt = &kf[(size_t{t} * s.kv_heads + g) * d];
        Acc dot = 0;
        for (uint32_t c = 0; c < d; ++c) dot += qf[c] * kt[c];
        logits[t] = dot * scale;
        max_logit = std::max(max_logit, logits[t]);
      }
      Acc sum = 0;
      std::fill(page_mass.begin(), page_mass.end(), Acc{0});
      for (uint32_t t = 0; t <= pos; ++t) {
        const Acc e = std::exp(logits[t] - max_logit);
        sum += e;
        page_mass[t / s.tokens_per_page] += e;
      }
      for (uint32_t p = 0; p < pages; ++p) {
        const Acc m = page_mass[p] / sum;
        mass[p] += m;
        head_mass[size_t{p} * s.q_heads + h] += m;
        if (m > static_cast<Acc>(options.breadth_threshold)) ++above[p];
      }
    }
  }

  const Acc pairs = static_cast<Acc>(s.window) * s.q_heads;
  for (uint32_t p = 0; p < pages; ++p) {
    PageAttentionStats& o = out[p];
    o.mass = static_cast<float>(mass[p] / pairs);
    o.breadth = static_cast<float>(above[p] / pairs);
    o.mass_entropy = 1;
    if (s.q_heads > 1 && mass[p] > 0) {
      Acc h_sum = 0;
      for (uint32_t h = 0; h < s.q_heads; ++h) {
        const Acc share = head_mass[size_t{p} * s.q_heads + h] / mass[p];
        if (share > 0) h_sum -= share * std::log(share);
      }
      o.mass_entropy = static_cast<float>(h_sum / std::log(static_cast<Acc>(s.q_heads)));
    }
    const uint32_t t0 = p * s.tokens_per_page;
    const uint32_t t1 = std::min(s.tokens, t0 + s.tokens_per_page);
    Acc norms = 0;
    for (uint32_t t = t0; t < t1; ++t) {
      for (uint32_t g = 0; g < s.kv_heads; ++g) {
        const uint16_t* vt = &v[(size_t{t} * s.kv_heads + g) * d];
        Acc sq = 0;
        for (uint32_t c = 0; c < d; ++c) {
          const Acc x = to_float(vt[c]);
          sq += x * x;
        }
        norms += std::sqrt(sq);
      }
    }
    o.value_norm = static_cast<float>(norms / (static_cast<Acc>(t1 - t0) * s.kv_heads));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ComputeAttentionStatsCpu(const AttentionStatsShape& shape,
                                      const AttentionStatsOptions& options, const uint16_t* q,
                                      const uint16_t* k, const uint16_t* v,
                                      absl::Span<PageAttentionStats> out) {
  return Compute<float>(shape, options, q, k, v, out);
}

absl::Status ComputeAttentionStatsReference(const AttentionStatsShape& shape,
                                            const AttentionStatsOptions& options, const uint16_t* q,
                                            const uint16_t* k, const uint16_t* v,
                                            absl::Span<PageAttentionStats> out) {
  return Compute<double>(shape, options, q, k, v, out);
}

}  // namespace kvtier::kernels
