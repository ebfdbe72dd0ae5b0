"""The remote backbone: the same bots on any OpenAI-compatible engine (``--backend openai``).

    TOP_ENGINE_URL=http://127.0.0.1:8000/v1 python ui.py --backend openai
    TOP_ENGINE_URL=http://127.0.0.1:8000/v1 python -m bots --backend openai ask --variant medical-lora "..."

The engine (vLLM with --enable-lora, llama.cpp's server, TGI, or ``python -m bots.api``)
serves the base model and the LoRA adapters by name (bots/remote_engine.yaml); this process
keeps only a tokenizer of the same base (bots/chat_tokenizer.py).

Why the rendered prompt goes to /v1/completions, not the messages to /v1/chat/completions:
``Bot.stream`` has already made the exact prompt: the variant's template, the context
trimming (``fit_to_context``, which needs local token counts) and, for an emergency, the
escalation that opens the assistant's turn and which the model continues. A chat request
would be rendered again by the engine's template, trimmed by nobody, and could not continue
a started assistant message. A raw completion keeps all of it, so a remote variant behaves
like a local one. By default the prompt travels as the token ids (exact: the engine sees
what fit_to_context counted; vLLM, llama.cpp's server and bots.api take them);
``prompt_format: text`` sends the same prompt as text with its chat markup instead.

Sampling is the engine's: greedy replies equal the local ones only on an engine that
decodes like this project (``python -m bots.api`` does; vLLM's repetition penalty also
counts prompt tokens). An engine that is down, slow or failing ends the reply with a
GenerationError whose message says so; the page shows it and stays up.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bots.backbone_base import AdapterError, BackboneBase, ContextOverflow, GenerationError, Message
from bots.base_source import BaseModelSpec
from bots.chat_tokenizer import ChatTokenizer, load_chat_tokenizer
from bots.generation import GenerationSettings, GenerationStats
from bots.remote_config import RemoteConfig, RemoteConfigError

FINISH_TO_STOPPED = {"stop": "eos", "length": "length"}


@dataclass(frozen=True)
class RemoteBase:
    """What the page shows about the base (bots.backbone_base.BaseInfo)."""

    name: str
    fingerprint: str
    load_seconds: float = 0.0
    from_cache: bool = False


class RemoteBackbone(BackboneBase):
    backend = "openai"

    def __init__(self, tokenizer: ChatTokenizer, base: RemoteBase, config: RemoteConfig, client: httpx.Client | None = None) -> None:
        self.config = config.validate()
        super().__init__(base, config.context_tokens)
        self.tokenizer = tokenizer
        self.parallel_replies = config.parallel_replies
        timeout = httpx.Timeout(config.read_timeout_s, connect=config.connect_timeout_s)
        headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
        self.client = client or httpx.Client(timeout=timeout, headers=headers, limits=httpx.Limits(max_connections=config.parallel_replies + 4))

    # --- prompts: rendered and counted locally ---------------------------------------------------

    def encode(self, messages: list[Message]) -> list[int]:
        return self.tokenizer.encode(messages)

    def encode_text(self, text: str) -> list[int]:
        return self.tokenizer.encode_text(text)

    def decode_text(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode_text(token_ids)

    # --- adapters: served by the engine, checked here ------------------------------------------

    def load_adapter(self, name: str, path: Path) -> None:
        """The local folder must be a valid adapter for this base, and the config must name its engine model."""
        self.check_adapter(path)
        try:
            self.config.names.model_for(name)
        except RemoteConfigError as exc:
            raise AdapterError(str(exc)) from exc
        self.adapters[name] = path

    # --- generation -------------------------------------------------------------------------

    def stream(self, prompt_ids: list[int], adapter: str | None, settings: GenerationSettings, stats: GenerationStats) -> Iterator[str]:
        if adapter is not None and adapter not in self.adapters:
            raise AdapterError(f"adapter '{adapter}' is not loaded")
        if len(prompt_ids) + settings.max_new_tokens > self.context_tokens:
            raise ContextOverflow(f"{len(prompt_ids)} prompt tokens plus {settings.max_new_tokens} new ones exceed the {self.context_tokens}-token context")
        stats.prompt_tokens = len(prompt_ids)
        stats.stopped_by = "cancelled"  # until the engine says why it ended
        prompt: list[int] | str = list(prompt_ids) if self.config.prompt_format == "tokens" else self.tokenizer.render(prompt_ids)
        body = {
            "model": self.config.names.model_for(adapter),
            "prompt": prompt,
            "max_tokens": settings.max_new_tokens,
            "temperature": settings.temperature,
            "top_p": settings.top_p,
            "seed": settings.seed,
            "repetition_penalty": settings.repetition_penalty,  # vLLM and bots.api read it; others ignore it
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        return self._generate(body, stats)

    def _generate(self, body: dict[str, Any], stats: GenerationStats) -> Iterator[str]:
        url = f"{self.config.url}/completions"
        started = time.perf_counter()
        chunks = 0
        try:
            with self.client.stream("POST", url, json=body) as response:
                if response.status_code != 200:
                    response.read()
                    raise GenerationError(f"the engine at {self.config.url} refused the request (HTTP {response.status_code}: {_error_message(response)})")
                for line in response.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    chunk = _json(data)
                    if chunk.get("error"):
                        raise GenerationError(f"the engine failed: {_message_of(chunk['error'])}")
                    if isinstance(chunk.get("usage"), dict):
                        stats.new_tokens = int(chunk["usage"].get("completion_tokens") or stats.new_tokens)
                    for choice in chunk.get("choices") or []:
                        text = choice.get("text") or ""
                        if text:
                            chunks += 1
                            now = time.perf_counter()
                            if chunks == 1:
                                stats.ttft_s = now - started
                            stats.latency_s = now - started
                            stats.new_tokens = max(stats.new_tokens, chunks)
                            yield text
                        if choice.get("finish_reason"):
                            stats.stopped_by = FINISH_TO_STOPPED.get(choice["finish_reason"], "eos")
        except httpx.TimeoutException as exc:
            raise GenerationError(f"the engine at {self.config.url} did not answer in time ({type(exc).__name__}; read timeout {self.config.read_timeout_s:g}s)") from exc
        except httpx.TransportError as exc:
            raise GenerationError(f"the engine at {self.config.url} is unreachable ({exc or type(exc).__name__})") from exc
        finally:
            stats.latency_s = time.perf_counter() - started

    def close(self) -> None:
        self.client.close()


def _json(data: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except json.JSONDecodeError as exc:
        raise GenerationError(f"the engine sent something that is not JSON: {data[:80]!r}") from exc
    return value if isinstance(value, dict) else {}


def _message_of(error: Any) -> str:
    return str(error.get("message") or error) if isinstance(error, dict) else str(error)


def _error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200] or response.reason_phrase
    if isinstance(body, dict) and "error" in body:
        return _message_of(body["error"])
    return str(body.get("detail", body) if isinstance(body, dict) else body)[:200]


def build_remote_backbone(spec: BaseModelSpec, config: RemoteConfig | None = None) -> RemoteBackbone:
    """The backbone of ``--backend openai``: ``spec`` names the local tokenizer's base, the environment the engine."""
    started = time.perf_counter()
    config = (config or RemoteConfig.from_env()).validate()
    tokenizer, name, fingerprint = load_chat_tokenizer(spec)
    base = RemoteBase(f"{name}, served by {config.names.base} at {config.url}", fingerprint, time.perf_counter() - started)
    return RemoteBackbone(tokenizer, base, config)
