// kvtierctl's commands that talk to a running kvtierd: status, stats, bench rpc.
#pragma once

namespace kvtier::ctl {

int RunStatus(int argc, char** argv);
int RunStats(int argc, char** argv);
int RunBench(int argc, char** argv);  // "bench rpc ..."

}  // namespace kvtier::ctl
