"""One inference process of hf_test: a tiny random-weight Llama on CPU (fp32) that prefills a
prompt through kvtier.hf and writes what it saw as JSON.

  hf_worker.py SOCKET ROLE SEED OUT.json
  ROLE store:   a cold prefill of the shared prompt; stores its pages (with attention stats).
  ROLE restore: a prompt sharing the first pages; restores them from the daemon, prefills the
                rest, and compares with a full prefill of the same prompt in this process.
"""

from __future__ import annotations

import dataclasses
import json
import sys

import torch
from transformers import LlamaConfig, LlamaForCausalLM

import kvtier
import kvtier.hf

TOKENS_PER_PAGE = 16


def model_and_prompts(seed: int) -> tuple[LlamaForCausalLM, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=1024, attn_implementation="eager")
    config.dtype = torch.float32
    model = LlamaForCausalLM(config).eval()
    shared = torch.randint(0, 512, (1, 5 * TOKENS_PER_PAGE + 7))
    first = torch.cat([shared, torch.randint(0, 512, (1, 20))], dim=1)
    second = torch.cat([shared, torch.randint(0, 512, (1, 30))], dim=1)
    return model, first, second


def greedy(model: LlamaForCausalLM, logits: torch.Tensor, cache: object, steps: int) -> list[int]:
    tokens = []
    token = logits[:, -1:].argmax(-1)
    for _ in range(steps):
        tokens.append(int(token))
        out = model(token, use_cache=True, **kvtier.hf.cache_kwargs(model, cache))
        cache = kvtier.hf.output_cache(out)
        token = out.logits[:, -1:].argmax(-1)
    return tokens


def main() -> None:
    socket, role, seed, out_path = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    model, first, second = model_and_prompts(seed)
    client = kvtier.Client.connect(socket)
    cache = kvtier.hf.PrefixCache(client, model.config, namespace="tiny-llama/test",
                                  max_tokens=256, tokens_per_page=TOKENS_PER_PAGE, pin=False)
    cache.batch = 2  # several lookups, loads and stores per prompt, two in flight at once
    result: dict[str, object] = {"page_bytes": cache.layout.page_bytes}
    with torch.no_grad():
        if role == "store":
            r = cache.prefill(model, first)
            result.update(cached_tokens=r.cached_tokens, stored_pages=r.stored_pages)
            # The query capture behind the statistics changes no logit: a model without it agrees.
            plain = model_and_prompts(seed)[0]
            result["capture_logits_equal"] = torch.equal(r.logits, plain(first).logits)
            result["attention_impl"] = model.config._attn_implementation
            result["last_stats"] = dataclasses.asdict(cache.last_stats)
        else:
            r = cache.prefill(model, second)
            n = r.cached_tokens
            full = model(second, use_cache=True)
            full_cache = kvtier.hf.output_cache(full)
            split = model(second[:, n:], use_cache=True, **kvtier.hf.cache_kwargs(
                model, kvtier.hf.output_cache(model(second[:, :n], use_cache=True))))
            kv_equal = all(
                torch.equal(r.cache.layers[i].keys[:, :, :n], full_cache.layers[i].keys[:, :, :n])
                and torch.equal(r.cache.layers[i].values[:, :, :n],
                                full_cache.layers[i].values[:, :, :n])
                for i in range(model.config.num_hidden_layers))
            result.update(
                cached_tokens=n,
                tiers=[t.name for t in r.tiers],
                stored_pages=r.stored_pages,
                restored_kv_equal=kv_equal,
                logits_equal_full=bool(torch.equal(r.logits, full.logits[:, n:])),
                logits_max_diff_full=float((r.logits - full.logits[:, n:]).abs().max()),
                logits_equal_split=bool(torch.equal(r.logits, split.logits)),
                decode_restored=greedy(model, r.logits, r.cache, 8),
                decode_full=greedy(model, full.logits, full_cache, 8),
            )
    result["stats"] = client.stats()
    client.close()
    with open(out_path, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
