"""kvtier as SGLang's HiCache L3 storage: a HiCacheStorage that SGLang loads by module path.

    python -m sglang.launch_server ... --enable-hierarchical-cache \\
        --hicache-mem-layout page_first --hicache-storage-backend dynamic \\
        --hicache-storage-backend-extra-config '{"backend_name": "kvtier",
            "module_path": "kvtier.sglang", "class_name": "KvtierHiCacheStorage",
            "interface_v1": 1, "allocator": "shm", "socket_path": "/run/kvtier/kvtierd.sock"}'

(README, "SGLang"). SGLang calls the batched v1 interface by host page index (`interface_v1`
selects it): batch_exists (longest stored prefix), batch_set_v1 and batch_get_v1, which make
kvtierd copy the pages straight out of and into SGLang's host pool. With `"allocator": "shm"` the
pool is one memfd, which kvtierd reads and writes through its fd (it carries no seal against
shrinking, so the daemon never maps it: daemon/fd_buffer.h); a page of the `page_first` layout is
its K half and its V half at two offsets of that buffer (Layout "sglang_page_first"). Without the
shm allocator the pages go through a staging buffer of kvtier's own (one more copy). The legacy
calls (get/set/batch_get/batch_set/exists, flat page tensors) use that staging buffer too.

Page size: one kvtier page is one SGLang host page, page_size tokens x layers x K+V x KV heads x
head_dim x dtype bytes; kvtierd's store.page_bytes must equal it. A mismatch fails
register_mem_pool_host (SGLang's attach) with a message naming both sizes.

Keys: SGLang names a page by a hex SHA-256 chained over the prefix and seeded with the request's
namespace (extra_key and cache_salt, sglang.srt.mem_cache.utils.storage_namespace_seed), so the
per-request salt is part of every key SGLang hands here; kvtier.engine_keys maps it to kvtier's key
under the kvtier namespace and the deployment's optional "cache_salt". A SGLang without that seed
would drop the request salt on the way to storage (SGLang #37160): this backend then refuses to
start unless "allow_unsalted_keys" is set.

Failures: a daemon that is down, restarting or refusing costs misses (False, 0, None), never an
exception into SGLang; the failure is logged at most once per `log_interval_s`, and the backend
reconnects lazily (at most once per `reconnect_interval_s`).

Thread model: SGLang's prefetch and backup threads call concurrently; the kvtier Client is
thread-safe, the connection state and the staging buffer have a lock each.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
import time
from typing import Any, List, Optional, Sequence

import numpy as np
import torch
from sglang.srt.mem_cache.hicache_storage import (
    HiCacheStorage,
    HiCacheStorageConfig,
    HiCacheStorageExtraInfo,
)

from ._errors import KvtierError
from .buffers import HostBuffers
from .client import Client, PageResults
from .layout import Layout, dtype_name

logger = logging.getLogger("kvtier.sglang")

ENGINE = "sglang"
# Default pages of the staging buffer (a memfd of this many pages, only for pools kvtierd cannot
# reach by fd and for the legacy calls); larger batches go through it in turns.
STAGING_PAGES = 32
# kvtier's tensor layout for each SGLang host layout this backend serves.
_LAYOUTS = {"page_first": "sglang_page_first", "page_first_direct": "sglang_page_first_direct"}


class PageSizeMismatch(ValueError):
    """kvtierd's store.page_bytes is not the size of one SGLang host page."""


class _RateLimitedLog:
    """One warning per `interval_s`, with the count of those it held back."""

    def __init__(self, interval_s: float) -> None:
        self._interval_s = interval_s
        self._last = -float("inf")
        self._held = 0
        self._lock = threading.Lock()

    def warn(self, message: str) -> None:
        with self._lock:
            now = time.monotonic()
            if now - self._last < self._interval_s:
                self._held += 1
                return
            held, self._held, self._last = self._held, 0, now
        suffix = f" ({held} similar messages suppressed)" if held else ""
        logger.warning("kvtier: %s%s", message, suffix)


