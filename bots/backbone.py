"""The transformers + peft backbone: the reference backend and the one training uses.

peft's active adapter is global state on the model, so every generation holds the
backbone's lock from the first forward pass to the last: two concurrent requests never
see each other's adapter. A prompt variant runs with all adapters disabled, which gives
exactly the base model's output.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from peft import PeftModel

from bots.backbone_base import (  # noqa: F401  re-exported: callers import them from here
    ADAPTER_META,
    DEFAULT_CONTEXT_TOKENS,
    EMBED_MAX_TOKENS,
    AdapterError,
    BackboneBase,
    BaseInfo,
    ContextOverflow,
    Message,
    TrimResult,
)
from bots.base_model import LoadedBase
from bots.generation import GenerationSettings, GenerationStats, stream_text
from bots.torch_decode import generate_token_ids, stop_token_ids


class Backbone(BackboneBase):
    """Loads nothing itself: it wraps an already loaded base (see bots.base_model.load_base)."""

    backend = "transformers"

    def __init__(self, base: LoadedBase, context_tokens: int = DEFAULT_CONTEXT_TOKENS) -> None:
        limit = int(getattr(base.model.config, "max_position_embeddings", context_tokens))
        super().__init__(base, min(context_tokens, limit))
        self.tokenizer = base.tokenizer
        self.model = base.model
        self.stop_ids = stop_token_ids(base.tokenizer, base.model)

    # --- adapters -------------------------------------------------------------------------

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

    def encode_text(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode_text(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True)

    def embed(self, text: str, blocks: int | None = None, copy_weights: str | None = None) -> np.ndarray:
        # copy_weights is llama.cpp's: here the blocks run in full precision on the dequantised weights.
        ids = self.encode_text(text)[-EMBED_MAX_TOKENS:]
        if not ids:
            raise ValueError("nothing to embed: the text has no tokens")
        with self.lock, self._adapter_active(None), torch.inference_mode():
            states = self.model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
            # hidden_states[k] is the output of block k; the last one already went through the final norm.
            hidden = states[-1] if blocks is None or blocks >= len(states) - 1 else self._final_norm(states[blocks])
        return hidden[0].float().mean(dim=0).numpy()

    def _final_norm(self, hidden: torch.Tensor) -> torch.Tensor:
        model = self.model.get_base_model() if isinstance(self.model, PeftModel) else self.model
        return model.model.norm(hidden)

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
