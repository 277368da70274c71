"""Client: one connection to kvtierd (one session, one namespace), over libkvtier.so.

Every call is batched. load() and store() are asynchronous: they return an Op at once, and
Op.wait() blocks (without the GIL) until the daemon answers with one status per page. Errors
raise KvtierError subclasses carrying the daemon's message; a daemon that goes away makes
pending and later calls raise Unavailable instead of hanging.

Thread model: a Client may be used from several threads (the C library serializes sends and
parks replies for their waiters).
"""

from __future__ import annotations

import ctypes
import dataclasses
import enum
import json
from typing import Any, Iterable, Optional, Sequence, Union

import numpy as np

from . import _lib
from ._errors import KvtierError, error_for
from .buffers import HostBuffers, register_cuda_tensors
from .layout import Layout

# Keys are (n, 2) uint64 arrays of (hi, lo) pairs, the C ABI's kvtier_key layout.
Keys = np.ndarray
KeyLike = Union[np.ndarray, Sequence[Sequence[int]]]


class Tier(enum.IntEnum):
    HBM = 0
    DRAM = 1
    NVME = 2


class PageClass(enum.IntEnum):
    UNKNOWN = 0
    SINK = 1
    SEMANTIC = 2


@dataclasses.dataclass(frozen=True)
class HelloInfo:
    salt: tuple[int, int]
    page_bytes: int
    hbm_backend: str
    max_inflight_ops: int
    max_pinned_pages: int
    max_batch_pages: int


@dataclasses.dataclass(frozen=True)
class LookupResult:
    prefix_pages: int
    tiers: list[Tier]  # one per prefix page


@dataclasses.dataclass(frozen=True)
class PageResults:
    """Per-page outcome of a load or store: code 0 is OK."""

    codes: list[int]
    tiers: list[Optional[Tier]]
    ok_pages: int
    first_error: str

    @property
    def ok(self) -> bool:
        return self.ok_pages == len(self.codes)

    @property
    def ok_prefix(self) -> int:
        """Pages that succeeded before the first failed one."""
        for i, code in enumerate(self.codes):
            if code != 0:
                return i
        return len(self.codes)


@dataclasses.dataclass
class AttentionStats:
    """Per-page attention statistics (DESIGN.md §4); each None or one float per key."""

    mass: Optional[Sequence[float]] = None
    breadth: Optional[Sequence[float]] = None
    value_norm: Optional[Sequence[float]] = None
    mass_entropy: Optional[Sequence[float]] = None


def as_keys(keys: KeyLike) -> np.ndarray:
    """Keys as a C-contiguous (n, 2) uint64 array."""
    arr = np.ascontiguousarray(keys, dtype=np.uint64)
    if arr.ndim == 1 and arr.size == 0:
        arr = arr.reshape(0, 2)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"keys must have shape (n, 2) of (hi, lo) words, got {arr.shape}")
    return arr


def _key_ptr(keys: np.ndarray) -> Any:
    return keys.ctypes.data_as(ctypes.POINTER(_lib.Key))


def _u32(values: Iterable[int], count: int, what: str) -> np.ndarray:
    arr = np.ascontiguousarray(np.asarray(values, dtype=np.int64))
    if arr.shape != (count,):
        raise ValueError(f"{what}: expected {count} values, got shape {arr.shape}")
    if count and (arr.min() < 0 or arr.max() > 0xFFFFFFFF):
        raise ValueError(f"{what}: values must fit in uint32")
    return arr.astype(np.uint32)


def chain_keys(salt: tuple[int, int], tokens: Any, tokens_per_page: int) -> np.ndarray:
    """Chained keys of every full block of `tokens` under a namespace's salt (DESIGN.md §2)."""
    toks = np.ascontiguousarray(np.asarray(tokens).reshape(-1), dtype=np.int32)
    capacity = len(toks) // tokens_per_page if tokens_per_page > 0 else 0
    out = np.zeros((capacity, 2), dtype=np.uint64)
    n = _lib.lib().kvtier_chain_keys(
        _lib.Key(*salt),
        toks.ctypes.data_as(ctypes.POINTER(ctypes.c_int32)),
        len(toks),
        tokens_per_page,
        _key_ptr(out),
        capacity,
    )
    return out[:n]


