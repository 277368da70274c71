"""A real kvtierd for the python tests: its own temporary directory, socket and config.

The binary is $KVTIERD (ctest passes the build's daemon/kvtierd). Each Daemon writes a config
with the host-emulated HBM backend and no HTTP listener, so tests never share a port or a path.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from typing import Optional

import kvtier


class Daemon:
    def __init__(self, page_bytes: int, hbm_pages: int = 64, dram_pages: int = 64,
                 nvme_bytes: int = 0, namespaces_yaml: str = "", extra_yaml: str = "") -> None:
        self.dir = tempfile.mkdtemp(prefix="kvtier-py-")
        self.socket = os.path.join(self.dir, "data", "kvtierd.sock")
        self.log_path = os.path.join(self.dir, "kvtierd.log")
        nvme = ""
        if nvme_bytes:
            os.makedirs(os.path.join(self.dir, "nvme"))
            nvme = (f"nvme:\n  directories: [{os.path.join(self.dir, 'nvme')}]\n"
                    f"  capacity_bytes: {nvme_bytes}\n")
        self.config = os.path.join(self.dir, "kvtierd.yaml")
        with open(self.config, "w") as f:
            f.write(f"data_dir: {os.path.join(self.dir, 'data')}\n"
                    f"socket_path: {self.socket}\n"
                    "http_address: \"\"\n"
                    "store:\n"
                    f"  page_bytes: {page_bytes}\n"
                    f"  hbm_pages: {hbm_pages}\n"
                    f"  dram_pages: {dram_pages}\n"
                    "  hbm_backend: host-emulated\n"
                    f"{nvme}{namespaces_yaml}{extra_yaml}")
        self.proc: Optional[subprocess.Popen] = None
        self.start()

    def start(self) -> None:
        binary = os.environ["KVTIERD"]
        self.log = open(self.log_path, "a")
        self.proc = subprocess.Popen([binary, f"--config={self.config}"], stdout=self.log,
                                     stderr=subprocess.STDOUT)
        # Ready when a connection is accepted; bounded so a daemon that fails to start fails the
        # test with its log instead of hanging it.
        try:
            self._wait_until_serving()
        except BaseException:
            # Whatever stopped the wait (a timeout, a missing libkvtier.so, ^C), the daemon must
            # not outlive the test that started it.
            self.close()
            raise

    def _wait_until_serving(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"kvtierd exited {self.proc.returncode}:\n{self.read_log()}")
            if os.path.exists(self.socket):
                try:
                    kvtier.Client.connect(self.socket).close()
                    return
                except kvtier.KvtierError:
                    pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"kvtierd did not serve within 30 s:\n{self.read_log()}")
            time.sleep(0.02)

    def read_log(self) -> str:
        with open(self.log_path) as f:
            return f.read()

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout=30)
        self.log.close()
        self.proc = None
        return code

    def close(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                os.kill(self.proc.pid, signal.SIGCONT)  # a test may have stopped it
            self.stop(signal.SIGKILL)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "Daemon":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
