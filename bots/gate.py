"""Admission gate for generation requests outside the UI: the HTTP API (bots/api.py) uses it.

The same rule as the page's gate (webui/admission.py), without Gradio: the first
``max_running`` admitted requests run (as many as the backbone generates at once), the
others wait their turn in arrival order, and over ``max_in_flight`` a request is refused at
once (ServerBusy, which the API answers with 429 and a Retry-After header). Limit:
environment variable TOP_MAX_IN_FLIGHT (default 16), as for the page.

When the API is served on the UI's port, webui/api_mount.py hands the API the page's own
gate instead, so that page users and API clients queue in one line for the one model.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from itertools import count
from typing import Protocol

ENV_MAX_IN_FLIGHT = "TOP_MAX_IN_FLIGHT"


class ServerBusy(Exception):
    """No room for one more generation request; ``ahead`` requests are already in."""

    def __init__(self, ahead: int) -> None:
        self.ahead = ahead
        super().__init__(f"server busy: {ahead} request(s) ahead; retry in a few seconds")


@dataclass(frozen=True)
class GateConfig:
    max_in_flight: int = 16
    """Requests admitted at once, running or waiting; one more is refused."""
    max_running: int | None = None
    """Admitted requests that run at once; None: what ``parallel`` says (the backbone's parallel_replies)."""

    def validate(self) -> GateConfig:
        if self.max_in_flight < 1 or (self.max_running is not None and not 1 <= self.max_running <= self.max_in_flight):
            raise ValueError("max_in_flight must be at least 1, and max_running from 1 to max_in_flight")
        return self

    @classmethod
    def from_env(cls) -> GateConfig:
        raw = os.environ.get(ENV_MAX_IN_FLIGHT, "").strip()
        if not raw:
            return cls()
        try:
            return cls(max_in_flight=int(raw)).validate()
        except ValueError as exc:
            raise ValueError(f"{ENV_MAX_IN_FLIGHT}={raw!r}: {exc}") from exc


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
    """Admits up to ``max_in_flight`` requests and lets them run in arrival order. Thread-safe."""

    def __init__(self, config: GateConfig | None = None, parallel: Callable[[], int] = lambda: 1) -> None:
        self.config = (config or GateConfig()).validate()
        self._parallel = parallel
        self._changed = threading.Condition()
        self._line: list[Ticket] = []
        self._numbers = count(1)

    @property
    def in_flight(self) -> int:
        with self._changed:
            return len(self._line)

    def admit(self) -> Ticket:
        with self._changed:
            if len(self._line) >= self.config.max_in_flight:
                raise ServerBusy(len(self._line))
            ticket = Ticket(next(self._numbers))
            self._line.append(ticket)
            return ticket

    def wait_turn(self, ticket: Ticket, timeout_s: float) -> int:  # type: ignore[override]
        with self._changed:
            self._changed.wait_for(lambda: self._ahead(ticket) == 0, timeout_s)
            return self._ahead(ticket)

    def leave(self, ticket: Ticket) -> None:  # type: ignore[override]
        with self._changed:
            if ticket in self._line:
                self._line.remove(ticket)
            self._changed.notify_all()

    def _running_limit(self) -> int:
        limit = self.config.max_running or self._parallel()
        return max(1, min(limit, self.config.max_in_flight))

    def _ahead(self, ticket: Ticket) -> int:
        return max(0, self._line.index(ticket) - self._running_limit() + 1)
