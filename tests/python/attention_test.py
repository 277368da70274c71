"""kvtier.attention: the attention-statistics kernel through libkvtier.so (its CPU twin here),
against a float64 reference written from kernels/attention_stats.h's definitions."""

from __future__ import annotations

import ctypes
import math
import os
import random
import unittest

import numpy as np
import torch

import kvtier
from kvtier.attention import has_cuda_kernels, page_attention_stats

SEED = int(os.environ.get("KVTIER_TEST_SEED", random.randrange(1 << 31)))
print(f"attention_test seed {SEED} (KVTIER_TEST_SEED={SEED} repeats it)", flush=True)


def reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, tpp: int,
              threshold: float) -> dict[str, np.ndarray]:
    q, k, v = q.double(), k.double(), v.double()
    window, q_heads, d = q.shape
    tokens, kv_heads, _ = k.shape
    pages = math.ceil(tokens / tpp)
    mass = torch.zeros(window, q_heads, pages, dtype=torch.float64)
    for i in range(window):
        pos = tokens - window + i
        for h in range(q_heads):
            kh = h // (q_heads // kv_heads)
            p = torch.softmax(k[: pos + 1, kh] @ q[i, h] / math.sqrt(d), dim=0)
            for page in range(pages):
                mass[i, h, page] = p[page * tpp: (page + 1) * tpp].sum()
    per_head = mass.sum(0)  # [q_heads, pages]
    share = per_head / per_head.sum(0).clamp_min(1e-300)
    entropy = -(share * share.clamp_min(1e-300).log()).sum(0) / math.log(q_heads)
    norms = v.norm(dim=-1)  # [tokens, kv_heads]
    return {
        "mass": mass.mean(dim=(0, 1)).numpy(),
        "breadth": (mass > threshold).double().mean(dim=(0, 1)).numpy(),
        "value_norm": np.array([norms[p * tpp:(p + 1) * tpp].mean().item()
                                for p in range(pages)]),
        "mass_entropy": entropy.numpy(),
    }


class AttentionTest(unittest.TestCase):
    def test_cpu_twin_matches_the_reference(self) -> None:
        gen = torch.Generator().manual_seed(SEED)
        tokens, tpp, window, q_heads, kv_heads, d = 70, 16, 8, 4, 2, 32
        q = torch.randn(window, q_heads, d, generator=gen).to(torch.bfloat16)
        k = torch.randn(tokens, kv_heads, d, generator=gen).to(torch.bfloat16)
        v = torch.randn(tokens, kv_heads, d, generator=gen).to(torch.bfloat16)
        k[:4] *= 3  # a few loud keys, so the pages' masses differ
        got = page_attention_stats(q, k, v, tpp, breadth_threshold=0.1)
        ref = reference(q, k, v, tpp, 0.1)
        pages = len(ref["mass"])
        self.assertEqual(len(got), pages)  # the short last page counts
        self.assertAlmostEqual(float(got["mass"].sum()), 1.0, places=4)
        bound = 1e-3 * np.maximum(ref["mass"], 1 / pages) + 1e-6
        self.assertTrue(np.all(np.abs(got["mass"] - ref["mass"]) <= bound),
                        f"{got['mass']} vs {ref['mass']}")
        np.testing.assert_allclose(got["value_norm"], ref["value_norm"], rtol=1e-4)
        np.testing.assert_allclose(got["mass_entropy"], ref["mass_entropy"], atol=1e-3)
        np.testing.assert_allclose(got["breadth"], ref["breadth"], atol=1 / (window * q_heads))

    def test_float32_inputs_are_scored_as_bf16(self) -> None:
        gen = torch.Generator().manual_seed(SEED + 1)
        q = torch.randn(4, 2, 16, generator=gen)
        k = torch.randn(32, 1, 16, generator=gen)
        v = torch.randn(32, 1, 16, generator=gen)
        a = page_attention_stats(q, k, v, 8)
        b = page_attention_stats(q.bfloat16(), k.bfloat16(), v.bfloat16(), 8)
        self.assertTrue(np.array_equal(a, b))

    def test_bad_shapes_raise_with_the_reason(self) -> None:
        q = torch.zeros(4, 3, 16, dtype=torch.bfloat16)
        kv = torch.zeros(32, 2, 16, dtype=torch.bfloat16)
        with self.assertRaises(kvtier.InvalidArgument) as ctx:
            page_attention_stats(q, kv, kv, 8)  # 2 kv heads do not divide 3 q heads
        self.assertIn("attention statistics", str(ctx.exception))
        with self.assertRaises(kvtier.InvalidArgument):
            page_attention_stats(q[:, :2], kv, kv, 0)
        with self.assertRaises(ValueError):
            page_attention_stats(q, kv, kv[:16], 8)

    def test_cuda_entry_without_a_gpu_fails_cleanly(self) -> None:
        gen = torch.Generator().manual_seed(SEED + 2)
        q = torch.randn(4, 2, 64, generator=gen).bfloat16()
        k = torch.randn(64, 2, 64, generator=gen).bfloat16()
        if torch.cuda.is_available() and has_cuda_kernels():
            # On a GPU machine: the kernel agrees with its CPU twin within the documented bound.
            cpu = page_attention_stats(q, k, k, 16)
            gpu = page_attention_stats(q.cuda(), k.cuda(), k.cuda(), 16)
            np.testing.assert_allclose(gpu["mass"], cpu["mass"], rtol=1e-3, atol=1e-6)
            np.testing.assert_allclose(gpu["value_norm"], cpu["value_norm"], rtol=1e-4)
            return
        from kvtier import _lib

        out = (_lib.PageAttention * 4)()
        code = _lib.lib().kvtier_attention_stats_cuda(
            ctypes.byref(_lib.AttentionShape(64, 2, 2, 64, 4, 16, 0)), 0.01, q.data_ptr(),
            k.data_ptr(), k.data_ptr(), out, 4, None)
        self.assertNotEqual(code, 0)
        message = kvtier._lib.thread_error()
        self.assertTrue(message, "a failure without a message")
        if not has_cuda_kernels():
            self.assertIn("without CUDA", message)

if __name__ == "__main__":
    unittest.main(verbosity=2)
