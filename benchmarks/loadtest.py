"""Load test of the chat UI: concurrent gradio_client sessions on ``/chat``, then a replay check.

    python -m benchmarks.loadtest --serve                      # the sweep: 1, 4, 16 and 64 sessions
    python -m benchmarks.loadtest --serve --sessions 16 --max-new-tokens 48 --json load.json
    python -m benchmarks.loadtest --url http://127.0.0.1:7860/ --sessions 1,8,32
    python -m benchmarks.loadtest --serve --variants headline    # the four the Chat tab opens on

``--serve`` starts the UI (``python ui.py``, or ``--serve-command``) as a process of its own
and waits until it answers, so the clients never share the server's interpreter; ``--url``
points at a UI already running.

At each concurrency level, N sessions (one gradio_client each) send single-turn greedy
requests that cycle through the available variants (``--variants``: every variant, the
headline ones or a list; a variant whose status says 'unavailable' is skipped) and each
domain's example questions (prompts/<domain>.yaml), until the level's requests are spent or
the duration is over. Every level sends whole cycles of
that mix, so the levels do the same work per request. For each level it prints requests
sent, completed, failed, busy and lost, throughput (completed requests per second), its
ratio to the one-session level (the baseline of the same run) and p50/p95 latency. Busy
requests were refused at once because the UI was full (webui/admission.py, or Gradio's own
queue): the UI doing its job under overload, so counted apart and not a failure. Then every
distinct (variant, message) is run again alone, one at a time: each reply under load must
equal its lone run (nothing mixed), and every request sent must have come back (nothing lost).

Loopback only: the URL must point at this machine. Exit status 0 when all is well, 1 on any
failure, loss or mismatch (or when nothing completed), 2 on bad usage.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import math
import queue
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from gradio_client import Client
from gradio_client.utils import QueueError

from bots.cli_args import CommandParser
from bots.registry import HEADLINE_VARIANTS, VARIANTS
from prompts import load_prompt_spec
from webui.admission import is_busy
from webui.common import message_text

API_NAME = "/chat"
TOP_P = 0.95
REPETITION_PENALTY = 1.1
REPO = Path(__file__).resolve().parent.parent
DEFAULT_LEVELS = (1, 4, 16, 64)


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

    @property
    def throughput(self) -> float:
        """Completed requests per second of the load's wall time."""
        return len(self.completed) / self.wall_s if self.wall_s else 0.0


@dataclass
class SweepReport:
    """One load level per concurrency, then one replay check over all of them."""

    levels: list[LoadReport]
    unavailable: dict[str, str] = field(default_factory=dict)
    replayed: int = 0
    mismatches: list[str] = field(default_factory=list)
    variants: list[str] = field(default_factory=list)
    """The variants of the mix that were sent (available ones of ``--variants``)."""

    def ratio(self, level: LoadReport) -> float:
        """Throughput against the one-session level of the same run (the first level)."""
        baseline = self.levels[0].throughput
        return level.throughput / baseline if baseline else 0.0

    @property
    def ok(self) -> bool:
        return all(level.completed and not level.failed and not level.lost for level in self.levels) and not self.mismatches

    def figures(self) -> dict[str, object]:
        """The measured figures, for --json."""
        rows = [
            {
                "sessions": level.sessions,
                "sent": len(level.outcomes),
                "completed": len(level.completed),
                "failed": len(level.failed),
                "busy": len(level.busy),
                "lost": len(level.lost),
                "requests_per_s": round(level.throughput, 3),
                "ratio_to_first_level": round(self.ratio(level), 3),
                "p50_s": round(level.latency(0.5), 3),
                "p95_s": round(level.latency(0.95), 3),
                "wall_s": round(level.wall_s, 2),
            }
            for level in self.levels
        ]
        return {"levels": rows, "variants": self.variants, "replayed": self.replayed, "mismatches": self.mismatches, "unavailable": self.unavailable, "ok": self.ok}


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


def parse_variants(text: str) -> list[str]:
    """``all`` (every variant), ``headline`` (the Chat tab's: lora and prompt of each domain) or names, comma-separated."""
    if text.strip() == "all":
        return list(VARIANTS)
    if text.strip() == "headline":
        return list(HEADLINE_VARIANTS)
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in VARIANTS]
    if not names or unknown or len(set(names)) != len(names):
        raise ValueError(f"--variants: {text!r} must be 'all', 'headline' or distinct names among {', '.join(VARIANTS)}")
    return names


