// kvtierctl's subcommands. Each is `int Name(int argc, char** argv)` with argv[0] the command's
// own name; it prints its usage on --help and returns a process exit status. Adding a command is
// one declaration here and one line in main.cc's table.
#pragma once

namespace kvtier::ctl {

// `kvtierctl sim`: trace-driven policy simulator (sim_command.cc).
int SimCommand(int argc, char** argv);
// `kvtierctl gen-attention`: writes a synthetic decode-attention trace (sim_command.cc).
int GenAttentionCommand(int argc, char** argv);
// `kvtierctl gen-prefix`: writes a generated prefix-reuse trace (sim_command.cc).
int GenPrefixCommand(int argc, char** argv);

// Commands that talk to a running kvtierd (rpc_commands.cc); the socket defaults to
// kvtier-data/kvtierd.sock, where kvtierd's embedded default serves it.
int RunStatus(int argc, char** argv);        // `kvtierctl status`
int RunStats(int argc, char** argv);         // `kvtierctl stats [--json]`
int RunBench(int argc, char** argv);         // `kvtierctl bench rpc [--json]`
int RunBenchCluster(int argc, char** argv);  // `kvtierctl bench cluster [--json]`

}  // namespace kvtier::ctl
