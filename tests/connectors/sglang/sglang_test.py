"""kvtier.sglang against SGLang's own code (sglang 0.5.23 from PyPI) and a real kvtierd.

Everything SGLang-side is SGLang's: its device KV pool (MHATokenToKVPool, built on CPU) and the
host pool made from it (MHATokenToKVPoolHost, `shm` allocator, `page_first` layout), the backend
created through StorageBackendFactory's `dynamic` backend from the extra-config JSON an operator
passes, and the page keys from SGLang's own storage hash (get_storage_hash_str over a RadixKey,
seeded with the request's extra_key). The calls are the ones HiCacheController makes with
`interface_v1`: batch_exists, batch_set_v1, batch_get_v1 by host token index.
"""

from __future__ import annotations

import fcntl
import os
import random
import signal
import sys
import threading
import time
import unittest
from array import array
from typing import Any, Optional

# SGLang compiles its page-hash extension on first use: keep the build with the virtualenv (the
# cache scripts/python_env manages) instead of the user's home.
os.environ.setdefault(
    "TORCH_EXTENSIONS_DIR", os.path.join(os.path.dirname(os.path.dirname(sys.executable)),
                                         "torch_extensions")
)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from sglang.srt.mem_cache.hicache_storage import (  # noqa: E402
    HiCacheStorageConfig,
    HiCacheStorageExtraInfo,
)
from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool  # noqa: E402
from sglang.srt.mem_cache.pool_host.mha import MHATokenToKVPoolHost  # noqa: E402
from sglang.srt.mem_cache.radix_cache import RadixKey  # noqa: E402
from sglang.srt.mem_cache.storage.backend_factory import StorageBackendFactory  # noqa: E402
from sglang.srt.mem_cache.utils import get_storage_hash_str  # noqa: E402

import torch.distributed as dist  # noqa: E402
from sglang.srt.managers.cache_controller import HiCacheController  # noqa: E402
from sglang.srt.mem_cache.allocator.paged import PagedTokenToKVPoolAllocator  # noqa: E402
from sglang.srt.runtime_context import get_parallel  # noqa: E402

from kvtier.sglang import KvtierHiCacheStorage, PageSizeMismatch  # noqa: E402
from kvtierd_fixture import Daemon  # noqa: E402

SEED = int(os.environ.get("KVTIER_TEST_SEED", random.randrange(1 << 31)))
print(f"sglang_test seed {SEED} (KVTIER_TEST_SEED={SEED} repeats it)", flush=True)

PAGE_SIZE, LAYERS, HEADS, HEAD_DIM, DTYPE = 16, 4, 2, 64, torch.bfloat16
# One SGLang host page: page_size x layers x K+V x heads x head_dim x 2 bytes.
PAGE_BYTES = PAGE_SIZE * LAYERS * 2 * HEADS * HEAD_DIM * 2  # 32 KiB
DEVICE_TOKENS = 64


def device_pool() -> MHATokenToKVPool:
    return MHATokenToKVPool(size=DEVICE_TOKENS, page_size=PAGE_SIZE, dtype=DTYPE, head_num=HEADS,
                            head_dim=HEAD_DIM, layer_num=LAYERS, device="cpu",
                            enable_memory_saver=False, enable_alt_stream=False)


def host_pool(allocator: str = "shm", layout: str = "page_first",
              device: Optional[MHATokenToKVPool] = None) -> MHATokenToKVPoolHost:
    """SGLang's host pool, built as its scheduler builds it: from a device pool's buffer info."""
    device = device or device_pool()
    return MHATokenToKVPoolHost(device._mha_buffer_info(), host_to_device_ratio=4.0, host_size=0,
                                page_size=PAGE_SIZE, layout=layout, pin_memory=False,
                                device="cpu", allocator_type=allocator,
                                device_capacity_tokens=DEVICE_TOKENS, start_layer=0,
                                end_layer=LAYERS)


def backend(socket: str, pool: MHATokenToKVPoolHost, **extra: Any) -> KvtierHiCacheStorage:
    """The backend as SGLang makes it from --hicache-storage-backend dynamic and its JSON."""
    config = {"backend_name": "kvtier", "module_path": "kvtier.sglang",
              "class_name": "KvtierHiCacheStorage", "interface_v1": 1, "allocator": "shm",
              "socket_path": socket, "reconnect_interval_s": 0, **extra}
    storage_config = HiCacheStorageConfig(
        tp_rank=0, tp_size=1, pp_rank=0, pp_size=1, attn_cp_rank=0, attn_cp_size=1,
        is_mla_model=False, enable_storage_metrics=False, is_page_first_layout=True,
        model_name="test-model", extra_config=config)
    b = StorageBackendFactory.create_backend("dynamic", storage_config, pool)
    assert isinstance(b, KvtierHiCacheStorage)
    b.register_mem_pool_host(pool)  # what HiCacheController.attach_storage_backend does next
    return b


