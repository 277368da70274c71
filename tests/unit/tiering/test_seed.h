// Random inputs with a printed seed: set KVTIER_TEST_SEED to replay a failure.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <random>

#include "gtest/gtest.h"

namespace kvtier::testing {

inline uint64_t TestSeed() {
  if (const char* env = std::getenv("KVTIER_TEST_SEED"); env != nullptr) {
    return std::strtoull(env, nullptr, 10);
  }
  return std::random_device{}();
}

// Seeds a generator and records the seed in the test's output (printed on failure).
inline std::mt19937_64 SeededRng() {
  const uint64_t seed = TestSeed();
  ::testing::Test::RecordProperty("seed", std::to_string(seed));
  std::printf("[ seed     ] KVTIER_TEST_SEED=%llu\n", static_cast<unsigned long long>(seed));
  return std::mt19937_64(seed);
}

}  // namespace kvtier::testing
