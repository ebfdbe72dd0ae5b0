"""Configuration of the remote backend: where the engine is and which engine model serves what.

The names are data (bots/remote_engine.yaml, or the file TOP_ENGINE_CONFIG names); the
address and key come from the environment (TOP_ENGINE_URL, TOP_ENGINE_API_KEY), so no
secret is ever written to a file of the repository. Our own API server (bots/api.py)
reads the same names to serve the base and adapters as raw models, so a client and a
``python -m bots.api`` engine agree by construction.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

import domains

DEFAULT_CONFIG_FILE = Path(__file__).resolve().with_name("remote_engine.yaml")
ENV_URL = "TOP_ENGINE_URL"
ENV_API_KEY = "TOP_ENGINE_API_KEY"
ENV_CONFIG = "TOP_ENGINE_CONFIG"
PROMPT_FORMATS = ("tokens", "text")


class RemoteConfigError(ValueError):
    """The remote backend's settings are unusable; the message says which and why."""


@dataclass(frozen=True)
class EngineNames:
    """Engine model names: the bare base, and each of our adapters (by domain)."""

    base: str = "smollm2-135m-instruct"
    adapters: dict[str, str] = field(default_factory=lambda: {name: name for name in domains.names()})

    def model_for(self, adapter: str | None) -> str:
        """The engine model a request with this adapter (None: the bare base) goes to."""
        if adapter is None:
            return self.base
        if adapter not in self.adapters:
            raise RemoteConfigError(f"the engine config names no model for adapter '{adapter}' (add it under 'adapters:')")
        return self.adapters[adapter]

    def adapter_of(self, model: str) -> tuple[bool, str | None]:
        """(known, adapter) for an engine model name; adapter None is the bare base."""
        if model == self.base:
            return True, None
        for adapter, name in self.adapters.items():
            if name == model:
                return True, adapter
        return False, None


@dataclass(frozen=True)
class RemoteConfig:
    url: str = ""
    """The engine's OpenAI-compatible base URL, ending in /v1 (e.g. http://127.0.0.1:8000/v1)."""
    api_key: str = ""
    names: EngineNames = field(default_factory=EngineNames)
    prompt_format: str = "tokens"
    context_tokens: int = 2048
    parallel_replies: int = 16
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 60.0

    def validate(self) -> RemoteConfig:
        if not self.url.startswith(("http://", "https://")):
            raise RemoteConfigError(f"the remote backend needs the engine's URL in {ENV_URL} (e.g. http://127.0.0.1:8000/v1); got {self.url or 'nothing'!r}")
        if self.prompt_format not in PROMPT_FORMATS:
            raise RemoteConfigError(f"prompt_format must be one of {', '.join(PROMPT_FORMATS)}; got {self.prompt_format!r}")
        if self.context_tokens < 64 or self.parallel_replies < 1:
            raise RemoteConfigError("context_tokens must be at least 64 and parallel_replies at least 1")
        if self.connect_timeout_s <= 0 or self.read_timeout_s <= 0:
            raise RemoteConfigError("connect_timeout_s and read_timeout_s must be positive")
        return self

    @classmethod
    def from_env(cls, path: Path | None = None) -> RemoteConfig:
        """The names file (``path``, else TOP_ENGINE_CONFIG, else the shipped one) plus the environment."""
        config = load_config_file(path or Path(os.environ.get(ENV_CONFIG) or DEFAULT_CONFIG_FILE))
        return replace(config, url=os.environ.get(ENV_URL, "").strip().rstrip("/"), api_key=os.environ.get(ENV_API_KEY, "").strip())


def load_config_file(path: Path) -> RemoteConfig:
    try:
        data: Any = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise RemoteConfigError(f"{path}: cannot read the engine config ({exc})") from exc
    if not isinstance(data, dict):
        raise RemoteConfigError(f"{path}: expected a mapping of settings")
    known = {"base", "adapters", "prompt_format", "context_tokens", "parallel_replies", "connect_timeout_s", "read_timeout_s"}
    unknown = set(data) - known
    if unknown:
        raise RemoteConfigError(f"{path}: unknown setting(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}")
    adapters = data.get("adapters", EngineNames().adapters)
    if not isinstance(adapters, dict) or not all(isinstance(k, str) and isinstance(v, str) and v for k, v in adapters.items()):
        raise RemoteConfigError(f"{path}: 'adapters' must map adapter names to engine model names")
    base = data.get("base", EngineNames().base)
    if not isinstance(base, str) or not base:
        raise RemoteConfigError(f"{path}: 'base' must be the engine model name of the base model")
    try:
        return RemoteConfig(
            names=EngineNames(base, dict(adapters)),
            prompt_format=str(data.get("prompt_format", "tokens")),
            context_tokens=int(data.get("context_tokens", 2048)),
            parallel_replies=int(data.get("parallel_replies", 16)),
            connect_timeout_s=float(data.get("connect_timeout_s", 5.0)),
            read_timeout_s=float(data.get("read_timeout_s", 60.0)),
        )
    except (TypeError, ValueError) as exc:
        raise RemoteConfigError(f"{path}: {exc}") from exc


def engine_names() -> EngineNames:
    """The names our own API server serves the raw base and adapters under."""
    return load_config_file(Path(os.environ.get(ENV_CONFIG) or DEFAULT_CONFIG_FILE)).names