def page_keys(tokens: list[int], extra_key: Optional[str] = None) -> list[str]:
    """SGLang's storage keys of the full pages of `tokens` (its hex chain, namespace-seeded)."""
    keys = get_storage_hash_str(RadixKey(array("q", tokens), extra_key=extra_key), None,
                                page_size=PAGE_SIZE)
    assert isinstance(keys, list)
    return keys


class SglangBackendTest(unittest.TestCase):
    def setUp(self) -> None:
        self.rng = np.random.default_rng(SEED)
        self.daemon = Daemon(PAGE_BYTES, hbm_pages=16, dram_pages=64)
        self.addCleanup(self.daemon.close)

    def make(self, allocator: str = "shm", layout: str = "page_first",
             **extra: Any) -> tuple[MHATokenToKVPoolHost, KvtierHiCacheStorage]:
        pool = host_pool(allocator, layout)
        b = backend(self.daemon.socket, pool, **extra)
        self.addCleanup(b.close)
        return pool, b

    def tokens(self, pages: int) -> list[int]:
        return [int(t) for t in self.rng.integers(0, 32000, pages * PAGE_SIZE)]

    def fill(self, pool: MHATokenToKVPoolHost) -> None:
        raw = pool.kv_buffer.view(torch.uint8)
        raw.copy_(torch.from_numpy(self.rng.integers(0, 256, tuple(raw.shape), dtype=np.uint8)))

    @staticmethod
    def pages(pool: MHATokenToKVPoolHost, indices: torch.Tensor) -> list[bytes]:
        """Each page's bytes, through SGLang's own flat-page accessor."""
        return [pool.get_data_page(int(i), flat=True).view(torch.uint8).numpy().tobytes()
                for i in indices[::PAGE_SIZE]]

    def test_pages_round_trip_bit_identical(self) -> None:
        for allocator, layout, zero_copy in (("shm", "page_first", True),
                                             ("shm", "page_first_direct", True),
                                             ("default", "page_first", False)):
            with self.subTest(allocator=allocator, layout=layout):
                # Without shm, pages go through a staging buffer: 4 pages, so 6 take two turns.
                pool, b = self.make(allocator, layout, namespace=f"sglang/{layout}/{allocator}",
                                    staging_pages=4)
                self.assertEqual(b.zero_copy, zero_copy)
                if zero_copy:
                    # SGLang's shm pool: a memfd sealed with F_SEAL_SEAL only (it may shrink).
                    seals = fcntl.fcntl(pool.allocator.fd, fcntl.F_GET_SEALS)
                    self.assertEqual(seals, fcntl.F_SEAL_SEAL)
                self.fill(pool)
                indices = pool.alloc(6 * PAGE_SIZE)
                keys = page_keys(self.tokens(6))
                before = self.pages(pool, indices)
                ok = b.batch_set_v1(keys, indices, HiCacheStorageExtraInfo(prefix_keys=[]))
                self.assertEqual(ok, [True] * 6)
                pool.kv_buffer.zero_()
                # Back into other host pages, as a prefetch would.
                other = pool.alloc(6 * PAGE_SIZE)
                self.assertEqual(b.batch_get_v1(keys, other), [True] * 6)
                self.assertEqual(self.pages(pool, other), before)
                self.assertEqual(b.batch_exists(keys), 6)

    def test_batch_exists_is_the_prefix_before_the_first_gap(self) -> None:
        pool, b = self.make()
        self.fill(pool)
        keys = page_keys(self.tokens(6))
        indices = pool.alloc(6 * PAGE_SIZE)
        stored = [0, 1, 2, 4, 5]  # page 3 missing
        for p in stored:
            self.assertEqual(
                b.batch_set_v1([keys[p]], indices[p * PAGE_SIZE:(p + 1) * PAGE_SIZE],
                               HiCacheStorageExtraInfo(prefix_keys=keys[:p])), [True])
        self.assertEqual(b.batch_exists(keys), 3)
        self.assertEqual(b.batch_exists(keys[4:]), 2)
        self.assertEqual(b.batch_exists(keys[3:]), 0)
        self.assertEqual(b.batch_exists([]), 0)
        self.assertTrue(b.exists(keys[5]))
        self.assertFalse(b.exists(keys[3]))
        # A get over the gap: pages before it land, the missing one and after report False.
        self.assertEqual(b.batch_get_v1(keys[2:5], pool.alloc(3 * PAGE_SIZE)),
                         [True, False, True])

    def test_tenants_never_share_pages_and_the_same_tenant_does(self) -> None:
        pool, b = self.make()
        self.fill(pool)
        tokens = self.tokens(4)
        keys_a = page_keys(tokens, extra_key="tenant-a")
        keys_b = page_keys(tokens, extra_key="tenant-b")
        self.assertTrue(set(keys_a).isdisjoint(keys_b))  # SGLang seeds keys with extra_key
        indices = pool.alloc(4 * PAGE_SIZE)
        before = self.pages(pool, indices)
        self.assertEqual(b.batch_set_v1(keys_a, indices), [True] * 4)
        pool.kv_buffer.zero_()
        target = pool.alloc(4 * PAGE_SIZE)
        # The other tenant, same tokens: no hit, nothing loaded.
        self.assertEqual(b.batch_exists(keys_b), 0)
        self.assertEqual(b.batch_get_v1(keys_b, target), [False] * 4)
        self.assertTrue(all(p == bytes(PAGE_BYTES) for p in self.pages(pool, target)))
        # The paired control: the same tenant hits and gets its bytes back.
        self.assertEqual(b.batch_exists(keys_a), 4)
        self.assertEqual(b.batch_get_v1(keys_a, target), [True] * 4)
        self.assertEqual(self.pages(pool, target), before)
        # The deployment's cache_salt (extra config) separates workers the same way.
        _, salted = self.make(cache_salt="deployment-2")
        self.assertEqual(salted.batch_exists(keys_a), 0)
        _, same = self.make()
        self.assertEqual(same.batch_exists(keys_a), 4)

    def test_legacy_flat_page_calls_share_pages_with_the_v1_calls(self) -> None:
        pool, b = self.make(staging_pages=2)  # 3 flat pages take two turns through staging
        self.fill(pool)
        keys = page_keys(self.tokens(3))
        indices = pool.alloc(3 * PAGE_SIZE)
        before = self.pages(pool, indices)
        self.assertEqual(b.batch_set_v1(keys[:2], indices[:2 * PAGE_SIZE]), [True] * 2)
        # set(): a flat page from SGLang's get_data_page, as the generic (non-v1) path sends it.
        self.assertTrue(b.set(keys[2], pool.get_data_page(int(indices[2 * PAGE_SIZE]))))
        got = b.batch_get(keys, [pool.get_dummy_flat_data_page() for _ in keys])
        self.assertEqual([g.view(torch.uint8).numpy().tobytes() for g in got], before)
        page = b.get(keys[0], pool.get_dummy_flat_data_page())
        self.assertIsNotNone(page)
        self.assertIsNone(b.get(page_keys(self.tokens(1))[0]))
        # Pages set flat load into the pool by host index, bit-identical.
        pool.kv_buffer.zero_()
        self.assertEqual(b.batch_get_v1(keys, indices), [True] * 3)
        self.assertEqual(self.pages(pool, indices), before)

    def test_daemon_killed_costs_misses_not_exceptions(self) -> None:
        pool, b = self.make()
        self.fill(pool)
        keys = page_keys(self.tokens(3))
        indices = pool.alloc(3 * PAGE_SIZE)
        self.assertEqual(b.batch_set_v1(keys, indices), [True] * 3)
        self.daemon.stop(signal.SIGKILL)
        self.assertEqual(b.batch_exists(keys), 0)
        self.assertEqual(b.batch_get_v1(keys, indices), [False] * 3)
        self.assertEqual(b.batch_set_v1(keys, indices), [False] * 3)
        self.assertFalse(b.exists(keys[0]))
        self.assertIsNone(b.get(keys[0]))
        self.assertFalse(b.set(keys[0], pool.get_data_page(int(indices[0]))))
        self.assertEqual(b.batch_get(keys), [None] * 3)
        # kvtierd back (empty: its DRAM died with it): the backend reconnects by itself.
        self.daemon.start()
        deadline = time.monotonic() + 30
        while b.batch_set_v1(keys, indices) != [True] * 3:
            self.assertLess(time.monotonic(), deadline, "no reconnect within 30 s")
            time.sleep(0.05)
        self.assertEqual(b.batch_exists(keys), 3)

    def test_sglangs_cache_controller_backs_up_and_prefetches_through_kvtier(self) -> None:
        # SGLang's HiCacheController with the backend attached from its JSON config: its backup
        # thread writes host pages to kvtier, its prefetch threads find them (batch_exists over
        # the keys it hashes itself) and load them into newly allocated host pages. One rank:
        # a single-process gloo group, and the parallel widths a scheduler would publish.
        if not dist.is_initialized():
            dist.init_process_group("gloo", init_method=f"file://{self.daemon.dir}/pg", rank=0,
                                    world_size=1)
        widths = get_parallel().override(tp_size=1, tp_rank=0, attn_tp_size=1, attn_tp_rank=0,
                                          attn_dcp_size=1, attn_dcp_rank=0, pp_size=1, pp_rank=0)
        widths.__enter__()
        self.addCleanup(widths.__exit__, None, None, None)
        device = device_pool()
        pool = host_pool(device=device)
        allocator = PagedTokenToKVPoolAllocator(DEVICE_TOKENS, PAGE_SIZE, DTYPE, "cpu", device,
                                                need_sort=False)
        ctrl = HiCacheController(
            allocator, pool, PAGE_SIZE, dist.group.WORLD, threading.Event(), io_backend="kernel",
            storage_backend="dynamic", model_name="test-model",
            storage_backend_extra_config={
                "backend_name": "kvtier", "module_path": "kvtier.sglang",
                "class_name": "KvtierHiCacheStorage", "interface_v1": 1, "allocator": "shm",
                "socket_path": self.daemon.socket, "reconnect_interval_s": 0})
        self.addCleanup(ctrl.detach_storage_backend)
        self.assertIsInstance(ctrl.storage_backend, KvtierHiCacheStorage)
        self.assertTrue(ctrl.storage_backend.zero_copy)
        self.fill(pool)
        tokens = self.tokens(5)
        indices = pool.alloc(5 * PAGE_SIZE)
        before = self.pages(pool, indices)
        ctrl.write_storage(indices, tokens, hash_value=get_storage_hash_str(
            tokens, None, page_size=PAGE_SIZE), prefix_keys=[])
        self.assertEqual(ctrl.ack_backup_queue.get(timeout=60).completed_tokens, 5 * PAGE_SIZE)
        pool.kv_buffer.zero_()
        # A request with those tokens and a partial page more: 5 pages hit.
        hit = self.prefetch(ctrl, tokens + [1, 2, 3])
        self.assertEqual(hit.storage_hit_count, 5 * PAGE_SIZE)
        hit.host_indices = pool.alloc(hit.storage_hit_count)
        ctrl.prefetch_buffer.put(hit)  # what the radix cache does once it has host pages
        self.assertEqual(ctrl.ack_prefetch_queue.get(timeout=60).completed_tokens, 5 * PAGE_SIZE)
        self.assertEqual(self.pages(pool, hit.host_indices), before)
        # kvtierd gone: SGLang's threads see misses and failed writes, nothing raises.
        self.daemon.stop(signal.SIGKILL)
        self.assertEqual(self.prefetch(ctrl, tokens).storage_hit_count, 0)
        ctrl.write_storage(indices, tokens, hash_value=get_storage_hash_str(
            tokens, None, page_size=PAGE_SIZE), prefix_keys=[])
        self.assertEqual(ctrl.ack_backup_queue.get(timeout=60).completed_tokens, 0)

    @staticmethod
    def prefetch(ctrl: HiCacheController, tokens: list[int]) -> Any:
        ctrl.prefetch(f"req-{random.randrange(1 << 30)}", tokens, None, [])
        return ctrl.prefetch_hit_queue.get(timeout=60)

    def test_page_size_mismatch_fails_at_connect_naming_both_sizes(self) -> None:
        with Daemon(2 * PAGE_BYTES) as other:
            with self.assertRaises(PageSizeMismatch) as ctx:
                backend(other.socket, host_pool())
        message = str(ctx.exception)
        self.assertIn(str(2 * PAGE_BYTES), message)
        self.assertIn(str(PAGE_BYTES), message)
        self.assertIn("store.page_bytes", message)
        print(f"page size mismatch -> {message}", flush=True)

    def test_daemon_down_at_start_is_not_an_error(self) -> None:
        self.daemon.stop(signal.SIGKILL)
        pool, b = self.make()
        keys = page_keys(self.tokens(1))
        self.assertEqual(b.batch_exists(keys), 0)
        self.daemon.start()
        deadline = time.monotonic() + 30
        while b.batch_set_v1(keys, pool.alloc(PAGE_SIZE)) != [True]:
            self.assertLess(time.monotonic(), deadline, "no reconnect within 30 s")
            time.sleep(0.05)


if __name__ == "__main__":
    unittest.main(verbosity=2)
