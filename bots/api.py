"""OpenAI-compatible HTTP API: the four variants (and, for remote backends, the raw base and adapters).

    python -m bots.api --port 8000                 # standalone, on 127.0.0.1:8000
    python ui.py                                   # the page serves the same API under /v1 on its port

    GET  /v1/models               variants (template, adapter and guards applied) and raw models
    POST /v1/chat/completions     streaming (SSE) or not; ``model`` is a variant or a raw model
    POST /v1/completions          raw models only: a prompt (text or token ids) continued as it is

A variant's reply goes through the same ``Bot.stream`` as the page's, so a client gets
what a page user gets: the same prompt, adapter, context trimming and safety guards. Extra
response field ``guard`` says whether a guard acted and which (``emergency``, ``injection``,
``off_topic``); extra request field ``guard: false`` switches them off (the page's checkbox).

Raw models are the engine side of the remote backend (bots/remote_backbone.py): the base
model and each adapter under the names of bots/remote_engine.yaml, with no template and
no guards, so that another instance of this project can use this one as its engine.

Requests are admitted by a gate (bots/gate.py; on the UI's port, the page's own gate):
when it is full the answer is 429 with Retry-After. With TOP_API_KEY set, every request
needs ``Authorization: Bearer <key>`` (401 otherwise). Errors have the OpenAI shape
``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import argparse
import contextlib
import hmac
import json
import os
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from bots.api_schema import (
    ApiError,
    ChatRequest,
    CompletionRequest,
    Decoding,
    Envelope,
    Limits,
    bad_request,
    finish_reason,
    new_id,
    parse_chat,
    parse_completion,
    usage,
)
from bots.backbone_base import ContextOverflow, GenerationError
from bots.bot import ReplyStream, VariantUnavailable
from bots.cli_args import CommandParser
from bots.conversation import ConversationError, clean_conversation
from bots.gate import Admission, Gate, GateConfig, ServerBusy
from bots.generation import GenerationStats, SettingsError
from bots.registry import VARIANTS, Runtime, get_runtime
from bots.remote_config import EngineNames, engine_names
from bots.stop_strings import StopCutter

ENV_API_KEY = "TOP_API_KEY"
OWNER = "tune-or-prompt"
GUARD_KINDS = (("Emergency", "emergency"), ("Urgent-care", "urgent"), ("Injection", "injection"), ("Out-of-scope", "off_topic"))
"""How Bot.stream's guard note begins, per guard (bots/bot.py _guard_note)."""


@dataclass(frozen=True)
class ApiConfig:
    api_key: str = ""
    """Required bearer key; '' lets every request in."""
    serve_raw: bool = True
    """Also serve the base and adapters as raw models (the engine side of --backend openai)."""
    queue_timeout_s: float = 300.0
    """Longest wait for a turn once admitted; then 503."""
    retry_after_s: int = 2
    limits: Limits = field(default_factory=Limits)

    @classmethod
    def from_env(cls, **overrides: Any) -> ApiConfig:
        return cls(api_key=os.environ.get(ENV_API_KEY, "").strip(), **overrides)


# --- the service: requests in, replies out ---------------------------------------------------


@dataclass(frozen=True)
class Target:
    """What a ``model`` name resolves to."""

    name: str
    variant: str | None = None
    adapter: str | None = None
    """For a raw model: its adapter (None: the bare base)."""


class _Once:
    def __init__(self, action: Callable[[], None]) -> None:
        self._action: Callable[[], None] | None = action
        self._lock = threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            action, self._action = self._action, None
        if action:
            action()


@dataclass
class ReplyRun:
    """One admitted reply: iterate ``deltas`` for the text the client gets (stop strings cut)."""

    stream: ReplyStream
    release: Callable[[], None]
    stops: tuple[str, ...] = ()
    guard_enabled: bool = True
    text: str = ""
    stopped_by_string: bool = False

    def deltas(self) -> Iterator[str]:
        cutter = StopCutter(self.stops)
        try:
            for piece in self.stream:
                out = cutter.feed(piece)
                if out:
                    self.text += out
                    yield out
                if cutter.stopped:
                    self.stopped_by_string = True
                    break  # closing the stream below stops the generation early
            rest = cutter.finish()
            if rest:
                self.text += rest
                yield rest
        finally:
            self.stream.close()
            self.release()

    def __del__(self) -> None:
        # A stream response that never started (the client left first) still frees its place.
        self.release()
        self.stream.close()

    @property
    def stats(self) -> GenerationStats:
        return self.stream.stats

    @property
    def finish_reason(self) -> str:
        return finish_reason(self.stats, self.stopped_by_string)

    def guard(self) -> dict[str, Any]:
        note = self.stream.guard_note
        kind = next((kind for start, kind in GUARD_KINDS if note.startswith(start)), "other") if note else None
        triage = self.stream.triage
        # The emergency guard's decision: which part acted (rules, detector) and the detector's score.
        emergency = triage.record() if triage else None
        return {"enabled": self.guard_enabled, "acted": bool(note), "kind": kind, "note": note or None, "emergency": emergency}


