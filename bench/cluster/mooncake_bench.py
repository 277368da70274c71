#!/usr/bin/env python3
"""Mooncake Store beside `kvtierctl bench cluster`: put_from / get_into of 2 MiB pages between two
processes over TCP on loopback (mooncake_master with its HTTP metadata server, one writer process
whose segment holds the pages, one reader process that times get_into into a registered buffer).

Needs PyPI mooncake-transfer-engine-non-cuda (pinned in bench/cluster/requirements.txt):
  python3 -m venv /tmp/mc && /tmp/mc/bin/pip install -r bench/cluster/requirements.txt
  /tmp/mc/bin/python bench/cluster/mooncake_bench.py [--pages 32] [--iterations 200]
Prints one JSON line.
"""
import argparse, ctypes, json, multiprocessing as mp, os, shutil, socket, subprocess, sys, time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_store(master, meta, segment, local):
    from mooncake.store import MooncakeDistributedStore
    s = MooncakeDistributedStore()
    rc = s.setup("127.0.0.1", meta, segment, local, "tcp", "", master)
    if rc != 0:
        raise RuntimeError(f"mooncake setup failed: {rc}")
    return s


def writer(master, meta, pages, page_bytes, ready, done):
    s = make_store(master, meta, (pages + 8) * page_bytes, 64 << 20)
    buf = ctypes.create_string_buffer(page_bytes)
    ptr = ctypes.addressof(buf)
    assert s.register_buffer(ptr, page_bytes) == 0
    for i in range(pages):
        ctypes.memmove(ptr, os.urandom(64) * (page_bytes // 64), page_bytes)
        rc = s.put_from(f"page-{i}", ptr, page_bytes)
        if rc != 0:
            raise RuntimeError(f"put_from {i}: {rc}")
    ready.set()
    done.wait(300)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pages", type=int, default=32)
    ap.add_argument("--iterations", type=int, default=200)
    ap.add_argument("--page-bytes", type=int, default=2 << 20)
    a = ap.parse_args()
    master_bin = shutil.which("mooncake_master") or os.path.join(os.path.dirname(sys.executable),
                                                                "mooncake_master")
    rpc, http = free_port(), free_port()
    master = subprocess.Popen([master_bin, f"--rpc_port={rpc}", "--enable_http_metadata_server=true",
                               f"--http_metadata_server_port={http}",
                               "--http_metadata_server_host=127.0.0.1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.5)
        meta = f"http://127.0.0.1:{http}/metadata"
        master_addr = f"127.0.0.1:{rpc}"
        ctx = mp.get_context("spawn")
        ready, done = ctx.Event(), ctx.Event()
        w = ctx.Process(target=writer, args=(master_addr, meta, a.pages, a.page_bytes, ready, done))
        w.start()
        if not ready.wait(120):
            raise RuntimeError("writer never finished its puts")
        s = make_store(master_addr, meta, 16 << 20, 64 << 20)
        buf = ctypes.create_string_buffer(a.page_bytes)
        ptr = ctypes.addressof(buf)
        assert s.register_buffer(ptr, a.page_bytes) == 0
        lat = []
        for i in range(10 + a.iterations):
            t = time.perf_counter()
            n = s.get_into(f"page-{i % a.pages}", ptr, a.page_bytes)
            e = time.perf_counter()
            if n != a.page_bytes:
                raise RuntimeError(f"get_into returned {n}")
            if i >= 10:
                lat.append((e - t) * 1e6)
        done.set()
        w.join(30)
        total = sum(lat) / 1e6
        lat.sort()
        print(json.dumps({"bench": "mooncake_get_into", "protocol": "tcp",
                          "page_bytes": a.page_bytes, "iterations": a.iterations,
                          "gb_s": round(a.page_bytes * a.iterations / total / 1e9, 4),
                          "p50_us": round(lat[len(lat) // 2], 1),
                          "p99_us": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))], 1)}))
    finally:
        master.terminate()
        master.wait(10)


if __name__ == "__main__":
    main()
