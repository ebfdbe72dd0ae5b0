"""Load test of the chat UI: concurrent gradio_client sessions on ``/chat``, then a replay check.

    python -m benchmarks.loadtest --url http://127.0.0.1:7860/ --sessions 16 --duration 60 --max-new-tokens 24
    python -m benchmarks.loadtest --serve --sessions 4 --requests 8     # starts the UI itself first

N sessions (one gradio_client each) send single-turn greedy requests that cycle through the
available variants (a variant whose status says 'unavailable' is skipped) and each domain's
example questions (prompts/<domain>.yaml), until the request budget is spent or the duration
is over. It prints requests sent, completed, failed, busy and lost, and p50/p95 latency. Busy
requests were refused at once because the UI was full (webui/admission.py, or Gradio's own
queue): the UI doing its job under overload, so counted apart and not a failure. Then every
distinct (variant, message) is run again alone, one at a time: each reply under load must equal
its lone run (nothing mixed), and every request sent must have come back (nothing lost).

Loopback only: the URL must point at this machine. Exit status 0 when all is well, 1 on any
failure, loss or mismatch (or when nothing completed), 2 on bad usage.
"""

from __future__ import annotations

import contextlib
import ipaddress
import math
import queue
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import urlparse

from gradio_client import Client
from gradio_client.utils import QueueError

from bots.cli_args import CommandParser
from bots.registry import VARIANTS
from prompts import load_prompt_spec
from webui.admission import is_busy
from webui.common import message_text

API_NAME = "/chat"
TOP_P = 0.95
REPETITION_PENALTY = 1.1


@dataclass(frozen=True)
class ChatRequest:
    variant: str
    domain: str
    method: str
    message: str


@dataclass
class Outcome:
    """What came back for one request: a reply, or why not."""

    request: ChatRequest
    session: int
    latency_s: float = 0.0
    reply: str | None = None
    status: str = ""
    error: str | None = None
    lost: bool = False
    """No answer within the request timeout."""
    busy: bool = False
    """Refused at once because the UI was full: its busy status (webui/admission.py) or Gradio's queue-full error."""


@dataclass
class LoadReport:
    sessions: int
    planned: int
    unavailable: dict[str, str] = field(default_factory=dict)
    outcomes: list[Outcome] = field(default_factory=list)
    wall_s: float = 0.0
    mismatches: list[str] = field(default_factory=list)

    @property
    def completed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.reply is not None]

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.reply is None and not o.lost and not o.busy]

    @property
    def busy(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.busy]

    @property
    def lost(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.lost]

    def latency(self, quantile: float) -> float:
        """Nearest-rank quantile of the completed requests' latencies (0 when none)."""
        values = sorted(o.latency_s for o in self.completed)
        return values[max(0, math.ceil(quantile * len(values)) - 1)] if values else 0.0

    @property
    def ok(self) -> bool:
        return bool(self.completed) and not self.failed and not self.lost and not self.mismatches


# --- pieces -----------------------------------------------------------------------------------


def require_loopback(url: str) -> None:
    """Refuse any URL whose host is not this machine: a load test must never hit a real service."""
    host = urlparse(url).hostname
    if not host:
        raise ValueError(f"not a URL: {url}")
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except socket.gaierror as exc:
        raise ValueError(f"cannot resolve {host}: {exc}") from exc
    if not all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses):
        raise ValueError(f"{host} is not a loopback address; the load test only runs against this machine")


def _client(url: str) -> Client:
    return Client(url, verbose=False, download_files=False)


