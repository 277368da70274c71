"""Prefix reuse through kvtierd for Hugging Face transformers models (transformers 5.x).

Before a prefill, PrefixCache looks up the longest cached prefix of the prompt's pages, has the
daemon load it into pinned host staging buffers, moves it into a DynamicCache on the model's
device and prefills only the suffix. After the prefill it stores the prompt's new full pages,
with the first page of a sequence hinted as an attention sink and per-page attention statistics
from kvtier's own kernel (kvtier.attention: the CUDA kernel on a GPU, its CPU twin elsewhere),
fed with the prefill's last `window` queries. Those are kept by capture_queries(), which
PrefixCache.prefill installs: a transformers AttentionInterface entry that wraps the
implementation the model was loaded with (sdpa, eager, ...) and changes none of its results.

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
from typing import Any, Optional

import numpy as np

from .attention import page_attention_stats
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
        attention_window: int = 32,
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
        # Queries of each prefill's end that the statistics kernel scores the pages with; 0 turns
        # the capture off (pages then carry value norms only).
        self.attention_window = attention_window
        self.last_stats: Optional[AttentionStats] = None  # what the last save() stored

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

    def save(self, cache: Any, input_ids: Any, from_page: int = 0, model: Any = None,
             keys: Optional[np.ndarray] = None) -> int:
        """Stores the prompt's full pages [from_page, ...) from `cache`; returns the pages
        stored. With `model` whose last forward pass ran under capture_queries(), each page
        carries the attention-statistics kernel's figures; otherwise its value norms only."""
        import torch

        keys = self.keys_of(input_ids) if keys is None else keys
        pages = min(len(keys), self.layout.num_blocks)
        if pages <= from_page:
            return 0
        tpp = self.tokens_per_page
        begin, end = from_page * tpp, pages * tpp
        measured = _kernel_stats(model, cache, tpp) if model is not None else None
        # Without the kernel's figures, the value norms are taken here, from the copies below.
        norms = torch.zeros(pages - from_page, dtype=torch.float64) if measured is None else None
        for layer, host in enumerate(self.host):
            entry = cache.layers[layer]
            for which, tensor in ((0, entry.keys), (1, entry.values)):
                part = tensor[0, :, begin:end, :].transpose(0, 1)  # [n, H, D]
                part = part.reshape(pages - from_page, tpp, self.layout.kv_heads,
                                    self.layout.head_dim)
                host[which, from_page:pages].copy_(part)  # synchronous: the daemon reads next
                if which == 1 and norms is not None:
                    norms += part.float().norm(dim=-1).mean(dim=(1, 2)).double().cpu()
        if measured is not None:
            sl = slice(from_page, pages)
            stats = AttentionStats(**{field: measured[field][sl].tolist()
                                      for field in measured.dtype.names})
        else:
            assert norms is not None
            stats = AttentionStats(value_norm=(norms / len(self.host)).tolist())
        self.last_stats = stats
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
        """Restores the cached prefix, prefills the rest, stores the new full pages (with the
        kernel's attention statistics when `attention_window` > 0: see capture_queries)."""
        device = input_ids.device
        if store and self.attention_window > 0:
            capture_queries(model, self.attention_window)
        restored = self.restore(input_ids, device=device if device.type != "cpu" else None)
        out = model(input_ids[:, restored.cached_tokens:], use_cache=True,
                    **cache_kwargs(model, restored.cache), **forward_kwargs)
        stored = 0
        if store:
            stored = self.save(output_cache(out), input_ids, restored.cached_pages, model=model,
                               keys=restored.keys)
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


_CAPTURE = "kvtier_capture"


def capture_queries(model: Any, window: int = 32) -> None:
    """Makes every attention layer of `model` keep the last `window` queries (after RoPE) of each
    forward pass, for _kernel_stats. Idempotent. The model's attention implementation becomes
    "kvtier_capture+<the one it had>", registered with transformers' AttentionInterface (and
    its mask function with AttentionMaskInterface): it calls the original with the same arguments,
    so logits and caches are unchanged."""
    import sys

    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    current = model.config._attn_implementation or "eager"
    inner = current.split("+", 1)[1] if current.startswith(_CAPTURE + "+") else current
    for module in model.modules():
        if hasattr(module, "layer_idx") and hasattr(module, "num_key_value_groups"):
            module._kvtier_capture = window
            # The wrapped implementation, found once here rather than on every forward: eager is
            # the modeling file's own function, the others are registered by name.
            module._kvtier_inner = (sys.modules[type(module).__module__].eager_attention_forward
                                    if inner == "eager" else ALL_ATTENTION_FUNCTIONS[inner])
    if current.startswith(_CAPTURE + "+"):
        return
    name = f"{_CAPTURE}+{inner}"
    AttentionInterface.register(name, _capturing_attention)
    mask = AttentionMaskInterface._global_mapping.get(inner)
    if mask is not None:
        AttentionMaskInterface.register(name, mask)
    model.set_attn_implementation(name)


def _capturing_attention(module: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
    if module._kvtier_capture:
        module._kvtier_queries = query[0, :, -module._kvtier_capture:, :].detach()  # a view
    return module._kvtier_inner(module, query, *args, **kwargs)


def _kernel_stats(model: Any, cache: Any, tokens_per_page: int) -> Optional[np.ndarray]:
    """Per page of the whole cached sequence, the attention-statistics kernel's figures averaged
    over layers (kvtier.attention), from the queries capture_queries kept of the last forward
    pass; None when none were kept."""
    layers = [m for m in model.modules()
              if getattr(m, "_kvtier_queries", None) is not None and hasattr(m, "layer_idx")]
    if not layers:
        return None
    total: Optional[np.ndarray] = None
    for module in layers:
        entry = cache.layers[module.layer_idx]
        q = module._kvtier_queries.transpose(0, 1)  # [w, q_heads, d]
        k, v = entry.keys[0].transpose(0, 1), entry.values[0].transpose(0, 1)  # [T, kv_heads, d]
        stats = page_attention_stats(q, k, v, tokens_per_page)
        if total is None:
            total = stats.copy()
        else:
            for field in stats.dtype.names:
                total[field] += stats[field]
        module._kvtier_queries = None  # used once: a later save must not score stale queries
    assert total is not None
    for field in total.dtype.names:
        total[field] /= len(layers)
    return total


def _cpu(input_ids: Any) -> Any:
    return input_ids.detach().cpu().numpy() if hasattr(input_ids, "detach") else input_ids
