"""GPU KV tensors registered with kvtierd by CUDA IPC (kvtier.register_cuda_tensors), on a GPU.

A worker process allocates vLLM-layout KV tensors on the GPU (one per layer, each a slice of one
PyTorch allocation, so offsets inside the allocation matter), fills blocks with random bf16 data,
stores them through kvtierd, zeroes the tensors, and loads them back from each tier the daemon
holds them in (HBM pool, DRAM, and NVMe after a restart): every block must come back bit-identical.

  PYTHONPATH=bench/python python3 gpu_register_check.py --kvtierd PATH/kvtierd.sh --nvme-dir /tmp/x
(scripts/gpu/python_run bundles kvtierd and the wheel; copy this file beside them.)
Prints one line per tier and `gpu-register: PASS` or exits non-zero.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

import torch

import kvtier
from gpu_prefix_reuse import Daemon


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kvtierd", required=True)
    ap.add_argument("--nvme-dir", required=True)
    args = ap.parse_args()
    torch.manual_seed(1)
    layout = kvtier.Layout(layers=4, kv_heads=8, head_dim=128, dtype="bf16", tokens_per_page=16,
                           tensor_layout="vllm", num_blocks=64)
    dev = torch.device("cuda", 0)
    # One allocation, sliced per layer: the daemon must honour each slice's offset.
    per_layer = 1
    for d in layout.buffer_shape:
        per_layer *= d
    pool = torch.empty(per_layer * layout.layers + 1024, dtype=torch.bfloat16, device=dev)
    kv = [pool[512 + i * per_layer: 512 + (i + 1) * per_layer].view(layout.buffer_shape)
          for i in range(layout.layers)]
    pages = 24
    ok = True
    with tempfile.TemporaryDirectory() as work:
        # Each daemon has room for the test's pages in one tier only (the NVMe one fills its small
        # DRAM with filler pages first, and its pages are read back after a restart).
        for tier, sizes in (("hbm", dict(hbm_pages=64, dram_pages=16)),
                            ("dram", dict(hbm_pages=0, dram_pages=64)),
                            ("nvme", dict(hbm_pages=0, dram_pages=16))):
            nvme = dict(nvme_dir=os.path.join(args.nvme_dir, tier),
                        nvme_bytes=256 * layout.page_bytes) if tier == "nvme" else {}
            d = Daemon(args.kvtierd, work, tier, layout.page_bytes, backend="cuda", **sizes,
                       **nvme)
            c = kvtier.Client.connect(d.socket)
            c.hello(f"gpu/{tier}", layout)
            kvtier.register_cuda_tensors(c, kv)
            for t in kv:
                t.copy_(torch.randn(t.shape, device=dev, dtype=torch.float32).to(torch.bfloat16))
            want = [t.clone() for t in kv]
            torch.cuda.synchronize(dev)
            if tier == "nvme":
                filler = c.chain_keys(list(range(5000, 5000 + 16 * layout.tokens_per_page)))
                c.store(filler, list(range(40, 56))).wait(check=True)
                c.pin(filler)  # pinned pages are never displaced: the test's pages go to NVMe
            keys = c.chain_keys(list(range(1000, 1000 + pages * layout.tokens_per_page)))
            c.store(keys, list(range(pages))).wait(check=True)
            if tier == "nvme":
                c.close()
                assert d.stop() == 0
                d.start()
                c = kvtier.Client.connect(d.socket)
                c.hello(f"gpu/{tier}", layout)
                kvtier.register_cuda_tensors(c, kv)
            for t in kv:
                t.zero_()
            torch.cuda.synchronize(dev)
            tiers = c.lookup(keys)
            print(f"gpu-register tier={tier} lookup prefix={tiers.prefix_pages} "
                  f"tiers={sorted(set(t.name for t in tiers.tiers))}", flush=True)
            r = c.load(keys, list(range(pages))).wait(check=True)
            torch.cuda.synchronize(dev)
            same = all(torch.equal(a[:, :pages], b[:, :pages]) for a, b in zip(kv, want))
            # Every page came from the tier under test, not a copy elsewhere.
            right_tier = {t.name for t in r.tiers} == {tier.upper()}
            ok = ok and same and right_tier
            print(f"gpu-register tier={tier} loaded ok_pages={r.ok_pages} "
                  f"from={sorted(set(t.name for t in r.tiers))} identical={same}", flush=True)
            c.close()
            d.stop()
    print("gpu-register:", "PASS" if ok else "FAIL", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
