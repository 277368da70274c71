"""The installed wheel: imported from where pip put it, with its own Abseil and protobuf."""

from __future__ import annotations

import os
import unittest

import kvtier
from kvtierd_fixture import Daemon


class WheelTest(unittest.TestCase):
    def test_package_and_library_come_from_the_wheel(self) -> None:
        site = os.environ["PYTHONPATH"].split(":")[0]
        self.assertTrue(kvtier.__file__.startswith(os.path.realpath(site)) or
                        kvtier.__file__.startswith(site), kvtier.__file__)
        self.assertNotIn("KVTIER_LIBRARY", os.environ)
        self.assertTrue(os.path.exists(os.path.join(os.path.dirname(kvtier.__file__),
                                                    "py.typed")))
        layout = kvtier.Layout(layers=1, kv_heads=1, head_dim=32, num_blocks=4)
        with Daemon(layout.page_bytes) as daemon, kvtier.Client.connect(daemon.socket) as c:
            info = c.hello("py/wheel", layout)
            self.assertEqual(info.page_bytes, layout.page_bytes)
        package_dir = os.path.dirname(kvtier.__file__)
        with open("/proc/self/maps") as f:
            mapped = {line.split()[-1] for line in f if ".so" in line}
        for name in ("libkvtier.so", "libabsl_status.so", "libprotobuf.so"):
            paths = [p for p in mapped if os.path.basename(p).startswith(name)]
            self.assertTrue(paths, f"{name} is not loaded")
            for p in paths:
                self.assertEqual(os.path.dirname(p), package_dir,
                                 f"{name} was loaded from {p}, not from the wheel")


if __name__ == "__main__":
    unittest.main(verbosity=2)
