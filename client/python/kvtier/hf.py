"""Prefix reuse through kvtierd for Hugging Face transformers models (transformers 5.x).

Before a prefill, PrefixCache looks up the longest cached prefix of the prompt's pages, has the
daemon load it into pinned host staging buffers, moves it into a DynamicCache on the model's
device and prefills only the suffix. After the prefill it stores the prompt's new full pages,
with the first page of a sequence hinted as an attention sink and per-page attention statistics
(value norms always; received attention mass and breadth when the forward pass returned
attentions).

    cache = PrefixCache(client, model.config, namespace="llama-3.2-1b/tenant-a", max_tokens=8192)
    result = cache.prefill(model, input_ids)     # result.logits, result.cache, result.cached_tokens

The KV bytes that come back are the bytes that were stored, so a restored prefix gives exactly
the logits of a prefill split at the same point; a *full* prefill may differ in the last bits
where the attention and matmul kernels reduce in another order for another query count.

Staging: page i of a prompt lives in host block i (identity mapping), so one PrefixCache serves
one sequence at a time; use one per worker thread.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Optional, Sequence

import numpy as np

from .buffers import HostBuffers
from .client import AttentionStats, Client, Op, PageClass, Tier
from .layout import Layout, dtype_name


def layout_for(config: Any, max_tokens: int, tokens_per_page: int = 16,
               dtype: Any = None) -> Layout:
    """The kvtier layout of a decoder's KV cache (vLLM per-layer tensors), sized for max_tokens."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    if dtype is None:
        dtype = getattr(text, "dtype", None) or getattr(text, "torch_dtype", None) or "fp32"
    return Layout(
        layers=text.num_hidden_layers,
        kv_heads=kv_heads,
        head_dim=head_dim,
        dtype=dtype_name(dtype),
        tokens_per_page=tokens_per_page,
        tensor_layout="vllm",
        num_blocks=math.ceil(max_tokens / tokens_per_page),
    )


@dataclasses.dataclass
class Restored:
    """What restore() found: a DynamicCache holding `cached_tokens` tokens of the prompt."""

    cache: Any
    cached_tokens: int
    cached_pages: int
    tiers: list[Tier]
    keys: np.ndarray  # keys of every full page of the prompt
    seconds_lookup: float = 0.0
    seconds_load: float = 0.0  # the daemon's copy into host staging
    seconds_to_device: float = 0.0


@dataclasses.dataclass
class PrefillResult:
    logits: Any
    cache: Any
    cached_tokens: int
    stored_pages: int
    tiers: list[Tier]
    outputs: Any = None