def probe_variants(url: str, max_new_tokens: int, timeout_s: float, variants: list[str] | None = None) -> tuple[list[str], dict[str, str]]:
    """Available variants of ``variants`` (default: all), and the unavailable ones with the UI's status (also warms the model up)."""
    client = _client(url)
    available, unavailable = [], {}
    for name in variants or list(VARIANTS):
        spec = VARIANTS[name]
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


def cycle_length(variants: list[str]) -> int:
    """Requests in one whole cycle of ``plan``: every variant with every question of its domain."""
    longest = max(len(load_prompt_spec(VARIANTS[name].domain).example_questions) for name in variants)
    return len(variants) * longest


def level_requests(variants: list[str], sessions: int, per_session: int) -> int:
    """Requests for one level: ``per_session`` each, rounded up to whole cycles of the mix (at least one)."""
    cycle = cycle_length(variants)
    return max(1, math.ceil(sessions * per_session / cycle)) * cycle


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


def replayed_requests(outcomes: list[Outcome]) -> int:
    return len({o.request for o in outcomes if o.reply is not None})


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


def sweep(
    url: str, levels: list[int], per_session: int = 4, duration_s: float = 600.0, max_new_tokens: int = 24, timeout_s: float = 300.0, variants: list[str] | None = None
) -> SweepReport:
    """Probe, one load per concurrency level (same request mix), then one replay over all levels."""
    require_loopback(url)
    available, unavailable = probe_variants(url, max_new_tokens, timeout_s, variants)
    if not available:
        raise RuntimeError("no variant is available")
    report = SweepReport([], unavailable, variants=available)
    for sessions in levels:
        requests = plan(available, level_requests(available, sessions, per_session))
        level = LoadReport(sessions, len(requests), unavailable)
        level.outcomes, level.wall_s = run_load(url, sessions, requests, duration_s, max_new_tokens, timeout_s)
        report.levels.append(level)
        print(format_level(report, level), flush=True)
    everything = [outcome for level in report.levels for outcome in level.outcomes]
    report.replayed = replayed_requests(everything)
    report.mismatches = replay_mismatches(url, everything, max_new_tokens, timeout_s)
    return report


LEVEL_HEADER = "sessions  sent  completed  failed  busy  lost   req/s  vs 1st     p50     p95"


def format_level(report: SweepReport, level: LoadReport) -> str:
    return (
        f"{level.sessions:>8}  {len(level.outcomes):>4}  {len(level.completed):>9}  {len(level.failed):>6}  {len(level.busy):>4}  {len(level.lost):>4}"
        f"  {level.throughput:>6.2f}  {report.ratio(level):>5.2f}x  {level.latency(0.5):>5.2f}s  {level.latency(0.95):>5.2f}s"
    )


def format_sweep(report: SweepReport) -> str:
    lines = [LEVEL_HEADER, *(format_level(report, level) for level in report.levels)]
    if report.variants:
        lines.append(f"variants sent: {', '.join(report.variants)}")
    if report.unavailable:
        lines.append(f"skipped as unavailable: {', '.join(report.unavailable)}")
    for level in report.levels:
        lines += problem_lines(level, f" at {level.sessions} sessions")
    lines += replay_lines(report.replayed, report.mismatches, report.ok)
    return "\n".join(lines)


def problem_lines(level: LoadReport, where: str = "") -> list[str]:
    """The busy, failed and lost requests of one load, a line each (busy: one line for all)."""
    lines = [f"  BUSY{where}: {len(level.busy)} request(s) refused at once: {level.busy[0].error}"] if level.busy else []
    for outcome in level.failed + level.lost:
        lines.append(f"  {'LOST' if outcome.lost else 'FAILED'}{where}: {outcome.request.variant} {outcome.request.message!r}: {outcome.error}")
    return lines


def replay_lines(replayed: int, mismatches: list[str], ok: bool) -> list[str]:
    lines = [f"replay: {replayed} distinct requests re-run alone, {len(mismatches)} mismatch(es)", *(f"  MISMATCH {m}" for m in mismatches)]
    return [*lines, "OK: nothing lost, nothing mixed" if ok else "NOT OK"]


def format_report(report: LoadReport) -> str:
    sent = len(report.outcomes)
    rate = len(report.completed) / report.wall_s if report.wall_s else 0.0
    lines = [
        f"sessions: {report.sessions}; requests planned {report.planned}, sent {sent}, completed {len(report.completed)}, failed {len(report.failed)}, busy {len(report.busy)}, lost {len(report.lost)}",
        f"latency: p50 {report.latency(0.5):.2f}s, p95 {report.latency(0.95):.2f}s, max {report.latency(1.0):.2f}s; {rate:.2f} requests/s over {report.wall_s:.1f}s",
        "variants: " + ", ".join(sorted({o.request.variant for o in report.outcomes})) + (f" (skipped as unavailable: {', '.join(report.unavailable)})" if report.unavailable else ""),
    ]
    lines += problem_lines(report)
    lines += replay_lines(replayed_requests(report.outcomes), report.mismatches, report.ok)
    return "\n".join(lines)


