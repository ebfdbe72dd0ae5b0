"""The one shared base model of a process, the adapters it knows by name, and generation.

peft's active adapter is global state on the model, so every generation holds the
backbone's lock from the first forward pass to the last: two concurrent requests never
see each other's adapter. A prompt variant runs with all adapters disabled, which gives
exactly the base model's output.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import PeftModel

from bots.base_model import LoadedBase
from bots.generation import GenerationSettings, GenerationStats, generate_token_ids, stop_token_ids, stream_text

ADAPTER_META = "tune_or_prompt.json"
DEFAULT_CONTEXT_TOKENS = 2048

Message = dict[str, str]


class ContextOverflow(ValueError):
    """The fixed part of the prompt plus the reply budget does not fit the context."""


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


class Backbone:
    """Loads nothing itself: it wraps an already loaded base (see bots.base_model.load_base)."""

    def __init__(self, base: LoadedBase, context_tokens: int = DEFAULT_CONTEXT_TOKENS) -> None:
        self.base = base
        self.tokenizer = base.tokenizer
        self.model = base.model
        self.context_tokens = min(context_tokens, int(getattr(base.model.config, "max_position_embeddings", context_tokens)))
        self.adapters: dict[str, Path] = {}
        self.lock = threading.Lock()
        self.stop_ids = stop_token_ids(base.tokenizer, base.model)

    # --- adapters -------------------------------------------------------------------------

    def check_adapter(self, path: Path) -> dict:
        """Raise AdapterError unless ``path`` holds a PEFT adapter trained on this base."""
        if not path.is_dir():
            raise AdapterError(f"adapter folder {path} does not exist (train it with: python -m training.train --domain <domain>)")
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

    def load_adapter(self, name: str, path: Path) -> None:
        """Attach an adapter under ``name``; on any failure the model is left as it was."""
        self.check_adapter(path)
        with self.lock:
            try:
                if isinstance(self.model, PeftModel):
                    self.model.load_adapter(str(path), adapter_name=name)
                else:
                    self.model = PeftModel.from_pretrained(self.model, str(path), adapter_name=name)
            except Exception as exc:  # peft raises many kinds; all mean "this adapter is unusable"
                if isinstance(self.model, PeftModel) and name in self.model.peft_config:
                    self.model.delete_adapter(name)
                raise AdapterError(f"adapter {path.name} could not be loaded: {exc}") from exc
            self.model.eval()
            self.adapters[name] = path

    @contextlib.contextmanager
    def _adapter_active(self, adapter: str | None) -> Iterator[None]:
        """Caller holds the lock. None: the bare base model, all adapters off."""
        if adapter is None:
            if isinstance(self.model, PeftModel):
                with self.model.disable_adapter():
                    yield
            else:
                yield
            return
        if adapter not in self.adapters:
            raise AdapterError(f"adapter '{adapter}' is not loaded")
        self.model.set_adapter(adapter)
        yield

    # --- prompts --------------------------------------------------------------------------

    def encode(self, messages: list[Message]) -> list[int]:
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return list(ids)

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
            last_ids = self.tokenizer.encode(kept[-1]["content"], add_special_tokens=False)
            if overflow >= len(last_ids):
                raise ContextOverflow(
                    f"the prompt ({len(self.encode(fixed))} tokens of system prompt and examples) plus {max_new_tokens} new tokens "
                    f"does not fit the {self.context_tokens}-token context: lower max new tokens or shorten the prompt"
                )
            # Keep the end of the message: a question usually comes last.
            shortened = self.tokenizer.decode(last_ids[overflow + 8 :])
            kept[-1] = {"role": kept[-1]["role"], "content": shortened}
            ids = self.encode(fixed + kept)
            while len(ids) > budget:  # re-tokenising at the cut can add a token or two
                shortened = shortened[8:]
                kept[-1] = {"role": kept[-1]["role"], "content": shortened}
                ids = self.encode(fixed + kept)
            truncated = len(last_ids) - len(self.tokenizer.encode(shortened, add_special_tokens=False))
        return TrimResult(ids, dropped, truncated)

    # --- scoring --------------------------------------------------------------------------

    def continuation_nll(self, prompt_ids: list[int], continuation_ids: list[int], adapter: str | None) -> tuple[float, int]:
        """Summed negative log-likelihood of ``continuation_ids`` after ``prompt_ids``, and its token count.

        exp(sum / count) is the perplexity of the continuation under this variant.
        """
        if not continuation_ids:
            raise ValueError("nothing to score: the continuation is empty")
        ids = torch.tensor([prompt_ids + continuation_ids], dtype=torch.long)
        with self.lock, self._adapter_active(adapter), torch.inference_mode():
            # Only the positions that predict the continuation need logits.
            logits = self.model(input_ids=ids, logits_to_keep=len(continuation_ids) + 1).logits[0, :-1].float()
        targets = torch.tensor(continuation_ids, dtype=torch.long)
        nll = torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
        return float(nll), len(continuation_ids)

    # --- generation -----------------------------------------------------------------------

    def stream(self, prompt_ids: list[int], adapter: str | None, settings: GenerationSettings, stats: GenerationStats) -> Iterator[str]:
        """Yield text pieces of the reply. Holds the lock until done or closed."""
        with self.lock, self._adapter_active(adapter):
            token_ids = generate_token_ids(self.model, prompt_ids, settings, self.stop_ids, stats)
            try:
                yield from stream_text(self.tokenizer, token_ids)
            finally:
                token_ids.close()  # a consumer that stops early frees the model at once
