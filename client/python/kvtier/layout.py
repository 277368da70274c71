"""Layout: how one KV page maps onto the worker's KV buffers (tiering/layout.h, in Python).

A page is one block of `tokens_per_page` tokens across every layer. Buffer shapes, per layout:
  vllm          one buffer per layer, [2, num_blocks, tokens_per_page, kv_heads, head_dim]
  block_major   one buffer per layer, [num_blocks, 2, tokens_per_page, kv_heads, head_dim]
  page_contiguous  one buffer, [num_blocks, layers, 2, tokens_per_page, kv_heads, head_dim]
  sglang_page_first  one buffer, [2, num_blocks, tokens_per_page, layers, kv_heads, head_dim]
                   (SGLang's host pool, page_first): a page is its K piece and its V piece, at two
                   offsets of the one buffer
  sglang_page_first_direct  one buffer, [2, num_blocks, layers, tokens_per_page, kv_heads,
                   head_dim] (SGLang's page_first_direct): the same two pieces, another order
"""

from __future__ import annotations

import dataclasses
from typing import Any

from . import _lib

# kvtier::DType and kvtier::TensorLayout numbering.
DTYPES = {"bf16": (0, 2), "fp16": (1, 2), "fp32": (2, 4), "fp8": (3, 1)}
TENSOR_LAYOUTS = {"vllm": 0, "block_major": 1, "page_contiguous": 2, "sglang_page_first": 3,
                  "sglang_page_first_direct": 4}
# Layouts with one buffer for every layer (the others have one buffer per layer).
_ONE_BUFFER = ("page_contiguous", "sglang_page_first", "sglang_page_first_direct")


def dtype_name(dtype: Any) -> str:
    """'bf16', 'fp16', 'fp32' or 'fp8' for a name, a torch dtype or a numpy dtype."""
    if isinstance(dtype, str):
        aliases = {"bfloat16": "bf16", "float16": "fp16", "half": "fp16", "float32": "fp32",
                   "float": "fp32", "float8_e4m3fn": "fp8"}
        name = aliases.get(dtype, dtype)
    else:
        text = str(dtype).replace("torch.", "")
        name = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32",
                "float8_e4m3fn": "fp8", "float8_e5m2": "fp8"}.get(text, text)
    if name not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {sorted(DTYPES)}")
    return name


@dataclasses.dataclass(frozen=True)
class Layout:
    """The worker's KV layout, as sent in hello. `num_blocks` is the worker's own block count."""

    layers: int
    kv_heads: int
    head_dim: int
    dtype: str = "bf16"
    tokens_per_page: int = 16
    tensor_layout: str = "vllm"
    num_blocks: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", dtype_name(self.dtype))
        if self.tensor_layout not in TENSOR_LAYOUTS:
            raise ValueError(
                f"tensor_layout {self.tensor_layout!r} is not one of {sorted(TENSOR_LAYOUTS)}"
            )
        for field in ("layers", "kv_heads", "head_dim", "tokens_per_page", "num_blocks"):
            if getattr(self, field) <= 0:
                raise ValueError(f"layout {field} must be positive, got {getattr(self, field)}")

    @property
    def dtype_bytes(self) -> int:
        return DTYPES[self.dtype][1]

    @property
    def block_bytes_per_layer(self) -> int:
        """Bytes of K (or V) of one block in one layer."""
        return self.tokens_per_page * self.kv_heads * self.head_dim * self.dtype_bytes

    @property
    def page_bytes(self) -> int:
        """Bytes of one page across all layers, K and V: what the daemon's page_bytes must be."""
        return 2 * self.layers * self.block_bytes_per_layer

    @property
    def buffer_count(self) -> int:
        return 1 if self.tensor_layout in _ONE_BUFFER else self.layers

    @property
    def buffer_shape(self) -> tuple[int, ...]:
        """Shape of each buffer, in elements of `dtype`."""
        t, h, d, n = self.tokens_per_page, self.kv_heads, self.head_dim, self.num_blocks
        if self.tensor_layout == "vllm":
            return (2, n, t, h, d)
        if self.tensor_layout == "block_major":
            return (n, 2, t, h, d)
        if self.tensor_layout == "sglang_page_first":
            return (2, n, t, self.layers, h, d)
        if self.tensor_layout == "sglang_page_first_direct":
            return (2, n, self.layers, t, h, d)
        return (n, self.layers, 2, t, h, d)

    @property
    def buffer_bytes(self) -> int:
        size = self.dtype_bytes
        for dim in self.buffer_shape:
            size *= dim
        return size

    def to_c(self) -> _lib.CLayout:
        return _lib.CLayout(
            self.layers,
            self.kv_heads,
            self.head_dim,
            DTYPES[self.dtype][0],
            self.tokens_per_page,
            TENSOR_LAYOUTS[self.tensor_layout],
            self.num_blocks,
        )
