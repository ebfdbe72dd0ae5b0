"""A local tokenizer with the base model's chat template, for backbones that hold no model.

The remote backbone (bots/remote_backbone.py) renders prompts and counts tokens here, so
that context trimming (BackboneBase.fit_to_context), the safety guard's escalation prefix
and usage figures work exactly as with a local model, while the engine only generates.

    tokenizer, name, fingerprint = load_chat_tokenizer(BaseModelSpec.from_env())

For the embedded GGUF (or any .gguf file) the tokenizer is read from the file by llama.cpp
with ``vocab_only`` (no weights, no torch; ~0.1 s) when llama-cpp-python is installed, else
by transformers. For a hub id or a local folder it is transformers' AutoTokenizer.
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any, Protocol

from bots.base_source import EMBEDDED, EMBEDDED_NAME, BaseModelError, BaseModelSpec, cached_file_sha256, embedded_gguf_path

Message = dict[str, str]


class ChatTokenizer(Protocol):
    def encode(self, messages: list[Message]) -> list[int]:
        """Token ids of the chat, ending with the opening of the assistant's turn."""

    def encode_text(self, text: str) -> list[int]:
        """Token ids of plain text (no special tokens added), as the local backbone of this base makes them."""

    def decode_text(self, token_ids: list[int]) -> str:
        """Text of token ids, special tokens left out."""

    def render(self, token_ids: list[int]) -> str:
        """Text of token ids with the chat markup kept (a prompt to send as text)."""


class HfChatTokenizer:
    """A transformers tokenizer (the tiny test tokenizer, a hub id, a folder)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def encode(self, messages: list[Message]) -> list[int]:
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        if hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return list(ids)

    def encode_text(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))  # as bots.backbone.Backbone does

    def decode_text(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True)

    def render(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=False)


class GgufChatTokenizer:
    """The vocabulary and chat template of a GGUF file, read by llama.cpp without the weights."""

    def __init__(self, path: Path) -> None:
        import llama_cpp
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        from bots.llama_engine import _quiet_llama_logs

        self._lib = llama_cpp
        _quiet_llama_logs(llama_cpp)
        llama_cpp.llama_backend_init()
        params = llama_cpp.llama_model_default_params()
        params.vocab_only = True
        self._model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
        if not self._model:
            raise BaseModelError(f"llama.cpp could not read the vocabulary of {path}")
        self._vocab = llama_cpp.llama_model_get_vocab(self._model)
        template = self._meta("tokenizer.chat_template")
        if not template:
            raise BaseModelError(f"{path} has no chat template in its GGUF metadata")
        self._template = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(template)

    def _meta(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(1 << 16)
        n = self._lib.llama_model_meta_val_str(self._model, key.encode(), buf, 1 << 16)
        return None if n < 0 else buf.value.decode("utf-8", errors="replace")

    def _tokenize(self, text: str, special: bool) -> list[int]:
        data = text.encode("utf-8")
        capacity = len(data) + 16
        out = (self._lib.llama_token * capacity)()
        n = self._lib.llama_tokenize(self._vocab, data, len(data), out, capacity, False, special)
        if n < 0:
            capacity = -n
            out = (self._lib.llama_token * capacity)()
            n = self._lib.llama_tokenize(self._vocab, data, len(data), out, capacity, False, special)
        return list(out[:n])

    def _piece(self, token: int, special: bool) -> bytes:
        buf = ctypes.create_string_buffer(64)
        n = self._lib.llama_token_to_piece(self._vocab, token, buf, 64, 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = self._lib.llama_token_to_piece(self._vocab, token, buf, -n, 0, special)
        return buf.raw[:n]

    def encode(self, messages: list[Message]) -> list[int]:
        # The same rendering as the llama.cpp backbone, so both count the same tokens.
        text = self._template.render(messages=messages, add_generation_prompt=True, bos_token="", eos_token="")
        return self._tokenize(text, special=True)

    def encode_text(self, text: str) -> list[int]:
        return self._tokenize(text, special=False)

    def decode_text(self, token_ids: list[int]) -> str:
        return b"".join(self._piece(t, False) for t in token_ids).decode("utf-8", errors="replace")

    def render(self, token_ids: list[int]) -> str:
        return b"".join(self._piece(t, True) for t in token_ids).decode("utf-8", errors="replace")


def _gguf_path(spec: BaseModelSpec) -> Path | None:
    if spec.source == EMBEDDED:
        return embedded_gguf_path()
    path = Path(spec.source).expanduser()
    return path if spec.source.endswith(".gguf") and path.is_file() else None


def load_chat_tokenizer(spec: BaseModelSpec) -> tuple[ChatTokenizer, str, str]:
    """(tokenizer, base model name, fingerprint) of the base model ``spec`` names.

    The fingerprint is the one the local backends compute, so adapters trained for the
    embedded base pass BackboneBase.check_adapter here as well.
    """
    import importlib.util

    gguf = _gguf_path(spec)
    if gguf is not None:
        name = EMBEDDED_NAME if spec.source == EMBEDDED else gguf.name
        fingerprint = cached_file_sha256(gguf, spec.cache_dir)
        if importlib.util.find_spec("llama_cpp") is not None:
            return GgufChatTokenizer(gguf), name, fingerprint
        from transformers import AutoTokenizer

        return HfChatTokenizer(AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)), name, fingerprint
    from transformers import AutoTokenizer

    from bots.base_model import _folder_fingerprint

    try:
        tokenizer = AutoTokenizer.from_pretrained(spec.source)
    except (OSError, ValueError) as exc:
        raise BaseModelError(f"Could not load the tokenizer of '{spec.source}': {exc}") from exc
    return HfChatTokenizer(tokenizer), spec.source, _folder_fingerprint(spec.source)