class _PoolGeometry:
    """What this backend needs of SGLang's host pool: the kvtier layout of its pages, a way to
    view one page, and the memfd behind it when kvtierd can copy from it directly."""

    def __init__(self, pool: Any) -> None:
        layout = getattr(pool, "layout", None)
        kv = getattr(pool, "kv_buffer", None)
        if layout not in _LAYOUTS or not isinstance(kv, torch.Tensor) or kv.dim() < 2:
            raise ValueError(
                f"kvtier's SGLang backend serves MHA host pools in the page_first or "
                f"page_first_direct layout (--hicache-mem-layout page_first); this pool is "
                f"{type(pool).__name__} with layout {layout!r}"
            )
        if getattr(pool, "head_dim", None) != getattr(pool, "v_head_dim", None):
            raise ValueError("kvtier's SGLang backend needs K and V of one head_dim")
        self.pool = pool
        self.kind = layout
        self.page_size = int(pool.page_size)
        self.kv = kv
        pages = kv.shape[1] // self.page_size if layout == "page_first" else kv.shape[1]
        self.layout = Layout(
            layers=int(pool.layer_num),
            kv_heads=int(pool.head_num),
            head_dim=int(pool.head_dim),
            dtype=dtype_name(pool.dtype),
            tokens_per_page=self.page_size,
            tensor_layout=_LAYOUTS[layout],
            num_blocks=int(pages),
        )
        if not kv.is_contiguous() or kv.numel() * kv.element_size() != self.layout.buffer_bytes:
            raise ValueError(
                f"SGLang's host pool buffer {tuple(kv.shape)} {kv.dtype} is not the contiguous "
                f"[2, pages, ...] buffer of layout {self.layout}"
            )
        self.fd = self._memfd(pool)

    def _memfd(self, pool: Any) -> Optional[int]:
        """The shm allocator's memfd when the pool's buffer is that memfd's first bytes."""
        allocator = getattr(pool, "allocator", None)
        fd, mm = getattr(allocator, "fd", None), getattr(allocator, "mm", None)
        if fd is None or mm is None or len(getattr(allocator, "fds", [fd])) != 1:
            return None
        try:
            base = ctypes.addressof(ctypes.c_char.from_buffer(mm))
            size = os.fstat(fd).st_size
        except (OSError, TypeError, ValueError, BufferError):
            return None
        if base != self.kv.data_ptr() or size < self.layout.buffer_bytes:
            return None
        return int(fd)

    def staging_layout(self, pages: int) -> Layout:
        fields = {f: getattr(self.layout, f) for f in ("layers", "kv_heads", "head_dim", "dtype",
                                                        "tokens_per_page", "tensor_layout")}
        return Layout(num_blocks=pages, **fields)

    def block_of(self, host_index: int) -> int:
        """The kvtier block (SGLang host page) of the token index a page starts at."""
        if host_index % self.page_size != 0:
            raise ValueError(f"host index {host_index} is not page aligned ({self.page_size})")
        return host_index // self.page_size

    def page(self, block: int) -> torch.Tensor:
        """Host page `block` as a [2, ...] view (K, V) of the pool, in bytes."""
        if self.kind == "page_first":
            view = self.kv[:, block * self.page_size:(block + 1) * self.page_size]
        else:
            view = self.kv[:, block]
        return view.view(torch.uint8)


class _Connection:
    """One kvtier session: the client and what it registered."""

    def __init__(self, client: Client, staging: Optional[HostBuffers]) -> None:
        self.client = client
        self.staging = staging
        self.staging_view = staging.torch()[0].view(torch.uint8) if staging is not None else None

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:
            pass
        if self.staging is not None:
            self.staging.close()


