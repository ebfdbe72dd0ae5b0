"""Load test of the HTTP API (bots/api.py): concurrent clients on /v1/chat/completions, then a replay check.

    python -m benchmarks.api_loadtest --url http://127.0.0.1:8000/v1 --clients 16 --requests 64 --max-tokens 24
    python -m benchmarks.api_loadtest --serve --clients 16            # serves the API in this process first
    python -m benchmarks.api_loadtest --url http://127.0.0.1:7860/v1 --clients 16   # the API on the UI's port

The same check as benchmarks/loadtest.py makes for the page, through the API: N clients (one
HTTP connection pool each) send greedy single-turn requests cycling through the available
variants (GET /v1/models) and each domain's example questions; every other request streams
(SSE), so both paths are under load. Every answer must name the variant asked and carry
usage; a 429 is counted as busy (the server doing its job), not as a failure. Then every
distinct (variant, message) is sent again alone: each reply under load must equal its lone
run (nothing mixed), and every request must have come back (nothing lost). The report has
the same lines as benchmarks/loadtest.py's.

Loopback only. Exit status 0 when all is well, 1 on any failure, loss or mismatch, 2 on bad usage.
TOP_API_KEY, when set, is sent as the bearer key.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import sys
import threading
import time
from collections.abc import Iterator

import httpx

from benchmarks.loadtest import ChatRequest, LoadReport, Outcome, format_report, plan, require_loopback
from bots.api import ENV_API_KEY
from bots.registry import VARIANTS


def _client(key: str, timeout_s: float) -> httpx.Client:
    return httpx.Client(timeout=timeout_s, headers={"Authorization": f"Bearer {key}"} if key else {})


def probe_variants(client: httpx.Client, url: str) -> tuple[list[str], dict[str, str]]:
    """Available variants and the unavailable ones with the reason, from GET /models."""
    response = client.get(f"{url}/models")
    if response.status_code != 200:
        raise RuntimeError(f"GET {url}/models answered {response.status_code}: {response.text[:200]}")
    rows = {row["id"]: row for row in response.json()["data"] if row.get("kind") == "variant"}
    available = [name for name in VARIANTS if rows.get(name, {}).get("available")]
    unavailable = {name: str(rows.get(name, {}).get("reason", "not served")) for name in VARIANTS if name not in available}
    return available, unavailable


def _read_stream(response: httpx.Response, request: ChatRequest) -> tuple[str, dict | None]:
    """The text of an SSE answer, checking that every chunk belongs to it; and its usage."""
    text, usage, ids = "", None, set()
    for line in response.iter_lines():
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return text, usage
        chunk = json.loads(data)
        if "error" in chunk:
            raise RuntimeError(f"error event: {chunk['error'].get('message')}")
        ids.add(chunk["id"])
        if chunk["model"] != request.variant or len(ids) > 1:
            raise RuntimeError(f"a chunk of another answer: model {chunk['model']!r}, ids {sorted(ids)}")
        usage = chunk.get("usage") or usage
        for choice in chunk["choices"]:
            text += choice["delta"].get("content") or ""
    raise RuntimeError("the stream ended without [DONE]")


def chat_once(client: httpx.Client, url: str, request: ChatRequest, max_tokens: int, stream: bool, session: int = -1) -> Outcome:
    """One greedy request with an empty history, timed from send to the last byte."""
    outcome = Outcome(request, session)
    body = {"model": request.variant, "messages": [{"role": "user", "content": request.message}], "max_tokens": max_tokens, "temperature": 0, "stream": stream}
    started = time.perf_counter()
    try:
        with client.stream("POST", f"{url}/chat/completions", json=body) as response:
            if response.status_code == 429:
                outcome.busy, outcome.error = True, f"busy: HTTP 429, Retry-After {response.headers.get('retry-after')}"
                return outcome
            if response.status_code != 200:
                response.read()
                outcome.error = f"HTTP {response.status_code}: {response.text[:200]}"
                return outcome
            if stream:
                text, usage = _read_stream(response, request)
            else:
                answer = json.loads(response.read())
                if answer["model"] != request.variant:
                    raise RuntimeError(f"an answer from {answer['model']!r}")
                text, usage = answer["choices"][0]["message"]["content"], answer.get("usage")
        if not usage or usage.get("total_tokens") != usage.get("prompt_tokens", 0) + usage.get("completion_tokens", 0):
            raise RuntimeError(f"bad usage {usage!r}")
        outcome.reply, outcome.status = text, f"{request.variant}: {usage['completion_tokens']} tokens"
    except httpx.TimeoutException:
        outcome.lost, outcome.error = True, "no answer in time"
    except (httpx.HTTPError, RuntimeError, ValueError, KeyError) as exc:
        outcome.error = f"{type(exc).__name__}: {exc}"
    finally:
        outcome.latency_s = time.perf_counter() - started
    return outcome


def run_load(url: str, clients: int, requests: list[ChatRequest], duration_s: float, max_tokens: int, timeout_s: float, key: str) -> tuple[list[Outcome], float]:
    todo: queue.Queue[tuple[int, ChatRequest]] = queue.Queue()
    for index, request in enumerate(requests):
        todo.put((index, request))
    outcomes: list[Outcome] = []
    lock = threading.Lock()
    pools = [_client(key, timeout_s) for _ in range(clients)]
    started = time.perf_counter()
    deadline = started + duration_s

    def session(number: int) -> None:
        while time.perf_counter() < deadline:
            try:
                index, request = todo.get_nowait()
            except queue.Empty:
                return
            outcome = chat_once(pools[number], url, request, max_tokens, stream=index % 2 == 0, session=number)
            with lock:
                outcomes.append(outcome)

    threads = [threading.Thread(target=session, args=(n,), name=f"api-loadtest-{n}") for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for pool in pools:
        pool.close()
    return outcomes, time.perf_counter() - started


def replay_mismatches(url: str, outcomes: list[Outcome], max_tokens: int, timeout_s: float, key: str) -> list[str]:
    """Send each distinct completed request again alone (not streamed); list every reply under load that differs."""
    alone: dict[ChatRequest, str | None] = {}
    mismatches = []
    with _client(key, timeout_s) as client:
        for outcome in outcomes:
            if outcome.reply is None:
                continue
            if outcome.request not in alone:
                lone = chat_once(client, url, outcome.request, max_tokens, stream=False)
                alone[outcome.request] = lone.reply
                if lone.reply is None:
                    mismatches.append(f"{outcome.request.variant} {outcome.request.message!r}: the lone run failed ({lone.error})")
            if alone[outcome.request] is not None and outcome.reply != alone[outcome.request]:
                mismatches.append(f"{outcome.request.variant} {outcome.request.message!r} (client {outcome.session}): {outcome.reply!r} under load, {alone[outcome.request]!r} alone")
    return mismatches


def run(url: str, clients: int = 16, total_requests: int = 64, duration_s: float = 60.0, max_tokens: int = 24, timeout_s: float = 120.0, key: str = "") -> LoadReport:
    """Probe, load, replay; the caller prints ``format_report`` and checks ``ok``."""
    require_loopback(url)
    with _client(key, timeout_s) as client:
        available, unavailable = probe_variants(client, url)
        if not available:
            raise RuntimeError("no variant is available")
        for name in available:  # warm up: first requests load caches, not part of the figures
            warm = chat_once(client, url, plan([name], 1)[0], max_tokens, stream=False)
            if warm.reply is None:
                raise RuntimeError(f"warming up {name} failed: {warm.error}")
    requests = plan(available, total_requests)
    report = LoadReport(clients, len(requests), unavailable)
    report.outcomes, report.wall_s = run_load(url, clients, requests, duration_s, max_tokens, timeout_s, key)
    report.mismatches = replay_mismatches(url, report.outcomes, max_tokens, timeout_s, key)
    return report


@contextlib.contextmanager
def serve_api(base_model: str | None, backend: str | None) -> Iterator[str]:
    """The API on a free loopback port in this process, on the configured backend; yields its /v1 URL."""
    from bots.api import ApiService, running_server
    from bots.base_source import BaseModelSpec
    from bots.registry import get_runtime

    runtime = get_runtime(BaseModelSpec.from_env(base_model, backend=backend), warm_prompts=True)
    runtime.backbone.wait_idle()
    with running_server(ApiService(runtime=lambda: runtime)) as url:
        yield url


def main(argv: list[str] | None = None) -> int:
    from bots.backends import BACKEND_NAMES
    from bots.base_source import BaseModelError
    from bots.cli_args import CommandParser

    parser = CommandParser(prog="python -m benchmarks.api_loadtest", description="Load test of the OpenAI-compatible API (loopback only).")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="the API's base URL, e.g. http://127.0.0.1:8000/v1")
    target.add_argument("--serve", action="store_true", help="serve the API in this process on a free loopback port")
    parser.add_argument("--base-model", default=None, help="with --serve: the base model (env TOP_BASE_MODEL)")
    parser.add_argument("--backend", choices=BACKEND_NAMES, default=None, help="with --serve: the backend (env TOP_BACKEND)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients (default 16)")
    parser.add_argument("--requests", type=int, default=None, help="requests in all (default 4 per client)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds after which no new request starts (default 60)")
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds one request may take before it counts as lost")
    args = parser.parse_args(argv)
    if args.clients < 1 or (args.requests is not None and args.requests < 1) or args.duration <= 0 or args.max_tokens < 1:
        parser.error("--clients, --requests, --duration and --max-tokens must be positive")
    total = args.requests if args.requests is not None else 4 * args.clients
    key = os.environ.get(ENV_API_KEY, "").strip()
    try:
        with serve_api(args.base_model, args.backend) if args.serve else contextlib.nullcontext(args.url.rstrip("/")) as url:
            print(f"API load test of {url}: {args.clients} clients, up to {total} requests, up to {args.duration:.0f}s, {args.max_tokens} new tokens each", flush=True)
            report = run(url, args.clients, total, args.duration, args.max_tokens, args.timeout, key)
    except (ValueError, RuntimeError, BaseModelError, httpx.HTTPError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_report(report).replace("sessions:", "clients:", 1))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
