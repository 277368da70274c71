"""kvtier.lmcache: kvtierd as an LMCache remote storage backend (LMCache's remote_storage_plugins).

LMCache loads `KvtierConnector` by name from its configuration (README, "LMCache"):

    remote_storage_plugins: ["kvtier"]
    extra_config:
      remote_storage_plugin.kvtier.module_path: kvtier.lmcache
      remote_storage_plugin.kvtier.class_name: KvtierConnector
      kvtier.socket_path: /run/kvtier/kvtierd.sock

and wraps it in its own RemoteBackend, which stages every chunk through LMCache's local CPU
backend. The same module therefore serves vLLM (LMCacheConnectorV1), SGLang and Dynamo through
their LMCache integrations.

- One kvtier page holds one LMCache chunk: the chunk's bytes for the model's KV shape
  (LMCacheMetadata.get_shapes() and get_dtypes(), the size RemoteConnector computes as
  full_chunk_size_bytes). kvtierd has one page size (store.page_bytes); connecting to a daemon
  whose page size differs raises PageSizeMismatch naming both sizes. Only full chunks are stored
  (a partial last chunk, or a chunk a compressing remote_serde shrank, is not: LMCache recomputes
  it), so LMCache's remote_serde must be "naive".
- Keys: kvtier.engine_keys' rule, with engine "lmcache", the chunk key's string form
  (CacheEngineKey.to_string(): model, world size, worker, chunk hash, dtype and request tags) as
  the engine key, and as cache_salt the tenant salt of extra_config (`kvtier.cache_salt`) together
  with the request's LMCache tags (`lmcache.tag.*` request configs, the per-request tenant tag).
- Bytes move through a staging buffer of `kvtier.staging_chunks` pages (a memfd registered with
  kvtierd, one block per chunk): a put copies each chunk into a block and stores the blocks; a
  get loads pages into blocks and copies each into a chunk LMCache allocates.
- kvtierd failures never raise into LMCache: a get is a miss, a lookup a shorter prefix, a put
  is dropped, each with a rate-limited log line. The connection is re-made lazily: the first call
  after `kvtier.reconnect_interval_s` (default 1 s) tries again, so a restarted kvtierd is used
  again without restarting the engine.
"""

from __future__ import annotations

import asyncio
import ctypes
import re
import threading
import time
from typing import Any, Callable, List, Optional, Sequence, TypeVar

import numpy as np

# LMCache is the host of this module: importing it here is the plugin contract.
from lmcache.logging import init_logger
from lmcache.utils import CacheEngineKey
from lmcache.v1.config import LMCacheEngineConfig
from lmcache.v1.exceptions import IrrecoverableException
from lmcache.v1.memory_management import MemoryObj
from lmcache.v1.metadata import LMCacheMetadata
from lmcache.v1.storage_backend.connector.base_connector import RemoteConnector

from ._errors import InvalidArgument, KvtierError, Unavailable
from .buffers import HostBuffers
from .client import Client
from .layout import DTYPES, Layout, dtype_name

logger = init_logger(__name__)

ENGINE = "lmcache"

# extra_config keys (README, "LMCache").
SOCKET_PATH = "kvtier.socket_path"  # kvtierd's socket; default: kvtier.Client's default
NAMESPACE = "kvtier.namespace"  # kvtier namespace; default "lmcache/<model_name>"
CACHE_SALT = "kvtier.cache_salt"  # tenant salt mixed into every key; default none
STAGING_CHUNKS = "kvtier.staging_chunks"  # staging blocks (one chunk each); default 8
RECONNECT_INTERVAL_S = "kvtier.reconnect_interval_s"  # least time between attempts; default 1
LOG_INTERVAL_S = "kvtier.log_interval_s"  # least time between repeated failure logs; default 30

DEFAULT_STAGING_CHUNKS = 8
DEFAULT_RECONNECT_INTERVAL_S = 1.0
DEFAULT_LOG_INTERVAL_S = 30.0

T = TypeVar("T")


