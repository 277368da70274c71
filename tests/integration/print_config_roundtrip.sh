#!/usr/bin/env bash
# kvtierd --print_config | kvtierd --config /dev/stdin --print_config gives the same text, for the
# embedded default and for a config that sets every section (so a dropped key shows as a diff).
#   print_config_roundtrip.sh KVTIERD
set -euo pipefail
kvtierd=$1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
check() {
  local name=$1
  shift
  "$kvtierd" "$@" --print_config >"$work/$name.1"
  "$kvtierd" --config /dev/stdin --print_config <"$work/$name.1" >"$work/$name.2"
  if ! diff -u "$work/$name.1" "$work/$name.2"; then
    echo "FAIL: $name: --print_config does not read back to itself" >&2
    exit 1
  fi
  [ -s "$work/$name.1" ] || { echo "FAIL: $name: empty --print_config" >&2; exit 1; }
  echo "ok: $name ($(wc -l <"$work/$name.1") lines)"
}
check default
cat >"$work/full.yaml" <<YAML
data_dir: $work/data
socket_path: "$work/kv.sock "
http_address: 127.0.0.1:0
admin_uids: [0, 1000]
store: {page_bytes: 131072, hbm_pages: 64, dram_pages: 128, hbm_backend: host-emulated, policy: lru}
nvme: {directories: [$work/nvme], capacity_bytes: 1048576}
limits: {max_connections: 17}
namespaces:
  - name: "tenant-a/*"
    uids: [1000]
    sink_slots: 4
    layout: {layers: 2, kv_heads: 2, head_dim: 128, dtype: 0, tokens_per_page: 64, tensor_layout: 0}
cluster: {node_id: node-7, etcd_endpoints: ["http://127.0.0.1:2379"]}
YAML
check full --config "$work/full.yaml"
grep -q admin_uids "$work/full.1" || { echo "FAIL: admin_uids dropped" >&2; exit 1; }
grep -q "tensor_layout" "$work/full.1" || { echo "FAIL: namespace layout dropped" >&2; exit 1; }
grep -q "node-7" "$work/full.1" || { echo "FAIL: cluster settings dropped" >&2; exit 1; }
