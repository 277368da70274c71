"""One mapping from a serving engine's own name for a block to kvtier's 128-bit page key.

Each engine names its KV blocks its own way: vLLM by a chained block hash (bytes or int), SGLang
by a hex string per page, LMCache by a chunk key string. Every connector maps them with this
module, so that the rule is written down once:

    digest = BLAKE2b-128( "kvtier-engine-key/1" | len+engine | len+cache_salt | len+engine_key )
    key    = key_from_block_hash(namespace_salt, digest)

- The engine's key is already chained over the prefix by the engine (each of the three hashes a
  block together with its parent's hash), so it is not chained again here.
- `cache_salt` is the engine's per-request tenant salt (vLLM's `cache_salt`, SGLang's
  `extra_key`, LMCache's request tags). It is part of the digest, so it reaches every tier's key:
  HBM, DRAM, NVMe, a peer's copy. Peers honoured it in GPU memory and dropped it on the way to
  disk or remote storage (SGLang #37160, LMCache #4825); here there is no path that skips it.
- The namespace (the tenant kvtierd authorises at Hello) is mixed in twice: through its salt here,
  and by kvtierd itself, which keys every tier's index by namespace. Two tenants never share a
  page even when their engines compute the same block hash.
- The engine name keeps one engine's key from ever naming another engine's page (their layouts
  differ even when their hashes collide).
Fields are length-prefixed so no two different inputs give the same byte string.
"""

from __future__ import annotations

import hashlib
from typing import Iterable, Optional, Union

import numpy as np

from .client import key_from_block_hash

EngineKey = Union[bytes, bytearray, str, int]

_TAG = b"kvtier-engine-key/1"


def _field(data: bytes) -> bytes:
    return len(data).to_bytes(4, "little") + data


def _as_bytes(value: EngineKey, what: str) -> bytes:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, int):
        # Signed 128-bit: vLLM's int hashes and Python's hash() values both fit.
        if not -(1 << 127) <= value < (1 << 127):
            raise ValueError(f"{what}: integer {value} does not fit in 128 bits")
        return value.to_bytes(16, "little", signed=True)
    raise TypeError(f"{what}: expected bytes, str or int, got {type(value).__name__}")


def engine_digest(engine: str, engine_key: EngineKey,
                  cache_salt: Optional[EngineKey] = None) -> bytes:
    """The 16-byte digest of one engine key (the documented rule above), before the namespace."""
    if not engine:
        raise ValueError("engine_digest: the engine name must not be empty")
    h = hashlib.blake2b(digest_size=16)
    h.update(_TAG)
    h.update(_field(engine.encode("utf-8")))
    h.update(_field(b"" if cache_salt is None else _as_bytes(cache_salt, "cache_salt")))
    h.update(_field(_as_bytes(engine_key, "engine_key")))
    return h.digest()


def engine_key(salt: tuple[int, int], engine: str, key: EngineKey,
               cache_salt: Optional[EngineKey] = None) -> np.ndarray:
    """kvtier's key (uint64 [hi, lo]) of the block an engine names `key`, in the namespace whose
    salt is `salt` (Client.salt after hello) and under the engine's per-request `cache_salt`."""
    return key_from_block_hash(salt, engine_digest(engine, key, cache_salt))


def engine_keys(salt: tuple[int, int], engine: str, keys: Iterable[EngineKey],
                cache_salt: Optional[EngineKey] = None) -> np.ndarray:
    """engine_key of each of `keys`, as an (n, 2) uint64 array ready for lookup/load/store."""
    rows = [engine_key(salt, engine, k, cache_salt) for k in keys]
    if not rows:
        return np.zeros((0, 2), dtype=np.uint64)
    return np.stack(rows).astype(np.uint64)
