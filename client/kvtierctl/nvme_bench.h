// `kvtierctl bench nvme`: whole-page throughput and read latency through the real NVMe tier
// (io_uring data path, RocksDB index, checksums), for comparison with fio on the same directory.
#pragma once

namespace kvtier {

// Usage: bench nvme --dir D [--page-bytes N] [--queue-depth N] [--seconds S] [--json]
//                   [--capacity-mib N] [--write-threads N] [--no-sync] [--sqpoll]
// Prints write_gbps, read_gbps, read_p50_us, read_p99_us (one JSON object with --json).
// Returns a process exit code. argv[0] is the command name ("nvme").
int RunBenchNvme(int argc, char** argv);

}  // namespace kvtier
