"""Prefix reuse through kvtierd with a real transformer forward pass: determinism and TTFT.

A Llama-architecture model (Llama-3.2-1B's shape by default) built from a config with random
weights (fixed seed), bf16. For each prompt length it:
  1. populates: a full prefill of the shared prefix (the request that came before), whose KV
     pages are stored in kvtierd (kvtier.hf.PrefixCache.save);
  2. (a) recomputes: prefills the prefix again, then the suffix, and decodes greedily;
  3. (b) HBM, (c) DRAM, (d) NVMe, (e) NVMe after kvtierd restarted: restores the prefix from a
     kvtierd whose only tier with room is that one, prefills the suffix, decodes greedily;
and requires the restored KV bytes to equal the populated ones bit for bit, and every restored
run's tokens and logits to equal (a)'s bit for bit. It also runs a full prefill of the whole
prompt (no split) and reports how far its logits are from the split ones, and measures time to
first token (TTFT) without a cached prefix (recompute) and with one from each tier.

  python3 gpu_prefix_reuse.py --kvtierd BIN/kvtierd --out DIR          (H200: the defaults)
  python3 gpu_prefix_reuse.py --kvtierd build/daemon/kvtierd --tiny    (CPU dry run)
Prints one JSON line per measurement ("kvtier-python-gpu ...") and a summary; exits 1 when a
determinism check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Optional

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import kvtier
import kvtier.hf


def log(record: dict[str, Any]) -> None:
    print("kvtier-python-gpu " + json.dumps(record), flush=True)


def model_config(tiny: bool) -> LlamaConfig:
    if tiny:
        return LlamaConfig(vocab_size=1000, hidden_size=128, intermediate_size=256,
                           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                           head_dim=32, max_position_embeddings=4096,
                           attn_implementation="sdpa")
    # meta-llama/Llama-3.2-1B's config.json, by value (no download).
    return LlamaConfig(
        vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
        num_attention_heads=32, num_key_value_heads=8, head_dim=64,
        max_position_embeddings=131072, rope_theta=500000.0, rms_norm_eps=1e-5,
        rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
        tie_word_embeddings=True, attn_implementation="sdpa")


class Daemon:
    """One kvtierd with a config written here; restartable over the same data and NVMe dirs."""

    def __init__(self, binary: str, workdir: str, name: str, page_bytes: int, hbm_pages: int,
                 dram_pages: int, backend: str, nvme_dir: str = "", nvme_bytes: int = 0) -> None:
        self.binary = binary
        self.dir = os.path.join(workdir, name)
        os.makedirs(self.dir, exist_ok=True)
        self.socket = os.path.join(self.dir, "data", "kvtierd.sock")
        self.log_path = os.path.join(self.dir, "kvtierd.log")
        self.config = os.path.join(self.dir, "kvtierd.yaml")
        nvme = ""
        if nvme_dir:
            os.makedirs(nvme_dir, exist_ok=True)
            nvme = f"nvme:\n  directories: [{nvme_dir}]\n  capacity_bytes: {nvme_bytes}\n"
        with open(self.config, "w") as f:
            f.write(f"data_dir: {os.path.join(self.dir, 'data')}\nsocket_path: {self.socket}\n"
                    f"http_address: \"\"\nstore:\n  page_bytes: {page_bytes}\n"
                    f"  hbm_pages: {hbm_pages}\n  dram_pages: {dram_pages}\n"
                    f"  hbm_backend: {backend}\n"
                    # The planner stays idle, so each page stays in the tier it was stored in
                    # (and a restarted daemon serves from NVMe instead of promoting).
                    "  maintain_interval_ms: 86400000\n"
                    "limits:\n  max_inflight_ops: 64\n  max_pinned_pages: 262144\n  io_threads: 8\n"
                    # Reserved sink slots live in HBM; a daemon without HBM reserves none.
                    f"namespaces:\n  - name: \"*\"\n    sink_slots: {16 if hbm_pages else 0}\n"
                    + nvme)
        self.proc: Optional[subprocess.Popen] = None
        self.start()

    def start(self) -> None:
        logf = open(self.log_path, "a")
        self.proc = subprocess.Popen([self.binary, f"--config={self.config}"], stdout=logf,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"kvtierd exited {self.proc.returncode}: {self.tail()}")
            if os.path.exists(self.socket):
                try:
                    kvtier.Client.connect(self.socket).close()
                    return
                except kvtier.KvtierError:
                    pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"kvtierd did not serve in 120 s: {self.tail()}")
            time.sleep(0.05)

    def tail(self) -> str:
        with open(self.log_path) as f:
            return "".join(f.readlines()[-20:])

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=120)
        self.proc = None
        return code


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def greedy(model: Any, logits: torch.Tensor, cache: Any,
           steps: int) -> tuple[list[int], torch.Tensor]:
    """Greedy tokens and the logits each was chosen from ([steps, vocab], on the device)."""
    rows = [logits[0, -1]]
    token = logits[:, -1:].argmax(-1)
    tokens = [token]
    for _ in range(steps - 1):
        out = model(token, use_cache=True, **kvtier.hf.cache_kwargs(model, cache))
        cache = kvtier.hf.output_cache(out)
        rows.append(out.logits[0, -1])
        token = out.logits[:, -1:].argmax(-1)
        tokens.append(token)
    return [int(t) for t in torch.cat(tokens, dim=1)[0].tolist()], torch.stack(rows)


def kv_bits(cache: Any, tokens: int) -> list[torch.Tensor]:
    out = []
    for layer in cache.layers:
        for t in (layer.keys, layer.values):
            out.append(t[:, :, :tokens].contiguous().view(torch.int16))
    return out


def kv_equal(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kvtierd", required=True)
    ap.add_argument("--out", default="")
    ap.add_argument("--tiny", action="store_true", help="a small model on CPU (dry run)")
    ap.add_argument("--det", default="4096,32768", help="prompt lengths checked for determinism")
    ap.add_argument("--ttft", default="4096,32768,131072", help="prompt lengths timed")
    ap.add_argument("--decode", type=int, default=256)
    ap.add_argument("--tokens-per-page", type=int, default=64)
    ap.add_argument("--suffix", type=int, default=64, help="prompt tokens after the cached prefix")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--nvme-dir", default="")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-deterministic", action="store_true",
                    help="leave PyTorch's kernel choice alone (default: deterministic kernels, "
                         "no cuDNN attention)")
    args = ap.parse_args()
    if not args.no_deterministic:
        # Run-to-run determinism of the model itself is the premise of every bit-for-bit check
        # below: cuBLAS with a fixed workspace, and no cuDNN attention (its plan may change).
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cuda.enable_cudnn_sdp(False)

    device = torch.device("cpu" if args.tiny else "cuda")
    backend = "host-emulated" if args.tiny else "cuda"
    if args.tiny:
        args.det, args.ttft, args.decode = "256,512", "256,512,1024", 8
    det = [int(x) for x in args.det.split(",") if x]
    ttft = [int(x) for x in args.ttft.split(",") if x]
    lengths = sorted(set(det) | set(ttft))
    tpp = args.tokens_per_page

    torch.manual_seed(args.seed)
    config = model_config(args.tiny)
    config.dtype = torch.bfloat16
    with torch.device(device):
        model = LlamaForCausalLM(config).to(torch.bfloat16).eval()
    machine = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
               "torch": torch.__version__, "transformers": __import__("transformers").__version__,
               "layers": config.num_hidden_layers, "hidden": config.hidden_size,
               "kv_heads": config.num_key_value_heads, "head_dim": config.head_dim,
               "vocab": config.vocab_size, "dtype": "bf16", "tokens_per_page": tpp,
               "seed": args.seed, "deterministic": not args.no_deterministic}
    log({"machine": machine})

    gen = torch.Generator().manual_seed(args.seed + 1)
    prompts = {n: torch.randint(0, config.vocab_size, (1, n), generator=gen).to(device)
               for n in lengths}
    cached = {n: ((n - args.suffix) // tpp) * tpp for n in lengths}
    max_tokens = max(lengths)
    total_pages = sum(cached[n] // tpp for n in lengths)
    layout = kvtier.hf.layout_for(config, max_tokens, tpp, torch.bfloat16)
    page_bytes = layout.page_bytes
    log({"layout": {"page_bytes": page_bytes, "pages": total_pages,
                    "cached_tokens": cached, "suffix_tokens": args.suffix}})

    failures: list[str] = []
    results: dict[str, Any] = {"machine": machine, "determinism": {}, "ttft": {}}

    with torch.inference_mode():
        # Warm-up: kernels, allocator, cuBLAS handles.
        for n in sorted(lengths)[:1]:
            model(prompts[n][:, :n // 2], use_cache=True, logits_to_keep=1)
        sync(device)

        # 1. populate: a full prefill of each shared prefix; its KV is what kvtierd will hold.
        populated: dict[int, Any] = {}
        for n in lengths:
            out = model(prompts[n][:, :cached[n]], use_cache=True, logits_to_keep=1)
            populated[n] = kvtier.hf.output_cache(out)
        sync(device)

        # 2. (a) recompute the prefix, then the suffix; and the unsplit full prefill.
        reference: dict[int, tuple[list[int], torch.Tensor]] = {}
        for n in det:
            c = cached[n]
            pre = model(prompts[n][:, :c], use_cache=True, logits_to_keep=1)
            pre_cache = kvtier.hf.output_cache(pre)
            same = kv_equal(kv_bits(pre_cache, c), kv_bits(populated[n], c))
            suf = model(prompts[n][:, c:], use_cache=True, logits_to_keep=1,
                        **kvtier.hf.cache_kwargs(model, pre_cache))
            reference[n] = greedy(model, suf.logits, kvtier.hf.output_cache(suf), args.decode)
            # Control: the same recompute again. Restored runs are held to this equality.
            pre2 = model(prompts[n][:, :c], use_cache=True, logits_to_keep=1)
            suf2 = model(prompts[n][:, c:], use_cache=True, logits_to_keep=1,
                         **kvtier.hf.cache_kwargs(model, kvtier.hf.output_cache(pre2)))
            repeat = greedy(model, suf2.logits, kvtier.hf.output_cache(suf2), args.decode)
            control = compare(repeat, reference[n])
            del pre2, suf2
            full = model(prompts[n], use_cache=True, logits_to_keep=1)
            full_cache = kvtier.hf.output_cache(full)
            full_tokens, full_logits = greedy(model, full.logits, full_cache, args.decode)
            ref_tokens, ref_logits = reference[n]
            agree = next((i for i, (x, y) in enumerate(zip(full_tokens, ref_tokens)) if x != y),
                         len(ref_tokens))
            first_diff = (full_logits[0].float() - ref_logits[0].float()).abs()
            prefix_kv_same = kv_equal(kv_bits(full_cache, c), kv_bits(populated[n], c))
            record = {
                "prompt": n, "cached": c, "recompute_prefix_kv_bit_equal": same,
                "recompute_again": control,
                "full_vs_split": {
                    "first_token_logits_max_abs_diff": float(first_diff.max()),
                    "first_token_logits_mean_abs_diff": float(first_diff.mean()),
                    "tokens_equal_before_first_divergence": agree,
                    "tokens_equal_total": sum(x == y for x, y in zip(full_tokens, ref_tokens)),
                    "prefix_kv_bit_equal_to_prefix_only_prefill": prefix_kv_same,
                }}
            log({"recompute": record})
            results["determinism"][str(n)] = {"a_recompute": record}
            if not same:
                failures.append(f"{n}: recomputing the prefix changed its KV bytes")
            if not (control["tokens_equal"] and control["logits_bit_equal"]):
                failures.append(f"{n}: the model is not deterministic run to run: {control}")
            del full_cache, full, pre_cache, pre, suf
        sync(device)

        # TTFT without a cache: a full prefill of the whole prompt, to the first token.
        for n in ttft:
            times = []
            for _ in range(args.repeats):
                sync(device)
                t0 = time.perf_counter()
                out = model(prompts[n], use_cache=True, logits_to_keep=1)
                int(out.logits[0, -1].argmax())
                times.append(time.perf_counter() - t0)
                del out
            results["ttft"].setdefault(str(n), {})["recompute"] = {
                "median_s": statistics.median(times), "all_s": times}
            log({"ttft": {"prompt": n, "tier": "recompute", "median_s": statistics.median(times),
                          "all_s": times}})
        if device.type == "cuda":
            torch.cuda.empty_cache()

        # 3. the tiers, one kvtierd each, sized so that only that tier has room.
        work = tempfile.mkdtemp(prefix="kvtier-gpu-")
        nvme_dir = args.nvme_dir or os.path.join(work, "nvme")
        slots = total_pages + total_pages // 4 + 64
        filler_pages = 16
        tiers = [
            ("hbm", dict(hbm_pages=slots, dram_pages=filler_pages)),
            ("dram", dict(hbm_pages=0, dram_pages=slots)),
            ("nvme", dict(hbm_pages=0, dram_pages=filler_pages, nvme_dir=nvme_dir,
                          nvme_bytes=(slots + filler_pages) * page_bytes)),
        ]
        for name, sizes in tiers:
            try:
                daemon = Daemon(args.kvtierd, work, name, page_bytes, backend=backend, **sizes)
            except RuntimeError as e:
                failures.append(f"{name}: kvtierd did not start: {e}")
                log({"error": {"tier": name, "message": str(e)}})
                continue
            runs = [name] if name != "nvme" else ["nvme", "nvme_restarted"]
            try:
                client = kvtier.Client.connect(daemon.socket)
                pc = kvtier.hf.PrefixCache(client, config, "llama-3.2-1b-random/bench",
                                           max_tokens, tpp, torch.bfloat16)
                if name != "hbm":
                    # Fill the small tiers above with pages of another sequence, so the
                    # prefixes land in the tier under test.
                    junk = torch.randint(0, config.vocab_size, (1, filler_pages * tpp),
                                         generator=gen)
                    junk_keys = pc.keys_of(junk)
                    client.store(junk_keys, range(filler_pages)).wait(check=True)
                    client.pin(junk_keys)  # pinned pages are never displaced
                t0 = time.perf_counter()
                for n in lengths:
                    pc.save(populated[n], prompts[n][:, :cached[n]])
                log({"stored": {"tier": name, "pages": total_pages,
                                "seconds": time.perf_counter() - t0}})
                for run in runs:
                    if run == "nvme_restarted":
                        client.close()
                        pc.buffers.close()
                        code = daemon.stop()
                        daemon.start()
                        log({"restarted": {"exit_code": code}})
                        client = kvtier.Client.connect(daemon.socket)
                        pc = kvtier.hf.PrefixCache(client, config, "llama-3.2-1b-random/bench",
                                                   max_tokens, tpp, torch.bfloat16)
                    measure(run, model, pc, prompts, cached, det, ttft, populated, reference,
                            args, device, results, failures)
                results.setdefault("daemon_stats", {})[name] = client.stats()
                results.setdefault("host_buffers", {})[name] = {
                    "pinned": pc.buffers.pinned, "pin_error": pc.buffers.pin_error}
                client.close()
            except Exception as e:  # one tier's failure is reported; the others still run
                failures.append(f"{name}: {type(e).__name__}: {e}")
                log({"error": {"tier": name, "message": f"{type(e).__name__}: {e}",
                               "kvtierd_log": daemon.tail()}})
            finally:
                if daemon.proc is not None:
                    daemon.stop()
                if args.out:
                    shutil.copy(daemon.log_path, os.path.join(args.out, f"kvtierd-{name}.log"))
        shutil.rmtree(work, ignore_errors=True)

    results["failures"] = failures
    if args.out:
        with open(os.path.join(args.out, "gpu_prefix_reuse.json"), "w") as f:
            json.dump(results, f, indent=1)
    summary(results, ttft)
    print("determinism: " + ("PASS" if not failures else "FAIL: " + "; ".join(failures)))
    return 0 if not failures else 1


def measure(run: str, model: Any, pc: kvtier.hf.PrefixCache, prompts: dict, cached: dict,
            det: list[int], ttft: list[int], populated: dict, reference: dict, args: Any,
            device: torch.device, results: dict, failures: list[str]) -> None:
    for n in sorted(set(det) | set(ttft)):
        prompt = prompts[n]
        times, parts = [], []
        restored = None
        for _ in range(args.repeats if n in ttft else 1):
            restored = None
            sync(device)
            t0 = time.perf_counter()
            restored = pc.restore(prompt, device=device if device.type != "cpu" else None)
            out = model(prompt[:, restored.cached_tokens:], use_cache=True, logits_to_keep=1,
                        **kvtier.hf.cache_kwargs(model, restored.cache))
            int(out.logits[0, -1].argmax())
            times.append(time.perf_counter() - t0)
            parts.append({"lookup_s": restored.seconds_lookup, "load_s": restored.seconds_load,
                          "to_device_s": restored.seconds_to_device})
        assert restored is not None
        tier_mix = {t.name: restored.tiers.count(t) for t in set(restored.tiers)}
        if restored.cached_tokens != cached[n]:
            failures.append(f"{run} {n}: restored {restored.cached_tokens} tokens, "
                            f"expected {cached[n]} (tiers {tier_mix}; {pc.last_error})")
            continue
        if n in ttft:
            best = int(np.argsort(times)[len(times) // 2])
            rec = {"prompt": n, "tier": run, "median_s": statistics.median(times),
                   "all_s": times, "cached_tokens": restored.cached_tokens,
                   "tiers": tier_mix, **parts[best]}
            results["ttft"].setdefault(str(n), {})[run] = rec
            log({"ttft": rec})
        if n in det:
            kv_same = kv_equal(kv_bits(restored.cache, cached[n]), kv_bits(populated[n], cached[n]))
            run_out = greedy(model, out.logits, kvtier.hf.output_cache(out), args.decode)
            rec = {"prompt": n, "run": run, "tiers": tier_mix, "restored_kv_bit_equal": kv_same,
                   **compare(run_out, reference[n])}
            results["determinism"][str(n)][run] = rec
            log({"determinism": rec})
            if not (kv_same and rec["tokens_equal"] and rec["logits_bit_equal"]):
                failures.append(f"{run} {n}: kv {kv_same} tokens {rec['tokens_equal']} "
                                f"logits {rec['logits_bit_equal']}")
        del restored, out
        if device.type == "cuda":
            torch.cuda.empty_cache()


def compare(run: tuple[list[int], torch.Tensor], ref: tuple[list[int], torch.Tensor]) -> dict:
    tokens, logits = run
    ref_tokens, ref_logits = ref
    first = next((i for i, (x, y) in enumerate(zip(tokens, ref_tokens)) if x != y), len(tokens))
    diff = (logits[0].float() - ref_logits[0].float()).abs()
    return {"tokens_equal": tokens == ref_tokens,
            "logits_bit_equal": bool(torch.equal(logits.view(torch.int16),
                                                 ref_logits.view(torch.int16))),
            "decoded": len(tokens), "first_token_divergence": first,
            "first_logits_max_abs_diff": float(diff.max())}


def summary(results: dict, ttft: list[int]) -> None:
    print("\nTTFT (median of repeats, seconds; speed-up vs recompute)")
    runs = ["recompute", "hbm", "dram", "nvme", "nvme_restarted"]
    print("| prompt | " + " | ".join(runs) + " |")
    print("|---" * (len(runs) + 1) + "|")
    for n in ttft:
        row = results["ttft"].get(str(n), {})
        base = row.get("recompute", {}).get("median_s")
        cells = []
        for r in runs:
            v = row.get(r, {}).get("median_s")
            if v is None:
                cells.append("-")
            elif r == "recompute" or not base:
                cells.append(f"{v:.4f}")
            else:
                cells.append(f"{v:.4f} ({base / v:.1f}x)")
        print(f"| {n} | " + " | ".join(cells) + " |")
    print("\ndeterminism")
    for n, runs_ in results["determinism"].items():
        for r, rec in runs_.items():
            print(f"  {n} {r}: {json.dumps(rec)}")


if __name__ == "__main__":
    sys.exit(main())
