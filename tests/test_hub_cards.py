"""The Hub metadata of what ships: adapter and dataset cards, portable adapters, the Space's front matter.

Run: ``python -m pytest tests/test_hub_cards.py``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from bots.base_source import EMBEDDED_HUB_ID
from bots.registry import PACKAGED_ADAPTERS
from training.dialogs import DATA_DIR
from training.hub_cards import FrontMatterError, adapter_domain, main, read_front_matter, size_category, with_front_matter

REPO = Path(__file__).resolve().parent.parent
ADAPTER_DIRS = sorted(path for path in PACKAGED_ADAPTERS.iterdir() if (path / "adapter_config.json").is_file())
DATASET_DIRS = sorted(path for path in DATA_DIR.iterdir() if (path / "README.md").is_file())
# A path of some machine: an absolute Unix path into a home, cache or temporary folder.
MACHINE_PATH = re.compile(r"(?<![\w.])/(?:root|home|Users|tmp|var|opt|work)/|~/|\.cache/")
SHORT_DESCRIPTION_LIMIT = 60  # the Hub's Spaces configuration (see the README's front matter)


def test_shipped_adapters_and_datasets_exist() -> None:
    assert {"ecommerce", "medical"} <= {path.name for path in ADAPTER_DIRS} <= {"ecommerce", "medical", "ecommerce-hybrid", "medical-hybrid"}
    assert [path.name for path in DATASET_DIRS] == ["ecommerce", "medical"]


@pytest.mark.parametrize("folder", ADAPTER_DIRS, ids=lambda path: path.name)
def test_adapter_card_has_the_hub_keys_of_a_peft_adapter(folder: Path) -> None:
    meta = read_front_matter((folder / "README.md").read_text(encoding="utf-8"), str(folder))
    assert meta["library_name"] == "peft"
    assert meta["base_model"] == EMBEDDED_HUB_ID
    assert meta["license"] == "apache-2.0" and meta["pipeline_tag"] == "text-generation"
    assert {"lora", "peft", adapter_domain(folder)} <= set(meta["tags"]) and adapter_domain(folder) in ("ecommerce", "medical")


@pytest.mark.parametrize("folder", DATASET_DIRS, ids=lambda path: path.name)
def test_dataset_card_has_the_hub_keys_and_names_every_split(folder: Path) -> None:
    meta = read_front_matter((folder / "README.md").read_text(encoding="utf-8"), str(folder))
    assert meta["license"] == "apache-2.0" and meta["language"] == ["en"]
    assert meta["task_categories"] and "synthetic" in meta["tags"]
    total = sum(len((folder / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()) for split in ("train", "validation", "test"))
    assert meta["size_categories"] == [size_category(total)]
    (config,) = meta["configs"]
    files = {item["split"]: item["path"] for item in config["data_files"]}
    assert files == {"train": "train.jsonl", "validation": "validation.jsonl", "test": "test.jsonl"}
    assert all((folder / path).is_file() for path in files.values())


@pytest.mark.parametrize("folder", ADAPTER_DIRS, ids=lambda path: path.name)
def test_adapter_names_its_base_by_hub_id_and_carries_no_machine_path(folder: Path) -> None:
    config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    assert config["base_model_name_or_path"] == EMBEDDED_HUB_ID
    for path in folder.iterdir():
        if path.suffix in {".json", ".md"}:
            text = path.read_text(encoding="utf-8")
            assert not MACHINE_PATH.search(text), f"{path} names a path of a machine: {MACHINE_PATH.search(text).group()}"


def test_shipped_files_are_up_to_date_with_the_rewriter() -> None:
    assert main(["--check"]) == 0


def test_front_matter_round_trips_and_replaces_an_old_one() -> None:
    card = with_front_matter("# Title\n\nBody.\n", {"license": "apache-2.0", "tags": ["a"]})
    again = with_front_matter(card, {"license": "mit"})
    assert read_front_matter(again) == {"license": "mit"}
    assert again.endswith("# Title\n\nBody.\n") and again.count("---\n") == 2
    with pytest.raises(FrontMatterError):
        read_front_matter("# no front matter\n")
    with pytest.raises(FrontMatterError):
        read_front_matter("---\n- a list\n---\nbody\n")


def test_readme_space_front_matter_is_complete() -> None:
    meta = read_front_matter((REPO / "README.md").read_text(encoding="utf-8"), "README.md")
    assert meta["sdk"] == "docker" and meta["app_port"] == 7860
    assert meta["license"] == "apache-2.0"
    assert EMBEDDED_HUB_ID in meta["models"]
    assert meta["tags"] and all(isinstance(tag, str) for tag in meta["tags"])
    assert 0 < len(meta["short_description"]) <= SHORT_DESCRIPTION_LIMIT
    assert (REPO / "LICENSE").read_text(encoding="utf-8").lstrip().startswith("Apache License")
