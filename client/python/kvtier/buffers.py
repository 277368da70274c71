"""The worker's KV buffers in memory the daemon can map.

kvtierd copies pages into and out of the worker's own buffers. Host buffers must be memfd-backed
(the fd travels with SCM_RIGHTS). HostBuffers creates them sealed against shrinking, which lets the
daemon map them (a memfd without that seal is copied through its fd instead: Client.register_fds),
and hands out numpy arrays or torch tensors over the same memory.
With CUDA present they are pinned (cudaHostRegister through torch), so copies between them and the
GPU run at full PCIe/NVLink-C2C speed and asynchronously.

GPU tensors need no copy of their own: `register_cuda_tensors` hands the daemon their CUDA IPC
handles, and it copies pages straight into and out of them (see Client.register_tensors).
"""

from __future__ import annotations

import ctypes
import fcntl
import mmap
import os
import uuid as uuid_module
import warnings
import weakref
from typing import Any, Sequence

from . import _lib
from .layout import Layout

_NUMPY_DTYPES = {"bf16": "uint16", "fp16": "float16", "fp32": "float32", "fp8": "uint8"}


class HostBuffers:
    """One sealed memfd per layout buffer, mapped read-write here.

    Owns the fds and mappings; `close()` (or garbage collection) unpins and closes them. Arrays and
    tensors handed out keep the mapping alive while they exist.
    """

    # Every live instance, so Client.register_tensors can find the buffers behind its tensors.
    instances: "weakref.WeakSet[HostBuffers]" = weakref.WeakSet()

    def __init__(self, layout: Layout, pin: bool | None = None) -> None:
        """pin: True pins (or raises), False does not, None pins when CUDA is available and
        warns if that fails."""
        HostBuffers.instances.add(self)
        self.layout = layout
        self.fds: list[int] = []
        self.maps: list[mmap.mmap] = []
        self._pinned: list[int] = []
        self.pin_error = ""  # why pinning failed when it was tried and failed
        size = layout.buffer_bytes
        try:
            for _ in range(layout.buffer_count):
                fd = os.memfd_create("kvtier-worker-kv", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
                self.fds.append(fd)
                os.ftruncate(fd, size)
                # The daemon maps these; a buffer that shrank under it would fault the daemon.
                fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL)
                self.maps.append(mmap.mmap(fd, size, mmap.MAP_SHARED,
                                           mmap.PROT_READ | mmap.PROT_WRITE))
            if pin or (pin is None and _cuda_available()):
                try:
                    self._pin()
                except RuntimeError as e:
                    if pin:
                        raise
                    # Unpinned buffers still work (the copies to the GPU go through a staging
                    # buffer of the driver's): said once, and kept in pin_error for reports.
                    self.pin_error = str(e)
                    warnings.warn(f"kvtier: host KV buffers are not pinned: {e}", stacklevel=2)
        except BaseException:
            self.close()
            raise

    @property
    def sizes(self) -> list[int]:
        return [self.layout.buffer_bytes] * len(self.fds)

    @property
    def pinned(self) -> bool:
        return bool(self._pinned)

    def numpy(self) -> list[Any]:
        """The buffers as numpy arrays of `layout.buffer_shape` (bf16 as uint16, fp8 as uint8)."""
        import numpy as np

        dtype = np.dtype(_NUMPY_DTYPES[self.layout.dtype])
        return [np.frombuffer(m, dtype=dtype).reshape(self.layout.buffer_shape) for m in self.maps]

    def torch(self) -> list[Any]:
        """The buffers as CPU torch tensors of `layout.buffer_shape` and the layout's dtype."""
        import torch

        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32,
                 "fp8": torch.float8_e4m3fn}[self.layout.dtype]
        return [torch.frombuffer(m, dtype=dtype).view(self.layout.buffer_shape)
                for m in self.maps]

    def _pin(self) -> None:
        import ctypes

        import torch

        cudart = torch.cuda.cudart()  # type: ignore[no-untyped-call]
        for m in self.maps:
            address = ctypes.addressof(ctypes.c_char.from_buffer(m))
            try:
                err = cudart.cudaHostRegister(address, len(m), 0)
            except Exception as e:  # torch without CUDA raises here
                raise RuntimeError(f"cudaHostRegister of {len(m)} bytes: {e}") from e
            if int(err) != 0:
                raise RuntimeError(f"cudaHostRegister of {len(m)} bytes failed: error {int(err)}")
            self._pinned.append(address)

    def close(self) -> None:
        """Unpins, unmaps (where no array still uses the mapping) and closes the fds."""
        if self._pinned:
            import torch

            cudart = torch.cuda.cudart()  # type: ignore[no-untyped-call]
            for address in self._pinned:
                cudart.cudaHostUnregister(address)
            self._pinned = []
        for m in self.maps:
            try:
                m.close()
            except BufferError:
                pass  # an array still uses it; the mapping goes with the last of them
        self.maps = []
        for fd in self.fds:
            os.close(fd)
        self.fds = []

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def register_cuda_tensors(client: Any, tensors: Sequence[Any]) -> None:
    """Registers GPU KV tensors, in layout order, by CUDA IPC handle (README, "GPU workers").

    Each tensor is exported the way torch.multiprocessing shares CUDA tensors: the IPC handle of
    the allocation its storage lives in, plus the byte offset of the tensor inside it (tensors
    from PyTorch's caching allocator are slices of larger allocations). kvtierd opens each
    allocation once, checks the device by UUID and every size against the layout, and copies
    pages straight into and out of the tensors. The tensors must be contiguous, on one device, and
    stay alive while the client is connected. A load's reply means its bytes have landed; before a
    store, synchronize the stream that wrote the blocks. Raises FailedPrecondition from a daemon
    that cannot serve GPU memory (no GPU, or a host-emulated HBM pool), naming why.
    """
    import torch

    if not tensors:
        raise ValueError("no tensors to register")
    device = tensors[0].device
    n = len(tensors)
    handles = (ctypes.c_uint8 * (_IPC_HANDLE_BYTES * n))()
    offsets = (ctypes.c_uint64 * n)()
    sizes = (ctypes.c_uint64 * n)()
    for i, t in enumerate(tensors):
        if not getattr(t, "is_cuda", False) or t.device != device:
            raise ValueError(f"tensor {i} is on {t.device}; every GPU KV tensor must be on {device}")
        if not t.is_contiguous():
            raise ValueError(f"tensor {i} is not contiguous")
        # (device, handle, storage bytes, storage offset bytes, ref counter..., event...)
        shared = t.untyped_storage()._share_cuda_()
        handle, storage_offset = ipc_mem_handle(bytes(shared[1]), f"tensor {i}"), int(shared[3])
        ctypes.memmove(ctypes.addressof(handles) + _IPC_HANDLE_BYTES * i, handle, len(handle))
        offsets[i] = storage_offset + t.storage_offset() * t.element_size()
        sizes[i] = t.numel() * t.element_size()
    # The device's 16 UUID bytes (cudaDeviceProp::uuid), from the text PyTorch prints for them.
    uuid_text = str(torch.cuda.get_device_properties(device).uuid).removeprefix("GPU-")
    uuid_buf = (ctypes.c_uint8 * 16).from_buffer_copy(uuid_module.UUID(uuid_text).bytes)
    client._check(
        _lib.lib().kvtier_register_gpu_buffers(
            client._handle(), uuid_buf, handles, offsets, sizes, n
        ),
        "register_cuda_tensors",
    )


