"""A whole vLLM engine on CPU with kvtier's connector, for the connector tests: a tiny
random-weight Llama saved locally, token-id prompts, greedy sampling.

Run as a script it is the second engine process: it generates one prompt against a running
kvtierd and prints the tokens and vLLM's cached-token count as one JSON line.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Optional

# One process, one engine: the worker (and its connector) live in this process.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")

BLOCK_SIZE = 32  # the CPU attention backend takes multiples of 32
LAYERS = 2
KV_HEADS = 2
HEAD_DIM = 64
VOCAB = 1024
# One kvtier page: one block of every layer, K and V, fp32.
PAGE_BYTES = BLOCK_SIZE * LAYERS * 2 * KV_HEADS * HEAD_DIM * 4


def save_model(directory: str, seed: int) -> None:
    """A random-weight Llama (head_dim 64) in `directory`, weights peaked enough that greedy
    decoding does not hinge on rounding."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=KV_HEADS * HEAD_DIM * 2,
                         intermediate_size=256, num_hidden_layers=LAYERS,
                         num_attention_heads=KV_HEADS * 2, num_key_value_heads=KV_HEADS,
                         head_dim=HEAD_DIM, max_position_embeddings=512,
                         initializer_range=0.2, tie_word_embeddings=False,
                         bos_token_id=1, eos_token_id=2)
    config.torch_dtype = "float32"
    model = LlamaForCausalLM(config).to(torch.float32)
    with torch.no_grad():
        # Logits ten times wider apart: greedy choices have margins far above the last-bit
        # differences between a full prefill and one after a loaded prefix.
        model.lm_head.weight.mul_(10.0)
    model.save_pretrained(directory)


def make_llm(model_dir: str, socket: str, extra: Optional[dict[str, Any]] = None,
             module: str = "kvtier.vllm", connector: str = "KvtierConnector") -> Any:
    from vllm import LLM
    from vllm.config import KVTransferConfig

    config = {"socket": socket, "reconnect_interval_s": 0, "log_interval_s": 0}
    config.update(extra or {})
    return LLM(model=model_dir, skip_tokenizer_init=True, dtype="float32",
               block_size=BLOCK_SIZE, max_model_len=256, max_num_seqs=4,
               enforce_eager=True, enable_prefix_caching=True, seed=0,
               disable_log_stats=False,  # vLLM then asks the connector where hits came from
               kv_transfer_config=KVTransferConfig(
                   kv_connector=connector, kv_connector_module_path=module,
                   kv_role="kv_both", kv_load_failure_policy="recompute",
                   kv_connector_extra_config=config))


def generate(llm: Any, tokens: list[int], salt: Optional[str] = None,
             max_tokens: int = 8) -> tuple[list[int], int]:
    """Greedy tokens of one prompt and how many of its tokens vLLM did not compute (its own
    prefix cache plus the connector's hit)."""
    from vllm import SamplingParams

    prompt: dict[str, Any] = {"prompt_token_ids": list(tokens)}
    if salt is not None:
        prompt["cache_salt"] = salt
    out = llm.generate([prompt], SamplingParams(temperature=0.0, max_tokens=max_tokens,
                                                ignore_eos=True, detokenize=False),
                       use_tqdm=False)[0]
    return list(out.outputs[0].token_ids), int(out.num_cached_tokens or 0)


if __name__ == "__main__":
    model_dir, socket, tokens_json = sys.argv[1], sys.argv[2], sys.argv[3]
    llm = make_llm(model_dir, socket)
    generated, cached = generate(llm, json.loads(tokens_json))
    print("RESULT " + json.dumps({"tokens": generated, "cached": cached}), flush=True)
