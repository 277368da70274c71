"""kvtier: the Python client of kvtierd, the node-local KV-cache tiering daemon.

    import kvtier
    layout = kvtier.Layout(layers=16, kv_heads=8, head_dim=64, dtype="bf16", num_blocks=1024)
    with kvtier.Client.connect("/path/to/kvtierd.sock") as c:
        c.hello("llama-3.2-1b/tenant-a", layout)
        bufs = kvtier.HostBuffers(layout)       # memfd-backed, pinned when CUDA is present
        c.register_buffers(bufs)
        keys = c.chain_keys(token_ids)          # one key per full block of tokens
        hit = c.lookup(keys)                    # longest cached prefix, tier per page
        c.load(keys[:hit.prefix_pages], range(hit.prefix_pages)).wait(check=True)

kvtier.hf reuses cached prefixes in a Hugging Face transformers model.
"""

from ._errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    KvtierError,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
)
from ._lib import library_path
from .buffers import HostBuffers, register_cuda_tensors
from .client import (
    AttentionStats,
    Client,
    HelloInfo,
    LookupResult,
    Op,
    PageClass,
    PageResults,
    Tier,
    as_keys,
    chain_keys,
    key_from_block_hash,
)
from .engine_keys import engine_digest, engine_key, engine_keys
from .layout import Layout

__version__ = "0.1.0"

__all__ = [
    "AttentionStats",
    "Client",
    "DeadlineExceeded",
    "FailedPrecondition",
    "HelloInfo",
    "HostBuffers",
    "InvalidArgument",
    "KvtierError",
    "Layout",
    "LookupResult",
    "Op",
    "PageClass",
    "PageResults",
    "PermissionDenied",
    "ResourceExhausted",
    "Tier",
    "Unavailable",
    "as_keys",
    "chain_keys",
    "engine_digest",
    "engine_key",
    "engine_keys",
    "key_from_block_hash",
    "library_path",
    "register_cuda_tensors",
]
