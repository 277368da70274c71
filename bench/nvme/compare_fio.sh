#!/usr/bin/env bash
# Runs `kvtierctl bench nvme` and fio (ioengine=io_uring, direct=1) with the same block size, queue
# depth, directory and duration, and prints kvtier's figures as a ratio of fio's.
#
#   bench/nvme/compare_fio.sh --dir D [--page-bytes N] [--queue-depth N] [--seconds S]
#                             [--capacity-mib N] [--runs R] [-- extra kvtier bench flags]
#
# The kvtier side is `kvtierctl bench nvme` when kvtierctl has that command, else the standalone
# kvtier-bench-nvme ($KVTIER_BENCH_NVME or build/bench/nvme/kvtier-bench-nvme). Each run does
# kvtier then fio, back to back, so both see the same machine; with --runs R > 1 the runs
# alternate which goes first, and the summary reports the median of each figure.
set -euo pipefail
cd "$(dirname "$0")/../.."

dir="" page_bytes=$((2 << 20)) qd=32 seconds=5 capacity_mib=2048 runs=1 extra=()
while (($#)); do
  case "$1" in
    --dir) dir=$2; shift 2 ;;
    --page-bytes) page_bytes=$2; shift 2 ;;
    --queue-depth) qd=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    --capacity-mib) capacity_mib=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --) shift; extra=("$@"); break ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -n "$dir" ] || { echo "--dir is required" >&2; exit 2; }
mkdir -p "$dir"
command -v fio >/dev/null || { echo "fio is not installed (scripts/setup installs it)" >&2; exit 1; }

bench=()
if [ -n "${KVTIER_BENCH_NVME:-}" ]; then
  bench=("$KVTIER_BENCH_NVME")
elif kvtierctl=$(command -v kvtierctl || ls build/client/kvtierctl/kvtierctl 2>/dev/null) &&
     grep -q -- --dir <<<"$("$kvtierctl" bench nvme --help 2>&1 || true)"; then
  bench=("$kvtierctl" bench nvme)
else
  bench=(build/bench/nvme/kvtier-bench-nvme)
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"; rm -f "$dir/fio-bench.dat"' EXIT

run_kvtier() {
  "${bench[@]}" --dir "$dir" --page-bytes "$page_bytes" --queue-depth "$qd" --seconds "$seconds" \
    --capacity-mib "$capacity_mib" --json "${extra[@]}" 2>/dev/null | tail -n 1 > "$tmp/kvtier.$1.json"
}
run_fio() {
  local common=(--directory="$dir" --filename=fio-bench.dat --ioengine=io_uring --direct=1
                --bs="$page_bytes" --iodepth="$qd" --size="${capacity_mib}M" --runtime="$seconds"
                --time_based --fixedbufs=1 --registerfiles=1 --output-format=json)
  fio --name=write --rw=write "${common[@]}" > "$tmp/fio-write.$1.json"
  fio --name=read --rw=randread "${common[@]}" > "$tmp/fio-read.$1.json"
  rm -f "$dir/fio-bench.dat"
}

for ((r = 0; r < runs; r++)); do
  if ((r % 2 == 0)); then run_kvtier "$r"; run_fio "$r"; else run_fio "$r"; run_kvtier "$r"; fi
done

python3 - "$tmp" "$runs" "$dir" "$page_bytes" "$qd" "$seconds" <<'PY'
import json, statistics, sys
tmp, runs, d, pb, qd, secs = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
rows = []
for r in range(runs):
    k = json.load(open(f"{tmp}/kvtier.{r}.json"))
    fw = json.load(open(f"{tmp}/fio-write.{r}.json"))["jobs"][0]["write"]
    fr = json.load(open(f"{tmp}/fio-read.{r}.json"))["jobs"][0]["read"]
    row = {
        "run": r,
        "kvtier_write_gbps": k["write_gbps"], "fio_write_gbps": fw["bw_bytes"] / 1e9,
        "kvtier_read_gbps": k["read_gbps"], "fio_read_gbps": fr["bw_bytes"] / 1e9,
        "kvtier_read_p50_us": k["read_p50_us"], "kvtier_read_p99_us": k["read_p99_us"],
        "fio_read_p50_us": fr["clat_ns"]["percentile"]["50.000000"] / 1e3,
        "fio_read_p99_us": fr["clat_ns"]["percentile"]["99.000000"] / 1e3,
    }
    row["write_ratio"] = row["kvtier_write_gbps"] / row["fio_write_gbps"]
    row["read_ratio"] = row["kvtier_read_gbps"] / row["fio_read_gbps"]
    rows.append(row)
    print(json.dumps({k2: round(v, 4) if isinstance(v, float) else v for k2, v in row.items()}))
med = {k2: round(statistics.median(r[k2] for r in rows), 4) for k2 in rows[0] if k2 != "run"}
med.update({"summary": "median", "runs": runs, "dir": d, "page_bytes": pb, "queue_depth": qd,
            "seconds": float(secs), "io": k.get("io", "")})
print(json.dumps(med))
PY
