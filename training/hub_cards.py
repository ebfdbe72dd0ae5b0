"""Hugging Face Hub metadata of what the project ships: YAML front matter of the cards, portable adapters.

The Hub reads a card's metadata from YAML front matter (``---`` lines around it) at the top of
its ``README.md``. ``adapter_metadata`` and ``dataset_metadata`` build it for a PEFT adapter
and for a dialog dataset; ``with_front_matter`` puts it on top of a card (replacing any it
had) and ``read_front_matter`` parses it back. ``training.train`` and ``training.datagen``
write cards through these, and the adapter's ``base_model_name_or_path`` is the base's hub
id, never a path of the build machine (the exact base fingerprint stays in
``tune_or_prompt.json``).

    python -m training.hub_cards            # rewrite the shipped adapters' config and cards in place
    python -m training.hub_cards --check    # exit 1 if any would change (CI-friendly)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

from bots.base_source import EMBEDDED_HUB_ID
from bots.cli_args import CommandParser

LICENSE = "apache-2.0"
"""The project's licence (LICENSE), as the Hub spells it; SmolLM2 is Apache-2.0 too."""
ADAPTER_CONFIG = "adapter_config.json"
CARD = "README.md"
DATA_FILES = ("train.jsonl", "validation.jsonl", "test.jsonl")
SIZE_CATEGORIES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"))


class FrontMatterError(ValueError):
    """A card's front matter is not valid YAML mapping; the message names the card."""


def adapter_metadata(domain: str, base_model: str = EMBEDDED_HUB_ID) -> dict[str, Any]:
    return {
        "library_name": "peft",
        "base_model": base_model,
        "license": LICENSE,
        "language": ["en"],
        "pipeline_tag": "text-generation",
        "tags": ["lora", "peft", "tune-or-prompt", "smollm2", domain],
    }


def size_category(count: int) -> str:
    return next((label for limit, label in SIZE_CATEGORIES if count < limit), "n>1M")


def dataset_metadata(domain: str, total_dialogs: int, title: str) -> dict[str, Any]:
    return {
        "license": LICENSE,
        "language": ["en"],
        "pretty_name": title,
        "task_categories": ["text-generation"],
        "size_categories": [size_category(total_dialogs)],
        "tags": ["synthetic", "conversational", "tune-or-prompt", domain],
        "configs": [
            {
                "config_name": "default",
                "data_files": [{"split": name.removesuffix(".jsonl"), "path": name} for name in DATA_FILES],
            }
        ],
    }


def card_title(card: str) -> str:
    """The card's first level-1 heading (the dataset's name), after any front matter."""
    _, body = split_front_matter(card)
    return next((line[2:].strip() for line in body.splitlines() if line.startswith("# ")), "dialogs")


def split_front_matter(text: str) -> tuple[str | None, str]:
    """(the YAML between the leading ``---`` lines, or None when there is none; the rest)."""
    if not text.startswith("---\n"):
        return None, text
    end = text.find("\n---\n", 4)
    if end < 0:
        return None, text
    return text[4:end], text[end + len("\n---\n") :].lstrip("\n")


def read_front_matter(text: str, where: str = "card") -> dict[str, Any]:
    raw, _ = split_front_matter(text)
    if raw is None:
        raise FrontMatterError(f"{where}: no YAML front matter")
    try:
        meta = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise FrontMatterError(f"{where}: front matter is not valid YAML ({exc})") from exc
    if not isinstance(meta, dict):
        raise FrontMatterError(f"{where}: front matter is not a mapping")
    return meta


def with_front_matter(text: str, meta: dict[str, Any]) -> str:
    """The card with ``meta`` as its front matter (any earlier front matter is replaced)."""
    _, body = split_front_matter(text)
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n\n" + body


def portable_adapter_config(config: dict[str, Any], base_model: str = EMBEDDED_HUB_ID) -> dict[str, Any]:
    """The PEFT config with the base named by hub id, so any machine (or vLLM) can load it."""
    return {**config, "base_model_name_or_path": base_model}


def rewrite_adapter(folder: Path, domain: str, base_model: str = EMBEDDED_HUB_ID) -> list[Path]:
    """Make one shipped adapter folder portable in place; return the files that changed."""
    changed = []
    config_path = folder / ADAPTER_CONFIG
    config = json.loads(config_path.read_text(encoding="utf-8"))
    portable = json.dumps(portable_adapter_config(config, base_model), indent=2, sort_keys=True) + "\n"
    if config_path.read_text(encoding="utf-8") != portable:
        config_path.write_text(portable, encoding="utf-8")
        changed.append(config_path)
    card_path = folder / CARD
    card = card_path.read_text(encoding="utf-8")
    updated = with_front_matter(card, adapter_metadata(domain, base_model))
    if updated != card:
        card_path.write_text(updated, encoding="utf-8")
        changed.append(card_path)
    return changed


def rewrite_dataset_card(folder: Path, domain: str) -> list[Path]:
    card_path = folder / CARD
    card = card_path.read_text(encoding="utf-8")
    total = sum(1 for name in DATA_FILES for line in (folder / name).read_text(encoding="utf-8").splitlines() if line.strip())
    updated = with_front_matter(card, dataset_metadata(domain, total, card_title(card)))
    if updated == card:
        return []
    card_path.write_text(updated, encoding="utf-8")
    return [card_path]


def adapter_domain(folder: Path) -> str:
    """The domain an adapter folder serves: its tune_or_prompt.json says (a hybrid folder is '<domain>-hybrid')."""
    meta = folder / "tune_or_prompt.json"
    if meta.is_file():
        return str(json.loads(meta.read_text(encoding="utf-8")).get("domain") or folder.name)
    return folder.name


def main(argv: list[str] | None = None) -> int:
    from bots.registry import PACKAGED_ADAPTERS
    from training.dialogs import DATA_DIR

    parser = CommandParser(prog="python -m training.hub_cards", description="Rewrite the shipped adapters and dataset cards with Hub metadata, in place.")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a file would change")
    args = parser.parse_args(argv)
    adapters = sorted(path for path in PACKAGED_ADAPTERS.iterdir() if (path / ADAPTER_CONFIG).is_file())
    datasets = sorted(path for path in DATA_DIR.iterdir() if (path / CARD).is_file())
    if args.check:
        import shutil
        import tempfile

        with tempfile.TemporaryDirectory() as scratch:
            stale = []
            for folder in [*adapters, *datasets]:
                copy = Path(scratch) / folder.parent.name / folder.name
                shutil.copytree(folder, copy)
                rewrite = rewrite_adapter if folder in adapters else rewrite_dataset_card
                stale += [folder / path.name for path in rewrite(copy, adapter_domain(folder) if folder in adapters else folder.name)]
        for path in stale:
            print(f"would change: {path}", file=sys.stderr)
        return 1 if stale else 0
    for folder in adapters:
        for path in rewrite_adapter(folder, adapter_domain(folder)):
            print(f"rewrote {path}")
    for folder in datasets:
        for path in rewrite_dataset_card(folder, folder.name):
            print(f"rewrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
