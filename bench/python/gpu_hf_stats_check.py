"""kvtier.hf's attention statistics on a GPU: the [kernels] CUDA kernel fed by the prefill's
captured queries, on a Llama-3.2-1B-shaped random bf16 model.

For each prompt length: a prefill through PrefixCache (query capture on) stores every page with
the kernel's statistics; its logits must equal a prefill of the same model without the capture
(bit for bit); for one layer, the kernel's figures must agree with the kernel's CPU twin on the
same captured queries, keys and values (the documented bound); the time the statistics took is
reported against the prefill's. Also prints how much mass the first page gets against the others
(random weights: sinks are not expected; [model-quality] trains a model where they are).

  PYTHONPATH=bench/python python3 gpu_hf_stats_check.py --kvtierd PATH/kvtierd.sh [--lengths 4096,32768]
Prints `kvtier-hf-stats {...}` lines and `gpu-hf-stats: PASS` or exits non-zero.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time

import numpy as np
import torch
from transformers import LlamaForCausalLM

import kvtier
import kvtier.hf
from gpu_prefix_reuse import Daemon, model_config
from kvtier.attention import has_cuda_kernels, page_attention_stats


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kvtierd", required=True)
    ap.add_argument("--lengths", default="4096,32768")
    ap.add_argument("--tokens-per-page", type=int, default=64)
    ap.add_argument("--tiny", action="store_true", help="a small model on CPU (dry run)")
    args = ap.parse_args()
    device = torch.device("cpu" if args.tiny else "cuda")
    lengths = [int(x) for x in args.lengths.split(",") if x]
    tpp = args.tokens_per_page
    torch.manual_seed(0)
    config = model_config(args.tiny)
    config.dtype = torch.bfloat16
    with torch.device(device):
        plain = LlamaForCausalLM(config).to(torch.bfloat16).eval()
    with torch.device(device):
        captured = LlamaForCausalLM(config).to(torch.bfloat16).eval()
    captured.load_state_dict(plain.state_dict())
    ok = True
    print("kvtier-hf-stats " + json.dumps({"cuda_kernel": has_cuda_kernels(),
                                            "device": str(device)}), flush=True)
    with tempfile.TemporaryDirectory() as work:
        pages_needed = sum(n // tpp for n in lengths) + 64
        probe = kvtier.hf.layout_for(config, max(lengths), tpp, torch.bfloat16)
        d = Daemon(args.kvtierd, work, "stats", probe.page_bytes, hbm_pages=pages_needed,
                   dram_pages=64, backend="host-emulated" if args.tiny else "cuda")
        try:
            client = kvtier.Client.connect(d.socket)
            pc = kvtier.hf.PrefixCache(client, config, "llama-3.2-1b-random/stats", max(lengths),
                                       tpp, torch.bfloat16)
            for n in lengths:
                ids = torch.randint(0, config.vocab_size, (1, n), device=device)
                with torch.no_grad():
                    ref = plain(ids, use_cache=True).logits
                    kvtier.hf.capture_queries(captured, pc.attention_window)
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    out = captured(ids, use_cache=True)
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    t1 = time.perf_counter()
                    cache = kvtier.hf.output_cache(out)
                    # One layer by hand: the kernel against its CPU twin on the same inputs.
                    layer = captured.model.layers[0].self_attn
                    q = layer._kvtier_queries.transpose(0, 1)
                    k = cache.layers[0].keys[0].transpose(0, 1)
                    v = cache.layers[0].values[0].transpose(0, 1)
                    ta = time.perf_counter()
                    gpu = page_attention_stats(q, k, v, tpp)
                    tb = time.perf_counter()
                    cpu = page_attention_stats(q.cpu(), k.cpu(), v.cpu(), tpp)
                    t2 = time.perf_counter()
                    stored = pc.save(cache, ids, model=captured)
                    t3 = time.perf_counter()
                pages = len(gpu)
                bound = 1e-3 * np.maximum(cpu["mass"], 1 / pages) + 1e-6
                twin_ok = bool(np.all(np.abs(gpu["mass"] - cpu["mass"]) <= bound) and
                               np.allclose(gpu["value_norm"], cpu["value_norm"], rtol=1e-4))
                logits_equal = torch.equal(out.logits, ref)
                st = pc.last_stats
                assert st is not None and st.mass is not None and st.value_norm is not None
                mass = np.asarray(st.mass)
                norms = np.asarray(st.value_norm)
                record = {
                    "tokens": n, "pages_stored": stored, "logits_equal_plain": logits_equal,
                    "kernel_vs_twin_ok": twin_ok,
                    "max_mass_diff_vs_twin": float(np.abs(gpu["mass"] - cpu["mass"]).max()),
                    "prefill_s": round(t1 - t0, 4),
                    "stats_one_layer_s": round(tb - ta, 5),
                    "save_with_stats_s": round(t3 - t2, 4),
                    "first_page_mass": float(mass[0]),
                    "median_page_mass": float(np.median(mass[1:])) if len(mass) > 1 else None,
                    "first_page_value_norm": float(norms[0]),
                    "median_value_norm": float(np.median(norms[1:])) if len(norms) > 1 else None,
                    "mass_sum_stored": float(mass.sum()),
                }
                print("kvtier-hf-stats " + json.dumps(record), flush=True)
                ok = ok and logits_equal and twin_ok and stored == n // tpp
            client.close()
        finally:
            d.stop()
    print("gpu-hf-stats:", "PASS" if ok else "FAIL", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
