"""The kvtier package against a real kvtierd (host-emulated HBM): round trips, pins, errors."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
import unittest

import numpy as np

import kvtier
from kvtierd_fixture import Daemon

SEED = int(os.environ.get("KVTIER_TEST_SEED", random.randrange(1 << 31)))
print(f"client_test seed {SEED} (KVTIER_TEST_SEED={SEED} repeats it)", flush=True)


def layout_of(tensor_layout: str, num_blocks: int = 16) -> kvtier.Layout:
    return kvtier.Layout(layers=3, kv_heads=2, head_dim=16, dtype="bf16", tokens_per_page=8,
                         tensor_layout=tensor_layout, num_blocks=num_blocks)


PAGE_BYTES = layout_of("vllm").page_bytes  # 2 * 3 * 8 * 2 * 16 * 2 = 3072


def fill_random(bufs: kvtier.HostBuffers, rng: np.random.Generator) -> None:
    for arr in bufs.numpy():
        arr.view(np.uint8)[...] = rng.integers(0, 256, arr.view(np.uint8).shape, dtype=np.uint8)


def block(arr: np.ndarray, layout: kvtier.Layout, b: int) -> np.ndarray:
    """Every element of block b in one buffer, by the layout's documented shape."""
    if layout.tensor_layout in ("vllm", "sglang_page_first", "sglang_page_first_direct"):
        return arr[:, b]
    return arr[b]


