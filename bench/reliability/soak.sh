#!/usr/bin/env bash
# Soak: mixed load on one kvtierd (NVMe tier on disk, small DRAM tier) with worker churn — 4
# worker slots, each running kvtier-reliability-worker crash processes of 3-20 s one after another,
# a random one killed with SIGKILL every ~15 s — and one kill -9 and restart of the daemon halfway
# (followed by the verifier: acknowledged pages intact or absent, nothing never stored). Samples
# the daemon's RSS, anonymous RSS, fds and threads every 10 s into a CSV and prints the growth
# between the first sample after warm-up (60 s) and the last, per daemon run.
#   bench/reliability/soak.sh [SECONDS]   (default 3600)
# Needs $KVTIER_BUILD_DIR (default build) with kvtierd and kvtier-reliability-worker. Runs at
# nice 19. Exit status non-zero if a worker saw a wrong page or the verifier failed.
set -euo pipefail
cd "$(dirname "$0")/../.."
build=$(realpath "${KVTIER_BUILD_DIR:-build}")
duration=${1:-3600}
tmp=$(mktemp -d /tmp/kvtier-soak-XXXXXX)
out=${KVTIER_SOAK_OUT:-$tmp}
worker="$build/tests/reliability/kvtier-reliability-worker"
sock="$tmp/kvtierd.sock"
cat >"$tmp/kvtierd.yaml" <<YAML
data_dir: $tmp/data
socket_path: $sock
http_address: ""
store:
  page_bytes: 4096
  hbm_pages: 0
  dram_pages: 64
  maintain_interval_ms: 20
nvme:
  directories: [$tmp/nvme]
  capacity_bytes: $((2048 * 8192))
namespaces:
  - name: "soak/*"
    sink_slots: 0
YAML
csv="$out/soak.csv"
echo "t_s,daemon_run,rss_kb,rss_anon_kb,fds,threads,workers_started,workers_killed" >"$csv"
daemon=-1
run=0
start_daemon() {
  run=$((run + 1))
  local t0
  t0=$(date +%s%N)
  nice -n 19 "$build/daemon/kvtierd" --config "$tmp/kvtierd.yaml" --log_level=warning \
    2>>"$tmp/kvtierd.log" &
  daemon=$!
  for _ in $(seq 500); do
    [ -S "$sock" ] && "$worker" verify --socket="$sock" --ns=soak/w --log= >/dev/null 2>&1 && break
    sleep 0.01
  done
  echo "daemon run $run pid $daemon ready in $((($(date +%s%N) - t0) / 1000000)) ms"
}
verify() {
  local logs
  logs=$(ls "$tmp"/acks-*.log 2>/dev/null | paste -sd, -)
  "$worker" verify --socket="$sock" --ns=soak/w --log="$logs" | tail -n 1
}
declare -a slot_pid
started=0
killed=0
wrong=0
reap() {  # collects finished workers; a wrong page (exit 3) fails the soak
  local i rc
  for i in 0 1 2 3; do
    local p=${slot_pid[$i]:-0}
    if [ "$p" -gt 0 ] && ! kill -0 "$p" 2>/dev/null; then
      rc=0
      wait "$p" || rc=$?
      if [ "$rc" -eq 3 ]; then
        wrong=$((wrong + 1))
        echo "worker $i (pid $p) saw a WRONG page" >&2
      fi
      slot_pid[$i]=0
    fi
  done
}
spawn() {  # fills empty slots with fresh worker processes
  local i
  for i in 0 1 2 3; do
    if [ "${slot_pid[$i]:-0}" -eq 0 ]; then
      nice -n 19 "$worker" crash --socket="$sock" --ns=soak/w --worker="$i" --keys=256 --batch=16 \
        --seed=$RANDOM$RANDOM --seconds=$((3 + RANDOM % 18)) --log="$tmp/acks-$i.log" \
        >>"$tmp/workers.out" 2>&1 &
      slot_pid[$i]=$!
      started=$((started + 1))
    fi
  done
}
sample() {
  local t=$1
  local rss anon fds threads
  rss=$(awk '/^VmRSS/ {print $2}' /proc/$daemon/status)
  anon=$(awk '/^RssAnon/ {print $2}' /proc/$daemon/status)
  threads=$(awk '/^Threads/ {print $2}' /proc/$daemon/status)
  fds=$(ls /proc/$daemon/fd | wc -l)
  echo "$t,$run,$rss,$anon,$fds,$threads,$started,$killed" >>"$csv"
}
echo "# soak $(date -u +%FT%TZ) $(uname -srm), $(nproc) cores, ${duration} s, dir $tmp"
start_daemon
t_start=$(date +%s)
restarted=0
next_sample=0
next_kill=15
while :; do
  now=$(($(date +%s) - t_start))
  [ "$now" -ge "$duration" ] && break
  reap
  if [ "$restarted" -eq 0 ] && [ "$now" -ge $((duration / 2)) ]; then
    kill -9 "$daemon"
    wait "$daemon" 2>/dev/null || true
    echo "t=${now}s: kill -9 of the daemon"
    sleep 1
    reap
    start_daemon
    after=$(verify) || true
    echo "after restart: $after"
    case "$after" in *" wrong=0"*) ;; *) wrong=$((wrong + 1)) ;; esac
    restarted=1
  fi
  spawn
  if [ "$now" -ge "$next_kill" ]; then
    victim=${slot_pid[$((RANDOM % 4))]:-0}
    if [ "$victim" -gt 0 ] && kill -9 "$victim" 2>/dev/null; then killed=$((killed + 1)); fi
    next_kill=$((now + 10 + RANDOM % 10))
  fi
  if [ "$now" -ge "$next_sample" ]; then
    sample "$now"
    next_sample=$((now + 10))
  fi
  sleep 0.5
done
for i in 0 1 2 3; do
  p=${slot_pid[$i]:-0}
  [ "$p" -gt 0 ] && kill -9 "$p" 2>/dev/null || true
done
sleep 0.5
reap
sample "$(($(date +%s) - t_start))"
final=$(verify) || true
echo "at the end: $final"
kill -TERM "$daemon"
wait "$daemon" || true
# Growth per daemon run: first sample at or after 60 s into the run vs the last one.
awk -F, -v out="$out" 'NR > 1 {
    if (!($2 in first_t)) first_t[$2] = $1
    if ($1 - first_t[$2] >= 60 && !($2 in base)) { base[$2] = NR; b_rss[$2] = $3; b_anon[$2] = $4; b_fds[$2] = $5; b_t[$2] = $1 }
    last_rss[$2] = $3; last_anon[$2] = $4; last_fds[$2] = $5; last_t[$2] = $1
    if ($3 > max_rss[$2]) max_rss[$2] = $3
    if ($5 > max_fds[$2]) max_fds[$2] = $5
  }
  END {
    for (r in last_t) {
      printf "soak-run %d: %d s to %d s: rss_kb %d -> %d (max %d), rss_anon_kb %d -> %d, fds %d -> %d (max %d)\n",
        r, b_t[r], last_t[r], b_rss[r], last_rss[r], max_rss[r], b_anon[r], last_anon[r], b_fds[r], last_fds[r], max_fds[r]
    }
  }' "$csv"
echo "soak seconds=$duration workers_started=$started workers_killed=$killed daemon_restarts=$restarted wrong_pages_seen_by_workers=$wrong csv=$csv"
case "$final" in *"wrong=0"*) ;; *) exit 1 ;; esac
[ "$wrong" -eq 0 ]
