"""What both serving backends share: the adapter checks, the context budget and the interface.

A backbone is the one loaded base model of a process plus the adapters it knows by
name. ``bots.backbone.Backbone`` runs it with transformers + peft (the reference and
training path); ``bots.llama_backbone.LlamaCppBackbone`` runs the same GGUF weights and
converted adapters with llama.cpp. Bots talk to either through this interface. Nothing
here imports torch.
"""

from __future__ import annotations

import json
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from bots.generation import GenerationSettings, GenerationStats

ADAPTER_META = "tune_or_prompt.json"
DEFAULT_CONTEXT_TOKENS = 2048
EMBED_MAX_TOKENS = 256
"""``embed`` reads at most the last this many tokens of a message."""

Message = dict[str, str]


class ContextOverflow(ValueError):
    """The fixed part of the prompt plus the reply budget does not fit the context."""


class GenerationError(RuntimeError):
    """The backend failed in the middle of a reply (the part already streamed stands)."""


class AdapterError(RuntimeError):
    """An adapter folder cannot be used; the message says why."""


@dataclass(frozen=True)
class TrimResult:
    """The prompt ids that fit the context budget, and what had to go."""

    prompt_ids: list[int]
    dropped_messages: int
    truncated_tokens: int

    @property
    def notice(self) -> str:
        parts = []
        if self.dropped_messages:
            parts.append(f"{self.dropped_messages} earlier message(s) were left out to fit the model's context")
        if self.truncated_tokens:
            parts.append(f"your message was cut by {self.truncated_tokens} tokens to fit the model's context")
        return "; ".join(parts)


class BaseInfo(Protocol):
    """What the UI and reports show about the loaded base model (bots.base_model.LoadedBase has it)."""

    name: str
    fingerprint: str
    """sha256 identifying the weights (adapters record it to refuse a foreign base)."""
    load_seconds: float
    from_cache: bool


class BackboneBase(ABC):
    """The base model of a process, its adapters by name, prompt encoding and generation."""

    backend: str = ""
    """Short name of the serving backend ('transformers', 'llamacpp')."""
    parallel_replies: int = 1
    """Replies it generates at once. 1: a stream holds the model until it is exhausted or
    closed, so a caller must finish one stream before it reads the next."""

    def __init__(self, base: BaseInfo, context_tokens: int) -> None:
        self.base = base
        self.context_tokens = context_tokens
        self.adapters: dict[str, Path] = {}
        self.lock = threading.Lock()
        """Held while the model computes (the transformers backbone: a whole reply)."""

    # --- what each backend provides --------------------------------------------------------

    @abstractmethod
    def encode(self, messages: list[Message]) -> list[int]:
        """Token ids of the chat, ending with the opening of the assistant's turn."""

    @abstractmethod
    def encode_text(self, text: str) -> list[int]:
        """Token ids of plain text (no chat markup, no special tokens added)."""

    @abstractmethod
    def decode_text(self, token_ids: list[int]) -> str:
        """Text of token ids, special tokens left out."""

    @abstractmethod
    def load_adapter(self, name: str, path: Path) -> None:
        """Attach the PEFT adapter in ``path`` under ``name``; raise AdapterError if unusable."""

    @abstractmethod
    def stream(self, prompt_ids: list[int], adapter: str | None, settings: GenerationSettings, stats: GenerationStats) -> Iterator[str]:
        """Yield text pieces of the reply; closing the iterator stops generation at once."""

    def adapter_serving(self, name: str | None) -> str | None:
        """How adapter ``name`` is served when not the usual way (applied at run time), e.g.
        "merged Q8_0"; None otherwise. Part of an evaluation reply's fingerprint."""
        return None

    def embed(self, text: str, blocks: int | None = None, copy_weights: str | None = None) -> np.ndarray:
        """Mean over ``text``'s tokens of the base model's hidden state after ``blocks`` blocks
        (None: all), through the final norm, adapters off: the learned emergency detector's
        features (bots/detector.py). ``copy_weights``: a backend that runs a truncated copy for
        ``blocks`` (llama.cpp) makes its weights that format (e.g. Q4_0); others ignore it. A
        backend without embeddings raises NotImplementedError, and the rules then act alone."""
        raise NotImplementedError(f"the {self.backend or 'this'} backend computes no embeddings")

    def prefill(self, prompt_ids: list[int], adapter: str | None) -> None:
        """Compute and keep the cache for prompts that start with ``prompt_ids``, in the
        background, if the backend keeps such a cache (the default does nothing)."""
        return None

    def wait_idle(self, timeout_s: float = 60.0) -> bool:
        """Block until background work (such as prefills) is done; True when idle."""
        return True

    # --- shared -----------------------------------------------------------------------------

    def check_adapter(self, path: Path) -> dict:
        """Raise AdapterError unless ``path`` holds a PEFT adapter trained on this base."""
        if not path.is_dir():
            how = (
                f"python -m training.hybrid_data --domain {path.name.removesuffix('-hybrid')}, then the training command it prints"
                if path.name.endswith("-hybrid")
                else f"python -m training.train --domain {path.name}"
            )
            raise AdapterError(f"adapter folder {path} does not exist (train it with: {how})")
        for required in ("adapter_config.json", "adapter_model.safetensors", ADAPTER_META):
            if not (path / required).is_file():
                raise AdapterError(f"adapter folder {path} has no {required}")
        try:
            meta = json.loads((path / ADAPTER_META).read_text())
            json.loads((path / "adapter_config.json").read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise AdapterError(f"adapter folder {path}: unreadable metadata ({exc})") from exc
        trained_on = meta.get("base_fingerprint")
        if trained_on != self.base.fingerprint:
            raise AdapterError(
                f"adapter {path.name} was trained for another base model (fingerprint {str(trained_on)[:12]}, "
                f"loaded base {self.base.fingerprint[:12]}); retrain it for this base"
            )
        return meta

    def fit_to_context(self, fixed: list[Message], conversation: list[Message], max_new_tokens: int) -> TrimResult:
        """Drop the oldest turns (then cut the last message) until the prompt fits.

        ``fixed`` (system prompt, few-shot) always stays; ``conversation`` ends with the user.
        """
        budget = self.context_tokens - max_new_tokens
        kept = list(conversation)
        dropped = 0
        ids = self.encode(fixed + kept)
        while len(ids) > budget and len(kept) > 1:
            # Drop a user/assistant pair at a time so the roles keep alternating.
            step = 2 if len(kept) > 2 else 1
            kept = kept[step:]
            dropped += step
            ids = self.encode(fixed + kept)
        truncated = 0
        if len(ids) > budget:
            overflow = len(ids) - budget
            last_ids = self.encode_text(kept[-1]["content"])
            if overflow >= len(last_ids):
                raise ContextOverflow(
                    f"the prompt ({len(self.encode(fixed))} tokens of system prompt and examples) plus {max_new_tokens} new tokens "
                    f"does not fit the {self.context_tokens}-token context: lower max new tokens or shorten the prompt"
                )
            # Keep the end of the message: a question usually comes last.
            shortened = self.decode_text(last_ids[overflow + 8 :])
            kept[-1] = {"role": kept[-1]["role"], "content": shortened}
            ids = self.encode(fixed + kept)
            while len(ids) > budget:  # re-tokenising at the cut can add a token or two
                shortened = shortened[8:]
                kept[-1] = {"role": kept[-1]["role"], "content": shortened}
                ids = self.encode(fixed + kept)
            truncated = len(last_ids) - len(self.encode_text(shortened))
        return TrimResult(ids, dropped, truncated)
