// Reader for prefix-reuse traces in Mooncake's format (FAST'25 release): one JSON object per line
// with `timestamp` (ms), `input_length`, `output_length` and `hash_ids` (one id per 512-token
// block; equal leading ids are equal prefixes). Used by the demo and the policy simulator.
#pragma once

#include <cstdint>
#include <istream>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace kvtier {

struct MooncakeRequest {
  uint64_t timestamp_ms = 0;
  uint32_t input_length = 0;
  uint32_t output_length = 0;
  std::vector<uint64_t> hash_ids;
};

// Parses one line; errors name the problem (missing field, wrong type, negative value).
absl::StatusOr<MooncakeRequest> ParseMooncakeLine(const std::string& line);

// Reads a whole trace; blank lines are skipped, a bad line fails with its line number.
absl::StatusOr<std::vector<MooncakeRequest>> ReadMooncakeTrace(std::istream& in);
absl::StatusOr<std::vector<MooncakeRequest>> ReadMooncakeTraceFile(const std::string& path);

}  // namespace kvtier
