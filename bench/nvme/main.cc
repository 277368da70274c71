// kvtier-bench-nvme: the standalone form of `kvtierctl bench nvme`.
#include "client/kvtierctl/nvme_bench.h"

int main(int argc, char** argv) { return kvtier::RunBenchNvme(argc, argv); }
