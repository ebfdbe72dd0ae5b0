"""What every backend shares about decoding: settings, statistics, the sampler, text streaming.

Both backends (transformers in bots.torch_decode, llama.cpp in bots.llama_backbone) pick
the next token with ``TokenPicker`` from the same logits the same way, so a greedy reply
depends only on the model, and a sampled one only on the model and the seed. Nothing here
imports torch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

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

    def validate(self) -> GenerationSettings:
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
    """'eos', 'length', 'cancelled' or 'guard'."""
    token_ids: list[int] = field(default_factory=list)
    cached_prompt_tokens: int = 0
    """Prompt tokens whose keys and values came from the prefix cache (llama.cpp backend)."""

    @property
    def decode_tokens_per_s(self) -> float:
        decode_time = self.latency_s - self.ttft_s
        return (self.new_tokens - 1) / decode_time if self.new_tokens > 1 and decode_time > 0 else 0.0


class TokenPicker:
    """Chooses each next token from a logits vector: repetition penalty, then greedy or top-p sampling."""

    def __init__(self, settings: GenerationSettings) -> None:
        self.settings = settings
        self.rng = np.random.Generator(np.random.PCG64(settings.seed))

    def __call__(self, logits: np.ndarray, generated: list[int]) -> int:
        settings = self.settings
        logits = np.array(logits, dtype=np.float32)  # a copy: the caller's buffer may be reused
        if settings.repetition_penalty != 1.0 and generated:
            seen = np.fromiter(set(generated), dtype=np.int64)
            values = logits[seen]
            logits[seen] = np.where(values > 0, values / settings.repetition_penalty, values * settings.repetition_penalty)
        if settings.temperature == 0.0:
            return int(np.argmax(logits))
        scaled = logits.astype(np.float64) / settings.temperature
        probs = np.exp(scaled - scaled.max())
        probs /= probs.sum()
        if settings.top_p < 1.0:
            order = np.argsort(-probs, kind="stable")
            sorted_probs = probs[order]
            keep = np.cumsum(sorted_probs) - sorted_probs < settings.top_p
            probs = np.zeros_like(probs)
            probs[order[keep]] = sorted_probs[keep]
            probs /= probs.sum()
        return int(self.rng.choice(len(probs), p=probs))


class Detokenizer(Protocol):
    def decode(self, token_ids: list[int], skip_special_tokens: bool = ...) -> str: ...


def stream_text(tokenizer: Detokenizer, token_ids: Iterator[int]) -> Iterator[str]:
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
