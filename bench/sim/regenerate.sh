#!/usr/bin/env bash
# Regenerates the policy tables of bench/RESULTS.md: two prefix-reuse traces (the public Mooncake
# trace in tests/data/traces/ and a generated one, `kvtierctl gen-prefix --seed 7`, used only for
# testing) at HBM budgets of 2, 5, 10 and 20 % of each trace's distinct pages, one tier (HBM only)
# and tiered (DRAM 25 %, NVMe stand-in 25 %), every policy side by side with Belady's offline
# optimum; and three generated decode-attention traces as before.
#
#   bench/sim/regenerate.sh [MOONCAKE_TRACE] [KVTIERCTL]
#     defaults: tests/data/traces/mooncake_synthetic_trace.jsonl build/client/kvtierctl
#
# Prints Markdown on stdout. Deterministic: fixed generator seeds, the simulator uses no clock.
set -euo pipefail

mooncake=${1:-tests/data/traces/mooncake_synthetic_trace.jsonl}
ctl=${2:-build/client/kvtierctl}
prefix_policies=kvtier,lru,lfu,arc,s3fifo,wtinylfu,streaming,h2o,belady
attn_policies=kvtier,lru,lfu,arc,s3fifo,wtinylfu,streaming,h2o
budgets="0.02 0.05 0.10 0.20"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

"$ctl" gen-prefix --out "$tmp/generated.jsonl" --seed 7
"$ctl" gen-attention --out "$tmp/attn_sink0.jsonl" --sink-pages 0 --seed 1
"$ctl" gen-attention --out "$tmp/attn_sink9.jsonl" --sink-pages 9 --seed 2
"$ctl" gen-attention --out "$tmp/attn_heldout.jsonl" --sink-pages 0,13 --topics 20 \
  --phase-steps 60 --seed 3

for budget in $budgets; do
  for t in mooncake generated; do
    trace=$mooncake
    [[ $t == generated ]] && trace=$tmp/generated.jsonl
    "$ctl" sim --trace "$trace" --format mooncake --policies "$prefix_policies" \
      --hbm-fraction "$budget" --dram-fraction 0 --json > "$tmp/${t}_one_$budget.jsonl"
    "$ctl" sim --trace "$trace" --format mooncake --policies "$prefix_policies" \
      --hbm-fraction "$budget" --dram-fraction 0.25 --nvme-fraction 0.25 --json \
      > "$tmp/${t}_tiered_$budget.jsonl"
  done
  for t in sink0 sink9 heldout; do
    "$ctl" sim --trace "$tmp/attn_$t.jsonl" --format attention --policies "$attn_policies" \
      --hbm-fraction "$budget" --dram-fraction 1.0 --json > "$tmp/attn_${t}_$budget.jsonl"
  done
done
wc -l < "$mooncake" > "$tmp/mooncake_requests"
wc -l < "$tmp/generated.jsonl" > "$tmp/generated_requests"

python3 - "$tmp" <<'PY'
import json, sys, os
tmp = sys.argv[1]
budgets = ["0.02", "0.05", "0.10", "0.20"]
baselines = ["lru", "lfu", "arc", "s3fifo", "wtinylfu"]
def load(name):
    return [json.loads(l) for l in open(os.path.join(tmp, name))]
def pct(b):
    return f"{int(round(float(b) * 100))} %"
def f(v, d=2):
    return f"{v:,.{d}f}"