def chat_once(client: Client, request: ChatRequest, max_new_tokens: int, timeout_s: float, session: int = -1) -> Outcome:
    """One greedy /chat request with an empty history, timed from submit to the final update."""
    outcome = Outcome(request, session)
    started = time.perf_counter()
    job = client.submit(request.message, [], request.domain, request.method, max_new_tokens, 0.0, TOP_P, REPETITION_PENALTY, api_name=API_NAME)
    try:
        history, _textbox, status = job.result(timeout=timeout_s)
    except TimeoutError:
        job.cancel()
        outcome.lost = True
        outcome.error = f"no answer within {timeout_s:.0f}s"
        return outcome
    except QueueError as exc:  # Gradio's own queue is full (a flood past the UI's admission limit)
        outcome.busy = True
        outcome.error = f"busy: {exc}"
        return outcome
    except Exception as exc:  # gradio_client raises AppError, ValueError... for a refused event
        outcome.error = f"{type(exc).__name__}: {exc}"
        return outcome
    finally:
        outcome.latency_s = time.perf_counter() - started
    outcome.status = str(status)
    if is_busy(outcome.status):  # the UI's admission control refused it, at once
        outcome.busy = True
        outcome.error = outcome.status
        return outcome
    turns = history or []
    # The answer must be to this request: our message, then one reply, from the variant we asked.
    if len(turns) != 2 or message_text(turns[0].get("content")) != request.message or not outcome.status.startswith(f"{request.variant}:"):
        outcome.error = f"unexpected answer: status {outcome.status!r}, {len(turns)} turns"
        return outcome
    outcome.reply = message_text(turns[1].get("content"))
    return outcome


def probe_variants(url: str, max_new_tokens: int, timeout_s: float) -> tuple[list[str], dict[str, str]]:
    """Available variants, and the unavailable ones with the UI's status (also warms the model up)."""
    client = _client(url)
    available, unavailable = [], {}
    for name, spec in VARIANTS.items():
        message = load_prompt_spec(spec.domain).example_questions[0]
        outcome = chat_once(client, ChatRequest(name, spec.domain, spec.method, message), max_new_tokens, timeout_s)
        if "unavailable" in outcome.status:
            unavailable[name] = outcome.status
        elif outcome.reply is None:
            raise RuntimeError(f"probing {name} failed: {outcome.error}")
        else:
            available.append(name)
    return available, unavailable


