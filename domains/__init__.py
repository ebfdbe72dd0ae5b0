"""Domain packs: one folder per domain, ``domains/<name>/pack.yaml``, and the one list of domains.

    python -c "import domains; print(domains.names())"

A pack says everything the code needs to know about its domain: where its files are (the
prompt file, which names its retrieval pool, the training configuration, the phrase bank and the
dialog generator's settings, the dialogs, the fact-drift changes; paths relative to the pack folder) and its evaluation choices (the
probe sources with their fields and per-reply checks, the metrics it reports, the headline
metric, the words that steer back to it, its marker in plots). Every module that used to
spell a domain's name reads it from here. Adding a domain is a folder with a pack and the
files it names, then the datagen and train commands (README, "Adding a domain").

The lowest layer: it imports nothing of the project's.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import yaml

PACKS_DIR = Path(__file__).resolve().parent
PACK_FILE = "pack.yaml"
FILE_KEYS = ("prompt", "training_config", "phrase_bank", "datagen", "dialogs", "fact_drift")
"""The files (or folder: dialogs) a pack must name, relative to its folder. The prompt file names
its own retrieval pool (``retrieval: pool:``)."""


class PackError(ValueError):
    """A pack that is missing, malformed or incomplete."""


@dataclass(frozen=True)
class ProbeSpec:
    """One probe source of a domain: its file (in the probes folder), fields, grouping and per-reply checks."""

    source: str
    file: str
    fields: tuple[str, ...]
    group: str
    checks: tuple[str, ...]


@dataclass(frozen=True)
class DomainPack:
    name: str
    folder: Path
    files: dict[str, Path]
    probes: tuple[ProbeSpec, ...]
    metrics: tuple[str, ...]
    headline_metric: str
    steer_back_patterns: tuple[str, ...]
    plot_marker: str
    bench_probe_source: str

    def file(self, key: str) -> Path:
        return self.files[key]

    def probe(self, source: str) -> ProbeSpec:
        for probe in self.probes:
            if probe.source == source:
                return probe
        raise KeyError(f"domain {self.name} has no probe source {source!r}")


def _strings(raw: dict, key: str, where: Path) -> tuple[str, ...]:
    value = raw.get(key)
    if not isinstance(value, list) or not value or not all(isinstance(item, str) and item for item in value):
        raise PackError(f"{where}: '{key}' must be a non-empty list of strings")
    return tuple(value)


def _text(raw: dict, key: str, where: Path) -> str:
    value = raw.get(key)
    if not isinstance(value, str) or not value.strip():
        raise PackError(f"{where}: '{key}' must be a non-empty string")
    return value.strip()


def parse_pack(raw: object, folder: Path) -> DomainPack:
    where = folder / PACK_FILE
    if not isinstance(raw, dict):
        raise PackError(f"{where}: expected a mapping")
    name = _text(raw, "name", where)
    if name != folder.name:
        raise PackError(f"{where}: name '{name}' must be the folder's name '{folder.name}'")
    files_raw = raw.get("files")
    if not isinstance(files_raw, dict):
        raise PackError(f"{where}: 'files' must map {', '.join(FILE_KEYS)} to paths")
    missing = [key for key in FILE_KEYS if not isinstance(files_raw.get(key), str)]
    if missing:
        raise PackError(f"{where}: 'files' lacks {', '.join(missing)}")
    files = {key: (folder / files_raw[key]).resolve() for key in FILE_KEYS}
    probes_raw = raw.get("probes")
    if not isinstance(probes_raw, list) or not probes_raw:
        raise PackError(f"{where}: 'probes' must be a non-empty list")
    probes = []
    for item in probes_raw:
        if not isinstance(item, dict):
            raise PackError(f"{where}: every probe source must be a mapping")
        probes.append(ProbeSpec(_text(item, "source", where), _text(item, "file", where), _strings(item, "fields", where), _text(item, "group", where), _strings(item, "checks", where)))
    headline = _text(raw, "headline_metric", where)
    metrics = _strings(raw, "metrics", where)
    if headline not in metrics:
        raise PackError(f"{where}: the headline metric '{headline}' must be one of its metrics")
    bench = _text(raw, "bench_probe_source", where)
    if bench not in {p.source for p in probes}:
        raise PackError(f"{where}: bench_probe_source '{bench}' is not one of its probe sources")
    return DomainPack(name, folder, files, tuple(probes), metrics, headline, _strings(raw, "steer_back_patterns", where), _text(raw, "plot_marker", where), bench)


def read_yaml(path: Path, error: type[Exception], missing: str) -> object:
    """A YAML file's content; ``error`` with ``missing`` when it is not there, or with the
    parser's message when it does not parse (every pack-named file of settings reads this way)."""
    if not path.is_file():
        raise error(missing)
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise error(f"{path}: bad YAML: {exc}") from exc


def load_pack_from(folder: Path) -> DomainPack:
    return parse_pack(read_yaml(folder / PACK_FILE, PackError, f"{folder}: no {PACK_FILE}"), folder)


def packs() -> dict[str, DomainPack]:
    """Every pack under PACKS_DIR, by name, in name order (read once; ``reload()`` after a change)."""
    return _packs_under(PACKS_DIR)


@functools.cache
def _packs_under(root: Path) -> dict[str, DomainPack]:
    found = sorted(path.parent for path in root.glob(f"*/{PACK_FILE}"))
    return {folder.name: load_pack_from(folder) for folder in found}


def reload() -> None:
    """Forget the packs read so far (tests that add a domain)."""
    _packs_under.cache_clear()


def names() -> tuple[str, ...]:
    """The one list of domains."""
    return tuple(packs())


def pack(name: str) -> DomainPack:
    try:
        return packs()[name]
    except KeyError:
        raise PackError(f"no domain pack '{name}' (expected {PACKS_DIR / name / PACK_FILE}); known: {', '.join(names())}") from None
