"""bench/model_quality on CI's tiny configuration (CPU, seconds): the training with <|bos|>, the
sink measurement through kvtier.attention's CPU twin, the page-at-a-time decode and every
placement policy run end to end, kvtier's own policies through a real kvtierd on loopback
($KVTIERD, as ctest passes it), so the H200 script cannot rot. Asserts properties that break when
the code does: the loss falls, the cached decode reproduces the model's own forward, a budget that
holds the whole stream changes nothing, budgets and tiers are kept, the daemon's pages move to
DRAM and are dropped from it, and the sink-keeping policies keep the first page where window-only
drops it."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import unittest

import numpy as np
import torch

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "bench", "model_quality"))

import model_quality as mq  # noqa: E402

# The training run is seeded inside the script (Config.seed); the seed is printed for the record.
print(f"model_quality_test seed {mq.Config().seed} (fixed, Config.seed)", flush=True)

class TinyRun(unittest.TestCase):
    result: dict

    @classmethod
    def setUpClass(cls) -> None:
        corpus = [os.path.join(ROOT, "docs", "architecture.md"), os.path.join(ROOT, "README.md")]
        with tempfile.TemporaryDirectory(prefix="kvtier-model-quality-") as out:
            # 16 pages of stream; budget 2 forces evictions, budget 16 holds the whole stream.
            # kvtierd rows: 2 HBM pages (one a reserved sink slot for kvtier) + 2 DRAM pages.
            rc = mq.main(["--corpus", *corpus, "--out", out, "--tiny", "--device", "cpu",
                          "--kvtierd", os.environ["KVTIERD"], "--set", "steps=40", "batch=8",
                          "budgets=[2, 16]", "hbm_pages=2", "dram_pages=2"])
            assert rc == 0
            with open(os.path.join(out, "model_quality.json")) as f:
                cls.result = json.load(f)

    def test_loss_falls(self) -> None:
        val = self.result["train"]["val_loss"]
        self.assertEqual(val[-1][0], 40)
        self.assertLess(val[-1][1], val[0][1] - 0.5, val)
        train = self.result["train"]["train_loss"]
        self.assertLess(train[-1][1], train[0][1], train)

    def test_decode_matches_forward(self) -> None:
        # The cache is bf16, the CPU forward fp32: differences stay at bf16 rounding.
        self.assertLess(self.result["decode_check_max_abs_nll_diff"], 5e-3)

    def test_sink_statistics_are_masses(self) -> None:
        for layer in self.result["sinks"]:
            self.assertGreaterEqual(layer["mass_page0"], 0.0)
            self.assertLessEqual(layer["mass_page0"], 1.0)
            self.assertGreater(layer["mass_rest_mean"], 0.0)
            self.assertIsInstance(layer["measured_sink"], bool)

    def test_whole_stream_budget_changes_nothing(self) -> None:
        full = self.result["eval"]["full"]["ppl"]
        for name in mq.PY_POLICIES:
            self.assertAlmostEqual(self.result["eval"][f"{name}@16"]["ppl"], full, places=4,
                                   msg=name)

    def test_small_budget_is_kept_and_sinks_stay(self) -> None:
        ev = self.result["eval"]
        for name in mq.PY_POLICIES:
            for info in ev[f"{name}@2"]["info"]:
                self.assertLessEqual(info["max_resident"], 2, name)
                self.assertEqual(info["dram_pages_attended"], 0, name)
        # Page 0 is resident from step 1 on: always for the sink keepers, not for window-only.
        for key in ("streaming@2", "kvtier@2+2", "streaming_d@2+2"):
            for info in ev[key]["info"]:
                self.assertEqual(info["sink_kept_steps"], info["steps"] - 1, key)
        for info in ev["window@2"]["info"]:
            self.assertLess(info["sink_kept_steps"], 3)
        # Evicting changes the prediction: a 2-page cache is not the full one.
        self.assertNotAlmostEqual(ev["window@2"]["ppl"], ev["full"]["ppl"], places=4)

    def test_bos_starts_every_sequence(self) -> None:
        self.assertEqual(self.result["data"]["bos_id"], 0)
        for m in self.result["sinks"]:
            self.assertGreater(m["mass_token0"], 0.0)
            self.assertLessEqual(m["mass_token0"], 1.0)
            self.assertGreater(m["value_norm_token0_rel"], 0.0)

    def test_kvtierd_rows_place_by_the_daemon(self) -> None:
        ev = self.result["eval"]
        for name in mq.DAEMON_POLICIES:
            e = ev[f"{name}@2+2"]
            self.assertTrue(e["kvtierd"], name)
            for info in e["info"]:
                # HBM + DRAM bound the attended pages; the daemon reports its own occupancy.
                self.assertLessEqual(info["max_resident"], 4, name)
                self.assertEqual(info["max_resident"], 4, name)
                self.assertLessEqual(info["hbm_max"], 2, name)
                self.assertGreater(info["dram_pages_attended"], 0, name)
                tiers = {t["tier"]: t for t in info["daemon_stats"]["tiers"]}
                self.assertEqual(tiers["hbm"]["capacity_slots"], 2, name)
                self.assertEqual(tiers["dram"]["capacity_slots"], 2, name)
                self.assertGreater(tiers["dram"].get("evictions", 0), 0, name)  # drops
                self.assertEqual(info["daemon_stats"]["stores"], info["steps"], name)
                self.assertGreater(info["loads"], 0, name)
            self.assertGreater(e["load_us_per_step"], 0.0, name)
            # 4 of 16 pages kept: the prediction is not the full cache's.
            self.assertNotAlmostEqual(e["ppl"], ev["full"]["ppl"], places=4, msg=name)
        # The reserved sink slot holds page 0 for kvtier; kvtier_noslot reserves none.
        slots = {t["tier"]: t for t in ev["kvtier@2+2"]["info"][0]["daemon_stats"]["tiers"]}
        self.assertEqual(slots["hbm"]["sink_used_slots"], 1)
        slots = {t["tier"]: t for t in ev["kvtier_noslot@2+2"]["info"][0]["daemon_stats"]["tiers"]}
        self.assertEqual(slots["hbm"].get("sink_reserved_slots", 0), 0)


class Pieces(unittest.TestCase):
    def test_batches_start_with_bos(self) -> None:
        data = torch.arange(100, 200, dtype=torch.int32)
        x, y = mq.batch_from(data, torch.tensor([0, 10]), 8, bos=7)
        self.assertEqual(x.shape, (2, 8))
        self.assertTrue(bool((x[:, 0] == 7).all()))
        self.assertEqual(x[1, 1:].tolist(), list(range(110, 117)))
        self.assertEqual(y[1].tolist(), list(range(110, 118)))
        x, y = mq.batch_from(data, torch.tensor([0]), 8)
        self.assertEqual(x[0].tolist(), list(range(100, 108)))
        s = mq.with_bos(data[:5], 7)
        self.assertEqual(s.tolist(), [7, 100, 101, 102, 103])

    def test_daemon_placement_keeps_the_sink_and_the_budget(self) -> None:
        # No model: uniform statistics over 12 pages into 3 HBM (1 a sink slot) + 2 DRAM slots.
        c = mq.Config(**mq.TINY)
        c.hbm_pages, c.dram_pages = 3, 2
        stream = np.arange(12 * c.tokens_per_page, dtype=np.int32) % 300
        pl = mq.DaemonPlacement("kvtier", os.environ["KVTIERD"], c, stream)
        try:
            for step in range(12):
                pages = pl.pages + [step]
                sig = {p: {"mass": 1.0 / len(pages), "breadth": 0.5, "value_norm": 1.0,
                           "entropy": 0.9} for p in pages}
                pl.step(step, sig)
                self.assertLessEqual(len(pl.pages), 5)
                self.assertIn(0, pl.pages)         # the position sink, in its reserved slot
                self.assertNotIn(0, pl.dram)
                self.assertIn(step, pl.pages)      # the page just stored is cached
                self.assertLessEqual(len(pl.pages) - len(pl.dram), 3)
            self.assertEqual(len(pl.pages), 5)
            self.assertEqual(len(pl.dram), 2)
        finally:
            info = pl.close()
        self.assertEqual(info["daemon_stats"]["stores"], 12)


if __name__ == "__main__":
    unittest.main(verbosity=2)
