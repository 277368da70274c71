// The machinery of kvtierd's config schema: one table of fields per options struct, which the YAML
// reader, the validator and the printer all walk, so that each key is spelled once (the tables
// themselves are in daemon/config.cc).
//
// A field binds a key to a member of its struct, the member's YAML form (read and printed alike,
// chosen by the member's type) and, optionally, a rule that checks the value against the whole
// config. A nested struct (a section), an optional struct and a list of structs are fields with a
// table of their own. Every error the walkers return starts with the field's full key
// ("namespaces[2].layout.dtype: ...").
//
// Internal to kvtier_daemon_config (it includes yaml-cpp); tests see the schema through
// ConfigSchemaKeys() in config.h. Thread model: a table is built once and then only read.
#pragma once

#include <cstdint>
#include <functional>
#include <limits>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "daemon/config.h"
#include "yaml-cpp/yaml.h"

namespace kvtier::config_schema {

// ---- Scalars: how one value is read and printed. ----

// Config strings are names, paths and addresses: printable UTF-8. A control character or a broken
// byte sequence there is a mistake (and could not be printed back by --print_config).
absl::Status CheckText(const std::string& key, const std::string& s);

// Reads `node` as T; the error names `key`.
template <typename T>
absl::Status Read(const YAML::Node& node, const std::string& key, T& out) {
  // yaml-cpp reads an empty value ("data_dir:") as the string "null"; read it as empty, so the
  // checks that a value is given see it.
  if constexpr (std::is_same_v<T, std::string>) {
    if (node.IsNull()) {
      out.clear();
      return absl::OkStatus();
    }
  }
  try {
    out = node.as<T>();
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(key, ": ", e.what()));
  }
  if constexpr (std::is_same_v<T, std::string>) return CheckText(key, out);
  if constexpr (std::is_same_v<T, std::vector<std::string>>) {
    for (size_t i = 0; i < out.size(); ++i) {
      if (absl::Status s = CheckText(absl::StrCat(key, "[", i, "]"), out[i]); !s.ok()) return s;
    }
  }
  return absl::OkStatus();
}

// An enum is written as its number.
template <typename Enum>
absl::Status ReadEnum(const YAML::Node& node, const std::string& key, Enum& out) {
  uint32_t x = 0;
  if (absl::Status s = Read(node, key, x); !s.ok()) return s;
  // Checked before the cast: 256 must not become 0 of a one-byte enum.
  if (x > std::numeric_limits<std::underlying_type_t<Enum>>::max()) {
    return absl::InvalidArgumentError(absl::StrCat(key, ": ", x, " is not a valid value"));
  }
  out = static_cast<Enum>(x);
  return absl::OkStatus();
}

// A permission mode, written in octal (0600).
absl::Status ReadMode(const YAML::Node& node, const std::string& key, uint32_t& out);
void PrintMode(YAML::Emitter& out, uint32_t mode);

// yaml-cpp writes a string with leading or trailing blanks unquoted and reads it back without
// them (the config fuzzer's find): such strings are written double-quoted, so that --print_config
// reads back to the same config. (Control characters and broken UTF-8 are refused on reading.)
void PrintText(YAML::Emitter& out, const std::string& s);
void PrintTexts(YAML::Emitter& out, const std::vector<std::string>& list);

// What each member type is in the config.
template <typename T>
constexpr ConfigKey::Kind KindOf() {
  if constexpr (std::is_same_v<T, bool>) {
    return ConfigKey::Kind::kBool;
  } else if constexpr (std::is_enum_v<T>) {
    return ConfigKey::Kind::kEnum;
  } else if constexpr (std::is_integral_v<T>) {
    return ConfigKey::Kind::kInteger;
  } else if constexpr (std::is_floating_point_v<T>) {
    return ConfigKey::Kind::kNumber;
  } else if constexpr (std::is_same_v<T, std::string>) {
    return ConfigKey::Kind::kText;
  } else if constexpr (std::is_same_v<T, std::vector<std::string>>) {
    return ConfigKey::Kind::kTextList;
  } else {
    static_assert(std::is_same_v<T, std::vector<typename T::value_type>> &&
                      std::is_integral_v<typename T::value_type>,
                  "no config form for this member type");
    return ConfigKey::Kind::kIdList;
  }
}

