// Helpers shared by the NVMe tier's unit and fault tests: scratch directories, deterministic page
// contents derived from a key (so a separate process can check what another wrote), and a seed
// printed once per test.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "tiering/page_key.h"

namespace kvtier::nvme_test {

// A fresh directory under $KVTIER_TEST_TMPDIR (default /tmp), removed at the end.
class ScratchDir {
 public:
  explicit ScratchDir(const std::string& tag) {
    const char* base = std::getenv("KVTIER_TEST_TMPDIR");
    std::string templ = std::string(base != nullptr ? base : "/tmp") + "/kvtier-" + tag + "-XXXXXX";
    std::vector<char> buf(templ.begin(), templ.end());
    buf.push_back('\0');
    if (mkdtemp(buf.data()) == nullptr) std::abort();
    path_ = buf.data();
  }
  ~ScratchDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }
  std::string sub(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// The seed of this run: $KVTIER_TEST_SEED if set, else random; printed so a failure can be
// replayed.
inline uint64_t TestSeed(const char* test) {
  uint64_t seed;
  if (const char* s = std::getenv("KVTIER_TEST_SEED"); s != nullptr) {
    seed = std::strtoull(s, nullptr, 10);
  } else {
    seed = std::random_device{}() * uint64_t{2654435761u} ^ std::random_device{}();
  }
  std::printf("[seed] %s: KVTIER_TEST_SEED=%llu\n", test, static_cast<unsigned long long>(seed));
  std::fflush(stdout);
  return seed;
}

inline PageKey RandomKey(std::mt19937_64& rng) {
  PageKey k;
  while (k.is_null()) k = PageKey{rng(), rng()};
  return k;
}

// Page bytes are a pure function of the key: a writer and a verifier in different processes agree
// on them without sharing anything but the key. Never zeros.
inline void FillPage(const PageKey& key, std::byte* data, size_t size) {
  std::mt19937_64 rng(key.hi ^ (key.lo * 0x9e3779b97f4a7c15ULL));
  size_t i = 0;
  for (; i + 8 <= size; i += 8) {
    const uint64_t v = rng();
    std::memcpy(data + i, &v, 8);
  }
  for (; i < size; ++i) data[i] = static_cast<std::byte>(rng());
}

inline std::vector<std::byte> PageFor(const PageKey& key, size_t size) {
  std::vector<std::byte> v(size);
  FillPage(key, v.data(), size);
  return v;
}

}  // namespace kvtier::nvme_test
