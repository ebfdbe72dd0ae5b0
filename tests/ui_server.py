"""Serve the whole Gradio page on loopback on the tiny model, for the gradio_client and browser tests.

The ecommerce LoRA adapter is a tiny random one (so both ecommerce variants answer); the
medical one is missing on purpose, so medical-lora shows as unavailable. Arena votes go to
a SQLite file in the given folder (via TOP_VOTES_DB), never to the user's data folder.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from bots.registry import Runtime, set_runtime
from tests.tiny_model import make_tiny_base, save_tiny_adapter


@dataclass(frozen=True)
class ServedUI:
    url: str
    runtime: Runtime
    votes_db: Path


@contextmanager
def serve_tiny_ui(folder: Path, port: int | None = None) -> Iterator[ServedUI]:
    save_tiny_adapter(folder / "adapters" / "ecommerce")
    save_tiny_adapter(folder / "adapters" / "ecommerce-hybrid", seed=2)  # medical's adapters stay missing: the unavailable case
    runtime = Runtime.from_base(make_tiny_base(), folder / "adapters")
    votes_db = folder / "votes.sqlite3"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TOP_VOTES_DB", str(votes_db))
        set_runtime(runtime)
        import ui

        _, url, _ = ui.demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
        try:
            yield ServedUI(url, runtime, votes_db)
        finally:
            ui.demo.close()
            set_runtime(None)
