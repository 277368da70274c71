"""bench/model_quality on CI's tiny configuration (CPU, seconds): the training, the sink
measurement through kvtier.attention's CPU twin, the page-at-a-time decode and every placement
policy run end to end, so the H200 script cannot rot. Asserts properties that break when the code
does: the loss falls, the cached decode reproduces the model's own forward, a budget that holds
the whole stream changes nothing, small budgets are kept, and the sink-keeping policies keep the
first page where window-only drops it."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import unittest

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
            rc = mq.main(["--corpus", *corpus, "--out", out, "--tiny", "--device", "cpu", "--set",
                          "steps=40", "batch=8", "budgets=[2, 16]"])
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
        for name in ("window", "streaming", "h2o", "kvtier", "kvtier_nosink"):
            self.assertAlmostEqual(self.result["eval"][f"{name}@16"]["ppl"], full, places=4,
                                   msg=name)

    def test_small_budget_is_kept_and_sinks_stay(self) -> None:
        ev = self.result["eval"]
        for name in ("window", "streaming", "h2o", "kvtier", "kvtier_nosink"):
            for info in ev[f"{name}@2"]["info"]:
                self.assertLessEqual(info["max_resident"], 2, name)
        # Page 0 is resident from step 1 on: always for the sink keepers, not for window-only.
        for name in ("streaming", "kvtier"):
            for info in ev[f"{name}@2"]["info"]:
                self.assertEqual(info["sink_kept_steps"], info["steps"] - 1, name)
        for info in ev["window@2"]["info"]:
            self.assertLess(info["sink_kept_steps"], 3)
        # Evicting changes the prediction: a 2-page cache is not the full one.
        self.assertNotAlmostEqual(ev["window@2"]["ppl"], ev["full"]["ppl"], places=4)


class KvtierPolicyRule(unittest.TestCase):
    def test_page_being_put_is_never_its_own_victim(self) -> None:
        # Old pages with large, frequent mass outrank a fresh page; the store still makes room
        # among the resident ones (AcquireSemanticSlot), so the new page always gets in.
        p = mq.Policy("kvtier", 3)
        for step in range(3):
            p.put(step, 1 + step * mq.STEP_MS)
            p.report({q: {"mass": 0.5, "breadth": 1.0, "value_norm": 1.0, "entropy": 1.0}
                      for q in p.pages}, 1 + step * mq.STEP_MS)
        p.put(3, 1 + 3 * mq.STEP_MS)
        self.assertIn(3, p.pages)
        self.assertIn(0, p.pages)  # the position sink in its reserved slot
        self.assertEqual(len(p.pages), 3)

    def test_measured_sink_ranks_above_everything(self) -> None:
        p = mq.Policy("kvtier", 4)
        sinky = {"mass": 0.2, "breadth": 1.0, "value_norm": 0.05, "entropy": 0.1}
        for step in range(4):
            p.put(step, 1 + step * mq.STEP_MS)
            p.report({q: dict(sinky) for q in p.pages}, 1 + step * mq.STEP_MS)
        self.assertIn(1, p.sink)  # three reports that match LooksLikeSink
        self.assertGreater(p.rank(1), 1e11)


if __name__ == "__main__":
    unittest.main(verbosity=2)
