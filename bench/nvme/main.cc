// kvtier-bench-nvme: the standalone form of `kvtierctl bench nvme`.
#include "bench/nvme/bench_nvme.h"

int main(int argc, char** argv) { return kvtier::RunBenchNvme(argc, argv); }
