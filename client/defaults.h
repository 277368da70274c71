// Defaults both ends agree on without a config file: kvtierd's embedded default serves this
// socket, and kvtierctl and the client library look there first when run from the same directory.
#pragma once

namespace kvtier {

inline constexpr char kDefaultDataDir[] = "kvtier-data";
inline constexpr char kDefaultSocketPath[] = "kvtier-data/kvtierd.sock";
// The protocol version this build speaks (client/proto/kvtier.proto, enum Version).
inline constexpr unsigned kProtocolVersion = 1;

}  // namespace kvtier
