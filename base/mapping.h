// Mapping: sole owner of one shared mapping of a file descriptor (a worker's memfd, a pool),
// unmapped in the destructor. Used by the client for its own KV buffers and by the daemon for the
// buffers workers register. Thread model: a value type; the bytes it maps are the caller's to
// share.
#pragma once

#include <cstddef>

#include "absl/status/statusor.h"

namespace kvtier {

class Mapping {
 public:
  Mapping() = default;
  // mmap(MAP_SHARED) of the first `bytes` of `fd`, read-write or read-only.
  static absl::StatusOr<Mapping> Map(int fd, size_t bytes, bool writable);
  ~Mapping() { Reset(); }
  Mapping(Mapping&& o) noexcept;
  Mapping& operator=(Mapping&& o) noexcept;
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  std::byte* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  void Reset();
  std::byte* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace kvtier
