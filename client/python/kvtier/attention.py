"""Per-page attention statistics with kvtier's own kernels (kernels/attention_stats.h).

`page_attention_stats(q, k, v, tokens_per_page)` runs the CUDA kernel of libkvtier.so on CUDA
tensors (ordered on PyTorch's current stream), and the kernel's CPU twin on anything else. The
inputs are one sequence's last `window` queries and its keys and values:

    q: [window, q_heads, head_dim]     k, v: [tokens, kv_heads, head_dim]

bf16 or fp16 (other float dtypes are converted to bf16 first: the statistics steer placement,
they need no more precision than the kernel's). The result has one entry per page of
`tokens_per_page` tokens: the received attention mass, its breadth over (query, head) pairs, the
mean value-vector norm and the entropy of the mass over query heads (DESIGN.md §4).
"""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np

from . import _lib
from ._errors import error_for

_DTYPES = {"bfloat16": 0, "float16": 1}
_FIELDS = np.dtype([(name, np.float32) for name, _ in _lib.PageAttention._fields_])


def has_cuda_kernels() -> bool:
    """Whether libkvtier.so carries the CUDA kernel (built with CUDA)."""
    return bool(_lib.lib().kvtier_has_cuda_kernels())


def page_attention_stats(q: Any, k: Any, v: Any, tokens_per_page: int,
                         breadth_threshold: float = 0.01) -> np.ndarray:
    """Statistics per page as a structured array with fields mass, breadth, value_norm and
    mass_entropy (float32). q, k, v are torch tensors (see the module docstring for shapes)."""
    import torch

    if q.dim() != 3 or k.dim() != 3 or v.dim() != 3 or k.shape != v.shape:
        raise ValueError(f"page_attention_stats: q {tuple(q.shape)} must be [window, q_heads, "
                         f"head_dim], k {tuple(k.shape)} and v {tuple(v.shape)} "
                         "[tokens, kv_heads, head_dim]")
    dtype = q.dtype if q.dtype in (torch.bfloat16, torch.float16) else torch.bfloat16
    on_cuda = q.is_cuda and k.is_cuda and v.is_cuda
    lib = _lib.lib()
    if on_cuda and not lib.kvtier_has_cuda_kernels():
        q, k, v = q.cpu(), k.cpu(), v.cpu()
        on_cuda = False
    q, k, v = (t.detach().to(dtype).contiguous() for t in (q, k, v))
    shape = _lib.AttentionShape(k.shape[0], q.shape[1], k.shape[1], k.shape[2], q.shape[0], tokens_per_page,
                   _DTYPES[str(dtype).removeprefix("torch.")])
    pages = (shape.tokens + tokens_per_page - 1) // tokens_per_page if tokens_per_page > 0 else 0
    out = (_lib.PageAttention * max(pages, 1))()
    if on_cuda:
        stream = torch.cuda.current_stream(q.device).cuda_stream
        with torch.cuda.device(q.device):
            code = lib.kvtier_attention_stats_cuda(
                ctypes.byref(shape), breadth_threshold, q.data_ptr(), k.data_ptr(), v.data_ptr(),
                out, pages, ctypes.c_void_p(stream))
    else:
        code = lib.kvtier_attention_stats_cpu(
            ctypes.byref(shape), breadth_threshold, q.data_ptr(), k.data_ptr(), v.data_ptr(),
            out, pages)
    if code != 0:
        raise error_for(code, _lib.thread_error(), "page_attention_stats")
    return np.frombuffer(out, dtype=_FIELDS, count=pages).copy()
