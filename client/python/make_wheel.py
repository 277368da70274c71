"""Writes the kvtier wheel from a staged package directory (standard library only, so it runs
offline with any Python 3). Called by scripts/build_wheel.

  make_wheel.py STAGE_DIR OUT_DIR VERSION PLATFORM_TAG
STAGE_DIR holds the `kvtier/` package with libkvtier.so and its bundled libraries.
"""

from __future__ import annotations

import base64
import hashlib
import os
import sys
import zipfile

METADATA = """Metadata-Version: 2.1
Name: kvtier
Version: {version}
Summary: Python client of kvtierd, the node-local KV-cache tiering daemon
Requires-Python: >=3.10
Requires-Dist: numpy>=1.24
Provides-Extra: torch
Requires-Dist: torch>=2.4; extra == "torch"
Provides-Extra: hf
Requires-Dist: torch>=2.4; extra == "hf"
Requires-Dist: transformers>=5.0; extra == "hf"

ctypes bindings over libkvtier.so (the C ABI of client/kvtier_c.h), memfd-backed host KV
buffers, and kvtier.hf for prefix reuse in Hugging Face transformers models.
"""

WHEEL = """Wheel-Version: 1.0
Generator: kvtier make_wheel.py
Root-Is-Purelib: false
Tag: py3-none-{platform}
"""


def digest(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def main() -> None:
    stage, out_dir, version, platform = sys.argv[1:5]
    name = f"kvtier-{version}-py3-none-{platform}.whl"
    dist_info = f"kvtier-{version}.dist-info"
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, name)
    records = []
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as whl:
        for root, dirs, files in os.walk(stage):
            dirs.sort()
            for f in sorted(files):
                if f.endswith(".pyc"):
                    continue
                full = os.path.join(root, f)
                arc = os.path.relpath(full, stage)
                with open(full, "rb") as fh:
                    data = fh.read()
                info = zipfile.ZipInfo(arc, date_time=(2020, 1, 1, 0, 0, 0))
                info.external_attr = (os.stat(full).st_mode & 0o777) << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                whl.writestr(info, data)
                records.append(f"{arc},{digest(data)},{len(data)}")
        for fname, text in (("METADATA", METADATA.format(version=version)),
                            ("WHEEL", WHEEL.format(platform=platform))):
            data = text.encode()
            whl.writestr(f"{dist_info}/{fname}", data)
            records.append(f"{dist_info}/{fname},{digest(data)},{len(data)}")
        records.append(f"{dist_info}/RECORD,,")
        whl.writestr(f"{dist_info}/RECORD", "\n".join(records) + "\n")
    print(path)


if __name__ == "__main__":
    main()
