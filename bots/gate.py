"""Admission gate for generation requests outside the UI: the HTTP API (bots/api.py) uses it.

The same rule as the page's gate (webui/admission.py), without Gradio: the first
``max_running`` admitted requests run (as many as the backbone generates at once), the
others wait their turn in arrival order, in a bounded queue. A request is refused at once
(ServerBusy, which the API answers with 429 and a Retry-After header) only when the queue is
full (``max_in_flight``) or when its expected wait is over ``max_wait_s``. The expected wait
is the number of requests ahead times the recent time per reply (a moving average of the
replies that finished) divided by the replies that run at once. Limits: environment
variables TOP_MAX_IN_FLIGHT (default 64) and TOP_MAX_WAIT_S (default 120; 0: no limit), as
for the page.

When the API is served on the UI's port, webui/api_mount.py hands the API the page's own
gate instead, so that page users and API clients queue in one line for the one model.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from itertools import count
from typing import Protocol

ENV_MAX_IN_FLIGHT = "TOP_MAX_IN_FLIGHT"
ENV_MAX_WAIT_S = "TOP_MAX_WAIT_S"


class ServerBusy(Exception):
    """No room for one more generation request; ``ahead`` requests are already in.

    ``expected_wait_s`` is set when the queue had room but the wait would have been too long."""

    def __init__(self, ahead: int, expected_wait_s: float | None = None) -> None:
        self.ahead = ahead
        self.expected_wait_s = expected_wait_s
        why = "" if expected_wait_s is None else f" (a wait of about {math.ceil(expected_wait_s)} s)"
        super().__init__(f"the server is busy: {ahead} request(s) ahead{why}; retry in a few seconds")


@dataclass(frozen=True)
class GateConfig:
    max_in_flight: int = 64
    """Requests admitted at once, running or waiting (the queue's bound); one more is refused."""
    max_running: int | None = None
    """Admitted requests that run at once; None: what ``parallel`` says (the backbone's parallel_replies)."""
    max_wait_s: float | None = 120.0
    """A new request whose expected wait is longer is refused, even with room in the queue; None: no limit."""
    service_smoothing: float = 0.2
    """Weight of the latest finished reply in the moving average of the time per reply."""

    def validate(self) -> GateConfig:
        if self.max_in_flight < 1 or (self.max_running is not None and not 1 <= self.max_running <= self.max_in_flight):
            raise ValueError("max_in_flight must be at least 1, and max_running from 1 to max_in_flight")
        if (self.max_wait_s is not None and self.max_wait_s <= 0) or not 0 < self.service_smoothing <= 1:
            raise ValueError("max_wait_s must be positive (or None), and service_smoothing in (0, 1]")
        return self

    @classmethod
    def from_env(cls) -> GateConfig:
        """The limits from TOP_MAX_IN_FLIGHT and TOP_MAX_WAIT_S (unset: the defaults; a wait of 0: no limit)."""
        fields: dict[str, int | float | None] = {}
        for name, field, kind in ((ENV_MAX_IN_FLIGHT, "max_in_flight", int), (ENV_MAX_WAIT_S, "max_wait_s", float)):
            raw = os.environ.get(name, "").strip()
            if not raw:
                continue
            try:
                value = kind(raw)
                fields[field] = None if field == "max_wait_s" and value == 0 else value
                cls(**fields).validate()  # type: ignore[arg-type]
            except ValueError as exc:
                raise ValueError(f"{name}={raw!r}: {exc}") from exc
        return cls(**fields).validate()  # type: ignore[arg-type]


class Admission(Protocol):
    """What the API needs of a gate (webui/api_mount.py adapts the page's gate to it)."""

    def admit(self) -> object:
        """A ticket, or ServerBusy at once when full."""

    def wait_turn(self, ticket: object, timeout_s: float) -> int:
        """Wait up to ``timeout_s`` for the ticket's turn; the number still ahead then (0: run)."""

    def leave(self, ticket: object) -> None: ...


@dataclass(frozen=True, eq=False)
class Ticket:
    number: int


class Gate:
    """Admits up to ``max_in_flight`` requests and lets them run in arrival order. Thread-safe.

    It times every request from its turn to its leave, so that it can tell a newcomer how long
    it would wait (``clock``: time.monotonic; a test passes a fake one)."""

    def __init__(self, config: GateConfig | None = None, parallel: Callable[[], int] = lambda: 1, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = (config or GateConfig()).validate()
        self._parallel = parallel
        self._clock = clock
        self._changed = threading.Condition()
        self._line: list[Ticket] = []
        self._turn_started: dict[Ticket, float] = {}
        self._service_s: float | None = None
        self._numbers = count(1)

    @property
    def in_flight(self) -> int:
        with self._changed:
            return len(self._line)

    @property
    def service_s(self) -> float | None:
        """The moving average of the time per reply, from turn to leave; None before the first one."""
        with self._changed:
            return self._service_s

    def admit(self) -> Ticket:
        with self._changed:
            if len(self._line) >= self.config.max_in_flight:
                raise ServerBusy(len(self._line))
            wait = self._wait_s(max(0, len(self._line) - self._running_limit() + 1))
            if self.config.max_wait_s is not None and wait is not None and wait > self.config.max_wait_s:
                raise ServerBusy(len(self._line), wait)
            ticket = Ticket(next(self._numbers))
            self._line.append(ticket)
            self._start_turns()
            return ticket

    def wait_turn(self, ticket: Ticket, timeout_s: float) -> int:  # type: ignore[override]
        with self._changed:
            self._changed.wait_for(lambda: self._ahead(ticket) == 0, timeout_s)
            return self._ahead(ticket)

    def expected_wait_s(self, ticket: Ticket) -> float | None:
        """How long this ticket should still wait for its turn; None before any reply was timed."""
        with self._changed:
            return self._wait_s(self._ahead(ticket)) if ticket in self._line else None

    def leave(self, ticket: Ticket) -> None:  # type: ignore[override]
        with self._changed:
            if ticket in self._line:
                self._line.remove(ticket)
            started = self._turn_started.pop(ticket, None)
            if started is not None:
                took = self._clock() - started
                weight = self.config.service_smoothing
                self._service_s = took if self._service_s is None else (1 - weight) * self._service_s + weight * took
            self._start_turns()
            self._changed.notify_all()

    def _start_turns(self) -> None:
        """Time the tickets whose turn it is now (called with the lock held)."""
        now = self._clock()
        for ticket in self._line[: self._running_limit()]:
            self._turn_started.setdefault(ticket, now)

    def _wait_s(self, ahead: int) -> float | None:
        if self._service_s is None:
            return None
        return ahead * self._service_s / self._running_limit()

    def _running_limit(self) -> int:
        limit = self.config.max_running or self._parallel()
        return max(1, min(limit, self.config.max_in_flight))

    def _ahead(self, ticket: Ticket) -> int:
        return max(0, self._line.index(ticket) - self._running_limit() + 1)
