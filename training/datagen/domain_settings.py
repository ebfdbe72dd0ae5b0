"""A domain's dialog-generator settings, read from the file its pack names (``files: datagen:``).

    python -c "from training.datagen.domain_settings import load_settings; print(load_settings('medical').config.sizes)"

The settings file (``training/datagen/settings/<domain>.yaml``) holds the split sizes, the topic
mix, the persona and noise rates (``engine.DomainConfig``'s fields) and the dataset card's notes:
its title, a note per topic, the red flags with their notes (a domain with emergencies), and its
known limits. Together with the phrase bank it is everything ``python -m training.datagen``
needs, so a new domain is data only.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import domains
from prompts import load_prompt_spec
from training.datagen.engine import DomainConfig

CARD_KEYS = ("title", "topic_notes", "red_flags", "limits")
"""The settings file's keys that are the card's, not DomainConfig's."""
CONFIG_KEYS = tuple(f.name for f in dataclasses.fields(DomainConfig) if f.name not in ("domain", "system_prompt"))
REQUIRED = ("title", "sizes", "topic_weights", "multi_rate", "topic_notes", "limits")


class SettingsError(ValueError):
    """A settings file that is missing, malformed or names what the generator does not know."""


@dataclass(frozen=True)
class DatagenSettings:
    """How one domain's dialogs are generated, and what their dataset card says about them."""

    config: DomainConfig
    title: str
    topic_notes: dict[str, str]
    red_flags: dict[str, str]
    """Red-flag key -> card note; empty for a domain without emergencies."""
    limits: tuple[str, ...]
    phrase_bank: Path
    config_file: Path
    """The settings file itself (the card names it)."""

    @property
    def domain(self) -> str:
        return self.config.domain


def parse_settings(raw: Any, domain: str, where: Path, phrase_bank: Path) -> DatagenSettings:
    """Check a settings file's content (``where`` is its path) and build the settings; a bad one is a SettingsError."""
    if not isinstance(raw, dict):
        raise SettingsError(f"{where}: expected a mapping")
    unknown = sorted(set(raw) - set(CARD_KEYS) - set(CONFIG_KEYS))
    if unknown:
        raise SettingsError(f"{where}: unknown keys {', '.join(unknown)} (known: {', '.join(CARD_KEYS + CONFIG_KEYS)})")
    missing = [key for key in REQUIRED if key not in raw]
    if missing:
        raise SettingsError(f"{where}: lacks {', '.join(missing)}")
    weights = raw["topic_weights"]
    if not isinstance(weights, dict) or not weights or not all(isinstance(v, (int, float)) and v > 0 for v in weights.values()):
        raise SettingsError(f"{where}: 'topic_weights' must map topics to positive numbers")
    train_weights = raw.get("train_topic_weights") or {}
    if not isinstance(train_weights, dict) or not set(train_weights) <= set(weights) or not all(isinstance(v, (int, float)) and v > 0 for v in train_weights.values()):
        raise SettingsError(f"{where}: 'train_topic_weights' must map some of topic_weights' topics to positive numbers")
    notes = raw["topic_notes"]
    if not isinstance(notes, dict) or set(notes) != set(weights):
        extra = sorted(set(notes or {}) ^ set(weights)) if isinstance(notes, dict) else ["(not a mapping)"]
        raise SettingsError(f"{where}: 'topic_notes' must note every weighted topic and no other: {', '.join(extra)}")
    red_flags = raw.get("red_flags") or {}
    if not isinstance(red_flags, dict):
        raise SettingsError(f"{where}: 'red_flags' must map red-flag keys to notes")
    limits = raw["limits"]
    if not isinstance(limits, list) or not all(isinstance(item, str) and item for item in limits):
        raise SettingsError(f"{where}: 'limits' must be a list of sentences")
    fields = {key: raw[key] for key in CONFIG_KEYS if key in raw}
    try:
        config = DomainConfig(domain=domain, system_prompt=load_prompt_spec(domain).lora_system_prompt, **fields)
    except TypeError as exc:
        raise SettingsError(f"{where}: {exc}") from exc
    return DatagenSettings(config, str(raw["title"]), dict(notes), dict(red_flags), tuple(limits), phrase_bank, where)


def load_settings(domain: str) -> DatagenSettings:
    """The settings of one domain, from the file its pack names."""
    pack = domains.pack(domain)
    path = pack.file("datagen")
    raw = domains.read_yaml(path, SettingsError, f"{path}: no such file (named by {pack.folder / domains.PACK_FILE}, files: datagen)")
    return parse_settings(raw, domain, path, pack.file("phrase_bank"))
