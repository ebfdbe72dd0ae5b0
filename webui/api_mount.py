"""The OpenAI-compatible API (bots/api.py) on the page's own port, under /v1.

``ApiBlocks`` is a gr.Blocks whose every ``launch`` also serves the API, however it is
launched (``python ui.py``, ``gradio ui.py``, a test's ``ui.demo.launch(...)``): the routes
go into the FastAPI app Gradio creates at launch (``app_kwargs["routes"]``), ahead of its
own. API requests wait in the page's admission line (webui/admission.py), so page users
and API clients share one limit on the one model. Every launch also gives Gradio enough
worker threads for everyone that line holds. Only the variants are served here: the
raw base and adapters (the engine side of --backend openai) are for ``python -m bots.api``.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from bots.api import ApiConfig, ApiService, api_routes
from bots.gate import ServerBusy as ApiBusy
from webui.admission import ServerBusy, Ticket, current_gate


class PageGate:
    """The page's current gate as bots.gate.Admission (set_gate in tests is followed)."""

    def __init__(self) -> None:
        self._gate = current_gate()

    def admit(self) -> Ticket:
        try:
            return self._gate.admit()
        except ServerBusy as exc:
            raise ApiBusy(exc.ahead, exc.expected_wait_s) from exc

    def wait_turn(self, ticket: Ticket, timeout_s: float) -> int:  # type: ignore[override]
        return self._gate.wait_turn(ticket, timeout_s)

    def leave(self, ticket: Ticket) -> None:  # type: ignore[override]
        self._gate.leave(ticket)


class ApiBlocks(gr.Blocks):
    def launch(self, *args: Any, app_kwargs: dict[str, Any] | None = None, **kwargs: Any) -> Any:  # type: ignore[override]
        # Requests waiting in the admission queue each hold a Gradio worker thread: give it enough.
        kwargs.setdefault("max_threads", current_gate().config.worker_threads)
        app_kwargs = dict(app_kwargs or {})
        app_kwargs["routes"] = [*api_routes(ApiService(ApiConfig.from_env(serve_raw=False), gate=PageGate)), *app_kwargs.get("routes", [])]
        return super().launch(*args, app_kwargs=app_kwargs, **kwargs)
