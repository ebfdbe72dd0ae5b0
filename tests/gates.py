"""A small admission gate (webui/admission.py) for a test, and waiting on a condition without sleeping blind."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from webui.admission import AdmissionConfig, Gate, set_gate


@contextmanager
def small_gate(max_in_flight: int = 1, poll_s: float = 0.05) -> Iterator[Gate]:
    """Every generation handler uses this gate until the block ends; then the default one again."""
    gate = Gate(AdmissionConfig(max_in_flight=max_in_flight, poll_s=poll_s))
    set_gate(gate)
    try:
        yield gate
    finally:
        set_gate(None)


def wait_until(condition: Callable[[], bool], timeout_s: float = 10.0, what: str = "the condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.01)
