"""The OpenAI wire format of bots/api.py: requests checked into dataclasses, responses and errors.

Only what the server honours is read: ``model``, ``messages`` (or ``prompt`` for
/v1/completions), ``stream``, ``stream_options.include_usage``, ``temperature``, ``top_p``,
``max_tokens`` / ``max_completion_tokens``, ``seed``, ``stop``, ``n`` (1 only), and two extra
fields: ``repetition_penalty`` (as vLLM names it) and ``guard`` (false switches the safety
guards off, like the page's checkbox). A value out of range, of the wrong type, or a
feature this server does not have (tools, images, logprobs, n > 1) is a 400 naming the
parameter; unknown fields are ignored, as OpenAI-compatible servers do.
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from bots.generation import MAX_NEW_TOKENS_LIMIT, GenerationSettings, GenerationStats

Message = dict[str, str]
CHAT_ROLES = ("system", "developer", "user", "assistant")
MAX_STOPS = 4
MAX_STOP_CHARS = 128


class ApiError(Exception):
    """An error answer: HTTP status and the OpenAI error object."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None, code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


@dataclass(frozen=True)
class Limits:
    """Bounds on one request, before any model work."""

    max_chars: int = 20_000
    """Characters of all messages (or the prompt) together; the context holds ~2048 tokens."""
    max_messages: int = 200


@dataclass(frozen=True)
class Decoding:
    """What every generation request carries besides its input."""

    model: str
    settings: GenerationSettings
    stream: bool = False
    include_usage: bool = False
    stops: tuple[str, ...] = ()


@dataclass(frozen=True)
class ChatRequest:
    decoding: Decoding
    messages: list[Message] = field(default_factory=list)
    """As sent (system messages included), content as plain text."""
    guard: bool = True


@dataclass(frozen=True)
class CompletionRequest:
    decoding: Decoding
    prompt: str | list[int] = ""


# --- parsing ----------------------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _number(body: dict[str, Any], name: str, default: float, low: float, high: float, low_open: bool = False) -> float:
    value = body.get(name)
    if value is None:
        return default
    ok = _is_number(value) and (low < value if low_open else low <= value) and value <= high
    if not ok:
        bound = f"greater than {low:g}" if low_open else f"at least {low:g}"
        raise bad_request(f"'{name}' must be a number {bound} and at most {high:g}; got {value!r}", name, "invalid_value")
    return float(value)


def _integer(body: dict[str, Any], name: str, low: int, high: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise bad_request(f"'{name}' must be an integer from {low} to {high}; got {value!r}", name, "invalid_value")
    return value


def _stops(body: dict[str, Any]) -> tuple[str, ...]:
    value = body.get("stop")
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops) or len(stops) > MAX_STOPS:
        raise bad_request(f"'stop' must be a non-empty string or a list of up to {MAX_STOPS} non-empty strings", "stop", "invalid_value")
    if any(len(s) > MAX_STOP_CHARS for s in stops):
        raise bad_request(f"each stop string may have at most {MAX_STOP_CHARS} characters", "stop", "invalid_value")
    return tuple(stops)


def _refuse_unsupported(body: dict[str, Any]) -> None:
    if body.get("n") not in (None, 1):
        raise bad_request("only n=1 is supported", "n", "unsupported_value")
    for name in ("tools", "functions", "tool_choice", "function_call"):
        if body.get(name):
            raise bad_request(f"'{name}' is not supported: these bots do not call tools", name, "unsupported_parameter")
    if body.get("logprobs") or body.get("top_logprobs"):
        raise bad_request("'logprobs' is not supported", "logprobs", "unsupported_parameter")
    for name in ("presence_penalty", "frequency_penalty"):
        if body.get(name) not in (None, 0, 0.0):
            raise bad_request(f"'{name}' is not supported; use 'repetition_penalty' (1 to 2)", name, "unsupported_parameter")
    response_format = body.get("response_format")
    if response_format not in (None, {"type": "text"}):
        raise bad_request("only text responses are supported", "response_format", "unsupported_value")