class PageSizeMismatch(IrrecoverableException, ValueError):
    """kvtierd's page size is not the size of one LMCache chunk of this model.

    An IrrecoverableException, so that LMCache's RemoteBackend does not treat it as a transient
    connection failure to retry."""


def chunk_bytes(metadata: LMCacheMetadata) -> int:
    """Bytes of one full LMCache chunk of this model: what kvtierd's store.page_bytes must be."""
    return sum(
        int(shape.numel()) * dtype.itemsize
        for shape, dtype in zip(metadata.get_shapes(), metadata.get_dtypes(), strict=True)
    )


def page_layout(metadata: LMCacheMetadata, num_blocks: int) -> Layout:
    """The kvtier Layout whose page is one chunk, page_contiguous (a block is the chunk's bytes).

    With one KV group in the standard [2, layers, tokens, kv_heads * head_dim] shape it names the
    model's real dimensions (so a namespace rule pinning a layout can match it); any other shape
    (MLA, several groups, a dtype kvtier does not name) is described as a byte array of the same
    size, which kvtierd moves the same way."""
    size = chunk_bytes(metadata)
    shapes, dtypes = metadata.get_shapes(), metadata.get_dtypes()
    layers, _, tokens, heads, head_dim = metadata.kv_shape
    try:
        name = dtype_name(dtypes[0])
    except ValueError:
        name = ""
    if (len(shapes) == 1 and not metadata.use_mla and name
            and list(shapes[0]) == [2, layers, tokens, heads * head_dim]):
        layout = Layout(layers=layers, kv_heads=heads, head_dim=head_dim, dtype=name,
                        tokens_per_page=tokens, tensor_layout="page_contiguous",
                        num_blocks=num_blocks)
        if layout.page_bytes == size and DTYPES[name][1] == dtypes[0].itemsize:
            return layout
    if size % 2:
        raise ValueError(f"an LMCache chunk of {size} bytes has an odd size; kvtier pages of "
                         "a byte layout hold an even number of bytes")
    return Layout(layers=1, kv_heads=1, head_dim=size // 2, dtype="fp8", tokens_per_page=1,
                  tensor_layout="page_contiguous", num_blocks=num_blocks)


def cache_salt_of(tenant_salt: str, key: CacheEngineKey) -> Optional[str]:
    """The cache_salt of kvtier.engine_keys for one LMCache chunk key: the configured tenant salt
    and the key's LMCache tags (written as CacheEngineKey.to_string writes them), or None when
    there are neither."""
    tags = getattr(key, "tags", None) or ()
    tag_text = "@".join(f"{k}%{v}" for k, v in tags)
    if not tenant_salt and not tag_text:
        return None
    return f"{len(tenant_salt)}:{tenant_salt}|{tag_text}"


class _RateLimitedLog:
    """One warning per kind per interval; the count of the ones held back goes with the next."""

    def __init__(self, interval_s: float) -> None:
        self._interval = interval_s
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def warning(self, kind: str, message: str, *args: Any) -> None:
        now = time.monotonic()
        with self._lock:
            last = self._last.get(kind)
            if last is not None and now - last < self._interval:
                self._held[kind] = self._held.get(kind, 0) + 1
                return
            self._last[kind] = now
            held = self._held.pop(kind, 0)
        suffix = f" ({held} more since the last report)" if held else ""
        logger.warning("kvtier: " + message + suffix, *args)