template <typename T>
absl::Status ReadValue(const YAML::Node& node, const std::string& key, T& out) {
  if constexpr (std::is_enum_v<T>) {
    return ReadEnum(node, key, out);
  } else {
    return Read(node, key, out);
  }
}

template <typename T>
void PrintValue(YAML::Emitter& out, const T& v) {
  if constexpr (std::is_enum_v<T>) {
    out << static_cast<uint32_t>(v);
  } else if constexpr (std::is_same_v<T, std::string>) {
    PrintText(out, v);
  } else if constexpr (std::is_same_v<T, std::vector<std::string>>) {
    PrintTexts(out, v);
  } else if constexpr (std::is_arithmetic_v<T>) {
    out << v;
  } else {
    out << YAML::Flow << v;  // a list of ids
  }
}

// Visits every key of a map, failing on keys the callback does not know.
absl::Status ForEachKey(
    const YAML::Node& map, const std::string& path,
    const std::function<absl::StatusOr<bool>(const std::string& key, const YAML::Node& value,
                                             const std::string& full)>& fn);

// ---- Tables. ----

// What a rule says about a value: empty when it is fine, else why not (the walker puts the key
// in front). Rules see the whole config, for limits set by another key.
using Problem = std::string;
template <typename T>
using Rule = std::function<Problem(const T& value, const DaemonConfig& config)>;

inline std::string KeyPath(const std::string& path, const std::string& key) {
  return path.empty() ? key : absl::StrCat(path, ".", key);
}

template <typename Owner>
class FieldTable {
 public:
  // A scalar or a list of scalars, read and printed as its type says.
  template <typename T>
  FieldTable& Add(const char* key, T Owner::*member, std::type_identity_t<Rule<T>> rule = {}) {
    Field f = Leaf(key, KindOf<T>(), member, rule);
    f.read = [member](const YAML::Node& v, const std::string& full, Owner& o) {
      return ReadValue(v, full, o.*member);
    };
    f.print = [member](YAML::Emitter& out, const Owner& o) { PrintValue(out, o.*member); };
    if constexpr (KindOf<T>() == ConfigKey::Kind::kTextList ||
                  KindOf<T>() == ConfigKey::Kind::kIdList) {
      f.empty = [member](const Owner& o) { return (o.*member).empty(); };
    }
    fields_.push_back(std::move(f));
    return *this;
  }

  // A permission mode, written in octal.
  FieldTable& AddMode(const char* key, uint32_t Owner::*member, Rule<uint32_t> rule = {}) {
    Field f = Leaf(key, ConfigKey::Kind::kOctalMode, member, rule);
    f.read = [member](const YAML::Node& v, const std::string& full, Owner& o) {
      return ReadMode(v, full, o.*member);
    };
    f.print = [member](YAML::Emitter& out, const Owner& o) { PrintMode(out, o.*member); };
    fields_.push_back(std::move(f));
    return *this;
  }

  // A nested struct: its keys are applied over the current values.
  template <typename T>
  FieldTable& AddSection(const char* key, T Owner::*member, FieldTable<T> table) {
    Field f{.key = key, .kind = ConfigKey::Kind::kMap};
    f.read = [member, table](const YAML::Node& v, const std::string& full, Owner& o) {
      return table.Read(v, full, o.*member);
    };
    f.validate_nested = [member, table](const Owner& o, const DaemonConfig& c,
                                        const std::string& full) {
      return table.Validate(o.*member, c, full);
    };
    f.print = [member, table](YAML::Emitter& out, const Owner& o) { table.Print(out, o.*member); };
    f.at_default = [member](const Owner& o) { return o.*member == T{}; };
    f.describe = [table](const std::string& full, std::vector<ConfigKey>& keys) {
      table.Describe(full, keys);
    };
    fields_.push_back(std::move(f));
    return *this;
  }

