#!/usr/bin/env bash
# The full runs of the reliability tests, each the CI test with a bigger count (figures go to
# bench/RESULTS.md, "Reliability"):
#   bench/reliability/run.sh crash [KILLS]             kill -9 of kvtierd during stores/loads (100)
#   bench/reliability/run.sh faults [OPS]              NVMe tier under injected faults (1000000)
#   bench/reliability/run.sh daemon-faults [OPS]       the same through kvtierd (1000000)
#   bench/reliability/run.sh consistency [OPS]         concurrent consistency checker (5000000)
# KVTIER_BUILD_DIR (default build) must hold the tests: cmake --build build --target
# kvtier_reliability_test nvme_fault_injection_test kvtierd_fault_injection_test. Runs at nice 19:
# the machine is shared.
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${KVTIER_BUILD_DIR:-build}
what=${1:?usage: bench/reliability/run.sh crash|faults|daemon-faults|consistency [COUNT]}
echo "# $(date -u +%FT%TZ) $(uname -srm), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
case "$what" in
  crash)
    KVTIER_CRASH_KILLS=${2:-100} nice -n 19 "$build"/tests/reliability/kvtier_reliability_test \
      --gtest_filter='*Crash*' 2>&1 | grep -E '^(crash-test|test seed|\[ *(OK|FAILED) *\])|Failure'
    ;;
  faults)
    KVTIER_FAULT_INJECTION_OPS=${2:-1000000} nice -n 19 \
      "$build"/tests/fault/nvme_fault_injection_test 2>&1 |
      grep -E '^(fault-injection|\[seed\]|\[ *(OK|FAILED) *\])|Failure'
    ;;
  daemon-faults)
    KVTIER_FAULT_INJECTION_OPS=${2:-1000000} nice -n 19 \
      "$build"/tests/fault/kvtierd_fault_injection_test 2>&1 |
      grep -E '^(kvtierd-fault-injection|\[seed\]|\[ *(OK|FAILED) *\])|Failure'
    ;;
  consistency)
    KVTIER_CONSISTENCY_OPS=${2:-5000000} nice -n 19 \
      "$build"/tests/reliability/kvtier_reliability_test --gtest_filter='*Consistency*' 2>&1 |
      grep -E '^(consistency|test seed|INCONSISTENT|\[ *(OK|FAILED) *\])|Failure'
    ;;
  *)
    echo "unknown run '$what'" >&2
    exit 2
    ;;
esac