class _Session:
    """One live connection to kvtierd: the client, the staging buffer and its free blocks.

    Users take it with KvtierConnector._acquire and give it back with _release; a session found
    broken is retired, and closed once its last user is done with it (closing a client another
    thread is waiting on would free what that wait uses)."""

    def __init__(self, socket_path: Optional[str], namespace: str, layout: Layout,
                 chunk_tokens: int, client_name: str) -> None:
        self.client = Client.connect(socket_path)
        self.buffers: Optional[HostBuffers] = None
        try:
            try:
                self.info = self.client.hello(namespace, layout, client_name)
            except InvalidArgument as e:
                # kvtierd names its page size when a layout's differs (status, which reports it
                # too, is for admin uids only; an engine's uid usually is not one).
                found = re.search(r"stores pages of (\d+)", e.message)
                if found is None:
                    raise
                raise PageSizeMismatch(
                    f"kvtier.lmcache: kvtierd at {socket_path or '(default socket)'} stores "
                    f"pages of {found.group(1)} bytes, but one LMCache chunk of this model "
                    f"(chunk_size {chunk_tokens} tokens) is {layout.page_bytes} bytes; one "
                    f"kvtier page holds one LMCache chunk: set store.page_bytes: "
                    f"{layout.page_bytes} in kvtierd's config (or run a kvtierd per chunk "
                    "size)") from e
            self.buffers = HostBuffers(layout, pin=False)
            self.client.register_buffers(self.buffers)
        except BaseException:
            self.close()
            raise
        self.layout = layout
        self.page_bytes = layout.page_bytes
        self.staging = np.frombuffer(self.buffers.maps[0], dtype=np.uint8)
        self.base = int(self.staging.ctypes.data)
        self.batch = max(1, min(layout.num_blocks, self.info.max_batch_pages or layout.num_blocks))
        self._free = list(range(layout.num_blocks))
        self._cv = threading.Condition()
        self.users = 0
        self.retired = False

    def take(self, count: int) -> list[int]:
        """`count` staging blocks (at most `batch`), waiting for other calls to give theirs."""
        with self._cv:
            self._cv.wait_for(lambda: len(self._free) >= count)
            taken, self._free = self._free[:count], self._free[count:]
            return taken

    def give(self, blocks: Sequence[int]) -> None:
        with self._cv:
            self._free.extend(blocks)
            self._cv.notify_all()

    def block_address(self, block: int) -> int:
        return self.base + block * self.page_bytes

    def close(self) -> None:
        # The numpy view pins the mapping; drop it first so HostBuffers can unmap.
        self.staging = np.zeros(0, dtype=np.uint8)
        self.client.close()
        if self.buffers is not None:
            self.buffers.close()