def wait_until_stopped(pid: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        states = []
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{task}/stat") as f:
                    states.append(f.read().rsplit(")", 1)[1].split()[0])
            except FileNotFoundError:
                continue  # a thread that ended meanwhile
        if states and all(state in ("T", "t") for state in states):
            return
        time.sleep(0.001)
    raise AssertionError(f"process {pid} did not stop within 30 s")


class ClientTest(unittest.TestCase):
    def setUp(self) -> None:
        self.rng = np.random.default_rng(SEED)
        self.daemon = Daemon(PAGE_BYTES)
        self.addCleanup(self.daemon.close)

    def connect(self, namespace: str = "py/test", layout: kvtier.Layout | None = None,
                register: bool = True) -> tuple[kvtier.Client, kvtier.HostBuffers]:
        layout = layout or layout_of("vllm")
        c = kvtier.Client.connect(self.daemon.socket)
        self.addCleanup(c.close)
        c.hello(namespace, layout)
        bufs = kvtier.HostBuffers(layout, pin=False)
        self.addCleanup(bufs.close)
        if register:
            c.register_buffers(bufs)
        return c, bufs

    def tokens(self, n: int) -> np.ndarray:
        return self.rng.integers(0, 32000, n, dtype=np.int32)

    def test_round_trip_is_bit_exact_in_every_layout(self) -> None:
        self.round_trip(("vllm", "block_major", "page_contiguous"))

    def test_round_trip_is_bit_exact_in_sglangs_host_layouts(self) -> None:
        # A fresh daemon: the pages of the first test fill its HBM tier.
        self.round_trip(("sglang_page_first", "sglang_page_first_direct"))

    def round_trip(self, tensor_layouts: tuple[str, ...]) -> None:
        for tensor_layout in tensor_layouts:
            with self.subTest(tensor_layout=tensor_layout):
                layout = layout_of(tensor_layout)
                c, bufs = self.connect(f"py/{tensor_layout}", layout)
                fill_random(bufs, self.rng)
                keys = c.chain_keys(self.tokens(8 * 6))
                self.assertEqual(keys.shape, (6, 2))
                stored = c.store(keys, range(6)).wait(check=True)
                self.assertEqual(stored.ok_pages, 6)
                self.assertEqual(stored.tiers, [kvtier.Tier.HBM] * 6)
                originals = [np.stack([block(a, layout, b).copy() for b in range(6)])
                             for a in bufs.numpy()]
                hit = c.lookup(keys)
                self.assertEqual(hit.prefix_pages, 6)
                # Into other blocks, in reverse order: a layout misread here would move bytes
                # that do not line up with the documented shapes.
                targets = list(range(15, 9, -1))
                loaded = c.load(keys, targets).wait(check=True)
                self.assertEqual(loaded.codes, [0] * 6)
                for arr, orig in zip(bufs.numpy(), originals):
                    for page, b in enumerate(targets):
                        np.testing.assert_array_equal(block(arr, layout, b), orig[page])

    def test_memfd_that_can_shrink_is_copied_through_its_fd(self) -> None:
        # As SGLang's shm host pool: a memfd without MFD_ALLOW_SEALING (F_SEAL_SEAL only), in
        # the page_first layout, registered by fd. kvtierd never maps it, so a shrink fails the
        # pages that no longer fit, and the daemon and the session go on.
        import fcntl
        import mmap

        layout = layout_of("sglang_page_first")
        c = kvtier.Client.connect(self.daemon.socket)
        self.addCleanup(c.close)
        c.hello("py/shrinking", layout)
        fd = os.memfd_create("sglang_host_pool", os.MFD_CLOEXEC)
        self.addCleanup(os.close, fd)
        self.assertEqual(fcntl.fcntl(fd, fcntl.F_GET_SEALS), fcntl.F_SEAL_SEAL)
        os.ftruncate(fd, layout.buffer_bytes)
        m = mmap.mmap(fd, layout.buffer_bytes)
        arr = np.frombuffer(m, dtype=np.uint8).reshape(2, layout.num_blocks, -1)
        arr[...] = self.rng.integers(0, 256, arr.shape, dtype=np.uint8)
        c.register_fds([fd], [layout.buffer_bytes])
        keys = c.chain_keys(self.tokens(8 * 4))
        c.store(keys, range(4)).wait(check=True)
        originals = arr[:, :4].copy()
        c.load(keys, range(12, 16)).wait(check=True)
        np.testing.assert_array_equal(arr[:, 12:16], originals)
        del arr
        m.close()
        os.ftruncate(fd, layout.buffer_bytes // 2)  # every V piece is gone
        result = c.store(c.chain_keys(self.tokens(8 * 2)), [0, 1]).wait()
        self.assertEqual(result.ok_pages, 0)
        self.assertIn("shrank", result.first_error)
        with self.assertRaises(kvtier.FailedPrecondition):
            c.load(keys, range(4)).wait(check=True)
        self.assertEqual(c.lookup(keys).prefix_pages, 4)

    def test_lookup_stops_at_the_first_missing_page(self) -> None:
        c, bufs = self.connect()
        fill_random(bufs, self.rng)
        keys = c.chain_keys(self.tokens(8 * 5))
        c.store(keys[:3], range(3)).wait(check=True)
        hit = c.lookup(keys)
        self.assertEqual(hit.prefix_pages, 3)
        self.assertEqual(len(hit.tiers), 3)
        self.assertEqual(c.lookup(keys[3:]).prefix_pages, 0)

    def test_hints_stats_and_report_reach_the_daemon(self) -> None:
        c, bufs = self.connect()
        fill_random(bufs, self.rng)
        keys = c.chain_keys(self.tokens(8 * 4))
        stats = kvtier.AttentionStats(mass=[0.9, 0.1, 0.2, 0.3], value_norm=[0.01, 1, 2, 3])
        hints = [kvtier.PageClass.SINK] + [kvtier.PageClass.SEMANTIC] * 3
        c.store(keys, range(4), class_hints=hints, stats=stats).wait(check=True)
        hbm = next(t for t in c.status()["tiers"] if t["tier"] == "hbm")
        self.assertEqual(hbm["sink_used_slots"], 1)
        c.report(keys[1:], kvtier.AttentionStats(mass=[0.5, 0.5, 0.5], breadth=[1, 1, 1]))
        with self.assertRaisesRegex(ValueError, "expected 3 values"):
            c.report(keys[1:], kvtier.AttentionStats(mass=[0.5]))
        # Continuing a sequence: parent and position of the first page.
        more = c.chain_keys(self.tokens(8 * 2))
        c.store(more, range(4, 6), parent=keys[-1], first_position=4).wait(check=True)
        self.assertEqual(c.stats()["pages"], 6)

    def test_pins_and_release(self) -> None:
        c, bufs = self.connect()
        fill_random(bufs, self.rng)
        keys = c.chain_keys(self.tokens(8 * 4))
        c.store(keys, range(4)).wait(check=True)
        c.pin(keys[:3])
        self.assertEqual(c.stats()["pinned_pages"], 3)
        c.unpin(keys[2:3])
        self.assertEqual(c.stats()["pinned_pages"], 2)
        self.assertEqual(c.release(keys[:1]), 1)
        self.assertEqual(c.stats()["pinned_pages"], 1)
        self.assertEqual(c.release(), 1)
        self.assertEqual(c.stats()["pinned_pages"], 0)
        # A session's pins go when it ends.
        c.pin(keys)
        self.assertEqual(c.stats()["pinned_pages"], 4)
        c.close()
        other, _ = self.connect("py/other")
        # The daemon ends the session when it sees the hang-up, on its own thread: wait for it
        # (bounded) rather than racing it.
        deadline = time.monotonic() + 30
        while other.stats()["pinned_pages"] != 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        self.assertEqual(other.stats()["pinned_pages"], 0)

    def test_wrong_page_size_is_refused_with_the_daemons_message(self) -> None:
        c = kvtier.Client.connect(self.daemon.socket)
        self.addCleanup(c.close)
        wrong = kvtier.Layout(layers=4, kv_heads=2, head_dim=16, dtype="bf16",
                              tokens_per_page=8, num_blocks=4)
        with self.assertRaises(kvtier.InvalidArgument) as ctx:
            c.hello("py/test", wrong)
        self.assertIn(f"this kvtierd stores pages of {PAGE_BYTES}", str(ctx.exception))
        self.assertIn(str(wrong.page_bytes), ctx.exception.message)

    def test_namespaces_are_enforced_and_isolated(self) -> None:
        rules = "namespaces:\n  - name: \"allowed/*\"\n"
        with Daemon(PAGE_BYTES, namespaces_yaml=rules) as d:
            c = kvtier.Client.connect(d.socket)
            self.addCleanup(c.close)
            with self.assertRaises(kvtier.PermissionDenied) as ctx:
                c.hello("other/tenant", layout_of("vllm"))
            self.assertIn("no namespace rule matches", str(ctx.exception))
            a = kvtier.Client.connect(d.socket)
            b = kvtier.Client.connect(d.socket)
            self.addCleanup(a.close)
            self.addCleanup(b.close)
            a.hello("allowed/a", layout_of("vllm"))
            b.hello("allowed/b", layout_of("vllm"))
            self.assertNotEqual(a.salt, b.salt)
            bufs = kvtier.HostBuffers(layout_of("vllm"), pin=False)
            a.register_buffers(bufs)
            tokens = self.tokens(8 * 3)
            a.store(a.chain_keys(tokens), range(3)).wait(check=True)
            self.assertEqual(a.lookup(a.chain_keys(tokens)).prefix_pages, 3)
            # Neither the same tokens nor a's very keys find a's pages from namespace b.
            self.assertEqual(b.lookup(b.chain_keys(tokens)).prefix_pages, 0)
            self.assertEqual(b.lookup(a.chain_keys(tokens)).prefix_pages, 0)

    def test_request_errors_raise_with_messages(self) -> None:
        c, bufs = self.connect(register=False)
        keys = c.chain_keys(self.tokens(8 * 2))
        with self.assertRaises(kvtier.KvtierError) as ctx:
            c.store(keys, [0, 1]).wait(check=True)
        self.assertIn("buffer", str(ctx.exception).lower())
        c.register_buffers(bufs)
        fill_random(bufs, self.rng)
        with self.assertRaises(kvtier.KvtierError) as ctx:
            c.store(keys, [0, 16]).wait(check=True)
        self.assertIn("16", str(ctx.exception))
        keys = c.chain_keys(self.tokens(8 * 2))  # never stored
        missing = c.load(keys, [0, 1]).wait()
        self.assertEqual(missing.ok_pages, 0)
        self.assertEqual(missing.codes, [5, 5])  # NOT_FOUND, per page
        with self.assertRaises(kvtier.KvtierError) as ctx:
            c.load(keys, [0, 1]).wait(check=True)
        self.assertEqual(ctx.exception.code_name, "NOT_FOUND")
        with self.assertRaisesRegex(ValueError, "expected 2 values"):
            c.load(keys, [0])
        with self.assertRaisesRegex(ValueError, r"shape \(n, 2\)"):
            c.lookup(np.zeros(3, dtype=np.uint64))

    def test_connect_to_a_missing_socket_raises(self) -> None:
        path = os.path.join(self.daemon.dir, "nobody-here.sock")
        with self.assertRaises(kvtier.KvtierError) as ctx:
            kvtier.Client.connect(path)
        self.assertIn("nobody-here.sock", str(ctx.exception))

    def test_daemon_gone_mid_operation_raises_instead_of_hanging(self) -> None:
        c, bufs = self.connect()
        fill_random(bufs, self.rng)
        keys = c.chain_keys(self.tokens(8 * 2))
        c.store(keys, [0, 1]).wait(check=True)
        # Stopped, the daemon cannot answer: the load is in flight when it dies.
        assert self.daemon.proc is not None
        os.kill(self.daemon.proc.pid, signal.SIGSTOP)
        # kill() returns before every thread has stopped: a thread running on another core could
        # still answer the load. Wait until each of the daemon's threads is stopped ('T').
        wait_until_stopped(self.daemon.proc.pid)
        op = c.load(keys, [2, 3])
        outcome: list[BaseException] = []
        progress = [0]

        def waiter() -> None:
            try:
                op.wait()
            except BaseException as e:  # noqa: BLE001 - the test inspects it
                outcome.append(e)

        t = threading.Thread(target=waiter)
        t.start()
        # The waiter blocks in C without the GIL: this thread keeps running Python meanwhile.
        while progress[0] < 1000:
            progress[0] += 1
        self.assertTrue(t.is_alive())
        self.daemon.stop(signal.SIGKILL)
        t.join(timeout=60)
        self.assertFalse(t.is_alive(), "wait() hung after the daemon died")
        self.assertEqual(len(outcome), 1)
        self.assertIsInstance(outcome[0], kvtier.Unavailable)
        self.assertRegex(str(outcome[0]), "closed the connection|reset by peer")
        with self.assertRaises(kvtier.KvtierError):
            c.lookup(keys)

    def test_a_stalled_daemon_times_out_and_the_load_completes_once_it_resumes(self) -> None:
        c, bufs = self.connect()
        fill_random(bufs, self.rng)
        keys = c.chain_keys(self.tokens(8 * 2))
        c.store(keys, [0, 1]).wait(check=True)
        want = [block(arr, c.layout, b).copy() for arr in bufs.numpy() for b in (0, 1)]
        c.set_timeout(0.2)
        assert self.daemon.proc is not None
        os.kill(self.daemon.proc.pid, signal.SIGSTOP)
        wait_until_stopped(self.daemon.proc.pid)
        try:
            with self.assertRaises(kvtier.DeadlineExceeded) as ctx:
                c.lookup(keys)
            self.assertIsInstance(ctx.exception, TimeoutError)
            op = c.load(keys, [2, 3])
            with self.assertRaises(kvtier.DeadlineExceeded) as ctx:
                op.wait()
            self.assertIn("still in flight", str(ctx.exception))
        finally:
            os.kill(self.daemon.proc.pid, signal.SIGCONT)
        c.set_timeout(None)
        # The load was in flight all along: waiting again gets its result and its bytes.
        result = op.wait(check=True)
        self.assertEqual(result.ok_pages, 2)
        got = [block(arr, c.layout, b).copy() for arr in bufs.numpy() for b in (2, 3)]
        for w, g in zip(want, got):
            np.testing.assert_array_equal(w, g)
        # The timed-out lookup's late reply was dropped: the next one gets its own answer.
        self.assertEqual(c.lookup(keys).prefix_pages, 2)
        with self.assertRaises(ValueError):
            c.set_timeout(0)

    def test_keys_from_an_engines_block_hash(self) -> None:
        c, _ = self.connect()
        k8 = c.key_from_block_hash(0x1234_5678_9ABC_DEF0)
        self.assertTrue(np.array_equal(k8, c.key_from_block_hash(0x1234_5678_9ABC_DEF0)))
        sha = bytes(self.rng.integers(0, 256, 32, dtype=np.uint8))
        first = c.key_from_block_hash(sha)
        chained = c.key_from_block_hash(sha, parent=first)
        self.assertFalse(np.array_equal(first, chained))
        self.assertFalse(np.array_equal(first, k8))
        with self.assertRaises(kvtier.InvalidArgument) as ctx:
            c.key_from_block_hash(b"1234567")
        self.assertIn("multiple of 8", str(ctx.exception))

    def test_engine_keys_carry_engine_and_cache_salt(self) -> None:
        c, bufs = self.connect()
        fill_random(bufs, self.rng)
        names = [f"{self.rng.integers(1 << 62):x}" for _ in range(3)]
        salted_a = c.engine_keys("sglang", names, cache_salt="tenant-a")
        self.assertEqual(salted_a.shape, (3, 2))
        self.assertTrue(np.array_equal(salted_a, c.engine_keys("sglang", names, "tenant-a")))
        self.assertTrue(np.array_equal(salted_a[1], kvtier.engine_key(c.salt, "sglang", names[1],
                                                                      "tenant-a")))
        c.store(salted_a, range(3)).wait(check=True)
        # Paired control: the same salt hits; another salt, no salt or another engine never does.
        self.assertEqual(c.lookup(c.engine_keys("sglang", names, "tenant-a")).prefix_pages, 3)
        self.assertEqual(c.lookup(c.engine_keys("sglang", names, "tenant-b")).prefix_pages, 0)
        self.assertEqual(c.lookup(c.engine_keys("sglang", names)).prefix_pages, 0)
        self.assertEqual(c.lookup(c.engine_keys("vllm", names, "tenant-a")).prefix_pages, 0)
        # Length prefixes: moving bytes between the salt and the key gives another key.
        self.assertNotEqual(kvtier.engine_digest("x", b"bc", b"a"),
                            kvtier.engine_digest("x", b"c", b"ab"))
        self.assertEqual(len(kvtier.engine_digest("vllm", 1 << 100)), 16)
        with self.assertRaises(ValueError):
            kvtier.engine_digest("vllm", 1 << 130)
        with self.assertRaises(TypeError):
            kvtier.engine_digest("vllm", 1.5)  # type: ignore[arg-type]

    def test_torch_ipc_handle_formats(self) -> None:
        from kvtier.buffers import ipc_mem_handle

        raw = bytes(range(64))
        self.assertEqual(ipc_mem_handle(raw), raw)  # torch before the versioned format
        self.assertEqual(ipc_mem_handle(bytes([2, ord("c")]) + raw), raw)  # torch <= 2.12
        self.assertEqual(ipc_mem_handle(bytes([3, ord("c")]) + raw), raw)  # torch 2.13
        with self.assertRaisesRegex(RuntimeError, "expandable segment"):
            ipc_mem_handle(bytes([2, ord("e")]) + bytes(40))
        with self.assertRaisesRegex(RuntimeError, "not a known"):
            ipc_mem_handle(bytes([9, ord("c")]) + raw)
        with self.assertRaisesRegex(RuntimeError, "not a known"):
            ipc_mem_handle(b"")

    def test_register_tensors_takes_host_buffers_only(self) -> None:
        import torch

        layout = layout_of("vllm")
        c = kvtier.Client.connect(self.daemon.socket)
        self.addCleanup(c.close)
        c.hello("py/tensors", layout)
        bufs = kvtier.HostBuffers(layout, pin=False)
        tensors = bufs.torch()
        self.assertEqual(tuple(tensors[0].shape), layout.buffer_shape)
        self.assertEqual(tensors[0].dtype, torch.bfloat16)
        with self.assertRaises(TypeError):
            c.register_tensors([torch.zeros(layout.buffer_shape, dtype=torch.bfloat16)])
        c.register_tensors(tensors)
        tensors[0][0, 0].fill_(1.5)
        keys = c.chain_keys(self.tokens(8))
        c.store(keys, [0]).wait(check=True)
        c.load(keys, [7]).wait(check=True)
        self.assertTrue(torch.equal(tensors[0][0, 7], tensors[0][0, 0]))

    def test_register_cuda_tensors_refuses_what_is_not_gpu_memory(self) -> None:
        import torch

        layout = layout_of("vllm")
        c = kvtier.Client.connect(self.daemon.socket)
        self.addCleanup(c.close)
        c.hello("py/gpu-tensors", layout)
        with self.assertRaises(ValueError):
            kvtier.register_cuda_tensors(c, [])
        with self.assertRaises(ValueError) as ctx:
            kvtier.register_cuda_tensors(c, [torch.zeros(4)])
        self.assertIn("cpu", str(ctx.exception))

    def test_status_and_stats(self) -> None:
        c, _ = self.connect()
        status = c.status()
        self.assertEqual(status["page_bytes"], PAGE_BYTES)
        self.assertEqual(status["hbm_backend"], "host-emulated")
        self.assertEqual(c.info.hbm_backend if c.info else None, "host-emulated")
        self.assertGreaterEqual(c.stats()["sessions"], 1)


if __name__ == "__main__":
    unittest.main(verbosity=2)