def key_from_block_hash(
    salt: tuple[int, int], block_hash: Union[int, bytes], parent: Optional[Sequence[int]] = None
) -> np.ndarray:
    """The key of a block named by an engine's own block hash (an int < 2**64, or bytes whose
    length is a multiple of 8, e.g. vLLM's sha256 block hashes), chained after `parent`."""
    if isinstance(block_hash, int):
        block_hash = block_hash.to_bytes(8, "little", signed=block_hash < 0)
    raw = bytes(block_hash)
    out = _lib.Key()
    parent_key = _lib.Key(int(parent[0]), int(parent[1])) if parent is not None else None
    code = _lib.lib().kvtier_key_from_block_hash(
        _lib.Key(*salt),
        ctypes.byref(parent_key) if parent_key is not None else None,
        raw,
        len(raw),
        ctypes.byref(out),
    )
    if code != 0:
        raise error_for(code, _lib.thread_error(), "key_from_block_hash")
    return np.array([out.hi, out.lo], dtype=np.uint64)


class Op:
    """An asynchronous load or store; wait() for its per-page results (again after a timeout)."""

    def __init__(self, client: "Client", op_id: int, count: int, kind: str) -> None:
        self._client = client
        self.id = op_id
        self.count = count
        self.kind = kind
        self._result: Optional[PageResults] = None

    def wait(self, check: bool = False) -> PageResults:
        """Blocks until the daemon answers (the GIL is released meanwhile). With check=True a
        failed page raises KvtierError with its message."""
        if self._result is None:
            codes = np.zeros(self.count, dtype=np.int32)
            tiers = np.full(self.count, 0xFF, dtype=np.uint8)
            page_count = ctypes.c_uint32()
            ok_pages = ctypes.c_uint32()
            lib = _lib.lib()
            rc = lib.kvtier_wait_pages(
                self._client._handle(),
                self.id,
                codes.ctypes.data_as(ctypes.POINTER(ctypes.c_int32)),
                tiers.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8)),
                self.count,
                ctypes.byref(page_count),
                ctypes.byref(ok_pages),
            )
            if rc != 0:
                raise error_for(rc, _lib.thread_error(), f"{self.kind} wait")
            first_error = _lib.thread_error() if ok_pages.value != page_count.value else ""
            n = min(page_count.value, self.count)
            self._result = PageResults(
                codes=[int(c) for c in codes[:n]],
                tiers=[Tier(int(t)) if t != 0xFF else None for t in tiers[:n]],
                ok_pages=int(ok_pages.value),
                first_error=first_error,
            )
        if check and not self._result.ok:
            first_bad = next(c for c in self._result.codes if c != 0)
            raise error_for(first_bad, self._result.first_error, self.kind)
        return self._result