class KvtierHiCacheStorage(HiCacheStorage):
    """SGLang HiCache L3 storage in kvtierd (module docstring). SGLang constructs it through
    StorageBackendFactory's dynamic backend: KvtierHiCacheStorage(storage_config, kwargs); the
    host pool arrives by register_mem_pool_host, which connects."""

    def __init__(self, storage_config: HiCacheStorageConfig, kwargs: Optional[dict] = None) -> None:
        extra = dict(storage_config.extra_config or {})
        self._config = storage_config
        # Default: kvtier-data/kvtierd.sock under the working directory (Client.connect's).
        self._socket_path: Optional[str] = extra.get("socket_path") or os.environ.get(
            "KVTIER_SOCKET"
        )
        self._namespace = _namespace(extra, storage_config)
        self._cache_salt: Optional[str] = extra.get("cache_salt")
        self._reconnect_interval_s = float(extra.get("reconnect_interval_s", 1.0))
        self._staging_pages = max(1, int(extra.get("staging_pages", STAGING_PAGES)))
        self._log = _RateLimitedLog(float(extra.get("log_interval_s", 10.0)))
        if not bool(extra.get("allow_unsalted_keys", False)) and not _sglang_salts_keys():
            raise ValueError(
                "this SGLang does not seed its storage keys with the request's extra_key/"
                "cache_salt (sglang.srt.mem_cache.utils.storage_namespace_seed), so tenants "
                "would share pages in kvtier; upgrade SGLang or set allow_unsalted_keys"
            )
        self._geometry: Optional[_PoolGeometry] = None
        self._conn_lock = threading.Lock()
        self._pool_conn: Optional[_Connection] = None  # zero copy, or staging when no memfd
        self._flat_conn: Optional[_Connection] = None  # the legacy calls' staging
        self._next_attempt = 0.0
        self._staging_lock = threading.Lock()
        self.mem_pool_host = (kwargs or {}).get("mem_pool_host")

    # ---- setup ----

    def register_mem_pool_host(self, mem_pool_host: Any) -> None:
        super().register_mem_pool_host(mem_pool_host)
        self._geometry = _PoolGeometry(mem_pool_host)
        # Configuration errors (page size, namespace rules) fail SGLang's attach here; a daemon
        # that is not up yet only logs, and the first call that needs it connects.
        self._connection(strict=True)

    def register_mem_host_pool_v2(self, host_pool: Any, host_pool_name: Any) -> None:
        # Only SGLang's hybrid controller (Mamba, SWA, DSA pools) registers pools this way, and it
        # then calls the v2 interface, which this backend does not implement: say so at attach.
        raise ValueError(
            f"kvtier's SGLang backend serves the KV pool of non-hybrid models through the v1 "
            f"interface; this model also has a {host_pool_name} host pool (HiCache v2)"
        )

    def close(self) -> None:
        with self._conn_lock:
            for conn in (self._pool_conn, self._flat_conn):
                if conn is not None:
                    conn.close()
            self._pool_conn = self._flat_conn = None

    @property
    def zero_copy(self) -> bool:
        """Whether kvtierd copies straight from SGLang's host pool (shm allocator)."""
        return self._geometry is not None and self._geometry.fd is not None

    def _connection(self, strict: bool = False, flat: bool = False) -> Optional[_Connection]:
        """The live session for pool pages (or the legacy calls' staging one), connecting when
        there is none and the last attempt is old enough; None when kvtierd is not reachable."""
        geometry = self._geometry
        if geometry is None:
            self._log.warn("called before SGLang registered its host pool; a miss")
            return None
        flat = flat and geometry.fd is not None  # without a memfd, pool pages use staging too
        with self._conn_lock:
            conn = self._flat_conn if flat else self._pool_conn
            if conn is not None:
                return conn
            if not strict and time.monotonic() < self._next_attempt:
                return None
            self._next_attempt = time.monotonic() + self._reconnect_interval_s
            try:
                conn = self._open(geometry, staging=flat or geometry.fd is None)
            except PageSizeMismatch:
                if strict:
                    raise
                self._log.warn("kvtierd's page size changed; every call misses")
                return None
            except KvtierError as e:
                if strict and e.code_name in ("INVALID_ARGUMENT", "PERMISSION_DENIED"):
                    raise ValueError(f"kvtier: {e}") from e
                self._log.warn(f"kvtierd at {self._socket_path or 'default socket'}: {e}; misses")
                return None
            if flat:
                self._flat_conn = conn
            else:
                self._pool_conn = conn
            return conn

    def _open(self, geometry: _PoolGeometry, staging: bool) -> _Connection:
        client = Client.connect(self._socket_path)
        try:
            daemon_page = int(client.status().get("page_bytes", 0))
            page = geometry.layout.page_bytes
            if daemon_page != page:
                raise PageSizeMismatch(
                    f"kvtierd stores pages of {daemon_page} bytes (store.page_bytes) but one "
                    f"SGLang host page is {page} bytes (page_size {geometry.page_size} tokens x "
                    f"{geometry.layout.layers} layers x K+V x {geometry.layout.kv_heads} KV "
                    f"heads x head_dim {geometry.layout.head_dim} x "
                    f"{geometry.layout.dtype_bytes} bytes): set store.page_bytes: {page} in "
                    f"kvtierd's config, or change --page-size"
                )
            layout = geometry.staging_layout(self._staging_pages) if staging else geometry.layout
            client.hello(self._namespace, layout, client_name="sglang")
            buffers = None
            if staging:
                buffers = HostBuffers(layout, pin=False)
                client.register_buffers(buffers)
            else:
                assert geometry.fd is not None
                client.register_fds([geometry.fd], [layout.buffer_bytes])
            return _Connection(client, buffers)
        except BaseException:
            client.close()
            raise

    def _failed(self, conn: _Connection, what: str, error: BaseException) -> None:
        """Drops a session that failed (the daemon went away or refused): the next call after
        reconnect_interval_s reconnects. The session is not closed here: another thread may be
        inside a call on it; it closes when the last of them lets go of it."""
        self._log.warn(f"{what} failed ({error}); a miss, reconnecting later")
        with self._conn_lock:
            if self._pool_conn is conn:
                self._pool_conn = None
            if self._flat_conn is conn:
                self._flat_conn = None
            self._next_attempt = time.monotonic() + self._reconnect_interval_s

    # ---- keys ----

    def _keys(self, conn: _Connection, keys: Sequence[str]) -> np.ndarray:
        return conn.client.engine_keys(ENGINE, keys, self._cache_salt)

    def _chain(
        self, conn: _Connection, extra_info: Optional[HiCacheStorageExtraInfo]
    ) -> tuple[Optional[np.ndarray], int]:
        """Parent key and page position of a batch's first page, from SGLang's prefix keys.
        Unknown prefix: no parent, position 1 (not declared a sequence start, so the daemon
        does not take the page for an attention sink)."""
        prefix = extra_info.prefix_keys if extra_info is not None else None
        if prefix is None:
            return None, 1
        if not prefix:
            return None, 0
        return self._keys(conn, prefix[-1:])[0], len(prefix)

    # ---- the v1 interface (interface_v1: 1) ----

    def batch_exists(
        self, keys: List[str], extra_info: Optional[HiCacheStorageExtraInfo] = None
    ) -> int:
        """Pages of the longest prefix of `keys` that kvtierd holds."""
        if not keys:
            return 0
        conn = self._connection()
        if conn is None:
            return 0
        try:
            return int(conn.client.lookup(self._keys(conn, keys)).prefix_pages)
        except Exception as e:
            self._failed(conn, "lookup", e)
            return 0

    def batch_set_v1(
        self,
        keys: List[str],
        host_indices: torch.Tensor,
        extra_info: Optional[HiCacheStorageExtraInfo] = None,
    ) -> List[bool]:
        return self._transfer(keys, host_indices, extra_info, store=True)

    def batch_get_v1(
        self,
        keys: List[str],
        host_indices: torch.Tensor,
        extra_info: Optional[HiCacheStorageExtraInfo] = None,
    ) -> List[bool]:
        return self._transfer(keys, host_indices, extra_info, store=False)

    def _transfer(
        self,
        keys: List[str],
        host_indices: torch.Tensor,
        extra_info: Optional[HiCacheStorageExtraInfo],
        store: bool,
    ) -> List[bool]:
        what = "store" if store else "load"
        geometry = self._geometry
        if not keys:
            return []
        if geometry is None or host_indices.numel() != len(keys) * geometry.page_size:
            self._log.warn(f"{what}: {len(keys)} keys with {host_indices.numel()} host indices")
            return [False] * len(keys)
        starts = host_indices[:: geometry.page_size].tolist()
        try:
            blocks = [geometry.block_of(int(i)) for i in starts]
        except ValueError as e:
            self._log.warn(f"{what}: {e}")
            return [False] * len(keys)
        conn = self._connection()
        if conn is None:
            return [False] * len(keys)
        try:
            kv_keys = self._keys(conn, keys)
            if conn.staging is None:
                results = self._op(conn, kv_keys, blocks, extra_info, store)
                return [code == 0 for code in results.codes]
            return self._through_staging(conn, keys, kv_keys, blocks, extra_info, store)
        except Exception as e:
            self._failed(conn, what, e)
            return [False] * len(keys)

    def _op(
        self,
        conn: _Connection,
        kv_keys: np.ndarray,
        blocks: Sequence[int],
        extra_info: Optional[HiCacheStorageExtraInfo],
        store: bool,
    ) -> PageResults:
        if not store:
            return conn.client.load(kv_keys, blocks).wait()
        parent, position = self._chain(conn, extra_info)
        return conn.client.store(kv_keys, blocks, parent=parent, first_position=position).wait()

    def _through_staging(
        self,
        conn: _Connection,
        keys: List[str],
        kv_keys: np.ndarray,
        blocks: Sequence[int],
        extra_info: Optional[HiCacheStorageExtraInfo],
        store: bool,
    ) -> List[bool]:
        """Pool pages through the staging buffer (a pool kvtierd cannot reach by fd)."""
        geometry, staging = self._geometry, conn.staging_view
        assert geometry is not None and staging is not None
        ok: List[bool] = []
        with self._staging_lock:
            for start in range(0, len(blocks), self._staging_pages):
                chunk = blocks[start:start + self._staging_pages]
                slots = list(range(len(chunk)))
                if store:
                    for slot, block in zip(slots, chunk):
                        staging[:, slot].copy_(geometry.page(block))
                info = extra_info
                if start > 0 and extra_info is not None and extra_info.prefix_keys is not None:
                    info = HiCacheStorageExtraInfo(
                        prefix_keys=extra_info.prefix_keys + keys[:start]
                    )
                results = self._op(conn, kv_keys[start:start + len(chunk)], slots, info, store)
                for slot, block, code in zip(slots, chunk, results.codes):
                    if code == 0 and not store:
                        geometry.page(block).copy_(staging[:, slot])
                    ok.append(code == 0)
        return ok

    # ---- the legacy interface (flat page tensors) ----

    def exists(self, key: str) -> bool:
        return self.batch_exists([key]) == 1

    def get(
        self,
        key: str,
        target_location: Optional[Any] = None,
        target_sizes: Optional[Any] = None,
    ) -> torch.Tensor | None:
        pages = self.batch_get([key], [target_location] if target_location is not None else None)
        return pages[0] if pages else None

    def batch_get(
        self,
        keys: List[str],
        target_locations: Optional[Any] = None,
        target_sizes: Optional[Any] = None,
    ) -> List[torch.Tensor | None]:
        """Flat pages (SGLang's get_data_page(flat=True) order: K half, then V half) into
        target_locations[i] when given, else into new tensors of the pool's dtype."""
        out: List[torch.Tensor | None] = [None] * len(keys)
        conn = self._connection(flat=True)
        if conn is None or not keys:
            return out
        geometry, staging = self._geometry, conn.staging_view
        assert geometry is not None and staging is not None
        try:
            kv_keys = self._keys(conn, keys)
            with self._staging_lock:
                for start in range(0, len(keys), self._staging_pages):
                    n = min(self._staging_pages, len(keys) - start)
                    results = conn.client.load(kv_keys[start:start + n], range(n)).wait()
                    for slot, code in enumerate(results.codes):
                        if code != 0:
                            continue
                        i = start + slot
                        target = target_locations[i] if target_locations is not None else None
                        if target is None:
                            target = torch.empty(
                                geometry.layout.page_bytes // geometry.kv.element_size(),
                                dtype=geometry.kv.dtype,
                            )
                        target.view(torch.uint8).view(-1).copy_(staging[:, slot].reshape(-1))
                        out[i] = target
        except Exception as e:
            self._failed(conn, "get", e)
            return [None] * len(keys)
        return out

    def set(
        self,
        key: str,
        value: Optional[Any] = None,
        target_location: Optional[Any] = None,
        target_sizes: Optional[Any] = None,
    ) -> bool:
        return self.batch_set([key], [value])

    def batch_set(
        self,
        keys: List[str],
        values: Optional[Any] = None,
        target_locations: Optional[Any] = None,
        target_sizes: Optional[Any] = None,
    ) -> bool:
        """Stores flat pages (SGLang's get_data_page(flat=True)); True when all were stored."""
        if not keys:
            return True
        if values is None or len(values) != len(keys):
            return False
        conn = self._connection(flat=True)
        if conn is None:
            return False
        geometry, staging = self._geometry, conn.staging_view
        assert geometry is not None and staging is not None
        try:
            kv_keys = self._keys(conn, keys)
            with self._staging_lock:
                for start in range(0, len(keys), self._staging_pages):
                    n = min(self._staging_pages, len(keys) - start)
                    for slot in range(n):
                        page = values[start + slot].contiguous().view(torch.uint8).reshape(-1)
                        if page.numel() != geometry.layout.page_bytes:
                            self._log.warn(f"set: a page of {page.numel()} bytes, not "
                                           f"{geometry.layout.page_bytes}")
                            return False
                        slot_view = staging[:, slot]
                        slot_view.copy_(page.view(slot_view.shape))
                    results = conn.client.store(kv_keys[start:start + n], range(n),
                                                first_position=1).wait()
                    if not results.ok:
                        return False
        except Exception as e:
            self._failed(conn, "set", e)
            return False
        return True

    def clear(self) -> bool:
        # kvtierd is a cache shared by every worker of the node: one worker does not empty it.
        logger.info("kvtier: clear() leaves kvtierd's pages in place (a shared cache)")
        return False

    def get_stats(self) -> Any:
        return None


def _sglang_salts_keys() -> bool:
    """Whether this SGLang seeds storage keys with the request's extra_key and cache_salt."""
    try:
        from sglang.srt.mem_cache import utils
    except ImportError:
        return False
    return hasattr(utils, "storage_namespace_seed")


def _namespace(extra: dict, config: HiCacheStorageConfig) -> str:
    """kvtier namespace of this worker: `namespace` from the extra config, else
    "sglang/<model_name>", plus the rank when the model is split (a rank's pages hold its own
    heads or layers, so ranks never share a page)."""
    base = str(extra.get("namespace") or f"sglang/{config.model_name or 'model'}")
    parts = []
    if config.tp_size > 1:
        parts.append(f"tp{config.tp_rank}of{config.tp_size}")
    if config.pp_size > 1:
        parts.append(f"pp{config.pp_rank}of{config.pp_size}")
    if config.attn_cp_size > 1:
        parts.append(f"cp{config.attn_cp_rank}of{config.attn_cp_size}")
    name = "/".join([base, *parts]) if parts else base
    # kvtierd takes printable ASCII names.
    return "".join(c if 0x20 < ord(c) < 0x7F else "_" for c in name)
