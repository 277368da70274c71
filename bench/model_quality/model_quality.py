"""Sinks on a real model (issue 19): train a small Llama-style LM, measure its attention sinks with
kvtier's attention-statistics kernel, and compare KV placement policies on a long stream under a
fixed KV budget, kvtier's own policies run by a real kvtierd.

    python3 model_quality.py --corpus corpus.txt --out DIR --kvtierd KVTIERD   (the GPU run)
    python3 model_quality.py --corpus README.md --out DIR --tiny --kvtierd K   (CPU, seconds: CI)

One process does everything, in order, and writes DIR/model_quality.json after each phase:
1. data: the corpus is split by characters (first 95 % train, last 5 % held out, cut at a line
   break); a byte-level BPE tokenizer (`tokenizers`) is trained on the training part only. With
   `bos` (the default since run 4) the tokenizer gets one special token, <|bos|> (id 0), and every
   training sequence, held-out sequence and evaluation stream starts with it: a consistent start
   token, the one StreamingLLM found becomes the attention sink. A sequence of `ctx` tokens is
   then <|bos|> + ctx - 1 corpus tokens, starting anywhere in the corpus.
2. model: a decoder with RoPE, RMSNorm, SwiGLU and grouped-query attention, trained in bf16
   autocast (CUDA) with AdamW and a fixed seed; train loss every 10 steps, held-out loss every
   `eval_every` steps. Bit-for-bit reproduction holds on the CPU; CUDA's attention backward is not
   deterministic, so GPU reruns match in distribution, not bit for bit.
3. sinks: on held-out sequences of the training length, per layer, kvtier.attention.
   page_attention_stats (the [kernels] CUDA kernel through libkvtier.so on CUDA tensors, its CPU
   twin otherwise) over the last `sink_window` queries: mass on page 0 against the mean of the
   other pages, value norm of page 0 against the others' mean, page 0's breadth and head entropy,
   and whether kvtier's measurement rule (tiering/policy/sink_classifier.cc LooksLikeSink) calls
   page 0 a sink; beside them, from the same q/k/v, the mass on token 0 alone and token 0's value
   norm against the mean token's. Done on the untrained model too, as the control.
4. long stream: held-out streams `stream_factor` times the training context are decoded one page
   (16 tokens) at a time. Positions are assigned inside the cache (StreamingLLM's rule: the kept
   tokens are renumbered 0..n-1 before RoPE), for every policy alike. Each step's statistics come
   from page_attention_stats on the real q/k/v of every layer. Two kinds of rows:
   - Python rules (window, StreamingLLM, H2O; PY_POLICIES below), drop-only: before each page the
     cache holds at most `budget` pages; dropped pages are masked out of attention.
   - kvtierd rows (DAEMON_POLICIES): a real kvtierd (--kvtierd) per stream with `hbm_pages` HBM
     slots and `dram_pages` DRAM slots, store.policy set to the row's policy. Every page is
     stored with its statistics, read pages are loaded (accesses), statistics are reported, and
     the daemon's policy alone decides which pages sit in HBM, which in DRAM and which are
     dropped (Lookup gives the tiers; see DaemonPlacement). Attention covers HBM + DRAM pages,
     dropped ones are masked out, and every DRAM page attended is a modeled load of page_bytes
     over `pcie_gbps` in that step.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import tempfile
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import kvtier
from kvtier.attention import has_cuda_kernels, page_attention_stats


@dataclass
class Config:
    vocab: int = 8192
    dim: int = 640
    layers: int = 10
    heads: int = 10
    kv_heads: int = 2
    ffn: int = 1728
    ctx: int = 512
    batch: int = 32
    steps: int = 2500
    max_train_seconds: float = 240.0
    lr: float = 1.5e-3
    warmup: int = 100
    eval_every: int = 250
    val_batches: int = 8
    seed: int = 1234
    tokens_per_page: int = 16
    sink_sequences: int = 16
    sink_window: int = 64
    stream_factor: int = 8
    streams: int = 4
    budgets: list[int] = field(default_factory=lambda: [16, 32])  # the Python rows' budgets
    deadline_seconds: float = 450.0
    bin_tokens: int = 256
    bos: bool = True  # <|bos|> starts every sequence and stream (run 4 on; runs 1-3 had none)
    # kvtierd rows: HBM slots (the budget, reserved sink slots included), DRAM slots behind them.
    hbm_pages: int = 16
    dram_pages: int = 16
    # The modeled DRAM->HBM link: 50 GB/s, about what a PCIe 5.0 x16 host-to-device copy reaches
    # (kvtier_policy.h's dram_gbps default).
    pcie_gbps: float = 50.0


TINY: dict[str, Any] = dict(
    vocab=384, dim=64, layers=2, heads=4, kv_heads=2, ffn=160, ctx=64, batch=16, steps=60,
    max_train_seconds=60.0, lr=3e-3, warmup=5, eval_every=20, val_batches=2, sink_sequences=2,
    sink_window=16, stream_factor=4, streams=1, budgets=[2, 16], deadline_seconds=120.0,
    bin_tokens=64, hbm_pages=2, dram_pages=2)


# --- data ---------------------------------------------------------------------------------------

def split_text(text: str, held_fraction: float = 0.05) -> tuple[str, str]:
    cut = text.rfind("\n", 0, int(len(text) * (1 - held_fraction)))
    cut = cut if cut > 0 else int(len(text) * (1 - held_fraction))
    return text[:cut], text[cut:]


BOS = "<|bos|>"


def train_tokenizer(text: str, vocab: int, bos: bool = False) -> Any:
    """Byte-level BPE of `vocab` ids; with `bos`, id 0 is the special token BOS (never produced
    by encoding text)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, show_progress=False,
                                  special_tokens=[BOS] if bos else [],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    lines = text.split("\n")
    tok.train_from_iterator(("\n".join(lines[i:i + 200]) for i in range(0, len(lines), 200)),
                            trainer=trainer)
    return tok