class Client:
    """A connection to kvtierd. Use Client.connect(); close() or a `with` block ends it."""

    def __init__(self, handle: int) -> None:
        self._ptr: Optional[int] = handle
        self.layout: Optional[Layout] = None
        self.info: Optional[HelloInfo] = None
        self._buffers: list[Any] = []  # kept alive while registered

    @classmethod
    def connect(cls, socket_path: Optional[str] = None, timeout: Optional[float] = None) -> "Client":
        """Connects to kvtierd's socket (default: kvtier-data/kvtierd.sock under the current
        directory, where `kvtierd` with no arguments serves). `timeout`: see set_timeout."""
        code = ctypes.c_int(0)
        lib = _lib.lib()
        handle = lib.kvtier_connect(
            socket_path.encode() if socket_path else None, ctypes.byref(code)
        )
        if not handle:
            raise error_for(code.value or 2, _lib.thread_error(), f"connect {socket_path or ''}")
        client = cls(handle)
        if timeout is not None:
            client.set_timeout(timeout)
        return client

    def set_timeout(self, seconds: Optional[float]) -> None:
        """The longest any call waits for kvtierd's reply (None: no limit, the default). A call
        that runs out raises DeadlineExceeded (a TimeoutError). A wait() that runs out leaves its
        operation in flight: wait for it again before reusing its blocks, which the daemon may
        still write; a synchronous call's late reply is dropped."""
        if seconds is not None and not seconds > 0:
            raise ValueError(f"timeout must be positive seconds or None, not {seconds!r}")
        ms = 0 if seconds is None else max(1, int(seconds * 1000 + 0.999))
        self._check(_lib.lib().kvtier_set_timeout_ms(self._handle(), ms), "set_timeout")

    def _handle(self) -> int:
        if self._ptr is None:
            raise ValueError("the kvtier client is closed")
        return self._ptr

    def close(self) -> None:
        """Closes the connection: the daemon drops this session's pins and buffers."""
        if self._ptr is not None:
            _lib.lib().kvtier_close(self._ptr)
            self._ptr = None

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def _check(self, rc: int, operation: str) -> None:
        if rc != 0:
            raise error_for(rc, _lib.thread_error(), operation)

    # ---- session ----

    def hello(self, namespace: str, layout: Layout, client_name: str = "") -> HelloInfo:
        """The versioned handshake: names the namespace and this worker's layout. Raises
        InvalidArgument when the layout's page size is not the daemon's page_bytes."""
        info = _lib.HelloInfo()
        c_layout = layout.to_c()
        self._check(
            _lib.lib().kvtier_hello_info_get(
                self._handle(),
                namespace.encode(),
                ctypes.byref(c_layout),
                client_name.encode(),
                ctypes.byref(info),
            ),
            f"hello {namespace}",
        )
        self.layout = layout
        self.info = HelloInfo(
            salt=(int(info.salt.hi), int(info.salt.lo)),
            page_bytes=int(info.page_bytes),
            hbm_backend=info.hbm_backend.decode(),
            max_inflight_ops=int(info.max_inflight_ops),
            max_pinned_pages=int(info.max_pinned_pages),
            max_batch_pages=int(info.max_batch_pages),
        )
        return self.info

    def register_buffers(self, buffers: HostBuffers) -> None:
        """Registers memfd-backed host buffers (HostBuffers) in layout order."""
        self.register_fds(buffers.fds, buffers.sizes)
        self._buffers.append(buffers)

    def register_fds(self, fds: Sequence[int], sizes: Sequence[int]) -> None:
        """Registers memfds someone else allocated (e.g. SGLang's shm host pool), in layout order:
        buffer i is the first sizes[i] bytes of fds[i]. A memfd sealed against shrinking
        (F_SEAL_SHRINK) is mapped by the daemon; any other is copied through its fd, so a
        worker that shrinks it fails its own pages, never the daemon. The caller keeps the fds
        open (the daemon holds its own duplicates) and the memory alive while registered."""
        if len(fds) != len(sizes):
            raise ValueError(f"{len(fds)} fds but {len(sizes)} sizes")
        c_fds = (ctypes.c_int * len(fds))(*fds)
        c_sizes = (ctypes.c_uint64 * len(fds))(*sizes)
        self._check(
            _lib.lib().kvtier_register_buffers(self._handle(), c_fds, c_sizes, len(fds)),
            "register_buffers",
        )

    def register_tensors(self, tensors: Sequence[Any]) -> None:
        """Registers KV tensors. CPU tensors must come from HostBuffers.torch() (or .numpy()) of
        one HostBuffers; CUDA tensors go through register_cuda_tensors (CUDA IPC)."""
        if tensors and getattr(tensors[0], "is_cuda", False):
            register_cuda_tensors(self, tensors)
            return
        for owner in _live_host_buffers(tensors):
            self.register_buffers(owner)
            return
        raise TypeError(
            "host KV tensors must be memfd-backed for the daemon to map them: create them with "
            "kvtier.HostBuffers(layout).torch() (or .numpy()) and register that HostBuffers"
        )

    # ---- keys ----

    @property
    def salt(self) -> tuple[int, int]:
        if self.info is None:
            raise ValueError("hello() first: the key salt comes from the namespace")
        return self.info.salt

    def chain_keys(self, tokens: Any, tokens_per_page: Optional[int] = None) -> np.ndarray:
        """Keys of every full block of `tokens` in this namespace."""
        tpp = tokens_per_page or (self.layout.tokens_per_page if self.layout else 0)
        return chain_keys(self.salt, tokens, tpp)

    def key_from_block_hash(
        self, block_hash: Union[int, bytes], parent: Optional[Sequence[int]] = None
    ) -> np.ndarray:
        return key_from_block_hash(self.salt, block_hash, parent)

    def engine_keys(self, engine: str, keys: Iterable[Any], cache_salt: Any = None) -> np.ndarray:
        """Keys of blocks a serving engine names by its own hashes (kvtier.engine_keys' rule)."""
        from .engine_keys import engine_keys  # engine_keys imports this module

        return engine_keys(self.salt, engine, keys, cache_salt)

    # ---- pages ----

    def lookup(self, keys: KeyLike) -> LookupResult:
        """How long a prefix of `keys` is cached, and the tier of each of its pages."""
        k = as_keys(keys)
        prefix = ctypes.c_size_t()
        tiers = np.zeros(len(k), dtype=np.uint8)
        self._check(
            _lib.lib().kvtier_lookup(
                self._handle(),
                _key_ptr(k),
                len(k),
                ctypes.byref(prefix),
                tiers.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8)),
            ),
            "lookup",
        )
        n = int(prefix.value)
        return LookupResult(prefix_pages=n, tiers=[Tier(int(t)) for t in tiers[:n]])

    def load(self, keys: KeyLike, block_ids: Iterable[int]) -> Op:
        """The daemon copies page keys[i] into this worker's block block_ids[i]."""
        k = as_keys(keys)
        ids = _u32(block_ids, len(k), "load block_ids")
        op = ctypes.c_uint64()
        self._check(
            _lib.lib().kvtier_load_submit(
                self._handle(),
                _key_ptr(k),
                ids.ctypes.data_as(ctypes.POINTER(ctypes.c_uint32)),
                len(k),
                ctypes.byref(op),
            ),
            "load",
        )
        return Op(self, int(op.value), len(k), "load")

    def store(
        self,
        keys: KeyLike,
        block_ids: Iterable[int],
        parent: Optional[Sequence[int]] = None,
        first_position: int = 0,
        class_hints: Optional[Sequence[int]] = None,
        stats: Optional[AttentionStats] = None,
    ) -> Op:
        """The daemon copies block block_ids[i] of this worker into its pools as page keys[i].
        `parent` is the key before keys[0] (None at a sequence start), `first_position` the page
        index of keys[0] in its sequence, `class_hints` one PageClass per key (memory intent)."""
        k = as_keys(keys)
        n = len(k)
        ids = _u32(block_ids, n, "store block_ids")
        hints = None
        if class_hints is not None:
            hints = np.ascontiguousarray(np.asarray(class_hints, dtype=np.uint8))
            if hints.shape != (n,):
                raise ValueError(f"class_hints: expected {n} values, got shape {hints.shape}")
        parent_key = _lib.Key(int(parent[0]), int(parent[1])) if parent is not None else None
        keep: list[np.ndarray] = []
        c_stats = _attention(stats, n, keep) if stats is not None else None
        op = ctypes.c_uint64()
        self._check(
            _lib.lib().kvtier_store_submit_stats(
                self._handle(),
                _key_ptr(k),
                ids.ctypes.data_as(ctypes.POINTER(ctypes.c_uint32)),
                n,
                ctypes.byref(parent_key) if parent_key is not None else None,
                first_position,
                hints.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8)) if hints is not None else None,
                ctypes.byref(c_stats) if c_stats is not None else None,
                ctypes.byref(op),
            ),
            "store",
        )
        return Op(self, int(op.value), n, "store")

    def report(self, keys: KeyLike, stats: AttentionStats) -> None:
        """Feeds attention statistics of cached pages into the daemon's scorer."""
        k = as_keys(keys)
        keep: list[np.ndarray] = []
        c_stats = _attention(stats, len(k), keep)
        self._check(
            _lib.lib().kvtier_report(self._handle(), _key_ptr(k), len(k), ctypes.byref(c_stats)),
            "report",
        )

    def pin(self, keys: KeyLike) -> None:
        k = as_keys(keys)
        self._check(_lib.lib().kvtier_pin(self._handle(), _key_ptr(k), len(k)), "pin")

    def unpin(self, keys: KeyLike) -> None:
        k = as_keys(keys)
        self._check(_lib.lib().kvtier_unpin(self._handle(), _key_ptr(k), len(k)), "unpin")

    def release(self, keys: Optional[KeyLike] = None) -> int:
        """Drops this session's pins on `keys` (all of them when None): the sequence is done.
        Returns how many pins were dropped."""
        k = as_keys(keys if keys is not None else np.zeros((0, 2), dtype=np.uint64))
        released = ctypes.c_uint32()
        self._check(
            _lib.lib().kvtier_release_count(
                self._handle(), _key_ptr(k), len(k), ctypes.byref(released)
            ),
            "release",
        )
        return int(released.value)

    # ---- daemon state ----

    def status(self) -> dict[str, Any]:
        """The daemon's StatusReply (client/proto/kvtier.proto) as a dict."""
        return self._json(_lib.lib().kvtier_status_json, "status")

    def stats(self) -> dict[str, Any]:
        """The daemon's StatsReply as a dict (tiers, pages, hits, pins, sessions, ...)."""
        return self._json(_lib.lib().kvtier_stats_json, "stats")

    def _json(self, fn: Any, operation: str) -> dict[str, Any]:
        out = ctypes.c_void_p()
        self._check(fn(self._handle(), ctypes.byref(out)), operation)
        try:
            reply: dict[str, Any] = _ints(json.loads(ctypes.string_at(out).decode()))
            return reply
        finally:
            _lib.lib().kvtier_free(out)