  // An optional struct: given, it replaces the current one (absent keys take T's defaults);
  // printed only when set.
  template <typename T>
  FieldTable& AddOptional(const char* key, std::optional<T> Owner::*member, FieldTable<T> table,
                          std::type_identity_t<Rule<std::optional<T>>> rule = {}) {
    Field f = Leaf(key, ConfigKey::Kind::kMap, member, rule);
    f.read = [member, table](const YAML::Node& v, const std::string& full, Owner& o) {
      T value{};
      if (absl::Status s = table.Read(v, full, value); !s.ok()) return s;
      o.*member = std::move(value);
      return absl::OkStatus();
    };
    f.validate_nested = [member, table](const Owner& o, const DaemonConfig& c,
                                        const std::string& full) {
      return (o.*member).has_value() ? table.Validate(*(o.*member), c, full) : absl::OkStatus();
    };
    f.print = [member, table](YAML::Emitter& out, const Owner& o) {
      table.Print(out, *(o.*member));
    };
    f.printed = [member](const Owner& o) { return (o.*member).has_value(); };
    f.describe = [table](const std::string& full, std::vector<ConfigKey>& keys) {
      table.Describe(full, keys);
    };
    fields_.push_back(std::move(f));
    return *this;
  }

  // A list of structs: given, it replaces the current list (each element starts from T's
  // defaults). Element i's keys are named "key[i].field".
  template <typename T>
  FieldTable& AddList(const char* key, std::vector<T> Owner::*member, FieldTable<T> table,
                      std::type_identity_t<Rule<std::vector<T>>> rule = {}) {
    Field f = Leaf(key, ConfigKey::Kind::kList, member, rule);
    f.read = [member, table](const YAML::Node& v, const std::string& full, Owner& o) {
      if (!v.IsSequence()) {
        return absl::InvalidArgumentError(absl::StrCat(full, ": expected a list"));
      }
      std::vector<T> list;
      list.reserve(v.size());
      for (size_t i = 0; i < v.size(); ++i) {
        T element{};
        if (absl::Status s = table.Read(v[i], absl::StrCat(full, "[", i, "]"), element); !s.ok()) {
          return s;
        }
        list.push_back(std::move(element));
      }
      o.*member = std::move(list);
      return absl::OkStatus();
    };
    f.validate_nested = [member, table](const Owner& o, const DaemonConfig& c,
                                        const std::string& full) {
      const std::vector<T>& list = o.*member;
      for (size_t i = 0; i < list.size(); ++i) {
        if (absl::Status s = table.Validate(list[i], c, absl::StrCat(full, "[", i, "]")); !s.ok()) {
          return s;
        }
      }
      return absl::OkStatus();
    };
    f.print = [member, table](YAML::Emitter& out, const Owner& o) {
      out << YAML::BeginSeq;
      for (const T& element : o.*member) table.Print(out, element);
      out << YAML::EndSeq;
    };
    f.describe = [table](const std::string& full, std::vector<ConfigKey>& keys) {
      table.Describe(full + "[0]", keys);
    };
    fields_.push_back(std::move(f));
    return *this;
  }

  // Printing choices for the field added last: printed only when its list is not empty, or only
  // when its section differs from the struct's defaults. (--print_config stays short; what it
  // leaves out reads back as the default.)
  FieldTable& OmitWhenEmpty() {
    fields_.back().printed = [empty = fields_.back().empty](const Owner& o) { return !empty(o); };
    return *this;
  }
  FieldTable& OmitWhenDefault() {
    fields_.back().printed = [at_default = fields_.back().at_default](const Owner& o) {
      return !at_default(o);
    };
    return *this;
  }