_IPC_HANDLE_BYTES = 64  # sizeof(cudaIpcMemHandle_t)
# PyTorch's caching allocator (c10 CUDACachingAllocator::shareIpcHandle) prefixes the handle
# with a format version byte (2 up to torch 2.12, 3 from 2.13, same payload) and a type byte:
# 'c' for a cudaMalloc block, followed by its cudaIpcMemHandle_t; 'e' for an expandable segment,
# whose payload is not a cudaIpcMemHandle_t. Older torch exports the bare 64 bytes.
_TORCH_HANDLE_VERSIONS = (2, 3)


def ipc_mem_handle(exported: bytes, what: str = "tensor") -> bytes:
    """The cudaIpcMemHandle_t inside the handle PyTorch's `_share_cuda_()` exported."""
    if len(exported) == _IPC_HANDLE_BYTES:
        return exported
    if len(exported) >= 2 and exported[1] == ord("e"):
        raise RuntimeError(
            f"{what}: its memory is an expandable segment, which has no cudaIpcMemHandle_t; "
            "unset PYTORCH_CUDA_ALLOC_CONF=expandable_segments for the KV caches"
        )
    if (len(exported) == _IPC_HANDLE_BYTES + 2 and exported[0] in _TORCH_HANDLE_VERSIONS
            and exported[1] == ord("c")):
        return exported[2:]
    raise RuntimeError(
        f"{what}: PyTorch exported a {len(exported)}-byte handle (version byte "
        f"{exported[0] if exported else None}) that is not a known cudaIpcMemHandle_t format"
    )