def _ints(value: Any) -> Any:
    """Protobuf's JSON mapping writes 64-bit integers as strings; they are ints here."""
    if isinstance(value, dict):
        return {k: _ints(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_ints(v) for v in value]
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return value


def _attention(stats: AttentionStats, count: int, keep: list[np.ndarray]) -> _lib.Attention:
    """The C struct over float32 copies of the present arrays (kept alive in `keep`)."""
    out = _lib.Attention()
    for name in ("mass", "breadth", "value_norm", "mass_entropy"):
        values = getattr(stats, name)
        if values is None:
            continue
        arr = np.ascontiguousarray(np.asarray(values, dtype=np.float32))
        if arr.shape != (count,):
            raise ValueError(f"attention {name}: expected {count} values, got shape {arr.shape}")
        keep.append(arr)
        setattr(out, name, arr.ctypes.data_as(ctypes.POINTER(ctypes.c_float)))
    return out


def _live_host_buffers(tensors: Sequence[Any]) -> list[HostBuffers]:
    """The HostBuffers whose mappings back `tensors`, in order (empty when they are not ours)."""
    addresses = []
    for t in tensors:
        if hasattr(t, "data_ptr"):
            addresses.append(int(t.data_ptr()))
        elif hasattr(t, "ctypes"):
            addresses.append(int(t.ctypes.data))
        else:
            return []
    for owner in list(HostBuffers.instances):
        if not owner.maps:
            continue
        starts = [ctypes.addressof(ctypes.c_char.from_buffer(m)) for m in owner.maps]
        if starts == addresses:
            return [owner]
    return []