class ApiService:
    """Resolves models, admits requests, and starts replies (variants via Bot.stream)."""

    def __init__(self, config: ApiConfig | None = None, runtime: Callable[[], Runtime] = get_runtime, gate: Callable[[], Admission] | None = None, names: EngineNames | None = None) -> None:
        self.config = config or ApiConfig.from_env()
        self.runtime = runtime
        self.names = names or engine_names()
        self._own_gate: Gate | None = None
        self._gate = gate or self._default_gate

    def _default_gate(self) -> Admission:
        if self._own_gate is None:
            self._own_gate = Gate(GateConfig.from_env(), parallel=lambda: self.runtime().backbone.parallel_replies)
        return self._own_gate

    # --- models --------------------------------------------------------------------------------

    def models(self) -> list[dict[str, Any]]:
        runtime = self.runtime()
        rows = []
        for name, spec in VARIANTS.items():
            bot = runtime.bot(name)
            rows.append({"id": name, "object": "model", "created": 0, "owned_by": OWNER, "kind": "variant", "label": spec.label, "available": bot.availability.ok, **({} if bot.availability.ok else {"reason": bot.availability.reason})})
        if self.config.serve_raw:
            rows.append({"id": self.names.base, "object": "model", "created": 0, "owned_by": OWNER, "kind": "base", "available": True})
            for adapter, name in self.names.adapters.items():
                rows.append({"id": name, "object": "model", "created": 0, "owned_by": OWNER, "kind": "adapter", "parent": self.names.base, "available": adapter in runtime.backbone.adapters})
        return rows

    def resolve(self, model: str) -> Target:
        runtime = self.runtime()
        if model in VARIANTS:
            bot = runtime.bot(model)
            if not bot.availability.ok:
                raise ApiError(404, f"model '{model}' is unavailable: {bot.availability.reason}", param="model", code="model_not_available")
            return Target(model, variant=model)
        known, adapter = self.names.adapter_of(model) if self.config.serve_raw else (False, None)
        if not known:
            choices = ", ".join(row["id"] for row in self.models())
            raise ApiError(404, f"the model '{model}' does not exist; choose one of: {choices}", param="model", code="model_not_found")
        if adapter is not None and adapter not in runtime.backbone.adapters:
            raise ApiError(404, f"model '{model}' is unavailable: its adapter '{adapter}' is not loaded", param="model", code="model_not_available")
        return Target(model, adapter=adapter)

    def fingerprint(self) -> str:
        backbone = self.runtime().backbone
        return f"{backbone.backend}-{backbone.base.fingerprint[:12]}"

    # --- starting a reply ----------------------------------------------------------------------

    def open_chat(self, request: ChatRequest) -> ReplyRun:
        target = self.resolve(request.decoding.model)
        if target.variant is None:
            return self._admitted(request.decoding, lambda: self._raw_stream(self.runtime().backbone.encode(request.messages), target, request.decoding), guard=False)
        # Each variant brings its own system prompt; a client's system messages are left out, as `bots batch` does.
        conversation = [m for m in request.messages if m["role"] not in ("system", "developer")]
        try:
            clean_conversation(conversation)  # a bad conversation is a 400 before it takes a place in line
        except ConversationError as exc:
            raise bad_request(str(exc), "messages", "invalid_messages") from exc
        bot = self.runtime().bot(target.variant)
        return self._admitted(request.decoding, lambda: bot.stream(conversation, request.decoding.settings, guard=request.guard), guard=request.guard)

    def open_completion(self, request: CompletionRequest) -> ReplyRun:
        target = self.resolve(request.decoding.model)
        if target.variant is not None:
            raise bad_request(f"'{target.name}' is a chat variant: use /v1/chat/completions", "model", "wrong_endpoint")
        backbone = self.runtime().backbone
        prompt = request.prompt
        # Token ids are used as they are (the remote backbone sends those); text is plain text.
        ids = list(prompt) if isinstance(prompt, list) else backbone.encode_text(prompt)
        return self._admitted(request.decoding, lambda: self._raw_stream(ids, target, request.decoding), guard=False)

    def _raw_stream(self, prompt_ids: list[int], target: Target, decoding: Decoding) -> ReplyStream:
        backbone = self.runtime().backbone
        if len(prompt_ids) + decoding.settings.max_new_tokens > backbone.context_tokens:
            raise ContextOverflow(f"{len(prompt_ids)} prompt tokens plus {decoding.settings.max_new_tokens} new ones exceed the {backbone.context_tokens}-token context")
        stats = GenerationStats(prompt_tokens=len(prompt_ids))
        return ReplyStream(backbone.stream(prompt_ids, target.adapter, decoding.settings, stats), stats)

    def _admitted(self, decoding: Decoding, start: Callable[[], ReplyStream], guard: bool) -> ReplyRun:
        """Take a place in line (429 when full), wait for the turn (503 after too long), start."""
        gate = self._gate()
        retry = {"Retry-After": str(self.config.retry_after_s)}
        try:
            ticket = gate.admit()
        except ServerBusy as exc:
            raise ApiError(429, str(exc), "rate_limit_error", code="server_busy", headers=retry) from exc
        release = _Once(lambda: gate.leave(ticket))
        try:
            if gate.wait_turn(ticket, self.config.queue_timeout_s):
                raise ApiError(503, f"no turn within {self.config.queue_timeout_s:.0f}s; retry later", "server_error", code="queue_timeout", headers=retry)
            stream = start()
        except (ConversationError, SettingsError, ContextOverflow) as exc:
            release()
            raise bad_request(str(exc), "messages", "invalid_request") from exc
        except VariantUnavailable as exc:
            release()
            raise ApiError(404, str(exc), param="model", code="model_not_available") from exc
        except BaseException:
            release()
            raise
        return ReplyRun(stream, release, decoding.stops, guard)