def plan(variants: list[str], total: int) -> list[ChatRequest]:
    """``total`` requests cycling through the variants and each domain's example questions."""
    questions = {spec.domain: load_prompt_spec(spec.domain).example_questions for spec in VARIANTS.values()}
    requests = []
    for index in range(total):
        spec = VARIANTS[variants[index % len(variants)]]
        pool = questions[spec.domain]
        requests.append(ChatRequest(spec.name, spec.domain, spec.method, pool[(index // len(variants)) % len(pool)]))
    return requests


def run_load(url: str, sessions: int, requests: list[ChatRequest], duration_s: float, max_new_tokens: int, timeout_s: float) -> tuple[list[Outcome], float]:
    """Send the requests from ``sessions`` concurrent clients; none is started after the deadline."""
    todo: queue.Queue[ChatRequest] = queue.Queue()
    for request in requests:
        todo.put(request)
    outcomes: list[Outcome] = []
    lock = threading.Lock()
    clients = [_client(url) for _ in range(sessions)]  # connected before the clock starts
    started = time.perf_counter()
    deadline = started + duration_s

    def session(number: int) -> None:
        while time.perf_counter() < deadline:
            try:
                request = todo.get_nowait()
            except queue.Empty:
                return
            outcome = chat_once(clients[number], request, max_new_tokens, timeout_s, number)
            with lock:
                outcomes.append(outcome)

    threads = [threading.Thread(target=session, args=(n,), name=f"loadtest-session-{n}") for n in range(sessions)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes, time.perf_counter() - started


def replay_mismatches(url: str, outcomes: list[Outcome], max_new_tokens: int, timeout_s: float) -> list[str]:
    """Run each distinct completed (variant, message) alone; list every reply under load that differs."""
    client = _client(url)
    alone: dict[ChatRequest, str] = {}
    mismatches = []
    for outcome in outcomes:
        if outcome.reply is None:
            continue
        if outcome.request not in alone:
            lone = chat_once(client, outcome.request, max_new_tokens, timeout_s)
            if lone.reply is None:
                mismatches.append(f"{outcome.request.variant} {outcome.request.message!r}: the lone run failed ({lone.error})")
                alone[outcome.request] = ""
                continue
            alone[outcome.request] = lone.reply
        if outcome.reply != alone[outcome.request]:
            mismatches.append(f"{outcome.request.variant} {outcome.request.message!r} (session {outcome.session}): {outcome.reply!r} under load, {alone[outcome.request]!r} alone")
    return mismatches


def run(url: str, sessions: int = 16, total_requests: int = 64, duration_s: float = 60.0, max_new_tokens: int = 24, timeout_s: float = 120.0) -> LoadReport:
    """The whole test: probe, load, replay. The caller prints ``format_report`` and checks ``ok``."""
    require_loopback(url)
    available, unavailable = probe_variants(url, max_new_tokens, timeout_s)
    if not available:
        raise RuntimeError("no variant is available")
    requests = plan(available, total_requests)
    report = LoadReport(sessions, len(requests), unavailable)
    report.outcomes, report.wall_s = run_load(url, sessions, requests, duration_s, max_new_tokens, timeout_s)
    report.mismatches = replay_mismatches(url, report.outcomes, max_new_tokens, timeout_s)
    return report


def format_report(report: LoadReport) -> str:
    sent = len(report.outcomes)
    rate = len(report.completed) / report.wall_s if report.wall_s else 0.0
    lines = [
        f"sessions: {report.sessions}; requests planned {report.planned}, sent {sent}, completed {len(report.completed)}, failed {len(report.failed)}, busy {len(report.busy)}, lost {len(report.lost)}",
        f"latency: p50 {report.latency(0.5):.2f}s, p95 {report.latency(0.95):.2f}s, max {report.latency(1.0):.2f}s; {rate:.2f} requests/s over {report.wall_s:.1f}s",
        "variants: " + ", ".join(sorted({o.request.variant for o in report.outcomes})) + (f" (skipped as unavailable: {', '.join(report.unavailable)})" if report.unavailable else ""),
    ]
    if report.busy:
        lines.append(f"  BUSY {len(report.busy)} request(s) refused at once: {report.busy[0].error}")
    for outcome in report.failed + report.lost:
        lines.append(f"  {'LOST' if outcome.lost else 'FAILED'} {outcome.request.variant} {outcome.request.message!r}: {outcome.error}")
    lines.append(f"replay: {len({o.request for o in report.completed})} distinct requests re-run alone, {len(report.mismatches)} mismatch(es)")
    lines += [f"  MISMATCH {m}" for m in report.mismatches]
    lines.append("OK: nothing lost, nothing mixed" if report.ok else "NOT OK")
    return "\n".join(lines)


# --- serving the UI in-process ------------------------------------------------------------------


@contextlib.contextmanager
def serve_ui() -> Iterator[str]:
    """Start ui.demo on a free loopback port in this process; yields its URL."""
    import ui  # the model loads on the first request (or was injected with bots.registry.set_runtime)

    _, url, _ = ui.demo.launch(server_name="127.0.0.1", server_port=_free_port(), prevent_thread_lock=True, quiet=True)
    try:
        yield url
    finally:
        ui.demo.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    parser = CommandParser(prog="python -m benchmarks.loadtest", description="Load test of the chat UI (loopback only).")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="the running UI, e.g. http://127.0.0.1:7860/")
    target.add_argument("--serve", action="store_true", help="start the UI in this process on a free loopback port")
    parser.add_argument("--sessions", type=int, default=16, help="concurrent client sessions (default 16)")
    parser.add_argument("--requests", type=int, default=None, help="requests to send in all (default 4 per session)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds after which no new request starts (default 60)")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds one request may take before it counts as lost")
    args = parser.parse_args(argv)
    if args.sessions < 1 or (args.requests is not None and args.requests < 1) or args.duration <= 0:
        parser.error("--sessions, --requests and --duration must be positive")
    total = args.requests if args.requests is not None else 4 * args.sessions
    try:
        with serve_ui() if args.serve else contextlib.nullcontext(args.url) as url:
            print(f"load test of {url}: {args.sessions} sessions, up to {total} requests, up to {args.duration:.0f}s, {args.max_new_tokens} new tokens each", flush=True)
            report = run(url, args.sessions, total, args.duration, args.max_new_tokens, args.timeout)
    except (ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_report(report))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
