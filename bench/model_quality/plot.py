"""Perplexity against stream position per policy, from model_quality.py's JSON files.

    python3 plot.py OUT.png RUN.json[=NOTE] [RUN.json[=NOTE] ...]      (one panel per run)

Interpreter: scripts/python_env bench/model_quality/requirements.txt (matplotlib).
"""

from __future__ import annotations

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(argv: list[str]) -> int:
    out, runs = argv[1], argv[2:]
    fig, axes = plt.subplots(1, len(runs), figsize=(6.5 * len(runs), 4.5), squeeze=False)
    for ax, arg in zip(axes[0], runs):
        path, _, note = arg.partition("=")
        with open(path) as f:
            r = json.load(f)
        c = r["config"]
        for key, e in r["eval"].items():
            if e["budget_pages"] not in (None, c["budgets"][0]):
                continue
            xs = [(i + 0.5) * c["bin_tokens"] for i in range(len(e["ppl_bins"]))]
            label = f"{key}: {e['ppl']:.2f}" + (
                f" (kvtierd, DRAM load {e['load_us_per_step']:.0f} us/step)" if e.get("kvtierd")
                else "") + (f" ({e['streams']} stream)" if e["streams"]
                                                  < max(v["streams"] for v in
                                                        r["eval"].values()) else "")
            ax.plot(xs, e["ppl_bins"], marker=".", label=label)
        ax.axvline(c["ctx"], color="grey", linestyle=":", label=f"training context {c['ctx']}")
        ax.set_yscale("log")
        ax.set_xlabel("stream position (tokens)")
        ax.set_ylabel(f"perplexity per {c['bin_tokens']} tokens")
        ax.set_title(f"{'/'.join(path.split('/')[-2:])}: {r['train']['steps']} steps, "
                     f"{'<|bos|>, ' if c.get('bos') else ''}"
                     f"{c['budgets'][0]} pages x {c['tokens_per_page']} tokens"
                     + (f"\nkvtierd rows: {c['hbm_pages']} HBM + {c['dram_pages']} DRAM pages"
                        if "hbm_pages" in c else "")
                     + (f"\n{note}" if note else ""), fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
