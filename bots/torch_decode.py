"""The transformers backend's decode loop: token by token with a KV cache.

Our own small loop instead of ``model.generate`` so that a reply can be streamed without
a helper thread, stopped at once when the consumer goes away (closing the generator
frees the model), and timed precisely (time to first token, decode tokens/s).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import torch
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from bots.generation import GenerationSettings, GenerationStats, TokenPicker


@torch.inference_mode()
def generate_token_ids(model: PreTrainedModel, prompt_ids: list[int], settings: GenerationSettings, stop_ids: set[int], stats: GenerationStats) -> Iterator[int]:
    """Yield new token ids one by one; stats are updated as it goes."""
    started = time.perf_counter()
    pick = TokenPicker(settings)
    cache = DynamicCache(config=model.config)
    stats.prompt_tokens = len(prompt_ids)
    stats.stopped_by = "cancelled"  # until the loop ends by itself
    inputs = torch.tensor([prompt_ids], dtype=torch.long)
    try:
        for _ in range(settings.max_new_tokens):
            # logits_to_keep=1: only the last position's logits (the vocab is large).
            output = model(input_ids=inputs, past_key_values=cache, use_cache=True, logits_to_keep=1)
            token = pick(output.logits[0, -1].float().numpy(), stats.token_ids)
            now = time.perf_counter()
            if not stats.token_ids and stats.ttft_s == 0.0:
                stats.ttft_s = now - started
            stats.latency_s = now - started
            if token in stop_ids:
                stats.stopped_by = "eos"
                return
            stats.token_ids.append(token)
            stats.new_tokens = len(stats.token_ids)
            yield token
            inputs = torch.tensor([[token]], dtype=torch.long)
        stats.stopped_by = "length"
    finally:
        stats.latency_s = time.perf_counter() - started


def stop_token_ids(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel) -> set[int]:
    """End of turn: the tokenizer's eos plus whatever the generation config names."""
    ids: set[int] = set()
    for candidate in (tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)):
        if isinstance(candidate, int):
            ids.add(candidate)
        elif isinstance(candidate, (list, tuple)):
            ids.update(int(c) for c in candidate)
    for token in ("<|im_end|>", "<|endoftext|>"):
        token_id = tokenizer.convert_tokens_to_ids(token)
        if isinstance(token_id, int) and token_id != tokenizer.unk_token_id:
            ids.add(token_id)
    return ids