def encode(tok: Any, text: str) -> np.ndarray:
    lines = text.split("\n")
    blocks = ["\n".join(lines[i:i + 200]) + "\n" for i in range(0, len(lines), 200)]
    ids: list[int] = []
    for enc in tok.encode_batch(blocks):
        ids.extend(enc.ids)
    return np.asarray(ids, dtype=np.int32)


# --- model --------------------------------------------------------------------------------------

def rope_tables(positions: torch.Tensor, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    inv = 1.0 / (10000.0 ** (torch.arange(0, head_dim, 2, device=positions.device).float()
                             / head_dim))
    ang = positions.float()[:, None] * inv[None, :]
    return ang.cos(), ang.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [..., T, H, D] rotated by position (rotate-half form); cos/sin [T, D/2]."""
    d = x.shape[-1] // 2
    x1, x2 = x[..., :d].float(), x[..., d:].float()
    c, s = cos[:, None, :], sin[:, None, :]
    return torch.cat([x1 * c - x2 * s, x1 * s + x2 * c], dim=-1).to(x.dtype)


class RMSNorm(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6)).to(x.dtype) * self.weight


class Block(nn.Module):
    def __init__(self, c: Config) -> None:
        super().__init__()
        self.h, self.kvh, self.hd = c.heads, c.kv_heads, c.dim // c.heads
        self.attn_norm, self.mlp_norm = RMSNorm(c.dim), RMSNorm(c.dim)
        self.wq = nn.Linear(c.dim, c.dim, bias=False)
        self.wk = nn.Linear(c.dim, self.kvh * self.hd, bias=False)
        self.wv = nn.Linear(c.dim, self.kvh * self.hd, bias=False)
        self.wo = nn.Linear(c.dim, c.dim, bias=False)
        self.w1 = nn.Linear(c.dim, c.ffn, bias=False)
        self.w3 = nn.Linear(c.dim, c.ffn, bias=False)
        self.w2 = nn.Linear(c.ffn, c.dim, bias=False)

    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Pre-RoPE q [B,T,H,D], k and v [B,T,KVH,D]."""
        b, t, _ = x.shape
        h = self.attn_norm(x)
        return (self.wq(h).view(b, t, self.h, self.hd), self.wk(h).view(b, t, self.kvh, self.hd),
                self.wv(h).view(b, t, self.kvh, self.hd))

    def finish(self, x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        """attn [B,H,T,D] -> residual stream after attention and MLP."""
        b, _, t, _ = attn.shape
        x = x + self.wo(attn.transpose(1, 2).reshape(b, t, -1))
        h = self.mlp_norm(x)
        return x + self.w2(F.silu(self.w1(h)) * self.w3(h))


class Model(nn.Module):
    def __init__(self, c: Config) -> None:
        super().__init__()
        self.c = c
        self.emb = nn.Embedding(c.vocab, c.dim)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.layers))
        self.norm = RMSNorm(c.dim)
        self.out = nn.Linear(c.dim, c.vocab, bias=False)
        for name, p in self.named_parameters():
            if p.dim() == 2:
                std = 0.02 / math.sqrt(2 * c.layers) if name.endswith(("wo.weight", "w2.weight")) \
                    else 0.02
                nn.init.normal_(p, std=std)

    def forward(self, ids: torch.Tensor,
                capture: Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], None] | None
                = None) -> torch.Tensor:
        """Plain causal forward from position 0; `capture(layer, q, k, v)` sees the rotated q/k
        and v of batch 0 ([T, heads, D])."""
        t = ids.shape[1]
        cos, sin = rope_tables(torch.arange(t, device=ids.device), self.c.dim // self.c.heads)
        x = self.emb(ids)
        for i, blk in enumerate(self.blocks):
            q, k, v = blk.qkv(x)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
            if capture is not None:
                capture(i, q[0], k[0], v[0])
            a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                               v.transpose(1, 2), is_causal=True, enable_gqa=True)
            x = blk.finish(x, a)
        return self.out(self.norm(x))


