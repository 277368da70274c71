"""Sinks on a real model (issue 19): train a small Llama-style LM, measure its attention sinks with
kvtier's attention-statistics kernel, and compare KV placement policies on a long stream under a
fixed KV budget.

    python3 model_quality.py --corpus corpus.txt --out DIR            (the GPU run, ~6 min on H200)
    python3 model_quality.py --corpus README.md --out DIR --tiny      (CPU, seconds: CI)

One process does everything, in order, and writes DIR/model_quality.json after each phase:
1. data: the corpus is split by characters (first 95 % train, last 5 % held out, cut at a line
   break); a byte-level BPE tokenizer (`tokenizers`) is trained on the training part only.
2. model: a decoder with RoPE, RMSNorm, SwiGLU and grouped-query attention, trained in bf16
   autocast (CUDA) with AdamW and a fixed seed; train loss every 10 steps, held-out loss every
   `eval_every` steps. Bit-for-bit reproduction holds on the CPU; CUDA's attention backward is not
   deterministic, so GPU reruns match in distribution, not bit for bit.
3. sinks: on held-out sequences of the training length, per layer, kvtier.attention.
   page_attention_stats (the [kernels] CUDA kernel through libkvtier.so on CUDA tensors, its CPU
   twin otherwise) over the last `sink_window` queries: mass on page 0 against the mean of the
   other pages, value norm of page 0 against the others' mean, page 0's breadth and head entropy,
   and whether kvtier's measurement rule (tiering/policy/sink_classifier.cc LooksLikeSink) calls
   page 0 a sink. Done on the untrained model too, as the control.
4. long stream: held-out streams `stream_factor` times the training context are decoded one page
   (16 tokens) at a time. Before each page the KV cache holds at most `budget` pages; dropped pages
   are gone (masked out of attention; no DRAM tier in this version). Positions are assigned
   inside the cache (StreamingLLM's rule: the kept tokens are renumbered 0..n-1 before RoPE), for
   every policy alike. Each step's statistics come from page_attention_stats on the real q/k/v of
   every layer; the policies rank pages from them. See POLICIES below for each rule and the C++ it
   mirrors.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

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
    budgets: list[int] = field(default_factory=lambda: [16, 8])
    deadline_seconds: float = 450.0
    bin_tokens: int = 256


TINY = dict(vocab=384, dim=64, layers=2, heads=4, kv_heads=2, ffn=160, ctx=64, batch=16, steps=60,
            max_train_seconds=60.0, lr=3e-3, warmup=5, eval_every=20, val_batches=2,
            sink_sequences=2, sink_window=16, stream_factor=4, streams=1, budgets=[2, 16],
            deadline_seconds=120.0, bin_tokens=64)


# --- data ---------------------------------------------------------------------------------------

def split_text(text: str, held_fraction: float = 0.05) -> tuple[str, str]:
    cut = text.rfind("\n", 0, int(len(text) * (1 - held_fraction)))
    cut = cut if cut > 0 else int(len(text) * (1 - held_fraction))
    return text[:cut], text[cut:]


def train_tokenizer(text: str, vocab: int) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, show_progress=False,
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

def batch_from(data: torch.Tensor, starts: torch.Tensor, ctx: int) -> tuple[torch.Tensor, ...]:
    idx = starts[:, None] + torch.arange(ctx + 1, device=starts.device)[None, :]
    seq = data[idx].long()
    return seq[:, :-1], seq[:, 1:]


def train(model: Model, c: Config, train_ids: torch.Tensor, val_ids: torch.Tensor,
          device: torch.device, log: Callable[[str], None]) -> dict[str, Any]:
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
                x, y = batch_from(val_ids, s.to(device), c.ctx)
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
        x, y = batch_from(train_ids, starts.to(device), c.ctx)
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


def measure_sinks(model: Model, c: Config, val_ids: torch.Tensor,
                  device: torch.device) -> list[dict[str, float]]:
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
        for key, val in vals.items():
            acc[i].setdefault(key, []).append(val)

    model.eval()
    with torch.no_grad(), torch.autocast("cuda", torch.bfloat16, enabled=device.type == "cuda"):
        for s0 in starts.tolist():
            model(val_ids[s0:s0 + c.ctx].long()[None].to(device), capture=capture)
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
# Drop-only: one tier (HBM) of `budget` pages; a page evicted is gone. Every policy sees the same
# per-step signals, aggregated over layers: mass, breadth and head entropy averaged, value norm
# relative to each layer's mean over the pages in that step, averaged. One step = one page of
# new tokens (tiering/sim/simulator.cc's attention steps: step_ms 25, attention half-life 250 ms).
#
# POLICIES
# full       no eviction (the reference).
# window     the `budget` newest pages.
# streaming  tiering/policy/classic_policies.cc StreamingLlmPolicy::Rank: pages covering the first
#            sink_tokens (4) tokens above all, the rest by insert time (newest kept).
# h2o        classic_policies.cc H2oPolicy::Rank: the `recent_pages` newest above all, the rest by
#            accumulated raw mass (H2O's heavy hitters); recent_pages = budget / 2 (H2O's split).
# kvtier     tiering/policy/kvtier_policy.cc Rank (decode branch): sinks at kSinkRank, others
#            w_f*F + w_u*U with F = log2(f) + t_last/H (FrequencyTerm) and
#            U = log2(max(1e-3, mass/0.01 * (0.5 + 0.5*breadth) * min(1, value_norm)))
#            (UtilityTerm; before any report u = tokens/16 = 1). The stats are the store's EWMAs
#            (tiered_store.cc ReportAttention, alpha 0.2, first report seeds). f is the store's
#            decayed access count (tiered_store.cc: f * 2^(-dt/H) + 1 per access), an access being
#            a read of a page with mass >= 1/alive pages (simulator.cc). Classes: position rule
#            (page 0, sink_tokens 4) and the measurement rule after 3 reports
#            (sink_classifier.cc). One reserved sink slot carved out of the budget (simulator.h
#            sink_slots = 1): the slot holds the first sink; other sinks still rank above all.
# kvtier_nosink  kvtier's ranking with no sink classes (the ablation: what the sink slot buys).

STEP_MS, HALF_LIFE_MS, EWMA = 25.0, 250.0, 0.2


class Policy:
    def __init__(self, name: str, budget: int) -> None:
        self.name, self.budget = name, budget
        self.pages: list[int] = []          # resident, in insert order
        self.acc: dict[int, float] = {}     # h2o: accumulated mass
        self.f: dict[int, float] = {}       # kvtier: decayed access count
        self.last_ms: dict[int, float] = {}
        self.ewma: dict[int, dict[str, float]] = {}
        self.reports: dict[int, int] = {}
        self.sink: set[int] = set()
        self.alive = 0

    def rank(self, p: int) -> float:
        if self.name == "window":
            return float(p)
        if self.name == "streaming":
            return (1e30 if p * 16 < 4 else 0.0) + p
        if self.name == "h2o":
            recent = p in self.pages[-max(1, self.budget // 2):]
            return (1e12 if recent else 0.0) + self.acc.get(p, 0.0) + p * 1e-20
        f = max(self.f[p], 1e-9)
        freq = math.log2(f) + self.last_ms[p] / HALF_LIFE_MS
        e = self.ewma.get(p)
        u = 1.0 if e is None else (e["mass"] / 0.01) * (0.5 + 0.5 * e["breadth"]) * min(
            1.0, e["value_norm"])
        base = 1e12 if p in self.sink else 0.0
        return base + freq + math.log2(max(u, 1e-3))

    def put(self, p: int, now_ms: float) -> None:
        self.alive += 1
        self.pages.append(p)
        self.f[p], self.last_ms[p] = 1.0, now_ms
        if self.name == "kvtier" and p * 16 < 4:
            self.sink.add(p)  # SinkClassifier::OnPut position rule
        if self.name == "full" or len(self.pages) <= self.budget:
            return
        # The store makes room before it inserts (tiered_store.cc AcquireSemanticSlot): the
        # victims come from the pages already resident, never the page being put. kvtier's
        # reserved slot holds the first sink outside the competition (Evictable: !in_sink_slot).
        slot = min(self.sink) if self.name == "kvtier" and self.sink else None
        cands = [q for q in self.pages if q != slot and q != p]
        while len(self.pages) > self.budget:
            victim = min(cands, key=self.rank)
            cands.remove(victim)
            self.pages.remove(victim)

    def report(self, sig: dict[int, dict[str, float]], now_ms: float) -> None:
        for p in self.pages:
            s = sig.get(p)
            if s is None:
                continue
            self.acc[p] = self.acc.get(p, 0.0) + s["mass"]
            if s["mass"] >= 1.0 / max(self.alive, 1):  # a read: the store's decayed count
                dt = now_ms - self.last_ms[p]
                self.f[p] = self.f[p] * 2.0 ** (-dt / HALF_LIFE_MS) + 1.0
                self.last_ms[p] = now_ms
            e = self.ewma.get(p)
            if e is None:
                self.ewma[p] = dict(s)
            else:
                for k in e:
                    e[k] += EWMA * (s[k] - e[k])
            self.reports[p] = self.reports.get(p, 0) + 1
            if self.name == "kvtier" and p not in self.sink and self.reports[p] >= 3:
                e = self.ewma[p]
                if (e["breadth"] >= MIN_BREADTH and e["entropy"] <= MAX_ENTROPY
                        and e["value_norm"] <= MAX_VALUE_NORM):
                    self.sink.add(p)


def decode_stream(model: Model, c: Config, stream: torch.Tensor, policy: Policy,
                  device: torch.device) -> dict[str, Any]:
    """NLL of every token of `stream` (predicting stream[1:]) decoded a page at a time."""
    tpp, hd, L = c.tokens_per_page, c.dim // c.heads, c.layers
    n_pages = len(stream) // tpp
    kbuf = torch.zeros(L, n_pages * tpp, c.kv_heads, hd, device=device, dtype=torch.bfloat16)
    vbuf = torch.zeros_like(kbuf)
    nll = torch.zeros(n_pages * tpp - 1, device=device)
    ar = torch.arange(tpp, device=device)
    max_resident, sink_kept = 0, 0
    amp = device.type == "cuda"
    for step in range(n_pages):
        now_ms = 1 + step * STEP_MS
        resident = list(policy.pages)
        max_resident = max(max_resident, len(resident))
        sink_kept += 0 in resident
        pages = resident + [step]
        idx = torch.cat([torch.tensor(pages, device=device)[:, None] * tpp + ar[None, :]]).flatten()
        n_ctx = len(resident) * tpp
        cos, sin = rope_tables(torch.arange(n_ctx + tpp, device=device), hd)
        ids = stream[step * tpp:(step + 1) * tpp].long()[None].to(device)
        mask = torch.ones(tpp, n_ctx + tpp, dtype=torch.bool, device=device)
        mask[:, n_ctx:] = torch.tril(torch.ones(tpp, tpp, dtype=torch.bool, device=device))
        sig: dict[int, dict[str, float]] = {p: {"mass": 0.0, "breadth": 0.0, "value_norm": 0.0,
                                                 "entropy": 0.0} for p in pages}
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
                if policy.name != "full" and policy.name != "window":
                    s = stats(qq, kk, vv, tpp)
                    vn = s["value_norm"] / max(float(s["value_norm"].mean()), 1e-12)
                    for j, p in enumerate(pages):
                        g = sig[p]
                        g["mass"] += float(s["mass"][j]) / L
                        g["breadth"] += float(s["breadth"][j]) / L
                        g["value_norm"] += float(vn[j]) / L
                        g["entropy"] += float(s["mass_entropy"][j]) / L
            logits = model.out(model.norm(x))[0].float()
        lo = step * tpp
        hi = min(lo + tpp, len(nll))
        tgt = stream[lo + 1:hi + 1].long().to(device)
        nll[lo:hi] = F.cross_entropy(logits[:hi - lo], tgt, reduction="none")
        policy.put(step, now_ms)
        policy.report(sig, now_ms)
    return {"nll": nll.cpu().numpy(), "max_resident": max_resident,
            "sink_kept_steps": sink_kept, "steps": n_pages}


def decode_check(model: Model, c: Config, stream: torch.Tensor, device: torch.device) -> float:
    """Largest |NLL| difference between the page-at-a-time decode with a full cache and one plain
    forward over the first training context of `stream`: the cache, the renumbered positions and
    the masks must reproduce the model's own forward (fp32 on the CPU: ~1e-5; bf16 on CUDA:
    ~1e-2)."""
    n = c.ctx
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
    args = ap.parse_args(argv)
    t_start = time.time()
    c = Config(**TINY) if args.tiny else Config()
    for kv in args.set:
        name, val = kv.split("=", 1)
        cur = getattr(c, name)
        setattr(c, name, json.loads(val) if isinstance(cur, list) else type(cur)(val))
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
    tok = train_tokenizer(train_text, c.vocab)
    train_np, held_np = encode(tok, train_text), encode(tok, held_text)
    result["data"] = {"corpus_chars": len(text), "train_tokens": int(len(train_np)),
                      "held_tokens": int(len(held_np)), "vocab": tok.get_vocab_size()}
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
    result["sinks_init"] = measure_sinks(model, c, val_ids, device)
    result["train"] = train(model, c, train_ids, val_ids, device, log)
    val = result["train"]["val_loss"]
    log(f"trained {result['train']['steps']} steps in {result['train']['seconds']:.0f} s, "
        f"val loss {val[0][1]:.3f} -> {val[-1][1]:.3f}")
    save()
    t = time.time()
    sinks = measure_sinks(model, c, val_ids, device)
    result["sinks"] = sinks
    result["timings_s"]["sinks"] = time.time() - t
    for m in sinks:
        log(f"sink layer {m['layer']}: page0 mass {m['mass_page0']:.3f} vs rest mean "
            f"{m['mass_rest_mean']:.4f} (x{m['mass_ratio']:.1f}), value norm page0/rest "
            f"{m['value_norm_page0_rel']:.2f}, breadth {m['breadth_page0']:.2f}, entropy "
            f"{m['entropy_page0']:.2f}, measured sink {m['measured_sink']}")
    save()

    result["decode_check_max_abs_nll_diff"] = decode_check(model, c, stream_src, device)
    log(f"decode check: max |NLL(page decode, full cache) - NLL(forward)| = "
        f"{result['decode_check_max_abs_nll_diff']:.2e}")
    t = time.time()
    stream_len = c.stream_factor * c.ctx
    n_streams = min(c.streams, len(stream_src) // stream_len)
    policies = ["full", "window", "streaming", "h2o", "kvtier", "kvtier_nosink"]
    evals: dict[str, Any] = {}
    result["eval"] = evals
    model.eval()
    done = True
    for budget in c.budgets:
        for name in policies:
            if name == "full" and budget != c.budgets[0]:
                continue
            key = name if name == "full" else f"{name}@{budget}"
            nlls, info = [], []
            for si in range(n_streams):
                if time.time() - t_start > c.deadline_seconds:
                    done = False
                    break
                stream = stream_src[si * stream_len:(si + 1) * stream_len]
                r = decode_stream(model, c, stream, Policy(name, budget), device)
                nlls.append(r["nll"])
                info.append({k: r[k] for k in ("max_resident", "sink_kept_steps", "steps")})
            if not nlls:
                break
            nll = np.stack(nlls)
            bins = [float(np.exp(nll[:, i:i + c.bin_tokens].mean()))
                    for i in range(0, nll.shape[1], c.bin_tokens)]
            evals[key] = {"policy": name, "budget_pages": None if name == "full" else budget,
                          "streams": len(nlls), "ppl": float(np.exp(nll.mean())),
                          "ppl_first_ctx": float(np.exp(nll[:, :c.ctx - 1].mean())),
                          "ppl_after_ctx": float(np.exp(nll[:, c.ctx - 1:].mean())),
                          "ppl_per_stream": [float(np.exp(x.mean())) for x in nll],
                          "ppl_bins": bins, "info": info}
            log(f"eval {key:>18}: ppl {evals[key]['ppl']:8.2f}  after ctx "
                f"{evals[key]['ppl_after_ctx']:8.2f}  ({len(nlls)} streams)")
            save()
    result["eval_complete"] = done
    result["timings_s"]["eval"] = time.time() - t
    result["timings_s"]["total"] = time.time() - t_start
    save()
    log(f"wrote {path}; total {result['timings_s']['total']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