# --- serving the UI ----------------------------------------------------------------------------


@contextlib.contextmanager
def serve_ui_process(command: list[str], start_timeout_s: float = 900.0) -> Iterator[str]:
    """Run ``command --port P`` (a UI server) as a process of its own; yields its URL once it answers.

    The server's output goes to a temporary log, quoted when it ends before answering."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    with tempfile.TemporaryFile(mode="w+") as log:
        process = subprocess.Popen([*command, "--port", str(port)], cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_until_answering(url, process, log, start_timeout_s)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_until_answering(url: str, process: subprocess.Popen, log: object, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            log.seek(0)  # type: ignore[attr-defined]
            raise RuntimeError(f"the UI server ended with status {process.returncode} before answering: {log.read()[-2000:]}")  # type: ignore[attr-defined]
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the UI server did not answer within {timeout_s:.0f}s")
        time.sleep(0.5)


def default_serve_command(base_model: str | None, backend: str | None) -> list[str]:
    """``python ui.py`` on loopback, with the base model and backend passed on."""
    command = [sys.executable, str(REPO / "ui.py"), "--host", "127.0.0.1"]
    command += ["--base-model", base_model] if base_model else []
    command += ["--backend", backend] if backend else []
    return command


@contextlib.contextmanager
def serve_ui() -> Iterator[str]:
    """Start ui.demo on a free loopback port in this process; yields its URL (tests: the model is injected)."""
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


def parse_levels(text: str) -> list[int]:
    """``1,4,16,64`` -> [1, 4, 16, 64]: positive, without repeats, the first being the baseline."""
    try:
        levels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"--sessions: {text!r} is not a comma-separated list of numbers") from None
    if not levels or min(levels) < 1 or len(set(levels)) != len(levels):
        raise ValueError(f"--sessions: {text!r} needs distinct positive numbers")
    return levels


def main(argv: list[str] | None = None) -> int:
    from bots.backends import BACKEND_NAMES

    parser = CommandParser(prog="python -m benchmarks.loadtest", description="Load test of the chat UI (loopback only).")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="the running UI, e.g. http://127.0.0.1:7860/")
    target.add_argument("--serve", action="store_true", help="start the UI as a process of its own on a free loopback port")
    parser.add_argument("--serve-command", default=None, help="with --serve: the server command, given --port N (default: python ui.py --host 127.0.0.1)")
    parser.add_argument("--base-model", default=None, help="with --serve: the base model (env TOP_BASE_MODEL)")
    parser.add_argument("--backend", choices=BACKEND_NAMES, default=None, help="with --serve: the backend (env TOP_BACKEND)")
    parser.add_argument("--sessions", default=",".join(map(str, DEFAULT_LEVELS)), help="concurrency levels, comma-separated; the first is the baseline (default 1,4,16,64)")
    parser.add_argument("--per-session", type=int, default=4, help="requests per session at each level, rounded up to whole cycles of the mix (default 4)")
    parser.add_argument("--duration", type=float, default=600.0, help="seconds per level after which no new request starts (default 600)")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--variants", default="all", help="the mix: 'all' (default), 'headline' (the four the Chat tab opens on) or names, comma-separated")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds one request may take before it counts as lost")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    args = parser.parse_args(argv)
    try:
        levels = parse_levels(args.sessions)
        variants = parse_variants(args.variants)
    except ValueError as exc:
        parser.error(str(exc))
    if args.per_session < 1 or args.duration <= 0 or args.max_new_tokens < 1:
        parser.error("--per-session, --duration and --max-new-tokens must be positive")
    command = shlex.split(args.serve_command) if args.serve_command else default_serve_command(args.base_model, args.backend)
    try:
        with serve_ui_process(command) if args.serve else contextlib.nullcontext(args.url) as url:
            print(f"load test of {url}: sessions {', '.join(map(str, levels))}, {args.per_session} requests per session, {args.max_new_tokens} new tokens each, variants: {args.variants}", flush=True)
            print(LEVEL_HEADER, flush=True)
            report = sweep(url, levels, args.per_session, args.duration, args.max_new_tokens, args.timeout, variants)
    except (ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_sweep(report))
    if args.json:
        args.json.write_text(json.dumps(report.figures(), indent=2) + "\n", encoding="utf-8")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