n_moon = int(open(os.path.join(tmp, "mooncake_requests")).read())
n_gen = int(open(os.path.join(tmp, "generated_requests")).read())
prefix = [
    ("mooncake", f"Prefix reuse, public trace: `tests/data/traces/mooncake_synthetic_trace.jsonl` "
     f"({n_moon:,} requests, 512-token blocks)"),
    ("generated", f"Prefix reuse, generated (testing only, never used to choose anything): "
     f"`kvtierctl gen-prefix --seed 7` ({n_gen:,} requests)"),
]
summary = []
for key, title in prefix:
    for mode, mode_title in [("one", "one tier (HBM only; a miss is recomputed)"),
                             ("tiered", "tiered (DRAM 25 %, NVMe stand-in 25 % of distinct pages)")]:
        runs = {b: {r["policy"]: r for r in load(f"{key}_{mode}_{b}.jsonl")} for b in budgets}
        first = next(iter(runs[budgets[0]].values()))
        print(f"#### {title}: {mode_title}\n")
        print(f"{first['distinct_pages']:,} distinct pages. Each cell: hit-token share (all tiers) "
              "/ modeled seconds" + ("" if mode == "one" else " / GB migrated") +
              "; **bold**: best online policy of the column.\n")
        head = ["policy"] + [f"HBM {pct(b)}" for b in budgets]
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        policies = list(runs[budgets[0]].keys())
        best_hit = {b: max(r["hit_share"] for p, r in runs[b].items() if p != "belady")
                    for b in budgets}
        best_s = {b: min(r["modeled_prefill_seconds"] for p, r in runs[b].items() if p != "belady")
                  for b in budgets}
        for p in policies:
            cells = [p if p != "belady" else "belady (offline optimum)"]
            for b in budgets:
                r = runs[b][p]
                h = f(100 * r["hit_share"]) + " %"
                s = f(r["modeled_prefill_seconds"], 1)
                if p != "belady" and r["hit_share"] == best_hit[b]:
                    h = f"**{h}**"
                if p != "belady" and r["modeled_prefill_seconds"] == best_s[b]:
                    s = f"**{s}**"
                cell = f"{h} / {s}"
                if mode == "tiered":
                    cell += f" / {f(r['bytes_migrated'] / 1e9, 0)}"
                cells.append(cell)
            print("| " + " | ".join(cells) + " |")
        print()
        for b in budgets:
            kv = runs[b]["kvtier"]
            base = [runs[b][p] for p in baselines]
            bh = max(base, key=lambda r: r["hit_share"])
            bs = min(base, key=lambda r: r["modeled_prefill_seconds"])
            bel = runs[b]["belady"]["hit_share"]
            gap = bel - bh["hit_share"]
            closed = (kv["hit_share"] - bh["hit_share"]) / gap if gap > 0 else 0.0
            ok_h = kv["hit_share"] >= bh["hit_share"]
            ok_s = kv["modeled_prefill_seconds"] <= bs["modeled_prefill_seconds"]
            line = (f"- HBM {pct(b)}: kvtier {f(100 * kv['hit_share'])} % vs best baseline "
                    f"{f(100 * bh['hit_share'])} % ({bh['policy']}) — "
                    + ("**as good or better**" if ok_h else "**worse**")
                    + f"; modeled {f(kv['modeled_prefill_seconds'], 1)} s vs "
                    f"{f(bs['modeled_prefill_seconds'], 1)} s ({bs['policy']}) — "
                    + ("**as good or better**" if ok_s else "**worse**")
                    + (f"; gap to Belady ({f(100 * bel)} %) closed: {f(100 * closed, 1)} %."
                       if mode == "one" else "."))
            print(line)
            summary.append((key, mode, b, ok_h, ok_s, closed))
        print()

attn = [
    ("attn_sink0", "Decode attention A: sink at page 0 (`gen-attention --sink-pages 0 --seed 1`, "
     "2,000 steps; DRAM 100 %)"),
    ("attn_sink9", "Decode attention B: sink at page 9, page 0 ordinary (`gen-attention "
     "--sink-pages 9 --seed 2`, 2,000 steps; DRAM 100 %)"),
    ("attn_heldout", "Decode attention C, held out (never used to pick defaults): sinks at "
     "pages 0 and 13, 20 topics shifting every 60 steps (`gen-attention --sink-pages 0,13 "
     "--topics 20 --phase-steps 60 --seed 3`; DRAM 100 %)"),
]
for key, title in attn:
    runs = {b: {r["policy"]: r for r in load(f"{key}_{b}.jsonl")} for b in budgets}
    first = next(iter(runs[budgets[0]].values()))
    print(f"#### {title}\n")
    print(f"{first['distinct_pages']:,} distinct pages. Each cell: **attention recall** / output "
          "recall / sink residency / modeled seconds; **bold**: best recall of the column.\n")
    head = ["policy"] + [f"HBM {pct(b)}" for b in budgets]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    best = {b: max(r["attention_recall"] for r in runs[b].values()) for b in budgets}
    for p in runs[budgets[0]]:
        cells = [p]
        for b in budgets:
            r = runs[b][p]
            rc = f(r["attention_recall"], 4)
            if r["attention_recall"] == best[b]:
                rc = f"**{rc}**"
            cells.append(f"{rc} / {f(r['output_recall'], 4)} / {f(r['sink_residency'], 3)} / "
                         f"{f(r['modeled_prefill_seconds'], 3)}")
        print("| " + " | ".join(cells) + " |")
    print()
print("#### Against the bars\n")
for key, mode, b, ok_h, ok_s, closed in summary:
    print(f"- {key}, {'one tier' if mode == 'one' else 'tiered'}, HBM {pct(b)}: hit share "
          + ("ok" if ok_h else "**below the best baseline**") + ", modeled s "
          + ("ok" if ok_s else "**above the best baseline**")
          + (f", gap to Belady closed {f(100 * closed, 1)} %" if mode == "one" else "") + ".")
PY