class KvtierConnector(RemoteConnector):
    """LMCache RemoteConnector over kvtierd (module docstring). Constructed by LMCache's
    DynamicConnectorAdapter as KvtierConnector(loop=, local_cpu_backend=, config=)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, local_cpu_backend: Any,
                 config: Optional[LMCacheEngineConfig],
                 metadata: Optional[LMCacheMetadata] = None) -> None:
        if metadata is None:
            metadata = getattr(local_cpu_backend, "metadata", None)
        if config is None:
            config = getattr(local_cpu_backend, "config", None)
        if metadata is None or config is None:
            raise ValueError("kvtier.lmcache: KvtierConnector needs LMCache's config and "
                             "metadata (a worker's LocalCPUBackend carries both)")
        super().__init__(config, metadata)
        if config.use_layerwise:
            raise ValueError("kvtier.lmcache: use_layerwise is not supported (one kvtier page "
                             "holds one whole chunk across every layer)")
        if (config.remote_serde or "naive") != "naive":
            logger.warning("kvtier: remote_serde %r changes the size of chunks; kvtier stores "
                           "only full-size chunks, so use remote_serde: naive",
                           config.remote_serde)
        extra = config.extra_config or {}
        self.loop = loop
        self.local_cpu_backend = local_cpu_backend
        self.socket_path: Optional[str] = extra.get(SOCKET_PATH) or None
        self.namespace: str = str(extra.get(NAMESPACE) or f"lmcache/{metadata.model_name}")
        self.tenant_salt: str = str(extra.get(CACHE_SALT) or "")
        self.staging_chunks = int(extra.get(STAGING_CHUNKS, DEFAULT_STAGING_CHUNKS))
        if self.staging_chunks <= 0:
            raise ValueError(f"kvtier.lmcache: {STAGING_CHUNKS} must be positive, got "
                             f"{self.staging_chunks}")
        self.reconnect_interval_s = float(
            extra.get(RECONNECT_INTERVAL_S, DEFAULT_RECONNECT_INTERVAL_S))
        self.layout = page_layout(metadata, self.staging_chunks)
        if self.layout.page_bytes != self.full_chunk_size_bytes:
            raise ValueError(f"kvtier.lmcache: layout pages of {self.layout.page_bytes} bytes "
                             f"differ from LMCache's chunk of {self.full_chunk_size_bytes}")
        self.chunk_tokens = int(metadata.chunk_size)
        self.client_name = f"lmcache/{metadata.model_name}/worker{metadata.worker_id}"
        self._log = _RateLimitedLog(float(extra.get(LOG_INTERVAL_S, DEFAULT_LOG_INTERVAL_S)))
        self._lock = threading.Lock()
        self._session: Optional[_Session] = None
        self._next_attempt = 0.0
        self._closed = False
        # Connect now, so a page-size mismatch fails the backend's creation with its message; a
        # daemon that is not up yet is only logged and tried again by later calls.
        session = self._acquire()
        if session is not None:
            self._release(session)
        logger.info("kvtier: LMCache connector for namespace %r at %s, pages of %d bytes "
                    "(one chunk), %d staging chunks, %s", self.namespace,
                    self.socket_path or "(default socket)", self.layout.page_bytes,
                    self.staging_chunks, "connected" if session else "not connected yet")

    # ---- the connection ----

    @property
    def connected(self) -> bool:
        with self._lock:
            return self._session is not None

    def _acquire(self) -> Optional[_Session]:
        """The live session, making one when none is and the reconnect interval has passed;
        None when kvtierd cannot be reached (logged). Raises only PageSizeMismatch."""
        with self._lock:
            if self._closed:
                return None
            if self._session is None:
                now = time.monotonic()
                if now < self._next_attempt:
                    return None
                self._next_attempt = now + self.reconnect_interval_s
                try:
                    self._session = _Session(self.socket_path, self.namespace, self.layout,
                                             self.chunk_tokens, self.client_name)
                    logger.info("kvtier: connected to kvtierd (namespace %r)", self.namespace)
                except PageSizeMismatch:
                    raise
                except Exception as e:
                    self._log.warning("connect", "cannot connect to kvtierd at %s (%s); LMCache "
                                      "reads miss and writes are dropped until it is back",
                                      self.socket_path or "(default socket)", e)
                    return None
            session = self._session
            session.users += 1
            return session

    def _release(self, session: _Session) -> None:
        with self._lock:
            session.users -= 1
            close = session.retired and session.users == 0
        if close:
            session.close()

    def _retire(self, session: _Session, error: BaseException, what: str) -> None:
        """Drops a session kvtierd stopped answering; the next call reconnects."""
        with self._lock:
            if self._session is session:
                self._session = None
                session.retired = True
        self._log.warning("lost", "%s failed: kvtierd went away (%s); reconnecting lazily",
                          what, error)

    def _with_session(self, what: str, fn: Callable[[_Session], T], miss: T) -> T:
        """fn(session), or `miss` when kvtierd is unreachable or the call fails (logged)."""
        try:
            session = self._acquire()
        except PageSizeMismatch as e:
            self._log.warning("page_size", "%s", e)
            return miss
        if session is None:
            return miss
        try:
            return fn(session)
        except Unavailable as e:
            self._retire(session, e, what)
            return miss
        except KvtierError as e:
            self._log.warning(what, "%s failed: %s", what, e)
            return miss
        except Exception as e:  # never into LMCache
            self._log.warning(what, "%s failed unexpectedly: %r", what, e)
            return miss
        finally:
            self._release(session)

    # ---- keys ----

    def _keys(self, session: _Session, keys: Sequence[CacheEngineKey]) -> np.ndarray:
        """kvtier keys of LMCache chunk keys (kvtier.engine_keys' rule), grouped by salt."""
        out = np.zeros((len(keys), 2), dtype=np.uint64)
        start = 0
        while start < len(keys):
            salt = cache_salt_of(self.tenant_salt, keys[start])
            end = start + 1
            while end < len(keys) and cache_salt_of(self.tenant_salt, keys[end]) == salt:
                end += 1
            out[start:end] = session.client.engine_keys(
                ENGINE, [k.to_string() for k in keys[start:end]], salt)
            start = end
        return out

    # ---- blocking operations (run off LMCache's event loop) ----

    def _prefix(self, keys: Sequence[CacheEngineKey]) -> int:
        if not keys:
            return 0
        return self._with_session(
            "lookup", lambda s: s.client.lookup(self._keys(s, keys)).prefix_pages, 0)

    def _put_blocking(self, keys: Sequence[CacheEngineKey], objs: Sequence[MemoryObj]) -> None:
        pairs = []
        for key, obj in zip(keys, objs, strict=True):
            size = obj.get_size()
            tensor = getattr(obj, "raw_data", None)
            if size != self.layout.page_bytes:
                # A partial last chunk, or one a compressing serde resized: not a page.
                logger.debug("kvtier: not storing %s: %d bytes, pages are %d", key, size,
                             self.layout.page_bytes)
                continue
            if tensor is None or getattr(tensor, "device", None) is None or \
                    tensor.device.type != "cpu":
                self._log.warning("device", "not storing a chunk that is not in CPU memory")
                continue
            pairs.append((key, obj))
        if not pairs:
            return

        def store(s: _Session) -> None:
            kv = self._keys(s, [k for k, _ in pairs])
            for begin in range(0, len(pairs), s.batch):
                part = pairs[begin:begin + s.batch]
                blocks = s.take(len(part))
                try:
                    for block, (_, obj) in zip(blocks, part):
                        ctypes.memmove(s.block_address(block), obj.data_ptr, s.page_bytes)
                    result = s.client.store(kv[begin:begin + len(part)], blocks).wait()
                finally:
                    s.give(blocks)
                if not result.ok:
                    self._log.warning("put", "kvtierd stored %d of %d chunks: %s",
                                      result.ok_pages, len(part), result.first_error)

        self._with_session("put", store, None)

    def _get_blocking(self, keys: Sequence[CacheEngineKey],
                      prefix_only: bool) -> List[Optional[MemoryObj]]:
        """Each key's chunk, in a MemoryObj from LMCache's allocator, or None. With prefix_only
        the list stops at the first miss."""
        misses: List[Optional[MemoryObj]] = [None] * len(keys)
        if not keys:
            return []

        def load(s: _Session) -> List[Optional[MemoryObj]]:
            kv = self._keys(s, keys)
            out: List[Optional[MemoryObj]] = []
            try:
                for begin in range(0, len(keys), s.batch):
                    count = min(s.batch, len(keys) - begin)
                    blocks = s.take(count)
                    try:
                        result = s.client.load(kv[begin:begin + count], blocks).wait()
                        for i, block in enumerate(blocks):
                            obj = None
                            if i < len(result.codes) and result.codes[i] == 0:
                                obj = self._copy_out(s, block)
                            out.append(obj)
                    finally:
                        s.give(blocks)
                    if prefix_only and None in out:
                        break
            except BaseException:
                # A later round failed: the whole call is a miss, so give back what it took.
                for obj in out:
                    if obj is not None:
                        obj.ref_count_down()
                raise
            return out + [None] * (len(keys) - len(out))

        objs = self._with_session("get", load, misses)
        if prefix_only:
            first_miss = objs.index(None) if None in objs else len(objs)
            for obj in objs[first_miss:]:
                if obj is not None:
                    obj.ref_count_down()
            return objs[:first_miss]
        return objs

    def _copy_out(self, s: _Session, block: int) -> Optional[MemoryObj]:
        # No busy loop: this call holds staging blocks that puts (whose chunks are what LMCache
        # would wait to free) may be waiting for. A full allocator makes the hit a miss.
        obj = self.local_cpu_backend.allocate(self.meta_shapes, self.meta_dtypes, self.meta_fmt,
                                              busy_loop=False)
        if obj is None:
            self._log.warning("allocate", "LMCache's CPU allocator is full; a kvtier hit is "
                              "served as a miss")
            return None
        if obj.get_size() != s.page_bytes:
            obj.ref_count_down()
            raise ValueError(f"LMCache allocated {obj.get_size()} bytes for a chunk of "
                             f"{s.page_bytes}")
        ctypes.memmove(obj.data_ptr, s.block_address(block), s.page_bytes)
        return obj

    def _ping_blocking(self) -> int:
        # A lookup is the cheapest round trip any uid may make (status is for admins).
        def probe(s: _Session) -> int:
            s.client.lookup(np.zeros((1, 2), dtype=np.uint64))
            return 0

        return self._with_session("ping", probe, 1)

    async def _off_loop(self, fn: Callable[..., T], *args: Any) -> T:
        # kvtier calls block (without the GIL) until kvtierd answers: keep LMCache's loop free.
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    # ---- RemoteConnector ----

    async def exists(self, key: CacheEngineKey) -> bool:
        return await self._off_loop(self._prefix, [key]) == 1

    def exists_sync(self, key: CacheEngineKey) -> bool:
        return self._prefix([key]) == 1

    def support_batched_contains(self) -> bool:
        return True

    def batched_contains(self, keys: List[CacheEngineKey]) -> int:
        """How many leading chunks of `keys` kvtierd holds (one lookup)."""
        return self._prefix(keys)

    def support_batched_async_contains(self) -> bool:
        return True

    async def batched_async_contains(self, lookup_id: str, keys: List[CacheEngineKey],
                                     pin: bool = False) -> int:
        # `pin` is not forwarded: kvtierd pins by session, and LMCache's unpin does not reach
        # remote connectors; a page evicted before the get is a miss LMCache recomputes.
        return await self._off_loop(self._prefix, keys)

    async def get(self, key: CacheEngineKey) -> Optional[MemoryObj]:
        return (await self._off_loop(self._get_blocking, [key], False))[0]

    def support_batched_get(self) -> bool:
        return True

    async def batched_get(self, keys: List[CacheEngineKey]) -> List[Optional[MemoryObj]]:
        return await self._off_loop(self._get_blocking, keys, False)

    def support_batched_get_non_blocking(self) -> bool:
        return True

    async def batched_get_non_blocking(self, lookup_id: str,
                                       keys: List[CacheEngineKey]) -> List[MemoryObj]:
        objs = await self._off_loop(self._get_blocking, keys, True)
        return [o for o in objs if o is not None]

    async def put(self, key: CacheEngineKey, memory_obj: MemoryObj) -> None:
        # LMCache's wrapper (InstrumentedRemoteConnector) drops the reference afterwards.
        await self._off_loop(self._put_blocking, [key], [memory_obj])

    def support_batched_put(self) -> bool:
        return True

    async def batched_put(self, keys: List[CacheEngineKey],
                          memory_objs: List[MemoryObj]) -> None:
        await self._off_loop(self._put_blocking, keys, memory_objs)

    def support_ping(self) -> bool:
        return True

    async def ping(self) -> int:
        return await self._off_loop(self._ping_blocking)

    async def list(self) -> List[str]:
        # kvtierd indexes hashed keys; LMCache's key strings cannot be listed back.
        return []

    def remove_sync(self, key: CacheEngineKey) -> bool:
        return False  # kvtierd evicts by its own policy; there is no per-page delete

    async def close(self) -> None:
        self.close_sync()

    def close_sync(self) -> None:
        with self._lock:
            self._closed = True
            session, self._session = self._session, None
            if session is not None:
                session.retired = True
                close = session.users == 0
            else:
                close = False
        if session is not None and close:
            session.close()

    def __repr__(self) -> str:
        return f"<KvtierConnector namespace={self.namespace!r}>"