  // The table's rules apply only while `flag` is set (a section that is off is not checked).
  FieldTable& ValidateOnlyWhen(bool Owner::*flag) {
    validate_when_ = flag;
    return *this;
  }

  // Applies the keys of `map` to `owner`; a key the table does not have is an error naming it.
  absl::Status Read(const YAML::Node& map, const std::string& path, Owner& owner) const {
    return ForEachKey(map, path,
                      [&](const std::string& key, const YAML::Node& value,
                          const std::string& full) -> absl::StatusOr<bool> {
                        for (const Field& f : fields_) {
                          if (f.key != key) continue;
                          if (absl::Status s = f.read(value, full, owner); !s.ok()) return s;
                          return true;
                        }
                        return false;
                      });
  }

  // Checks every rule, in table order; the first problem is the error.
  absl::Status Validate(const Owner& owner, const DaemonConfig& config,
                        const std::string& path) const {
    if (validate_when_ != nullptr && !(owner.*validate_when_)) return absl::OkStatus();
    for (const Field& f : fields_) {
      const std::string full = KeyPath(path, f.key);
      // The field's own rule first (a list that must not be empty), then what it holds.
      if (f.validate) {
        if (absl::Status s = f.validate(owner, config, full); !s.ok()) return s;
      }
      if (f.validate_nested) {
        if (absl::Status s = f.validate_nested(owner, config, full); !s.ok()) return s;
      }
    }
    return absl::OkStatus();
  }

  // Writes `owner` as a block map, in table order.
  void Print(YAML::Emitter& out, const Owner& owner) const {
    out << YAML::BeginMap;
    for (const Field& f : fields_) {
      if (f.printed && !f.printed(owner)) continue;
      out << YAML::Key << f.key << YAML::Value;
      f.print(out, owner);
    }
    out << YAML::EndMap;
  }

  // Appends every key under `path`, nested ones included.
  void Describe(const std::string& path, std::vector<ConfigKey>& keys) const {
    for (const Field& f : fields_) {
      const std::string full = KeyPath(path, f.key);
      keys.push_back(ConfigKey{.path = full, .kind = f.kind, .checked = f.checked});
      if (f.describe) f.describe(full, keys);
    }
  }

 private:
  struct Field {
    std::string key;
    ConfigKey::Kind kind;
    bool checked = false;  // has a rule of its own
    std::function<absl::Status(const YAML::Node&, const std::string& full, Owner&)> read;
    using Validator =
        std::function<absl::Status(const Owner&, const DaemonConfig&, const std::string& full)>;
    Validator validate;                                       // the field's own rule
    Validator validate_nested;                                // the rules of the struct(s) it holds
    std::function<void(YAML::Emitter&, const Owner&)> print;  // the value, after its key
    std::function<bool(const Owner&)> printed;                // null: always printed
    std::function<bool(const Owner&)> empty;                  // lists of scalars: for OmitWhenEmpty
    std::function<bool(const Owner&)> at_default;             // sections: for OmitWhenDefault
    std::function<void(const std::string& full, std::vector<ConfigKey>&)> describe;  // nested keys
  };

  // A field whose own rule (if any) checks the member's value.
  template <typename T>
  static Field Leaf(const char* key, ConfigKey::Kind kind, T Owner::*member, Rule<T> rule) {
    Field f{.key = key, .kind = kind, .checked = static_cast<bool>(rule)};
    if (rule) {
      f.validate = [member, rule = std::move(rule)](const Owner& o, const DaemonConfig& c,
                                                    const std::string& full) {
        const Problem problem = rule(o.*member, c);
        return problem.empty() ? absl::OkStatus()
                               : absl::InvalidArgumentError(absl::StrCat(full, ": ", problem));
      };
    }
    return f;
  }

  std::vector<Field> fields_;
  bool Owner::*validate_when_ = nullptr;
};

}  // namespace kvtier::config_schema
