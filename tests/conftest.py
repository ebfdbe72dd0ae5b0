"""Shared pytest fixtures: the tiny in-process base model, and the `slow` marker for real-model tests."""

from __future__ import annotations

import pytest

from bots.base_model import LoadedBase
from tests.tiny_model import make_tiny_base


@pytest.fixture()
def tiny_base() -> LoadedBase:
    """A fresh tiny model + tokenizer per test (tests may attach adapters to it)."""
    return make_tiny_base()