# --- training -----------------------------------------------------------------------------------

def batch_from(data: torch.Tensor, starts: torch.Tensor, ctx: int,
               bos: int | None = None) -> tuple[torch.Tensor, ...]:
    """Inputs and targets of ctx tokens each from `starts`; with `bos`, every input sequence is
    BOS followed by ctx - 1 corpus tokens (targets: those ctx - 1 and the next one)."""
    n = ctx + 1 if bos is None else ctx
    idx = starts[:, None] + torch.arange(n, device=starts.device)[None, :]
    seq = data[idx].long()
    if bos is not None:
        seq = torch.cat([torch.full_like(seq[:, :1], bos), seq], dim=1)
    return seq[:, :-1], seq[:, 1:]


def with_bos(tokens: torch.Tensor, bos: int | None) -> torch.Tensor:
    """`tokens` with BOS in front and the last token cut (same length), or unchanged."""
    if bos is None:
        return tokens
    return torch.cat([torch.full_like(tokens[:1], bos), tokens[:-1]])


def train(model: Model, c: Config, train_ids: torch.Tensor, val_ids: torch.Tensor,
          device: torch.device, log: Callable[[str], None],
          bos: int | None = None) -> dict[str, Any]:
    gen = torch.Generator(device="cpu").manual_seed(c.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=c.lr, betas=(0.9, 0.95), weight_decay=0.1,
                            fused=device.type == "cuda")
    val_gen = torch.Generator(device="cpu").manual_seed(c.seed + 1)
    val_starts = [torch.randint(0, len(val_ids) - c.ctx - 1, (c.batch,), generator=val_gen)
                  for _ in range(c.val_batches)]
    amp = device.type == "cuda"

    def val_loss() -> float:
        model.eval()
        tot = 0.0
        with torch.no_grad(), torch.autocast("cuda", torch.bfloat16, enabled=amp):
            for s in val_starts:
                x, y = batch_from(val_ids, s.to(device), c.ctx, bos)
                tot += F.cross_entropy(model(x).float().flatten(0, 1), y.flatten()).item()
        model.train()
        return tot / len(val_starts)

    curve: list[tuple[int, float]] = []
    val_curve: list[tuple[int, float]] = [(0, val_loss())]
    t0 = time.time()
    step = 0
    pending: list[tuple[int, torch.Tensor]] = []
    while step < c.steps and time.time() - t0 < c.max_train_seconds:
        lr = c.lr * min(1.0, (step + 1) / c.warmup) * (
            0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, step / c.steps))))
        for g in opt.param_groups:
            g["lr"] = lr
        starts = torch.randint(0, len(train_ids) - c.ctx - 1, (c.batch,), generator=gen)
        x, y = batch_from(train_ids, starts.to(device), c.ctx, bos)
        with torch.autocast("cuda", torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(model(x).float().flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 10 == 0 or step == 1:
            pending.append((step, loss.detach()))
        if step % c.eval_every == 0:
            curve.extend((s, v.item()) for s, v in pending)
            pending = []
            val_curve.append((step, val_loss()))
            log(f"step {step} train {curve[-1][1]:.3f} val {val_curve[-1][1]:.3f} "
                f"({time.time() - t0:.0f} s)")
    curve.extend((s, v.item()) for s, v in pending)
    if val_curve[-1][0] != step:
        val_curve.append((step, val_loss()))
    if device.type == "cuda":
        torch.cuda.synchronize()
    secs = time.time() - t0
    return {"steps": step, "seconds": secs, "tokens": step * c.batch * c.ctx,
            "train_loss": curve, "val_loss": val_curve,
            "stopped_by_time": step < c.steps}


# --- sinks --------------------------------------------------------------------------------------

# tiering/policy/sink_classifier.h SinkClassifierOptions defaults (the measurement rule).
MIN_BREADTH, MAX_ENTROPY, MAX_VALUE_NORM = 0.85, 0.5, 0.25


def stats(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, tpp: int) -> np.ndarray:
    """page_attention_stats with the classifier's breadth threshold (2x the uniform share)."""
    pages = (k.shape[0] + tpp - 1) // tpp
    return page_attention_stats(q, k, v, tpp, breadth_threshold=min(1.0, 2.0 / pages))


def token0_stats(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[float, float]:
    """Attention mass on token 0 alone (mean over the last q.shape[0] queries and every head,
    causal) and token 0's value norm against the mean token's: the sink as StreamingLLM reads it,
    a token rather than kvtier's page."""
    w, h, d = q.shape
    t, kvh = k.shape[0], k.shape[1]
    kk = k.float().repeat_interleave(h // kvh, dim=1)            # [T, H, D]
    scores = torch.einsum("whd,thd->hwt", q.float(), kk) / math.sqrt(d)
    pos_q = torch.arange(t - w, t, device=q.device)
    scores = scores.masked_fill(torch.arange(t, device=q.device)[None, :] > pos_q[:, None],
                                float("-inf"))
    mass0 = float(scores.softmax(-1)[..., 0].mean())
    norms = v.float().norm(dim=-1).mean(-1)                     # [T] over KV heads
    return mass0, float(norms[0] / norms[1:].mean().clamp_min(1e-12))


def measure_sinks(model: Model, c: Config, val_ids: torch.Tensor,
                  device: torch.device, bos: int | None = None) -> list[dict[str, float]]:
    gen = torch.Generator(device="cpu").manual_seed(c.seed + 2)
    starts = torch.randint(0, len(val_ids) - c.ctx - 1, (c.sink_sequences,), generator=gen)
    acc: list[dict[str, list[float]]] = [dict() for _ in range(c.layers)]

    def capture(i: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        s = stats(q[-c.sink_window:], k, v, c.tokens_per_page)
        rest_vn = float(s["value_norm"][1:].mean())
        vals = {"mass_page0": float(s["mass"][0]), "mass_rest_mean": float(s["mass"][1:].mean()),
                "mass_rest_max": float(s["mass"][1:].max()),
                "value_norm_page0_rel": float(s["value_norm"][0]) / rest_vn,
                "breadth_page0": float(s["breadth"][0]),
                "breadth_rest_mean": float(s["breadth"][1:].mean()),
                "entropy_page0": float(s["mass_entropy"][0])}
        vals["mass_token0"], vals["value_norm_token0_rel"] = token0_stats(q[-c.sink_window:], k, v)
        for key, val in vals.items():
            acc[i].setdefault(key, []).append(val)

    model.eval()
    with torch.no_grad(), torch.autocast("cuda", torch.bfloat16, enabled=device.type == "cuda"):
        for s0 in starts.tolist():
            seq = with_bos(val_ids[s0:s0 + c.ctx].long(), bos)
            model(seq[None].to(device), capture=capture)
    out = []
    for i, a in enumerate(acc):
        m = {k: float(np.mean(v)) for k, v in a.items()}
        m["layer"] = i
        m["mass_ratio"] = m["mass_page0"] / max(m["mass_rest_mean"], 1e-12)
        # LooksLikeSink on the mean measurement; value norm relative to the layer's other pages.
        m["measured_sink"] = bool(m["breadth_page0"] >= MIN_BREADTH
                                  and m["entropy_page0"] <= MAX_ENTROPY
                                  and m["value_norm_page0_rel"] <= MAX_VALUE_NORM)
        out.append(m)
    return out


# --- policies -----------------------------------------------------------------------------------
#
# Every policy sees the same per-step signals, aggregated over layers: mass, breadth and head
# entropy averaged, value norm relative to each layer's mean over the pages in that step,
# averaged. One step = one page of new tokens.
#
# PY_POLICIES: Python rules for what kvtierd has no rule of its own for (window) or has with
# another configuration (StreamingLLM and H2O keep their classic forms here, with H2O's 50/50
# split of the budget; kvtierd's h2o keeps 4 recent pages). Drop-only, one tier of `budget`
# pages; a page evicted is gone.
# full       no eviction (the reference).
# window     the `budget` newest pages.
# streaming  tiering/policy/classic_policies.cc StreamingLlmPolicy::Rank: pages covering the first
#            sink_tokens (4) tokens above all, the rest by insert time (newest kept).
# h2o        classic_policies.cc H2oPolicy::Rank: the `recent_pages` newest above all, the rest by
#            accumulated raw mass (H2O's heavy hitters); recent_pages = budget / 2 (H2O's split).
PY_POLICIES = ["window", "streaming", "h2o"]

# DAEMON_POLICIES: row name -> (store.policy, reserved sink slots, store.sink_tokens). Run by a
# real kvtierd (DaemonPlacement), its C++ policy deciding every placement.
# kvtier         frequency x utility with one reserved sink slot and the position rule (the
#                daemon's defaults but for the slot count).
# kvtier_noslot  the same ranking without the reserved slot and the position rule (sinks only
#                by the measurement rule): what the sink machinery buys.
# streaming_d    kvtierd's StreamingLlmPolicy, page 0 in a reserved slot.
# h2o_d          kvtierd's H2oPolicy (4 recent pages, accumulated mass), no reserved slot.
# lru_d          kvtierd's LruPolicy (accesses are the loads of read pages), no reserved slot.
DAEMON_POLICIES: dict[str, tuple[str, int, int]] = {
    "kvtier": ("kvtier", 1, 4), "kvtier_noslot": ("kvtier", 0, 0),
    "streaming_d": ("streaming", 1, 4), "h2o_d": ("h2o", 0, 4), "lru_d": ("lru", 0, 4)}


class Policy:
    """A Python rule (PY_POLICIES, or full): `pages` are the resident pages, in insert order."""

    def __init__(self, name: str, budget: int) -> None:
        self.name, self.budget = name, budget
        self.pages: list[int] = []
        self.dram: set[int] = set()        # always empty: one tier
        self.acc: dict[int, float] = {}     # h2o: accumulated mass

    def rank(self, p: int) -> float:
        if self.name == "window":
            return float(p)
        if self.name == "streaming":
            return (1e30 if p * 16 < 4 else 0.0) + p
        recent = p in self.pages[-max(1, self.budget // 2):]
        return (1e12 if recent else 0.0) + self.acc.get(p, 0.0) + p * 1e-20

    def step(self, p: int, sig: dict[int, dict[str, float]]) -> None:
        """Page `p` was just decoded; `sig` holds this step's statistics of every page attended."""
        self.pages.append(p)
        if self.name != "full":
            # The victims come from the pages already resident, never the page being put (the
            # store makes room before it inserts: tiered_store.cc AcquireSemanticSlot).
            cands = [q for q in self.pages if q != p]
            while len(self.pages) > self.budget:
                victim = min(cands, key=self.rank)
                cands.remove(victim)
                self.pages.remove(victim)
        for q in self.pages:
            if q in sig:
                self.acc[q] = self.acc.get(q, 0.0) + sig[q]["mass"]

    def close(self) -> dict[str, Any]:
        return {}


class Kvtierd:
    """A kvtierd of its own (temporary directory, socket, config; no HTTP listener) for one
    stream: hbm_pages + dram_pages slots of page_bytes, host-emulated HBM, `policy`."""

    def __init__(self, binary: str, page_bytes: int, hbm_pages: int, dram_pages: int,
                 policy: str, sink_slots: int, sink_tokens: int, tokens_per_page: int) -> None:
        self.dir = tempfile.mkdtemp(prefix="kvtier-model-quality-")
        self.socket = os.path.join(self.dir, "data", "kvtierd.sock")
        config = os.path.join(self.dir, "kvtierd.yaml")
        with open(config, "w") as f:
            # The planner pass is pushed out of reach (an hour): placements are then the policy's
            # choices at each store, the same on every run, not a race with a 100 ms timer.
            f.write(f"data_dir: {os.path.join(self.dir, 'data')}\nsocket_path: {self.socket}\n"
                    f"http_address: \"\"\nstore:\n  page_bytes: {page_bytes}\n"
                    f"  hbm_pages: {hbm_pages}\n  dram_pages: {dram_pages}\n"
                    f"  hbm_backend: host-emulated\n  policy: {policy}\n"
                    f"  sink_tokens: {sink_tokens}\n  tokens_per_page: {tokens_per_page}\n"
                    f"  maintain_interval_ms: 3600000\n"
                    f"namespaces:\n  - name: \"*\"\n    sink_slots: {sink_slots}\n")
        self.log = open(os.path.join(self.dir, "kvtierd.log"), "w")
        self.client: kvtier.Client | None = None
        self.proc = subprocess.Popen([binary, f"--config={config}"], stdout=self.log,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        try:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"kvtierd exited {self.proc.returncode}: {self.read_log()}")
                if os.path.exists(self.socket):
                    try:
                        self.client = kvtier.Client.connect(self.socket)
                        break
                    except kvtier.KvtierError:
                        pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"kvtierd did not serve within 30 s: {self.read_log()}")
                time.sleep(0.01)
        except BaseException:
            self.close()
            raise

    def read_log(self) -> str:
        with open(os.path.join(self.dir, "kvtierd.log")) as f:
            return f.read()

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class DaemonPlacement:
    """Placement by a real kvtierd's policy (DAEMON_POLICIES). Per step, in the order of
    tiering/sim/simulator.cc: the new page is stored (Store, with its statistics of this step:
    Put, ReportAttention and the sink classifier in the daemon), the pages read this step (mass
    at least the uniform share 1/alive) are loaded (Get: the accesses behind frequency, LRU and
    recency), the other pages attended report their statistics, and Lookup of every page still
    cached gives its tier. Pages absent from the daemon are dropped and never come back. The page
    bytes are the model's real page size; their contents are not the model's (the decode keeps
    its K/V in its own buffers: the daemon decides placement, it does not serve the tensors)."""

    def __init__(self, name: str, binary: str, c: Config, stream_ids: np.ndarray) -> None:
        policy, sink_slots, sink_tokens = DAEMON_POLICIES[name]
        self.name = name
        hd = c.dim // c.heads
        layout = kvtier.Layout(layers=c.layers, kv_heads=c.kv_heads, head_dim=hd, dtype="bf16",
                               tokens_per_page=c.tokens_per_page,
                               tensor_layout="page_contiguous",
                               num_blocks=c.hbm_pages + c.dram_pages + 2)
        self.page_bytes = layout.page_bytes
        self.d = Kvtierd(binary, self.page_bytes, c.hbm_pages, c.dram_pages, policy, sink_slots,
                         sink_tokens, c.tokens_per_page)
        try:
            assert self.d.client is not None
            self.client: kvtier.Client = self.d.client
            self.client.hello(f"model-quality/{name}", layout)
            self.bufs = kvtier.HostBuffers(layout, pin=False)
            self.client.register_buffers(self.bufs)
            self.keys = self.client.chain_keys(stream_ids, c.tokens_per_page)
        except BaseException:
            self.d.close()
            raise
        self.pages: list[int] = []   # cached (HBM or DRAM), in page order
        self.dram: set[int] = set()
        self.hbm_max = 0
        self.loads = 0
        self.load_misses = 0

    def step(self, p: int, sig: dict[int, dict[str, float]]) -> None:
        def stats(ps: list[int]) -> kvtier.AttentionStats:
            col = {f: [min(1.0, max(0.0, sig[q][f])) for q in ps]
                   for f in ("mass", "breadth", "entropy")}
            return kvtier.AttentionStats(mass=col["mass"], breadth=col["breadth"],
                                         value_norm=[max(0.0, sig[q]["value_norm"]) for q in ps],
                                         mass_entropy=col["entropy"])

        parent = self.keys[p - 1] if p > 0 else None
        self.client.store(self.keys[p:p + 1], [0], parent=parent, first_position=p,
                          stats=stats([p])).wait(check=True)
        attended = [q for q in sig if q != p]
        alive = p + 1
        reads = [q for q in attended if sig[q]["mass"] >= 1.0 / alive]
        if reads:
            # A page this step's store just dropped misses (it stays dropped); the others are
            # Gets, whatever tier serves them.
            got = self.client.load(self.keys[reads], range(1, len(reads) + 1)).wait()
            self.loads += got.ok_pages
            self.load_misses += len(reads) - got.ok_pages
        if attended:
            self.client.report(self.keys[attended], stats(attended))
        cached, dram = [], set()
        for q in self.pages + [p]:
            hit = self.client.lookup(self.keys[q:q + 1])
            if hit.prefix_pages == 1:
                cached.append(q)
                if hit.tiers[0] == kvtier.Tier.DRAM:
                    dram.add(q)
        self.pages, self.dram = cached, dram
        self.hbm_max = max(self.hbm_max, len(cached) - len(dram))

    def close(self) -> dict[str, Any]:
        try:
            st = self.client.stats()
            return {"daemon_stats": st, "hbm_max": self.hbm_max, "page_bytes": self.page_bytes,
                    "loads": self.loads, "load_misses": self.load_misses}
        finally:
            self.bufs.close()
            self.d.close()


def decode_stream(model: Model, c: Config, stream: torch.Tensor, policy: Any,
                  device: torch.device) -> dict[str, Any]:
    """NLL of every token of `stream` (predicting stream[1:]) decoded a page at a time; before
    each page, attention covers policy.pages (HBM and DRAM), the rest is masked out."""
    tpp, hd, L = c.tokens_per_page, c.dim // c.heads, c.layers
    n_pages = len(stream) // tpp
    kbuf = torch.zeros(L, n_pages * tpp, c.kv_heads, hd, device=device, dtype=torch.bfloat16)
    vbuf = torch.zeros_like(kbuf)
    nll = torch.zeros(n_pages * tpp - 1, device=device)
    ar = torch.arange(tpp, device=device)
    max_resident, sink_kept, dram_reads = 0, 0, 0
    amp = device.type == "cuda"
    need_stats = policy.name not in ("full", "window")
    for step in range(n_pages):
        resident = list(policy.pages)
        max_resident = max(max_resident, len(resident))
        sink_kept += 0 in resident
        dram_reads += len(policy.dram)
        pages = resident + [step]
        idx = torch.cat([torch.tensor(pages, device=device)[:, None] * tpp + ar[None, :]]).flatten()
        n_ctx = len(resident) * tpp
        cos, sin = rope_tables(torch.arange(n_ctx + tpp, device=device), hd)
        ids = stream[step * tpp:(step + 1) * tpp].long()[None].to(device)
        mask = torch.ones(tpp, n_ctx + tpp, dtype=torch.bool, device=device)
        mask[:, n_ctx:] = torch.tril(torch.ones(tpp, tpp, dtype=torch.bool, device=device))
        acc = np.zeros((4, len(pages)))  # mass, breadth, value norm (relative), entropy
        with torch.no_grad(), torch.autocast("cuda", torch.bfloat16, enabled=amp):
            x = model.emb(ids)
            for i, blk in enumerate(model.blocks):
                q, k, v = blk.qkv(x)
                kbuf[i, step * tpp:(step + 1) * tpp] = k[0].to(torch.bfloat16)
                vbuf[i, step * tpp:(step + 1) * tpp] = v[0].to(torch.bfloat16)
                kk = apply_rope(kbuf[i, idx], cos, sin)
                vv = vbuf[i, idx]
                qq = apply_rope(q[0], cos[n_ctx:], sin[n_ctx:]).to(torch.bfloat16)
                a = F.scaled_dot_product_attention(qq.transpose(0, 1)[None],
                                                   kk.transpose(0, 1)[None],
                                                   vv.transpose(0, 1)[None], attn_mask=mask,
                                                   enable_gqa=True)
                x = blk.finish(x, a.to(x.dtype))
                if need_stats:
                    s = stats(qq, kk, vv, tpp)
                    vn = s["value_norm"] / max(float(s["value_norm"].mean()), 1e-12)
                    acc += np.stack([s["mass"], s["breadth"], vn, s["mass_entropy"]]) / L
            logits = model.out(model.norm(x))[0].float()
        lo = step * tpp
        hi = min(lo + tpp, len(nll))
        tgt = stream[lo + 1:hi + 1].long().to(device)
        nll[lo:hi] = F.cross_entropy(logits[:hi - lo], tgt, reduction="none")
        sig = {p: {"mass": float(acc[0, j]), "breadth": float(acc[1, j]),
                   "value_norm": float(acc[2, j]), "entropy": float(acc[3, j])}
               for j, p in enumerate(pages)}
        policy.step(step, sig)
    return {"nll": nll.cpu().numpy(), "max_resident": max_resident,
            "sink_kept_steps": sink_kept, "steps": n_pages,
            "dram_pages_attended": dram_reads}


def decode_check(model: Model, c: Config, stream: torch.Tensor, device: torch.device,
                 bos: int | None = None) -> float:
    """Largest |NLL| difference between the page-at-a-time decode with a full cache and one plain
    forward over the first training context of `stream`: the cache, the renumbered positions and
    the masks must reproduce the model's own forward (fp32 on the CPU: ~1e-5; bf16 on CUDA:
    ~1e-2)."""
    n = c.ctx
    stream = with_bos(stream[:n], bos)
    r = decode_stream(model, c, stream[:n], Policy("full", 0), device)
    with torch.no_grad(), torch.autocast("cuda", torch.bfloat16, enabled=device.type == "cuda"):
        logits = model(stream[:n].long()[None].to(device))[0].float()
    ref = F.cross_entropy(logits[:-1], stream[1:n].long().to(device), reduction="none")
    return float(np.abs(r["nll"] - ref.cpu().numpy()).max())


# --- main ---------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", required=True, nargs="+")
    ap.add_argument("--out", required=True)
    ap.add_argument("--tiny", action="store_true", help="CI's configuration (CPU, seconds)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--set", nargs="*", default=[], help="override Config fields: NAME=VALUE")
    ap.add_argument("--kvtierd", default=os.environ.get("KVTIERD"),
                    help="the kvtierd binary of the daemon rows (default $KVTIERD; none: the "
                    "daemon rows are left out)")
    args = ap.parse_args(argv)
    t_start = time.time()
    c = Config(**TINY) if args.tiny else Config()
    for kv in args.set:
        name, val = kv.split("=", 1)
        cur = getattr(c, name)
        setattr(c, name, json.loads(val) if isinstance(cur, (list, bool)) else type(cur)(val))
    os.makedirs(args.out, exist_ok=True)
    device = torch.device(args.device)
    torch.manual_seed(c.seed)
    np.random.seed(c.seed)
    result: dict[str, Any] = {"config": asdict(c), "machine": {
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor(),
        "torch": torch.__version__, "python": sys.version.split()[0],
        "kvtier_cuda_kernel": has_cuda_kernels(), "date_utc": time.strftime(
            "%Y-%m-%d %H:%M", time.gmtime())}, "timings_s": {}}
    path = os.path.join(args.out, "model_quality.json")

    def log(msg: str) -> None:
        print(f"[{time.time() - t_start:6.1f} s] {msg}", flush=True)

    def save() -> None:
        with open(path, "w") as f:
            json.dump(result, f, indent=1)

    text = "".join(open(p, encoding="utf-8").read() for p in args.corpus)
    train_text, held_text = split_text(text)
    t = time.time()
    tok = train_tokenizer(train_text, c.vocab, c.bos)
    bos = tok.token_to_id(BOS) if c.bos else None
    train_np, held_np = encode(tok, train_text), encode(tok, held_text)
    result["data"] = {"corpus_chars": len(text), "train_tokens": int(len(train_np)),
                      "held_tokens": int(len(held_np)), "vocab": tok.get_vocab_size(),
                      "bos_id": bos}
    result["timings_s"]["tokenizer"] = time.time() - t
    log(f"data: {result['data']}")
    # Held-out: the first half for the held-out loss and the sinks, the second for the streams.
    half = len(held_np) // 2
    train_ids = torch.from_numpy(train_np).to(device)
    val_ids = torch.from_numpy(held_np[:half]).to(device)
    stream_src = torch.from_numpy(held_np[half:])

    model = Model(c).to(device)
    result["params"] = sum(p.numel() for p in model.parameters())
    log(f"model: {result['params'] / 1e6:.1f} M parameters")
    result["sinks_init"] = measure_sinks(model, c, val_ids, device, bos)
    result["train"] = train(model, c, train_ids, val_ids, device, log, bos)
    val = result["train"]["val_loss"]
    log(f"trained {result['train']['steps']} steps in {result['train']['seconds']:.0f} s, "
        f"val loss {val[0][1]:.3f} -> {val[-1][1]:.3f}")
    save()
    t = time.time()
    sinks = measure_sinks(model, c, val_ids, device, bos)
    result["sinks"] = sinks
    result["timings_s"]["sinks"] = time.time() - t
    for m in sinks:
        log(f"sink layer {m['layer']}: page0 mass {m['mass_page0']:.3f} vs rest mean "
            f"{m['mass_rest_mean']:.4f} (x{m['mass_ratio']:.1f}), value norm page0/rest "
            f"{m['value_norm_page0_rel']:.2f}, breadth {m['breadth_page0']:.2f}, entropy "
            f"{m['entropy_page0']:.2f}, measured sink {m['measured_sink']}; token 0 mass "
            f"{m['mass_token0']:.3f}, value norm token0/rest {m['value_norm_token0_rel']:.2f}")
    save()

    result["decode_check_max_abs_nll_diff"] = decode_check(model, c, stream_src, device, bos)
    log(f"decode check: max |NLL(page decode, full cache) - NLL(forward)| = "
        f"{result['decode_check_max_abs_nll_diff']:.2e}")
    t = time.time()
    stream_len = c.stream_factor * c.ctx
    n_streams = min(c.streams, len(stream_src) // stream_len)
    # Rows in order of interest, so a deadline cuts the least interesting: the reference, the
    # Python rules at the first budget, kvtierd's policies, then the other budgets.
    rows: list[tuple[str, int | None]] = [("full", None)]
    rows += [(name, c.budgets[0]) for name in PY_POLICIES]
    if args.kvtierd:
        rows += [(name, c.hbm_pages) for name in DAEMON_POLICIES]
    else:
        log("no --kvtierd (nor $KVTIERD): the kvtierd rows are left out")
    rows += [(name, b) for b in c.budgets[1:] for name in PY_POLICIES]
    evals: dict[str, Any] = {}
    result["eval"] = evals
    model.eval()
    done = True
    for name, budget in rows:
        daemon = name in DAEMON_POLICIES
        key = (name if budget is None else f"{name}@{budget}+{c.dram_pages}" if daemon
               else f"{name}@{budget}")
        nlls, info = [], []
        for si in range(n_streams):
            if time.time() - t_start > c.deadline_seconds:
                done = False
                break
            stream = with_bos(stream_src[si * stream_len:(si + 1) * stream_len], bos)
            t_row = time.time()
            policy: Any = (DaemonPlacement(name, args.kvtierd, c, stream.numpy()) if daemon
                           else Policy(name, budget or 0))
            try:
                r = decode_stream(model, c, stream, policy, device)
            finally:
                extra = policy.close()
            i = {k: r[k] for k in ("max_resident", "sink_kept_steps", "steps",
                                   "dram_pages_attended")}
            i.update(extra)
            i["seconds"] = time.time() - t_row
            nlls.append(r["nll"])
            info.append(i)
        if not nlls:
            break
        nll = np.stack(nlls)
        bins = [float(np.exp(nll[:, i:i + c.bin_tokens].mean()))
                for i in range(0, nll.shape[1], c.bin_tokens)]
        steps = sum(x["steps"] for x in info)
        dram_per_step = sum(x["dram_pages_attended"] for x in info) / steps
        page_bytes = info[0].get("page_bytes", 0)
        evals[key] = {"policy": name, "budget_pages": budget, "kvtierd": daemon,
                      "dram_pages": c.dram_pages if daemon else 0,
                      "streams": len(nlls), "ppl": float(np.exp(nll.mean())),
                      "ppl_first_ctx": float(np.exp(nll[:, :c.ctx - 1].mean())),
                      "ppl_after_ctx": float(np.exp(nll[:, c.ctx - 1:].mean())),
                      "ppl_per_stream": [float(np.exp(x.mean())) for x in nll],
                      "dram_pages_per_step": dram_per_step,
                      "load_mb_per_step": dram_per_step * page_bytes / 1e6,
                      "load_us_per_step": dram_per_step * page_bytes / (c.pcie_gbps * 1e9) * 1e6,
                      "ppl_bins": bins, "info": info}
        e = evals[key]
        log(f"eval {key:>20}: ppl {e['ppl']:8.2f}  after ctx {e['ppl_after_ctx']:8.2f}  DRAM "
            f"pages/step {dram_per_step:5.2f} ({e['load_us_per_step']:6.1f} us at "
            f"{c.pcie_gbps:g} GB/s)  ({len(nlls)} streams, "
            f"{sum(x['seconds'] for x in info):.0f} s)")
        save()
    result["eval_complete"] = done
    result["timings_s"]["eval"] = time.time() - t
    result["timings_s"]["total"] = time.time() - t_start
    save()
    log(f"wrote {path}; total {result['timings_s']['total']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
