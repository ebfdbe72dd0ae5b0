"""Token-by-token decoding with a KV cache, and text streaming from the token ids.

Our own small loop instead of ``model.generate`` so that a reply can be streamed without
a helper thread, stopped at once when the consumer goes away (closing the generator
frees the model), and timed precisely (time to first token, decode tokens/s).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

MAX_NEW_TOKENS_LIMIT = 1024


class SettingsError(ValueError):
    """Generation settings out of range; the message names the setting and its range."""


@dataclass(frozen=True)
class GenerationSettings:
    """How a reply is decoded. temperature 0 means greedy (reproducible)."""

    max_new_tokens: int = 160
    temperature: float = 0.0
    top_p: float = 0.95
    repetition_penalty: float = 1.1
    """Applied to tokens the reply already produced (not to the prompt, so facts from the
    fact sheet can be repeated verbatim)."""
    seed: int = 0

    def validate(self) -> "GenerationSettings":
        checks = [
            (isinstance(self.max_new_tokens, int) and 1 <= self.max_new_tokens <= MAX_NEW_TOKENS_LIMIT, f"max_new_tokens must be an integer from 1 to {MAX_NEW_TOKENS_LIMIT}"),
            (_finite(self.temperature) and 0.0 <= self.temperature <= 2.0, "temperature must be between 0 and 2"),
            (_finite(self.top_p) and 0.0 < self.top_p <= 1.0, "top_p must be greater than 0 and at most 1"),
            (_finite(self.repetition_penalty) and 1.0 <= self.repetition_penalty <= 2.0, "repetition_penalty must be between 1 and 2"),
        ]
        for ok, message in checks:
            if not ok:
                raise SettingsError(message)
        return self


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


@dataclass
class GenerationStats:
    """Filled in while a reply streams; complete once the stream is exhausted."""

    prompt_tokens: int = 0
    new_tokens: int = 0
    ttft_s: float = 0.0
    latency_s: float = 0.0
    stopped_by: str = ""
    """'eos', 'length' or 'cancelled'."""
    token_ids: list[int] = field(default_factory=list)

    @property
    def decode_tokens_per_s(self) -> float:
        decode_time = self.latency_s - self.ttft_s
        return (self.new_tokens - 1) / decode_time if self.new_tokens > 1 and decode_time > 0 else 0.0


def _pick_next(logits: torch.Tensor, generated: list[int], settings: GenerationSettings, rng: torch.Generator) -> int:
    logits = logits.float()
    if settings.repetition_penalty != 1.0 and generated:
        seen = torch.tensor(sorted(set(generated)), dtype=torch.long)
        values = logits[seen]
        logits[seen] = torch.where(values > 0, values / settings.repetition_penalty, values * settings.repetition_penalty)
    if settings.temperature == 0.0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / settings.temperature, dim=-1)
    if settings.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < settings.top_p
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
    return int(torch.multinomial(probs, 1, generator=rng))


@torch.inference_mode()
def generate_token_ids(model: PreTrainedModel, prompt_ids: list[int], settings: GenerationSettings, stop_ids: set[int], stats: GenerationStats) -> Iterator[int]:
    """Yield new token ids one by one; stats are updated as it goes."""
    started = time.perf_counter()
    rng = torch.Generator().manual_seed(settings.seed)
    cache = DynamicCache(config=model.config)
    stats.prompt_tokens = len(prompt_ids)
    stats.stopped_by = "cancelled"  # until the loop ends by itself
    inputs = torch.tensor([prompt_ids], dtype=torch.long)
    try:
        for _ in range(settings.max_new_tokens):
            # logits_to_keep=1: only the last position's logits (the vocab is large).
            output = model(input_ids=inputs, past_key_values=cache, use_cache=True, logits_to_keep=1)
            token = _pick_next(output.logits[0, -1], stats.token_ids, settings, rng)
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


def stream_text(tokenizer: PreTrainedTokenizerBase, token_ids: Iterator[int]) -> Iterator[str]:
    """Turn token ids into text pieces, holding back incomplete UTF-8 sequences."""
    seen: list[int] = []
    emitted = ""
    for token in token_ids:
        seen.append(token)
        text = tokenizer.decode(seen, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            continue  # a multi-byte character is split across tokens: wait for the rest
        if len(text) > len(emitted) and text.startswith(emitted):
            yield text[len(emitted):]
            emitted = text
    final = tokenizer.decode(seen, skip_special_tokens=True)
    if final.startswith(emitted) and len(final) > len(emitted):
        yield final[len(emitted):]


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
