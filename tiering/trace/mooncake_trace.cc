#include "tiering/trace/mooncake_trace.h"

#include <fstream>
#include <limits>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace kvtier {
namespace {

absl::StatusOr<uint64_t> UnsignedField(const nlohmann::json& obj, const char* name, uint64_t max) {
  auto it = obj.find(name);
  if (it == obj.end()) return absl::InvalidArgumentError(absl::StrCat("missing '", name, "'"));
  if (!it->is_number_integer() || it->get<int64_t>() < 0 ||
      (it->is_number_unsigned() && it->get<uint64_t>() > max) ||
      (!it->is_number_unsigned() && static_cast<uint64_t>(it->get<int64_t>()) > max)) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", name, "' must be an integer in [0, ", max, "]"));
  }
  return it->get<uint64_t>();
}

}  // namespace

absl::StatusOr<MooncakeRequest> ParseMooncakeLine(const std::string& line) {
  nlohmann::json obj = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (obj.is_discarded() || !obj.is_object()) {
    return absl::InvalidArgumentError("not a JSON object");
  }
  MooncakeRequest r;
  constexpr uint64_t kMaxU32 = std::numeric_limits<uint32_t>::max();
  absl::StatusOr<uint64_t> ts =
      UnsignedField(obj, "timestamp", std::numeric_limits<int64_t>::max());
  if (!ts.ok()) return ts.status();
  absl::StatusOr<uint64_t> in = UnsignedField(obj, "input_length", kMaxU32);
  if (!in.ok()) return in.status();
  absl::StatusOr<uint64_t> out = UnsignedField(obj, "output_length", kMaxU32);
  if (!out.ok()) return out.status();
  r.timestamp_ms = *ts;
  r.input_length = static_cast<uint32_t>(*in);
  r.output_length = static_cast<uint32_t>(*out);
  auto ids = obj.find("hash_ids");
  if (ids == obj.end() || !ids->is_array()) {
    return absl::InvalidArgumentError("'hash_ids' must be an array");
  }
  r.hash_ids.reserve(ids->size());
  for (const nlohmann::json& id : *ids) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0) {
      return absl::InvalidArgumentError("'hash_ids' must hold non-negative integers");
    }
    r.hash_ids.push_back(id.get<uint64_t>());
  }
  return r;
}

absl::StatusOr<std::vector<MooncakeRequest>> ReadMooncakeTrace(std::istream& in) {
  std::vector<MooncakeRequest> requests;
  std::string line;
  for (size_t line_no = 1; std::getline(in, line); ++line_no) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    absl::StatusOr<MooncakeRequest> r = ParseMooncakeLine(line);
    if (!r.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("trace line ", line_no, ": ", r.status().message()));
    }
    requests.push_back(*std::move(r));
  }
  return requests;
}

absl::StatusOr<std::vector<MooncakeRequest>> ReadMooncakeTraceFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open trace '", path, "'"));
  absl::StatusOr<std::vector<MooncakeRequest>> r = ReadMooncakeTrace(in);
  if (!r.ok()) return absl::InvalidArgumentError(absl::StrCat(path, ": ", r.status().message()));
  return r;
}

}  // namespace kvtier
