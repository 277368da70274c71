// kvtierctl's subcommands. Each is `int Name(int argc, char** argv)` with argv[0] the command's
// own name; it prints its usage on --help and returns a process exit status. Adding a command is
// one declaration here and one line in main.cc's table.
#pragma once

namespace kvtier::ctl {

// `kvtierctl sim`: trace-driven policy simulator (sim_command.cc).
int SimCommand(int argc, char** argv);
// `kvtierctl gen-attention`: writes a synthetic decode-attention trace (sim_command.cc).
int GenAttentionCommand(int argc, char** argv);

}  // namespace kvtier::ctl
