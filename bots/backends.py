"""The serving backends, as data, and the choice between them.

``BACKENDS`` lists them fastest first. ``auto`` (the default) takes the first one that is
installed and can run the configured base model: llama.cpp for the embedded GGUF when
llama-cpp-python is installed, else transformers, which runs everything (and is the
reference the fast path is checked against). Choose explicitly with ``--backend`` or the
environment variable ``TOP_BACKEND``. ``openai`` (bots/remote_backbone.py) is never chosen
by ``auto``: it sends generation to the OpenAI-compatible engine at TOP_ENGINE_URL.

Each backend's module is imported only when it is built, so the llama.cpp path never
pays for importing torch.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from bots.backbone_base import BackboneBase
from bots.base_source import EMBEDDED, BaseModelError, BaseModelSpec

AUTO = "auto"


@dataclass(frozen=True)
class Backend:
    name: str
    description: str
    install_hint: str
    installed: Callable[[], bool]
    runs: Callable[[BaseModelSpec], bool]
    """Whether it can run this base model source."""
    build: Callable[[BaseModelSpec], BackboneBase]
    chosen_by_auto: bool = True
    """False for a backend that needs more than a base model (the remote engine's address)."""


def _is_gguf_source(spec: BaseModelSpec) -> bool:
    return spec.source == EMBEDDED or (spec.source.endswith(".gguf") and Path(spec.source).expanduser().is_file())


def _build_llamacpp(spec: BaseModelSpec) -> BackboneBase:
    from bots.llama_backbone import LlamaCppBackbone, LlamaServingConfig, load_gguf_base

    config = LlamaServingConfig(merge_adapters=spec.merge_adapters)
    if spec.lanes is not None:
        config = replace(config, lanes=spec.lanes)
    if spec.running is not None:
        config = replace(config, running=spec.running)
    return LlamaCppBackbone(load_gguf_base(spec), config=config)


def _build_transformers(spec: BaseModelSpec) -> BackboneBase:
    from bots.backbone import Backbone
    from bots.base_model import load_base

    return Backbone(load_base(spec))


def _build_openai(spec: BaseModelSpec) -> BackboneBase:
    from bots.remote_backbone import build_remote_backbone
    from bots.remote_config import RemoteConfigError

    try:
        return build_remote_backbone(spec)
    except RemoteConfigError as exc:
        raise BaseModelError(str(exc)) from exc


def _module_installed(name: str) -> Callable[[], bool]:
    return lambda: importlib.util.find_spec(name) is not None


BACKENDS: tuple[Backend, ...] = (
    Backend(
        "llamacpp",
        "llama.cpp (llama-cpp-python): the GGUF weights as they are, LoRA adapters converted to GGUF",
        "pip install llama-cpp-python==0.3.36 (compiles llama.cpp; see the README)",
        _module_installed("llama_cpp"),
        _is_gguf_source,
        _build_llamacpp,
    ),
    Backend(
        "transformers",
        "transformers + peft in fp32: the reference, and the training path",
        "pip install -r requirements.txt",
        lambda: _module_installed("torch")() and _module_installed("transformers")() and _module_installed("peft")(),
        lambda spec: True,
        _build_transformers,
    ),
    Backend(
        "openai",
        "a remote OpenAI-compatible engine (vLLM, llama.cpp's server, TGI, python -m bots.api) at TOP_ENGINE_URL; prompts are rendered and counted here",
        "pip install httpx (it comes with gradio)",
        _module_installed("httpx"),
        lambda spec: True,
        _build_openai,
        chosen_by_auto=False,
    ),
)
BACKEND_NAMES: tuple[str, ...] = (AUTO, *(backend.name for backend in BACKENDS))


def choose_backend(spec: BaseModelSpec) -> Backend:
    """The backend ``spec.backend`` names, or with 'auto' the fastest that can serve ``spec``."""
    if spec.backend == AUTO:
        for backend in BACKENDS:
            if backend.chosen_by_auto and backend.installed() and backend.runs(spec):
                return backend
        raise BaseModelError(f"no installed backend can run '{spec.source}'; install one: {[b for b in BACKENDS if b.chosen_by_auto][-1].install_hint}")
    by_name = {backend.name: backend for backend in BACKENDS}
    if spec.backend not in by_name:
        raise BaseModelError(f"unknown backend '{spec.backend}'; choose one of: {', '.join(BACKEND_NAMES)}")
    backend = by_name[spec.backend]
    if not backend.installed():
        raise BaseModelError(f"the {backend.name} backend is not installed: {backend.install_hint}")
    if not backend.runs(spec):
        raise BaseModelError(f"the {backend.name} backend cannot run '{spec.source}' (it needs a GGUF file); use --backend transformers")
    return backend


def build_backbone(spec: BaseModelSpec) -> BackboneBase:
    return choose_backend(spec).build(spec)
