#include "daemon/config_schema.h"

#include <algorithm>
#include <cstdio>
#include <stdexcept>

namespace kvtier::config_schema {

absl::Status CheckText(const std::string& key, const std::string& s) {
  for (size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x20 || c == 0x7f) {
      return absl::InvalidArgumentError(absl::StrCat(
          key, ": control character 0x", absl::Hex(c, absl::kZeroPad2), " at byte ", i));
    }
    // UTF-8: the lead byte gives the sequence length; continuation bytes are 10xxxxxx, and the
    // shortest form and the Unicode range are checked through the lead byte's bounds.
    size_t n = c < 0x80                 ? 1
               : c >= 0xc2 && c <= 0xdf ? 2
               : c >= 0xe0 && c <= 0xef ? 3
               : c >= 0xf0 && c <= 0xf4 ? 4
                                        : 0;
    bool ok = n != 0 && i + n <= s.size();
    for (size_t k = 1; ok && k < n; ++k) ok = (static_cast<unsigned char>(s[i + k]) & 0xc0) == 0x80;
    if (ok && n >= 3) {
      const auto c1 = static_cast<unsigned char>(s[i + 1]);
      ok = !(c == 0xe0 && c1 < 0xa0) && !(c == 0xed && c1 > 0x9f) && !(c == 0xf0 && c1 < 0x90) &&
           !(c == 0xf4 && c1 > 0x8f);
    }
    if (!ok) return absl::InvalidArgumentError(absl::StrCat(key, ": not UTF-8 at byte ", i));
    i += n;
  }
  return absl::OkStatus();
}

absl::Status ReadMode(const YAML::Node& node, const std::string& key, uint32_t& out) {
  // YAML 1.2 reads "0600" as decimal 600, so the digits are parsed here, in octal.
  std::string text;
  if (absl::Status s = Read(node, key, text); !s.ok()) return s;
  try {
    size_t used = 0;
    out = static_cast<uint32_t>(std::stoul(text, &used, 8));
    if (used != text.size()) throw std::invalid_argument("trailing");
  } catch (const std::exception&) {
    return absl::InvalidArgumentError(absl::StrCat(key, ": '", text, "' is not an octal mode"));
  }
  return absl::OkStatus();
}

void PrintMode(YAML::Emitter& out, uint32_t mode) {
  char text[16];
  std::snprintf(text, sizeof(text), "0%o", mode);
  out << text;
}

void PrintText(YAML::Emitter& out, const std::string& s) {
  // (Tabs never get here: CheckText refuses control characters.)
  if (!s.empty() && (s.front() == ' ' || s.back() == ' ')) out << YAML::DoubleQuoted;
  out << s;
}

void PrintTexts(YAML::Emitter& out, const std::vector<std::string>& list) {
  out << YAML::Flow << YAML::BeginSeq;
  for (const std::string& s : list) PrintText(out, s);
  out << YAML::EndSeq;
}

absl::Status ForEachKey(
    const YAML::Node& map, const std::string& path,
    const std::function<absl::StatusOr<bool>(const std::string& key, const YAML::Node& value,
                                             const std::string& full)>& fn) {
  if (!map.IsMap()) return absl::InvalidArgumentError(absl::StrCat(path, ": expected a map"));
  std::vector<std::string> seen;  // a handful of keys per map
  for (const auto& kv : map) {
    // A key that is itself a list or map ("[1]: 2") has no string form: as<> would throw.
    if (!kv.first.IsScalar()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path.empty() ? "config" : path, ": a key must be a plain name"));
    }
    const std::string key = kv.first.as<std::string>();
    const std::string full = KeyPath(path, key);
    // YAML says keys are unique; yaml-cpp keeps both and the last would silently win.
    if (std::find(seen.begin(), seen.end(), key) != seen.end()) {
      return absl::InvalidArgumentError(absl::StrCat(full, ": duplicate key"));
    }
    seen.push_back(key);
    absl::StatusOr<bool> known = fn(key, kv.second, full);
    if (!known.ok()) return known.status();
    if (!*known) return absl::InvalidArgumentError(absl::StrCat(full, ": unknown key"));
  }
  return absl::OkStatus();
}

}  // namespace kvtier::config_schema
