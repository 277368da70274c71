"""kvtier.lmcache inside LMCache's own classes (the pinned PyPI LMCache), against a real
kvtierd, on CPU.

LMCache builds the backends itself from its config: LocalCPUBackend (its CPU allocator, the
buffer every remote read lands in) and a RemoteBackend for the `kvtier` remote storage plugin,
which LMCache's ConnectorManager imports by module path and class name and wraps in its
InstrumentedRemoteConnector. Most tests drive the StorageManager's own calls (batched_put,
contains, batched_contains, get_block_mapping, get, batched_get) and the RemoteBackend's batched
lookups with chunk keys made here; one drives two LMCacheEngines (store, lookup, retrieve) in
two processes, whose token database makes the chunk keys from token ids and request tags.
What does not run here: LMCache's GPU connectors (CUDA kernels copying between vLLM's or
SGLang's paged KV and LMCache's chunks); CreateGPUConnector has none for a CPU-only host, so
the engine test passes its KV through CpuKVConnector, a stand-in for those copies only.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import subprocess
import sys
import time
import unittest
from typing import Any, Callable, Optional

import numpy as np
import torch

import kvtier
from kvtier import lmcache as kvtier_lmcache
from kvtierd_fixture import Daemon
from lmcache.utils import CacheEngineKey
from lmcache.v1.cache_engine import LMCacheEngine, LMCacheEngineBuilder
from lmcache.v1.config import LMCacheEngineConfig
from lmcache.v1.event_manager import EventManager
from lmcache.v1.gpu_connector.gpu_connectors import GPUConnectorInterface
from lmcache.v1.memory_management import MemoryObj
from lmcache.v1.metadata import LMCacheMetadata
from lmcache.v1.storage_backend.storage_manager import StorageManager

SEED = int(os.environ.get("KVTIER_TEST_SEED", random.randrange(1 << 31)))
print(f"lmcache_test seed {SEED} (KVTIER_TEST_SEED={SEED} repeats it)", flush=True)

MODEL = "kvtier-test/tiny-llama"
LAYERS, HEADS, HEAD_DIM, CHUNK = 2, 2, 16, 16
# One chunk: K and V of CHUNK tokens in every layer, bf16: 2 * 2 * 16 * 2 * 16 * 2 bytes.
CHUNK_BYTES = 2 * LAYERS * CHUNK * HEADS * HEAD_DIM * 2
MLA_DIM = 48
MLA_CHUNK_BYTES = LAYERS * CHUNK * MLA_DIM * 2
PLUGIN = "kvtier"
REMOTE = f"RemoteBackend-{PLUGIN}"
# The engine is not one of kvtierd's admin uids, as in a deployment (no status or stats for it).
NOT_ADMIN = f"admin_uids: [{os.getuid() + 4242}]\n"
WAIT_S = 30.0  # bound on waiting for LMCache's asynchronous remote puts to land


def metadata(mla: bool = False) -> LMCacheMetadata:
    # MLA: one latent row per token and layer instead of K and V per head.
    shape = (LAYERS, 1, CHUNK, 1, MLA_DIM) if mla else (LAYERS, 2, CHUNK, HEADS, HEAD_DIM)
    return LMCacheMetadata(model_name=MODEL, world_size=1, local_world_size=1, worker_id=0,
                           local_worker_id=0, kv_dtype=torch.bfloat16, kv_shape=shape,
                           use_mla=mla, role="worker", chunk_size=CHUNK)


def config(socket: str, namespace: str = "lmcache-test", cache_salt: str = "",
           extra: Optional[dict[str, Any]] = None) -> LMCacheEngineConfig:
    cfg = LMCacheEngineConfig.from_defaults(chunk_size=CHUNK, local_cpu=True,
                                            max_local_cpu_size=0.02, remote_serde="naive",
                                            lmcache_instance_id="kvtier-lmcache-test")
    cfg.remote_storage_plugins = [PLUGIN]
    cfg.extra_config = {
        f"remote_storage_plugin.{PLUGIN}.module_path": "kvtier.lmcache",
        f"remote_storage_plugin.{PLUGIN}.class_name": "KvtierConnector",
        "kvtier.socket_path": socket,
        "kvtier.namespace": namespace,
        "kvtier.cache_salt": cache_salt,
        "kvtier.staging_chunks": 4,  # fewer than a batch: batches go in rounds
        "kvtier.reconnect_interval_s": 0,
        **(extra or {}),
    }
    return cfg


def wait_for(what: str, predicate: Callable[[], bool]) -> None:
    """Polls `predicate` (LMCache's remote puts are asynchronous) up to WAIT_S."""
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {WAIT_S} s waiting for {what}")
        time.sleep(0.01)


class CpuKVConnector(GPUConnectorInterface):
    """LMCache's GPU-connector interface over one unpaged CPU KV tensor [2, layers, tokens,
    kv_heads * head_dim], passed as `kvcaches`. It stands in for the CUDA copy kernels only:
    LMCache 0.5.6's CreateGPUConnector has no CPU connector for vLLM ("No supported cpu connector
    found"). LMCacheEngine, its token database (chunk keys from token ids and request tags), the
    StorageManager and the RemoteBackend around kvtier are LMCache's own."""

    def get_shape(self, num_tokens: int) -> torch.Size:
        return torch.Size([2, LAYERS, num_tokens, HEADS * HEAD_DIM])

    def from_gpu(self, memory_obj: MemoryObj, start: int, end: int, **kwargs: Any) -> None:
        memory_obj.tensor.copy_(kwargs["kvcaches"][:, :, start:end])

    def to_gpu(self, memory_obj: MemoryObj, start: int, end: int, **kwargs: Any) -> None:
        kwargs["kvcaches"][:, :, start:end].copy_(memory_obj.tensor)

    def batched_from_gpu(self, memory_objs: Any, starts: list[int], ends: list[int],
                         **kwargs: Any) -> None:
        for obj, start, end in zip(memory_objs, starts, ends, strict=True):
            self.from_gpu(obj, start, end, **kwargs)

    def batched_to_gpu(self, memory_objs: Any = None, starts: Any = None, ends: Any = None,
                       **kwargs: Any) -> None:
        for obj, start, end in zip(memory_objs, starts, ends, strict=True):
            self.to_gpu(obj, start, end, **kwargs)


def engine(name: str, socket: str) -> LMCacheEngine:
    """An LMCacheEngine as a serving engine's LMCache integration builds one (post_init makes
    its StorageManager, which loads the kvtier plugin); LMCacheEngineBuilder.destroy(name) ends it."""
    eng = LMCacheEngineBuilder.get_or_create(name, config(socket), metadata(), CpuKVConnector(),
                                             lambda tensor, rank: None, lambda obj, rank: obj)
    eng.post_init()
    return eng


SEQUENCE_CHUNKS = 5  # full chunks of a sequence; 3 more tokens make a partial last chunk


def sequence(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and their KV (random bf16) for one request, from a seed."""
    g = torch.Generator().manual_seed(seed)
    n = SEQUENCE_CHUNKS * CHUNK + 3
    tokens = torch.randint(0, 32000, (n,), generator=g)
    kv = torch.randn(2, LAYERS, n, HEADS * HEAD_DIM, generator=g).to(torch.bfloat16)
    return tokens, kv


def store_in_this_process(socket: str, seed: int, user: str) -> None:
    """The writer engine of test_engines_in_two_processes_share_chunks (run as a subprocess)."""
    eng = engine("writer", socket)
    try:
        tokens, kv = sequence(seed)
        tags = {"lmcache.tag.user": user}
        eng.store(tokens, kvcaches=kv, request_configs=tags)
        wait_for("the writer's remote puts", lambda: eng.lookup(
            tokens, search_range=[REMOTE], request_configs=tags) == SEQUENCE_CHUNKS * CHUNK)
    finally:
        LMCacheEngineBuilder.destroy("writer")


class LMCacheTest(unittest.TestCase):
    def setUp(self) -> None:
        self.rng = np.random.default_rng(SEED)
        self.daemon = Daemon(CHUNK_BYTES, hbm_pages=64, dram_pages=64, extra_yaml=NOT_ADMIN)
        self.addCleanup(self.daemon.close)

    # ---- helpers ----

    def manager(self, socket: str = "", mla: bool = False, **kwargs: Any) -> StorageManager:
        m = StorageManager(config(socket or self.daemon.socket, **kwargs), metadata(mla),
                           EventManager())
        self.addCleanup(m.close)
        self.assertIn(REMOTE, m.storage_backends, "LMCache did not load the kvtier plugin")
        return m

    def connector(self, m: StorageManager) -> kvtier_lmcache.KvtierConnector:
        wrapped = m.storage_backends[REMOTE].connection  # LMCache's InstrumentedRemoteConnector
        self.assertIsNotNone(wrapped)
        inner = wrapped.getWrappedConnector()
        self.assertIsInstance(inner, kvtier_lmcache.KvtierConnector)
        return inner

    def keys(self, n: int, tags: Optional[dict[str, str]] = None) -> list[CacheEngineKey]:
        configs = {f"lmcache.tag.{k}": v for k, v in (tags or {}).items()}
        return [CacheEngineKey(MODEL, 1, 0, int(self.rng.integers(1, 1 << 62)), torch.bfloat16,
                               request_configs=dict(configs)) for _ in range(n)]

    def put(self, m: StorageManager, keys: list[CacheEngineKey]) -> list[bytes]:
        """Chunks of random bytes put through LMCache (local CPU and the kvtier remote), as
        LMCache's cache engine does after a prefill; returns their bytes."""
        md = m.metadata
        size = kvtier_lmcache.chunk_bytes(md)
        objs: list[MemoryObj] = []
        originals = []
        for _ in keys:
            obj = m.allocate(md.get_shapes(), md.get_dtypes())
            self.assertIsNotNone(obj, "LMCache's CPU allocator is full")
            data = self.rng.integers(0, 256, size, dtype=np.uint8)
            np.frombuffer(obj.byte_array, dtype=np.uint8)[:] = data
            originals.append(data.tobytes())
            objs.append(obj)
        m.batched_put(keys, objs)  # takes the allocator's references
        return originals

    def store_remote(self, m: StorageManager, keys: list[CacheEngineKey]) -> list[bytes]:
        """put(), then waits until kvtierd holds every chunk and drops LMCache's local copy."""
        originals = self.put(m, keys)
        wait_for("the remote puts", lambda: self.remote_prefix(m, keys) == len(keys))
        self.drop_local(m, keys)
        return originals

    def capture_log(self, name: str) -> list[logging.LogRecord]:
        """The records of logger `name` from now to the end of the test (LMCache's loggers do
        not propagate to the root)."""
        records: list[logging.LogRecord] = []
        handler = logging.Handler()
        handler.emit = records.append  # type: ignore[method-assign]
        log = logging.getLogger(name)
        log.addHandler(handler)
        self.addCleanup(log.removeHandler, handler)
        return records

    def remote_prefix(self, m: StorageManager, keys: list[CacheEngineKey]) -> int:
        return m.storage_backends[REMOTE].batched_contains(keys)

    def drop_local(self, m: StorageManager, keys: list[CacheEngineKey]) -> None:
        """Removes LMCache's local CPU copy, so reads must come from kvtierd."""
        wait_for("LMCache's local puts", lambda: all(
            m.contains(k, search_range=["LocalCPUBackend"]) is not None for k in keys))
        m.batched_remove(keys, locations=["LocalCPUBackend"])
        for k in keys:
            self.assertIsNone(m.contains(k, search_range=["LocalCPUBackend"]))

    def retrieve(self, m: StorageManager, keys: list[CacheEngineKey]) -> list[Optional[MemoryObj]]:
        """The chunks of `keys` the way LMCache's cache engine retrieves them: a block mapping by
        prefix lookups over the backends, then one batched get per location."""
        infos = [(k, i * CHUNK, (i + 1) * CHUNK) for i, k in enumerate(keys)]
        mapping = m.get_block_mapping(infos)
        out: list[Optional[MemoryObj]] = []
        for location, blocks in mapping.items():
            self.assertEqual(location, REMOTE, "a chunk was served from LMCache's local copy")
            out += m.batched_get([k for k, _, _ in blocks], location=location)
        return out + [None] * (len(keys) - len(out))

    def assert_bytes(self, objs: list[Optional[MemoryObj]], originals: list[bytes]) -> None:
        self.assertEqual(len(objs), len(originals))
        for i, (obj, want) in enumerate(zip(objs, originals)):
            self.assertIsNotNone(obj, f"chunk {i} missed")
            assert obj is not None
            self.assertEqual(bytes(obj.byte_array), want, f"chunk {i} differs")
            obj.ref_count_down()

    # ---- tests ----

    def test_put_drop_local_get_back_bit_identical(self) -> None:
        m = self.manager()
        layout = self.connector(m).layout  # the model's own dimensions, one chunk per page
        self.assertEqual((layout.layers, layout.kv_heads, layout.head_dim, layout.tokens_per_page,
                          layout.dtype), (LAYERS, HEADS, HEAD_DIM, CHUNK, "bf16"))
        keys = self.keys(6)
        originals = self.store_remote(m, keys)

        # Lookups now find the chunks in kvtierd only.
        self.assertEqual(m.contains(keys[2]), REMOTE)
        hit, mapping = m.batched_contains(keys)
        self.assertEqual(hit, 6)
        self.assertEqual(list(mapping), [REMOTE])
        # Batched get (one kvtier load per round of staging blocks), then single gets.
        self.assert_bytes(self.retrieve(m, keys), originals)
        self.assert_bytes([m.get(k, location=REMOTE) for k in keys], originals)

        # The pages are where the documented key rule says (kvtier.engine_keys, engine
        # "lmcache", the chunk key's string form): a plain kvtier client finds them.
        with kvtier.Client.connect(self.daemon.socket) as c:
            c.hello("lmcache-test", kvtier_lmcache.page_layout(metadata(), 1))
            rule = c.engine_keys("lmcache", [k.to_string() for k in keys], None)
            self.assertEqual(c.lookup(rule).prefix_pages, 6)
            other = c.engine_keys("vllm", [k.to_string() for k in keys], None)
            self.assertEqual(c.lookup(other).prefix_pages, 0)

    def test_contains_is_a_prefix_lookup(self) -> None:
        m = self.manager()
        keys = self.keys(6)
        stored = [keys[i] for i in (0, 1, 2, 4, 5)]  # a gap at 3
        self.put(m, stored)
        wait_for("the remote puts", lambda: all(
            self.remote_prefix(m, [k]) == 1 for k in stored))
        self.drop_local(m, stored)
        backend = m.storage_backends[REMOTE]
        self.assertEqual(backend.batched_contains(keys), 3)
        self.assertEqual(m.batched_contains(keys)[0], 3)
        self.assertEqual(backend.batched_contains(keys[3:]), 0)
        self.assertEqual(backend.batched_contains(keys[4:]), 2)
        self.assertIsNone(m.contains(keys[3]))
        self.assertEqual(m.contains(keys[4]), REMOTE)
        # The asynchronous lookup LMCache's scheduler-side prefetch uses.
        loop = asyncio.new_event_loop()
        self.addCleanup(loop.close)
        self.assertEqual(loop.run_until_complete(
            backend.batched_async_contains("lookup-1", keys)), 3)
        # batched_get_non_blocking returns the hit prefix only.
        objs = loop.run_until_complete(backend.batched_get_non_blocking("lookup-1", keys))
        self.assertEqual(len(objs), 3)
        for obj in objs:
            obj.ref_count_down()

    def test_single_key_calls(self) -> None:
        # The interface's one-key calls, through LMCache's InstrumentedRemoteConnector (which
        # drops the put's reference afterwards, as RemoteBackend's single-key put relies on).
        m = self.manager()
        wrapped = m.storage_backends[REMOTE].connection
        loop = asyncio.new_event_loop()
        self.addCleanup(loop.close)
        key, absent = self.keys(2)
        md = m.metadata
        obj = m.allocate(md.get_shapes(), md.get_dtypes())
        data = self.rng.integers(0, 256, CHUNK_BYTES, dtype=np.uint8)
        np.frombuffer(obj.byte_array, dtype=np.uint8)[:] = data
        loop.run_until_complete(wrapped.put(key, obj))
        self.assertTrue(loop.run_until_complete(wrapped.exists(key)))
        self.assertTrue(wrapped.exists_sync(key))
        self.assertFalse(loop.run_until_complete(wrapped.exists(absent)))
        self.assertFalse(wrapped.exists_sync(absent))
        self.assertIsNone(loop.run_until_complete(wrapped.get(absent)))
        self.assert_bytes([loop.run_until_complete(wrapped.get(key))], [data.tobytes()])
        both = loop.run_until_complete(wrapped.batched_get([key, absent]))
        self.assertIsNone(both[1])
        self.assert_bytes(both[:1], [data.tobytes()])

    def test_kvtierd_killed_gives_misses_then_reconnects(self) -> None:
        m = self.manager()
        conn = self.connector(m)
        keys = self.keys(4)
        self.store_remote(m, keys)

        records = self.capture_log("kvtier.lmcache")
        self.daemon.stop(signal.SIGKILL)
        # Every call LMCache makes is a miss, none raises.
        self.assertEqual(m.batched_get(keys, location=REMOTE), [None] * 4)
        self.assertEqual(self.retrieve(m, keys), [None] * 4)
        self.assertIsNone(m.get(keys[0]))
        self.assertIsNone(m.contains(keys[0]))
        self.assertEqual(m.batched_contains(keys)[0], 0)
        more = self.keys(2)
        self.put(m, more)  # dropped, not raised
        wait_for("LMCache's local puts", lambda: all(
            m.contains(k, search_range=["LocalCPUBackend"]) is not None for k in more))
        self.assertFalse(conn.connected)
        # LMCache's health monitor pings remote connectors: down is non-zero.
        wrapped = m.storage_backends[REMOTE].connection
        self.assertTrue(wrapped.support_ping())
        loop = asyncio.new_event_loop()
        self.addCleanup(loop.close)
        self.assertNotEqual(loop.run_until_complete(wrapped.ping()), 0)
        # Each of those calls tried to reconnect (reconnect_interval_s 0); the log says so once
        # per kvtier.log_interval_s (30 s), not once per call.
        lines = [r.getMessage() for r in records if r.levelno == logging.WARNING]
        self.assertEqual(sum("cannot connect to kvtierd" in line for line in lines), 1, lines)
        self.assertEqual(sum("kvtierd went away" in line for line in lines), 1, lines)

        # A restarted kvtierd (memory tiers: it starts empty) is used again without any call
        # from the test to the connector: the next LMCache call reconnects.
        self.daemon.start()
        self.assertEqual(self.remote_prefix(m, keys), 0)
        self.assertTrue(conn.connected)
        self.assertEqual(loop.run_until_complete(wrapped.ping()), 0)
        again = self.keys(3)
        originals = self.store_remote(m, again)
        self.assert_bytes(self.retrieve(m, again), originals)

    def test_engine_started_before_kvtierd_connects_later(self) -> None:
        self.daemon.stop()
        m = self.manager()  # LMCache still gets its kvtier backend, not yet connected
        conn = self.connector(m)
        self.assertFalse(conn.connected)
        keys = self.keys(2)
        self.assertEqual(self.remote_prefix(m, keys), 0)
        self.daemon.start()
        originals = self.store_remote(m, keys)
        self.assertTrue(conn.connected)
        self.assert_bytes(self.retrieve(m, keys), originals)

    def test_tenant_salts_are_isolated_with_paired_control(self) -> None:
        # The tenant salt of extra_config: two LMCache instances, same namespace, same chunks.
        a = self.manager(cache_salt="tenant-a")
        b = self.manager(cache_salt="tenant-b")
        keys = self.keys(4)
        originals = self.put(a, keys)
        wait_for("the remote puts", lambda: self.remote_prefix(a, keys) == 4)
        self.assertEqual(self.remote_prefix(b, keys), 0)
        self.assertEqual(b.batched_get(keys, location=REMOTE), [None] * 4)
        # Control: a second instance with tenant-a's salt hits, byte for byte.
        a2 = self.manager(cache_salt="tenant-a")
        self.assertEqual(self.remote_prefix(a2, keys), 4)
        self.assert_bytes(self.retrieve(a2, keys), originals)

        # The per-request tenant tag (LMCache's lmcache.tag.* request configs).
        hashes = [k.chunk_hash for k in self.keys(3)]

        def tagged(user: str) -> list[CacheEngineKey]:
            return [CacheEngineKey(MODEL, 1, 0, h, torch.bfloat16,
                                   request_configs={"lmcache.tag.user": user}) for h in hashes]

        originals = self.put(a, tagged("alice"))
        wait_for("the tagged puts", lambda: self.remote_prefix(a, tagged("alice")) == 3)
        self.assertEqual(self.remote_prefix(a, tagged("bob")), 0)
        self.assertEqual(self.remote_prefix(a2, tagged("bob")), 0)
        self.assertEqual(self.remote_prefix(a2, tagged("alice")), 3)
        self.assert_bytes(self.retrieve(a2, tagged("alice")), originals)

    def test_mla_chunks_round_trip_in_a_byte_layout(self) -> None:
        # An MLA chunk is not 2 x layers x heads x head_dim: kvtier describes it as bytes.
        self.assertEqual(kvtier_lmcache.chunk_bytes(metadata(mla=True)), MLA_CHUNK_BYTES)
        daemon = Daemon(MLA_CHUNK_BYTES, extra_yaml=NOT_ADMIN)
        self.addCleanup(daemon.close)
        m = self.manager(socket=daemon.socket, mla=True, namespace="lmcache-test-mla")
        layout = self.connector(m).layout
        self.assertEqual((layout.layers, layout.dtype, layout.page_bytes),
                         (1, "fp8", MLA_CHUNK_BYTES))
        keys = self.keys(5)
        originals = self.store_remote(m, keys)
        self.assert_bytes(self.retrieve(m, keys), originals)

    def test_engines_in_two_processes_share_chunks(self) -> None:
        # One LMCache engine stores a request's KV through kvtier and exits; another, in this
        # process, finds and retrieves it: LMCache's own chunk keys, computed in two processes.
        seed = int(self.rng.integers(0, 1 << 31))
        writer = subprocess.run([sys.executable, __file__, "--store", self.daemon.socket,
                                 str(seed), "alice"], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, timeout=300)
        self.assertEqual(writer.returncode, 0, writer.stdout[-4000:])
        tokens, kv = sequence(seed)
        reader = engine("reader", self.daemon.socket)
        self.addCleanup(LMCacheEngineBuilder.destroy, "reader")
        alice, bob = {"lmcache.tag.user": "alice"}, {"lmcache.tag.user": "bob"}
        full = SEQUENCE_CHUNKS * CHUNK  # the partial last chunk is not stored
        self.assertEqual(reader.lookup(tokens, request_configs=alice), full)
        self.assertEqual(reader.lookup(tokens, request_configs=bob), 0)  # another tenant's tag
        self.assertEqual(reader.lookup(tokens), 0)  # no tag at all
        out = torch.zeros_like(kv)
        got = reader.retrieve(tokens, kvcaches=out, request_configs=alice)
        self.assertEqual(int(got.sum()), full)
        self.assertTrue(torch.equal(out[:, :, :full], kv[:, :, :full]))
        self.assertFalse(bool(out[:, :, full:].any()))
        nothing = torch.zeros_like(kv)
        self.assertEqual(int(reader.retrieve(tokens, kvcaches=nothing,
                                             request_configs=bob).sum()), 0)
        self.assertFalse(bool(nothing.any()))

    def test_page_size_mismatch_fails_at_connect(self) -> None:
        wrong = Daemon(2 * CHUNK_BYTES, extra_yaml=NOT_ADMIN)
        self.addCleanup(wrong.close)
        cfg = config(wrong.socket)
        # Directly: the connector refuses to start, naming both sizes and the setting.
        loop = asyncio.new_event_loop()
        self.addCleanup(loop.close)
        with self.assertRaises(kvtier_lmcache.PageSizeMismatch) as raised:
            kvtier_lmcache.KvtierConnector(loop, None, cfg, metadata())
        text = str(raised.exception)
        for needle in (str(2 * CHUNK_BYTES), str(CHUNK_BYTES), "store.page_bytes",
                       f"chunk_size {CHUNK}"):
            self.assertIn(needle, text)
        # Through LMCache: its backend factory logs the message and runs without the backend.
        records = self.capture_log("lmcache.v1.storage_backend")
        m = StorageManager(cfg, metadata(), EventManager())
        self.addCleanup(m.close)
        self.assertNotIn(REMOTE, m.storage_backends)
        self.assertTrue(any("store.page_bytes" in r.getMessage() for r in records),
                        [r.getMessage() for r in records])


if __name__ == "__main__":
    if sys.argv[1:2] == ["--store"]:
        store_in_this_process(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    else:
        unittest.main(verbosity=2)
