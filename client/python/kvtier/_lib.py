"""ctypes declarations of libkvtier.so, the C ABI of client/kvtier_c.h.

The library is found next to this file (where the wheel puts it, with the Abseil and protobuf
libraries it needs), or at $KVTIER_LIBRARY (a build tree's client/python/libkvtier.so). It is
loaded RTLD_LOCAL, so its Abseil and protobuf never serve another extension of the process.
ctypes releases the GIL for every call, so a thread blocked in kvtier_wait lets others run.
"""

from __future__ import annotations

import ctypes
import os
import pathlib
import threading

# The C ABI version this package is written against (KVTIER_C_ABI_VERSION in kvtier_c.h).
ABI_VERSION = 4


class Key(ctypes.Structure):
    _fields_ = [("hi", ctypes.c_uint64), ("lo", ctypes.c_uint64)]


class CLayout(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_uint32)
        for name in (
            "layers",
            "kv_heads",
            "head_dim",
            "dtype",
            "tokens_per_page",
            "tensor_layout",
            "num_blocks",
        )
    ]


class HelloInfo(ctypes.Structure):
    _fields_ = [
        ("salt", Key),
        ("page_bytes", ctypes.c_uint64),
        ("max_inflight_ops", ctypes.c_uint32),
        ("max_pinned_pages", ctypes.c_uint32),
        ("max_batch_pages", ctypes.c_uint32),
        ("hbm_backend", ctypes.c_char * 32),
    ]


class Attention(ctypes.Structure):
    _fields_ = [
        (name, ctypes.POINTER(ctypes.c_float))
        for name in ("mass", "breadth", "value_norm", "mass_entropy")
    ]


class AttentionShape(ctypes.Structure):
    """kvtier_attention_shape: one sequence's shape for the attention-statistics kernel."""

    _fields_ = [
        (name, ctypes.c_uint32)
        for name in ("tokens", "q_heads", "kv_heads", "head_dim", "window", "tokens_per_page",
                     "dtype")
    ]


class PageAttention(ctypes.Structure):
    """kvtier_page_attention: the kernel's figures for one page."""

    _fields_ = [
        (name, ctypes.c_float) for name in ("mass", "breadth", "value_norm", "mass_entropy")
    ]


_u8p = ctypes.POINTER(ctypes.c_uint8)
_u32p = ctypes.POINTER(ctypes.c_uint32)
_u64p = ctypes.POINTER(ctypes.c_uint64)
_i32p = ctypes.POINTER(ctypes.c_int32)
_keyp = ctypes.POINTER(Key)
_h = ctypes.c_void_p  # kvtier_client*
_sz = ctypes.c_size_t
_i = ctypes.c_int

# name: (restype, argtypes)
_SIGNATURES = {
    "kvtier_abi_version": (_i, []),
    "kvtier_thread_error": (ctypes.c_char_p, []),
    "kvtier_connect": (_h, [ctypes.c_char_p, ctypes.POINTER(_i)]),
    "kvtier_close": (None, [_h]),
    "kvtier_hello_info_get": (
        _i,
        [_h, ctypes.c_char_p, ctypes.POINTER(CLayout), ctypes.c_char_p, ctypes.POINTER(HelloInfo)],
    ),
    "kvtier_register_buffers": (_i, [_h, ctypes.POINTER(_i), _u64p, _sz]),
    "kvtier_register_gpu_buffers": (_i, [_h, _u8p, _u8p, _u64p, _u64p, _sz]),
    "kvtier_lookup": (_i, [_h, _keyp, _sz, ctypes.POINTER(_sz), _u8p]),
    "kvtier_load_submit": (_i, [_h, _keyp, _u32p, _sz, _u64p]),
    "kvtier_store_submit_stats": (
        _i,
        [_h, _keyp, _u32p, _sz, _keyp, ctypes.c_uint32, _u8p, ctypes.POINTER(Attention), _u64p],
    ),
    "kvtier_wait_pages": (_i, [_h, ctypes.c_uint64, _i32p, _u8p, _sz, _u32p, _u32p]),
    "kvtier_report": (_i, [_h, _keyp, _sz, ctypes.POINTER(Attention)]),
    "kvtier_pin": (_i, [_h, _keyp, _sz]),
    "kvtier_unpin": (_i, [_h, _keyp, _sz]),
    "kvtier_release_count": (_i, [_h, _keyp, _sz, _u32p]),
    "kvtier_status_json": (_i, [_h, ctypes.POINTER(ctypes.c_void_p)]),
    "kvtier_stats_json": (_i, [_h, ctypes.POINTER(ctypes.c_void_p)]),
    "kvtier_free": (None, [ctypes.c_void_p]),
    "kvtier_chain_keys": (_sz, [Key, ctypes.POINTER(ctypes.c_int32), _sz, _sz, _keyp, _sz]),
    "kvtier_key_from_block_hash": (_i, [Key, _keyp, ctypes.c_void_p, _sz, _keyp]),
    # ABI 3: the attention-statistics kernel (kvtier.attention).
    "kvtier_attention_stats_cpu": (
        _i,
        [ctypes.POINTER(AttentionShape), ctypes.c_float, ctypes.c_void_p, ctypes.c_void_p,
         ctypes.c_void_p, ctypes.POINTER(PageAttention), _sz],
    ),
    "kvtier_attention_stats_cuda": (
        _i,
        [ctypes.POINTER(AttentionShape), ctypes.c_float, ctypes.c_void_p, ctypes.c_void_p,
         ctypes.c_void_p, ctypes.POINTER(PageAttention), _sz, ctypes.c_void_p],
    ),
    "kvtier_has_cuda_kernels": (_i, []),
    # ABI 4: a deadline on every call.
    "kvtier_set_timeout_ms": (_i, [_h, ctypes.c_uint64]),
}

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None


def library_path() -> pathlib.Path:
    """Where libkvtier.so is loaded from: $KVTIER_LIBRARY, else beside this package."""
    env = os.environ.get("KVTIER_LIBRARY")
    return pathlib.Path(env) if env else pathlib.Path(__file__).with_name("libkvtier.so")


def lib() -> ctypes.CDLL:
    """The loaded library with every signature declared (loaded once, on first use)."""
    global _lib
    with _lock:
        if _lib is None:
            path = library_path()
            if not path.exists():
                raise ImportError(
                    f"libkvtier.so not found at {path}: install the kvtier wheel "
                    "(scripts/build_wheel) or set KVTIER_LIBRARY to a build's "
                    "client/python/libkvtier.so"
                )
            loaded = ctypes.CDLL(str(path), mode=ctypes.RTLD_LOCAL)
            for name, (restype, argtypes) in _SIGNATURES.items():
                fn = getattr(loaded, name)
                fn.restype = restype
                fn.argtypes = argtypes
            version = loaded.kvtier_abi_version()
            if version < ABI_VERSION:
                raise ImportError(
                    f"{path} speaks C ABI version {version}; this package needs {ABI_VERSION} "
                    "or newer"
                )
            _lib = loaded
        return _lib


def thread_error() -> str:
    """The message of the calling thread's last failed call."""
    raw = lib().kvtier_thread_error()
    return raw.decode("utf-8", "replace") if raw else ""