# --- HTTP ---------------------------------------------------------------------------------------


def _error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


def _sse(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


_END = object()


def _check_key(config: ApiConfig, request: Request) -> None:
    if not config.api_key:
        return
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), config.api_key.encode()):
        raise ApiError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'", "authentication_error", code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


async def _body(request: Request) -> Any:
    try:
        return json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise bad_request(f"the request body is not valid JSON: {exc}") from exc


def create_app(service: ApiService | None = None) -> FastAPI:
    """The API as an ASGI app whose routes start at /models: mount it at /v1."""
    service = service or ApiService()
    app = FastAPI(title="Tune or Prompt API", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return _error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error_response(ApiError(exc.status_code, str(exc.detail), "invalid_request_error", code="not_found" if exc.status_code == 404 else None))

    @app.get("/models")
    async def list_models(request: Request) -> JSONResponse:
        _check_key(service.config, request)
        return JSONResponse({"object": "list", "data": await run_in_threadpool(service.models)})

    @app.get("/models/{model:path}")
    async def get_model(model: str, request: Request) -> JSONResponse:
        _check_key(service.config, request)
        for row in await run_in_threadpool(service.models):
            if row["id"] == model:
                return JSONResponse(row)
        raise ApiError(404, f"the model '{model}' does not exist", param="model", code="model_not_found")

    @app.post("/chat/completions")
    async def chat(request: Request) -> Any:
        _check_key(service.config, request)
        parsed = parse_chat(await _body(request), service.config.limits)
        run = await run_in_threadpool(service.open_chat, parsed)
        envelope = Envelope(new_id("chatcmpl"), parsed.decoding.model, system_fingerprint=service.fingerprint())
        if parsed.decoding.stream:
            return _streaming(_chat_events(run, envelope, parsed.decoding.include_usage))
        await _drain(run)
        message = {"role": "assistant", "content": run.text}
        choice = {"index": 0, "message": message, "finish_reason": run.finish_reason, "logprobs": None}
        return JSONResponse(envelope.wrap("chat.completion", choices=[choice], usage=usage(run.stats), guard=run.guard(), notice=run.stream.notice or None))

    @app.post("/completions")
    async def completions(request: Request) -> Any:
        _check_key(service.config, request)
        parsed = parse_completion(await _body(request), service.config.limits)
        run = await run_in_threadpool(service.open_completion, parsed)
        envelope = Envelope(new_id("cmpl"), parsed.decoding.model, system_fingerprint=service.fingerprint())
        if parsed.decoding.stream:
            return _streaming(_completion_events(run, envelope, parsed.decoding.include_usage))
        await _drain(run)
        choice = {"index": 0, "text": run.text, "finish_reason": run.finish_reason, "logprobs": None}
        return JSONResponse(envelope.wrap("text_completion", choices=[choice], usage=usage(run.stats)))

    return app


async def _drain(run: ReplyRun) -> None:
    try:
        await run_in_threadpool(lambda: [None for _ in run.deltas()])
    except GenerationError as exc:
        raise ApiError(502, f"generation failed: {exc}", "server_error", code="generation_failed") from exc
    except Exception as exc:  # noqa: BLE001  a model failure is an error answer, never a dropped connection
        raise ApiError(500, f"generation failed: {type(exc).__name__}: {exc}", "server_error", code="generation_failed") from exc


def _streaming(events: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _pieces(run: ReplyRun) -> AsyncIterator[str]:
    """The run's deltas, each computed on a worker thread; a client that goes away closes it."""
    deltas = run.deltas()
    try:
        while (piece := await run_in_threadpool(next, deltas, _END)) is not _END:
            yield piece  # type: ignore[misc]
    finally:
        deltas.close()  # not running now: run_in_threadpool waits for the call to return


async def _stream_events(run: ReplyRun, include_usage: bool, first: dict[str, Any] | None, chunk: Callable[..., dict[str, Any]]) -> AsyncIterator[str]:
    try:
        if first is not None:
            yield _sse(first)
        async for piece in _pieces(run):
            yield _sse(chunk(piece))
        # Usage rides on the last chunk, and on a usage-only chunk when the client asked for one.
        yield _sse(chunk(None, finish=run.finish_reason, usage=None if include_usage else usage(run.stats)))
        if include_usage:
            yield _sse(chunk(None, usage=usage(run.stats), no_choices=True))
    except Exception as exc:  # noqa: BLE001  the status line is sent: an error event is all a client can get now
        code = "generation_failed"
        yield _sse(ApiError(500, f"generation failed: {exc}", "server_error", code=code).body())
    yield "data: [DONE]\n\n"


def _chat_events(run: ReplyRun, envelope: Envelope, include_usage: bool) -> AsyncIterator[str]:
    def chunk(piece: str | None, finish: str | None = None, usage: dict | None = None, no_choices: bool = False, delta: dict | None = None) -> dict[str, Any]:
        choices = [] if no_choices else [{"index": 0, "delta": delta if delta is not None else ({"content": piece} if piece is not None else {}), "finish_reason": finish, "logprobs": None}]
        extra = {"guard": run.guard()} if finish or delta is not None else {}
        return envelope.wrap("chat.completion.chunk", choices=choices, usage=usage, **extra)

    return _stream_events(run, include_usage, chunk(None, delta={"role": "assistant", "content": ""}), chunk)


def _completion_events(run: ReplyRun, envelope: Envelope, include_usage: bool) -> AsyncIterator[str]:
    def chunk(piece: str | None, finish: str | None = None, usage: dict | None = None, no_choices: bool = False) -> dict[str, Any]:
        choices = [] if no_choices else [{"index": 0, "text": piece or "", "finish_reason": finish, "logprobs": None}]
        return envelope.wrap("text_completion", choices=choices, usage=usage)

    return _stream_events(run, include_usage, None, chunk)


def api_routes(service: ApiService | None = None) -> list[Any]:
    """Starlette routes that serve the API under /v1 (for another app, such as Gradio's)."""
    from starlette.routing import Mount

    return [Mount("/v1", app=create_app(service))]


def standalone_app(service: ApiService | None = None) -> FastAPI:
    root = FastAPI(title="Tune or Prompt API", docs_url=None, redoc_url=None, openapi_url=None, routes=api_routes(service))

    @root.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return root


# --- the standalone server ------------------------------------------------------------------------


def make_parser() -> argparse.ArgumentParser:
    from bots.backends import BACKEND_NAMES

    parser = CommandParser(prog="python -m bots.api", description="Serve the Tune or Prompt variants over an OpenAI-compatible HTTP API.")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--base-model", default=None, help="'embedded' (default), a hub id, a folder or a .gguf file; env TOP_BASE_MODEL")
    parser.add_argument("--backend", choices=BACKEND_NAMES, default=None, help="serving backend (default auto); env TOP_BACKEND")
    parser.add_argument("--adapters-dir", type=Path, default=None, help="folder with <domain>/ adapters; env TOP_ADAPTERS_DIR")
    parser.add_argument("--no-raw", action="store_true", help="serve the variants only, not the raw base and adapters")
    return parser


def serve(service: ApiService, host: str, port: int) -> None:
    import uvicorn

    uvicorn.run(standalone_app(service), host=host, port=port, log_level="warning")


@contextlib.contextmanager
def running_server(service: ApiService | None = None, app: Any = None, timeout_s: float = 30.0) -> Iterator[str]:
    """Serve the API (or ``app``) on a free loopback port in a background thread; yields its /v1 URL."""
    import socket

    import uvicorn

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app or standalone_app(service), host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, name="api-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the API server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    if not 1 <= args.port <= 65535:
        parser.error(f"--port must be from 1 to 65535; got {args.port}")
    from bots.base_source import BaseModelError, BaseModelSpec
    from bots.remote_config import RemoteConfigError

    try:
        runtime = get_runtime(BaseModelSpec.from_env(args.base_model, backend=args.backend), args.adapters_dir, warm_prompts=True)
        service = ApiService(ApiConfig.from_env(serve_raw=not args.no_raw), runtime=lambda: runtime)
    except (BaseModelError, RemoteConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"serving {', '.join(VARIANTS)} on http://{args.host}:{args.port}/v1 ({runtime.backbone.backend}; key {'required' if service.config.api_key else 'not required'})", flush=True)
    serve(service, args.host, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
