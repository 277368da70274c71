// Helpers shared by the kernels tests: a seeded RNG whose seed is printed (and can be forced with
// KVTIER_TEST_SEED to replay a failure), and random bf16/fp16 tensors (never zeros).
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "kernels/attention_stats.h"
#include "kernels/half_float.h"

namespace kvtier::kernels::testing {

inline uint64_t TestSeed(const char* test_name) {
  uint64_t seed = std::random_device{}();
  if (const char* env = std::getenv("KVTIER_TEST_SEED")) seed = std::strtoull(env, nullptr, 10);
  std::printf("[seed] %s: KVTIER_TEST_SEED=%llu\n", test_name,
              static_cast<unsigned long long>(seed));
  return seed;
}

inline uint16_t ToHalf(KvDType dtype, float f) {
  return dtype == KvDType::kBF16 ? FloatToBf16(f) : FloatToFp16(f);
}

inline float FromHalf(KvDType dtype, uint16_t h) {
  return dtype == KvDType::kBF16 ? Bf16ToFloat(h) : Fp16ToFloat(h);
}

// Normal(0, stddev) elements; a value that rounds to exactly zero is redrawn.
inline std::vector<uint16_t> RandomHalves(std::mt19937_64& rng, size_t n, KvDType dtype,
                                          float stddev) {
  std::normal_distribution<float> dist(0.0f, stddev);
  std::vector<uint16_t> out(n);
  for (auto& x : out) {
    do {
      x = ToHalf(dtype, dist(rng));
    } while ((x & 0x7fffu) == 0);
  }
  return out;
}

}  // namespace kvtier::kernels::testing