class PrefixCache:
    """Restores and stores a transformers model's KV cache through one kvtierd connection.

    Owns the client's hello and its host staging buffers (pinned when CUDA is present).
    """

    def __init__(
        self,
        client: Client,
        config: Any,
        namespace: str,
        max_tokens: int,
        tokens_per_page: int = 16,
        dtype: Any = None,
        pin: Optional[bool] = None,
    ) -> None:
        self.client = client
        self.config = config
        self.layout = layout_for(config, max_tokens, tokens_per_page, dtype)
        self.info = client.hello(namespace, self.layout, client_name="kvtier.hf")
        self.buffers = HostBuffers(self.layout, pin=pin)
        client.register_buffers(self.buffers)
        self.host = self.buffers.torch()  # per layer: [2, num_blocks, tokens_per_page, H, D]
        # Several ops in flight let the daemon's io threads copy in parallel.
        self.batch = max(1, min(self.info.max_batch_pages, 256))
        self.last_error = ""  # the first failed page of the last restore, if any
        self.inflight = max(1, self.info.max_inflight_ops // 2)

    @property
    def tokens_per_page(self) -> int:
        return self.layout.tokens_per_page

    def keys_of(self, input_ids: Any) -> np.ndarray:
        tokens = np.asarray(_cpu(input_ids)).reshape(-1)
        return self.client.chain_keys(tokens)

    # ---- restore ----

    def lookup(self, keys: np.ndarray) -> tuple[int, list[Tier]]:
        """Longest cached prefix of keys, asked in batches the daemon accepts."""
        pages, tiers = 0, []
        for begin in range(0, len(keys), self.batch):
            hit = self.client.lookup(keys[begin:begin + self.batch])
            pages += hit.prefix_pages
            tiers += hit.tiers
            if hit.prefix_pages < min(self.batch, len(keys) - begin):
                break
        return pages, tiers

    def _run(self, submit: Any, pages: int) -> int:
        """Submits [0, pages) in batches, at most `inflight` at once; returns the pages that
        succeeded before the first failure (whose message is kept in `last_error`)."""
        ops: list[tuple[int, Op]] = []
        ok = pages

        def settle(begin: int, op: Op) -> int:
            result = op.wait()
            if result.ok:
                return pages
            if not self.last_error:
                self.last_error = result.first_error
            return begin + result.ok_prefix

        self.last_error = ""
        for begin in range(0, pages, self.batch):
            ops.append((begin, submit(begin, min(begin + self.batch, pages))))
            if len(ops) >= self.inflight:
                ok = min(ok, settle(*ops.pop(0)))
        for begin, op in ops:
            ok = min(ok, settle(begin, op))
        return ok

    def restore(self, input_ids: Any, device: Any = None, max_pages: Optional[int] = None,
                keys: Optional[np.ndarray] = None) -> Restored:
        """A DynamicCache with the longest cached prefix of the prompt, leaving at least one token
        to prefill (the model needs a query to produce the next token's logits)."""
        import torch
        from transformers import DynamicCache

        tokens = int(np.asarray(_cpu(input_ids)).reshape(-1).shape[0])
        keys = self.keys_of(input_ids) if keys is None else keys
        usable = min(len(keys), (tokens - 1) // self.tokens_per_page, self.layout.num_blocks)
        if max_pages is not None:
            usable = min(usable, max_pages)
        t0 = time.perf_counter()
        pages, tiers = self.lookup(keys[:usable])
        t1 = time.perf_counter()
        if pages:
            pages = self._run(
                lambda b, e: self.client.load(keys[b:e], range(b, e)), pages)
        t2 = time.perf_counter()
        cache = DynamicCache(config=self.config)
        if pages:
            n = pages * self.tokens_per_page
            shape = (1, n, self.layout.kv_heads, self.layout.head_dim)
            for layer, host in enumerate(self.host):
                # host[which, :pages] is contiguous: one copy each, then the heads-first layout
                # of the cache on the device.
                k, v = (host[which, :pages].to(device, non_blocking=True) if device is not None
                        else host[which, :pages].clone() for which in (0, 1))
                cache.update(k.view(shape).transpose(1, 2).contiguous(),
                             v.view(shape).transpose(1, 2).contiguous(), layer)
            if device is not None and torch.device(device).type == "cuda":
                torch.cuda.current_stream(device).synchronize()
        t3 = time.perf_counter()
        return Restored(cache, pages * self.tokens_per_page, pages, tiers[:pages], keys,
                        t1 - t0, t2 - t1, t3 - t2)

    # ---- store ----

    def save(self, cache: Any, input_ids: Any, from_page: int = 0,
             attentions: Optional[Sequence[Any]] = None,
             keys: Optional[np.ndarray] = None) -> int:
        """Stores the prompt's full pages [from_page, ...) from `cache`; returns the pages
        stored. `attentions` (per layer [1, heads, q, kv], from output_attentions=True) adds the
        received attention mass and breadth to each page's statistics."""
        import torch

        keys = self.keys_of(input_ids) if keys is None else keys
        pages = min(len(keys), self.layout.num_blocks)
        if pages <= from_page:
            return 0
        tpp = self.tokens_per_page
        begin, end = from_page * tpp, pages * tpp
        norms = torch.zeros(pages - from_page, dtype=torch.float64)
        for layer, host in enumerate(self.host):
            entry = cache.layers[layer]
            for which, tensor in ((0, entry.keys), (1, entry.values)):
                part = tensor[0, :, begin:end, :].transpose(0, 1)  # [n, H, D]
                part = part.reshape(pages - from_page, tpp, self.layout.kv_heads,
                                    self.layout.head_dim)
                host[which, from_page:pages].copy_(part)  # synchronous: the daemon reads next
                if which == 1:
                    norms += part.float().norm(dim=-1).mean(dim=(1, 2)).double().cpu()
        stats = AttentionStats(value_norm=(norms / len(self.host)).tolist())
        if attentions:
            mass, breadth = _received_attention(attentions, begin, end, tpp)
            stats.mass, stats.breadth = mass.tolist(), breadth.tolist()
        hints = [int(PageClass.SINK if p == 0 else PageClass.UNKNOWN)
                 for p in range(from_page, pages)]

        def submit(b: int, e: int) -> Op:
            sl = slice(b - from_page, e - from_page)
            return self.client.store(
                keys[b:e], range(b, e),
                parent=keys[b - 1] if b > 0 else None,
                first_position=b,
                class_hints=hints[sl],
                stats=AttentionStats(**{k: (v[sl] if v is not None else None)
                                        for k, v in dataclasses.asdict(stats).items()}),
            )

        done = 0
        ops = []
        for b in range(from_page, pages, self.batch):
            ops.append(submit(b, min(b + self.batch, pages)))
            if len(ops) >= self.inflight:
                done += ops.pop(0).wait(check=True).ok_pages
        for op in ops:
            done += op.wait(check=True).ok_pages
        return done

    # ---- both ----

    def prefill(self, model: Any, input_ids: Any, store: bool = True,
                **forward_kwargs: Any) -> PrefillResult:
        """Restores the cached prefix, prefills the rest, stores the new full pages."""
        device = input_ids.device
        restored = self.restore(input_ids, device=device if device.type != "cpu" else None)
        out = model(input_ids[:, restored.cached_tokens:], use_cache=True,
                    **cache_kwargs(model, restored.cache), **forward_kwargs)
        stored = 0
        if store:
            stored = self.save(output_cache(out), input_ids, restored.cached_pages,
                               attentions=getattr(out, "attentions", None), keys=restored.keys)
        return PrefillResult(out.logits, output_cache(out), restored.cached_tokens, stored,
                             restored.tiers, out)


def cache_kwargs(model: Any, cache: Any) -> dict[str, Any]:
    """The forward() keyword for a cache: `cache` from transformers 5.2x on, `past_key_values`
    before (5.17, and still accepted but deprecated later)."""
    import inspect

    params = inspect.signature(model.forward).parameters
    return {"cache": cache} if "cache" in params else {"past_key_values": cache}


def output_cache(outputs: Any) -> Any:
    """The cache a forward() returned, under either name."""
    cache = getattr(outputs, "cache", None)
    return cache if cache is not None else getattr(outputs, "past_key_values", None)


def _received_attention(attentions: Sequence[Any], begin: int, end: int,
                        tokens_per_page: int) -> tuple[Any, Any]:
    """Per page of keys [begin, end): the mean attention mass its tokens receive from the
    forward pass's queries (over layers and heads), and the share of queries that give it more
    than a uniform share."""
    import torch

    masses, breadths = [], []
    for att in attentions:  # [1, heads, q, kv]
        a = att[0, :, :, begin:end].float()
        q, kv = a.shape[1], att.shape[-1]
        a = a.reshape(a.shape[0], q, -1, tokens_per_page).sum(-1)  # [heads, q, pages]
        masses.append(a.mean(dim=(0, 1)))
        breadths.append((a > tokens_per_page / kv).float().mean(dim=(0, 1)))
    return torch.stack(masses).mean(0).cpu(), torch.stack(breadths).mean(0).cpu()


def _cpu(input_ids: Any) -> Any:
    return input_ids.detach().cpu().numpy() if hasattr(input_ids, "detach") else input_ids
