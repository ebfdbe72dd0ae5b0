"""Admission control for the generation handlers: a clear "busy" answer when the server is full.

Why our own gate rather than Gradio's ``queue(max_size=...)`` alone: Gradio (6.31) refuses a
request over ``max_size`` before any handler runs and has no hook for the message, so all a
browser user gets is its generic "Queue is full" toast (no count of people ahead, nothing in
the chat's status), and gradio_client raises a bare QueueError. Gradio also counts per event
listener, while every generation handler (Chat, Side by side, Arena, Prompt lab) waits on
the same single model.

So the gate counts the generation requests in this process, across tabs, in arrival order:
the first ``max_running`` (as many as the backbone generates at once) run, the others
wait their turn in order in a bounded queue (bots/gate.py). Only when the queue is full
(``max_in_flight``), or the expected wait is over ``max_wait_s``, is a request answered at
once with busy text naming how many people are ahead. Handlers wrapped with ``admitted``
show it in their status area (with a gr.Warning toast), keep the conversation and the
typed message, and return; API clients get it as a normal answer whose status ``is_busy``.
A waiting request shows its place in the queue and its expected wait (status only: what the
user types meanwhile stays), refreshed every ``poll_s`` (5 s), and yields between refreshes,
so Stop frees its place at the next one.

For requests to reach the gate at once, the generation events share one Gradio concurrency
group (``generation_events``) whose limit is above ``max_in_flight``, and Gradio's own queue
(ui.py) is larger still: its toast is only a last resort for a flood. Waiting requests hold
Gradio worker threads, so every launch of the page (webui/api_mount.ApiBlocks) gives Gradio
``worker_threads`` of them, more than the group can hold. Limits: environment variables
TOP_MAX_IN_FLIGHT (default 64) and TOP_MAX_WAIT_S (default 120 s), read as for the API.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import gradio as gr

from bots import gate
from bots.gate import Ticket
from bots.registry import peek_runtime

ENV_MAX_IN_FLIGHT = gate.ENV_MAX_IN_FLIGHT
OTHER_EVENT_THREADS = 16
"""Gradio worker threads kept for the events outside the generation group (page loads, votes, the lab's saves)."""
CONCURRENCY_ID = "generation"
BUSY_MARK = "Server busy"
WARNING = "⚠️ "

Frame = tuple[object, ...]
Handler = Callable[..., Iterator[Frame]]
Notice = Callable[..., Frame]
"""(status text, *the handler's arguments) -> one frame of the handler's outputs showing the text."""


@dataclass(frozen=True)
class AdmissionConfig(gate.GateConfig):
    """How many generation requests the page takes in at once: bots.gate's limits (the queue's
    bound ``max_in_flight``, ``max_running``, ``max_wait_s``), plus Gradio's side of them."""

    refusal_slots: int = 8
    """Room in the Gradio concurrency group above max_in_flight, so refusals run at once too."""
    gradio_queue_max_size: int = 128
    """Gradio's own queue (ui.py): above everything the gate answers, so its toast is a last resort."""
    poll_s: float = 5.0
    """How often a waiting request refreshes its 'people ahead' status (and can be stopped); its
    turn starts at once whatever this is. Every refresh costs Gradio a rebuild of the skipped
    components' config (their JSON schema, through pydantic): profiled at 64 sessions, with 48
    waiting and a refresh a second, that was 15% of the server's CPU."""

    @property
    def dispatch_limit(self) -> int:
        """concurrency_limit of the generation group: every admitted request plus the refusals."""
        return self.max_in_flight + self.refusal_slots

    @property
    def worker_threads(self) -> int:
        """Gradio's ``max_threads`` for the page: one per request the generation group holds, plus the other events'."""
        return self.dispatch_limit + OTHER_EVENT_THREADS

    @classmethod
    def from_env(cls) -> AdmissionConfig:
        """The limits from the environment, read as the API's gate reads them (bots.gate)."""
        return cls(**dataclasses.asdict(gate.GateConfig.from_env())).validate()

    def validate(self) -> AdmissionConfig:
        super().validate()
        if self.refusal_slots < 1 or self.poll_s <= 0:
            raise ValueError("refusal_slots and poll_s must be positive")
        if self.gradio_queue_max_size <= self.dispatch_limit:
            raise ValueError("gradio_queue_max_size must be above max_in_flight + refusal_slots")
        return self


class ServerBusy(gate.ServerBusy):
    """No room for one more generation request; ``ahead`` people are already in (the page's wording)."""

    def __init__(self, ahead: int, expected_wait_s: float | None = None) -> None:
        super().__init__(ahead, expected_wait_s)
        self.args = (busy_text(ahead, expected_wait_s),)


def _people(n: int) -> str:
    return "1 person is" if n == 1 else f"{n} people are"


def _about(seconds: float) -> str:
    return f"about {math.ceil(seconds)} s" if seconds < 90 else f"about {math.ceil(seconds / 60)} min"


def busy_text(ahead: int, expected_wait_s: float | None = None) -> str:
    wait = "" if expected_wait_s is None else f" (a wait of {_about(expected_wait_s)})"
    return f"{BUSY_MARK}: {_people(ahead)} ahead of you{wait}. Your conversation is kept: send your message again in a little while."


def waiting_text(ahead: int, expected_wait_s: float | None = None) -> str:
    wait = "" if expected_wait_s is None else f", {_about(expected_wait_s)} to wait"
    return f"⏳ In the queue: {_people(ahead)} ahead of you{wait}…"


def is_busy(status: str) -> bool:
    """Whether a handler's status is the busy answer (for API clients such as benchmarks/loadtest.py)."""
    return str(status).removeprefix(WARNING).startswith(BUSY_MARK)


def _backbone_parallel() -> int:
    runtime = peek_runtime()  # not loaded yet: the first request loads it, alone
    return runtime.backbone.parallel_replies if runtime else 1


class Gate(gate.Gate):
    """The page's gate: bots.gate's line (one rule for the page and the API) with the page's
    configuration, its busy wording and the backbone of the process's runtime."""

    def __init__(self, config: AdmissionConfig | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(config or AdmissionConfig(), parallel=_backbone_parallel, clock=clock)

    def admit(self) -> Ticket:
        """A place in line, or ServerBusy at once when the line is full."""
        try:
            return super().admit()
        except gate.ServerBusy as exc:
            raise ServerBusy(exc.ahead, exc.expected_wait_s) from None

    def ahead_of(self, ticket: Ticket) -> int:
        """People who must finish before this ticket runs (0: its turn)."""
        with self._changed:
            return self._ahead(ticket)

    def running_limit(self) -> int:
        return self._running_limit()


_gate: Gate | None = None
_gate_lock = threading.Lock()


def current_gate() -> Gate:
    """The process's gate (from the environment on first use)."""
    global _gate
    with _gate_lock:
        if _gate is None:
            _gate = Gate(AdmissionConfig.from_env())
        return _gate


def set_gate(gate: Gate | None) -> None:
    """Use this gate (tests); None: back to one from the environment on next use."""
    global _gate
    with _gate_lock:
        _gate = gate


def generation_events() -> dict[str, object]:
    """Keyword arguments for every generation event listener (.submit, .click): one shared group."""
    return {"concurrency_id": CONCURRENCY_ID, "concurrency_limit": current_gate().config.dispatch_limit}


def admitted(busy: Notice, waiting: Notice) -> Callable[[Handler], Handler]:
    """Run a streaming handler only once the gate lets it.

    ``busy`` frames the refusal, the handler's last frame: it gives back the conversation and
    the typed message (API clients get them too). ``waiting`` frames the wait: status only,
    gr.skip() elsewhere, so a frame every poll never overwrites what the user types meanwhile.
    """

    def wrap(handler: Handler) -> Handler:
        @functools.wraps(handler)
        def gated(*args: object) -> Iterator[Frame]:
            gate = current_gate()
            try:
                ticket = gate.admit()
            except ServerBusy as refusal:
                gr.Warning(str(refusal))
                yield busy(WARNING + str(refusal), *args)
                return
            try:
                ahead = gate.ahead_of(ticket)
                while ahead:
                    # A yield between polls lets Gradio close us on Stop, which frees the place in line.
                    yield waiting(waiting_text(ahead, gate.expected_wait_s(ticket)), *args)
                    ahead = gate.wait_turn(ticket, gate.config.poll_s)
                yield from handler(*args)
            finally:
                gate.leave(ticket)

        return gated

    return wrap


# Notices for the chat-like handlers: inputs (message, history, ...), outputs (history, textbox, status).


def chat_busy(text: str, message: str, history: list | None, *_: object) -> Frame:
    return list(history or []), message, text


def chat_waiting(text: str, *_: object) -> Frame:
    return gr.skip(), gr.skip(), text