def _decoding(body: dict[str, Any]) -> Decoding:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("'model' is required: a variant name (GET /v1/models lists them)", "model", "missing_model")
    _refuse_unsupported(body)
    defaults = GenerationSettings()
    max_tokens = _integer(body, "max_completion_tokens", 1, MAX_NEW_TOKENS_LIMIT)
    if max_tokens is None:
        max_tokens = _integer(body, "max_tokens", 1, MAX_NEW_TOKENS_LIMIT)
    seed = _integer(body, "seed", 0, 2**63 - 1)
    settings = GenerationSettings(
        max_new_tokens=max_tokens or defaults.max_new_tokens,
        temperature=_number(body, "temperature", defaults.temperature, 0.0, 2.0),
        top_p=_number(body, "top_p", defaults.top_p, 0.0, 1.0, low_open=True),
        repetition_penalty=_number(body, "repetition_penalty", defaults.repetition_penalty, 1.0, 2.0),
        seed=defaults.seed if seed is None else seed,
    ).validate()
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise bad_request("'stream' must be true or false", "stream", "invalid_type")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise bad_request("'stream_options' must be an object", "stream_options", "invalid_type")
    return Decoding(model, settings, stream, bool(options.get("include_usage", False)), _stops(body))


def _content_text(content: Any, index: int) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise bad_request(f"messages[{index}]: only text content is supported", f"messages[{index}].content", "unsupported_content")
            parts.append(part["text"])
        return "".join(parts)
    raise bad_request(f"messages[{index}] needs text content", f"messages[{index}].content", "invalid_type")


def parse_chat(body: Any, limits: Limits = Limits()) -> ChatRequest:
    """A checked /v1/chat/completions request, or ApiError(400)."""
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    decoding = _decoding(body)
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise bad_request("'messages' must be a non-empty list of {role, content}", "messages", "missing_messages")
    if len(raw) > limits.max_messages:
        raise bad_request(f"too many messages: {len(raw)}, at most {limits.max_messages}", "messages", "too_many_messages")
    messages = []
    for index, message in enumerate(raw):
        if not isinstance(message, dict) or message.get("role") not in CHAT_ROLES:
            role = message.get("role") if isinstance(message, dict) else None
            raise bad_request(f"messages[{index}]: role must be one of {', '.join(CHAT_ROLES)}; got {role!r}", f"messages[{index}].role", "invalid_role")
        messages.append({"role": str(message["role"]), "content": _content_text(message.get("content"), index)})
    chars = sum(len(m["content"]) for m in messages)
    if chars > limits.max_chars:
        raise bad_request(f"the messages are too long: {chars} characters, at most {limits.max_chars}", "messages", "context_length_exceeded")
    guard = body.get("guard", True)
    if not isinstance(guard, bool):
        raise bad_request("'guard' must be true or false", "guard", "invalid_type")
    return ChatRequest(decoding, messages, guard)


def parse_completion(body: Any, limits: Limits = Limits()) -> CompletionRequest:
    """A checked /v1/completions request (raw models only), or ApiError(400)."""
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    decoding = _decoding(body)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, list):
        if not prompt or not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in prompt):
            raise bad_request("'prompt' must be a string or one list of token ids", "prompt", "invalid_prompt")
    elif not isinstance(prompt, str) or not prompt:
        raise bad_request("'prompt' must be a non-empty string or one list of token ids", "prompt", "invalid_prompt")
    if len(prompt) > limits.max_chars:
        raise bad_request(f"the prompt is too long: {len(prompt)}, at most {limits.max_chars}", "prompt", "context_length_exceeded")
    return CompletionRequest(decoding, prompt)


# --- answers ----------------------------------------------------------------------------------


def new_id(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex[:24]}"


def usage(stats: GenerationStats) -> dict[str, int]:
    """Tokens the model read (its whole prompt) and generated; a guard's fixed reply costs none."""
    return {"prompt_tokens": stats.prompt_tokens, "completion_tokens": stats.new_tokens, "total_tokens": stats.prompt_tokens + stats.new_tokens}


def finish_reason(stats: GenerationStats, stopped_by_string: bool) -> str:
    return "length" if stats.stopped_by == "length" and not stopped_by_string else "stop"


@dataclass(frozen=True)
class Envelope:
    """The fields every object of one answer shares."""

    id: str
    model: str
    created: int = field(default_factory=lambda: int(time.time()))
    system_fingerprint: str | None = None

    def wrap(self, obj: str, **fields: Any) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model, "system_fingerprint": self.system_fingerprint, **fields}
