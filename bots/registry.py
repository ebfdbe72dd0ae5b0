"""The variants, generated as domains × methods, and the runtime that serves them.

A domain is a prompt file (``prompts/<domain>.yaml``: its title, label, facts and whether the
emergency guard applies); a method is an entry of ``METHODS`` (a bot class and a label).
``VARIANTS`` (``<domain>-<method>``) is what the UI, the CLI, the tests and the evaluation
iterate: adding a domain adds a file, not code. A LoRA variant whose adapter cannot be loaded
is kept in the registry as unavailable with the reason (never silently answered by the bare
base model).

``get_runtime()`` loads the base model once per process, with the backend the spec
chooses (bots.backends), and builds every bot.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bots.backbone_base import AdapterError, BackboneBase
from bots.backends import build_backbone
from bots.base_source import BaseModelSpec
from bots.bot import Availability, BaseBot, Bot, HybridBot, LoraBot, PromptedBot, RetrievalBot, VariantSpec
from bots.guard import EmergencyGuard
from prompts import available_domains, load_prompt_spec

if TYPE_CHECKING:
    from bots.base_model import LoadedBase

ENV_ADAPTERS = "TOP_ADAPTERS_DIR"
PACKAGED_ADAPTERS = Path(__file__).resolve().parent / "adapters"



@dataclass(frozen=True)
class MethodSpec:
    """One way of building a domain's bot on the shared base model."""

    name: str
    bot_class: type[Bot]
    label: str
    headline: bool = False
    """One of the two methods the product compares (the Chat tab opens on these)."""


METHODS: dict[str, MethodSpec] = {
    method.name: method
    for method in (
        MethodSpec("lora", LoraBot, "LoRA adapter", headline=True),
        MethodSpec("prompt", RetrievalBot, "prompt (retrieved facts, selected examples)", headline=True),
        MethodSpec("hybrid", HybridBot, "hybrid (adapter + retrieved facts)"),
        MethodSpec("base", BaseBot, "base model (control)"),
        MethodSpec("static", PromptedBot, "static full-sheet prompt (ablation)"),
    )
}
"""Column order everywhere: the two headline methods, the control, then ablations."""


def build_variants(domains: list[str] | None = None) -> dict[str, VariantSpec]:
    specs = {}
    for domain in domains if domains is not None else available_domains():
        prompt = load_prompt_spec(domain)
        for method in METHODS.values():
            name = f"{domain}-{method.name}"
            specs[name] = VariantSpec(name, domain, method.name, f"{prompt.label} · {method.label}", emergency_guard=prompt.emergency_guard)
    return specs


VARIANTS: dict[str, VariantSpec] = build_variants()
BOT_CLASSES: dict[str, type[Bot]] = {name: method.bot_class for name, method in METHODS.items()}
DOMAINS: tuple[str, ...] = tuple(dict.fromkeys(spec.domain for spec in VARIANTS.values()))
HEADLINE_VARIANTS: tuple[str, ...] = tuple(name for name, spec in VARIANTS.items() if METHODS[spec.method].headline)


class UnknownVariant(KeyError):
    def __str__(self) -> str:
        return f"unknown variant '{self.args[0]}'; choose one of: {', '.join(VARIANTS)}"


def variant_spec(name: str) -> VariantSpec:
    if name not in VARIANTS:
        raise UnknownVariant(name)
    return VARIANTS[name]


def default_adapters_dir() -> Path:
    env = os.environ.get(ENV_ADAPTERS)
    return Path(env).expanduser() if env else PACKAGED_ADAPTERS


def build_bots(backbone: BackboneBase, adapters_dir: Path | None = None) -> dict[str, Bot]:
    """One bot per variant; LoRA adapters are attached to the backbone here."""
    adapters_dir = adapters_dir or default_adapters_dir()
    emergency = EmergencyGuard.for_backbone(backbone)  # one detector per process, shared by the bots
    bots: dict[str, Bot] = {}
    for spec in VARIANTS.values():
        bot = BOT_CLASSES[spec.method](spec, backbone, load_prompt_spec(spec.domain), emergency=emergency)
        if isinstance(bot, LoraBot):  # and HybridBot: a folder of its own under the adapters directory
            bot.adapter_path = adapters_dir / bot.adapter_folder
            bot.availability = _attach_adapter(backbone, bot.adapter, bot.adapter_path)
        bots[spec.name] = bot
    return bots


def _attach_adapter(backbone: BackboneBase, name: str, path: Path) -> Availability:
    if name in backbone.adapters:
        return Availability(True)
    try:
        backbone.load_adapter(name, path)
    except AdapterError as exc:
        return Availability(False, str(exc))
    return Availability(True)


@dataclass
class Runtime:
    """Everything a process serves: the backbone and one bot per variant."""

    backbone: BackboneBase
    bots: dict[str, Bot]

    def bot(self, name: str) -> Bot:
        variant_spec(name)
        return self.bots[name]

    @classmethod
    def from_backbone(cls, backbone: BackboneBase, adapters_dir: Path | None = None, warm_prompts: bool = False) -> Runtime:
        """``warm_prompts``: a server's choice; every available variant's fixed prefix (its system
        prompt, and the prompt variants' rules and few-shot dialogs: up to ~700 tokens) is cached
        in the background, if the backend caches. For a merged adapter this also makes its
        pool's context, so no user waits for it (0.5-1.5 s, measured)."""
        bots = build_bots(backbone, adapters_dir)
        if warm_prompts:
            for bot in bots.values():
                if bot.availability.ok:
                    backbone.prefill(backbone.encode(bot.render([{"role": "user", "content": ""}])), bot.adapter)
            # The detector's embedding context (on llama.cpp its truncated GGUF, cached) before the first user.
            next(iter(bots.values())).emergency.detect("warm-up")
        return cls(backbone, bots)

    @classmethod
    def from_base(cls, base: LoadedBase, adapters_dir: Path | None = None) -> Runtime:
        """A transformers runtime around an already loaded base (tests use the tiny model)."""
        from bots.backbone import Backbone

        return cls.from_backbone(Backbone(base), adapters_dir)


_runtime: Runtime | None = None
_runtime_lock = threading.Lock()


def get_runtime(spec: BaseModelSpec | None = None, adapters_dir: Path | None = None, warm_prompts: bool = False) -> Runtime:
    """The process's runtime, loaded on first use (the base model is loaded only once)."""
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            _runtime = Runtime.from_backbone(build_backbone(spec or BaseModelSpec.from_env()), adapters_dir, warm_prompts)
        return _runtime


def peek_runtime() -> Runtime | None:
    """The process's runtime if it is loaded; never loads it."""
    with _runtime_lock:
        return _runtime


def set_runtime(runtime: Runtime | None) -> None:
    """Install a runtime (tests inject one built on the tiny model)."""
    global _runtime
    with _runtime_lock:
        _runtime = runtime
