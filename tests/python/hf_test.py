"""kvtier.hf across two processes sharing one kvtierd: a tiny random-weight LlamaForCausalLM
(fp32, CPU) whose logits after restore-and-suffix equal a full prefill exactly."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
import unittest

from kvtierd_fixture import Daemon

SEED = int(os.environ.get("KVTIER_TEST_SEED", random.randrange(1 << 31)))
print(f"hf_test seed {SEED} (KVTIER_TEST_SEED={SEED} repeats it)", flush=True)
WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hf_worker.py")
# 2 (K, V) x 3 layers x 16 tokens x 2 KV heads x 16 head dim x 4 bytes (fp32).
PAGE_BYTES = 2 * 3 * 16 * 2 * 16 * 4


class HfTest(unittest.TestCase):
    def run_worker(self, daemon: Daemon, role: str) -> dict:
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            proc = subprocess.run([sys.executable, WORKER, daemon.socket, role, str(SEED),
                                   out.name], capture_output=True, text=True, timeout=300)
            self.assertEqual(proc.returncode, 0, f"{role} worker failed:\n{proc.stderr}")
            with open(out.name) as f:
                return json.load(f)

    def test_restored_prefix_gives_the_logits_of_a_full_prefill(self) -> None:
        with Daemon(PAGE_BYTES) as daemon:
            stored = self.run_worker(daemon, "store")
            self.assertEqual(stored["cached_tokens"], 0)
            self.assertEqual(stored["stored_pages"], 6)  # 107 tokens: 6 full pages
            self.assertEqual(stored["stats"]["pages"], 6)
            hbm = next(t for t in stored["stats"]["tiers"] if t["tier"] == "hbm")
            self.assertEqual(hbm["sink_used_slots"], 1)  # the first page, hinted as a sink
            # Statistics from the kernel's CPU twin, fed by the captured queries.
            self.assertTrue(stored["capture_logits_equal"])
            self.assertTrue(stored["attention_impl"].startswith("kvtier_capture+"))
            st = stored["last_stats"]
            for field in ("mass", "breadth", "value_norm", "mass_entropy"):
                self.assertEqual(len(st[field]), 6, field)
            # 6 full pages of 107 tokens: the partial 7th page holds the rest of the mass.
            self.assertGreater(sum(st["mass"]), 0.5)
            self.assertLessEqual(sum(st["mass"]), 1.0 + 1e-3)
            self.assertTrue(all(0 <= b <= 1 for b in st["breadth"]))
            self.assertTrue(all(n > 0 for n in st["value_norm"]))

            restored = self.run_worker(daemon, "restore")
            # The second prompt shares 87 tokens: 5 full pages come from the other process.
            self.assertEqual(restored["cached_tokens"], 5 * 16)
            self.assertEqual(restored["tiers"], ["HBM"] * 5)
            self.assertTrue(restored["restored_kv_equal"])
            self.assertTrue(restored["logits_equal_split"])
            self.assertTrue(restored["logits_equal_full"],
                            f"max |diff| {restored['logits_max_diff_full']}")
            self.assertEqual(restored["decode_restored"], restored["decode_full"])
            # 117 tokens: pages 5 and 6 are new and stored after the prefill.
            self.assertEqual(restored["stored_pages"], 2)
            self.assertEqual(restored["stats"]["pages"], 8)


if __name__ == "__main__":
    unittest.main(verbosity=2)
