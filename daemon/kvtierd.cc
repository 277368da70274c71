// kvtierd's entry point: the daemon (kvtierd_main.cc) without test hooks.
#include "daemon/kvtierd_main.h"

int main(int argc, char** argv) { return kvtier::KvtierdMain(argc, argv); }
